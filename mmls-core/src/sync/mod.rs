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

use crate::envelope::MAX_ENVELOPE_BYTES;
use crate::id::Id32;
use crate::identity::MemberId;
use crate::universe::{from_cbor, to_cbor};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;

/// How many envelopes one fetch answer carries at most.
pub const MAX_FETCH_ENVELOPES: usize = 256;
/// Groups one Welcomes request may name.
pub const MAX_WELCOME_GROUPS: usize = 64;
/// And how many bytes (what a decoder accepts).
pub const MAX_FETCH_BYTES: usize = 4 * MAX_ENVELOPE_BYTES;
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
        if b.len() > MAX_FETCH_BYTES + 4096 {
            return Err(format!("sync message of {} bytes is too large", b.len()));
        }
        from_cbor(b)
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
