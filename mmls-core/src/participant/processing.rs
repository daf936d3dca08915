//! Processing the next entry of a peer's stream: Welcomes for others and
//! application messages (texts, Hellos, re-sends).

use super::*;

impl Participant {
    /// Processes the next entry of send group `g`'s stream.
    pub(super) fn process_entry(
        &mut self,
        uid: Id32,
        g: Id32,
        env: &Envelope,
        raw: &[u8],
    ) -> Result<(), MmlsError> {
        self.buffer_remove(g, env.seq);
        self.process_entry_kind(uid, g, env)?;
        self.log_entry(g, env.seq, raw);
        Ok(())
    }

    /// Store-and-forward: every member keeps the entries it has processed
    /// (bounded by `log_retention`) and serves them to peers that missed
    /// them, so a partition heals through whoever carried the history, not
    /// only through the owner. Only processed entries are kept: we never
    /// hand on what we could not authenticate.
    pub(super) fn log_entry(&mut self, g: Id32, seq: u64, raw: &[u8]) {
        self.provider
            .store()
            .put(Table::Log, &log_key(&g, seq), raw);
    }

    pub(super) fn process_entry_kind(
        &mut self,
        uid: Id32,
        g: Id32,
        env: &Envelope,
    ) -> Result<(), MmlsError> {
        match env.kind {
            Kind::Welcome => {
                // For other members (ours came through `join`): we cannot
                // decrypt it, so the owner's signature is what proves it is
                // the real entry at this position.
                let owner = self
                    .uni(&uid)?
                    .groups
                    .get(&g)
                    .map(|s| s.owner.clone())
                    .ok_or(MmlsError::UnknownGroup(g))?;
                let sig = env.sig.as_ref().ok_or(MmlsError::BadSignature)?;
                owner.verify(&env.welcome_signed_bytes(), sig)?;
                self.advance(uid, g)?;
                self.index_welcome(uid, g, env.seq)
            }
            Kind::Commit => self.process_commit(uid, g, env),
            Kind::Application => self.process_application(uid, g, env),
            k => Err(MmlsError::Unexpected(format!(
                "{k:?} in a send-group stream"
            ))),
        }
    }

    pub(super) fn advance(&mut self, uid: Id32, g: Id32) -> Result<(), MmlsError> {
        let gs = self
            .group_state_mut(&uid, &g)
            .ok_or(MmlsError::UnknownGroup(g))?;
        gs.next_seq = gs.next_seq.saturating_add(1);
        gs.blocked_since = None;
        self.last_progress.insert(uid, self.now);
        Ok(())
    }

    pub(super) fn protocol_message(env: &Envelope) -> Result<ProtocolMessage, MmlsError> {
        let msg = MlsMessageIn::tls_deserialize_exact(env.body.as_slice())
            .map_err(|e| MmlsError::MalformedMls(format!("{e:?}")))?;
        msg.try_into_protocol_message()
            .map_err(|e| MmlsError::MalformedMls(format!("{e:?}")))
    }

    pub(super) fn check_owner_and_aad(
        g: &Id32,
        processed: &ProcessedMessage,
        env: &Envelope,
        what: &'static str,
    ) -> Result<Aad, MmlsError> {
        if *processed.sender() != Sender::Member(LeafNodeIndex::new(0)) {
            return Err(MmlsError::NotOwner { what, group: *g });
        }
        let aad: Aad =
            from_cbor(processed.aad()).map_err(|_| MmlsError::AadMismatch("unreadable"))?;
        if aad.seq != env.seq {
            return Err(MmlsError::AadMismatch("seq"));
        }
        if aad.deps != env.deps {
            return Err(MmlsError::AadMismatch("deps"));
        }
        Ok(aad)
    }

