//! What a universe is: its definition (sent by the creator as the first
//! application message of its send group, draft-xue-multi-mls 6.1) and the
//! control payloads that travel inside send groups.

use crate::id::Id32;
use crate::identity::MemberId;
use crate::profile::Profile;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UniverseDef {
    /// The group id of the creator's send group.
    pub id: Id32,
    pub name: String,
    pub creator: MemberId,
    pub admins: Vec<MemberId>,
    pub profile: Profile,
    pub export_len: u16,
    /// Accepted ciphersuites (u16 code points); anything else is refused.
    pub ciphersuites: Vec<u16>,
    /// Federation: the anchor of each domain whose members may join.
    /// Empty: no federation (basic or X.509 credentials, PeerId binding
    /// only). Changed only by an admin's GroupContextExtensions commit.
    #[serde(default)]
    pub anchors: Vec<crate::federation::DomainAnchor>,
}

/// The payload of every application message, CBOR inside MLS. A text, by
/// far the most common, is written as a bare array `[seq, body]`; every
/// other payload, and texts of older nodes (still read), as the externally
/// tagged map `{"Text": {"seq": .., "body": ..}}` (`PayloadTagged`),
/// which cost a short text 15 bytes of names on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A user message with the sender's per-universe sequence number.
    Text { seq: u64, body: ByteBuf },
    /// Sent right after every Welcome: tells joiners which universe this
    /// send group belongs to and who is in it.
    Hello {
        def: UniverseDef,
        roster: Vec<MemberId>,
        /// The roster's device-link statements, so that a joiner attributes
        /// messages to users from the start (`participant/devices.rs`).
        links: Vec<crate::devices::SignedDeviceLink>,
    },
    /// The owner's own earlier texts, re-sent after it re-added `to` (a
    /// rejoin), with their original numbers; other members step over it.
    Resend {
        to: MemberId,
        texts: Vec<(u64, ByteBuf)>,
    },
    /// The owner leaves the universe: every owner removes it.
    Leave,
    /// Device-link statements: the owner's own link (or unlink: it
    /// leaves), or a device of the same user linked or unlinked, the add or
    /// removal following in the owner's next commit.
    Devices(Vec<crate::devices::SignedDeviceLink>),
}

/// [`Payload`] in its tagged form: how every payload but a text is
/// written, and how older nodes wrote texts too.
#[derive(Serialize, Deserialize)]
#[serde(rename = "Payload")]
enum PayloadTagged {
    /// A user message with the sender's per-universe sequence number.
    Text { seq: u64, body: ByteBuf },
    /// Sent right after every Welcome: tells joiners which universe this
    /// send group belongs to and who is in it.
    Hello {
        def: UniverseDef,
        roster: Vec<MemberId>,
        /// The roster's device-link statements, so that a joiner attributes
        /// messages to users from the start (`participant/devices.rs`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        links: Vec<crate::devices::SignedDeviceLink>,
    },
    /// The owner's own earlier texts, re-sent after it re-added `to` (a
    /// rejoin), with their original numbers; other members step over it.
    Resend {
        to: MemberId,
        texts: Vec<(u64, ByteBuf)>,
    },
    /// The owner leaves the universe: every owner removes it.
    Leave,
    /// Device-link statements: the owner's own link (or unlink: it
    /// leaves), or a device of the same user linked or unlinked, the add or
    /// removal following in the owner's next commit.
    Devices(Vec<crate::devices::SignedDeviceLink>),
}

impl From<PayloadTagged> for Payload {
    fn from(p: PayloadTagged) -> Payload {
        match p {
            PayloadTagged::Text { seq, body } => Payload::Text { seq, body },
            PayloadTagged::Hello { def, roster, links } => Payload::Hello { def, roster, links },
            PayloadTagged::Resend { to, texts } => Payload::Resend { to, texts },
            PayloadTagged::Leave => Payload::Leave,
            PayloadTagged::Devices(d) => Payload::Devices(d),
        }
    }
}

impl From<&Payload> for PayloadTagged {
    fn from(p: &Payload) -> PayloadTagged {
        match p.clone() {
            Payload::Text { seq, body } => PayloadTagged::Text { seq, body },
            Payload::Hello { def, roster, links } => PayloadTagged::Hello { def, roster, links },
            Payload::Resend { to, texts } => PayloadTagged::Resend { to, texts },
            Payload::Leave => PayloadTagged::Leave,
            Payload::Devices(d) => PayloadTagged::Devices(d),
        }
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Payload::Text { seq, body } => (seq, body).serialize(s),
            other => PayloadTagged::from(other).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Text(u64, ByteBuf),
            Tagged(PayloadTagged),
        }
        Ok(match Stored::deserialize(d)? {
            Stored::Text(seq, body) => Payload::Text { seq, body },
            Stored::Tagged(t) => t.into(),
        })
    }
}

