//! Catch-up sync, sans-IO: peers exchange summaries of how far they are in
//! every send-group stream, and fetch what they miss from any peer's
//! envelope log. Gossip is only a fast path; this is what makes partitions
//! heal. The wire types and the planning rule live here; the conversation
//! (whom to ask, retries, Welcome polling, the KeyPackage relay) is the
//! [`SyncAgent`] in `agent.rs`, which the node, the simulator and the
//! testkit all drive.

mod agent;
pub(crate) mod key_packages;
mod kp_request;
#[cfg(test)]
mod tests;
mod told;

pub use agent::{Action, RequestId, SyncAgent, SyncConfig, SyncError};
pub use key_packages::key_package_request;
pub use kp_request::{KpRequest, KpResponse, MAX_KP_ANSWER};

use crate::id::Id32;
use crate::identity::MemberId;
use crate::universe::{from_cbor, to_cbor};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;

/// The largest frame a peer may send us, a sync message or a gossip RPC:
/// each stream can make us buffer this much before any check of ours runs
/// (issue 29). Everything legitimate fits: an envelope is at most
/// [`MAX_ENVELOPE_BYTES`](crate::envelope::MAX_ENVELOPE_BYTES), this less
/// [`FRAME_OVERHEAD`]; fetch answers, KeyPackage answers and summaries that
/// would be larger are cut to fit ([`SyncMessage::fit`]).
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// Room left in a frame for what wraps envelopes: the CBOR headers of a
/// fetch answer (at most [`MAX_FETCH_ENVELOPES`] of them, 5 bytes each) or
/// gossipsub's RPC fields (topic, sender, signature, sequence number).
pub const FRAME_OVERHEAD: usize = 4096;
/// How many envelopes one fetch answer carries at most.
pub const MAX_FETCH_ENVELOPES: usize = 256;
/// Groups one Welcomes request may name.
pub const MAX_WELCOME_GROUPS: usize = 64;
/// Envelope bytes one answer carries at most, so that it fits a frame.
pub const MAX_FETCH_BYTES: usize = MAX_FRAME_BYTES - FRAME_OVERHEAD;
/// What one range answer carries when it can choose: on a 64 kbit/s radio
/// this is 8 s of link, so the answer arrives within a request timeout,
/// and pings, summaries and texts queued behind it wait seconds, not the
/// two minutes a 4 MiB answer took at 256 kbit/s. Larger catch-ups are
/// asked for again from where the answer ended (`more`). An envelope
/// larger than this still goes, alone.
pub const FETCH_ANSWER_BYTES: usize = 64 * 1024;

