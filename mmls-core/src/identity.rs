//! Node identity: one Ed25519 key that is both the libp2p identity and the
//! MLS signature key.
//!
//! Why one key: the MLS credential then names the PeerId, and anyone can check
//! the binding from public data alone (the PeerId of an Ed25519 key *is* the
//! key, identity-multihashed), with no extra signature to carry or verify. The
//! two protocols sign disjoint, prefixed payloads (MLS labels every signature
//! with "MLS 1.0 ...", libp2p with "noise-libp2p-static-key:" /
//! "libp2p-pubsub:"), so the reuse is domain separated.
//!
//! Ciphersuite 0x0002 signs with ECDSA P-256, not Ed25519. Its key is
//! derived from the identity key (nothing more to store or lose) and the
//! identity key vouches for it: the BasicCredential of a P-256 leaf is the
//! PeerId followed by an Ed25519 signature over a labelled copy of the P-256
//! public key (the *link*). `verify_binding` checks it, so in every suite a
//! leaf is still its PeerId, checked from public data alone.

use crate::error::MmlsError;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier, VerifyingKey};
use openmls::prelude::{BasicCredential, Credential, CredentialWithKey};
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::types::SignatureScheme;
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::Zeroizing;

/// protobuf `PublicKey { Type: Ed25519, Data: <32 bytes> }` prefix, then the
/// identity multihash header (code 0x00, length 36), as libp2p encodes a
/// PeerId for Ed25519 keys.
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/// A member of a universe, named by its libp2p PeerId (base58, `12D3KooW...`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct MemberId(String);

/// As the string, written in place: `serde(into = "String")` cloned it at
/// every serialization, and the engine state (which names every member
/// many times) is serialized at every step.
impl Serialize for MemberId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl MemberId {
    pub fn from_public_key(pk: &[u8; 32]) -> MemberId {
        MemberId(bs58::encode(Self::peer_id_bytes(pk)).into_string())
    }

    pub(crate) fn peer_id_bytes(pk: &[u8; 32]) -> Vec<u8> {
        let mut v = PEER_ID_PREFIX.to_vec();
        v.extend_from_slice(pk);
        v
    }

    /// Parses and validates a member id: it must be the PeerId of an Ed25519
    /// key (the only key type a member can have).
    pub fn parse(s: &str) -> Result<MemberId, MmlsError> {
        let s = s.trim();
        let bytes = bs58::decode(s)
            .into_vec()
            .map_err(|_| MmlsError::InvalidMemberId(s.chars().take(80).collect()))?;
        Self::from_peer_id_bytes(&bytes)
            .ok_or_else(|| MmlsError::InvalidMemberId(s.chars().take(80).collect()))
    }

    /// From the binary PeerId (multihash) form.
    pub fn from_peer_id_bytes(bytes: &[u8]) -> Option<MemberId> {
        if bytes.len() != 38 || bytes[..6] != PEER_ID_PREFIX {
            return None;
        }
        Some(MemberId(bs58::encode(bytes).into_string()))
    }

    /// The binary PeerId (multihash) form.
    pub fn to_peer_id_bytes(&self) -> Vec<u8> {
        // Constructed only from valid ids, so decoding cannot fail.
        bs58::decode(&self.0).into_vec().unwrap_or_default()
    }

    /// The Ed25519 public key this id names.
    pub fn public_key(&self) -> Result<VerifyingKey, MmlsError> {
        let b = self.to_peer_id_bytes();
        let pk: [u8; 32] = b
            .get(6..)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| MmlsError::InvalidMemberId(self.0.clone()))?;
        VerifyingKey::from_bytes(&pk).map_err(|_| MmlsError::InvalidMemberId(self.0.clone()))
    }

    /// Verifies a detached Ed25519 signature by this member.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), MmlsError> {
        let sig = Signature::from_slice(sig).map_err(|_| MmlsError::BadSignature)?;
        self.public_key()?
            .verify(msg, &sig)
            .map_err(|_| MmlsError::BadSignature)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Shortened for tables: the last 6 characters.
    pub fn short(&self) -> &str {
        &self.0[self.0.len().saturating_sub(6)..]
    }
}

