//! Ciphersuites (MMLS draft section 6): send groups of one universe need not
//! share a ciphersuite, only the length of the PSKs they export to each
//! other. A universe lists the suites it accepts (`UniverseDef::ciphersuites`,
//! its order is the creator's preference); every owner makes its send group
//! in its own preferred suite among them (`Config::ciphersuites`), and
//! anything outside the list is refused, so nobody can move a universe to a
//! suite its creator did not accept.
//!
//! Implemented: the suites openmls_rust_crypto offers. 0x0001 and 0x0003 sign
//! with Ed25519, the member's identity key itself; 0x0002 signs with a P-256
//! key that the identity key vouches for (`identity::verify_binding`).

use crate::error::MmlsError;
use openmls::prelude::Ciphersuite;

/// X25519, AES-128-GCM, SHA-256, Ed25519: the suite every MLS
/// implementation must offer, and the only one of nodes older than suite
/// choice.
pub const X25519_AES128GCM: u16 = 0x0001;
/// P-256 (ECDH and ECDSA), AES-128-GCM, SHA-256.
pub const P256_AES128GCM: u16 = 0x0002;
/// X25519, ChaCha20-Poly1305, SHA-256, Ed25519.
pub const X25519_CHACHA20POLY1305: u16 = 0x0003;

/// The suites this node implements, in the default preference order.
pub const IMPLEMENTED: &[u16] = &[X25519_AES128GCM, X25519_CHACHA20POLY1305, P256_AES128GCM];

/// A universe created without a list accepts the mandatory suite only, as
/// every universe did before suite choice.
pub const DEFAULT_ACCEPTED: &[u16] = &[X25519_AES128GCM];

/// Whether this node implements `code`.
pub fn implemented(code: u16) -> bool {
    IMPLEMENTED.contains(&code)
}

/// The openmls suite of an implemented code point.
pub fn suite(code: u16) -> Result<Ciphersuite, MmlsError> {
    if !implemented(code) {
        return Err(MmlsError::UnsupportedCiphersuite(code));
    }
    Ciphersuite::try_from(code).map_err(|_| MmlsError::UnsupportedCiphersuite(code))
}

/// Every implemented suite, for leaf capabilities.
pub fn all() -> Vec<Ciphersuite> {
    IMPLEMENTED.iter().filter_map(|c| suite(*c).ok()).collect()
}

/// Whether a suite signs with a P-256 key rather than the Ed25519 identity
/// key itself.
pub fn signs_with_p256(code: u16) -> bool {
    code == P256_AES128GCM
}

/// The short name users see.
pub fn name(code: u16) -> &'static str {
    match code {
        X25519_AES128GCM => "X25519/AES128GCM/Ed25519",
        P256_AES128GCM => "P256/AES128GCM/P256",
        X25519_CHACHA20POLY1305 => "X25519/ChaCha20Poly1305/Ed25519",
        _ => "unknown",
    }
}

/// `0x0003 (X25519/ChaCha20Poly1305/Ed25519)`.
pub fn describe(code: u16) -> String {
    format!("{code:#06x} ({})", name(code))
}

/// Checks a universe's list at creation: not empty, no repeats, only suites
/// this node implements, and no P-256 in a federated universe (its
/// certificates certify the members' Ed25519 keys, which a P-256 leaf does
/// not use).
pub fn check_accepted(list: &[u16], federated: bool) -> Result<(), MmlsError> {
    if list.is_empty() {
        return Err(MmlsError::InvalidCiphersuites(
            "a universe must accept at least one ciphersuite".into(),
        ));
    }
    for (i, c) in list.iter().enumerate() {
        if list[..i].contains(c) {
            return Err(MmlsError::InvalidCiphersuites(format!(
                "{c:#06x} is listed twice"
            )));
        }
        suite(*c)?;
        if federated && signs_with_p256(*c) {
            return Err(MmlsError::CiphersuiteNotFederable(*c));
        }
    }
    Ok(())
}

