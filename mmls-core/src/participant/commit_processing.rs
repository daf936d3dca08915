//! Processing a peer's commit in its send group, as openmls stages a commit
//! before merging it: stage (attachments, decrypt, verify), check (the
//! owner's AAD, leaf identities, who may add), merge, then apply to the
//! engine state (epoch, imports, mirrored membership, leaf rotation, PSK).

use super::*;

/// A staged commit that passed every check, with what it does.
struct CheckedCommit {
    aad: Aad,
    owner: MemberId,
    owner_is_admin: bool,
    added: Vec<MemberId>,
    /// Removals the universe takes over: all of an admin's, else those of
    /// the owner's user's unlinked devices.
    universe_removes: Vec<MemberId>,
    /// It carries an update path (an MMLS update if its AAD does not say
    /// the path was only forced: `Aad::is_mmls_update`).
    path: bool,
    /// Our own leaf rotation is among its Update proposals.
    my_update_committed: bool,
    self_removed: bool,
    /// An admin's new trust anchors (or a mirror of them).
    anchors: Option<Vec<crate::federation::DomainAnchor>>,
    /// Certificates of added and updated leaves, validated.
    certs: Vec<crate::federation::CertInfo>,
}

impl Participant {
    pub(super) fn process_commit(
        &mut self,
        uid: Id32,
        g: Id32,
        env: &Envelope,
    ) -> Result<(), MmlsError> {
        let members_before = self.group_members(&g)?;
        let staged = self.stage_peer_commit(uid, g, env)?;
        let checked = self.check_peer_commit(uid, g, &staged, &members_before)?;
        let group = self.groups.get_mut(&g).ok_or(MmlsError::UnknownGroup(g))?;
        group
            .merge_staged_commit(&self.provider, *staged.commit)
            .map_err(MmlsError::mls)?;
        let epoch = group.epoch().as_u64();
        let auth = auth8(group.epoch_authenticator().as_slice());
        self.apply_peer_commit(uid, g, checked, epoch, auth)
    }