    pub(super) fn process_application(
        &mut self,
        uid: Id32,
        g: Id32,
        env: &Envelope,
    ) -> Result<(), MmlsError> {
        let pm = Self::protocol_message(env)?;
        if pm.group_id().as_slice() != g.as_bytes() {
            return Err(MmlsError::AadMismatch("group"));
        }
        let provider = &self.provider;
        let group = self.groups.load(provider.storage(), &g)?;
        let epoch = group.epoch().as_u64();
        let processed = group
            .process_message(provider, pm)
            .map_err(MmlsError::mls)?;
        Self::check_owner_and_aad(&g, &processed, env, "application messages")?;
        let ProcessedMessageContent::ApplicationMessage(app) = processed.into_content() else {
            return Err(MmlsError::Unexpected(
                "expected an application message".into(),
            ));
        };
        let payload: Payload = from_cbor(&app.into_bytes()).map_err(MmlsError::Unexpected)?;
        self.advance(uid, g)?;
        let owner = self
            .uni(&uid)?
            .groups
            .get(&g)
            .map(|s| s.owner.clone())
            .ok_or(MmlsError::UnknownGroup(g))?;
        match payload {
            Payload::Text { seq, body } => self.deliver_text(uid, g, &owner, epoch, seq, body)?,
            Payload::Hello { def, roster, links } => {
                self.learn_hello_links(&links);
                self.on_hello(uid, g, &owner, def, roster)?
            }
            Payload::Resend { to, texts } => self.on_resend(uid, g, &owner, epoch, &to, texts)?,
            Payload::Leave => self.on_leave(uid, &owner)?,
            Payload::Devices(links) => self.on_devices(uid, &owner, links)?,
        }
        Ok(())
    }

    pub(super) fn on_hello(
        &mut self,
        uid: Id32,
        g: Id32,
        owner: &MemberId,
        def: UniverseDef,
        roster: Vec<MemberId>,
    ) -> Result<(), MmlsError> {
        if def.id != uid {
            return Err(MmlsError::AadMismatch("Hello names another universe"));
        }
        // The anchors a Hello claims are those its send group carries in
        // its GroupContext (authenticated, agreed by all its members).
        let group_anchors = Self::group_anchors(self.group(&g)?)?;
        if def.anchors != group_anchors && self.uni(&uid)?.def.is_none() {
            return Err(crate::federation::FederationError::AnchorsMismatch(g.to_string()).into());
        }
        // The Hello's own group must be in a suite its universe accepts,
        // and we must be able to make ours in one of them.
        let suite = suite_of(self.group(&g)?);
        if !def.ciphersuites.contains(&suite) {
            return Err(MmlsError::CiphersuiteRefused(suite));
        }
        crate::ciphersuites::choose(
            &self.config.ciphersuites,
            &def.ciphersuites,
            !def.anchors.is_empty(),
        )?;
        let me = self.me.clone();
        let u = self.uni_mut(&uid)?;
        if u.def.is_none() {
            // The creator's Hello is authoritative; another owner's Hello
            // only teaches a joiner that does not know the universe yet.
            if !roster.contains(owner) || !roster.contains(&me) {
                return Err(MmlsError::NotAMember(me.to_string()));
            }
            let name = def.name.clone();
            // Groups joined before we knew the universe were judged only
            // by suites we implement: one the universe does not accept is
            // another owner's downgrade, left as if never joined.
            let refused: Vec<(Id32, u16)> = u
                .groups
                .iter()
                .filter(|(_, s)| !def.ciphersuites.contains(&s.suite))
                .map(|(id, s)| (*id, s.suite))
                .collect();
            for (rg, _) in &refused {
                u.retire(*rg);
            }
            u.def = Some(def);
            u.roster = roster.into_iter().collect();
            for (rg, suite) in refused {
                self.groups.remove(&rg);
                self.emit(Event::Rejected {
                    universe: uid,
                    group: rg,
                    seq: 0,
                    reason: MmlsError::CiphersuiteRefused(suite).to_string(),
                });
            }
            let u = self.uni_mut(&uid)?;
            // PSKs exported before we knew the universe's profile were
            // derived with the default labels: derive them again (every
            // group is still at its join epoch, as a Hello follows each
            // Welcome).
            let gs: Vec<Id32> = u.groups.keys().cloned().collect();
            for g in gs {
                self.export_psk(uid, g)?;
            }
            self.emit(Event::UniverseJoined {
                universe: uid,
                name,
            });
            self.try_create_own_group(uid)?;
        }
        Ok(())
    }
}
