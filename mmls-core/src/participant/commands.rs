//! User commands: create a universe, send, update, add and remove members,
//! rejoin. Each is one or more atomic steps.

use super::*;

impl Participant {
    /// INIT (draft 6.1): creates our send group with every member, whose id
    /// becomes the universe id, and sends the Welcome plus the universe
    /// definition.
    pub fn create_universe(
        &mut self,
        name: &str,
        members: &[MemberId],
        admins: &[MemberId],
        profile: Profile,
    ) -> Result<(Id32, Vec<Output>), MmlsError> {
        self.create_federated_universe(name, members, admins, profile, vec![])
    }

    /// INIT for a federated universe: `anchors` lists each domain whose
    /// members may join and the certificate that vouches for them. Every
    /// member (us included) must hold a certificate valid now that reaches
    /// its own domain's anchor. Without anchors, as `create_universe`.
    pub fn create_federated_universe(
        &mut self,
        name: &str,
        members: &[MemberId],
        admins: &[MemberId],
        profile: Profile,
        anchors: Vec<crate::federation::DomainAnchor>,
    ) -> Result<(Id32, Vec<Output>), MmlsError> {
        self.create_universe_with(
            name,
            members,
            admins,
            profile,
            anchors,
            crate::ciphersuites::DEFAULT_ACCEPTED,
        )
    }

    /// INIT with everything a universe definition holds: as
    /// `create_federated_universe`, accepting the ciphersuites `suites`
    /// (code points, the creator's preference first; see `ciphersuites`).
    /// Our own send group takes our preferred suite among them.
    pub fn create_universe_with(
        &mut self,
        name: &str,
        members: &[MemberId],
        admins: &[MemberId],
        profile: Profile,
        anchors: Vec<crate::federation::DomainAnchor>,
        suites: &[u16],
    ) -> Result<(Id32, Vec<Output>), MmlsError> {
        crate::federation::DomainAnchor::check_list(&anchors)?;
        crate::ciphersuites::check_accepted(suites, !anchors.is_empty())?;
        let suite =
            crate::ciphersuites::choose(&self.config.ciphersuites, suites, !anchors.is_empty())?;
        let own = self.identity.credential_for(suite);
        self.check_credential(
            &anchors,
            &own.credential,
            own.signature_key.as_slice(),
            true,
        )?;
        let others: BTreeSet<MemberId> =
            members.iter().filter(|m| **m != self.me).cloned().collect();
        if others.is_empty() {
            return Err(MmlsError::NoMembers);
        }
        let missing = self.lacking_key_packages(&others, suite);
        if !missing.is_empty() {
            let _ = self.step(|p| {
                for m in &missing {
                    p.request_kp(m);
                }
                Ok(())
            });
            let outs = self.take_outputs();
            // Report the first missing one; the requests go out regardless.
            let _ = outs;
            return Err(MmlsError::MissingKeyPackage(missing[0].to_string()));
        }
        for m in &others {
            let kp = self.usable_kp(m, suite)?;
            let leaf = kp.leaf_node();
            self.check_credential(
                &anchors,
                leaf.credential(),
                leaf.signature_key().as_slice(),
                true,
            )?;
        }
        let mut id = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        let uid = Id32(id);
        let mut admin_set: Vec<MemberId> = admins.to_vec();
        if !admin_set.contains(&self.me) {
            admin_set.insert(0, self.me.clone());
        }
        let def = UniverseDef {
            id: uid,
            name: name.to_string(),
            creator: self.me.clone(),
            admins: admin_set,
            profile,
            export_len: 32,
            ciphersuites: suites.to_vec(),
            anchors,
        };
        self.step(|p| {
            let mut u = UniverseState::new(uid);
            u.def = Some(def.clone());
            u.roster = others.iter().cloned().collect();
            u.roster.insert(p.me.clone());
            p.state.universes.insert(uid, u);
            p.create_own_group(uid, uid)?;
            let ev = Event::UniverseJoined {
                universe: uid,
                name: def.name.clone(),
            };
            p.emit(ev);
            Ok(())
        })?;
        Ok((uid, self.take_outputs()))
    }

