//! The local API's JSON shapes, shared by the server (`api.rs`) and the
//! client (`client.rs`). Ids are strings: universe and group ids as 64 hex
//! characters, members as their PeerId (`12D3KooW...`).

use mmls_core::{Delivered, Event, GroupStatus, UniverseStatus};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdInfo {
    pub member: String,
    pub peer_id: String,
    pub name: String,
    pub listen_addrs: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateUniverse {
    pub name: String,
    pub members: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admins: Option<Vec<String>>,
    /// Federation: each domain and its anchor certificate (PEM).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anchors: Vec<AnchorIn>,
    /// The ciphersuites the universe accepts (code points, preferred
    /// first); absent: 0x0001 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ciphersuites: Option<Vec<u16>>,
    /// Users whose every device (as this node has heard of them) becomes a
    /// member: user ids (`u:...`) or, with X.509, certified names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
}

/// `POST /v1/devices/link`: link this device to a user. `user_key` (hex
/// of the 32 secret bytes, as in a key file) names the user; absent, this
/// device's own user key, made now if it has none (a user's first device).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct LinkDevice {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_key: Option<String>,
}

/// `POST /v1/devices/unlink`: the user (whose key this device holds)
/// disowns `device`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnlinkDevice {
    pub device: String,
}

/// A device as this node knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Device {
    pub user: String,
    pub device: String,
    pub linked: bool,
    /// Unix milliseconds of the newest statement about it.
    pub at: u64,
}

/// `GET /v1/devices`: this device's user and every device heard of.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Devices {
    /// This device's own id.
    pub me: String,
    /// The user this device is linked to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub devices: Vec<Device>,
}

/// `POST /v1/identity/certificate`: a renewed certificate chain (PEM, leaf
/// first) for this node's key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RenewCertificate {
    pub pem: String,
}

