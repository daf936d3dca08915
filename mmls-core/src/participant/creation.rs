//! Our own send group: creating it (draft 6.1 INIT / derivedGroupId) and
//! appending entries to its stream (Welcomes, application payloads).

use super::*;

impl Participant {
    /// The suite our send group in `uid` takes: our first preference the
    /// universe accepts, else the universe's first choice.
    pub(super) fn own_suite(&self, uid: &Id32) -> Result<u16, MmlsError> {
        #[cfg(test)]
        if let Some(s) = self.forced_suite {
            return Ok(s);
        }
        let def = self
            .uni(uid)?
            .def
            .as_ref()
            .ok_or(MmlsError::UniverseNotReady(*uid))?;
        crate::ciphersuites::choose(
            &self.config.ciphersuites,
            &def.ciphersuites,
            !def.anchors.is_empty(),
        )
    }

    pub(super) fn try_create_own_group(&mut self, uid: Id32) -> Result<(), MmlsError> {
        let suite = self.own_suite(&uid)?;
        let u = self.uni(&uid)?;
        let missing = self.lacking_key_packages(&u.roster, suite);
        if !missing.is_empty() {
            for m in missing {
                self.request_kp(&m);
            }
            return Ok(());
        }
        // draft-xue-multi-mls derivedGroupId, from the first group we joined.
        let anchor = *u
            .groups
            .iter()
            .find(|(_, g)| !g.stale)
            .map(|(id, _)| id)
            .ok_or(MmlsError::UniverseNotReady(uid))?;
        let pk = self.identity.public_key();
        self.group(&anchor)?;
        let group = self
            .groups
            .get(&anchor)
            .ok_or(MmlsError::UnknownGroup(anchor))?;
        let gid_new = Profile::derived_group_id(self.provider.crypto(), group, &pk)?;
        self.create_own_group(uid, gid_new)
    }

