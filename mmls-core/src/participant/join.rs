//! Joining a send group through a Welcome addressed to one of our
//! KeyPackages.

use super::*;

impl Participant {
    pub(super) fn welcome_is_for_me(&self, env: &Envelope) -> Result<bool, MmlsError> {
        let msg = MlsMessageIn::tls_deserialize_exact(env.body.as_slice())
            .map_err(|e| MmlsError::MalformedMls(format!("{e:?}")))?;
        let MlsMessageBodyIn::Welcome(w) = msg.extract() else {
            return Err(MmlsError::Unexpected(
                "Welcome envelope without a Welcome".into(),
            ));
        };
        Ok(w.secrets().iter().any(|s| {
            self.state
                .my_kp_refs
                .contains_key(&ByteBuf::from(s.new_member().as_slice().to_vec()))
        }))
    }

    /// Joins send group `g` through a Welcome addressed to one of our
    /// KeyPackages.
    pub(super) fn join(
        &mut self,
        uid: Id32,
        g: Id32,
        env: &Envelope,
        raw: &[u8],
    ) -> Result<(), MmlsError> {
        let msg = MlsMessageIn::tls_deserialize_exact(env.body.as_slice())
            .map_err(|e| MmlsError::MalformedMls(format!("{e:?}")))?;
        let MlsMessageBodyIn::Welcome(w) = msg.extract() else {
            return Err(MmlsError::Unexpected("not a Welcome".into()));
        };
        // No downgrade: a group in a suite the universe does not accept is
        // refused before anything is decrypted or stored (before the
        // universe's definition is known, one we implement; the Hello that
        // brings the definition judges it again).
        let suite = u16::from(w.ciphersuite());
        self.check_suite_accepted(&uid, suite)?;
        // Joined through our last-resort KeyPackage: its leaf key is shared
        // with every other group joined that way, so rotate it at once.
        let refs: Vec<ByteBuf> = w
            .secrets()
            .iter()
            .map(|s| ByteBuf::from(s.new_member().as_slice().to_vec()))
            .collect();
        let via_last_resort = refs
            .iter()
            .any(|r| self.state.last_resort_refs.contains_key(r));
        let staged = StagedWelcome::build_from_welcome(&self.provider, &join_config(), w)
            .map_err(MmlsError::mls)?
            .replace_old_group()
            .build()
            .map_err(MmlsError::mls)?;
        if staged.group_context().group_id().as_slice() != g.as_bytes() {
            return Err(MmlsError::AadMismatch("Welcome is for another group"));
        }
        let owner_leaf = staged.welcome_sender().map_err(MmlsError::mls)?;
        if staged.welcome_sender_index() != LeafNodeIndex::new(0) {
            return Err(MmlsError::NotOwner {
                what: "Welcomes",
                group: g,
            });
        }
        let owner = verify_binding(
            owner_leaf.credential(),
            owner_leaf.signature_key().as_slice(),
        )?;
        // The envelope's epoch and seq are hints the owner signs: a replayed
        // Welcome with a forged epoch or position is refused, and no Welcome
        // takes a group we know back to an epoch we are past (found by
        // fuzzing: a replay rewound the group, so its next messages failed).
        // A stale group may sit at the very epoch of the commit that removed
        // us, which is the epoch of the Welcome that re-adds us.
        let sig = env.sig.as_ref().ok_or(MmlsError::BadSignature)?;
        owner.verify(&env.welcome_signed_bytes(), sig)?;
        let epoch = staged.group_context().epoch().as_u64();
        let known = self
            .state
            .universes
            .get(&uid)
            .and_then(|u| u.groups.get(&g));
        if known.is_some_and(|s| epoch < s.epoch || (epoch == s.epoch && !s.stale)) {
            return Err(MmlsError::Duplicate {
                group: g,
                seq: env.seq,
            });
        }
        // Federation: the group's anchors must be the universe's (a
        // non-admin owner cannot pick its own CAs), and every member's chain
        // must reach the anchor of its domain. Lifetimes were checked when
        // each joined; an expiry since is flagged, not refused.
        let anchors =
            crate::federation::anchors_from_extensions(staged.group_context().extensions())?;
        if let Some(def) = self.state.universes.get(&uid).and_then(|u| u.def.as_ref()) {
            if def.anchors != anchors {
                return Err(
                    crate::federation::FederationError::AnchorsMismatch(g.to_string()).into(),
                );
            }
        }
        let mut members = vec![];
        let mut certs = vec![];
        for m in staged.members() {
            members.push(verify_binding(&m.credential, &m.signature_key)?);
            certs.extend(self.check_credential(
                &anchors,
                &m.credential,
                &m.signature_key,
                false,
            )?);
        }
        if let Some(u) = self.state.universes.get(&uid) {
            if u.def.is_some() && !u.roster.contains(&owner) {
                return Err(MmlsError::NotAMember(owner.to_string()));
            }
        }
        let group = staged.into_group(&self.provider).map_err(MmlsError::mls)?;
        let epoch = group.epoch().as_u64();
        let auth = auth8(group.epoch_authenticator().as_slice());
        self.groups.insert(g, group);
        let now = self.now;
        let me = self.me.clone();
        let is_new_universe = !self.state.universes.contains_key(&uid);
        let u = self
            .state
            .universes
            .get_or_insert_with(uid, || UniverseState::new(uid));
        let rejoined = u.groups.get(&g).is_some_and(|s| s.stale);
        // We had been removed (or had left) and an owner adds us again: we
        // are back. Our old send group was retired by everyone, so we make
        // a new one (its id derived from a group we hold at a new epoch:
        // the others are stale until their owners re-add us too, so none
        // at an old epoch can give back the old id), and the Hello that
        // follows this Welcome tells us the universe as it is now.
        let readded = u.removed;
        if readded {
            u.removed = false;
            u.def = None;
            if let Some(old) = u.own_group.take() {
                u.retire(old);
            }
            // What was pending for the old group stays with it (proposals
            // made in it would make our new group's first commit invalid).
            u.own_proposals.clear();
            u.leaf_updates.clear();
            u.pending_adds.clear();
            u.pending_removes.clear();
            u.readds.clear();
            let others: Vec<Id32> = u.groups.keys().filter(|og| **og != g).copied().collect();
            for og in others {
                if let Some(gs) = u.groups.get_mut(&og) {
                    gs.stale = true;
                    gs.stale_since = Some(now);
                }
            }
        }
        // The owner's previous send group is abandoned (it lost its state).
        if let Some(old) = u.owner_group.insert(owner.clone(), g) {
            if old != g {
                u.retire(old);
            }
        }
        u.groups.insert(
            g,
            GroupState {
                owner: owner.clone(),
                next_seq: env.seq.saturating_add(1),
                epoch,
                auth: BTreeMap::from([(epoch, auth)]),
                psk_min: epoch,
                blocked_since: None,
                last_fetch_at: 0,
                stale: false,
                stale_since: None,
                last_commit_at: now,
                pruned_below: 0,
                psk_marks: vec![],
                named_epoch: None,
                last_key_update: None,
                suite,
            },
        );
        u.pending_imports.insert(g);
        u.pending_since.get_or_insert(now);
        for c in certs {
            if u.certs
                .get(&c.member)
                .is_none_or(|x| x.not_after != c.not_after || x.name != c.name)
            {
                u.certs.insert(
                    c.member.clone(),
                    MemberCert {
                        member: c.member,
                        name: c.name,
                        domain: c.domain,
                        not_after: c.not_after,
                        expired: false,
                    },
                );
            }
        }
        if u.groups.values().all(|s| !s.stale) {
            u.rejoin_requested_at = None;
            u.rejoin_attempts = 0;
        }
        let _ = me;
        // Our Welcome is part of the stream peers behind us need to pass.
        self.log_entry(g, env.seq, raw);
        self.index_welcome(uid, g, env.seq)?;
        self.export_psk(uid, g)?;
        let stale_below: Vec<u64> = self
            .buffers
            .get(&g)
            .map(|b| b.range(..=env.seq).map(|(k, _)| *k).collect())
            .unwrap_or_default();
        for s in stale_below {
            self.buffer_remove(g, s);
        }
        self.single_use_spent(&refs);
        if via_last_resort && self.config.rotate_leaves {
            let epoch = self.propose_leaf_update(uid, g)?;
            self.uni_mut(&uid)?.leaf_updates.proposed(g, epoch);
        }
        if rejoined {
            // Policy: an own MMLS update after rejoining.
            self.uni_mut(&uid)?.update_due = true;
            self.emit(Event::Rejoined {
                universe: uid,
                group: g,
                owner,
            });
        }
        // A joiner needs the Hello that follows; it may have gone by
        // before we could read it.
        if readded {
            self.emit(Event::Rejoined {
                universe: uid,
                group: g,
                owner: self.me.clone(),
            });
        }
        if is_new_universe || self.uni(&uid)?.def.is_none() {
            self.outputs.push(Output::Fetch(FetchRequest::Range {
                universe: uid,
                group: g,
                from: env.seq.saturating_add(1),
            }));
        }
        Ok(())
    }
}
