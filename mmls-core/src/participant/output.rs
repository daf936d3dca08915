//! What the engine hands its driver: envelopes to publish, fetches to make,
//! events for the user, and the read-only status views.

use super::*;

/// Where the driver publishes an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Topic {
    /// Everyone: KeyPackages, requests, Welcomes, rejoin requests.
    Lobby,
    /// The members of one universe.
    Universe(Id32),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    pub topic: Topic,
    pub bytes: Vec<u8>,
    /// Outbox id to acknowledge once published (own stream entries only).
    pub outbox_id: Option<u64>,
}

/// A delivered application message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    pub universe: Id32,
    pub sender: MemberId,
    /// The sender's per-universe message number (1, 2, ...).
    pub seq: u64,
    pub body: ByteBuf,
    /// Position in this node's delivered log (for paging).
    pub cursor: u64,
    pub group: Id32,
    pub epoch: u64,
    /// Driver time (ms) when it was delivered here.
    pub received_at: u64,
    /// The user the sender spoke for when it arrived: the user it was a
    /// linked device of, else (federated universes) its certified name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    UniverseJoined {
        universe: Id32,
        name: String,
    },
    Message(Delivered),
    MemberAdded {
        universe: Id32,
        member: MemberId,
    },
    MemberRemoved {
        universe: Id32,
        member: MemberId,
    },
    /// We were removed from the universe.
    RemovedFromUniverse {
        universe: Id32,
    },
    /// Our state in this group cannot be brought forward; a rejoin was asked.
    Stale {
        universe: Id32,
        group: Id32,
        owner: MemberId,
    },
    Rejoined {
        universe: Id32,
        group: Id32,
        owner: MemberId,
    },
    /// Two views of the same (group, epoch) disagree: the owner equivocated.
    Equivocation {
        universe: Id32,
        owner: MemberId,
        group: Id32,
        epoch: u64,
    },
    /// A stream entry we had accepted failed to process and was dropped.
    Rejected {
        universe: Id32,
        group: Id32,
        seq: u64,
        reason: String,
    },
    /// A member's certificate expired while it is in the universe: it stays
    /// (flagged in status) until it renews or an admin removes it.
    CertificateExpired {
        universe: Id32,
        member: MemberId,
        not_after: i64,
    },
    /// An admin changed the universe's trust anchors.
    AnchorsChanged {
        universe: Id32,
        by: MemberId,
    },
    /// A member said in its send group that `device` is a device of
    /// `user` (its own, or one it brings in: the add follows).
    DeviceLinked {
        universe: Id32,
        user: String,
        device: MemberId,
    },
    /// `user` unlinked `device`: it is removed from the universe.
    DeviceUnlinked {
        universe: Id32,
        user: String,
        device: MemberId,
    },
    /// Own commit made (for metrics: `path` = it was an MMLS update).
    Committed {
        universe: Id32,
        epoch: u64,
        imports: usize,
        path: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    Publish(Publish),
    Event(Event),
    /// Ask peers for this; feed the answer to `handle_fetch_response`.
    Fetch(FetchRequest),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: Id32,
    pub owner: MemberId,
    pub epoch: u64,
    pub next_seq: u64,
    pub buffered: usize,
    pub blocked: bool,
    pub stale: bool,
    /// Short hash of the current epoch authenticator (compare across nodes).
    pub auth: String,
    pub members: usize,
    /// When (driver time) its owner last renewed its keys with a path
    /// commit, as far as this node saw; None: not since it joined.
    #[serde(default)]
    pub last_key_update: Option<u64>,
    /// Why the stream is stuck, if it is: the missing seq, or the
    /// (group, epoch) PSKs its next commit waits for.
    pub waiting_for: Option<String>,
    /// Its ciphersuite (code point): each owner's own choice among the
    /// universe's `ciphersuites`.
    #[serde(default = "crate::participant::output::mandatory_suite")]
    pub ciphersuite: u16,
}

fn mandatory_suite() -> u16 {
    crate::ciphersuites::X25519_AES128GCM
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UniverseStatus {
    pub id: Id32,
    pub name: Option<String>,
    pub profile: Option<String>,
    pub creator: Option<MemberId>,
    pub admins: Vec<MemberId>,
    pub roster: Vec<MemberId>,
    pub own_group: Option<Id32>,
    pub groups: Vec<GroupStatus>,
    pub pending_imports: usize,
    pub messages_sent: u64,
    pub equivocations: Vec<(MemberId, Id32, u64)>,
    pub removed: bool,
    /// Federation: the universe's domains and anchors (empty without).
    #[serde(default)]
    pub anchors: Vec<AnchorStatus>,
    /// Federation: each member's certificate, as last validated.
    #[serde(default)]
    pub certs: Vec<MemberCert>,
    /// The ciphersuites the universe accepts (code points, the creator's
    /// preference first).
    #[serde(default)]
    pub ciphersuites: Vec<u16>,
}

/// A domain and its anchor, for display.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnchorStatus {
    pub domain: String,
    /// The anchor's subject name.
    pub subject: String,
    pub not_after: i64,
    /// SHA-256 of the anchor certificate (DER), hex.
    pub fingerprint: String,
}

/// A member's certificate as this node last validated it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberCert {
    pub member: MemberId,
    pub name: String,
    pub domain: String,
    pub not_after: i64,
    /// Its certificate expired while it was in the universe.
    pub expired: bool,
}
