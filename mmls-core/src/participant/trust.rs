//! Federation policy: which credentials a federated universe accepts, how
//! an anchor change travels (an admin's GroupContextExtensions commit in its
//! own send group, mirrored by every owner like an add), certificates that
//! expire while their member is in, and renewing our own certificate.
//!
//! The anchors every member checks against are those in the GroupContext
//! of the send group where the credential appears: authenticated by MLS,
//! identical for all its members, and changed only by a commit that readers
//! check came from an admin (or mirrors what an admin set).

use super::*;
use crate::federation::{self, CertInfo, DomainAnchor, FederationError};

impl Participant {
    /// Certificates are dated in seconds; the engine's time is the driver's
    /// milliseconds (never a clock of its own).
    pub(super) fn now_secs(&self) -> i64 {
        i64::try_from(self.now / 1000).unwrap_or(i64::MAX)
    }

    /// The universe's current anchors (empty: not federated).
    pub(super) fn universe_anchors(&self, uid: &Id32) -> Vec<DomainAnchor> {
        self.state
            .universes
            .get(uid)
            .and_then(|u| u.def.as_ref())
            .map(|d| d.anchors.clone())
            .unwrap_or_default()
    }

    /// The anchors a send group carries in its GroupContext.
    pub(super) fn group_anchors(group: &MlsGroup) -> Result<Vec<DomainAnchor>, MmlsError> {
        Ok(federation::anchors_from_extensions(group.extensions())?)
    }

    /// Whether a credential may be in a group with these anchors. Without
    /// anchors, any credential bound to its key is fine (checked by
    /// `verify_binding`). With anchors: an X.509 chain reaching the anchor
    /// of its own domain; `fresh` (it is joining, or is new in its leaf)
    /// also requires every certificate to be valid now.
    pub(super) fn check_credential(
        &self,
        anchors: &[DomainAnchor],
        credential: &Credential,
        signature_key: &[u8],
        fresh: bool,
    ) -> Result<Option<CertInfo>, MmlsError> {
        let who = verify_binding(credential, signature_key)?;
        if anchors.is_empty() {
            return Ok(None);
        }
        if credential.credential_type() != CredentialType::X509 {
            return Err(FederationError::X509Required(who.to_string()).into());
        }
        let now = fresh.then(|| self.now_secs());
        Ok(Some(federation::validate(
            credential,
            signature_key,
            anchors,
            now,
        )?))
    }

    /// A KeyPackage's leaf, checked for universe `uid` (see
    /// `check_credential`).
    pub(super) fn check_kp_trust(
        &self,
        uid: &Id32,
        kp: &KeyPackage,
        fresh: bool,
    ) -> Result<Option<CertInfo>, MmlsError> {
        let leaf = kp.leaf_node();
        self.check_credential(
            &self.universe_anchors(uid),
            leaf.credential(),
            leaf.signature_key().as_slice(),
            fresh,
        )
    }

    /// Remembers the certificate a member presented, for status and the
    /// expiry flag. Touches the universe's row only when it changed.
    pub(super) fn record_cert(&mut self, uid: &Id32, info: CertInfo) -> Result<(), MmlsError> {
        let new = MemberCert {
            member: info.member.clone(),
            name: info.name,
            domain: info.domain,
            not_after: info.not_after,
            expired: false,
        };
        let same = self.uni(uid)?.certs.get(&info.member).is_some_and(|c| {
            c.name == new.name && c.domain == new.domain && c.not_after == new.not_after
        });
        if !same {
            self.uni_mut(uid)?.certs.insert(info.member, new);
        }
        Ok(())
    }

    /// Flags (once) members whose certificate expired while they are in.
    pub(super) fn flag_expired(&mut self, uid: Id32) -> Result<(), MmlsError> {
        let now = self.now_secs();
        let expired: Vec<(MemberId, i64)> = self
            .uni(&uid)?
            .certs
            .values()
            .filter(|c| !c.expired && c.not_after < now)
            .map(|c| (c.member.clone(), c.not_after))
            .collect();
        for (member, not_after) in expired {
            if let Some(c) = self.uni_mut(&uid)?.certs.get_mut(&member) {
                c.expired = true;
            }
            self.emit(Event::CertificateExpired {
                universe: uid,
                member,
                not_after,
            });
        }
        Ok(())
    }

    /// A GroupContextExtensions proposal in a peer's commit: only an admin
    /// may change the anchors; any other owner may only mirror, into its
    /// own send group, the anchors an admin already set (its commit depends
    /// on the admin's epoch, so we processed that first). Returns the new
    /// anchors if the commit changes them.
    pub(super) fn check_anchor_change(
        &self,
        uid: &Id32,
        commit: &StagedCommit,
        owner: &MemberId,
        owner_is_admin: bool,
    ) -> Result<Option<Vec<DomainAnchor>>, MmlsError> {
        let Some(ext) = commit.queued_proposals().find_map(|q| match q.proposal() {
            Proposal::GroupContextExtensions(e) => Some(e.extensions().clone()),
            _ => None,
        }) else {
            return Ok(None);
        };
        let new = federation::anchors_from_extensions(&ext)?;
        if !owner_is_admin && new != self.universe_anchors(uid) {
            return Err(FederationError::AnchorChangeByNonAdmin {
                owner: owner.to_string(),
            }
            .into());
        }
        Ok(Some(new))
    }

