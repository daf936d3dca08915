//! KeyPackage request and response over the request-response protocol (MLS
//! architecture draft 3.1.3, IETF 104 federation slides): the requester
//! names the member (or, with devices, the user) it wants to add and the
//! ciphersuites it supports; the answer holds signed KeyPackages, one per
//! device, or a typed refusal.
//!
//! Whom we ask: the target itself when it is a connected peer (it hands us
//! single-use KeyPackages from its pool, made for us alone); otherwise one
//! neighbour, which answers with a published (last-resort) KeyPackage of
//! the target if it holds one. The lobby request the engine publishes at
//! the same time reaches a target several hops away, which hands its
//! answer back on the lobby.
//!
//! Serving is rate-limited per requesting peer (a token bucket on the
//! driver's clock): every answer from our pool costs a KeyPackage (and, when
//! the pool is dry, building one), so a flood must not drain it or the CPU.

use super::key_packages::KeyPackageRelay;
use crate::identity::MemberId;
use crate::participant::{KpRefusal, Output, Participant};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;

/// A request for the KeyPackages of `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KpRequest {
    /// The member (PeerId) or user whose KeyPackages are asked for.
    pub target: String,
    /// Who will add them: single-use KeyPackages are made for it alone.
    pub requester: MemberId,
    /// The requester's ciphersuites (code points), in preference order.
    pub ciphersuites: Vec<u16>,
}

/// The answer to a [`KpRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KpResponse {
    /// Lobby KeyPackage envelopes (encoded), one per device: handed to the
    /// requester alone (addressed and signed) or published (last-resort).
    KeyPackages(Vec<ByteBuf>),
    Refused(KpRefusal),
}

/// KeyPackage envelopes one answer carries at most (devices of one user).
pub const MAX_KP_ANSWER: usize = 32;
/// Requesting peers whose bucket we keep at most.
const MAX_BUCKETS: usize = 4096;

/// A token bucket in thousandths of a request, on the driver's clock.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: u64,
    at: u64,
}

/// Serving and asking for KeyPackages: the rate limit per requesting peer,
/// which peer is which member, and when we last asked for each target.
#[derive(Debug)]
pub(crate) struct KpRequests<P> {
    buckets: BTreeMap<P, Bucket>,
    members: BTreeMap<P, MemberId>,
    asked: BTreeMap<String, u64>,
    rr: usize,
    per_min: u64,
    burst: u64,
}

impl<P: Ord + Clone> KpRequests<P> {
    pub(crate) fn new(per_min: u64, burst: u64) -> KpRequests<P> {
        KpRequests {
            buckets: BTreeMap::new(),
            members: BTreeMap::new(),
            asked: BTreeMap::new(),
            rr: 0,
            per_min,
            burst: burst.max(1),
        }
    }

    /// The driver learnt which member a peer is (its authenticated
    /// transport identity).
    pub(crate) fn identified(&mut self, peer: P, member: MemberId) {
        self.members.insert(peer, member);
    }

    pub(crate) fn gone(&mut self, peer: &P) {
        self.members.remove(peer);
    }

