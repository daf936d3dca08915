//! Stream entries of send groups we do not know, held unverified.
//!
//! The rule: an entry whose send group is in our state (we joined it, so
//! its owner is a member we verified) waits in that group's buffer
//! (`stream_buffer.rs`, persisted, `Config::max_buffer_per_group`). An
//! entry of any other group cannot be judged: nothing in it names its owner
//! before MLS decrypts it, and anyone can make up group ids. It may be real
//! (a member's new send group whose Welcome has not reached us yet, or our
//! own Welcome waiting for PSKs), so a small budget per universe holds such
//! entries, in memory only, oldest evicted first and aged out
//! (`Config::held_per_universe`, `held_bytes_per_universe`,
//! `held_max_age_ms`). Holding one answers `MmlsError::Held`, which the
//! relay rule drops: what a stranger makes up is neither kept on disk nor
//! passed on. When we join the group, its held entries move to its buffer
//! and are processed; one evicted before is fetched again like any gap.

use super::*;
use std::collections::VecDeque;

/// One held entry.
#[derive(Debug)]
struct HeldEntry {
    group: Id32,
    seq: u64,
    /// Engine time when it arrived (for aging out).
    at: u64,
    /// A Welcome addressed to one of our KeyPackages (retried when PSKs
    /// arrive: the only kind we can join through).
    mine: bool,
    /// A Welcome's PSK dependencies (checked before it is decoded again).
    deps: Vec<(Id32, u64)>,
    bytes: Vec<u8>,
}

/// An entry to hold: position `seq` of `group`, and, for a Welcome of
/// ours, its PSK dependencies.
#[derive(Debug, Clone, Copy)]
pub(super) struct Arrival<'a> {
    pub(super) group: Id32,
    pub(super) seq: u64,
    pub(super) bytes: &'a [u8],
    pub(super) mine: Option<&'a [(Id32, u64)]>,
}

/// One universe's held entries, oldest first, and their bytes in all.
#[derive(Debug, Default)]
struct Pen {
    entries: VecDeque<HeldEntry>,
    bytes: usize,
}

impl Pen {
    fn pop_oldest(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.bytes.len();
        }
    }
}

/// The budgets of one universe's pen.
#[derive(Debug, Clone, Copy)]
pub(super) struct HeldLimits {
    pub(super) entries: usize,
    pub(super) bytes: usize,
    pub(super) max_age_ms: u64,
}

/// Why an entry was not held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HoldRefusal {
    /// The same bytes are held already.
    Duplicate,
    /// Larger than the whole budget.
    TooLarge,
}

/// Held entries per universe.
#[derive(Debug, Default)]
pub(super) struct Held {
    pens: BTreeMap<Id32, Pen>,
}

/// What a universe holds unverified: entries and their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeldCount {
    pub entries: usize,
    pub bytes: usize,
}

impl Held {
    /// Holds `a` in `uid`'s pen, evicting the oldest entries to stay
    /// within `lim`.
    pub(super) fn hold(
        &mut self,
        uid: Id32,
        a: Arrival,
        now: u64,
        lim: HeldLimits,
    ) -> Result<(), HoldRefusal> {
        let Arrival {
            group,
            seq,
            bytes,
            mine,
        } = a;
        if bytes.len() > lim.bytes || lim.entries == 0 {
            return Err(HoldRefusal::TooLarge);
        }
        let pen = self.pens.entry(uid).or_default();
        if pen
            .entries
            .iter()
            .any(|e| e.group == group && e.seq == seq && e.bytes == bytes)
        {
            return Err(HoldRefusal::Duplicate);
        }
        Self::age(pen, now, lim.max_age_ms);
        while pen.entries.len() >= lim.entries || pen.bytes + bytes.len() > lim.bytes {
            pen.pop_oldest();
        }
        pen.bytes += bytes.len();
        pen.entries.push_back(HeldEntry {
            group,
            seq,
            at: now,
            mine: mine.is_some(),
            deps: mine.map(<[_]>::to_vec).unwrap_or_default(),
            bytes: bytes.to_vec(),
        });
        Ok(())
    }

