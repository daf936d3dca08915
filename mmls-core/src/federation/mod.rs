//! Federation: members named by X.509 certificates, and universes that say
//! which certificate authority may vouch for which organisation
//! (draft-ietf-mls-federation, draft-mahy-mls-group-anchors).
//!
//! A coalition has no common root: each organisation (a *domain*, e.g.
//! `alpha.example`) runs its own CA. A universe lists, per domain, the one
//! anchor allowed to assert identities in that domain, and a credential is
//! valid only under the anchor of its *own* domain, so a compromised CA of
//! one organisation cannot impersonate the members of another.
//!
//! The certificate's leaf key is the member's Ed25519 identity key (the
//! PeerId's key), so a certificate adds a name and an issuer to the identity
//! we already check; it never replaces the PeerId binding.
//!
//! Pure functions over bytes and a time given by the caller: the engine stays
//! sans-IO.

mod anchors;
mod x509;

pub use anchors::{
    anchors_from_extensions, anchors_to_extension, group_context_extensions, DomainAnchor,
};
pub use x509::{
    chain_from_credential, chain_from_pem, ed25519_seed_from_pem, inspect, validate,
    x509_credential, CertInfo,
};

/// The GroupContext extension type carrying `PerDomainTrustAnchors`.
///
/// The group-anchors draft asks for 0x000A, but that code point is
/// `last_resort_key_package` in openmls (and in the MLS extensions draft),
/// and openmls decodes every extension of type 10 as an empty LastResort
/// extension: the anchors could never be read back, and our KeyPackages use
/// LastResort. We use the same TLS structure under a private-use type
/// (RFC 9420 section 17.3: 0xF000-0xFFFF).
pub const GROUP_TRUST_ANCHORS: u16 = 0xF00A;

/// Why a certificate or an anchor list was refused. Each names what a user
/// needs to fix it (which domain, which date).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FederationError {
    #[error("this universe requires X.509 credentials; {0} presented a basic credential")]
    X509Required(String),
    #[error("malformed certificate: {0}")]
    MalformedCertificate(String),
    #[error("empty certificate chain")]
    EmptyChain,
    #[error("the certificate does not certify the member's Ed25519 identity key")]
    KeyMismatch,
    #[error("the certificate names no member (no rfc822Name or URI subject alternative name)")]
    NoIdentity,
    #[error("no trust anchor for domain {0} in this universe")]
    UnknownDomain(String),
    #[error(
        "credential of domain {member_domain} is issued by the anchor of domain {issuer_domain}"
    )]
    CrossDomain {
        member_domain: String,
        issuer_domain: String,
    },
    #[error("certificate chain of domain {0} does not reach that domain's anchor")]
    UntrustedChain(String),
    #[error("certificate {subject} expired at {not_after} (unix seconds)")]
    Expired { subject: String, not_after: i64 },
    #[error("certificate {subject} is not valid before {not_before} (unix seconds)")]
    NotYetValid { subject: String, not_before: i64 },
    #[error("malformed trust anchors: {0}")]
    MalformedAnchors(String),
    #[error("domain {0} is listed twice")]
    DuplicateDomain(String),
    #[error("{owner} is not an admin and changed the trust anchors of its send group")]
    AnchorChangeByNonAdmin { owner: String },
    #[error("send group {0} carries trust anchors that differ from the universe's")]
    AnchorsMismatch(String),
    #[error("malformed key: {0}")]
    MalformedKey(String),
}