    /// Stage: the Update proposals it covers (they travel with it), then
    /// the commit itself. A commit that does not fit our state names an
    /// equivocation if its frontier disagrees with what we saw.
    fn stage_peer_commit(
        &mut self,
        uid: Id32,
        g: Id32,
        env: &Envelope,
    ) -> Result<StagedPeerCommit, MmlsError> {
        let pm = Self::protocol_message(env)?;
        if pm.group_id().as_slice() != g.as_bytes() {
            return Err(MmlsError::AadMismatch("group"));
        }
        let provider = &self.provider;
        let group = self.groups.load(provider.storage(), &g)?;
        if pm.epoch().as_u64() != group.epoch().as_u64() {
            return Err(MmlsError::Unexpected(format!(
                "commit for epoch {} but group is at {}",
                pm.epoch().as_u64(),
                group.epoch().as_u64()
            )));
        }
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
                if let Ok(aad) = from_cbor::<Aad>(&raw_aad) {
                    if let Some((owner, group, epoch)) = self
                        .frontier_mismatches(&uid, &aad.frontier)
                        .into_iter()
                        .next()
                    {
                        return Err(MmlsError::Equivocation {
                            owner,
                            group,
                            epoch,
                        });
                    }
                }
                if err
                    == StageCommitError::PskError(openmls::schedule::errors::PskError::KeyNotFound)
                {
                    return Err(MmlsError::PskNotHeld(g));
                }
                return Err(MmlsError::mls(err));
            }
            Err(e) => return Err(MmlsError::mls(e)),
        };
        let aad = Self::check_owner_and_aad(&g, &processed, env, "commits")?;
        let ProcessedMessageContent::StagedCommitMessage(commit) = processed.into_content() else {
            return Err(MmlsError::Unexpected(
                "only the owner's commits are accepted in a send group".into(),
            ));
        };
        Ok(StagedPeerCommit { commit, aad })
    }

    /// Check: leaves rotate keys but never change whose they are, and only
    /// an admin's commit adds members who are not in the universe.
    fn check_peer_commit(
        &mut self,
        uid: Id32,
        g: Id32,
        staged: &StagedPeerCommit,
        members_before: &[(LeafNodeIndex, MemberId)],
    ) -> Result<CheckedCommit, MmlsError> {
        let my_leaf = self.group(&g)?.own_leaf_index();
        let commit = &staged.commit;
        let mut my_update_committed = false;
        let u = self.uni(&uid)?;
        let owner = u
            .groups
            .get(&g)
            .map(|s| s.owner.clone())
            .ok_or(MmlsError::UnknownGroup(g))?;
        let owner_is_admin = u.def.as_ref().is_some_and(|d| d.is_admin(&owner));
        // First who may change the anchors: the leaves below are judged
        // under the anchors the commit leaves.
        let anchor_change = self.check_anchor_change(&uid, commit, &owner, owner_is_admin)?;
        // The anchors this commit leaves the group with: every new or
        // renewed credential in it must hold under them.
        let anchors =
            crate::federation::anchors_from_extensions(commit.group_context().extensions())?;
        let mut certs = vec![];
        let old_credential = |p: &Self, i: LeafNodeIndex| -> Option<Credential> {
            p.groups.get(&g).and_then(|gr| gr.member(i).cloned())
        };
        for up in commit.update_proposals() {
            let Sender::Member(i) = up.sender() else {
                return Err(MmlsError::Unexpected(
                    "Update proposal from a non-member".into(),
                ));
            };
            let new_id = {
                let leaf = up.update_proposal().leaf_node();
                verify_binding(leaf.credential(), leaf.signature_key().as_slice())?
            };
            match members_before.iter().find(|(l, _)| l == i) {
                Some((_, m)) if *m == new_id => {}
                _ => return Err(MmlsError::BadCredential),
            }
            // A credential already in the group was checked when it came
            // in; re-checking it here would wedge the group after an anchor
            // rotation (its member renews instead). A new one must hold now.
            let leaf = up.update_proposal().leaf_node();
            if old_credential(self, *i).as_ref() != Some(leaf.credential()) {
                certs.extend(self.check_credential(
                    &anchors,
                    leaf.credential(),
                    leaf.signature_key().as_slice(),
                    true,
                )?);
            }
            if *i == my_leaf {
                my_update_committed = true;
            }
        }
        let mut added = vec![];
        for a in commit.add_proposals() {
            let leaf = a.add_proposal().key_package().leaf_node();
            added.push(verify_binding(
                leaf.credential(),
                leaf.signature_key().as_slice(),
            )?);
            // Re-adds (rejoin) and newcomers alike join now.
            certs.extend(self.check_credential(
                &anchors,
                leaf.credential(),
                leaf.signature_key().as_slice(),
                true,
            )?);
        }
        let removed: Vec<MemberId> = commit
            .remove_proposals()
            .filter_map(|r| {
                let idx = r.remove_proposal().removed();
                members_before
                    .iter()
                    .find(|(i, _)| *i == idx)
                    .map(|(_, m)| m.clone())
            })
            .collect();
        let u = self.uni(&uid)?;
        // Adds of new members need an admin, or a device bringing in a
        // device of its own user; re-adds (rejoin) are fine.
        if !owner_is_admin
            && added
                .iter()
                .any(|m| !u.roster.contains(m) && !self.same_user(&owner, m))
        {
            return Err(MmlsError::NotAdmin);
        }
        let universe_removes: Vec<MemberId> = removed
            .into_iter()
            .filter(|m| owner_is_admin || self.unlinked_by_user_of(&owner, m))
            .collect();
        // The owner's own new leaf (a path): same member, and a renewed
        // certificate must hold now (an unchanged one, as for Updates, was
        // checked when it came in).
        if let Some(leaf) = commit.update_path_leaf_node() {
            let who = verify_binding(leaf.credential(), leaf.signature_key().as_slice())?;
            if who != owner {
                return Err(MmlsError::BadCredential);
            }
            if old_credential(self, LeafNodeIndex::new(0)).as_ref() != Some(leaf.credential()) {
                certs.extend(self.check_credential(
                    &anchors,
                    leaf.credential(),
                    leaf.signature_key().as_slice(),
                    true,
                )?);
            }
        }
        Ok(CheckedCommit {
            aad: staged.aad.clone(),
            owner,
            owner_is_admin,
            added,
            universe_removes,
            path: commit.update_path_leaf_node().is_some(),
            my_update_committed,
            self_removed: commit.self_removed(),
            anchors: anchor_change,
            certs,
        })
    }

    /// Apply: the group's new epoch, equivocations its frontier reveals,
    /// our removal or the import it calls for, mirrored membership, our
    /// leaf rotation, what the owner's commit says it holds, and the new
    /// epoch's PSK.
    fn apply_peer_commit(
        &mut self,
        uid: Id32,
        g: Id32,
        c: CheckedCommit,
        epoch: u64,
        auth: [u8; 8],
    ) -> Result<(), MmlsError> {
        let now = self.now;
        let me = self.me.clone();
        self.advance(uid, g)?;
        let equivocations = self.frontier_mismatches(&uid, &c.aad.frontier);
        if c.self_removed {
            if c.added.contains(&me) || !c.universe_removes.contains(&me) {
                // Re-added in the same commit (our Welcome follows), or
                // dropped by an owner who is not an admin: that owner may
                // stop sending to us, as it always could by staying silent,
                // but only an admin (or our user, unlinking us) removes us
                // from the universe.
                let gs = self
                    .group_state_mut(&uid, &g)
                    .ok_or(MmlsError::UnknownGroup(g))?;
                gs.stale = true;
                gs.stale_since = Some(now);
                gs.epoch = epoch;
            } else {
                self.uni_mut(&uid)?.removed = true;
                self.emit(Event::RemovedFromUniverse { universe: uid });
            }
            self.record_equivocations(uid, equivocations)?;
            return Ok(());
        }
        {
            let gs = self
                .group_state_mut(&uid, &g)
                .ok_or(MmlsError::UnknownGroup(g))?;
            gs.epoch = epoch;
            gs.auth.insert(epoch, auth);
            while gs.auth.len() > AUTH_HISTORY {
                gs.auth.pop_first();
            }
            gs.last_commit_at = now;
            if c.path {
                gs.last_key_update = Some(now);
            }
        }
        let wants_update = self.uni(&uid)?.leaf_updates.is_pending(&g);
        let import = c.aad.is_mmls_update(c.path);
        if import || !c.added.is_empty() || !c.universe_removes.is_empty() || wants_update {
            let u = self.uni_mut(&uid)?;
            if import {
                u.pending_imports.insert(g);
                u.pending_since.get_or_insert(now);
            }
            // Our leaf rotation here: done, or re-proposed later.
            if wants_update && c.my_update_committed {
                u.leaf_updates.covered(&g);
            }
            self.mirror_membership(uid, &c.added, &c.universe_removes)?;
            self.note_readded(uid, &c.owner, &c.added)?;
        }
        self.record_equivocations(uid, equivocations)?;
        if let Some(a) = c.anchors {
            if c.owner_is_admin {
                self.apply_anchor_change(uid, &c.owner, a)?;
            }
        }
        for cert in c.certs {
            self.record_cert(&uid, cert)?;
        }
        self.record_psk_views(&c.owner, &g, &c.aad);
        self.export_psk(uid, g)?;
        if wants_update && !c.my_update_committed {
            // Stale now: re-sent from `tick`, once, after a backoff (see
            // `reproposal`).
            let base = self.config.proposal_retry_ms;
            self.uni_mut(&uid)?
                .leaf_updates
                .missed(&g, epoch, now, base);
        }
        Ok(())
    }
}

/// A peer's commit staged in openmls, with its AAD.
struct StagedPeerCommit {
    commit: Box<StagedCommit>,
    aad: Aad,
}