/// The suite an owner makes its send group in: its first preference the
/// universe accepts, else the universe's first accepted suite this node
/// implements (a node whose preferences are all refused still takes part).
/// P-256 is skipped in a federated universe (see `check_accepted`).
pub fn choose(preferences: &[u16], accepted: &[u16], federated: bool) -> Result<u16, MmlsError> {
    let usable = |c: &u16| implemented(*c) && !(federated && signs_with_p256(*c));
    preferences
        .iter()
        .chain(accepted)
        .find(|c| accepted.contains(c) && usable(c))
        .copied()
        .ok_or(MmlsError::CiphersuiteRefused(
            accepted.first().copied().unwrap_or(0),
        ))
}

/// Parses a list of code points as users write them: `1,3`, `0x0003`, `2`.
pub fn parse_list(s: &str) -> Result<Vec<u16>, MmlsError> {
    let mut out = vec![];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let code = match part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            Some(hex) => u16::from_str_radix(hex, 16),
            None => part.parse::<u16>(),
        }
        .map_err(|_| {
            MmlsError::InvalidCiphersuites(format!(
                "{part:?} is not a ciphersuite number (expected e.g. 1,3 or 0x0003)"
            ))
        })?;
        suite(code)?;
        if out.contains(&code) {
            return Err(MmlsError::InvalidCiphersuites(format!(
                "{code:#06x} is listed twice"
            )));
        }
        out.push(code);
    }
    if out.is_empty() {
        return Err(MmlsError::InvalidCiphersuites(
            "no ciphersuite given".into(),
        ));
    }
    Ok(out)
}

/// The suite a TLS-encoded KeyPackage is in, read from its header
/// (`version || cipher_suite || ...`) without parsing the rest: lets a node
/// skip KeyPackages of suites it does not implement before validating them.
pub fn of_key_package(bytes: &[u8]) -> Option<u16> {
    bytes.get(2..4).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_bad_ones_are_typed_errors() {
        assert_eq!(parse_list("1,3").unwrap(), [1, 3]);
        assert_eq!(parse_list(" 0x0003 , 2 ").unwrap(), [3, 2]);
        assert!(matches!(
            parse_list("1,7"),
            Err(MmlsError::UnsupportedCiphersuite(7))
        ));
        assert!(matches!(
            parse_list("1,1"),
            Err(MmlsError::InvalidCiphersuites(_))
        ));
        assert!(matches!(
            parse_list("aes"),
            Err(MmlsError::InvalidCiphersuites(_))
        ));
        assert!(matches!(
            parse_list(""),
            Err(MmlsError::InvalidCiphersuites(_))
        ));
    }

    #[test]
    fn an_owner_takes_its_first_accepted_preference_else_the_universes() {
        assert_eq!(choose(&[3, 1], &[1, 3], false).unwrap(), 3);
        assert_eq!(choose(&[1, 3], &[1, 3], false).unwrap(), 1);
        // Preferences all refused: the universe's own first choice.
        assert_eq!(choose(&[3], &[1], false).unwrap(), 1);
        assert_eq!(choose(&[], &[3, 1], false).unwrap(), 3);
        // P-256 is never chosen in a federated universe.
        assert_eq!(choose(&[2, 1], &[2, 1], true).unwrap(), 1);
        assert!(matches!(
            choose(&[1], &[7], false),
            Err(MmlsError::CiphersuiteRefused(7))
        ));
    }

    #[test]
    fn a_universes_list_is_checked() {
        check_accepted(&[1, 3, 2], false).unwrap();
        assert!(check_accepted(&[], false).is_err());
        assert!(matches!(
            check_accepted(&[1, 2], true),
            Err(MmlsError::CiphersuiteNotFederable(2))
        ));
        assert!(matches!(
            check_accepted(&[5], false),
            Err(MmlsError::UnsupportedCiphersuite(5))
        ));
    }
}