    /// After an admin's anchor change: the universe's anchors, and our own
    /// send group's mirror of them with our next commit.
    pub(super) fn apply_anchor_change(
        &mut self,
        uid: Id32,
        by: &MemberId,
        anchors: Vec<DomainAnchor>,
    ) -> Result<(), MmlsError> {
        let u = self.uni(&uid)?;
        if u.def.as_ref().is_none_or(|d| d.anchors == anchors) {
            return Ok(());
        }
        let now = self.now;
        let u = self.uni_mut(&uid)?;
        if let Some(d) = u.def.as_mut() {
            d.anchors = anchors;
        }
        if u.own_group.is_some() {
            u.anchors_pending = true;
            u.pending_since.get_or_insert(now);
        }
        self.emit(Event::AnchorsChanged {
            universe: uid,
            by: by.clone(),
        });
        Ok(())
    }

    /// Admin: adds domain `domain` with anchor `cert_der` (DER), or
    /// replaces its anchor. Our send group carries it at once; every other
    /// owner mirrors it into its own.
    pub fn set_anchor(
        &mut self,
        universe: &Id32,
        domain: &str,
        cert_der: &[u8],
    ) -> Result<Vec<Output>, MmlsError> {
        let u = self.admin_universe(universe)?;
        if u.own_group.is_none() {
            return Err(MmlsError::UniverseNotReady(*universe));
        }
        let domain = DomainAnchor::normalise_domain(domain);
        let new = DomainAnchor {
            domain: domain.clone(),
            cert: cert_der.to_vec(),
        };
        let mut anchors = u
            .def
            .as_ref()
            .map(|d| d.anchors.clone())
            .unwrap_or_default();
        match anchors.iter_mut().find(|a| a.domain == domain) {
            Some(a) => *a = new,
            None => anchors.push(new),
        }
        DomainAnchor::check_list(&anchors)?;
        let me = self.me.clone();
        self.step(|p| {
            let u = p.uni_mut(universe)?;
            if let Some(d) = u.def.as_mut() {
                d.anchors = anchors;
            }
            u.anchors_pending = true;
            p.commit_own(*universe, false)?;
            p.emit(Event::AnchorsChanged {
                universe: *universe,
                by: me,
            });
            Ok(())
        })?;
        Ok(self.take_outputs())
    }

    /// Renews our certificate: from now on we present `chain` (leaf first,
    /// DER; its leaf must certify our key), with a fresh KeyPackage and, in
    /// every universe, an MMLS update whose leaves carry it. Refused, with
    /// nothing changed, if any federated universe we are in would not
    /// accept it now.
    pub fn renew_certificate(&mut self, chain: Vec<Vec<u8>>) -> Result<Vec<Output>, MmlsError> {
        let renewed = self.identity.clone().with_x509_chain(chain)?;
        let cwk = renewed.credential_with_key();
        let ids: Vec<Id32> = self
            .state
            .universes
            .iter()
            .filter(|(_, u)| !u.removed && u.own_group.is_some())
            .map(|(id, _)| *id)
            .collect();
        for uid in &ids {
            self.check_credential(
                &self.universe_anchors(uid),
                &cwk.credential,
                cwk.signature_key.as_slice(),
                true,
            )?;
        }
        let old = std::mem::replace(&mut self.identity, renewed);
        let r = self.step(|p| {
            p.refresh_key_packages()?;
            p.renew_pool()?;
            for uid in &ids {
                p.mmls_update(*uid)?;
            }
            Ok(())
        });
        if let Err(e) = r {
            self.identity = old;
            return Err(e);
        }
        Ok(self.take_outputs())
    }

    /// Leaf parameters for our next path or Update in `group`: our current
    /// credential (in the group's suite) if the leaf still carries an older
    /// one (a renewal).
    pub(super) fn leaf_params(identity: &Identity, group: &MlsGroup) -> LeafNodeParameters {
        let cwk = identity.credential_for(suite_of(group));
        match group.own_leaf_node() {
            Some(l) if *l.credential() != cwk.credential => LeafNodeParameters::builder()
                .with_credential_with_key(cwk)
                .build(),
            _ => LeafNodeParameters::default(),
        }
    }

    /// Anchors and certificates for `universe_status`.
    pub(super) fn federation_status(u: &UniverseState) -> (Vec<AnchorStatus>, Vec<MemberCert>) {
        let anchors = u
            .def
            .as_ref()
            .map(|d| d.anchors.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|a| {
                let (subject, not_after) = x509_parser::parse_x509_certificate(&a.cert)
                    .map(|(_, c)| (c.subject().to_string(), c.validity().not_after.timestamp()))
                    .unwrap_or_default();
                AnchorStatus {
                    domain: a.domain.clone(),
                    subject,
                    not_after,
                    fingerprint: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&a.cert)),
                }
            })
            .collect();
        (anchors, u.certs.values().cloned().collect())
    }
}
