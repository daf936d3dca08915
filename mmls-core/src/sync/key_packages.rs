//! The KeyPackage relay: others' KeyPackages seen on the lobby, kept (bounded)
//! to hand to newly connected peers and to answer a request for one we hold;
//! and our own, rate-limited, request for a member's KeyPackage.
//!
//! Gossip cannot carry these alone: gossipsub refuses to re-send identical
//! bytes inside its duplicate window, so a peer that connects after a
//! KeyPackage went round (or whose request's addressee already answered)
//! gets it from us directly, as a push.

use crate::envelope::{Envelope, Kind};
use crate::identity::MemberId;
use crate::participant::{Publish, Topic};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// One cached lobby KeyPackage envelope (as received, bytes intact).
#[derive(Debug, Clone)]
struct Cached {
    sender: String,
    bytes: Vec<u8>,
}

/// What an accepted lobby envelope asks of the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Nothing to do (ours, unknown kind, already cached, undecodable).
    Nothing,
    /// A KeyPackage, now cached.
    Cached,
    /// A request for a KeyPackage we hold: push these bytes to whoever
    /// relayed the request.
    Answer(Vec<u8>),
}

/// The KeyPackage cache and the record of our own requests.
#[derive(Debug)]
pub(crate) struct KeyPackageRelay {
    cache: VecDeque<Cached>,
    /// Ids of the cached envelopes (dedupe).
    seen: BTreeSet<[u8; 32]>,
    capacity: usize,
    /// When we last asked the lobby for a member's KeyPackage.
    asked: BTreeMap<String, u64>,
}

impl KeyPackageRelay {
    pub(crate) fn new(capacity: usize) -> KeyPackageRelay {
        KeyPackageRelay {
            cache: VecDeque::new(),
            seen: BTreeSet::new(),
            capacity: capacity.max(1),
            asked: BTreeMap::new(),
        }
    }

    /// Looks at a lobby envelope the engine accepted (or already had).
    pub(crate) fn observe(&mut self, me: &MemberId, bytes: &[u8]) -> Seen {
        let Ok(env) = Envelope::decode(bytes) else {
            return Seen::Nothing;
        };
        match env.kind {
            Kind::KeyPackage => {
                let Some(sender) = env.sender else {
                    return Seen::Nothing;
                };
                if env.to.is_some() {
                    // Handed to one owner: nobody else may use it.
                    return Seen::Nothing;
                }
                if sender == me.as_str() || !self.seen.insert(Envelope::id_of(bytes)) {
                    return Seen::Nothing;
                }
                self.cache.push_back(Cached {
                    sender,
                    bytes: bytes.to_vec(),
                });
                while self.cache.len() > self.capacity {
                    if let Some(old) = self.cache.pop_front() {
                        self.seen.remove(&Envelope::id_of(&old.bytes));
                    }
                }
                Seen::Cached
            }
            Kind::KeyPackageRequest => {
                let Some(to) = env.to else {
                    return Seen::Nothing;
                };
                if to == me.as_str() {
                    // The engine answers requests for our own.
                    return Seen::Nothing;
                }
                match self.newest_of(&to) {
                    Some(b) => Seen::Answer(b.to_vec()),
                    None => Seen::Nothing,
                }
            }
            _ => Seen::Nothing,
        }
    }

    /// The newest cached KeyPackage of `member`.
    pub(crate) fn newest_of(&self, member: &str) -> Option<&[u8]> {
        self.cache
            .iter()
            .rev()
            .find(|c| c.sender == member)
            .map(|c| c.bytes.as_slice())
    }

    /// Up to `n` cached KeyPackages, newest first.
    pub(crate) fn newest(&self, n: usize) -> impl Iterator<Item = &[u8]> {
        self.cache.iter().rev().take(n).map(|c| c.bytes.as_slice())
    }

    /// Our request for `member`'s KeyPackage on the lobby, unless we asked
    /// within `every_ms`.
    pub(crate) fn ask(
        &mut self,
        me: &MemberId,
        member: &str,
        now: u64,
        every_ms: u64,
    ) -> Option<Publish> {
        if self
            .asked
            .get(member)
            .is_some_and(|t| now < t.saturating_add(every_ms))
        {
            return None;
        }
        self.asked.insert(member.to_string(), now);
        Some(Publish {
            topic: Topic::Lobby,
            bytes: key_package_request(me, member, now).encode(),
            outbox_id: None,
        })
    }

    /// Forgets requests older than `keep_ms`.
    pub(crate) fn gc(&mut self, now: u64, keep_ms: u64) {
        self.asked.retain(|_, t| now < t.saturating_add(keep_ms));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.cache.len()
    }
}

/// A lobby request, from `me`, for `member`'s KeyPackage, made at driver
/// time `at`. The time makes each attempt's bytes differ: gossipsub drops a
/// message it has already published, so a request repeated byte for byte
/// after the first was lost (the lobby mesh not formed yet) would never
/// leave the node again (found by the node test of a single-use member two
/// hops away, under load).
pub fn key_package_request(me: &MemberId, member: &str, at: u64) -> Envelope {
    let mut e = Envelope::new(Kind::KeyPackageRequest, vec![]);
    e.sender = Some(me.to_string());
    e.to = Some(member.to_string());
    e.seq = at;
    e
}