impl TryFrom<String> for MemberId {
    type Error = MmlsError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        MemberId::parse(&s)
    }
}
impl From<MemberId> for String {
    fn from(m: MemberId) -> String {
        m.0
    }
}
impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Member({})", self.short())
    }
}

/// The longest DER encoding of a P-256 ECDSA signature.
const P256_DER_MAX: usize = 72;

/// The length of a PeerId in binary form (Ed25519 keys only).
const PEER_ID_LEN: usize = 38;

/// What the identity key signs to vouch for its P-256 key: a label of its
/// own (the key also signs libp2p, Welcome entries and rejoin requests),
/// then the SEC1 uncompressed point.
fn p256_link_message(public: &[u8]) -> Vec<u8> {
    let mut m = b"mmls p256 signature key v1\0".to_vec();
    m.extend_from_slice(public);
    m
}

/// The P-256 signature key of suite 0x0002, with the identity's link.
#[derive(Clone)]
struct P256Key {
    key: p256::ecdsa::SigningKey,
    /// SEC1 uncompressed (65 bytes), as openmls encodes P-256 keys.
    public: Vec<u8>,
    /// The identity key's signature over `p256_link_message(public)`.
    link: Vec<u8>,
}

impl P256Key {
    /// Derived from the Ed25519 seed: the same P-256 key after a restart or
    /// a state loss, and nothing to store. SHA-256 of a label, the seed and
    /// a counter, retried in the (2^-32) case it is not a valid scalar.
    fn derive(identity: &SigningKey) -> P256Key {
        use sha2::{Digest, Sha256};
        let seed = Zeroizing::new(identity.to_bytes());
        let mut counter = 0u32;
        let key = loop {
            let mut h = Sha256::new();
            h.update(b"mmls p256 key from ed25519 seed v1");
            h.update(seed.as_slice());
            h.update(counter.to_be_bytes());
            let bytes = Zeroizing::new(h.finalize());
            if let Ok(k) = p256::ecdsa::SigningKey::from_slice(bytes.as_slice()) {
                break k;
            }
            counter += 1;
        };
        let public = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let link = identity
            .sign(&p256_link_message(&public))
            .to_bytes()
            .to_vec();
        P256Key { key, public, link }
    }
}

/// The node's secret identity, and the certificate chain that names it in
/// federated universes (its leaf certifies this very key).
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
    p256: P256Key,
    x509_chain: Option<Vec<Vec<u8>>>,
}