    /// PROTECT: commits pending imports first, then sends `body` to the
    /// universe as an application message in our send group.
    pub fn send(&mut self, universe: &Id32, body: &[u8]) -> Result<(u64, Vec<Output>), MmlsError> {
        if body.len() > crate::envelope::MAX_ENVELOPE_BYTES / 2 {
            return Err(MmlsError::TooLarge(
                body.len(),
                crate::envelope::MAX_ENVELOPE_BYTES / 2,
            ));
        }
        let u = self.uni(universe)?;
        if u.removed {
            return Err(MmlsError::NotInUniverse(*universe));
        }
        if u.own_group.is_none() {
            return Err(MmlsError::UniverseNotReady(*universe));
        }
        if u.commit_due_before_send(&self.config) {
            self.step(|p| p.commit_own(*universe, false).map(|_| ()))?;
        }
        let seq = self.step(|p| {
            let seq = p.texts_mut(universe)?.take_text_seq();
            let payload = Payload::Text {
                seq,
                body: ByteBuf::from(body.to_vec()),
            };
            p.send_payload(*universe, &payload)?;
            p.remember_sent(universe, seq, body);
            Ok(seq)
        })?;
        Ok((seq, self.take_outputs()))
    }

    /// UPDATE: an own MMLS update (commit with a fresh path), carrying any
    /// pending imports.
    pub fn update(&mut self, universe: &Id32) -> Result<Vec<Output>, MmlsError> {
        let u = self.uni(universe)?;
        if u.own_group.is_none() {
            return Err(MmlsError::UniverseNotReady(*universe));
        }
        self.step(|p| p.mmls_update(*universe))?;
        Ok(self.take_outputs())
    }

    /// The universe, if it is defined and we are one of its admins (the
    /// check every admin command starts with).
    pub(super) fn admin_universe(&self, universe: &Id32) -> Result<&UniverseState, MmlsError> {
        let u = self.uni(universe)?;
        let def = u
            .def
            .as_ref()
            .ok_or(MmlsError::UniverseNotReady(*universe))?;
        if !def.is_admin(&self.me) {
            return Err(MmlsError::NotAdmin);
        }
        Ok(u)
    }

    /// Admin: add a member to the universe. Every owner mirrors it.
    pub fn add_member(
        &mut self,
        universe: &Id32,
        member: &MemberId,
    ) -> Result<Vec<Output>, MmlsError> {
        let u = self.admin_universe(universe)?;
        if u.roster.contains(member) {
            return Err(MmlsError::AlreadyMember(member.to_string()));
        }
        let own = u.own_group.ok_or(MmlsError::UniverseNotReady(*universe))?;
        let suite = suite_of(self.group(&own)?);
        if !self.has_usable_kp(member, suite) {
            let m = member.clone();
            self.step(|p| {
                p.request_kp(&m);
                Ok(())
            })?;
            return Err(MmlsError::MissingKeyPackage(member.to_string()));
        }
        // A federated universe: the newcomer's certificate, now.
        let kp = self.usable_kp(member, suite)?;
        self.check_kp_trust(universe, &kp, true)?;
        self.step(|p| {
            let m = member.clone();
            let u = p.uni_mut(universe)?;
            u.roster.insert(m.clone());
            u.pending_adds.insert(m.clone());
            p.commit_own(*universe, false)?;
            p.emit(Event::MemberAdded {
                universe: *universe,
                member: m,
            });
            Ok(())
        })?;
        Ok(self.take_outputs())
    }

    /// Remove a member from the universe (admins; every owner mirrors it).
    pub fn remove_member(
        &mut self,
        universe: &Id32,
        member: &MemberId,
    ) -> Result<Vec<Output>, MmlsError> {
        let u = self.admin_universe(universe)?;
        if !u.roster.contains(member) || *member == self.me {
            return Err(MmlsError::NotAMember(member.to_string()));
        }
        self.step(|p| {
            let m = member.clone();
            let u = p.uni_mut(universe)?;
            u.roster.remove(&m);
            u.pending_removes.insert(m.clone());
            u.pending_adds.remove(&m);
            p.commit_own(*universe, false)?;
            p.emit(Event::MemberRemoved {
                universe: *universe,
                member: m,
            });
            Ok(())
        })?;
        Ok(self.take_outputs())
    }

    /// REJOIN: asks the owners of `groups` (all stale groups if empty) to
    /// re-add us.
    pub fn request_rejoin(&mut self, universe: &Id32) -> Result<Vec<Output>, MmlsError> {
        self.uni(universe)?;
        self.step(|p| p.send_rejoin(*universe, false))?;
        Ok(self.take_outputs())
    }

    /// A node that lost its state (but kept its identity key) asks every
    /// owner of `universe` to re-add it; it then recreates its send group.
    pub fn recover_universe(&mut self, universe: &Id32) -> Result<Vec<Output>, MmlsError> {
        self.step(|p| {
            p.state
                .universes
                .get_or_insert_with(*universe, || UniverseState::new(*universe));
            p.send_rejoin(*universe, true)
        })?;
        Ok(self.take_outputs())
    }
}
