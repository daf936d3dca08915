//! The per-domain trust anchors of a universe, and their wire form in a send
//! group's GroupContext (the group-anchors draft's `PerDomainTrustAnchors`).
//!
//! In the GroupContext the anchors are authenticated by the group's key
//! schedule: every member agrees on them, and only a commit (a
//! GroupContextExtensions proposal) can change them.

use super::{FederationError, GROUP_TRUST_ANCHORS};
use openmls::prelude::{
    CredentialType, Extension, ExtensionType, Extensions, GroupContext,
    RequiredCapabilitiesExtension, UnknownExtension,
};
use serde::{Deserialize, Serialize};
use tls_codec::{Deserialize as _, Serialize as _, TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// One domain and the certificate (a CA or an intermediate, DER) allowed to
/// assert identities in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainAnchor {
    pub domain: String,
    #[serde(with = "serde_bytes")]
    pub cert: Vec<u8>,
}

/// ```text
/// struct {
///     opaque domain_name<V>;
///     CredentialType credential_type;
///     select (Credential.credential_type) {
///         case x509: Certificate chain<V>;
///     };
/// } PerDomainTrustAnchor;
/// ```
/// The select is flattened: only x509 anchors exist, and a decoder that
/// meets another type refuses the whole list rather than guess its length.
#[derive(Debug, TlsSerialize, TlsDeserialize, TlsSize)]
struct PerDomainTrustAnchor {
    domain_name: VLBytes,
    credential_type: u16,
    chain: Vec<VLBytes>,
}

#[derive(TlsSerialize, TlsDeserialize, TlsSize)]
struct PerDomainTrustAnchors {
    domain_anchors: Vec<PerDomainTrustAnchor>,
}

impl DomainAnchor {
    /// A domain name compared as DNS does: case-insensitively, without a
    /// trailing dot.
    pub fn normalise_domain(d: &str) -> String {
        d.trim().trim_end_matches('.').to_ascii_lowercase()
    }

    /// Checks a list before it goes into a universe: each domain once, each
    /// anchor a certificate.
    pub fn check_list(anchors: &[DomainAnchor]) -> Result<(), FederationError> {
        let mut seen = std::collections::BTreeSet::new();
        for a in anchors {
            let d = Self::normalise_domain(&a.domain);
            if d.is_empty() || d != a.domain {
                return Err(FederationError::MalformedAnchors(format!(
                    "domain {:?} is not a lower-case domain name",
                    a.domain
                )));
            }
            if !seen.insert(d.clone()) {
                return Err(FederationError::DuplicateDomain(d));
            }
            x509_parser::parse_x509_certificate(&a.cert).map_err(|e| {
                FederationError::MalformedCertificate(format!("anchor of {d}: {e}"))
            })?;
        }
        Ok(())
    }
}

/// The anchors as the GroupContext extension.
pub fn anchors_to_extension(anchors: &[DomainAnchor]) -> Result<Extension, FederationError> {
    let wire = PerDomainTrustAnchors {
        domain_anchors: anchors
            .iter()
            .map(|a| PerDomainTrustAnchor {
                domain_name: a.domain.as_bytes().to_vec().into(),
                credential_type: u16::from(CredentialType::X509),
                chain: vec![a.cert.clone().into()],
            })
            .collect(),
    };
    let bytes = wire
        .tls_serialize_detached()
        .map_err(|e| FederationError::MalformedAnchors(format!("{e:?}")))?;
    Ok(Extension::Unknown(
        GROUP_TRUST_ANCHORS,
        UnknownExtension(bytes),
    ))
}

/// The anchors a GroupContext carries; empty if it has none (a universe
/// without federation).
pub fn anchors_from_extensions(
    ext: &Extensions<GroupContext>,
) -> Result<Vec<DomainAnchor>, FederationError> {
    let Some(UnknownExtension(bytes)) = ext.unknown(GROUP_TRUST_ANCHORS) else {
        return Ok(vec![]);
    };
    let wire = PerDomainTrustAnchors::tls_deserialize_exact(bytes.as_slice())
        .map_err(|e| FederationError::MalformedAnchors(format!("{e:?}")))?;
    let mut out = Vec::with_capacity(wire.domain_anchors.len());
    for a in wire.domain_anchors {
        if a.credential_type != u16::from(CredentialType::X509) {
            return Err(FederationError::MalformedAnchors(format!(
                "credential type {:#06x}",
                a.credential_type
            )));
        }
        let domain = String::from_utf8(a.domain_name.as_slice().to_vec())
            .map_err(|_| FederationError::MalformedAnchors("domain is not UTF-8".into()))?;
        // The first certificate is the anchor; any others only describe
        // how it was itself issued, which we do not need.
        let cert = a
            .chain
            .first()
            .ok_or(FederationError::EmptyChain)?
            .as_slice()
            .to_vec();
        out.push(DomainAnchor { domain, cert });
    }
    DomainAnchor::check_list(&out)?;
    Ok(out)
}

/// A federated send group's GroupContext extensions: the anchors, and the
/// required capabilities that make every member (and joiner) support them
/// and X.509 credentials. openmls refuses a GroupContextExtensions proposal
/// whose non-default extensions are not required. Empty: not federated.
pub fn group_context_extensions(
    anchors: &[DomainAnchor],
) -> Result<Extensions<GroupContext>, FederationError> {
    if anchors.is_empty() {
        return Ok(Extensions::empty());
    }
    let required = Extension::RequiredCapabilities(RequiredCapabilitiesExtension::new(
        &[ExtensionType::Unknown(GROUP_TRUST_ANCHORS)],
        &[],
        &[CredentialType::X509],
    ));
    Extensions::from_vec(vec![required, anchors_to_extension(anchors)?])
        .map_err(|e| FederationError::MalformedAnchors(format!("{e:?}")))
}
