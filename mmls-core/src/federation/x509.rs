//! X.509 credentials: the chain's wire form, what its leaf says (which key,
//! which member, which domain, until when) and whether it chains to the
//! anchor of its own domain. Parsing and signature checks are x509-parser's
//! (signatures through ring: Ed25519, ECDSA P-256/P-384, RSA).

use super::{DomainAnchor, FederationError};
use crate::identity::MemberId;
use openmls::prelude::{Credential, CredentialType};
use tls_codec::{Deserialize as _, Serialize as _, VLBytes};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::OID_SIG_ED25519;

/// What a valid leaf certificate tells about a member.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertInfo {
    pub member: MemberId,
    /// The subject alternative name that names the member
    /// (`alice@alpha.example`, or a URI).
    pub name: String,
    /// The domain that name belongs to: the one whose anchor must vouch.
    pub domain: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// The MLS X509 credential for a chain (leaf first, DER):
/// `Certificate chain<V>` with `struct { opaque cert_data<V>; } Certificate`.
pub fn x509_credential(chain: &[Vec<u8>]) -> Result<Credential, FederationError> {
    let wire: Vec<VLBytes> = chain.iter().map(|c| c.clone().into()).collect();
    let bytes = wire
        .tls_serialize_detached()
        .map_err(|e| FederationError::MalformedCertificate(format!("{e:?}")))?;
    Ok(Credential::new(CredentialType::X509, bytes))
}

/// The DER certificates of an X509 credential, leaf first.
pub fn chain_from_credential(credential: &Credential) -> Result<Vec<Vec<u8>>, FederationError> {
    if credential.credential_type() != CredentialType::X509 {
        return Err(FederationError::MalformedCertificate(
            "not an X509 credential".into(),
        ));
    }
    let wire = Vec::<VLBytes>::tls_deserialize_exact(credential.serialized_content())
        .map_err(|e| FederationError::MalformedCertificate(format!("{e:?}")))?;
    if wire.is_empty() {
        return Err(FederationError::EmptyChain);
    }
    Ok(wire.into_iter().map(|c| c.as_slice().to_vec()).collect())
}

/// The certificates of a PEM file, in file order (leaf first, as TLS and
/// openssl write chains).
pub fn chain_from_pem(pem: &[u8]) -> Result<Vec<Vec<u8>>, FederationError> {
    let mut out = vec![];
    for p in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let p = p.map_err(|e| FederationError::MalformedCertificate(format!("PEM: {e}")))?;
        if p.label != "CERTIFICATE" {
            continue;
        }
        parse(&p.contents)?;
        out.push(p.contents);
    }
    if out.is_empty() {
        return Err(FederationError::EmptyChain);
    }
    Ok(out)
}

/// The start of an Ed25519 private key in PKCS#8 (RFC 8410): SEQUENCE,
/// version (0: v1 as openssl writes it; 1: v2 with the public key, as ring
/// writes it), the Ed25519 algorithm, then the 32-byte seed.
const ED25519_PKCS8_AFTER_LEN: [u8; 14] = [
    0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The Ed25519 seed of a `PRIVATE KEY` PEM (PKCS#8 v1 or v2): the key
/// becomes the node's identity, so the certificate's key and the PeerId are
/// one. A v2 key's public key must be the seed's.
pub fn ed25519_seed_from_pem(pem: &[u8]) -> Result<[u8; 32], FederationError> {
    let bad = || {
        FederationError::MalformedKey(
            "not an Ed25519 PKCS#8 key (make one with `openssl genpkey -algorithm ed25519`)".into(),
        )
    };
    for p in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let p = p.map_err(|e| FederationError::MalformedKey(format!("PEM: {e}")))?;
        if p.label != "PRIVATE KEY" {
            continue;
        }
        let c = &p.contents;
        if c.len() < 48 || c[0] != 0x30 || usize::from(c[1]) + 2 != c.len() {
            return Err(bad());
        }
        let mut head = ED25519_PKCS8_AFTER_LEN;
        head[2] = c[4];
        if c[2..16] != head || c[4] > 1 {
            return Err(bad());
        }
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&c[16..48]);
        let rest = &c[48..];
        let public = ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes();
        let ok = match (c[4], rest.len()) {
            (0, 0) => true,
            // [1] IMPLICIT BIT STRING of the 32-byte public key (RFC 8410;
            // ring writes it), or the same wrapped explicitly.
            (1, 35) => rest[..3] == [0x81, 0x21, 0x00] && rest[3..] == public,
            (1, 37) => rest[..5] == [0xa1, 0x23, 0x03, 0x21, 0x00] && rest[5..] == public,
            _ => false,
        };
        if !ok {
            return Err(bad());
        }
        return Ok(seed);
    }
    Err(FederationError::MalformedKey(
        "no PRIVATE KEY block in the PEM".into(),
    ))
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, FederationError> {
    let (rest, c) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| FederationError::MalformedCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FederationError::MalformedCertificate(
            "trailing bytes after the certificate".into(),
        ));
    }
    Ok(c)
}

