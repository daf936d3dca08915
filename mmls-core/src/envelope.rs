//! The wire envelope: versioned CBOR around TLS-encoded RFC 9420 messages.
//!
//! Decoding is strict: a size limit before parsing, a nesting limit while
//! parsing, the version checked before the body is interpreted, unknown
//! fields rejected, ids of the exact length. The envelope's routing fields
//! (universe, group, epoch, seq) are *hints* for buffering; everything that
//! matters is re-checked against MLS-authenticated data after decryption.

use crate::id::Id32;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

pub const ENVELOPE_VERSION: u8 = 1;
/// Hard cap on an encoded envelope; gossip and request-response use the same.
pub const MAX_ENVELOPE_BYTES: usize = 1 << 20;
/// CBOR nesting we accept (an envelope needs 4).
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A member's KeyPackage (`to` set: made for that owner only).
    KeyPackage,
    /// "please publish a KeyPackage for me" (`to` names whom it is asked of).
    KeyPackageRequest,
    /// An MLS Welcome; also part of its send group's stream.
    Welcome,
    /// An owner's commit in its send group.
    Commit,
    /// An application message in a send group (user text or control).
    Application,
    /// A signed request to be re-added to send groups (body: `RejoinRequest`).
    Rejoin,
    /// A member's Update proposal (leaf rotation) in another owner's send
    /// group; only that owner uses it, and embeds it in the commit that
    /// covers it.
    Proposal,
    /// A device-link statement on the lobby (body: `SignedDeviceLink`).
    DeviceLink,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub v: u8,
    pub kind: Kind,
    pub universe: Option<Id32>,
    pub group: Option<Id32>,
    /// Epoch the MLS message was created in (0 for lobby messages).
    pub epoch: u64,
    /// Position in the send group's stream (commits, welcomes and
    /// application messages share one numbering per group).
    pub seq: u64,
    /// Sender of lobby messages (KeyPackage, requests).
    pub sender: Option<String>,
    /// Addressee (KeyPackage made for one owner, KeyPackageRequest).
    pub to: Option<String>,
    /// (group, epoch) PSKs a commit or welcome imports: it cannot be
    /// processed before the receiver has reached them.
    #[serde(default)]
    pub deps: Vec<(Id32, u64)>,
    /// On a commit: the proposals (TLS MLS messages) it covers by
    /// reference, so readers always have them when they have the commit.
    /// On a KeyPackage: the member's KeyPackages in its other ciphersuites
    /// (the body is its 0x0001 one). A field of its own would have made
    /// nodes older than suite choice refuse the whole announcement (they
    /// reject unknown fields); this one they ignore on a KeyPackage.
    #[serde(default)]
    pub proposals: Vec<ByteBuf>,
    /// The owner's identity signature over a Welcome stream entry
    /// ([`Envelope::welcome_signed_bytes`]). A Welcome is encrypted to its
    /// joiners only, so the other members could not otherwise tell a real
    /// one from a forgery that would make them skip a stream position.
    #[serde(default)]
    pub sig: Option<ByteBuf>,
    pub body: ByteBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope of {0} bytes exceeds the limit of {MAX_ENVELOPE_BYTES}")]
    TooLarge(usize),
    #[error("not valid CBOR: {0}")]
    Cbor(String),
    #[error("unknown envelope version {0} (this node speaks {ENVELOPE_VERSION})")]
    UnknownVersion(u64),
    #[error("missing version field")]
    NoVersion,
    #[error("malformed envelope: {0}")]
    Malformed(String),
    #[error("envelope of kind {0:?} lacks its {1}")]
    MissingField(Kind, &'static str),
}

impl Envelope {
    pub fn new(kind: Kind, body: Vec<u8>) -> Envelope {
        Envelope {
            v: ENVELOPE_VERSION,
            kind,
            universe: None,
            group: None,
            epoch: 0,
            seq: 0,
            sender: None,
            to: None,
            deps: vec![],
            proposals: vec![],
            sig: None,
            body: ByteBuf::from(body),
        }
    }

