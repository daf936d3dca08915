//! Who is in a send group, by verified member id.

use super::*;

impl Participant {
    /// The members of `g` by leaf, with verified ids. Remembered per
    /// (epoch, epoch authenticator): membership only changes with a new
    /// epoch, and checking every credential again on each commit was a
    /// measurable share of an update round.
    pub(super) fn group_members(
        &mut self,
        g: &Id32,
    ) -> Result<Vec<(LeafNodeIndex, MemberId)>, MmlsError> {
        let group = self.groups.load(self.provider.storage(), g)?;
        let at = (
            group.epoch().as_u64(),
            auth8(group.epoch_authenticator().as_slice()),
        );
        if let Some((cached_at, members)) = self.members_cache.get(g) {
            if *cached_at == at {
                return Ok(members.clone());
            }
        }
        let known = &mut self.known_ids;
        let members: Vec<(LeafNodeIndex, MemberId)> = group
            .members()
            .filter_map(|m| {
                known
                    .verify(&m.credential, &m.signature_key)
                    .ok()
                    .map(|id| (m.index, id))
            })
            .collect();
        self.members_cache.insert(*g, (at, members.clone()));
        Ok(members)
    }
}

impl Participant {
    /// Mirrors a peer owner's adds and removals into our own send group.
    /// `removed` are only those the universe accepts (an admin's, a
    /// leaver's, a user's unlinked device): any other owner's removals only
    /// shape who reads that owner (else any member could evict anyone).
    pub(super) fn mirror_membership(
        &mut self,
        uid: Id32,
        added: &[MemberId],
        removed: &[MemberId],
    ) -> Result<(), MmlsError> {
        let now = self.now;
        let me = self.me.clone();
        let mut events = vec![];
        let u = self.uni_mut(&uid)?;
        for m in removed {
            if added.contains(m) || *m == me {
                continue;
            }
            if u.roster.remove(m) {
                events.push(Event::MemberRemoved {
                    universe: uid,
                    member: m.clone(),
                });
            }
            u.pending_removes.insert(m.clone());
            u.pending_adds.remove(m);
            u.pending_since.get_or_insert(now);
            if let Some(og) = u.owner_group.remove(m) {
                u.retire(og);
            }
        }
        for m in added {
            if removed.contains(m) || *m == me {
                continue;
            }
            if u.roster.insert(m.clone()) {
                events.push(Event::MemberAdded {
                    universe: uid,
                    member: m.clone(),
                });
            }
            u.pending_adds.insert(m.clone());
            u.pending_since.get_or_insert(now);
        }
        for e in events {
            self.emit(e);
        }
        Ok(())
    }
}