    fn age(pen: &mut Pen, now: u64, max_age_ms: u64) {
        while pen
            .entries
            .front()
            .is_some_and(|e| now >= e.at.saturating_add(max_age_ms))
        {
            pen.pop_oldest();
        }
    }

    /// Drops entries older than `max_age_ms`, and empty pens.
    pub(super) fn expire(&mut self, now: u64, max_age_ms: u64) {
        for pen in self.pens.values_mut() {
            Self::age(pen, now, max_age_ms);
        }
        self.pens.retain(|_, p| !p.entries.is_empty());
    }

    /// Removes and returns `group`'s held entries (it became known).
    pub(super) fn take_group(&mut self, uid: &Id32, group: &Id32) -> Vec<(u64, Vec<u8>)> {
        let Some(pen) = self.pens.get_mut(uid) else {
            return vec![];
        };
        if !pen.entries.iter().any(|e| e.group == *group) {
            return vec![];
        }
        let (taken, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut pen.entries)
            .into_iter()
            .partition(|e| e.group == *group);
        pen.entries = kept;
        pen.bytes = pen.entries.iter().map(|e| e.bytes.len()).sum();
        taken.into_iter().map(|e| (e.seq, e.bytes)).collect()
    }

    /// The groups of `uid` with a held Welcome of ours whose dependencies
    /// are `ready`.
    pub(super) fn groups_with_welcomes(
        &self,
        uid: &Id32,
        ready: impl Fn(&[(Id32, u64)]) -> bool,
    ) -> Vec<Id32> {
        let mut gs: Vec<Id32> = self
            .pens
            .get(uid)
            .map(|p| {
                p.entries
                    .iter()
                    .filter(|e| e.mine && ready(&e.deps))
                    .map(|e| e.group)
                    .collect()
            })
            .unwrap_or_default();
        gs.sort();
        gs.dedup();
        gs
    }

