//! The wire envelope: versioned CBOR around TLS-encoded RFC 9420 messages.
//!
//! Two encodings. Version 1, a CBOR map with text keys and every field
//! written, is what older nodes send and what older logs, stores and
//! bundles hold; it is read, never written. Version 2, written always, is a
//! CBOR map with small integer keys (ascending, each once) that leaves out
//! empty fields, names the kind by a number, and leaves out the group and
//! epoch of a commit, an application message or a proposal when the MLS
//! framing of its body carries the same ones in the clear (both
//! PublicMessage and PrivateMessage start with them): the decoder fills
//! them in from there, so every reader still sees them before decryption.
//! A 100-byte text shrinks from 473 to under 320 bytes (see the
//! `text_envelope_size` test).
//!
//! Decoding is strict: a size limit before parsing, a nesting limit while
//! parsing, the version checked before the body is interpreted, unknown
//! fields and trailing bytes rejected, ids of the exact length. The
//! envelope's routing fields (universe, group, epoch, seq) are *hints* for
//! buffering; everything that matters is re-checked against
//! MLS-authenticated data after decryption.
//!
//! [`Envelope::id_of`] hashes the bytes as they came, so one stream entry
//! held as version-1 bytes (an old log) and as version-2 bytes has two ids.
//! Nothing relies on ids for stream entries: a stream deduplicates by
//! position (group, seq), so the second copy is refused as a duplicate.

use crate::id::Id32;
use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};
use std::fmt;

/// The encoding [`Envelope::encode`] writes.
pub const ENVELOPE_VERSION: u8 = 2;
/// The legacy encoding, still read.
pub const ENVELOPE_V1: u8 = 1;
/// Hard cap on an encoded envelope: one must fit a network frame with its
/// framing, alone in a gossip RPC or a fetch answer.
pub const MAX_ENVELOPE_BYTES: usize = crate::sync::MAX_FRAME_BYTES - crate::sync::FRAME_OVERHEAD;
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

impl Kind {
    const ALL: [Kind; 8] = [
        Kind::KeyPackage,
        Kind::KeyPackageRequest,
        Kind::Welcome,
        Kind::Commit,
        Kind::Application,
        Kind::Rejoin,
        Kind::Proposal,
        Kind::DeviceLink,
    ];

    /// The kind's number in version 2 (its place in [`Kind::ALL`]).
    fn code(self) -> u8 {
        Kind::ALL.iter().position(|k| *k == self).unwrap_or(0) as u8
    }

    fn from_code(c: u64) -> Option<Kind> {
        usize::try_from(c)
            .ok()
            .and_then(|i| Kind::ALL.get(i).copied())
    }

    /// Kinds whose body is an MLS PublicMessage or PrivateMessage of the
    /// envelope's group: their group and epoch can come from its framing.
    fn framed(self) -> bool {
        matches!(self, Kind::Commit | Kind::Application | Kind::Proposal)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
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
    pub deps: Vec<(Id32, u64)>,
    /// On a commit: the proposals (TLS MLS messages) it covers by
    /// reference, so readers always have them when they have the commit.
    /// On a KeyPackage: the member's KeyPackages in its other ciphersuites
    /// (the body is its 0x0001 one). A field of its own would have made
    /// version-1 nodes older than suite choice refuse the whole
    /// announcement (they reject unknown fields); this one they ignore on
    /// a KeyPackage.
    pub proposals: Vec<ByteBuf>,
    /// The owner's identity signature over a Welcome stream entry
    /// ([`Envelope::welcome_signed_bytes`]). A Welcome is encrypted to its
    /// joiners only, so the other members could not otherwise tell a real
    /// one from a forgery that would make them skip a stream position.
    pub sig: Option<ByteBuf>,
    pub body: ByteBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope of {0} bytes exceeds the limit of {MAX_ENVELOPE_BYTES}")]
    TooLarge(usize),
    #[error("not valid CBOR: {0}")]
    Cbor(String),
    #[error("unknown envelope version {0} (this node reads {ENVELOPE_V1} and {ENVELOPE_VERSION})")]
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

    /// The version-2 encoding (the only one this node writes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 64);
        // Serializing plain data into a Vec cannot fail.
        let _ = ciborium::into_writer(&V2Out(self), &mut out);
        out
    }

