//! KeyPackages: our own last-resort ones (one per suite), the ones peers
//! announce on the lobby, and requests for missing ones (single-use ones: `kp_pool`).

use super::*;

/// KeyPackages one announcement may carry: one per suite, with room for
/// suites newer nodes add.
const MAX_ANNOUNCED_KPS: usize = 8;

impl Participant {
    /// A new last-resort KeyPackage in `suite`, announced from now on.
    pub(super) fn refresh_key_package(&mut self, suite: u16) -> Result<(), MmlsError> {
        let bundle = KeyPackage::builder()
            .leaf_node_capabilities(capabilities())
            .mark_as_last_resort()
            .build(
                crate::ciphersuites::suite(suite)?,
                &self.provider,
                &self.identity.signer(suite),
                self.identity.credential_for(suite),
            )
            .map_err(MmlsError::mls)?;
        let kp = bundle.key_package();
        let r = kp
            .hash_ref(self.provider.crypto())
            .map_err(MmlsError::mls)?;
        let r = ByteBuf::from(r.as_slice().to_vec());
        self.state.my_kp_refs.insert(r.clone(), ());
        self.state.last_resort_refs.insert(r, ());
        self.state.my_kps.insert(suite, ByteBuf::from(tls(kp)?));
        Ok(())
    }

    /// New last-resort KeyPackages in every suite (a renewed credential).
    pub(super) fn refresh_key_packages(&mut self) -> Result<(), MmlsError> {
        for suite in crate::ciphersuites::IMPLEMENTED {
            self.refresh_key_package(*suite)?;
        }
        Ok(())
    }

    /// `m`'s KeyPackage in `suite`, validated.
    pub(super) fn key_package_of(&self, m: &MemberId, suite: u16) -> Result<KeyPackage, MmlsError> {
        let b = self
            .state
            .known_kps
            .get(m)
            .and_then(|k| k.0.get(&suite))
            .ok_or_else(|| MmlsError::MissingKeyPackage(m.to_string()))?;
        self.validate_kp(b, Some(m))
    }

