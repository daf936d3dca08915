//! Read-only views for drivers and tests: status, delivered messages,
//! counters.

use super::*;

impl Participant {
    pub fn universes(&self) -> Vec<Id32> {
        self.state.universes.keys().cloned().collect()
    }

    pub fn status(&mut self, uid: &Id32) -> Result<UniverseStatus, MmlsError> {
        let u = self.uni(uid)?.clone();
        let mut groups = vec![];
        for (g, s) in &u.groups {
            let members = if s.stale {
                0
            } else {
                self.group(g).map(|grp| grp.members().count()).unwrap_or(0)
            };
            let head = self.buffers.get(g).and_then(|b| b.get(&s.next_seq));
            let waiting_for = if s.blocked_since.is_none() {
                None
            } else {
                match head.and_then(|h| Envelope::decode(h).ok()) {
                    None => Some(format!("seq {}", s.next_seq)),
                    Some(e) => Some(
                        e.deps
                            .iter()
                            .filter(|(dg, de)| u.groups.get(dg).is_none_or(|x| x.epoch < *de))
                            .map(|(dg, de)| format!("{}@{}", dg.short(), de))
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                }
            };
            groups.push(GroupStatus {
                waiting_for,
                group: *g,
                owner: s.owner.clone(),
                epoch: s.epoch,
                next_seq: s.next_seq,
                buffered: self.buffers.get(g).map(|b| b.len()).unwrap_or(0),
                blocked: s.blocked_since.is_some(),
                stale: s.stale,
                auth: hex::encode(s.auth.get(&s.epoch).copied().unwrap_or_default()),
                members,
                last_key_update: s.last_key_update,
                ciphersuite: s.suite,
            });
        }
        let (anchors, certs) = Self::federation_status(&u);
        self.trim_groups();
        Ok(UniverseStatus {
            id: u.id,
            name: u.def.as_ref().map(|d| d.name.clone()),
            profile: u.def.as_ref().map(|d| d.profile.to_string()),
            creator: u.def.as_ref().map(|d| d.creator.clone()),
            admins: u.def.as_ref().map(|d| d.admins.clone()).unwrap_or_default(),
            roster: u.roster.iter().cloned().collect(),
            own_group: u.own_group,
            groups,
            pending_imports: u.pending_imports.len(),
            messages_sent: u.texts.next_text_seq() - 1,
            equivocations: u.equivocations.clone(),
            removed: u.removed,
            anchors,
            certs,
            ciphersuites: u
                .def
                .as_ref()
                .map(|d| d.ciphersuites.clone())
                .unwrap_or_default(),
        })
    }

    /// Delivered messages of a universe after `after` (a cursor), oldest
    /// first.
    pub fn messages(
        &self,
        uid: &Id32,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Delivered>, MmlsError> {
        self.page_after(Table::Delivered, uid, after, limit)?
            .into_iter()
            .map(|(_, v)| {
                from_cbor(&v).map_err(|e| MmlsError::Store(crate::store::StoreError::Corrupt(e)))
            })
            .collect()
    }

    /// Rows of `t` keyed (universe, number) after number `after` (all
    /// when None), at most `limit`.
    pub(super) fn page_after(
        &self,
        t: Table,
        uid: &Id32,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<crate::store::KeyValue>, MmlsError> {
        // Nothing comes after the last number (and `a + 1` would wrap to 0).
        let start = match after {
            None => 0,
            Some(a) => match a.checked_add(1) {
                Some(s) => s,
                None => return Ok(vec![]),
            },
        };
        Ok(self.provider.store().range(
            t,
            &log_key(uid, start),
            Some(&log_key(uid, u64::MAX)),
            limit,
        )?)
    }

    /// Bytes of the engine's own state rows (openmls's state and the logs
    /// not counted): what a step writes at most, for metrics.
    pub fn state_size(&self) -> usize {
        self.state.size()
    }

    /// Inputs rejected since this node's store was created.
    pub fn rejected_inputs(&self) -> u64 {
        self.state.node.get().rejected_inputs + self.rejected_pending
    }

    /// Exports the current epoch's secret of a group under a test label: lets
    /// tests compare group state across participants without touching
    /// internals (same value = same epoch secrets).
    pub fn epoch_fingerprint(&mut self, g: &Id32) -> Result<(u64, Vec<u8>), MmlsError> {
        self.group(g)?;
        let group = self.groups.get(g).ok_or(MmlsError::UnknownGroup(*g))?;
        let v = group
            .export_secret(self.provider.crypto(), "mmls test fingerprint", b"", 16)
            .map_err(MmlsError::mls)?;
        let epoch = group.epoch().as_u64();
        // A view between steps: the group cache's bound holds here too (a
        // check of every group must not decode them all at once).
        self.trim_groups();
        Ok((epoch, v))
    }

    /// The epoch we hold of group `g`, as the engine recorded it with the
    /// step that merged it: what a fingerprint gives, without deriving a
    /// secret or decoding the group (the simulator samples it for every
    /// pair of members, and most groups are not decoded at 256).
    pub fn group_epoch(&self, g: &Id32) -> Result<u64, MmlsError> {
        self.state
            .universes
            .values()
            .find_map(|u| u.groups.get(g))
            .map(|s| s.epoch)
            .ok_or(MmlsError::UnknownGroup(*g))
    }

    /// Send groups decoded in memory now, and decoded from the store so far
    /// (first uses and misses of `Config::group_cache`).
    pub fn group_cache_stats(&self) -> (usize, u64) {
        (self.groups.len(), self.groups.loads())
    }

    /// The send group of `member` in `uid`, as we know it.
    pub fn group_of(&self, uid: &Id32, member: &MemberId) -> Option<Id32> {
        self.state
            .universes
            .get(uid)
            .and_then(|u| u.owner_group.get(member).copied())
    }
}
