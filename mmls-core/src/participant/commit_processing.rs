//! Processing a peer's commit (stage, check, merge, apply).

use super::*;

impl Participant {
    pub(super) fn process_commit(
        &mut self,
        uid: Id32,
        g: Id32,
        env: &Envelope,
    ) -> Result<(), MmlsError> {
        let pm = Self::protocol_message(env)?;
        if pm.group_id().as_slice() != g.as_bytes() {
            return Err(MmlsError::AadMismatch("group"));
        }
        let u = self.uni(&uid)?;
        let def = u.def.clone();
        let roster = u.roster.clone();
        let owner = u
            .groups
            .get(&g)
            .map(|s| s.owner.clone())
            .ok_or(MmlsError::UnknownGroup(g))?;
        let members_before = self.group_members(&g)?;
        let provider = &self.provider;
        let group = self.groups.get_mut(&g).ok_or(MmlsError::UnknownGroup(g))?;
        if pm.epoch().as_u64() != group.epoch().as_u64() {
            return Err(MmlsError::Unexpected(format!(
                "commit for epoch {} but group is at {}",
                pm.epoch().as_u64(),
                group.epoch().as_u64()
            )));
        }
        // The proposals the commit covers travel with it.
        for raw in &env.proposals {
            let msg = MlsMessageIn::tls_deserialize_exact(raw.as_slice())
                .map_err(|e| MmlsError::MalformedMls(format!("{e:?}")))?;
            let ppm = msg
                .try_into_protocol_message()
                .map_err(|e| MmlsError::MalformedMls(format!("{e:?}")))?;
            let pp = group
                .process_message(provider, ppm)
                .map_err(MmlsError::mls)?;
            match pp.into_content() {
                ProcessedMessageContent::ProposalMessage(q) => {
                    check_update_proposal(&q)?;
                    group
                        .store_pending_proposal(provider.storage(), *q)
                        .map_err(MmlsError::mls)?;
                }
                // Our own proposal: already in our proposal store.
                ProcessedMessageContent::OwnPrivateMessage => {}
                _ => {
                    return Err(MmlsError::Unexpected(
                        "a commit attachment that is not a proposal".into(),
                    ))
                }
            }
        }
        let raw_aad = match &pm {
            ProtocolMessage::PrivateMessage(m) => m.aad().to_vec(),
            ProtocolMessage::PublicMessage(_) => vec![],
        };
        let processed = match group.process_message(provider, pm) {
            Ok(p) => p,
            Err(ProcessMessageError::InvalidCommit(err)) => {
                // Decrypted and signature-checked, so the AAD is the
                // owner's: a commit importing a (group, epoch) whose state
                // differs from ours is how an equivocation shows.
                let u = self.uni(&uid)?;
                if let Ok(aad) = from_cbor::<Aad>(&raw_aad) {
                    for f in &aad.frontier {
                        if let Some(gs) = u.groups.get(&f.group) {
                            if gs
                                .auth
                                .get(&f.epoch)
                                .is_some_and(|a| *a != f.auth && f.auth != [0; 8])
                            {
                                return Err(MmlsError::Equivocation {
                                    owner: gs.owner.clone(),
                                    group: f.group,
                                    epoch: f.epoch,
                                });
                            }
                        }
                    }
                }
                return Err(MmlsError::mls(err));
            }
            Err(e) => return Err(MmlsError::mls(e)),
        };
        let aad = Self::check_owner_and_aad(&g, &processed, env, "commits")?;
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            return Err(MmlsError::Unexpected(
                "only the owner's commits are accepted in a send group".into(),
            ));
        };
        let my_leaf = group.own_leaf_index();
        let mut my_update_committed = false;
        for up in staged.update_proposals() {
            let Sender::Member(i) = up.sender() else {
                return Err(MmlsError::Unexpected(
                    "Update proposal from a non-member".into(),
                ));
            };
            let new_id = {
                let leaf = up.update_proposal().leaf_node();
                verify_binding(leaf.credential(), leaf.signature_key().as_slice())?
            };
            // A leaf may rotate its keys, never change whose it is.
            match members_before.iter().find(|(l, _)| l == i) {
                Some((_, m)) if *m == new_id => {}
                _ => return Err(MmlsError::BadCredential),
            }
            if *i == my_leaf {
                my_update_committed = true;
            }
        }
        let path = staged.update_path_leaf_node().is_some();
        let mut added = vec![];
        for a in staged.add_proposals() {
            let leaf = a.add_proposal().key_package().leaf_node();
            added.push(verify_binding(
                leaf.credential(),
                leaf.signature_key().as_slice(),
            )?);
        }
        let mut removed = vec![];
        for r in staged.remove_proposals() {
            let idx = r.remove_proposal().removed();
            if let Some((_, m)) = members_before.iter().find(|(i, _)| *i == idx) {
                removed.push(m.clone());
            }
        }
        // Adds of new members need an admin; re-adds (rejoin) are fine.
        let is_admin = def.as_ref().is_some_and(|d| d.is_admin(&owner));
        for m in &added {
            if !roster.contains(m) && !is_admin {
                return Err(MmlsError::NotAdmin);
            }
        }
        let self_removed = staged.self_removed();
        let group = self.groups.get_mut(&g).ok_or(MmlsError::UnknownGroup(g))?;
        group
            .merge_staged_commit(&self.provider, *staged)
            .map_err(MmlsError::mls)?;
        let epoch = group.epoch().as_u64();
        let auth = auth8(group.epoch_authenticator().as_slice());
        let now = self.now;
        let me = self.me.clone();
        self.advance(uid, g)?;
        // Equivocation: the owner's frontier against what we saw.
        let mut equivocations = vec![];
        {
            let u = self.uni(&uid)?;
            for f in &aad.frontier {
                if let Some(gs) = u.groups.get(&f.group) {
                    if let Some(a) = gs.auth.get(&f.epoch) {
                        if *a != f.auth && f.auth != [0; 8] {
                            equivocations.push((gs.owner.clone(), f.group, f.epoch));
                        }
                    }
                }
            }
        }
        let u = self.uni_mut(&uid)?;
        for (o, eg, ee) in &equivocations {
            if !u.equivocations.contains(&(o.clone(), *eg, *ee)) {
                u.equivocations.push((o.clone(), *eg, *ee));
            }
        }
        if self_removed {
            if added.contains(&me) || !is_admin {
                // Re-added in the same commit (our Welcome follows), or
                // dropped by an owner who is not an admin: that owner may
                // stop sending to us, as it always could by staying silent,
                // but only an admin removes us from the universe.
                let gs = u.groups.get_mut(&g).ok_or(MmlsError::UnknownGroup(g))?;
                gs.stale = true;
                gs.stale_since = Some(now);
                gs.epoch = epoch;
            } else {
                u.removed = true;
                self.emit(Event::RemovedFromUniverse { universe: uid });
            }
            for (o, eg, ee) in equivocations {
                self.emit(Event::Equivocation {
                    universe: uid,
                    owner: o,
                    group: eg,
                    epoch: ee,
                });
            }
            return Ok(());
        }
        {
            let gs = u.groups.get_mut(&g).ok_or(MmlsError::UnknownGroup(g))?;
            gs.epoch = epoch;
            gs.auth.insert(epoch, auth);
            while gs.auth.len() > AUTH_HISTORY {
                gs.auth.pop_first();
            }
            gs.last_commit_at = now;
        }
        if path {
            u.pending_imports.insert(g);
            u.pending_since.get_or_insert(now);
        }
        let mut events = vec![];
        // Mirror membership changes into our own send group. Only an
        // admin's removals are the universe's; any other owner's only shape
        // who reads that owner (else any member could evict anyone).
        for m in &removed {
            if added.contains(m) || *m == me || !is_admin {
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
                u.groups.remove(&og);
                u.pending_imports.remove(&og);
            }
        }
        for m in &added {
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
        // Our leaf rotation here: done, or re-proposed at the new epoch.
        let wants_update = u.leaf_updates.contains(&g);
        if wants_update && my_update_committed {
            u.leaf_updates.remove(&g);
        }
        for e in events {
            self.emit(e);
        }
        for (o, eg, ee) in equivocations {
            self.emit(Event::Equivocation {
                universe: uid,
                owner: o,
                group: eg,
                epoch: ee,
            });
        }
        self.record_psk_views(&owner, &g, &aad);
        self.export_psk(uid, g)?;
        if wants_update && !my_update_committed {
            self.propose_leaf_update(uid, g)?;
        }
        Ok(())
    }
}