/// The member a SAN names and its domain: `alice@alpha.example` (rfc822Name)
/// or a URI whose host is the domain (`mmls://alice@alpha.example`,
/// `https://alpha.example/alice`).
fn name_and_domain(cert: &X509Certificate<'_>) -> Option<(String, String)> {
    let san = cert.subject_alternative_name().ok().flatten()?;
    for n in &san.value.general_names {
        match n {
            GeneralName::RFC822Name(s) => {
                if let Some((local, d)) = s.rsplit_once('@') {
                    let d = DomainAnchor::normalise_domain(d);
                    if !local.is_empty() && !d.is_empty() {
                        return Some((s.to_string(), d));
                    }
                }
            }
            GeneralName::URI(s) => {
                let rest = s.split_once("://").map(|(_, r)| r).unwrap_or("");
                let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
                let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                let host = host.split(':').next().unwrap_or("");
                let d = DomainAnchor::normalise_domain(host);
                if !d.is_empty() {
                    return Some((s.to_string(), d));
                }
            }
            _ => {}
        }
    }
    None
}

fn subject_of(cert: &X509Certificate<'_>) -> String {
    let mut s = cert.subject().to_string();
    crate::error::truncate_at_char(&mut s, 120);
    s
}

/// Reads a leaf: it must certify `signature_key` (the member's Ed25519 key,
/// hence its PeerId) and name the member. No trust decision: that needs the
/// universe's anchors (`validate`).
pub fn inspect(credential: &Credential, signature_key: &[u8]) -> Result<CertInfo, FederationError> {
    let chain = chain_from_credential(credential)?;
    inspect_leaf(&chain[0], signature_key)
}

fn inspect_leaf(der: &[u8], signature_key: &[u8]) -> Result<CertInfo, FederationError> {
    let leaf = parse(der)?;
    let spki = leaf.public_key();
    if spki.algorithm.algorithm != OID_SIG_ED25519
        || spki.subject_public_key.data.as_ref() != signature_key
    {
        return Err(FederationError::KeyMismatch);
    }
    let pk: [u8; 32] = signature_key
        .try_into()
        .map_err(|_| FederationError::KeyMismatch)?;
    let (name, domain) = name_and_domain(&leaf).ok_or(FederationError::NoIdentity)?;
    Ok(CertInfo {
        member: MemberId::from_public_key(&pk),
        name,
        domain,
        not_before: leaf.validity().not_before.timestamp(),
        not_after: leaf.validity().not_after.timestamp(),
    })
}

fn check_time(cert: &X509Certificate<'_>, now: i64) -> Result<(), FederationError> {
    let v = cert.validity();
    if now < v.not_before.timestamp() {
        return Err(FederationError::NotYetValid {
            subject: subject_of(cert),
            not_before: v.not_before.timestamp(),
        });
    }
    if now > v.not_after.timestamp() {
        return Err(FederationError::Expired {
            subject: subject_of(cert),
            not_after: v.not_after.timestamp(),
        });
    }
    Ok(())
}

/// Whether `chain` (leaf first) leads to `anchor`: each certificate is
/// signed by the next one, which must be a CA, until one is signed by the
/// anchor (or is the anchor itself).
fn reaches(chain: &[X509Certificate<'_>], anchor_der: &[u8]) -> bool {
    let Ok(anchor) = parse(anchor_der) else {
        return false;
    };
    for (i, c) in chain.iter().enumerate() {
        if c.as_raw() == anchor_der {
            return i > 0;
        }
        if c.issuer().as_raw() == anchor.subject().as_raw()
            && c.verify_signature(Some(anchor.public_key())).is_ok()
        {
            return true;
        }
        let Some(next) = chain.get(i + 1) else {
            return false;
        };
        if c.issuer().as_raw() != next.subject().as_raw()
            || !next.is_ca()
            || c.verify_signature(Some(next.public_key())).is_err()
        {
            return false;
        }
    }
    false
}

/// Validates an X509 credential under a universe's anchors: it certifies
/// `signature_key`, names a member of a listed domain, and chains to the
/// anchor of *that* domain. A chain that instead reaches another domain's
/// anchor is `CrossDomain`, naming both. With `now` (unix seconds), every
/// certificate in the chain must be valid then; without, lifetimes are the
/// caller's business (members already in a universe are flagged, not
/// dropped, when they expire).
pub fn validate(
    credential: &Credential,
    signature_key: &[u8],
    anchors: &[DomainAnchor],
    now: Option<i64>,
) -> Result<CertInfo, FederationError> {
    let ders = chain_from_credential(credential)?;
    let info = inspect_leaf(&ders[0], signature_key)?;
    let chain = ders
        .iter()
        .map(|d| parse(d))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(now) = now {
        for c in &chain {
            check_time(c, now)?;
        }
    }
    let own = anchors
        .iter()
        .find(|a| a.domain == info.domain)
        .ok_or_else(|| FederationError::UnknownDomain(info.domain.clone()))?;
    if reaches(&chain, &own.cert) {
        if let Some(now) = now {
            if let Ok(a) = parse(&own.cert) {
                check_time(&a, now)?;
            }
        }
        return Ok(info);
    }
    if let Some(other) = anchors
        .iter()
        .find(|a| a.domain != info.domain && reaches(&chain, &a.cert))
    {
        return Err(FederationError::CrossDomain {
            member_domain: info.domain,
            issuer_domain: other.domain.clone(),
        });
    }
    Err(FederationError::UntrustedChain(info.domain))
}