    /// What an owner signs for a Welcome stream entry: its position and a
    /// hash of its body, under a label of its own (the identity key also
    /// signs libp2p and rejoin messages).
    pub fn welcome_signed_bytes(&self) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(b"mmls welcome entry v1");
        h.update(self.universe.map(|u| u.0).unwrap_or_default());
        h.update(self.group.map(|g| g.0).unwrap_or_default());
        h.update(self.seq.to_be_bytes());
        h.update(self.epoch.to_be_bytes());
        h.update(Sha256::digest(&self.body));
        h.finalize().to_vec()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 128);
        // Serializing plain data into a Vec cannot fail.
        let _ = ciborium::into_writer(self, &mut out);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        // Fast path: an envelope of our version parses straight into the
        // struct (every message takes this). Anything else goes through the
        // generic value below, which tells a version error from a malformed
        // envelope: the version is judged before the rest is interpreted.
        if let Ok(env) =
            ciborium::de::from_reader_with_recursion_limit::<Envelope, _>(bytes, MAX_DEPTH)
        {
            if env.v == ENVELOPE_VERSION {
                env.check()?;
                return Ok(env);
            }
        }
        let value: ciborium::Value =
            ciborium::de::from_reader_with_recursion_limit(bytes, MAX_DEPTH)
                .map_err(|e| EnvelopeError::Cbor(short(e)))?;
        let map = value
            .as_map()
            .ok_or_else(|| EnvelopeError::Malformed("not a map".into()))?;
        let v = map
            .iter()
            .find(|(k, _)| k.as_text() == Some("v"))
            .map(|(_, v)| v)
            .ok_or(EnvelopeError::NoVersion)?;
        let v: u64 = v
            .as_integer()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or(EnvelopeError::NoVersion)?;
        if v != ENVELOPE_VERSION as u64 {
            return Err(EnvelopeError::UnknownVersion(v));
        }
        let env: Envelope = value
            .deserialized()
            .map_err(|e| EnvelopeError::Malformed(short(e)))?;
        env.check()?;
        Ok(env)
    }

    fn check(&self) -> Result<(), EnvelopeError> {
        let need_group = matches!(
            self.kind,
            Kind::Welcome | Kind::Commit | Kind::Application | Kind::Proposal
        );
        if need_group && self.group.is_none() {
            return Err(EnvelopeError::MissingField(self.kind, "group"));
        }
        if (need_group || self.kind == Kind::Rejoin) && self.universe.is_none() {
            return Err(EnvelopeError::MissingField(self.kind, "universe"));
        }
        if self.deps.len() > 4096 {
            return Err(EnvelopeError::Malformed("too many dependencies".into()));
        }
        if self.proposals.len() > 4096 {
            return Err(EnvelopeError::Malformed("too many proposals".into()));
        }
        Ok(())
    }

    /// Content hash: the gossip message id and the dedupe key.
    pub fn id_of(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }
}

fn short(e: impl std::fmt::Display) -> String {
    let mut s = e.to_string();
    crate::error::truncate_at_char(&mut s, 200);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        let mut e = Envelope::new(Kind::Application, vec![1, 2, 3]);
        e.universe = Some(Id32([1; 32]));
        e.group = Some(Id32([2; 32]));
        e.seq = 9;
        e
    }

    #[test]
    fn round_trip() {
        let e = sample();
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn rejects_unknown_version() {
        let mut e = sample();
        e.v = 2;
        assert_eq!(
            Envelope::decode(&e.encode()),
            Err(EnvelopeError::UnknownVersion(2))
        );
    }

    #[test]
    fn rejects_garbage_truncation_and_size() {
        assert!(matches!(
            Envelope::decode(b"\xff\x00garbage"),
            Err(EnvelopeError::Cbor(_))
        ));
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(Envelope::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let big = vec![0u8; MAX_ENVELOPE_BYTES + 1];
        assert_eq!(
            Envelope::decode(&big),
            Err(EnvelopeError::TooLarge(MAX_ENVELOPE_BYTES + 1))
        );
    }

    #[test]
    fn rejects_deep_nesting_without_stack_overflow() {
        let mut bytes = vec![0x81u8; 100_000]; // array of array of ...
        bytes.push(0x00);
        assert!(Envelope::decode(&bytes).is_err());
    }

    #[test]
    fn rejects_missing_group_and_bad_ids() {
        let mut e = sample();
        e.group = None;
        assert!(matches!(
            Envelope::decode(&e.encode()),
            Err(EnvelopeError::MissingField(..))
        ));
        // a 31-byte id
        let mut v: ciborium::Value = ciborium::Value::serialized(&sample()).unwrap();
        if let ciborium::Value::Map(m) = &mut v {
            for (k, val) in m.iter_mut() {
                if k.as_text() == Some("group") {
                    *val = ciborium::Value::Bytes(vec![0; 31]);
                }
            }
        }
        let mut b = vec![];
        ciborium::into_writer(&v, &mut b).unwrap();
        assert!(matches!(
            Envelope::decode(&b),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_unknown_fields() {
        let mut v: ciborium::Value = ciborium::Value::serialized(&sample()).unwrap();
        if let ciborium::Value::Map(m) = &mut v {
            m.push((
                ciborium::Value::Text("extra".into()),
                ciborium::Value::Bool(true),
            ));
        }
        let mut b = vec![];
        ciborium::into_writer(&v, &mut b).unwrap();
        assert!(Envelope::decode(&b).is_err());
    }
}