/// A domain and the PEM certificate that vouches for its members.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnchorIn {
    pub domain: String,
    pub pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Created {
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AddMember {
    pub member: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SendText {
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sent {
    pub seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ok {
    pub ok: bool,
}

/// `POST /v1/prove` (unauthenticated): a random nonce, hex.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProveIn {
    pub nonce: String,
}

/// The node's answer: `crate::api_proof::proof`, hex.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProveOut {
    pub proof: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    pub cursor: u64,
    pub sender: String,
    pub universe: String,
    pub seq: u64,
    /// The body as UTF-8 (invalid sequences replaced).
    pub text: String,
    /// Unix milliseconds.
    pub received_at: u64,
    pub group: String,
    pub epoch: u64,
    /// The sender's display name here (nickname, else announced), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
    /// The user the sending device was linked to when it arrived (the
    /// sender is then that user's device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl From<&Delivered> for Message {
    fn from(d: &Delivered) -> Self {
        Message {
            cursor: d.cursor,
            sender: d.sender.to_string(),
            universe: d.universe.hex(),
            seq: d.seq,
            text: String::from_utf8_lossy(&d.body).into_owned(),
            received_at: d.received_at,
            group: d.group.hex(),
            epoch: d.epoch,
            sender_name: None,
            user: d.user.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Group {
    pub group: String,
    pub owner: String,
    pub epoch: u64,
    pub next_seq: u64,
    pub buffered: usize,
    pub blocked: bool,
    pub stale: bool,
    pub auth: String,
    pub members: usize,
    /// Why the stream is stuck, if it is: the missing position, or the
    /// (group, epoch) its next commit depends on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// When (ms since the Unix epoch) the owner last renewed its keys, as
    /// far as this node saw; absent: not since it joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_key_update: Option<u64>,
    /// The group's ciphersuite (code point), its owner's choice among the
    /// universe's.
    #[serde(default)]
    pub ciphersuite: u16,
}

impl From<&GroupStatus> for Group {
    fn from(g: &GroupStatus) -> Self {
        Group {
            group: g.group.hex(),
            owner: g.owner.to_string(),
            epoch: g.epoch,
            next_seq: g.next_seq,
            buffered: g.buffered,
            blocked: g.blocked,
            stale: g.stale,
            auth: g.auth.clone(),
            members: g.members,
            waiting_for: g.waiting_for.clone(),
            last_key_update: g.last_key_update,
            ciphersuite: g.ciphersuite,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Equivocation {
    pub owner: String,
    pub group: String,
    pub epoch: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Universe {
    pub id: String,
    pub name: Option<String>,
    pub profile: Option<String>,
    pub creator: Option<String>,
    pub admins: Vec<String>,
    pub roster: Vec<String>,
    pub own_group: Option<String>,
    pub groups: Vec<Group>,
    pub pending_imports: usize,
    pub messages_sent: u64,
    pub equivocations: Vec<Equivocation>,
    pub removed: bool,
    /// Federation: the universe's domains and anchors.
    #[serde(default)]
    pub anchors: Vec<Anchor>,
    /// Federation: each member's certificate as this node validated it.
    #[serde(default)]
    pub certificates: Vec<Certificate>,
    /// Accepted ciphersuites (code points).
    #[serde(default)]
    pub ciphersuites: Vec<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Anchor {
    pub domain: String,
    pub subject: String,
    /// Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the DER certificate, hex.
    pub fingerprint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Certificate {
    pub member: String,
    pub name: String,
    pub domain: String,
    /// Unix seconds.
    pub not_after: i64,
    /// It expired while the member was in the universe.
    pub expired: bool,
}

impl From<&UniverseStatus> for Universe {
    fn from(u: &UniverseStatus) -> Self {
        Universe {
            id: u.id.hex(),
            name: u.name.clone(),
            profile: u.profile.clone(),
            creator: u.creator.as_ref().map(|m| m.to_string()),
            admins: u.admins.iter().map(|m| m.to_string()).collect(),
            roster: u.roster.iter().map(|m| m.to_string()).collect(),
            own_group: u.own_group.map(|g| g.hex()),
            groups: u.groups.iter().map(Group::from).collect(),
            pending_imports: u.pending_imports,
            messages_sent: u.messages_sent,
            equivocations: u
                .equivocations
                .iter()
                .map(|(o, g, e)| Equivocation {
                    owner: o.to_string(),
                    group: g.hex(),
                    epoch: *e,
                })
                .collect(),
            removed: u.removed,
            anchors: u
                .anchors
                .iter()
                .map(|a| Anchor {
                    domain: a.domain.clone(),
                    subject: a.subject.clone(),
                    not_after: a.not_after,
                    fingerprint: a.fingerprint.clone(),
                })
                .collect(),
            certificates: u
                .certs
                .iter()
                .map(|c| Certificate {
                    member: c.member.to_string(),
                    name: c.name.clone(),
                    domain: c.domain.clone(),
                    not_after: c.not_after,
                    expired: c.expired,
                })
                .collect(),
            ciphersuites: u.ciphersuites.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Peer {
    pub peer_id: String,
    pub addrs: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub member: String,
    pub peer_id: String,
    pub name: String,
    pub listen_addrs: Vec<String>,
    pub peers: Vec<Peer>,
    pub universes: Vec<Universe>,
    pub store_bytes: u64,
    /// Inputs rejected by the engine plus sync requests and gossip the node
    /// refused (rate limits, malformed).
    pub rejected_inputs: u64,
    /// Gossip publishes waiting for a subscribed peer.
    pub queued_publishes: usize,
    /// Each peer's link as the link policy sees it (older nodes: none).
    #[serde(default)]
    pub links: Vec<Link>,
}

/// One peer's link: health (`good`, `slow`, `saturated`, `silent`,
/// `down`) and the measurements behind it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Link {
    pub peer_id: String,
    #[serde(flatten)]
    pub status: mmls_core::link::LinkStatus,
}

/// One engine event, as streamed by `GET /v1/universes/{id}/stream`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    UniverseJoined {
        universe: String,
        name: String,
    },
    Message(Message),
    MemberAdded {
        universe: String,
        member: String,
    },
    MemberRemoved {
        universe: String,
        member: String,
    },
    RemovedFromUniverse {
        universe: String,
    },
    Stale {
        universe: String,
        group: String,
        owner: String,
    },
    Rejoined {
        universe: String,
        group: String,
        owner: String,
    },
    Equivocation {
        universe: String,
        owner: String,
        group: String,
        epoch: u64,
    },
    Rejected {
        universe: String,
        group: String,
        seq: u64,
        reason: String,
    },
    Committed {
        universe: String,
        epoch: u64,
        imports: usize,
        path: bool,
    },
    /// A member's certificate expired while it is in the universe.
    CertificateExpired {
        universe: String,
        member: String,
        not_after: i64,
    },
    /// An admin changed the universe's trust anchors.
    AnchorsChanged {
        universe: String,
        by: String,
    },
    /// A member said `device` is a device of `user`.
    DeviceLinked {
        universe: String,
        user: String,
        device: String,
    },
    /// `user` unlinked `device`: it is removed from the universe.
    DeviceUnlinked {
        universe: String,
        user: String,
        device: String,
    },
    /// The subscriber fell behind and missed this many events (read them
    /// with the messages endpoint).
    Lagged {
        missed: u64,
    },
    /// We sent a text (from any client of this node).
    Sent(ConversationEntry),
}

impl StreamEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            StreamEvent::UniverseJoined { .. } => "universe_joined",
            StreamEvent::Message(_) => "message",
            StreamEvent::MemberAdded { .. } => "member_added",
            StreamEvent::MemberRemoved { .. } => "member_removed",
            StreamEvent::RemovedFromUniverse { .. } => "removed_from_universe",
            StreamEvent::Stale { .. } => "stale",
            StreamEvent::Rejoined { .. } => "rejoined",
            StreamEvent::Equivocation { .. } => "equivocation",
            StreamEvent::Rejected { .. } => "rejected",
            StreamEvent::Committed { .. } => "committed",
            StreamEvent::CertificateExpired { .. } => "certificate_expired",
            StreamEvent::AnchorsChanged { .. } => "anchors_changed",
            StreamEvent::DeviceLinked { .. } => "device_linked",
            StreamEvent::DeviceUnlinked { .. } => "device_unlinked",
            StreamEvent::Lagged { .. } => "lagged",
            StreamEvent::Sent(_) => "sent",
        }
    }
}

impl From<&Event> for StreamEvent {
    fn from(e: &Event) -> Self {
        match e {
            Event::UniverseJoined { universe, name } => StreamEvent::UniverseJoined {
                universe: universe.hex(),
                name: name.clone(),
            },
            Event::Message(d) => StreamEvent::Message(Message::from(d)),
            Event::MemberAdded { universe, member } => StreamEvent::MemberAdded {
                universe: universe.hex(),
                member: member.to_string(),
            },
            Event::MemberRemoved { universe, member } => StreamEvent::MemberRemoved {
                universe: universe.hex(),
                member: member.to_string(),
            },
            Event::RemovedFromUniverse { universe } => StreamEvent::RemovedFromUniverse {
                universe: universe.hex(),
            },
            Event::Stale {
                universe,
                group,
                owner,
            } => StreamEvent::Stale {
                universe: universe.hex(),
                group: group.hex(),
                owner: owner.to_string(),
            },
            Event::Rejoined {
                universe,
                group,
                owner,
            } => StreamEvent::Rejoined {
                universe: universe.hex(),
                group: group.hex(),
                owner: owner.to_string(),
            },
            Event::Equivocation {
                universe,
                owner,
                group,
                epoch,
            } => StreamEvent::Equivocation {
                universe: universe.hex(),
                owner: owner.to_string(),
                group: group.hex(),
                epoch: *epoch,
            },
            Event::Rejected {
                universe,
                group,
                seq,
                reason,
            } => StreamEvent::Rejected {
                universe: universe.hex(),
                group: group.hex(),
                seq: *seq,
                reason: reason.clone(),
            },
            Event::Committed {
                universe,
                epoch,
                imports,
                path,
            } => StreamEvent::Committed {
                universe: universe.hex(),
                epoch: *epoch,
                imports: *imports,
                path: *path,
            },
            Event::CertificateExpired {
                universe,
                member,
                not_after,
            } => StreamEvent::CertificateExpired {
                universe: universe.hex(),
                member: member.to_string(),
                not_after: *not_after,
            },
            Event::AnchorsChanged { universe, by } => StreamEvent::AnchorsChanged {
                universe: universe.hex(),
                by: by.to_string(),
            },
            Event::DeviceLinked {
                universe,
                user,
                device,
            } => StreamEvent::DeviceLinked {
                universe: universe.hex(),
                user: user.clone(),
                device: device.to_string(),
            },
            Event::DeviceUnlinked {
                universe,
                user,
                device,
            } => StreamEvent::DeviceUnlinked {
                universe: universe.hex(),
                user: user.clone(),
                device: device.to_string(),
            },
        }
    }
}

/// The universe an engine event is about.
pub fn event_universe(e: &Event) -> mmls_core::Id32 {
    match e {
        Event::UniverseJoined { universe, .. }
        | Event::MemberAdded { universe, .. }
        | Event::MemberRemoved { universe, .. }
        | Event::RemovedFromUniverse { universe }
        | Event::Stale { universe, .. }
        | Event::Rejoined { universe, .. }
        | Event::Equivocation { universe, .. }
        | Event::Rejected { universe, .. }
        | Event::Committed { universe, .. }
        | Event::CertificateExpired { universe, .. }
        | Event::AnchorsChanged { universe, .. }
        | Event::DeviceLinked { universe, .. }
        | Event::DeviceUnlinked { universe, .. } => *universe,
        Event::Message(d) => d.universe,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// What `POST /v1/bundles` did (an import, entry by entry, as for a fetch
/// answer).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BundleImported {
    /// None for an introduction (a KeyPackage only).
    pub universe: Option<String>,
    pub exporter: Option<String>,
    pub accepted: usize,
    pub duplicate: usize,
    pub rejected: usize,
    pub key_package_ok: bool,
    pub waiting: usize,
    pub truncated: bool,
    /// Entries of send groups this node does not know (no Welcome for it):
    /// not kept beyond a small budget, not taken.
    #[serde(default)]
    pub held: usize,
}

impl From<&mmls_core::ImportReport> for BundleImported {
    fn from(r: &mmls_core::ImportReport) -> Self {
        BundleImported {
            universe: r.universe.map(|u| u.hex()),
            exporter: r.exporter.as_ref().map(|m| m.to_string()),
            accepted: r.accepted,
            duplicate: r.duplicate,
            rejected: r.rejected,
            key_package_ok: r.key_package_ok,
            waiting: r.waiting,
            truncated: r.truncated,
            held: r.held,
        }
    }
}

/// What a bundle export wrote (the CLI's `bundle export --json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BundleExported {
    pub universe: Option<String>,
    pub groups: usize,
    pub entries: usize,
    pub bytes: usize,
    pub truncated: bool,
    /// With `since_peer`: send groups where what that member holds was known.
    pub known_groups: usize,
}

/// How many of the other members are known to hold one of our texts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Receipt {
    pub received_by: usize,
    /// The other members of the universe now.
    pub of: usize,
    /// Who (member ids).
    pub by: Vec<String>,
}

/// One text of a conversation: ours or another member's, in order (ours in
/// send order, others' in delivery order, merged by time).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConversationEntry {
    /// We sent it.
    pub mine: bool,
    pub sender: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
    /// The sender's text number.
    pub seq: u64,
    pub text: String,
    /// Unix milliseconds: sent (ours) or received (others'); 0 if unknown.
    pub at: u64,
    /// The delivery cursor (others' texts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<u64>,
    /// Ours only, when the send position is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
    /// The user the sending device was linked to (others': when it
    /// arrived); the sender is then that user's device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A member of a universe as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberView {
    pub member: String,
    /// Nickname, else announced name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced: Option<String>,
    /// This node.
    pub me: bool,
    pub admin: bool,
    /// Directly connected to this node now.
    pub connected: bool,
    /// Unix ms of the last direct contact or text from it (since this node
    /// started; texts from the store's history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
    /// Its send group and our epoch of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_epoch: Option<u64>,
    /// The newest epoch of *our* send group its own commits acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_epoch: Option<u64>,
    /// Our send group's epoch minus `acked_epoch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_lag: Option<u64>,
    /// Our copy of its send group cannot move forward (we wait to be re-added).
    pub stale: bool,
    /// Highest text number received from it.
    pub received_texts: u64,
    /// The user it is a device of (its linked user, or its certified name
    /// in a federated universe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A contact: a member with an announced name or a local nickname.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Contact {
    pub member: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced: Option<String>,
}

/// `PUT /v1/contacts/{member}`: a nickname (null clears it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SetNickname {
    pub name: Option<String>,
}

/// `POST /v1/web/login`: a one-time login link for the web app.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoginLink {
    pub url: String,
    /// Seconds the link stays valid (once).
    pub expires_in: u64,
}
