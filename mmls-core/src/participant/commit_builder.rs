//! Building an own commit (draft COMMIT): plan what it carries, build and
//! merge it in openmls, then apply it to the engine state and announce it.

use super::*;

/// What an own commit carries, decided from the engine state before
/// openmls is called.
struct CommitPlan {
    force_path: bool,
    adds: Vec<KeyPackage>,
    /// Members the adds are for (new and re-added).
    added: Vec<MemberId>,
    /// Those of them re-added after a rejoin request.
    readded: Vec<MemberId>,
    removals: Vec<LeafNodeIndex>,
    /// Pending adds still waiting for a KeyPackage.
    waiting_kp: Vec<MemberId>,
    /// PSKs imported now, as (group, epoch).
    imports: Vec<(Id32, u64)>,
    /// Pending imports left for a later commit.
    deferred: BTreeSet<Id32>,
    /// Update proposals of other members this commit covers (TLS bytes).
    proposals_in: Vec<ByteBuf>,
    /// What readers must hold before processing it (imports, admin epochs).
    deps: Vec<(Id32, u64)>,
    /// New trust anchors for our GroupContext (an admin's change, or our
    /// mirror of one).
    anchors: Option<Vec<crate::federation::DomainAnchor>>,
}

impl CommitPlan {
    /// Nothing that needs a commit.
    fn is_empty(&self) -> bool {
        !self.force_path
            && self.imports.is_empty()
            && self.adds.is_empty()
            && self.removals.is_empty()
            && self.proposals_in.is_empty()
            && self.anchors.is_none()
    }
}

/// An own commit staged and merged in openmls.
struct BuiltCommit {
    commit: MlsMessageOut,
    welcome: Option<Welcome>,
    epoch: u64,
    auth: [u8; 8],
    path: bool,
}

impl Participant {
    /// The frontier for our next commit's AAD: the groups whose epoch moved
    /// since our previous commit named them (all of them the first time).
    /// Readers process our commits in order, so over the stream they see
    /// every epoch we named, as with a full frontier in every commit; but a
    /// full one is ~55 bytes per group in every commit (3.5 KB of a 4.4 KB
    /// commit at 64 members, flooded to everyone and kept in every log).
    pub(super) fn frontier(&mut self, uid: &Id32) -> Vec<FrontierEntry> {
        let Some(u) = self.state.universes.get(uid) else {
            return vec![];
        };
        let moved: Vec<FrontierEntry> = u
            .groups
            .iter()
            .filter(|(_, s)| s.named_epoch != Some(s.epoch))
            .map(|(g, s)| FrontierEntry {
                group: *g,
                epoch: s.epoch,
                auth: s.auth.get(&s.epoch).copied().unwrap_or_default(),
            })
            .collect();
        // Only the groups named are touched (and written).
        for f in &moved {
            if let Some(s) = self.group_state_mut(uid, &f.group) {
                s.named_epoch = Some(f.epoch);
            }
        }
        moved
    }

    /// COMMIT: one commit in our send group with a PSK proposal for every
    /// group that made an MMLS update since our last commit, plus pending
    /// adds, removes and re-adds; with a path if `force_path`. False if
    /// there was nothing to commit.
    pub(super) fn commit_own(&mut self, uid: Id32, force_path: bool) -> Result<bool, MmlsError> {
        let own = self
            .uni(&uid)?
            .own_group
            .ok_or(MmlsError::UniverseNotReady(uid))?;
        let plan = self.plan_commit(uid, own, force_path)?;
        if plan.is_empty() {
            self.defer_pending(uid, &plan)?;
            return Ok(false);
        }
        let built = self.build_commit(uid, own, &plan)?;
        self.apply_own_commit(uid, own, plan, built)?;
        Ok(true)
    }

