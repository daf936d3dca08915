//! Exported-PSK retention: how long a (group, epoch) PSK is kept.
//!
//! An owner imports another group's PSK at the epoch *it* holds when it
//! commits, and its commit may reach us hours later, from the other side of a
//! partition. A count of local epochs says nothing about that (it grows with
//! members and activity), so retention follows need instead: we keep (G, e)
//! while some member that could import G has not yet shown us, in a commit we
//! processed, that its own view of G is beyond e. An owner's view of a group
//! only moves forward and its stream is processed in order, so once a commit
//! of O names G at e', nothing O sends later imports below e'.
//!
//! Need alone would let a silent or partitioned member pin keys forever, so a
//! time bound (`Config::psk_max_age_ms`, default 24 h) caps it: an epoch is
//! deleted at the latest that long after it stopped being current, whoever
//! still lags. SECURITY.md states what that costs forward secrecy.

use super::*;

/// Retention is re-evaluated at most this often per universe: deletion a
/// minute late costs forward secrecy nothing against the hours of the time
/// bound, and each evaluation reads one row per (group, member), N^2 rows
/// (at 64 members every 10 s, a tenth of the simulator's CPU).
const PRUNE_EVERY_MS: u64 = 60_000;

/// Exported PSKs kept per group at most, whatever need and age say: a memory
/// guard against an owner that floods commits, not a retention policy.
pub(super) const PSK_HARD_CAP: u64 = 65_536;

/// Time checkpoints kept per group (see `GroupState::psk_marks`).
const MAX_MARKS: usize = 128;

/// `PskViews` key: the group whose PSKs are retained, then the member.
pub(super) fn view_key(g: &Id32, m: &MemberId) -> Vec<u8> {
    let mut k = g.as_bytes().to_vec();
    k.extend_from_slice(m.as_str().as_bytes());
    k
}

/// The first key after every `view_key(g, _)`.
fn view_key_end(g: &Id32) -> Vec<u8> {
    let mut k = g.as_bytes().to_vec();
    k.push(0xff);
    k
}

fn be_u64(v: &[u8]) -> Option<u64> {
    v.try_into().ok().map(u64::from_be_bytes)
}

impl Participant {
    /// Exports and stores the PSK of `g`'s current epoch: openmls can only
    /// export the current epoch, so a later importer depends on this copy.
    pub(super) fn export_psk(&mut self, uid: Id32, g: Id32) -> Result<(), MmlsError> {
        let def = self.uni(&uid)?.def.clone();
        let (profile, export_len) = def
            .map(|d| (d.profile, d.export_len as usize))
            .unwrap_or((Profile::Mmls00, 32));
        self.group(&g)?;
        let group = self.groups.get(&g).ok_or(MmlsError::UnknownGroup(g))?;
        let epoch = group.epoch().as_u64();
        let secret = profile.export_psk(self.provider.crypto(), group, &uid, export_len)?;
        let id = Profile::psk_id(&g, epoch);
        // The nonce is not stored; it is chosen fresh by each importer.
        PreSharedKeyId::external(id, vec![0; group.ciphersuite().hash_length()])
            .store(&self.provider, &secret)
            .map_err(MmlsError::mls)?;
        let now = self.now;
        let mark_every = self.config.psk_max_age_ms / 64;
        let gs = self
            .group_state_mut(&uid, &g)
            .ok_or(MmlsError::UnknownGroup(g))?;
        if gs.mark_due(epoch, now, mark_every) {
            gs.mark_epoch(epoch, now);
        }
        // The cap only: need and age are judged by `prune_psks`.
        let keep_from = (epoch + 1).saturating_sub(PSK_HARD_CAP);
        self.delete_psks_below(uid, g, keep_from)
    }

    /// Remembers, from an owner's commit we processed, the epoch of every
    /// group its frontier (or its imports) named: that owner will never
    /// import anything older of those groups.
    pub(super) fn record_psk_views(&mut self, owner: &MemberId, own_group: &Id32, aad: &Aad) {
        let named = aad
            .frontier
            .iter()
            .map(|f| (f.group, f.epoch))
            .chain(aad.deps.iter().copied())
            .filter(|(g, _)| g != own_group);
        for (g, e) in named {
            let key = view_key(&g, owner);
            let old = self
                .provider
                .store()
                .get(Table::PskViews, &key)
                .ok()
                .flatten()
                .and_then(|v| be_u64(&v));
            if old.is_none_or(|o| o < e) {
                self.provider
                    .store()
                    .put(Table::PskViews, &key, &e.to_be_bytes());
            }
        }
    }