/// Authenticated data of every commit and application message (MLS
/// authenticates but does not encrypt it, so receivers can check
/// dependencies before they decrypt).
///
/// Written as a CBOR array `[seq, deps, frontier, update]`, frontier
/// entries as `[group, epoch, auth]` (`AadCompact`): the map with text
/// keys older nodes wrote (still read) spent 20 of a text's 23 AAD bytes,
/// and 20 of each frontier entry's, on names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Aad {
    /// The envelope's stream position, authenticated.
    pub seq: u64,
    /// PSKs the commit imports.
    pub deps: Vec<(Id32, u64)>,
    /// The owner's view of every send group: epoch and a short hash of its
    /// epoch authenticator. Acks for rejoin and the equivocation check.
    pub frontier: Vec<FrontierEntry>,
    /// On a commit: whether it is the owner's MMLS update (a path it chose
    /// to renew its keys), which other owners import. A path that RFC 9420
    /// forces on a commit (covering others' Update proposals, removals) is
    /// not one: importing it adds no healing (the updater's own PSK and leaf
    /// already went in) and would start a second wave of commits in every
    /// group. `None` (application messages, commits of older nodes): a
    /// commit with a path is an update, as before.
    pub update: Option<bool>,
}

/// The AAD as older nodes wrote it: a map with text keys.
#[derive(Serialize, Deserialize)]
struct AadMap {
    seq: u64,
    deps: Vec<(Id32, u64)>,
    frontier: Vec<FrontierEntry>,
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    update: Option<bool>,
}

/// The AAD as written now (see [`Aad`]).
#[derive(Serialize, Deserialize)]
struct AadCompact(
    u64,
    Vec<(Id32, u64)>,
    Vec<(Id32, u64, ByteBuf)>,
    Option<bool>,
);

impl Serialize for Aad {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let frontier = self
            .frontier
            .iter()
            .map(|f| (f.group, f.epoch, ByteBuf::from(f.auth.to_vec())))
            .collect();
        AadCompact(self.seq, self.deps.clone(), frontier, self.update).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Aad {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Compact(AadCompact),
            Map(AadMap),
        }
        Ok(match Stored::deserialize(d)? {
            Stored::Map(m) => Aad {
                seq: m.seq,
                deps: m.deps,
                frontier: m.frontier,
                update: m.update,
            },
            Stored::Compact(AadCompact(seq, deps, frontier, update)) => Aad {
                seq,
                deps,
                frontier: frontier
                    .into_iter()
                    .map(|(group, epoch, auth)| {
                        let auth = <[u8; 8]>::try_from(auth.as_slice()).map_err(|_| {
                            serde::de::Error::custom("a frontier authenticator is 8 bytes")
                        })?;
                        Ok(FrontierEntry { group, epoch, auth })
                    })
                    .collect::<Result<_, D::Error>>()?,
                update,
            },
        })
    }
}

impl Aad {
    /// Whether a commit with this AAD and `path` is an MMLS update.
    pub fn is_mmls_update(&self, path: bool) -> bool {
        path && self.update.unwrap_or(true)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontierEntry {
    pub group: Id32,
    pub epoch: u64,
    /// As a CBOR byte string: as an array each byte would be an integer of
    /// one or two bytes, so an AAD's size would depend on random bytes (and
    /// the simulator's byte counts on the crypto's randomness).
    #[serde(with = "serde_bytes")]
    pub auth: [u8; 8],
}

/// A member asks owners to re-add it (it fell behind, or lost its state).
/// Signed with the member's identity key, because the lobby is not inside
/// any MLS group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejoinRequest {
    pub universe: Id32,
    pub member: MemberId,
    /// KeyPackages addressed to each owner asked (TLS-encoded), each in
    /// the suite of that owner's send group.
    pub key_packages: Vec<(MemberId, ByteBuf)>,
    /// True when the member lost its state: any owner may re-add it, using
    /// `any_key_package` if none is addressed to it.
    pub lost_state: bool,
    /// Our last-resort KeyPackage in 0x0001 (what owners older than suite
    /// choice read) ...
    pub any_key_package: Option<ByteBuf>,
    /// ... and in every other suite we implement: an owner re-adds us with
    /// the one of its send group's suite.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any_key_packages: Vec<ByteBuf>,
    /// Milliseconds (driver clock); owners ignore requests older than the last
    /// one they served, so a replay cannot kick a member out again.
    pub nonce: u64,
    /// The highest text number received from each owner: an owner re-adding
    /// the member re-sends its own texts after that one.
    #[serde(default)]
    pub received: Vec<(MemberId, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedRejoin {
    pub request: ByteBuf,
    pub signature: ByteBuf,
}

pub(crate) fn to_cbor<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = ciborium::into_writer(v, &mut out);
    out
}

pub(crate) fn from_cbor<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    ciborium::de::from_reader_with_recursion_limit(b, 32).map_err(|e| {
        let mut s = e.to_string();
        crate::error::truncate_at_char(&mut s, 200);
        s
    })
}

pub(crate) fn auth8(authenticator: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    let n = authenticator.len().min(8);
    a[..n].copy_from_slice(&authenticator[..n]);
    a
}

impl UniverseDef {
    pub fn is_admin(&self, m: &MemberId) -> bool {
        self.admins.contains(m)
    }
}

#[cfg(test)]
mod aad_tests {
    use super::*;

