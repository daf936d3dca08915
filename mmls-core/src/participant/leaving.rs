//! Leaving a universe and forgetting one.
//!
//! Leave: the member says so in its own send group (`Payload::Leave`), the
//! one place only it can write, so the statement is MLS-authenticated,
//! ordered, logged and fetched like any entry. Every owner that processes
//! it removes the member (roster and its own send group), admins or not: a
//! member may always remove itself, which is not the eviction rule that
//! keeps removals of others to admins. The leaver stops at once.
//!
//! Forget: drops every local trace of a universe we are no longer in (left,
//! removed, or never joined, such as an id mistyped for `rejoin`): its rows,
//! send groups' openmls state, buffers, logs, exported PSKs, delivered and
//! sent texts. Refused while we are a member: leave first.

use super::*;

impl Participant {
    /// Leaves `universe`: announces it in our send group, then stops
    /// taking part (the universe shows as removed until forgotten).
    pub fn leave_universe(&mut self, universe: &Id32) -> Result<Vec<Output>, MmlsError> {
        let u = self.uni(universe)?;
        if u.removed {
            return Err(MmlsError::NotInUniverse(*universe));
        }
        if u.own_group.is_none() {
            return Err(MmlsError::UniverseNotReady(*universe));
        }
        self.step(|p| {
            p.send_payload(*universe, &Payload::Leave)?;
            p.uni_mut(universe)?.removed = true;
            p.emit(Event::RemovedFromUniverse {
                universe: *universe,
            });
            Ok(())
        })?;
        Ok(self.take_outputs())
    }

    /// `owner` left: it is removed from the roster and from our send group.
    pub(super) fn on_leave(&mut self, uid: Id32, owner: &MemberId) -> Result<(), MmlsError> {
        if *owner == self.me {
            return Ok(());
        }
        self.mirror_membership(uid, &[], std::slice::from_ref(owner))
    }

    /// Drops all local state of a universe we are not a member of.
    pub fn forget_universe(&mut self, universe: &Id32) -> Result<Vec<Output>, MmlsError> {
        let u = self.uni(universe)?;
        let member = !u.removed && u.def.is_some() && u.roster.contains(&self.me);
        if member {
            return Err(MmlsError::StillMember(*universe));
        }
        let groups: Vec<Id32> = u.groups.keys().copied().collect();
        self.step(|p| {
            for g in &groups {
                p.forget_group(universe, g)?;
            }
            p.delete_prefixed(Table::Delivered, universe.as_bytes())?;
            p.delete_prefixed(Table::Sent, universe.as_bytes())?;
            p.state.universes.remove(universe);
            Ok(())
        })?;
        self.psk_pruned_at.remove(universe);
        self.held.forget(universe);
        Ok(self.take_outputs())
    }

    /// A send group's openmls state, buffered and logged entries, exported
    /// PSKs and retention rows.
    fn forget_group(&mut self, uid: &Id32, g: &Id32) -> Result<(), MmlsError> {
        let epochs = self.uni(uid)?.groups.get(g).map(|s| s.psk_min..=s.epoch);
        if let Some(epochs) = epochs {
            for e in epochs {
                let psk = Psk::External(ExternalPsk::new(Profile::psk_id(g, e)));
                self.provider
                    .storage()
                    .delete_psk(&psk)
                    .map_err(MmlsError::mls)?;
            }
        }
        self.groups.remove(g);
        self.members_cache.remove(g);
        if let Some(mut group) =
            MlsGroup::load(self.provider.storage(), &gid(g)).map_err(MmlsError::mls)?
        {
            group
                .delete(self.provider.storage())
                .map_err(MmlsError::mls)?;
        }
        let buffered: Vec<u64> = self
            .buffers
            .get(g)
            .map(|b| b.keys().copied().collect())
            .unwrap_or_default();
        for seq in buffered {
            self.buffer_remove(*g, seq);
        }
        self.alternates.retain(|(ag, _), _| ag != g);
        self.delete_prefixed(Table::Log, g.as_bytes())?;
        self.delete_prefixed(Table::PskViews, g.as_bytes())
    }

    /// Deletes every row of `t` whose key starts with `prefix`.
    fn delete_prefixed(&mut self, t: Table, prefix: &[u8]) -> Result<(), MmlsError> {
        let end = super::rows::prefix_end(prefix);
        let store = self.provider.store();
        for (k, _) in store.range(t, prefix, end.as_deref(), usize::MAX)? {
            store.delete(t, &k);
        }
        Ok(())
    }
}
