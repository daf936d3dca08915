//! What we already told each peer, so a slow link does not carry it again.
//!
//! Measured on a 256 kbit/s radio, most of what crossed between two squads
//! was repetition: every connection (and every redial) pushed every
//! KeyPackage we relay and published our announcement on the lobby again,
//! and every 5 s each connection carried both sides' full summaries though
//! nothing had changed. Now:
//! - a periodic round skips a peer whose last summary from us is the one we
//!   would send, until `quiet_round_ms` has passed: whoever has something
//!   new tells (its summary changed), and the other side's answer carries
//!   its own, so each side still learns what the other has more of;
//! - the KeyPackages pushed on connect are not pushed again to a peer that
//!   got the same set before (across reconnects), until `repeat_push_ms`;
//! - our lobby announcement goes out when it changed, or after
//!   `repeat_push_ms`; peers further away ask for it (KeyPackage requests).

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Peers whose pushes we remember across reconnects (the most recent).
const MAX_PUSHED: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    digest: u64,
    at: u64,
}

impl Mark {
    fn covers(&self, digest: u64, now: u64, fresh_for: u64) -> bool {
        self.digest == digest && now < self.at.saturating_add(fresh_for)
    }
}

#[derive(Debug)]
pub(crate) struct Told<P> {
    summaries: BTreeMap<P, Mark>,
    pushes: BTreeMap<P, Mark>,
    announced: Option<Mark>,
}

impl<P> Default for Told<P> {
    fn default() -> Self {
        Told {
            summaries: BTreeMap::new(),
            pushes: BTreeMap::new(),
            announced: None,
        }
    }
}

impl<P: Ord + Clone> Told<P> {
    /// Whether a periodic round should send `peer` summaries of `digest`.
    pub(crate) fn summary_due(&self, peer: &P, digest: u64, now: u64, quiet: u64) -> bool {
        !self
            .summaries
            .get(peer)
            .is_some_and(|m| m.covers(digest, now, quiet))
    }

    pub(crate) fn told_summary(&mut self, peer: P, digest: u64, now: u64) {
        self.summaries.insert(peer, Mark { digest, at: now });
    }

    /// The peer may not have it (gone, or the request failed).
    pub(crate) fn forget_summary(&mut self, peer: &P) {
        self.summaries.remove(peer);
    }

    pub(crate) fn push_due(&self, peer: &P, digest: u64, now: u64, repeat: u64) -> bool {
        !self
            .pushes
            .get(peer)
            .is_some_and(|m| m.covers(digest, now, repeat))
    }

    pub(crate) fn pushed(&mut self, peer: P, digest: u64, now: u64) {
        self.pushes.insert(peer, Mark { digest, at: now });
        if self.pushes.len() > MAX_PUSHED {
            let oldest = self
                .pushes
                .iter()
                .min_by_key(|(_, m)| m.at)
                .map(|(p, _)| p.clone());
            if let Some(p) = oldest {
                self.pushes.remove(&p);
            }
        }
    }

    pub(crate) fn announce_due(&self, digest: u64, now: u64, repeat: u64) -> bool {
        !self
            .announced
            .is_some_and(|m| m.covers(digest, now, repeat))
    }

    pub(crate) fn announced(&mut self, digest: u64, now: u64) {
        self.announced = Some(Mark { digest, at: now });
    }
}

/// A short digest of a value's CBOR (what we would send).
pub(crate) fn digest<T: Serialize>(v: &T) -> u64 {
    let bytes = crate::universe::to_cbor(v);
    let h = Sha256::digest(&bytes);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_told_summary_waits_for_a_change_or_the_quiet_interval() {
        let mut t: Told<u8> = Told::default();
        let d = digest(&vec![1u64, 2]);
        assert!(t.summary_due(&1, d, 0, 60_000));
        t.told_summary(1, d, 0);
        assert!(!t.summary_due(&1, d, 59_999, 60_000));
        assert!(t.summary_due(&1, digest(&vec![1u64, 3]), 1, 60_000));
        assert!(t.summary_due(&1, d, 60_000, 60_000));
        assert!(t.summary_due(&2, d, 1, 60_000), "per peer");
        t.forget_summary(&1);
        assert!(t.summary_due(&1, d, 1, 60_000));
    }

    #[test]
    fn pushes_are_remembered_across_reconnects_within_bounds() {
        let mut t: Told<u32> = Told::default();
        for p in 0..(MAX_PUSHED as u32 + 10) {
            t.pushed(p, 7, p as u64);
        }
        assert!(t.pushes.len() <= MAX_PUSHED);
        assert!(!t.push_due(&(MAX_PUSHED as u32), 7, 2000, 600_000));
        assert!(t.push_due(&(MAX_PUSHED as u32), 8, 2000, 600_000));
        assert!(t.announce_due(1, 0, 10));
        t.announced(1, 0);
        assert!(!t.announce_due(1, 9, 10));
        assert!(t.announce_due(1, 10, 10));
        assert!(t.announce_due(2, 1, 10));
    }
}
