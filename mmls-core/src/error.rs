//! The engine's typed errors. Every rejection of input from the network or
//! the API is one of these, and leaves the participant's state unchanged.

use crate::envelope::EnvelopeError;
use crate::id::Id32;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum MmlsError {
    #[error("envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("invalid member id {0:?}: expected an Ed25519 PeerId (12D3KooW...)")]
    InvalidMemberId(String),
    #[error("invalid identity key: expected 32 bytes")]
    InvalidIdentityKey,
    #[error("credential does not name the PeerId of its signature key")]
    BadCredential,
    #[error("bad signature")]
    BadSignature,
    #[error("unknown universe {0}")]
    UnknownUniverse(Id32),
    #[error("universe {0} is still being joined (its definition has not arrived yet)")]
    UniverseNotReady(Id32),
    #[error("unknown send group {0}")]
    UnknownGroup(Id32),
    #[error("{0} is not a member of this universe")]
    NotAMember(String),
    #[error("{0} is already a member of this universe")]
    AlreadyMember(String),
    #[error("only an admin of the universe may do this")]
    NotAdmin,
    #[error("{0} is not a device of the sender's user")]
    NotYourDevice(String),
    #[error("an equal or newer statement about this device is already known")]
    StaleDeviceLink,
    #[error(
        "device statement dated {at} ms, more than 10 minutes after this node's clock ({now} ms)"
    )]
    DeviceLinkFromFuture { at: u64, now: u64 },
    #[error(
        "no linked device of user {0} is known here: its devices announce themselves on the \
         lobby once they run (`mmls device list` shows the ones heard of)"
    )]
    UnknownUser(String),
    #[error("no KeyPackage known for {0}; a request was broadcast, try again shortly")]
    MissingKeyPackage(String),
    #[error("a universe needs at least one other member")]
    NoMembers,
    #[error("only the owner (leaf 0) may send {what} in send group {group}")]
    NotOwner { what: &'static str, group: Id32 },
    #[error("duplicate or replayed message (group {group}, seq {seq})")]
    Duplicate { group: Id32, seq: u64 },
    #[error("message for universe {0}, which this node is not in")]
    NotInUniverse(Id32),
    #[error("this node is still a member of universe {0}: leave it before forgetting it")]
    StillMember(Id32),
    #[error("message is for send group {0}, which this node is not in")]
    NotInGroup(Id32),
    #[error("send group {0} was dropped for good (its owner replaced it, or left)")]
    GroupRetired(Id32),
    #[error("ciphersuite {0:#06x} is not accepted by this universe")]
    CiphersuiteRefused(u16),
    #[error(
        "ciphersuite {0:#06x} is not implemented by this node (it implements 0x0001, 0x0002, 0x0003)"
    )]
    UnsupportedCiphersuite(u16),
    #[error("invalid ciphersuite list: {0}")]
    InvalidCiphersuites(String),
    #[error(
        "ciphersuite {0:#06x} signs with P-256, but a federated universe's certificates \
         certify Ed25519 keys: accept 0x0001 or 0x0003 instead"
    )]
    CiphersuiteNotFederable(u16),
    #[error("a KeyPackage in ciphersuite {got:#06x} for a send group in {expected:#06x}")]
    CiphersuiteMismatch { expected: u16, got: u16 },
    #[error("authenticated data does not match the envelope: {0}")]
    AadMismatch(&'static str),
    #[error("malformed MLS message: {0}")]
    MalformedMls(String),
    #[error("MLS processing failed: {0}")]
    Mls(String),
    /// openmls's `PskError::KeyNotFound` on an authenticated commit: it
    /// imports a PSK we do not hold, and, when we hold that group past the
    /// epoch named, never will (we were re-added after it).
    #[error(
        "a commit of send group {0} imports a PSK this member does not hold \
         (PskError: KeyNotFound)"
    )]
    PskNotHeld(Id32),
    #[error("unexpected message: {0}")]
    Unexpected(String),
    #[error(
        "entry of send group {0}, which no member we know owns (yet): held unverified, \
         not relayed"
    )]
    Held(Id32),
    #[error("buffer for send group {0} is full")]
    BufferFull(Id32),
    #[error("message too large: {0} bytes (limit {1})")]
    TooLarge(usize, usize),
    #[error(
        "owner {owner} equivocated: two different states of send group {group} at epoch {epoch}"
    )]
    Equivocation {
        owner: crate::identity::MemberId,
        group: Id32,
        epoch: u64,
    },
    #[error(transparent)]
    Federation(#[from] crate::federation::FederationError),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(
        "the disk did not take a group commit ({0}); the state in memory is ahead of it: \
         reopen the store (the node restarts) to carry on from the last durable state"
    )]
    Unflushed(String),
}

impl MmlsError {
    /// Errors caused by input we were sent (as opposed to our own state or
    /// disk); drivers count these as rejected input.
    pub fn is_rejection(&self) -> bool {
        !matches!(
            self,
            MmlsError::Store(_) | MmlsError::Internal(_) | MmlsError::Unflushed(_)
        )
    }
    /// A duplicate is normal in gossip; drivers log it quietly.
    pub fn is_duplicate(&self) -> bool {
        matches!(
            self,
            MmlsError::Duplicate { .. } | MmlsError::StaleDeviceLink
        )
    }

    pub(crate) fn mls(e: impl std::fmt::Debug) -> MmlsError {
        let mut s = format!("{e:?}");
        truncate_at_char(&mut s, 300);
        MmlsError::Mls(s)
    }
}

/// Cuts `s` to at most `max` bytes, at a character boundary: error texts
/// quote hostile input, and `String::truncate` inside a multi-byte
/// character panics (found by fuzzing: a remote crash).
pub(crate) fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}
