//! Bounds on what strangers on the lobby can make us keep: others'
//! announced KeyPackages, single-use KeyPackages handed to us, and the
//! device directory.
//!
//! Identities cost nothing to make, so each of these would grow by one row
//! per identity a flood invents. Rows about members of our universes (the
//! roster, pending adds and re-adds) are what we need and are never evicted:
//! their number is bounded by the universes we are in. Past its bound, a
//! store evicts the row about a stranger that arrived (or was refreshed)
//! longest ago, so a real newcomer's row, arriving after a flood, is always
//! kept, and a live stranger that re-announces itself stays. Arrival order
//! lives in memory: after a restart every row counts as old (device
//! statements as of their date), which only changes which stranger goes
//! first. An evicted KeyPackage is asked for again when an add needs it
//! (`request_kp`).

use super::*;
use std::hash::Hash;

/// Statements the device directory keeps before it evicts one about a
/// stranger (the KeyPackage bounds are `Config::kp_strangers_max` and
/// `kp_handed_max`).
pub const MAX_DIRECTORY: usize = 4096;

/// Arrival order of evictable rows.
#[derive(Debug)]
pub(super) struct Arrivals<K> {
    at: HashMap<K, u64>,
    next: u64,
}

impl<K> Default for Arrivals<K> {
    fn default() -> Self {
        Arrivals {
            at: HashMap::new(),
            next: 1,
        }
    }
}

impl<K: Eq + Hash + Clone + Ord> Arrivals<K> {
    /// `k` arrived (or was refreshed) now.
    pub(super) fn touch(&mut self, k: &K) {
        self.at.insert(k.clone(), self.next);
        self.next += 1;
    }

    pub(super) fn forget(&mut self, k: &K) {
        self.at.remove(k);
    }

    /// The longest-ago arrival among `candidates` (never touched: oldest;
    /// ties go by key order). `seed` orders the never-touched ones.
    pub(super) fn oldest<'a>(&self, candidates: impl Iterator<Item = (&'a K, u64)>) -> Option<K>
    where
        K: 'a,
    {
        candidates
            .map(|(k, seed)| ((self.at.get(k).copied().unwrap_or(0), seed), k))
            .min()
            .map(|(_, k)| k.clone())
    }
}

/// The arrival order of each bounded lobby store.
#[derive(Debug, Default)]
pub(super) struct LobbyArrivals {
    pub(super) kps: Arrivals<MemberId>,
    pub(super) handed: Arrivals<MemberId>,
    pub(super) links: Arrivals<MemberId>,
}

impl Participant {
    /// Members we need rows about: in a roster of ours, being added, or to
    /// be re-added.
    fn needed_members(&self) -> BTreeSet<MemberId> {
        let mut s = BTreeSet::new();
        for u in self.state.universes.values() {
            if u.removed {
                continue;
            }
            s.extend(u.roster.iter().cloned());
            s.extend(u.pending_adds.iter().cloned());
            s.extend(u.readds.keys().cloned());
        }
        s
    }

    /// Evicts announced KeyPackages of strangers beyond
    /// `Config::kp_strangers_max`, longest-ago arrival first.
    pub(super) fn bound_known_kps(&mut self, arrived: &MemberId) {
        self.lobby.kps.touch(arrived);
        let max = self.config.kp_strangers_max;
        let needed = self.needed_members();
        let strangers = self
            .state
            .known_kps
            .keys()
            .filter(|m| !needed.contains(*m))
            .count();
        for _ in max..strangers {
            let victim = self.lobby.kps.oldest(
                self.state
                    .known_kps
                    .keys()
                    .filter(|m| !needed.contains(*m))
                    .map(|m| (m, 0)),
            );
            let Some(v) = victim else { break };
            self.state.known_kps.remove(&v);
            self.lobby.kps.forget(&v);
        }
    }

    /// Evicts KeyPackages strangers handed to us beyond
    /// `Config::kp_handed_max`, longest-ago arrival first.
    pub(super) fn bound_handed_kps(&mut self, arrived: &MemberId) {
        self.lobby.handed.touch(arrived);
        let max = self.config.kp_handed_max;
        let needed = self.needed_members();
        let strangers = self
            .state
            .pool
            .handed
            .keys()
            .filter(|m| !needed.contains(*m))
            .count();
        for _ in max..strangers {
            let victim = self.lobby.handed.oldest(
                self.state
                    .pool
                    .handed
                    .keys()
                    .filter(|m| !needed.contains(*m))
                    .map(|m| (m, 0)),
            );
            let Some(v) = victim else { break };
            self.state.pool.handed.remove(&v);
            self.lobby.handed.forget(&v);
        }
    }

    /// Makes room in the device directory for a statement about `device`:
    /// past `MAX_DIRECTORY`, the statement about a device none of our
    /// universes contains that arrived longest ago goes (before a restart
    /// the oldest by date). False if no such statement is left to evict
    /// (every one is about a device of ours).
    pub(super) fn room_for_link(&mut self, device: &MemberId) -> bool {
        if self.state.device_links.contains_key(device)
            || self.state.device_links.keys().len() < MAX_DIRECTORY
        {
            return true;
        }
        let needed = self.needed_members();
        if needed.contains(device) {
            // A device of ours is always learnt; the directory may exceed
            // its bound by our universes' members.
            return true;
        }
        let victim = self.lobby.links.oldest(
            self.state
                .device_links
                .iter()
                .filter(|(m, _)| !needed.contains(*m) && *m != &self.me)
                .map(|(m, k)| (m, k.link.at)),
        );
        match victim {
            Some(v) => {
                self.state.device_links.remove(&v);
                self.lobby.links.forget(&v);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_ago_arrival_goes_first() {
        let mut a: Arrivals<u32> = Arrivals::default();
        let keys = [1u32, 2, 3];
        a.touch(&2);
        a.touch(&1);
        // 3 never touched: oldest.
        assert_eq!(a.oldest(keys.iter().map(|k| (k, 0))), Some(3));
        assert_eq!(a.oldest(keys[..2].iter().map(|k| (k, 0))), Some(2));
        a.touch(&2);
        assert_eq!(a.oldest(keys[..2].iter().map(|k| (k, 0))), Some(1));
        // Never touched: by seed, then key.
        let mut b: Arrivals<u32> = Arrivals::default();
        assert_eq!(b.oldest([(&1, 9), (&2, 5)].into_iter()), Some(2));
        b.forget(&1);
        assert_eq!(b.oldest(std::iter::empty()), None);
    }
}
