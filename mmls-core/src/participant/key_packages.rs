//! KeyPackages: our own last-resort one, the ones peers announce on the
//! lobby, and requests for missing ones (single-use ones: `kp_pool`).

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
        if !kp.last_resort() {
            // Single-use: only for the owner it was handed to.
            return self.on_single_use_kp(env, &kp, who);
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