    /// The version-1 encoding, as older nodes wrote it: for tests and
    /// tools that must produce what an old log or peer holds.
    pub fn encode_v1(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 192);
        let _ = ciborium::into_writer(&V1::from(self.clone()), &mut out);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        // Fast path: a well-formed envelope of either version parses
        // straight into its typed form (every message takes this); version
        // 2 opens with key 0, version 1 with a text key. Anything else goes
        // through the generic value below, which tells a version error from
        // a malformed envelope: the version is judged before the rest is
        // interpreted.
        let v2_shaped = matches!(bytes, [0xa0..=0xb7, 0x00, ..]);
        let fast = if v2_shaped {
            read_one::<V2In>(bytes).ok().map(V2In::into_envelope)
        } else {
            read_one::<V1>(bytes)
                .ok()
                .filter(|e| e.v == ENVELOPE_V1)
                .map(Envelope::from)
        };
        if let Some(env) = fast {
            env.check()?;
            return Ok(env);
        }
        let value: ciborium::Value = read_one(bytes).map_err(|e| match e {
            ReadError::Cbor(e) => EnvelopeError::Cbor(e),
            ReadError::Trailing => EnvelopeError::Malformed("trailing bytes".into()),
        })?;
        let map = value
            .as_map()
            .ok_or_else(|| EnvelopeError::Malformed("not a map".into()))?;
        let version = map.iter().find_map(|(k, v)| match k {
            ciborium::Value::Text(t) if t == "v" => Some((ENVELOPE_V1, v)),
            ciborium::Value::Integer(i) if u64::try_from(*i) == Ok(0) => {
                Some((ENVELOPE_VERSION, v))
            }
            _ => None,
        });
        let (layout, v) = version.ok_or(EnvelopeError::NoVersion)?;
        let v: u64 = v
            .as_integer()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or(EnvelopeError::NoVersion)?;
        if v != layout as u64 {
            return Err(EnvelopeError::UnknownVersion(v));
        }
        let env = if layout == ENVELOPE_V1 {
            let v1: V1 = value
                .deserialized()
                .map_err(|e| EnvelopeError::Malformed(short(e)))?;
            Envelope::from(v1)
        } else {
            read_one::<V2In>(bytes)
                .map_err(|e| EnvelopeError::Malformed(short(e)))?
                .into_envelope()
        };
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

    /// Content hash of the bytes as sent: the gossip message id and the
    /// dedupe key of non-stream messages (see the module doc for entries
    /// held in both versions).
    pub fn id_of(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    /// The group and epoch a version-2 encoding may leave out: those in
    /// the body's MLS framing, for the kinds whose body has one.
    fn framing(&self) -> Option<(Id32, u64)> {
        self.kind
            .framed()
            .then(|| mls_framing(&self.body))
            .flatten()
    }
}

/// The group id and epoch in the clear header of an MLS PublicMessage or
/// PrivateMessage (RFC 9420 §6: `version`, `wire_format`, then both
/// framings start with `group_id` and `epoch`); None for any other body.
fn mls_framing(body: &[u8]) -> Option<(Id32, u64)> {
    use tls_codec::{Deserialize as _, VLBytes};
    const MLS10: u16 = 1;
    const PUBLIC_MESSAGE: u16 = 1;
    const PRIVATE_MESSAGE: u16 = 2;
    let mut r = body;
    let version = u16::tls_deserialize(&mut r).ok()?;
    let wire_format = u16::tls_deserialize(&mut r).ok()?;
    if version != MLS10 || !matches!(wire_format, PUBLIC_MESSAGE | PRIVATE_MESSAGE) {
        return None;
    }
    let group = VLBytes::tls_deserialize(&mut r).ok()?;
    let epoch = u64::tls_deserialize(&mut r).ok()?;
    Some((Id32::from_slice(group.as_slice())?, epoch))
}

enum ReadError {
    Cbor(String),
    Trailing,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Cbor(e) => f.write_str(e),
            ReadError::Trailing => f.write_str("trailing bytes"),
        }
    }
}

/// Exactly one CBOR item, nesting bounded, nothing after it.
fn read_one<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ReadError> {
    let mut rest = bytes;
    let t = ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_DEPTH)
        .map_err(|e| ReadError::Cbor(short(e)))?;
    if !rest.is_empty() {
        return Err(ReadError::Trailing);
    }
    Ok(t)
}

/// Version 1 as it is on the wire: every field, text keys.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct V1 {
    v: u8,
    kind: Kind,
    universe: Option<Id32>,
    group: Option<Id32>,
    epoch: u64,
    seq: u64,
    sender: Option<String>,
    to: Option<String>,
    #[serde(default)]
    deps: Vec<(Id32, u64)>,
    #[serde(default)]
    proposals: Vec<ByteBuf>,
    #[serde(default)]
    sig: Option<ByteBuf>,
    body: ByteBuf,
}

