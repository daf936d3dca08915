//! Building an own commit (draft COMMIT): plan what it carries, build and
//! merge it in openmls, then apply it to the engine state and announce it.

use super::*;

impl Participant {
    /// The frontier for our next commit's AAD: the groups whose epoch moved
    /// since our previous commit named them (all of them the first time).
    /// Readers process our commits in order, so over the stream they see
    /// every epoch we named, as with a full frontier in every commit; but a
    /// full one is ~55 bytes per group in every commit (3.5 KB of a 4.4 KB
    /// commit at 64 members, flooded to everyone and kept in every log).
    pub(super) fn frontier(&mut self, uid: &Id32) -> Vec<FrontierEntry> {
        let Some(u) = self.state.universes.get_mut(uid) else {
            return vec![];
        };
        let mut out = vec![];
        for (g, s) in u.groups.iter_mut() {
            if s.named_epoch == Some(s.epoch) {
                continue;
            }
            s.named_epoch = Some(s.epoch);
            out.push(FrontierEntry {
                group: *g,
                epoch: s.epoch,
                auth: s.auth.get(&s.epoch).copied().unwrap_or_default(),
            });
        }
        out
    }

    /// COMMIT: one commit in our send group with a PSK proposal for every
    /// group that made an MMLS update since our last commit, plus pending
    /// adds, removes and re-adds; with a path if `force_path`.
    pub(super) fn commit_own(&mut self, uid: Id32, force_path: bool) -> Result<bool, MmlsError> {
        let own = self
            .uni(&uid)?
            .own_group
            .ok_or(MmlsError::UniverseNotReady(uid))?;
        let now = self.now;
        let u = self.uni(&uid)?.clone();
        let own_members: BTreeSet<MemberId> = self
            .group_members(&own)?
            .into_iter()
            .map(|(_, m)| m)
            .collect();

        // Adds and removes.
        let mut adds: Vec<KeyPackage> = vec![];
        let mut added: Vec<MemberId> = vec![];
        let mut removals: Vec<LeafNodeIndex> = vec![];
        let leaf_of = |members: &[(LeafNodeIndex, MemberId)], m: &MemberId| {
            members.iter().find(|(_, x)| x == m).map(|(i, _)| *i)
        };
        let members = self.group_members(&own)?;
        for m in &u.pending_removes {
            if let Some(i) = leaf_of(&members, m) {
                removals.push(i);
            }
        }
        let mut readded = vec![];
        for (m, kp) in &u.readds {
            match self.validate_kp(kp, Some(m)) {
                Ok(kp) => {
                    if let Some(i) = leaf_of(&members, m) {
                        if !removals.contains(&i) {
                            removals.push(i);
                        }
                    }
                    adds.push(kp);
                    added.push(m.clone());
                    readded.push(m.clone());
                }
                Err(e) => {
                    tracing::debug!(member = %m.short(), error = %e, "rejoin KeyPackage unusable")
                }
            }
        }
        let mut waiting_kp = vec![];
        for m in &u.pending_adds {
            if own_members.contains(m) || added.contains(m) {
                continue;
            }
            match self.key_package_of(m) {
                Ok(kp) => {
                    adds.push(kp);
                    added.push(m.clone());
                }
                Err(_) => waiting_kp.push(m.clone()),
            }
        }
        // PSK imports: only where every reader of our group can derive the
        // PSK, i.e. is a member of that group now (we import its current
        // epoch, which every current member has reached or will reach), and
        // never together with Welcomes (joiners could be stale there) or
        // removals (the removed member must still process this commit to
        // learn it is out, and may never reach the imported epoch). Deferred
        // imports go with the next commit.
        let mut imports: Vec<(Id32, u64)> = vec![];
        let mut deferred = BTreeSet::new();
        if adds.is_empty() && removals.is_empty() {
            // Compared by signature key: bound 1:1 to the member id.
            let removed_keys: BTreeSet<Vec<u8>> = {
                let group = self.group(&own)?;
                group
                    .members()
                    .filter(|m| {
                        members
                            .iter()
                            .any(|(i, id)| *i == m.index && u.pending_removes.contains(id))
                    })
                    .map(|m| m.signature_key)
                    .collect()
            };
            let readers: BTreeSet<Vec<u8>> = self
                .group(&own)?
                .members()
                .map(|m| m.signature_key)
                .filter(|k| !removed_keys.contains(k))
                .collect();
            for g in &u.pending_imports {
                let Some(gs) = u.groups.get(g) else { continue };
                if *g == own || gs.stale {
                    continue;
                }
                let e = gs.epoch;
                let theirs: BTreeSet<Vec<u8>> =
                    self.group(g)?.members().map(|m| m.signature_key).collect();
                let ok = gs.psk_min <= e && readers.is_subset(&theirs);
                if ok {
                    imports.push((*g, e));
                } else {
                    deferred.insert(*g);
                }
            }
        } else {
            deferred = u.pending_imports.clone();
        }
        let proposals_in = u.own_proposals.clone();
        if !force_path
            && imports.is_empty()
            && adds.is_empty()
            && removals.is_empty()
            && proposals_in.is_empty()
        {
            let u = self.uni_mut(&uid)?;
            u.pending_imports = deferred;
            if u.pending_imports.is_empty() && u.pending_adds.iter().all(|m| waiting_kp.contains(m))
            {
                u.pending_since = None;
            }
            return Ok(false);
        }
        let mut proposals = vec![];
        for (g, e) in &imports {
            let mut nonce = vec![0u8; CS.hash_length()];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
            let psk = PreSharedKeyId::external(Profile::psk_id(g, *e), nonce);
            proposals.push(Proposal::PreSharedKey(Box::new(PreSharedKeyProposal::new(
                psk,
            ))));
        }
        // Adding a member the admin added: our readers must have processed
        // the admin's commit (their roster) first, or they would refuse ours
        // as a non-admin's add. A dependency on the admin's send group at the
        // epoch we hold makes them wait (and fetch) instead. Commits with
        // adds carry no PSK imports, so the two kinds of deps never mix.
        let mut deps = imports.clone();
        let me_admin = u.def.as_ref().is_some_and(|d| d.is_admin(&self.me));
        if !me_admin && added.iter().any(|m| !readded.contains(m)) {
            for (g, gs) in &u.groups {
                let admin = u.def.as_ref().is_some_and(|d| d.is_admin(&gs.owner));
                if admin && !gs.stale && gs.owner != self.me {
                    deps.push((*g, gs.epoch));
                }
            }
        }
        let seq = u.groups.get(&own).map(|s| s.next_seq).unwrap_or(0);
        let aad = Aad {
            seq,
            deps: deps.clone(),
            frontier: self.frontier(&uid),
        };
        let identity = self.identity.clone();
        let group = self.group(&own)?;
        group.set_aad(to_cbor(&aad));
        let provider = &self.provider;
        let group = self
            .groups
            .get_mut(&own)
            .ok_or(MmlsError::UnknownGroup(own))?;
        let bundle = group
            .commit_builder()
            .propose_removals(removals.clone())
            .propose_adds(adds)
            .add_proposals(proposals)
            .force_self_update(force_path)
            .load_psks(provider.storage())
            .map_err(MmlsError::mls)?
            // An Update from a member we remove in this commit is void.
            .build(provider.rand(), provider.crypto(), &identity, |q| {
                match q.sender() {
                    Sender::Member(i) => !removals.contains(i),
                    _ => false,
                }
            })
            .map_err(MmlsError::mls)?
            .stage_commit(provider)
            .map_err(MmlsError::mls)?;
        let path = group
            .pending_commit()
            .is_some_and(|c| c.update_path_leaf_node().is_some());
        let (commit, welcome, _) = bundle.into_contents();
        group
            .merge_pending_commit(provider)
            .map_err(MmlsError::mls)?;
        let epoch = group.epoch().as_u64();
        let prev_epoch = epoch - 1;
        let auth = auth8(group.epoch_authenticator().as_slice());
        {
            let u = self.uni_mut(&uid)?;
            let gs = u.groups.get_mut(&own).ok_or(MmlsError::UnknownGroup(own))?;
            gs.epoch = epoch;
            gs.auth.insert(epoch, auth);
            while gs.auth.len() > AUTH_HISTORY {
                gs.auth.pop_first();
            }
            gs.last_commit_at = now;
            u.pending_imports = deferred;
            u.own_proposals.clear();
            u.pending_adds.retain(|m| waiting_kp.contains(m));
            u.pending_removes.clear();
            for m in &readded {
                u.readds.remove(m);
            }
            u.pending_since = if u.has_pending() { Some(now) } else { None };
            u.last_commit_at = now;
            if path {
                u.last_update_at = now;
            }
        }
        self.export_psk(uid, own)?;
        let mut env = self.own_envelope(uid, own, Kind::Commit, prev_epoch, tls(&commit)?, deps)?;
        env.proposals = proposals_in;
        self.emit_stream(Topic::Universe(uid), &env);
        if let Some(w) = welcome {
            self.emit_welcome(
                uid,
                own,
                epoch,
                MlsMessageOut::from_welcome(w, ProtocolVersion::Mls10),
                added,
            )?;
            for m in &readded {
                self.resend_history(uid, m)?;
            }
        }
        self.emit(Event::Committed {
            universe: uid,
            epoch,
            imports: imports.len(),
            path,
        });
        Ok(true)
    }
}