    /// Deletes, in every group of the universe, the PSKs nobody can import
    /// any more and those past the time bound. Throttled: a no-op unless
    /// `PRUNE_EVERY_MS` passed since the last run for this universe.
    pub(super) fn prune_psks(&mut self, uid: Id32) -> Result<(), MmlsError> {
        let now = self.now;
        if self
            .psk_pruned_at
            .get(&uid)
            .is_some_and(|t| now < t.saturating_add(PRUNE_EVERY_MS))
        {
            return Ok(());
        }
        self.psk_pruned_at.insert(uid, now);
        let max_age = self.config.psk_max_age_ms;
        let u = self.uni(&uid)?;
        let roster = u.roster.clone();
        let groups: Vec<(Id32, MemberId, u64, u64)> = u
            .groups
            .iter()
            .filter(|(_, s)| s.psk_min < s.epoch)
            .map(|(g, s)| (*g, s.owner.clone(), s.epoch, s.psk_min))
            .collect();
        for (g, owner, epoch, _) in groups {
            let needed_from = self.needed_from(&g, &owner, &roster, epoch)?;
            // Read first: a group row touched is rewritten, and this runs
            // for every group of every universe.
            let gs = self
                .uni(&uid)?
                .groups
                .get(&g)
                .ok_or(MmlsError::UnknownGroup(g))?;
            if gs.mark_due(epoch, now, max_age / 64) {
                if let Some(gs) = self.group_state_mut(&uid, &g) {
                    gs.mark_epoch(epoch, now);
                }
            }
            let gs = self
                .uni(&uid)?
                .groups
                .get(&g)
                .ok_or(MmlsError::UnknownGroup(g))?;
            let aged_from = gs.aged_from(now, max_age);
            let keep_from = needed_from.max(aged_from).min(epoch);
            self.delete_psks_below(uid, g, keep_from)?;
        }
        Ok(())
    }

    /// The oldest epoch of `g` some member may still import: for each other
    /// member, the epoch its last processed commit named (a member of `g`
    /// that never named it could import anything we hold).
    fn needed_from(
        &mut self,
        g: &Id32,
        owner: &MemberId,
        roster: &BTreeSet<MemberId>,
        epoch: u64,
    ) -> Result<u64, MmlsError> {
        let rows = self.provider.store().range(
            Table::PskViews,
            g.as_bytes(),
            Some(&view_key_end(g)),
            usize::MAX,
        )?;
        let mut named: BTreeMap<&[u8], u64> = BTreeMap::new();
        for (k, v) in &rows {
            if let (Some(m), Some(e)) = (k.get(32..), be_u64(v)) {
                named.insert(m, e);
            }
        }
        let importers = roster.iter().filter(|m| **m != self.me && *m != owner);
        let mut floor = epoch;
        let mut unnamed = vec![];
        for m in importers {
            match named.get(m.as_str().as_bytes()) {
                Some(e) => floor = floor.min(*e),
                None => unnamed.push(m.clone()),
            }
        }
        if !unnamed.is_empty() {
            let members = self.group_members(g)?;
            if unnamed.iter().any(|m| members.iter().any(|(_, x)| x == m)) {
                return Ok(0);
            }
        }
        Ok(floor)
    }

    fn delete_psks_below(&mut self, uid: Id32, g: Id32, keep_from: u64) -> Result<(), MmlsError> {
        let gs = self
            .uni(&uid)?
            .groups
            .get(&g)
            .ok_or(MmlsError::UnknownGroup(g))?;
        let keep_from = keep_from.min(gs.epoch);
        if gs.psk_min >= keep_from {
            return Ok(());
        }
        let gs = self
            .group_state_mut(&uid, &g)
            .ok_or(MmlsError::UnknownGroup(g))?;
        let old = gs.psk_min..keep_from;
        gs.psk_min = keep_from;
        gs.psk_marks.retain(|(e, _)| *e >= keep_from);
        for e in old {
            let psk = Psk::External(ExternalPsk::new(Profile::psk_id(&g, e)));
            self.provider
                .storage()
                .delete_psk(&psk)
                .map_err(MmlsError::mls)?;
        }
        Ok(())
    }
}

impl GroupState {
    /// Whether to note that at `now` the current epoch is `epoch` (every
    /// older one has ended): at most one checkpoint per `every` ms.
    fn mark_due(&self, epoch: u64, now: u64, every: u64) -> bool {
        self.psk_marks
            .last()
            .is_none_or(|(e, t)| *e < epoch && now >= t.saturating_add(every))
    }

    fn mark_epoch(&mut self, epoch: u64, now: u64) {
        self.psk_marks.push((epoch, now));
        if self.psk_marks.len() > MAX_MARKS {
            self.psk_marks.remove(0);
        }
    }

    /// Every epoch below the returned one ended more than `max_age` ago.
    fn aged_from(&self, now: u64, max_age: u64) -> u64 {
        self.psk_marks
            .iter()
            .rev()
            .find(|(_, t)| now >= t.saturating_add(max_age))
            .map(|(e, _)| *e)
            .unwrap_or(0)
    }
}