impl From<V1> for Envelope {
    fn from(e: V1) -> Envelope {
        Envelope {
            kind: e.kind,
            universe: e.universe,
            group: e.group,
            epoch: e.epoch,
            seq: e.seq,
            sender: e.sender,
            to: e.to,
            deps: e.deps,
            proposals: e.proposals,
            sig: e.sig,
            body: e.body,
        }
    }
}

impl From<Envelope> for V1 {
    fn from(e: Envelope) -> V1 {
        V1 {
            v: ENVELOPE_V1,
            kind: e.kind,
            universe: e.universe,
            group: e.group,
            epoch: e.epoch,
            seq: e.seq,
            sender: e.sender,
            to: e.to,
            deps: e.deps,
            proposals: e.proposals,
            sig: e.sig,
            body: e.body,
        }
    }
}

/// Version-2 field keys, in the order they must appear.
mod key {
    pub const VERSION: u64 = 0;
    pub const KIND: u64 = 1;
    pub const UNIVERSE: u64 = 2;
    pub const GROUP: u64 = 3;
    pub const EPOCH: u64 = 4;
    pub const SEQ: u64 = 5;
    pub const SENDER: u64 = 6;
    pub const TO: u64 = 7;
    pub const DEPS: u64 = 8;
    pub const PROPOSALS: u64 = 9;
    pub const SIG: u64 = 10;
    pub const BODY: u64 = 11;
}

/// Version 2 for writing: present fields only, keys ascending.
struct V2Out<'a>(&'a Envelope);

impl Serialize for V2Out<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let framing = e.framing();
        let group = e.group.filter(|g| framing.map(|f| f.0) != Some(*g));
        let epoch = Some(e.epoch).filter(|ep| *ep != framing.map_or(0, |f| f.1));
        let seq = Some(e.seq).filter(|s| *s != 0);
        let len = 3
            + usize::from(e.universe.is_some())
            + usize::from(group.is_some())
            + usize::from(epoch.is_some())
            + usize::from(seq.is_some())
            + usize::from(e.sender.is_some())
            + usize::from(e.to.is_some())
            + usize::from(!e.deps.is_empty())
            + usize::from(!e.proposals.is_empty())
            + usize::from(e.sig.is_some());
        let mut m = s.serialize_map(Some(len))?;
        m.serialize_entry(&key::VERSION, &ENVELOPE_VERSION)?;
        m.serialize_entry(&key::KIND, &e.kind.code())?;
        if let Some(u) = &e.universe {
            m.serialize_entry(&key::UNIVERSE, u)?;
        }
        if let Some(g) = &group {
            m.serialize_entry(&key::GROUP, g)?;
        }
        if let Some(ep) = &epoch {
            m.serialize_entry(&key::EPOCH, ep)?;
        }
        if let Some(sq) = &seq {
            m.serialize_entry(&key::SEQ, sq)?;
        }
        if let Some(x) = &e.sender {
            m.serialize_entry(&key::SENDER, x)?;
        }
        if let Some(x) = &e.to {
            m.serialize_entry(&key::TO, x)?;
        }
        if !e.deps.is_empty() {
            m.serialize_entry(&key::DEPS, &e.deps)?;
        }
        if !e.proposals.is_empty() {
            m.serialize_entry(&key::PROPOSALS, &e.proposals)?;
        }
        if let Some(x) = &e.sig {
            m.serialize_entry(&key::SIG, x)?;
        }
        m.serialize_entry(&key::BODY, &e.body)?;
        m.end()
    }
}

/// Version 2 as read, before the framing fills in what was left out.
struct V2In {
    env: Envelope,
    group: bool,
    epoch: bool,
}

impl V2In {
    fn into_envelope(self) -> Envelope {
        let mut env = self.env;
        if let Some((g, ep)) = env.framing() {
            if !self.group {
                env.group = Some(g);
            }
            if !self.epoch {
                env.epoch = ep;
            }
        }
        env
    }
}

impl<'de> Deserialize<'de> for V2In {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(V2Visitor)
    }
}

struct V2Visitor;