impl Identity {
    pub fn generate() -> Identity {
        Identity::from_key(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    fn from_key(key: SigningKey) -> Identity {
        Identity {
            p256: P256Key::derive(&key),
            key,
            x509_chain: None,
        }
    }

    /// Deterministic identity from a seed, for simulations and tests.
    pub fn from_seed(seed: [u8; 32]) -> Identity {
        Identity::from_key(SigningKey::from_bytes(&seed))
    }

    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Identity, MmlsError> {
        let b: [u8; 32] = bytes
            .try_into()
            .map_err(|_| MmlsError::InvalidIdentityKey)?;
        Ok(Identity::from_seed(b))
    }

    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn member_id(&self) -> MemberId {
        MemberId::from_public_key(&self.public_key())
    }

    /// Presents `chain` (DER, leaf first) as our credential from now on. The
    /// leaf must certify our key and name us; trust in its issuer is each
    /// universe's decision.
    pub fn set_x509_chain(&mut self, chain: Vec<Vec<u8>>) -> Result<(), MmlsError> {
        let cred = crate::federation::x509_credential(&chain)?;
        crate::federation::inspect(&cred, &self.public_key())?;
        self.x509_chain = Some(chain);
        Ok(())
    }

    /// With a certificate chain (see `set_x509_chain`).
    pub fn with_x509_chain(mut self, chain: Vec<Vec<u8>>) -> Result<Identity, MmlsError> {
        self.set_x509_chain(chain)?;
        Ok(self)
    }

    pub fn x509_chain(&self) -> Option<&[Vec<u8>]> {
        self.x509_chain.as_deref()
    }

    /// Our MLS credential: the X509 chain if we have one (valid in every
    /// universe: one without anchors checks only that it certifies our
    /// key), else a BasicCredential of our PeerId.
    pub fn credential_with_key(&self) -> CredentialWithKey {
        let x509 = self
            .x509_chain
            .as_ref()
            .and_then(|c| crate::federation::x509_credential(c).ok());
        let cred: Credential = x509
            .unwrap_or_else(|| BasicCredential::new(self.member_id().to_peer_id_bytes()).into());
        CredentialWithKey {
            credential: cred,
            signature_key: self.public_key().to_vec().into(),
        }
    }

    /// Our credential and signature key in ciphersuite `suite`: as
    /// `credential_with_key` for the Ed25519 suites; for P-256, a
    /// BasicCredential of our PeerId and the link, with the P-256 key (an
    /// X.509 chain certifies the Ed25519 key only, so it is not used there).
    pub fn credential_for(&self, suite: u16) -> CredentialWithKey {
        if !crate::ciphersuites::signs_with_p256(suite) {
            return self.credential_with_key();
        }
        let mut id = self.member_id().to_peer_id_bytes();
        id.extend_from_slice(&self.p256.link);
        CredentialWithKey {
            credential: BasicCredential::new(id).into(),
            signature_key: self.p256.public.clone().into(),
        }
    }

    /// The MLS signer of ciphersuite `suite`.
    pub fn signer(&self, suite: u16) -> SuiteSigner<'_> {
        SuiteSigner {
            identity: self,
            p256: crate::ciphersuites::signs_with_p256(suite),
        }
    }

    pub fn sign_detached(&self, msg: &[u8]) -> Vec<u8> {
        self.key.sign(msg).to_bytes().to_vec()
    }
}

/// Signs MLS messages of one ciphersuite with the identity key, or with its
/// P-256 key for suite 0x0002.
pub struct SuiteSigner<'a> {
    identity: &'a Identity,
    p256: bool,
}

impl Signer for SuiteSigner<'_> {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        if self.p256 {
            // DER, as openmls verifies ECDSA signatures, and always its
            // longest form (both integers 33 bytes, one signature in four;
            // random nonces, so another try differs): message sizes then
            // do not depend on a signature's value, so they leak nothing
            // and the simulator's byte counts stay those of its seed.
            let mut der = vec![];
            for _ in 0..256 {
                let sig: p256::ecdsa::Signature =
                    p256::ecdsa::signature::RandomizedSigner::sign_with_rng(
                        &self.identity.p256.key,
                        &mut rand::rngs::OsRng,
                        payload,
                    );
                der = sig.to_der().as_bytes().to_vec();
                if der.len() == P256_DER_MAX {
                    break;
                }
            }
            return Ok(der);
        }
        self.identity.sign(payload)
    }
    fn signature_scheme(&self) -> SignatureScheme {
        if self.p256 {
            SignatureScheme::ECDSA_SECP256R1_SHA256
        } else {
            SignatureScheme::ED25519
        }
    }
}

impl Signer for Identity {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.key.sign(payload).to_bytes().to_vec())
    }
    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// Checks that a leaf's credential names the PeerId of its own signature key,
