//! Our Update proposals waiting for their owners' commits, and when to
//! re-send one that went stale.
//!
//! Leaf rotation sends an Update proposal in every other send group; the
//! owner commits it with its next commit. Owners refuse a proposal made in
//! an epoch they have left, so a commit that moves a group on without ours
//! makes ours stale. Re-sending at every such commit, as the engine did,
//! fed a storm in busy universes (24 members: 3.9 proposals per update and
//! member, most refused as stale): each re-send raced the owner's next
//! commit again, and when everyone updates at once every owner commits
//! again soon (to import the others' updates). So a re-send waits. It
//! happens only once the group has reached an epoch after the one we last
//! proposed in, at most once per such epoch (a burst of commits costs one
//! re-send, in the newest), once the group has been quiet for a delay that
//! doubles each time the owner moves on without it (up to
//! [`MAX_DOUBLINGS`]), and at the latest [`MAX_QUIET_WAITS`] delays after
//! it went stale, so a group that never rests still gets it.
//!
//! Persisted with the universe (its leaf-update set was already): the
//! epoch of our last proposal decides whether a re-send is allowed. Lost on
//! a restart, it would either re-propose in an epoch where the owner may
//! still hold our proposal (two Updates of one leaf), or wait for the
//! owner's next commit, which in a quiet group may never come.

use crate::id::Id32;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Backoff stops growing after this many doublings of the base delay.
pub(super) const MAX_DOUBLINGS: u32 = 6;
/// A re-send waits for a quiet group at most this many delays.
pub(super) const MAX_QUIET_WAITS: u64 = 4;

/// One group's pending proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Pending {
    /// The group's epoch when we last proposed in it.
    proposed_in: u64,
    /// Re-sends of this leaf rotation so far (the backoff's exponent).
    resends: u32,
    /// The group moved on without our proposal: re-send from this time on
    /// (driver ms).
    retry_at: Option<u64>,
    /// When the pending proposal went stale (driver ms).
    #[serde(default)]
    stale_since: Option<u64>,
}

/// Send groups (of others) where our leaf rotation is proposed but not
/// committed yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(super) struct Reproposals(BTreeMap<Id32, Pending>);

impl Reproposals {
    /// A proposal for a new leaf rotation, made in `epoch` of `g`.
    pub(super) fn proposed(&mut self, g: Id32, epoch: u64) {
        self.0.insert(
            g,
            Pending {
                proposed_in: epoch,
                resends: 0,
                retry_at: None,
                stale_since: None,
            },
        );
    }

    /// A re-send of the pending proposal, made in `epoch` of `g`.
    pub(super) fn resent(&mut self, g: Id32, epoch: u64) {
        if let Some(p) = self.0.get_mut(&g) {
            p.proposed_in = epoch;
            p.resends = p.resends.saturating_add(1);
            p.retry_at = None;
            p.stale_since = None;
        }
    }

    /// `g`'s owner committed our proposal: nothing pending there any more.
    pub(super) fn covered(&mut self, g: &Id32) {
        self.0.remove(g);
    }

    pub(super) fn is_pending(&self, g: &Id32) -> bool {
        self.0.contains_key(g)
    }

    pub(super) fn clear(&mut self) {
        self.0.clear();
    }

    /// `g` reached `epoch` without our proposal: (re)schedule its one
    /// re-send, after the group has been quiet for `base_ms` doubled per
    /// earlier re-send, but no later than [`MAX_QUIET_WAITS`] such delays
    /// after it went stale.
    pub(super) fn missed(&mut self, g: &Id32, epoch: u64, now: u64, base_ms: u64) {
        let Some(p) = self.0.get_mut(g) else {
            return;
        };
        if epoch <= p.proposed_in {
            return;
        }
        let delay = base_ms.saturating_mul(1 << p.resends.min(MAX_DOUBLINGS));
        let since = *p.stale_since.get_or_insert(now);
        let latest = since.saturating_add(delay.saturating_mul(MAX_QUIET_WAITS));
        p.retry_at = Some(now.saturating_add(delay).min(latest));
    }