    /// `group`'s held Welcomes of ours (copies).
    pub(super) fn welcomes_of(&self, uid: &Id32, group: &Id32) -> Vec<Vec<u8>> {
        self.pens
            .get(uid)
            .map(|p| {
                p.entries
                    .iter()
                    .filter(|e| e.group == *group && e.mine)
                    .map(|e| e.bytes.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets one entry (a Welcome that failed to join).
    pub(super) fn remove(&mut self, uid: &Id32, group: &Id32, bytes: &[u8]) {
        let Some(pen) = self.pens.get_mut(uid) else {
            return;
        };
        let at = pen
            .entries
            .iter()
            .position(|e| e.group == *group && e.bytes == bytes);
        if let Some(e) = at.and_then(|i| pen.entries.remove(i)) {
            pen.bytes -= e.bytes.len();
        }
    }

    /// Forgets a universe's pen (we left it or were removed).
    pub(super) fn forget(&mut self, uid: &Id32) {
        self.pens.remove(uid);
    }

    pub(super) fn count(&self, uid: &Id32) -> HeldCount {
        self.pens
            .get(uid)
            .map(|p| HeldCount {
                entries: p.entries.len(),
                bytes: p.bytes,
            })
            .unwrap_or_default()
    }
}

impl Participant {
    fn held_limits(&self) -> HeldLimits {
        HeldLimits {
            entries: self.config.held_per_universe,
            bytes: self.config.held_bytes_per_universe,
            max_age_ms: self.config.held_max_age_ms,
        }
    }

    /// Holds an entry of group `g` we do not know (see the module doc).
    pub(super) fn hold_unknown(
        &mut self,
        uid: Id32,
        g: Id32,
        env: &Envelope,
        bytes: &[u8],
    ) -> Result<(), MmlsError> {
        let seq = env.seq;
        let mine = env.kind == Kind::Welcome && self.welcome_is_for_me(env)?;
        let a = Arrival {
            group: g,
            seq,
            bytes,
            mine: mine.then_some(env.deps.as_slice()),
        };
        let lim = self.held_limits();
        match self.held.hold(uid, a, self.now, lim) {
            Ok(()) => Err(MmlsError::Held(g)),
            // Already held: still held (a bundle import feeds it again).
            Err(HoldRefusal::Duplicate) => Err(MmlsError::Held(g)),
            Err(HoldRefusal::TooLarge) => Err(MmlsError::TooLarge(bytes.len(), lim.bytes)),
        }
    }

    /// Moves `g`'s held entries into its buffer once we know it (joined),
    /// in a step of their own: now they are the stream of a member's group.
    pub(super) fn adopt_held(&mut self, uid: Id32, g: Id32) {
        let known = self
            .state
            .universes
            .get(&uid)
            .is_some_and(|u| u.groups.contains_key(&g));
        if !known {
            return;
        }
        let entries = self.held.take_group(&uid, &g);
        if entries.is_empty() {
            return;
        }
        let next = self
            .state
            .universes
            .get(&uid)
            .and_then(|u| u.groups.get(&g))
            .map(|s| s.next_seq)
            .unwrap_or(0);
        let room = self.config.max_buffer_per_group;
        let r = self.step(|p| {
            for (seq, bytes) in entries {
                let held_here = p.buffers.get(&g).is_some_and(|b| b.contains_key(&seq));
                let full = p.buffers.get(&g).is_some_and(|b| b.len() >= room);
                if seq >= next && !held_here && !full {
                    p.buffer_put(g, seq, bytes);
                }
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::debug!(group = %g.short(), error = %e, "adopting held entries failed");
        }
    }

    /// Entries of groups of `uid` we do not know, held unverified.
    pub fn held_unverified(&self, uid: &Id32) -> HeldCount {
        self.held.count(uid)
    }

    /// A store written before held entries existed may have persisted
    /// entries of made-up groups in `Table::Buffer` (and read them back
    /// whole at every start): those of groups no universe of ours knows are
    /// dropped on open. A real one is fetched again.
    pub(super) fn drop_unknown_buffers(&mut self) -> Result<(), MmlsError> {
        let known: BTreeSet<Id32> = self
            .state
            .universes
            .values()
            .flat_map(|u| u.groups.keys().copied())
            .collect();
        let unknown: Vec<(Id32, Vec<u64>)> = self
            .buffers
            .iter()
            .filter(|(g, _)| !known.contains(g))
            .map(|(g, b)| (*g, b.keys().copied().collect()))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        self.step(|p| {
            for (g, seqs) in unknown {
                for s in seqs {
                    p.buffer_remove(g, s);
                }
                p.buffers.remove(&g);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(group: Id32, seq: u64, bytes: &[u8]) -> Arrival<'_> {
        Arrival {
            group,
            seq,
            bytes,
            mine: None,
        }
    }

    fn lim() -> HeldLimits {
        HeldLimits {
            entries: 3,
            bytes: 100,
            max_age_ms: 1_000,
        }
    }

    #[test]
    fn a_pen_keeps_the_newest_within_count_bytes_and_age() {
        let (u, g) = (Id32([1; 32]), Id32([2; 32]));
        let mut h = Held::default();
        for seq in 0..10 {
            h.hold(u, arrival(g, seq, &[seq as u8; 10]), 0, lim())
                .unwrap();
        }
        assert_eq!(
            h.count(&u),
            HeldCount {
                entries: 3,
                bytes: 30
            }
        );
        let kept: Vec<u64> = h.take_group(&u, &g).into_iter().map(|(s, _)| s).collect();
        assert_eq!(kept, vec![7, 8, 9]);
        // Bytes: two of 45 fit, a third evicts the oldest.
        for seq in 0..3 {
            h.hold(u, arrival(g, seq, &[0; 45]), 0, lim()).unwrap();
        }
        assert_eq!(h.count(&u).entries, 2);
        assert_eq!(h.count(&u).bytes, 90);
        assert_eq!(
            h.hold(u, arrival(g, 9, &[0; 101]), 0, lim()),
            Err(HoldRefusal::TooLarge)
        );
        assert_eq!(
            h.hold(u, arrival(g, 2, &[0; 45]), 0, lim()),
            Err(HoldRefusal::Duplicate)
        );
        h.expire(1_000, 1_000);
        assert_eq!(h.count(&u), HeldCount::default());
    }
}