/// and returns that member. This is what stops anyone from claiming another
/// node's PeerId inside MLS. A P-256 signature key (suite 0x0002, a 65-byte
/// SEC1 point) is the member's if the credential's PeerId signed it (the
/// link, see `Identity::credential_for`).
pub fn verify_binding(
    credential: &Credential,
    signature_key: &[u8],
) -> Result<MemberId, MmlsError> {
    if credential.credential_type() == openmls::prelude::CredentialType::X509 {
        return Ok(crate::federation::inspect(credential, signature_key)?.member);
    }
    if credential.credential_type() != openmls::prelude::CredentialType::Basic {
        return Err(MmlsError::BadCredential);
    }
    // A basic credential's content is its identity.
    let id = credential.serialized_content();
    if let Ok(pk) = <[u8; 32]>::try_from(signature_key) {
        if id != MemberId::peer_id_bytes(&pk).as_slice() {
            return Err(MmlsError::BadCredential);
        }
        return Ok(MemberId::from_public_key(&pk));
    }
    if signature_key.len() != 65 || id.len() != PEER_ID_LEN + ed25519_dalek::SIGNATURE_LENGTH {
        return Err(MmlsError::BadCredential);
    }
    let (peer, link) = id.split_at(PEER_ID_LEN);
    let member = MemberId::from_peer_id_bytes(peer).ok_or(MmlsError::BadCredential)?;
    member
        .verify(&p256_link_message(signature_key), link)
        .map_err(|_| MmlsError::BadCredential)?;
    p256::ecdsa::VerifyingKey::from_sec1_bytes(signature_key)
        .map_err(|_| MmlsError::BadCredential)?;
    Ok(member)
}

/// Member ids of the Ed25519 keys met in group trees. Every commit asks
/// for a group's members again, and the id is the base58 text of the key's
/// PeerId: encoding it for each leaf of each commit was 4 % of a simulated
/// node's CPU. The binding itself is still checked on every call (a byte
/// comparison); only the text is remembered.
#[derive(Debug, Default)]
pub(crate) struct KnownIds(std::collections::HashMap<[u8; 32], MemberId>);

impl KnownIds {
    /// Keys remembered at most (then forgotten all at once): far more than
    /// any universe's members, a bound against a flood of new keys.
    const MAX: usize = 1 << 16;