    /// Groups whose re-send is due at `now`, given each group's current
    /// epoch (`epoch_of`; None: the group is gone or not usable now). A
    /// group that is gone for good is dropped.
    pub(super) fn due(
        &mut self,
        now: u64,
        epoch_of: impl Fn(&Id32) -> Option<Option<u64>>,
    ) -> Vec<Id32> {
        self.0.retain(|g, _| epoch_of(g).is_some());
        self.0
            .iter()
            .filter(|(g, p)| {
                p.retry_at.is_some_and(|t| now >= t)
                    && epoch_of(g).flatten().is_some_and(|e| e > p.proposed_in)
            })
            .map(|(g, _)| *g)
            .collect()
    }

    /// The earliest scheduled re-send.
    #[cfg(test)]
    fn next_retry(&self) -> Option<u64> {
        self.0.values().filter_map(|p| p.retry_at).min()
    }
}

/// Rows written before re-sends were scheduled hold a bare set of groups;
/// their proposals count as made in epoch 0 with nothing scheduled, so the
/// next commit that does not cover one schedules its re-send, as before.
impl<'de> Deserialize<'de> for Reproposals {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Current(BTreeMap<Id32, Pending>),
            Legacy(BTreeSet<Id32>),
        }
        Ok(match Stored::deserialize(d)? {
            Stored::Current(m) => Reproposals(m),
            Stored::Legacy(s) => Reproposals(
                s.into_iter()
                    .map(|g| {
                        let p = Pending {
                            proposed_in: 0,
                            resends: 0,
                            retry_at: None,
                            stale_since: None,
                        };
                        (g, p)
                    })
                    .collect(),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Id32 = Id32([7; 32]);

    #[test]
    fn one_resend_per_new_epoch_with_doubling_backoff() {
        let mut r = Reproposals::default();
        r.proposed(G, 5);
        let at = |e: u64| move |_: &Id32| Some(Some(e));
        // The group has not moved: nothing to re-send, whatever the time.
        r.missed(&G, 5, 1_000, 100);
        assert!(r.due(u64::MAX, at(5)).is_empty());
        // It moves on twice in a burst: one re-send, once it has been quiet
        // for the base delay.
        r.missed(&G, 6, 1_000, 100);
        assert_eq!(r.next_retry(), Some(1_100));
        r.missed(&G, 7, 1_050, 100);
        assert_eq!(r.next_retry(), Some(1_150));
        assert!(r.due(1_149, at(7)).is_empty());
        assert_eq!(r.due(1_150, at(7)), vec![G]);
        r.resent(G, 7);
        assert!(r.due(u64::MAX, at(7)).is_empty(), "once per epoch");
        // Missed again: twice the delay, then four times.
        r.missed(&G, 8, 2_000, 100);
        assert_eq!(r.next_retry(), Some(2_200));
        r.resent(G, 8);
        r.missed(&G, 9, 3_000, 100);
        assert_eq!(r.next_retry(), Some(3_400));
        for _ in 0..20 {
            r.resent(G, 9);
        }
        r.missed(&G, 10, 0, 100);
        assert_eq!(r.next_retry(), Some(100 << MAX_DOUBLINGS), "capped");
        // A group that never rests: the re-send comes after at most
        // MAX_QUIET_WAITS delays.
        let mut busy = Reproposals::default();
        busy.proposed(G, 1);
        for t in 0..100u64 {
            busy.missed(&G, 2 + t, t * 50, 100);
        }
        assert_eq!(busy.next_retry(), Some(100 * MAX_QUIET_WAITS));
        // Covered: gone.
        r.covered(&G);
        assert!(!r.is_pending(&G));
        assert!(r.due(u64::MAX, at(99)).is_empty());
    }

    #[test]
    fn gone_groups_are_dropped_and_unusable_ones_wait() {
        let mut r = Reproposals::default();
        r.proposed(G, 1);
        r.missed(&G, 2, 0, 10);
        assert!(r.due(100, |_| Some(None)).is_empty(), "stale group waits");
        assert!(r.is_pending(&G));
        assert!(r.due(100, |_| None).is_empty());
        assert!(!r.is_pending(&G), "a group we left is dropped");
    }

    #[test]
    fn reads_the_legacy_set() {
        let mut legacy = vec![];
        ciborium::into_writer(&BTreeSet::from([G]), &mut legacy).unwrap();
        let r: Reproposals = ciborium::from_reader(legacy.as_slice()).unwrap();
        assert!(r.is_pending(&G));
        let mut cur = vec![];
        ciborium::into_writer(&r, &mut cur).unwrap();
        let back: Reproposals = ciborium::from_reader(cur.as_slice()).unwrap();
        assert_eq!(back, r);
    }
}
