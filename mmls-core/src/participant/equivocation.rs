//! Equivocation: an owner that showed two members different states of the
//! same (group, epoch). Every commit names, in its frontier, the epochs and
//! short epoch-authenticator hashes its owner holds; a mismatch with what we
//! hold for that group and epoch names the equivocating owner.

use super::*;

impl Participant {
    /// The (owner, group, epoch) of every frontier entry that disagrees
    /// with what we saw.
    pub(super) fn frontier_mismatches(
        &self,
        uid: &Id32,
        frontier: &[FrontierEntry],
    ) -> Vec<(MemberId, Id32, u64)> {
        let Some(u) = self.state.universes.get(uid) else {
            return vec![];
        };
        frontier
            .iter()
            .filter_map(|f| {
                let gs = u.groups.get(&f.group)?;
                let seen = gs.auth.get(&f.epoch)?;
                (*seen != f.auth && f.auth != [0; 8]).then(|| (gs.owner.clone(), f.group, f.epoch))
            })
            .collect()
    }

    /// Records equivocations (once each) and tells the user.
    pub(super) fn record_equivocations(
        &mut self,
        uid: Id32,
        found: Vec<(MemberId, Id32, u64)>,
    ) -> Result<(), MmlsError> {
        for (owner, group, epoch) in found {
            let u = self.uni_mut(&uid)?;
            let e = (owner.clone(), group, epoch);
            if !u.equivocations.contains(&e) {
                u.equivocations.push(e);
            }
            self.emit(Event::Equivocation {
                universe: uid,
                owner,
                group,
                epoch,
            });
        }
        Ok(())
    }
}