/// A peer's position in every send group of one universe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSummary {
    pub universe: Id32,
    /// (group, next stream seq the peer expects = how many it holds).
    pub heads: Vec<(Id32, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FetchRequest {
    /// Stream entries `from..` of one send group.
    Range {
        universe: Id32,
        group: Id32,
        from: u64,
    },
    /// Welcomes that add `member` to groups of `universe`: those its owner
    /// made, and, from any member, those of `groups`, the groups the asker
    /// holds nothing of. (Only those: a Welcome into a group the asker
    /// left or was dropped from must come from its owner, who knows.)
    Welcomes {
        universe: Id32,
        member: MemberId,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        groups: Vec<Id32>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FetchResponse {
    pub envelopes: Vec<ByteBuf>,
    /// The oldest seq still in the server's log for the group; a requester
    /// that needs older entries can only rejoin.
    pub oldest: Option<u64>,
    /// True if more entries follow (ask again from the last seq + 1).
    pub more: bool,
    /// True if the server *deleted* the entries the request starts at (log
    /// retention). False when it never had them (it joined the group
    /// later): another peer may still have them, so the requester must not
    /// give up on the group because of this answer.
    #[serde(default)]
    pub pruned: bool,
}

/// The wire form of a sync request/answer (request-response protocol).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SyncMessage {
    Summary(Vec<SyncSummary>),
    Fetch(FetchRequest),
    Summaries(Vec<SyncSummary>),
    Fetched(FetchResponse),
    /// A KeyPackage request (answered by `KeyPackages`).
    KeyPackageRequest(KpRequest),
    KeyPackages(KpResponse),
}

impl SyncMessage {
    pub fn encode(&self) -> Vec<u8> {
        to_cbor(self)
    }
    pub fn decode(b: &[u8]) -> Result<SyncMessage, String> {
        if b.len() > MAX_FRAME_BYTES {
            return Err(format!("sync message of {} bytes is too large", b.len()));
        }
        from_cbor(b)
    }

    /// Cuts what we send to what a frame carries, so a large answer
    /// arrives shortened rather than failing whole at the codec. Fetch and
    /// KeyPackage answers keep their first envelopes up to
    /// [`MAX_FETCH_BYTES`] (a cut range answer says `more`, and a cut
    /// Welcomes answer is asked again once its Welcomes joined us to their
    /// groups); summaries keep their first universes and heads up to the
    /// frame (about 23,000 send groups in all). Only a node in more groups
    /// than that, or an answer of more than a frame, is changed.
    pub fn fit(self) -> SyncMessage {
        match self {
            SyncMessage::Fetched(mut r) => {
                if fit_envelopes(&mut r.envelopes) {
                    r.more = true;
                }
                SyncMessage::Fetched(r)
            }
            SyncMessage::KeyPackages(KpResponse::KeyPackages(mut envs)) => {
                fit_envelopes(&mut envs);
                SyncMessage::KeyPackages(KpResponse::KeyPackages(envs))
            }
            SyncMessage::Summary(mut s) => {
                fit_summaries(&mut s);
                SyncMessage::Summary(s)
            }
            SyncMessage::Summaries(mut s) => {
                fit_summaries(&mut s);
                SyncMessage::Summaries(s)
            }
            other => other,
        }
    }
}

/// Keeps the first envelopes that fit [`MAX_FETCH_BYTES`] (at least one,
/// which an envelope's own limit lets through). True if any were cut.
fn fit_envelopes(envs: &mut Vec<ByteBuf>) -> bool {
    let mut size = 0usize;
    let keep = envs
        .iter()
        .take_while(|e| {
            size += e.len();
            size <= MAX_FETCH_BYTES
        })
        .count()
        .max(1)
        .min(envs.len());
    let cut = keep < envs.len();
    envs.truncate(keep);
    cut
}

/// CBOR bytes of one summary head at most: an array of two, a 32-byte
/// string, a `u64`.
const HEAD_BYTES: usize = 1 + 2 + 32 + 9;
/// And of one summary without its heads: a map of two with its keys, the
/// universe id, the heads array's header.
const SUMMARY_BYTES: usize = 1 + 9 + 2 + 32 + 6 + 5;

/// Keeps the first summaries and heads that fit a frame. A summary cut
/// short only leaves groups unmentioned (never claims less than we hold of
/// one), and none is sent without heads.
fn fit_summaries(sums: &mut Vec<SyncSummary>) {
    let mut room = MAX_FRAME_BYTES - FRAME_OVERHEAD;
    for i in 0..sums.len() {
        let left = room.saturating_sub(SUMMARY_BYTES);
        let heads = left / HEAD_BYTES;
        if heads < sums[i].heads.len() {
            sums[i].heads.truncate(heads);
            let keep = if heads == 0 { i } else { i + 1 };
            sums.truncate(keep);
            return;
        }
        room = left - sums[i].heads.len() * HEAD_BYTES;
    }
}

/// Decides what to fetch from a peer, given our heads and theirs: every
/// group where the peer holds more of the stream than we do.
pub fn plan(
    universe: Id32,
    ours: &BTreeMap<Id32, u64>,
    theirs: &SyncSummary,
    me: &MemberId,
) -> Vec<FetchRequest> {
    let mut out = vec![];
    let mut unknown = vec![];
    for (group, their_next) in &theirs.heads {
        match ours.get(group) {
            Some(our_next) if their_next > our_next => out.push(FetchRequest::Range {
                universe,
                group: *group,
                from: *our_next,
            }),
            Some(_) => {}
            None if unknown.len() < MAX_WELCOME_GROUPS => unknown.push(*group),
            None => {}
        }
    }
    // A group we are not in may hold a Welcome for us.
    if !unknown.is_empty() {
        out.push(FetchRequest::Welcomes {
            universe,
            member: me.clone(),
            groups: unknown,
        });
    }
    out
}