    /// Members of `uid` (but us) whose KeyPackage in `suite` we lack.
    pub(super) fn lacking_key_packages<'a>(
        &self,
        members: impl IntoIterator<Item = &'a MemberId>,
        suite: u16,
    ) -> Vec<MemberId> {
        members
            .into_iter()
            .filter(|m| **m != self.me && !self.has_usable_kp(m, suite))
            .cloned()
            .collect()
    }

    /// A KeyPackage, checked in itself: it parses, its signatures hold, its
    /// suite is one we implement and its credential is bound to its key
    /// (and is `expect`'s, if given). Whether a universe accepts its suite
    /// is `check_kp_suite`'s question.
    pub(super) fn validate_kp(
        &self,
        bytes: &[u8],
        expect: Option<&MemberId>,
    ) -> Result<KeyPackage, MmlsError> {
        let (kp, who) = self.validate_kp_of(bytes)?;
        if expect.is_some_and(|e| *e != who) {
            return Err(MmlsError::BadCredential);
        }
        Ok(kp)
    }

    /// As `validate_kp`, returning whose it is.
    fn validate_kp_of(&self, bytes: &[u8]) -> Result<(KeyPackage, MemberId), MmlsError> {
        let kpi = KeyPackageIn::tls_deserialize_exact(bytes)
            .map_err(|e| MmlsError::MalformedMls(format!("{e:?}")))?;
        let suite = crate::ciphersuites::of_key_package(bytes).unwrap_or(0);
        if !crate::ciphersuites::implemented(suite) {
            return Err(MmlsError::UnsupportedCiphersuite(suite));
        }
        let kp = kpi
            .validate(self.provider.crypto(), ProtocolVersion::Mls10)
            .map_err(MmlsError::mls)?;
        let who = verify_binding(
            kp.leaf_node().credential(),
            kp.leaf_node().signature_key().as_slice(),
        )?;
        Ok((kp, who))
    }

    /// A KeyPackage offered for send group `group` of universe `uid`: its
    /// suite must be one the universe accepts (else `CiphersuiteRefused`:
    /// no downgrade) and the group's own.
    pub(super) fn check_kp_suite(
        &self,
        uid: &Id32,
        group_suite: u16,
        kp: &KeyPackage,
    ) -> Result<(), MmlsError> {
        let suite = u16::from(kp.ciphersuite());
        self.check_suite_accepted(uid, suite)?;
        if suite != group_suite {
            return Err(MmlsError::CiphersuiteMismatch {
                expected: group_suite,
                got: suite,
            });
        }
        Ok(())
    }

    /// Refuses a suite the universe does not accept (once its definition is
    /// known).
    pub(super) fn check_suite_accepted(&self, uid: &Id32, suite: u16) -> Result<(), MmlsError> {
        if !crate::ciphersuites::implemented(suite) {
            return Err(MmlsError::UnsupportedCiphersuite(suite));
        }
        let def = self.state.universes.get(uid).and_then(|u| u.def.as_ref());
        if def.is_some_and(|d| !d.ciphersuites.contains(&suite)) {
            return Err(MmlsError::CiphersuiteRefused(suite));
        }
        Ok(())
    }

    pub(super) fn request_kp(&mut self, m: &MemberId) {
        let now = self.now;
        let last = self.state.kp_requested.get(m).copied();
        if last.is_some_and(|t| now < t.saturating_add(self.config.kp_retry_ms)) {
            return;
        }
        self.state.kp_requested.insert(m.clone(), now);
        let e = crate::sync::key_packages::key_package_request(&self.me, m.as_str(), now);
        self.publish_lobby(e);
    }

    /// A member's announcement: its KeyPackage in the body and those of its
    /// other suites attached, all of one member. Suites we do not
    /// implement are skipped (newer nodes may offer more); anything else
    /// wrong refuses the whole announcement.
    fn announced_kps(&self, env: &Envelope) -> Result<(MemberId, MemberKps), MmlsError> {
        if env.proposals.len() + 1 > MAX_ANNOUNCED_KPS {
            return Err(MmlsError::Unexpected(format!(
                "{} KeyPackages in one announcement (at most {MAX_ANNOUNCED_KPS})",
                env.proposals.len() + 1
            )));
        }
        let mut who: Option<MemberId> = None;
        let mut kps = BTreeMap::new();
        for bytes in std::iter::once(&env.body).chain(&env.proposals) {
            let suite = crate::ciphersuites::of_key_package(bytes)
                .ok_or_else(|| MmlsError::MalformedMls("KeyPackage too short".into()))?;
            if !crate::ciphersuites::implemented(suite) {
                continue;
            }
            let (kp, member) = self.validate_kp_of(bytes)?;
            if who.get_or_insert_with(|| member.clone()) != &member {
                return Err(MmlsError::BadCredential);
            }
            if !kp.last_resort() {
                // Single-use and announced to everyone: no owner uses it.
                continue;
            }
            if kps.insert(suite, bytes.clone()).is_some() {
                return Err(MmlsError::Unexpected(format!(
                    "two KeyPackages in ciphersuite {suite:#06x} in one announcement"
                )));
            }
        }
        let who = who.ok_or(MmlsError::UnsupportedCiphersuite(
            crate::ciphersuites::of_key_package(&env.body).unwrap_or(0),
        ))?;
        Ok((who, MemberKps(kps)))
    }

    pub(super) fn on_key_package(&mut self, env: &Envelope) -> Result<(), MmlsError> {
        if env.to.is_some() {
            // Handed to one owner: a single-use KeyPackage, for that owner
            // only (`kp_pool`).
            let (kp, who) = self.validate_kp_of(&env.body)?;
            if who == self.me {
                return Ok(());
            }
            return self.on_single_use_kp(env, &kp, who);
        }
        let (who, kps) = self.announced_kps(env)?;
        if who == self.me || kps.0.is_empty() {
            // Ours, or single-use KeyPackages announced to everyone (as
            // mls-rs does): no owner may use those.
            return Ok(());
        }
        if self.state.known_kps.get(&who) == Some(&kps) {
            // A re-announcement (an owner answering a KeyPackage request
            // with the KeyPackage everyone else holds): valid, nothing to
            // do, and it must travel on. As a Duplicate the first relay that
            // knows it would drop it, and a member back from state loss more
            // than one hop away could never build its send group (found by
            // the simulator's churn scenario). Gossip's duplicate cache
            // stops loops. It is alive: the last to be evicted.
            self.lobby.kps.touch(&who);
            return Ok(());
        }
        self.state.known_kps.insert(who.clone(), kps);
        self.bound_known_kps(&who);
        self.state.kp_requested.remove(&who);
        // Someone may have been waiting for it.
        self.key_package_arrived(&who)
    }

    pub(super) fn on_kp_request(&mut self, env: &Envelope) -> Result<(), MmlsError> {
        if env.to.as_deref() == Some(self.me.as_str()) {
            if let Output::Publish(p) = self.announcement() {
                self.outputs.push(Output::Publish(p));
            }
            if let Some(requester) = &env.sender {
                self.hand_on_lobby(requester)?;
            }
        }
        Ok(())
    }
}