    /// Creates our send group `gid_new` in universe `uid` with every other
    /// roster member, in our suite: commit (seq 0), Welcome (seq 1), Hello
    /// (seq 2).
    pub(super) fn create_own_group(&mut self, uid: Id32, gid_new: Id32) -> Result<(), MmlsError> {
        let suite = self.own_suite(&uid)?;
        let u = self.uni(&uid)?;
        let others: Vec<MemberId> = u
            .roster
            .iter()
            .filter(|m| **m != self.me)
            .cloned()
            .collect();
        let kps = others
            .iter()
            .map(|m| self.usable_kp(m, suite))
            .collect::<Result<Vec<_>, _>>()?;
        // Members already in the universe: their chains must reach their
        // domain's anchor; an expiry is flagged, not a reason to leave them
        // out of our group.
        let mut certs = vec![];
        for (m, kp) in others.iter().zip(&kps) {
            certs.extend(self.check_kp_trust(&uid, kp, false)?);
            // Spent with this step (a failed one rolls it back).
            self.consume_kp(m, kp)?;
        }
        let anchors = self.universe_anchors(&uid);
        let own = self.identity.credential_for(suite);
        if let Ok(Some(c)) = self.check_credential(
            &anchors,
            &own.credential,
            own.signature_key.as_slice(),
            false,
        ) {
            certs.push(c);
        }
        let mut group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.identity.signer(suite),
            &create_config(&anchors, suite)?,
            gid(&gid_new),
            own,
        )
        .map_err(MmlsError::mls)?;
        let aad = Aad {
            seq: 0,
            deps: vec![],
            frontier: self.frontier(&uid),
            update: Some(false),
        };
        group.set_aad(to_cbor(&aad));
        let bundle = group
            .commit_builder()
            .propose_adds(kps)
            .load_psks(self.provider.storage())
            .map_err(MmlsError::mls)?
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.identity.signer(suite),
                |_| true,
            )
            .map_err(MmlsError::mls)?
            .stage_commit(&self.provider)
            .map_err(MmlsError::mls)?;
        let (commit, welcome, _) = bundle.into_contents();
        group
            .merge_pending_commit(&self.provider)
            .map_err(MmlsError::mls)?;
        let epoch = group.epoch().as_u64();
        let auth = auth8(group.epoch_authenticator().as_slice());
        self.groups.insert(gid_new, group);
        let gs = GroupState {
            owner: self.me.clone(),
            next_seq: 0,
            epoch,
            auth: BTreeMap::from([(epoch, auth)]),
            psk_min: epoch,
            blocked_since: None,
            last_fetch_at: 0,
            stale: false,
            stale_since: None,
            last_commit_at: self.now,
            pruned_below: 0,
            psk_marks: vec![],
            named_epoch: None,
            last_key_update: Some(self.now),
            suite,
        };
        let now = self.now;
        let me = self.me.clone();
        let u = self.uni_mut(&uid)?;
        // A previous own group (before a state loss) is abandoned.
        if let Some(old) = u.own_group.replace(gid_new) {
            u.retire(old);
        }
        u.groups.insert(gid_new, gs);
        u.owner_group.insert(me, gid_new);
        u.anchors_pending = false;
        u.last_commit_at = now;
        u.last_update_at = now;
        for c in certs {
            self.record_cert(&uid, c)?;
        }
        self.export_psk(uid, gid_new)?;
        let commit_env = self.own_envelope(uid, gid_new, Kind::Commit, 0, tls(&commit)?, vec![])?;
        self.emit_stream(Topic::Universe(uid), &commit_env);
        if let Some(w) = welcome {
            self.emit_welcome(
                uid,
                gid_new,
                epoch,
                MlsMessageOut::from_welcome(w, ProtocolVersion::Mls10),
                others.clone(),
            )?;
        }
        Ok(())
    }

    /// Appends the next entry of our own stream.
    pub(super) fn own_envelope(
        &mut self,
        uid: Id32,
        g: Id32,
        kind: Kind,
        epoch: u64,
        body: Vec<u8>,
        deps: Vec<(Id32, u64)>,
    ) -> Result<Envelope, MmlsError> {
        let gs = self
            .group_state_mut(&uid, &g)
            .ok_or(MmlsError::UnknownGroup(g))?;
        let seq = gs.next_seq;
        gs.next_seq += 1;
        let mut e = Envelope::new(kind, body);
        e.universe = Some(uid);
        e.group = Some(g);
        e.epoch = epoch;
        e.seq = seq;
        e.deps = deps;
        Ok(e)
    }

    pub(super) fn emit_welcome(
        &mut self,
        uid: Id32,
        g: Id32,
        epoch: u64,
        welcome: MlsMessageOut,
        to: Vec<MemberId>,
    ) -> Result<(), MmlsError> {
        let mut env = self.own_envelope(uid, g, Kind::Welcome, epoch, tls(&welcome)?, vec![])?;
        env.to = None;
        env.sig = Some(ByteBuf::from(
            self.identity.sign_detached(&env.welcome_signed_bytes()),
        ));
        let seq = env.seq;
        // Welcomes go to the lobby: joiners are not on the universe topic yet.
        self.emit_stream(Topic::Lobby, &env);
        let u = self.uni_mut(&uid)?;
        for m in to {
            let v = u.welcomes.entry(m).or_default();
            v.push((g, seq));
            if v.len() > 4 {
                v.remove(0);
            }
        }
        // Every Welcome is followed by a Hello naming the universe.
        let u = self.uni(&uid)?;
        let def = u.def.clone().ok_or(MmlsError::UniverseNotReady(uid))?;
        let roster: Vec<MemberId> = u.roster.iter().cloned().collect();
        let links = self.roster_links(&roster);
        self.send_payload(uid, &Payload::Hello { def, roster, links })
    }

    pub(super) fn send_payload(&mut self, uid: Id32, payload: &Payload) -> Result<(), MmlsError> {
        let g = self
            .uni(&uid)?
            .own_group
            .ok_or(MmlsError::UniverseNotReady(uid))?;
        let seq = self
            .uni(&uid)?
            .groups
            .get(&g)
            .map(|s| s.next_seq)
            .ok_or(MmlsError::UnknownGroup(g))?;
        let aad = Aad {
            seq,
            deps: vec![],
            frontier: vec![],
            update: None,
        };
        let provider = &self.provider;
        let group = self.groups.load(provider.storage(), &g)?;
        group.set_aad(to_cbor(&aad));
        let msg = group
            .create_message(
                provider,
                &self.identity.signer(suite_of(group)),
                &to_cbor(payload),
            )
            .map_err(MmlsError::mls)?;
        let epoch = group.epoch().as_u64();
        let env = self.own_envelope(uid, g, Kind::Application, epoch, tls(&msg)?, vec![])?;
        self.emit_stream(Topic::Universe(uid), &env);
        Ok(())
    }
}