    /// Plans the commit: membership changes, then the PSK imports that
    /// every reader can derive, then the deps readers wait for.
    fn plan_commit(
        &mut self,
        uid: Id32,
        own: Id32,
        force_path: bool,
    ) -> Result<CommitPlan, MmlsError> {
        let members = self.group_members(&own)?;
        let suite = suite_of(self.group(&own)?);
        let leaf_of = |m: &MemberId| members.iter().find(|(_, x)| x == m).map(|(i, _)| *i);
        let mut plan = CommitPlan {
            force_path,
            adds: vec![],
            added: vec![],
            readded: vec![],
            removals: vec![],
            waiting_kp: vec![],
            imports: vec![],
            deferred: BTreeSet::new(),
            proposals_in: vec![],
            deps: vec![],
            anchors: None,
        };
        let u = self.uni(&uid)?;
        for m in &u.pending_removes {
            if let Some(i) = leaf_of(m) {
                plan.removals.push(i);
            }
        }
        for (m, kp) in &u.readds {
            match self
                .validate_kp(kp, Some(m))
                .and_then(|kp| self.check_kp_suite(&uid, suite, &kp).map(|_| kp))
                .and_then(|kp| self.check_kp_trust(&uid, &kp, true).map(|_| kp))
            {
                Ok(kp) => {
                    if let Some(i) = leaf_of(m) {
                        if !plan.removals.contains(&i) {
                            plan.removals.push(i);
                        }
                    }
                    plan.adds.push(kp);
                    plan.added.push(m.clone());
                    plan.readded.push(m.clone());
                }
                Err(e) => {
                    tracing::debug!(member = %m.short(), error = %e, "rejoin KeyPackage unusable")
                }
            }
        }
        for m in &u.pending_adds {
            if members.iter().any(|(_, x)| x == m) || plan.added.contains(m) {
                continue;
            }
            // A KeyPackage whose certificate this universe refuses (now)
            // waits like a missing one: the member may renew.
            match self
                .usable_kp(m, suite)
                .and_then(|kp| self.check_kp_trust(&uid, &kp, true).map(|_| kp))
            {
                Ok(kp) => {
                    plan.adds.push(kp);
                    plan.added.push(m.clone());
                }
                Err(e) => {
                    tracing::debug!(member = %m.short(), error = %e, "add waits");
                    plan.waiting_kp.push(m.clone())
                }
            }
        }
        plan.proposals_in = u.own_proposals.clone();
        if u.anchors_pending {
            plan.anchors = Some(
                u.def
                    .as_ref()
                    .map(|d| d.anchors.clone())
                    .unwrap_or_default(),
            );
        }
        // PSK imports: only where every reader of our group can derive the
        // PSK, i.e. is a member of that group now (we import its current
        // epoch, which every current member has reached or will reach), and
        // never together with Welcomes (joiners could be stale there) or
        // removals (the removed member must still process this commit to
        // learn it is out, and may never reach the imported epoch). Deferred
        // imports go with the next commit.
        let pending: Vec<Id32> = u.pending_imports.iter().copied().collect();
        if !plan.adds.is_empty() || !plan.removals.is_empty() {
            plan.deferred = pending.into_iter().collect();
        } else {
            let removing: BTreeSet<LeafNodeIndex> = members
                .iter()
                .filter(|(_, id)| u.pending_removes.contains(id))
                .map(|(i, _)| *i)
                .collect();
            // Compared by member id: a member's signature key differs
            // between groups of an Ed25519 and a P-256 suite.
            let readers: BTreeSet<MemberId> = members
                .iter()
                .filter(|(i, _)| !removing.contains(i))
                .map(|(_, m)| m.clone())
                .collect();
            for g in pending {
                let Some((epoch, psk_min, stale, owner)) = self
                    .uni(&uid)?
                    .groups
                    .get(&g)
                    .map(|s| (s.epoch, s.psk_min, s.stale, s.owner.clone()))
                else {
                    continue;
                };
                if g == own || stale {
                    continue;
                }
                let theirs: BTreeSet<MemberId> = self
                    .group_members(&g)?
                    .into_iter()
                    .map(|(_, m)| m)
                    .collect();
                if psk_min <= epoch
                    && readers.is_subset(&theirs)
                    && !self.import_crosses_gap(&uid, &owner, &readers)
                {
                    plan.imports.push((g, epoch));
                } else {
                    plan.deferred.insert(g);
                }
            }
        }
        // Adding a member the admin added: our readers must have processed
        // the admin's commit (their roster) first, or they would refuse ours
        // as a non-admin's add. A dependency on the admin's send group at the
        // epoch we hold makes them wait (and fetch) instead. Commits with
        // adds carry no PSK imports, so the two kinds of deps never mix.
        plan.deps = plan.imports.clone();
        let u = self.uni(&uid)?;
        let is_admin = |m: &MemberId| u.def.as_ref().is_some_and(|d| d.is_admin(m));
        let mirrors_admin =
            plan.anchors.is_some() || plan.added.iter().any(|m| !plan.readded.contains(m));
        if !is_admin(&self.me) && mirrors_admin {
            // A device's add of its user's new device is mirrored the same
            // way: readers must have its commit (and the statements before
            // it) first.
            let newcomers: Vec<&MemberId> = plan
                .added
                .iter()
                .filter(|m| !plan.readded.contains(m))
                .collect();
            for (g, gs) in &u.groups {
                // (Not the newcomer's own group: readers may not be in it
                // yet, and it justifies nothing.)
                let justifies = is_admin(&gs.owner)
                    || newcomers
                        .iter()
                        .any(|m| **m != gs.owner && self.same_user(&gs.owner, m));
                if justifies && !gs.stale && gs.owner != self.me {
                    plan.deps.push((*g, gs.epoch));
                }
            }
        }
        Ok(plan)
    }

    /// Nothing to commit now: imports that cannot go yet wait, and the
    /// commit timer stops if nothing else is pending.
    fn defer_pending(&mut self, uid: Id32, plan: &CommitPlan) -> Result<(), MmlsError> {
        let u = self.uni_mut(&uid)?;
        u.pending_imports = plan.deferred.clone();
        if u.pending_imports.is_empty()
            && u.pending_adds.iter().all(|m| plan.waiting_kp.contains(m))
        {
            u.pending_since = None;
        }
        Ok(())
    }