impl<'de> Visitor<'de> for V2Visitor {
    type Value = V2In;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a version-2 envelope map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<V2In, A::Error> {
        let mut last: Option<u64> = None;
        let mut kind = None;
        let mut body = None;
        let mut out = V2In {
            env: Envelope::new(Kind::KeyPackage, vec![]),
            group: false,
            epoch: false,
        };
        while let Some(k) = m.next_key::<u64>()? {
            if last.is_some_and(|l| k <= l) {
                return Err(de::Error::custom("keys repeated or out of order"));
            }
            if last.is_none() && k != key::VERSION {
                return Err(de::Error::custom("the version must come first"));
            }
            last = Some(k);
            let e = &mut out.env;
            match k {
                key::VERSION => {
                    let v: u64 = m.next_value()?;
                    if v != u64::from(ENVELOPE_VERSION) {
                        return Err(de::Error::custom(format!("version {v}")));
                    }
                }
                key::KIND => {
                    let c: u64 = m.next_value()?;
                    kind = Some(
                        Kind::from_code(c)
                            .ok_or_else(|| de::Error::custom(format!("unknown kind {c}")))?,
                    );
                }
                key::UNIVERSE => e.universe = Some(m.next_value()?),
                key::GROUP => {
                    e.group = Some(m.next_value()?);
                    out.group = true;
                }
                key::EPOCH => {
                    e.epoch = m.next_value()?;
                    out.epoch = true;
                }
                key::SEQ => e.seq = m.next_value()?,
                key::SENDER => e.sender = Some(m.next_value()?),
                key::TO => e.to = Some(m.next_value()?),
                key::DEPS => e.deps = m.next_value()?,
                key::PROPOSALS => e.proposals = m.next_value()?,
                key::SIG => e.sig = Some(m.next_value()?),
                key::BODY => body = Some(m.next_value::<ByteBuf>()?),
                other => return Err(de::Error::custom(format!("unknown field {other}"))),
            }
        }
        out.env.kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
        out.env.body = body.ok_or_else(|| de::Error::missing_field("body"))?;
        Ok(out)
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
    use ciborium::Value;

    fn sample() -> Envelope {
        let mut e = Envelope::new(Kind::Application, vec![1, 2, 3]);
        e.universe = Some(Id32([1; 32]));
        e.group = Some(Id32([2; 32]));
        e.seq = 9;
        e
    }

    /// A body with the clear header of an MLS PrivateMessage of `g` at
    /// `epoch` (version, wire format, group id, epoch, then anything).
    fn framed_body(g: Id32, epoch: u64) -> Vec<u8> {
        let mut b = vec![0, 1, 0, 2, 32];
        b.extend_from_slice(&g.0);
        b.extend_from_slice(&epoch.to_be_bytes());
        b.extend_from_slice(&[0x17; 40]);
        b
    }

    fn to_value(bytes: &[u8]) -> Vec<(Value, Value)> {
        let v: Value = ciborium::from_reader(bytes).unwrap();
        v.into_map().unwrap()
    }

    fn to_bytes(map: Vec<(Value, Value)>) -> Vec<u8> {
        let mut b = vec![];
        ciborium::into_writer(&Value::Map(map), &mut b).unwrap();
        b
    }

    fn int(i: u64) -> Value {
        Value::Integer(i.into())
    }

    #[test]
    fn round_trip_both_versions() {
        let e = sample();
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        assert_eq!(Envelope::decode(&e.encode_v1()).unwrap(), e);
        let mut full = sample();
        full.kind = Kind::Welcome;
        full.epoch = 7;
        full.sender = Some("a".into());
        full.to = Some("b".into());
        full.deps = vec![(Id32([3; 32]), 4)];
        full.proposals = vec![ByteBuf::from(vec![5; 9])];
        full.sig = Some(ByteBuf::from(vec![6; 64]));
        assert_eq!(Envelope::decode(&full.encode()).unwrap(), full);
        assert_eq!(Envelope::decode(&full.encode_v1()).unwrap(), full);
        // Every kind keeps its number.
        for k in Kind::ALL {
            let mut e = Envelope::new(k, vec![1]);
            e.universe = Some(Id32([1; 32]));
            e.group = Some(Id32([2; 32]));
            assert_eq!(Envelope::decode(&e.encode()).unwrap().kind, k);
        }
    }

    #[test]
    fn v2_leaves_out_what_the_mls_framing_carries() {
        let g = Id32([2; 32]);
        let mut e = sample();
        e.body = ByteBuf::from(framed_body(g, 41));
        e.epoch = 41;
        let v2 = e.encode();
        let keys: Vec<Value> = to_value(&v2).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![int(0), int(1), int(2), int(5), int(11)]);
        assert_eq!(Envelope::decode(&v2).unwrap(), e);
        assert!(
            v2.len() + 32 + 9 < e.encode_v1().len(),
            "v2 saves the group and more"
        );
        // Hints that differ from the framing are kept as they were.
        let mut odd = e.clone();
        odd.group = Some(Id32([9; 32]));
        odd.epoch = 40;
        assert_eq!(Envelope::decode(&odd.encode()).unwrap(), odd);
        // Only framed kinds take them from the body: a Welcome keeps its own.
        let mut w = e.clone();
        w.kind = Kind::Welcome;
        assert_eq!(Envelope::decode(&w.encode()).unwrap(), w);
        w.group = None;
        assert_eq!(
            Envelope::decode(&w.encode()),
            Err(EnvelopeError::MissingField(Kind::Welcome, "group"))
        );
    }

