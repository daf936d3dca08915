//! PSK gaps: epochs of a send group we never held, and what follows from
//! them on both sides of an import.
//!
//! A rejoin re-adds a member to a group `G` at a new epoch `j`; the epochs
//! between the one where it fell behind and `j` it never had, so it can
//! never derive their exported PSKs. A commit of another owner `B` that
//! imports `G` at such an epoch is unprocessable for it, for good:
//!
//! - **Reader side.** Refetching such a commit (tens of times on a slow
//!   link, until the block times out) only adds to the load; it will fail
//!   again. When openmls reports the PSK missing and we hold `G` past the
//!   epoch named, we give up on `B`'s group at once and ask `B` to re-add
//!   us (`gap_rejoins`), without waiting out the rejoin backoff that is
//!   there for requests that may still be answered.
//! - **Importer side.** Each such rejoin of `B`'s group creates a new gap
//!   there, and every commit importing `B`'s group across it repeats the
//!   story one group further: on a congested radio mesh these cascaded to
//!   hundreds of rejoins. So an owner that has seen a member's rejoin
//!   request for `G` does not import `G` until it has processed the commit
//!   re-adding that member (then its view of `G` is past the gap), or the
//!   request is `REJOIN_DEFER_MS` old (its owner may never answer; PCS then
//!   matters more than that member's delay).

use super::*;

/// How long a member's rejoin request holds back our imports of the
/// groups it asked to rejoin: a deferred import delays post-compromise
/// healing, so only for about as long as an answer takes on a slow link.
pub(super) const REJOIN_DEFER_MS: u64 = 5 * 60_000;

/// A member's rejoin request as an importer sees it: the owners it asked to
/// re-add it and not yet seen doing so.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct Rejoining {
    pub(super) owners: BTreeSet<MemberId>,
    pub(super) since: u64,
}

impl Participant {
    /// Whether the exported PSK of `g` at `epoch` is in our store.
    pub(super) fn psk_held(&self, g: &Id32, epoch: u64) -> bool {
        use openmls_traits::storage::{traits, Entity, CURRENT_VERSION};
        #[derive(Serialize, Deserialize)]
        #[serde(transparent)]
        struct AnyBundle(serde_json::Value);
        impl Entity<CURRENT_VERSION> for AnyBundle {}
        impl traits::PskBundle<CURRENT_VERSION> for AnyBundle {}
        let psk = Psk::External(ExternalPsk::new(Profile::psk_id(g, epoch)));
        matches!(
            self.provider.storage().psk::<AnyBundle, Psk>(&psk),
            Ok(Some(_))
        )
    }

    /// Whether some PSK in `deps` is one we will never hold: we are in that
    /// group at or past the epoch named, and its PSK is not in the store
    /// (we were re-added after it, or it aged out).
    pub(super) fn names_a_psk_gap(&self, uid: &Id32, deps: &[(Id32, u64)]) -> bool {
        let Some(u) = self.state.universes.get(uid) else {
            return false;
        };
        deps.iter().any(|(dg, e)| {
            u.groups
                .get(dg)
                .is_some_and(|s| !s.stale && s.epoch >= *e && !self.psk_held(dg, *e))
        })
    }

    /// An entry of `g` failed. If it was a commit importing a PSK we will
    /// never hold, gives up on `g` now (see the module doc); returns
    /// whether it did.
    pub(super) fn give_up_on_gap(
        &mut self,
        uid: Id32,
        g: Id32,
        env: &Envelope,
        e: &MmlsError,
    ) -> bool {
        if !matches!(e, MmlsError::PskNotHeld(_)) || !self.names_a_psk_gap(&uid, &env.deps) {
            return false;
        }
        let now = self.now;
        let r = self.step(|p| {
            let gs = p
                .group_state_mut(&uid, &g)
                .ok_or(MmlsError::UnknownGroup(g))?;
            gs.stale = true;
            gs.stale_since = Some(now);
            gs.blocked_since = None;
            p.uni_mut(&uid)?.gap_rejoins.insert(g);
            Ok(())
        });
        if r.is_ok() {
            tracing::debug!(group = %g.short(), "a commit imports a PSK we never held: asking to be re-added");
        }
        r.is_ok()
    }

    /// Asks the owners of the groups we gave up on for a PSK gap to re-add
    /// us: once, at once, and only for those groups (asking again for
    /// groups already asked would make their owners re-add us twice, and
    /// open new gaps). Later repeats follow the ordinary rejoin backoff.
    pub(super) fn send_gap_rejoins(&mut self, uid: Id32) -> Result<(), MmlsError> {
        let u = self.uni(&uid)?;
        if u.gap_rejoins.is_empty() {
            return Ok(());
        }
        let groups: BTreeSet<Id32> = std::mem::take(&mut self.uni_mut(&uid)?.gap_rejoins);
        self.send_rejoin_for(uid, Some(&groups))
    }

    /// Records a verified rejoin request of `member` (see the module doc).
    pub(super) fn note_rejoining(
        &mut self,
        uid: Id32,
        member: &MemberId,
        mut owners: BTreeSet<MemberId>,
    ) -> Result<(), MmlsError> {
        let now = self.now;
        // Our own group we re-add it to ourselves, and never import.
        owners.remove(&self.me);
        let u = self.uni_mut(&uid)?;
        u.rejoining
            .retain(|_, r| now < r.since.saturating_add(REJOIN_DEFER_MS));
        if owners.is_empty() {
            return Ok(());
        }
        u.rejoining
            .insert(member.clone(), Rejoining { owners, since: now });
        Ok(())
    }

    /// A commit of `owner`'s group re-added `added`: our view of that
    /// group is past their gap now.
    pub(super) fn note_readded(
        &mut self,
        uid: Id32,
        owner: &MemberId,
        added: &[MemberId],
    ) -> Result<(), MmlsError> {
        let u = self.uni(&uid)?;
        if !added.iter().any(|m| u.rejoining.contains_key(m)) {
            return Ok(());
        }
        let u = self.uni_mut(&uid)?;
        for m in added {
            if let Some(r) = u.rejoining.get_mut(m) {
                r.owners.remove(owner);
                if r.owners.is_empty() {
                    u.rejoining.remove(m);
                }
            }
        }
        Ok(())
    }

    /// Whether importing the group of `owner` now could name an epoch
    /// some reader of ours will never hold: one of `readers` asked
    /// `owner` to re-add it and we have not seen that happen yet.
    pub(super) fn import_crosses_gap(
        &self,
        uid: &Id32,
        owner: &MemberId,
        readers: &BTreeSet<MemberId>,
    ) -> bool {
        let now = self.now;
        self.state.universes.get(uid).is_some_and(|u| {
            u.rejoining.iter().any(|(m, r)| {
                readers.contains(m)
                    && r.owners.contains(owner)
                    && now < r.since.saturating_add(REJOIN_DEFER_MS)
            })
        })
    }
}