    /// [`verify_binding`], remembering Ed25519 members' ids.
    pub(crate) fn verify(
        &mut self,
        credential: &Credential,
        signature_key: &[u8],
    ) -> Result<MemberId, MmlsError> {
        let basic = credential.credential_type() == openmls::prelude::CredentialType::Basic;
        let Some(pk) = <[u8; 32]>::try_from(signature_key).ok().filter(|_| basic) else {
            return verify_binding(credential, signature_key);
        };
        if let Some(id) = self.0.get(&pk) {
            return if credential.serialized_content() == MemberId::peer_id_bytes(&pk).as_slice() {
                Ok(id.clone())
            } else {
                Err(MmlsError::BadCredential)
            };
        }
        let id = verify_binding(credential, signature_key)?;
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        self.0.insert(pk, id.clone());
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_id_round_trips_and_looks_like_a_peer_id() {
        let id = Identity::from_seed([7; 32]);
        let m = id.member_id();
        assert!(m.as_str().starts_with("12D3KooW"), "{m}");
        assert_eq!(MemberId::parse(m.as_str()).unwrap(), m);
        assert_eq!(m.public_key().unwrap().to_bytes(), id.public_key());
    }

    #[test]
    fn member_id_serializes_as_its_string() {
        let m = Identity::from_seed([3; 32]).member_id();
        let as_id = crate::universe::to_cbor(&m);
        assert_eq!(as_id, crate::universe::to_cbor(&m.to_string()));
        let back: MemberId = crate::universe::from_cbor(&as_id).unwrap();
        assert_eq!(back, m);
        let bad = crate::universe::to_cbor(&"12D3KooWnot-a-peer-id".to_string());
        assert!(crate::universe::from_cbor::<MemberId>(&bad).is_err());
    }

    #[test]
    fn garbage_member_ids_are_rejected() {
        for s in [
            "",
            "hello",
            "12D3KooW",
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
        ] {
            assert!(MemberId::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn remembered_ids_still_check_the_binding_every_time() {
        let a = Identity::from_seed([1; 32]);
        let b = Identity::from_seed([2; 32]);
        let (ca, cb) = (a.credential_with_key(), b.credential_with_key());
        let mut known = KnownIds::default();
        for _ in 0..2 {
            assert_eq!(
                known.verify(&ca.credential, &a.public_key()).unwrap(),
                a.member_id()
            );
        }
        // a's key is remembered; b's credential over it is still refused.
        assert!(known.verify(&cb.credential, &a.public_key()).is_err());
        assert_eq!(
            known.verify(&cb.credential, &b.public_key()).unwrap(),
            b.member_id()
        );
    }

    #[test]
    fn binding_detects_a_foreign_peer_id() {
        let a = Identity::from_seed([1; 32]);
        let b = Identity::from_seed([2; 32]);
        let ca = a.credential_with_key();
        assert_eq!(
            verify_binding(&ca.credential, &a.public_key()).unwrap(),
            a.member_id()
        );
        assert!(verify_binding(&ca.credential, &b.public_key()).is_err());
    }

    #[test]
    fn a_p256_key_is_bound_to_its_peer_id_by_the_link() {
        let a = Identity::from_seed([1; 32]);
        let b = Identity::from_seed([2; 32]);
        let ca = a.credential_for(crate::ciphersuites::P256_AES128GCM);
        let cb = b.credential_for(crate::ciphersuites::P256_AES128GCM);
        assert_eq!(ca.signature_key.as_slice().len(), 65);
        assert_eq!(
            verify_binding(&ca.credential, ca.signature_key.as_slice()).unwrap(),
            a.member_id()
        );
        // The same key after a restart: derived, not random.
        assert_eq!(
            Identity::from_seed([1; 32])
                .credential_for(crate::ciphersuites::P256_AES128GCM)
                .signature_key,
            ca.signature_key
        );
        // A's link does not vouch for B's key, nor B's for A's.
        assert!(verify_binding(&ca.credential, cb.signature_key.as_slice()).is_err());
        assert!(verify_binding(&cb.credential, ca.signature_key.as_slice()).is_err());
        // B claiming A's PeerId with B's own link: refused.
        let mut forged = a.member_id().to_peer_id_bytes();
        forged.extend_from_slice(&b.p256.link);
        let forged: Credential = BasicCredential::new(forged).into();
        assert!(verify_binding(&forged, cb.signature_key.as_slice()).is_err());
        // The Ed25519 suites keep the plain PeerId credential.
        assert_eq!(
            a.credential_for(crate::ciphersuites::X25519_CHACHA20POLY1305),
            a.credential_with_key()
        );
    }

    #[test]
    fn each_suites_signer_verifies_under_its_leaf_key() {
        use openmls_rust_crypto::RustCrypto;
        use openmls_traits::crypto::OpenMlsCrypto;
        let a = Identity::from_seed([5; 32]);
        for suite in crate::ciphersuites::IMPLEMENTED {
            let signer = a.signer(*suite);
            let sig = signer.sign(b"payload").unwrap();
            if *suite == crate::ciphersuites::P256_AES128GCM {
                assert_eq!(sig.len(), P256_DER_MAX, "one length, whatever the nonce");
            }
            let key = a.credential_for(*suite).signature_key;
            RustCrypto::default()
                .verify_signature(signer.signature_scheme(), b"payload", key.as_slice(), &sig)
                .unwrap_or_else(|e| panic!("suite {suite:#06x}: {e:?}"));
        }
    }

    #[test]
    fn detached_signatures_verify_only_for_the_signer() {
        let a = Identity::from_seed([1; 32]);
        let sig = a.sign_detached(b"msg");
        a.member_id().verify(b"msg", &sig).unwrap();
        assert!(a.member_id().verify(b"other", &sig).is_err());
        assert!(Identity::from_seed([2; 32])
            .member_id()
            .verify(b"msg", &sig)
            .is_err());
    }
}
