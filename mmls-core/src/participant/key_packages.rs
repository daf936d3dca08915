//! KeyPackages: our own last-resort and single-use ones, the ones peers
//! announce on the lobby, and requests for missing ones.

use super::*;

impl Participant {
    pub(super) fn refresh_key_package(&mut self) -> Result<(), MmlsError> {
        let bundle = KeyPackage::builder()
            .leaf_node_capabilities(capabilities())
            .mark_as_last_resort()
            .build(
                CS,
                &self.provider,
                &self.identity,
                self.identity.credential_with_key(),
            )
            .map_err(MmlsError::mls)?;
        let kp = bundle.key_package();
        let r = kp
            .hash_ref(self.provider.crypto())
            .map_err(MmlsError::mls)?;
        let r = ByteBuf::from(r.as_slice().to_vec());
        self.state.my_kp_refs.insert(r.clone(), ());
        self.state.last_resort_refs.insert(r, ());
        *self.state.my_kp.get_mut() = Some(ByteBuf::from(tls(kp)?));
        Ok(())
    }

    /// A fresh single-use KeyPackage (for rejoin requests).
    pub(super) fn fresh_key_package(&mut self) -> Result<Vec<u8>, MmlsError> {
        let bundle = KeyPackage::builder()
            .leaf_node_capabilities(capabilities())
            .build(
                CS,
                &self.provider,
                &self.identity,
                self.identity.credential_with_key(),
            )
            .map_err(MmlsError::mls)?;
        let kp = bundle.key_package();
        let r = kp
            .hash_ref(self.provider.crypto())
            .map_err(MmlsError::mls)?;
        self.state
            .my_kp_refs
            .insert(ByteBuf::from(r.as_slice().to_vec()), ());
        tls(kp)
    }

    pub(super) fn key_package_of(&self, m: &MemberId) -> Result<KeyPackage, MmlsError> {
        let b = self
            .state
            .known_kps
            .get(m)
            .ok_or_else(|| MmlsError::MissingKeyPackage(m.to_string()))?;
        self.validate_kp(b, Some(m))
    }

    pub(super) fn validate_kp(
        &self,
        bytes: &[u8],
        expect: Option<&MemberId>,
    ) -> Result<KeyPackage, MmlsError> {
        let kpi = KeyPackageIn::tls_deserialize_exact(bytes)
            .map_err(|e| MmlsError::MalformedMls(format!("{e:?}")))?;
        let kp = kpi
            .validate(self.provider.crypto(), ProtocolVersion::Mls10)
            .map_err(MmlsError::mls)?;
        if kp.ciphersuite() != CS {
            return Err(MmlsError::CiphersuiteRefused(u16::from(kp.ciphersuite())));
        }
        let who = verify_binding(
            kp.leaf_node().credential(),
            kp.leaf_node().signature_key().as_slice(),
        )?;
        if let Some(e) = expect {
            if &who != e {
                return Err(MmlsError::BadCredential);
            }
        }
        Ok(kp)
    }

    pub(super) fn request_kp(&mut self, m: &MemberId) {
        let now = self.now;
        let last = self.state.kp_requested.get(m).copied();
        if last.is_some_and(|t| now < t.saturating_add(self.config.kp_retry_ms)) {
            return;
        }
        self.state.kp_requested.insert(m.clone(), now);
        let e = crate::sync::key_packages::key_package_request(&self.me, m.as_str());
        self.publish_lobby(e);
    }

    pub(super) fn on_key_package(&mut self, env: &Envelope) -> Result<(), MmlsError> {
        let kp = self.validate_kp(&env.body, None)?;
        let who = verify_binding(
            kp.leaf_node().credential(),
            kp.leaf_node().signature_key().as_slice(),
        )?;
        if who == self.me {
            return Ok(());
        }
        if self
            .state
            .known_kps
            .get(&who)
            .is_some_and(|b| b.as_slice() == env.body.as_slice())
        {
            // A re-announcement (an owner answering a KeyPackage request
            // with the KeyPackage everyone else holds): valid, nothing to
            // do, and it must travel on. As a Duplicate the first relay that
            // knows it would drop it, and a member back from state loss more
            // than one hop away could never build its send group (found by
            // the simulator's churn scenario). Gossip's duplicate cache
            // stops loops.
            return Ok(());
        }
        self.state
            .known_kps
            .insert(who.clone(), ByteBuf::from(env.body.to_vec()));
        self.state.kp_requested.remove(&who);
        // Someone may have been waiting for it.
        let ids: Vec<Id32> = self.state.universes.keys().cloned().collect();
        for uid in ids {
            let u = self.uni(&uid)?;
            if u.removed {
                continue;
            }
            if u.own_group.is_none() && u.def.is_some() && u.roster.contains(&self.me) {
                self.try_create_own_group(uid)?;
            } else if u.own_group.is_some() && u.pending_adds.contains(&who) {
                self.commit_own(uid, false)?;
            }
        }
        Ok(())
    }

    pub(super) fn on_kp_request(&mut self, env: &Envelope) -> Result<(), MmlsError> {
        if env.to.as_deref() == Some(self.me.as_str()) {
            if let Output::Publish(p) = self.announcement() {
                self.outputs.push(Output::Publish(p));
            }
        }
        Ok(())
    }
}