    /// Takes one request's token from `peer`'s bucket.
    fn allow(&mut self, peer: &P, now: u64) -> bool {
        let cap = self.burst * 1000;
        if !self.buckets.contains_key(peer) && self.buckets.len() >= MAX_BUCKETS {
            // Forget the bucket that refilled longest ago.
            if let Some(k) = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.at)
                .map(|(k, _)| k.clone())
            {
                self.buckets.remove(&k);
            }
        }
        let b = self.buckets.entry(peer.clone()).or_insert(Bucket {
            milli: cap,
            at: now,
        });
        let refill = now.saturating_sub(b.at).saturating_mul(self.per_min) / 60;
        b.milli = b.milli.saturating_add(refill).min(cap);
        b.at = b.at.max(now);
        if b.milli >= 1000 {
            b.milli -= 1000;
            true
        } else {
            false
        }
    }

    /// Answers `peer`'s request: our own KeyPackages if we are the target,
    /// else a published one of the target we hold, else a refusal.
    pub(crate) fn serve(
        &mut self,
        p: &mut Participant,
        relay: &KeyPackageRelay,
        peer: &P,
        req: KpRequest,
        now: u64,
    ) -> (KpResponse, Vec<Output>) {
        if !self.allow(peer, now) {
            return (KpResponse::Refused(KpRefusal::RateLimited), vec![]);
        }
        if self.members.get(peer).is_some_and(|m| *m != req.requester) {
            return (KpResponse::Refused(KpRefusal::WrongRequester), vec![]);
        }
        if req.target.starts_with(crate::devices::USER_PREFIX) {
            return Self::serve_user(p, relay, &req);
        }
        if p.answers_for(&req.target) {
            return match p.hand_key_packages(&req.target, &req.requester, &req.ciphersuites) {
                Ok((envs, outs)) => (
                    KpResponse::KeyPackages(
                        envs.into_iter()
                            .take(MAX_KP_ANSWER)
                            .map(ByteBuf::from)
                            .collect(),
                    ),
                    outs,
                ),
                Err(r) => (KpResponse::Refused(r), vec![]),
            };
        }
        let published = p
            .published_key_package(&req.target)
            .or_else(|| relay.newest_of(&req.target).map(|b| b.to_vec()));
        match published {
            Some(env) => (KpResponse::KeyPackages(vec![ByteBuf::from(env)]), vec![]),
            None => (
                KpResponse::Refused(KpRefusal::Unknown(req.target.clone())),
                vec![],
            ),
        }
    }

    /// A request for a user: for each of its linked devices we have heard
    /// of, the statement that it is the user's and a KeyPackage (ours
    /// handed to the requester alone if we are one of them, else a
    /// published one we hold). Devices we hold no KeyPackage of are left
    /// out; a user we know no device of is `Unknown`.
    fn serve_user(
        p: &mut Participant,
        relay: &KeyPackageRelay,
        req: &KpRequest,
    ) -> (KpResponse, Vec<Output>) {
        let mut envs = vec![];
        let mut outs = vec![];
        for d in p.devices_of(&req.target) {
            let Some(link) = p.device_link_envelope(&d) else {
                continue;
            };
            let kp: Vec<Vec<u8>> = if p.answers_for(d.as_str()) {
                // Ours: one in each of the requester's suites, as for a
                // request naming this device.
                match p.hand_key_packages(d.as_str(), &req.requester, &req.ciphersuites) {
                    Ok((e, o)) => {
                        outs.extend(o);
                        e
                    }
                    Err(_) => vec![],
                }
            } else {
                p.published_key_package(d.as_str())
                    .or_else(|| relay.newest_of(d.as_str()).map(|b| b.to_vec()))
                    .into_iter()
                    .collect()
            };
            if kp.is_empty() || envs.len() + 1 + kp.len() > MAX_KP_ANSWER {
                continue;
            }
            envs.push(ByteBuf::from(link));
            envs.extend(kp.into_iter().map(ByteBuf::from));
        }
        if envs.is_empty() {
            return (
                KpResponse::Refused(KpRefusal::Unknown(req.target.clone())),
                outs,
            );
        }
        (KpResponse::KeyPackages(envs), outs)
    }

    /// Whom to ask for `target`'s KeyPackages, and whether it is the
    /// target itself (None: asked within `every_ms`, or no peer): the
    /// target if connected, else a neighbour in turn.
    pub(crate) fn whom(
        &mut self,
        target: &str,
        peers: &[P],
        now: u64,
        every_ms: u64,
    ) -> Option<(P, bool)> {
        if self
            .asked
            .get(target)
            .is_some_and(|t| now < t.saturating_add(every_ms))
        {
            return None;
        }
        let direct = self
            .members
            .iter()
            .find(|(peer, m)| m.as_str() == target && peers.contains(peer))
            .map(|(peer, _)| peer.clone());
        let found = direct.is_some();
        let peer = match direct {
            Some(p) => p,
            None => {
                if peers.is_empty() {
                    return None;
                }
                self.rr = self.rr.wrapping_add(1);
                peers[self.rr % peers.len()].clone()
            }
        };
        self.asked.insert(target.to_string(), now);
        Some((peer, found))
    }

    /// Forgets what cannot matter any more.
    pub(crate) fn gc(&mut self, now: u64, keep_ms: u64) {
        self.asked.retain(|_, t| now < t.saturating_add(keep_ms));
        let full_after = (self.burst * 60_000) / self.per_min.max(1);
        self.buckets
            .retain(|_, b| now < b.at.saturating_add(full_after));
    }
}