    /// Builds the commit in openmls (PSK proposals, adds, removals, the
    /// covered Update proposals, the AAD with our stream position), stages
    /// and merges it.
    fn build_commit(
        &mut self,
        uid: Id32,
        own: Id32,
        plan: &CommitPlan,
    ) -> Result<BuiltCommit, MmlsError> {
        let mut proposals = vec![];
        // RFC 9420: a PSK nonce is KDF.Nh of the importing group's suite
        // (the PSK itself has the universe's export length, whatever the
        // exporting group's suite).
        let nh = self.group(&own)?.ciphersuite().hash_length();
        for (g, e) in &plan.imports {
            let mut nonce = vec![0u8; nh];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
            let psk = PreSharedKeyId::external(Profile::psk_id(g, *e), nonce);
            proposals.push(Proposal::PreSharedKey(Box::new(PreSharedKeyProposal::new(
                psk,
            ))));
        }
        let seq = self
            .uni(&uid)?
            .groups
            .get(&own)
            .map(|s| s.next_seq)
            .unwrap_or(0);
        let aad = Aad {
            seq,
            deps: plan.deps.clone(),
            frontier: self.frontier(&uid),
            update: Some(plan.force_path),
        };
        let gce = match &plan.anchors {
            None => None,
            Some(a) => Some(crate::federation::group_context_extensions(a)?),
        };
        let provider = &self.provider;
        let group = self.groups.load(provider.storage(), &own)?;
        group.set_aad(to_cbor(&aad));
        let removals = &plan.removals;
        let suite = suite_of(group);
        let signer = self.identity.signer(suite);
        let leaf = Self::leaf_params(&self.identity, group);
        let mut builder = group.commit_builder();
        if let Some(ext) = gce {
            builder = builder
                .propose_group_context_extensions(ext)
                .map_err(MmlsError::mls)?;
        }
        let bundle = builder
            .leaf_node_parameters(leaf)
            .propose_removals(removals.iter().copied())
            .propose_adds(plan.adds.iter().cloned())
            .add_proposals(proposals)
            .force_self_update(plan.force_path)
            .load_psks(provider.storage())
            .map_err(MmlsError::mls)?
            // An Update from a member we remove in this commit is void.
            .build(provider.rand(), provider.crypto(), &signer, |q| {
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
        Ok(BuiltCommit {
            commit,
            welcome,
            epoch: group.epoch().as_u64(),
            auth: auth8(group.epoch_authenticator().as_slice()),
            path,
        })
    }

    /// Applies a merged own commit: our group's state, what is no longer
    /// pending, the new PSK, then the stream entries (commit, Welcome,
    /// Hello, re-sends) and the event.
    fn apply_own_commit(
        &mut self,
        uid: Id32,
        own: Id32,
        plan: CommitPlan,
        built: BuiltCommit,
    ) -> Result<(), MmlsError> {
        let now = self.now;
        let epoch = built.epoch;
        {
            let gs = self
                .group_state_mut(&uid, &own)
                .ok_or(MmlsError::UnknownGroup(own))?;
            gs.epoch = epoch;
            gs.auth.insert(epoch, built.auth);
            while gs.auth.len() > AUTH_HISTORY {
                gs.auth.pop_first();
            }
            gs.last_commit_at = now;
            if built.path {
                gs.last_key_update = Some(now);
            }
            let u = self.uni_mut(&uid)?;
            u.pending_imports = plan.deferred;
            u.own_proposals.clear();
            u.pending_adds.retain(|m| plan.waiting_kp.contains(m));
            u.pending_removes.clear();
            if plan.anchors.is_some() {
                u.anchors_pending = false;
            }
            for m in &plan.readded {
                u.readds.remove(m);
            }
            u.pending_since = if u.has_pending() { Some(now) } else { None };
            u.last_commit_at = now;
            if built.path {
                u.last_update_at = now;
            }
        }
        for (m, kp) in plan.added.iter().zip(&plan.adds) {
            self.consume_kp(m, kp)?;
        }
        self.export_psk(uid, own)?;
        let mut env = self.own_envelope(
            uid,
            own,
            Kind::Commit,
            epoch - 1,
            tls(&built.commit)?,
            plan.deps,
        )?;
        env.proposals = plan.proposals_in;
        self.emit_stream(Topic::Universe(uid), &env);
        if let Some(w) = built.welcome {
            self.emit_welcome(
                uid,
                own,
                epoch,
                MlsMessageOut::from_welcome(w, ProtocolVersion::Mls10),
                plan.added,
            )?;
            for m in &plan.readded {
                self.resend_history(uid, m)?;
            }
        }
        self.emit(Event::Committed {
            universe: uid,
            epoch,
            imports: plan.imports.len(),
            path: built.path,
        });
        Ok(())
    }
}