    /// The AAD as nodes wrote it before the `update` flag.
    #[derive(Serialize)]
    struct AadBeforeUpdateFlag {
        seq: u64,
        deps: Vec<(Id32, u64)>,
        frontier: Vec<FrontierEntry>,
    }

    #[test]
    fn an_older_nodes_path_commit_is_still_an_mmls_update() {
        let old = to_cbor(&AadBeforeUpdateFlag {
            seq: 7,
            deps: vec![],
            frontier: vec![],
        });
        let aad: Aad = from_cbor(&old).expect("older AAD decodes");
        assert_eq!(aad.update, None);
        assert!(aad.is_mmls_update(true));
        assert!(!aad.is_mmls_update(false));
        // Written compact now, and read back the same.
        let compact = to_cbor(&aad);
        assert!(
            compact.len() + 15 < old.len(),
            "{} vs {}",
            compact.len(),
            old.len()
        );
        assert_eq!(from_cbor::<Aad>(&compact).unwrap(), aad);
    }

    /// An AAD with every field, in both encodings; a text payload in both.
    #[test]
    fn compact_and_legacy_encodings_read_the_same() {
        let aad = Aad {
            seq: 300,
            deps: vec![(Id32([1; 32]), 4)],
            frontier: vec![FrontierEntry {
                group: Id32([2; 32]),
                epoch: 9,
                auth: [7; 8],
            }],
            update: Some(false),
        };
        let legacy = to_cbor(&AadMap {
            seq: aad.seq,
            deps: aad.deps.clone(),
            frontier: aad.frontier.clone(),
            update: aad.update,
        });
        let compact = to_cbor(&aad);
        assert_eq!(from_cbor::<Aad>(&legacy).unwrap(), aad);
        assert_eq!(from_cbor::<Aad>(&compact).unwrap(), aad);
        assert!(compact.len() + 30 < legacy.len());
        // A 7-byte authenticator is refused.
        let bad = to_cbor(&AadCompact(
            1,
            vec![],
            vec![(Id32([2; 32]), 9, ByteBuf::from(vec![7; 7]))],
            None,
        ));
        assert!(from_cbor::<Aad>(&bad).is_err());

        let text = Payload::Text {
            seq: 5,
            body: ByteBuf::from(vec![b'x'; 100]),
        };
        let legacy = to_cbor(&PayloadTagged::from(&text));
        let compact = to_cbor(&text);
        assert_eq!(from_cbor::<Payload>(&legacy).unwrap(), text);
        assert_eq!(from_cbor::<Payload>(&compact).unwrap(), text);
        assert_eq!(legacy.len() - compact.len(), 15);
        // Other payloads keep the tagged form.
        assert_eq!(to_cbor(&Payload::Leave), to_cbor(&PayloadTagged::Leave));
        assert_eq!(
            from_cbor::<Payload>(&to_cbor(&Payload::Leave)).unwrap(),
            Payload::Leave
        );
        assert!(from_cbor::<Payload>(&to_cbor(&(1u64, 2u64))).is_err());
    }

    #[test]
    fn a_forced_path_is_not_an_mmls_update() {
        let forced = Aad {
            seq: 3,
            update: Some(false),
            ..Aad::default()
        };
        let back: Aad = from_cbor(&to_cbor(&forced)).expect("round trip");
        assert_eq!(back, forced);
        assert!(!back.is_mmls_update(true));
        let chosen = Aad {
            update: Some(true),
            ..forced
        };
        assert!(from_cbor::<Aad>(&to_cbor(&chosen))
            .expect("round trip")
            .is_mmls_update(true));
    }
}
