//! The decoded send groups kept in memory.
//!
//! Every change openmls makes to a group is written to the store in the
//! same step, so the decoded `MlsGroup` is only a cache: dropping it loses
//! nothing, and the next use decodes it again (`MlsGroup::load`). A node of
//! a universe of N members holds N send groups, each with its tree, secret
//! tree and tree-hash caches; at a few hundred members keeping all of them
//! decoded is a large part of a simulated node's memory. A bound keeps the
//! most recently used ones and pays a decode per miss.
//!
//! The bound is applied between steps only ([`GroupCache::trim`]): a step
//! may hold several groups at once (a commit checked against the members
//! of the group it changes), and nothing it loaded disappears under it.

use super::{gid, MmlsError};
use crate::id::Id32;
use crate::store::MlsStorage;
use openmls::prelude::MlsGroup;
use std::collections::HashMap;

pub(super) struct GroupCache {
    groups: HashMap<Id32, Cached>,
    /// Uses so far: the stamp of the latest use orders the entries.
    clock: u64,
    /// Groups kept after a step; None keeps every group used.
    capacity: Option<usize>,
    /// Groups decoded from the store (first uses and misses).
    loads: u64,
}

struct Cached {
    group: MlsGroup,
    used: u64,
}

impl GroupCache {
    pub(super) fn new(capacity: Option<usize>) -> GroupCache {
        GroupCache {
            groups: HashMap::new(),
            clock: 0,
            capacity,
            loads: 0,
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The group, decoded from `storage` if it is not in memory.
    pub(super) fn load(
        &mut self,
        storage: &MlsStorage,
        id: &Id32,
    ) -> Result<&mut MlsGroup, MmlsError> {
        let now = self.tick();
        match self.groups.entry(*id) {
            std::collections::hash_map::Entry::Occupied(o) => {
                let c = o.into_mut();
                c.used = now;
                Ok(&mut c.group)
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                let group = MlsGroup::load(storage, &gid(id))
                    .map_err(MmlsError::mls)?
                    .ok_or(MmlsError::UnknownGroup(*id))?;
                self.loads += 1;
                Ok(&mut v.insert(Cached { group, used: now }).group)
            }
        }
    }

    /// A group already loaded in this step.
    pub(super) fn get(&self, id: &Id32) -> Option<&MlsGroup> {
        self.groups.get(id).map(|c| &c.group)
    }

    /// A group already loaded in this step, to change.
    pub(super) fn get_mut(&mut self, id: &Id32) -> Option<&mut MlsGroup> {
        self.groups.get_mut(id).map(|c| &mut c.group)
    }

    /// A group just created or joined (already written to the store).
    pub(super) fn insert(&mut self, id: Id32, group: MlsGroup) {
        let used = self.tick();
        self.groups.insert(id, Cached { group, used });
    }

    pub(super) fn remove(&mut self, id: &Id32) {
        self.groups.remove(id);
    }

    /// Forgets every decoded group (after a rollback: openmls may have
    /// changed one in memory before failing).
    pub(super) fn clear(&mut self) {
        self.groups.clear();
    }

    /// Keeps the `capacity` most recently used groups and returns the
    /// others' ids. Called between steps, when everything in memory is
    /// also in the store.
    pub(super) fn trim(&mut self) -> Vec<Id32> {
        let Some(cap) = self.capacity else {
            return vec![];
        };
        if self.groups.len() <= cap {
            return vec![];
        }
        let mut stamps: Vec<u64> = self.groups.values().map(|c| c.used).collect();
        let cut = stamps.len() - cap;
        stamps.select_nth_unstable(cut - 1);
        // Stamps are unique, so exactly `cut` entries are at or below it.
        let oldest_kept = stamps[cut - 1];
        let evicted: Vec<Id32> = self
            .groups
            .iter()
            .filter(|(_, c)| c.used <= oldest_kept)
            .map(|(id, _)| *id)
            .collect();
        for id in &evicted {
            self.groups.remove(id);
        }
        evicted
    }

    pub(super) fn len(&self) -> usize {
        self.groups.len()
    }

    pub(super) fn loads(&self) -> u64 {
        self.loads
    }
}