    #[test]
    fn rejects_unknown_version() {
        let mut m = to_value(&sample().encode());
        m[0].1 = int(9);
        assert_eq!(
            Envelope::decode(&to_bytes(m)),
            Err(EnvelopeError::UnknownVersion(9))
        );
        let mut m = to_value(&sample().encode_v1());
        assert_eq!(m[0].0, Value::Text("v".into()));
        m[0].1 = int(9);
        assert_eq!(
            Envelope::decode(&to_bytes(m)),
            Err(EnvelopeError::UnknownVersion(9))
        );
        let mut m = to_value(&sample().encode());
        m.remove(0);
        assert_eq!(
            Envelope::decode(&to_bytes(m)),
            Err(EnvelopeError::NoVersion)
        );
    }

    #[test]
    fn rejects_garbage_truncation_trailing_bytes_and_size() {
        assert!(matches!(
            Envelope::decode(b"\xff\x00garbage"),
            Err(EnvelopeError::Cbor(_))
        ));
        for bytes in [sample().encode(), sample().encode_v1()] {
            for cut in 0..bytes.len() {
                assert!(Envelope::decode(&bytes[..cut]).is_err(), "cut {cut}");
            }
            let mut long = bytes.clone();
            long.push(0);
            assert!(
                matches!(Envelope::decode(&long), Err(EnvelopeError::Malformed(_))),
                "trailing byte accepted"
            );
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
        // The same under a version-2 key.
        let mut bytes = vec![0xa3, 0x00, 0x02, 0x01, 0x04, 0x08];
        bytes.extend(vec![0x81u8; 100_000]);
        bytes.push(0x00);
        assert!(Envelope::decode(&bytes).is_err());
    }

    #[test]
    fn rejects_missing_group_and_bad_ids() {
        let mut e = sample();
        e.group = None;
        for bytes in [e.encode(), e.encode_v1()] {
            assert_eq!(
                Envelope::decode(&bytes),
                Err(EnvelopeError::MissingField(Kind::Application, "group"))
            );
        }
        // a 31-byte id, in either version
        let mut m = to_value(&sample().encode());
        for (k, val) in m.iter_mut() {
            if *k == int(3) {
                *val = Value::Bytes(vec![0; 31]);
            }
        }
        assert!(matches!(
            Envelope::decode(&to_bytes(m)),
            Err(EnvelopeError::Malformed(_))
        ));
        let mut m = to_value(&sample().encode_v1());
        for (k, val) in m.iter_mut() {
            if k.as_text() == Some("group") {
                *val = Value::Bytes(vec![0; 31]);
            }
        }
        assert!(matches!(
            Envelope::decode(&to_bytes(m)),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_unknown_repeated_and_unordered_fields() {
        let mut m = to_value(&sample().encode_v1());
        m.push((Value::Text("extra".into()), Value::Bool(true)));
        assert!(Envelope::decode(&to_bytes(m)).is_err());

        let base = to_value(&sample().encode());
        let mut unknown = base.clone();
        unknown.push((int(12), Value::Bool(true)));
        let mut repeated = base.clone();
        repeated.insert(3, base[2].clone());
        let mut unordered = base.clone();
        unordered.swap(2, 3);
        let mut unknown_kind = base.clone();
        unknown_kind[1].1 = int(8);
        let mut text_kind = base.clone();
        text_kind[1].1 = Value::Text("application".into());
        let mut no_body = base.clone();
        no_body.pop();
        for (name, m) in [
            ("unknown", unknown),
            ("repeated", repeated),
            ("unordered", unordered),
            ("unknown kind", unknown_kind),
            ("text kind", text_kind),
            ("no body", no_body),
        ] {
            assert!(
                matches!(
                    Envelope::decode(&to_bytes(m)),
                    Err(EnvelopeError::Malformed(_))
                ),
                "{name}"
            );
        }
    }
}
