//! Typed errors of the node (daemon side) and of the API client.
//!
//! Every error that can reach a user names what failed and, where there is
//! one, the way out (`run mmls init first`, `move the store away and rejoin`).
//! Each has a stable machine-readable `code` that the local API puts in its
//! JSON error body, so the CLI and scripts can match on it.

use mmls_core::{BundleError, MmlsError};
use std::path::PathBuf;

/// Errors of the node: data dir, startup, engine calls, shutdown.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("no identity in {}: run `mmls init` first", .0.display())]
    NoIdentity(PathBuf),
    #[error("{} already holds an identity (identity.key); refusing to overwrite it", .0.display())]
    IdentityExists(PathBuf),
    #[error("identity key {} is unreadable: {reason}", path.display())]
    CorruptIdentity { path: PathBuf, reason: String },
    #[error(
        "the store {} is corrupt or unreadable ({reason}). To recover: stop the node, move the \
         file away (e.g. `mv {} {}.bad`), start the node again and run `mmls rejoin <universe>` \
         for each universe: the identity key is kept, so peers re-add this node",
        path.display(), path.display(), path.display()
    )]
    CorruptStore { path: PathBuf, reason: String },
    #[error("the store {} is in use by another process (is a node already running on this data dir?)", .0.display())]
    StoreInUse(PathBuf),
    #[error(
        "{} is not an mmls data dir (no identity.key or store.redb in it): nothing wiped",
        .0.display()
    )]
    NotADataDir(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node.json in {} is unreadable: {reason}", path.display())]
    CorruptNodeInfo { path: PathBuf, reason: String },
    #[error("{0}")]
    Engine(#[from] MmlsError),
    #[error("{0}")]
    Bundle(#[from] mmls_core::BundleError),
    #[error("network: {0}")]
    Network(String),
    #[error("refusing to serve the API on non-loopback address {0}: set allow_remote_api to do this deliberately")]
    RemoteApiRefused(std::net::SocketAddr),
    #[error("cannot bind the API on {addr}: {source}")]
    ApiBind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("the node has stopped")]
    Stopped,
    #[error(
        "this device holds no user key: link it first (`mmls device link`, or `mmls device link \
         --key FILE` with the key file exported from the user's first device)"
    )]
    NoUserKey,
    #[error(
        "this device is already linked to user {0}; a device belongs to one user: unlink it \
         there first"
    )]
    OtherUser(String),
    #[error("user key {} is unreadable: {reason}", path.display())]
    CorruptUserKey { path: PathBuf, reason: String },
}

impl NodeError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> NodeError {
        NodeError::Io {
            path: path.into(),
            source,
        }
    }

    /// Stable machine-readable code (the API's `error.code`).
    pub fn code(&self) -> &'static str {
        match self {
            NodeError::Engine(e) => engine_code(e),
            NodeError::Bundle(e) => bundle_code(e),
            NodeError::InvalidInput(_) => "bad_request",
            NodeError::Timeout(_) => "timeout",
            NodeError::Stopped => "stopped",
            NodeError::Network(_) => "network",
            NodeError::NoIdentity(_) => "no_identity",
            NodeError::IdentityExists(_) => "identity_exists",
            NodeError::CorruptStore { .. } => "corrupt_store",
            NodeError::StoreInUse(_) => "store_in_use",
            NodeError::NoUserKey => "no_user_key",
            NodeError::OtherUser(_) => "other_user",
            NodeError::CorruptUserKey { .. } => "bad_user_key",
            _ => "internal",
        }
    }

    /// The HTTP status the API answers this error with.
    pub fn http_status(&self) -> u16 {
        match self {
            NodeError::Engine(e) => engine_status(e),
            NodeError::Bundle(BundleError::NotInUniverse(_)) => 404,
            NodeError::Bundle(BundleError::TooLarge(_) | BundleError::OverLimit(_)) => 413,
            NodeError::Bundle(_) | NodeError::InvalidInput(_) => 400,
            NodeError::Timeout(_) | NodeError::Stopped => 503,
            NodeError::IdentityExists(_) | NodeError::OtherUser(_) => 409,
            NodeError::NoUserKey | NodeError::CorruptUserKey { .. } => 400,
            _ => 500,
        }
    }
}

fn bundle_code(e: &BundleError) -> &'static str {
    match e {
        BundleError::NotABundle => "not_a_bundle",
        BundleError::UnsupportedVersion(_) => "unsupported_bundle_version",
        BundleError::TooLarge(_) => "too_large",
        BundleError::Corrupt(_) => "corrupt_bundle",
        BundleError::ForeignUniverse(_) => "foreign_universe",
        BundleError::NotInUniverse(_) => "not_in_universe",
        BundleError::OverLimit(_) => "bundle_over_limit",
    }
}

fn engine_code(e: &MmlsError) -> &'static str {
    match e {
        MmlsError::UnknownUniverse(_) => "unknown_universe",
        MmlsError::NotInUniverse(_) => "not_in_universe",
        MmlsError::UniverseNotReady(_) => "not_ready",
        MmlsError::UnknownGroup(_) | MmlsError::NotInGroup(_) => "unknown_group",
        MmlsError::InvalidMemberId(_) => "invalid_member",
        MmlsError::NotAMember(_) => "not_a_member",
        MmlsError::AlreadyMember(_) => "already_member",
        MmlsError::StillMember(_) => "still_member",
        MmlsError::NotAdmin => "not_admin",
        MmlsError::UnknownUser(_) => "unknown_user",
        MmlsError::StaleDeviceLink => "stale_device_link",
        MmlsError::DeviceLinkFromFuture { .. } => "device_link_from_future",
        MmlsError::MissingKeyPackage(_) => "missing_key_package",
        MmlsError::NoMembers => "no_members",
        MmlsError::TooLarge(..) => "too_large",
        MmlsError::Federation(_) => "certificate_refused",
        MmlsError::CiphersuiteRefused(_)
        | MmlsError::UnsupportedCiphersuite(_)
        | MmlsError::InvalidCiphersuites(_)
        | MmlsError::CiphersuiteNotFederable(_)
        | MmlsError::CiphersuiteMismatch { .. } => "bad_ciphersuite",
        MmlsError::Store(_) | MmlsError::Internal(_) => "internal",
        _ => "rejected",
    }
}

fn engine_status(e: &MmlsError) -> u16 {
    match e {
        MmlsError::UnknownUniverse(_)
        | MmlsError::NotInUniverse(_)
        | MmlsError::UnknownGroup(_)
        | MmlsError::NotInGroup(_)
        | MmlsError::NotAMember(_)
        | MmlsError::UnknownUser(_) => 404,
        MmlsError::UniverseNotReady(_) | MmlsError::MissingKeyPackage(_) => 503,
        MmlsError::AlreadyMember(_) | MmlsError::StillMember(_) | MmlsError::StaleDeviceLink => 409,
        MmlsError::NotAdmin => 403,
        MmlsError::TooLarge(..) => 413,
        MmlsError::Store(_) | MmlsError::Internal(_) => 500,
        _ => 400,
    }
}

/// Errors of the API client ([`crate::client::Client`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("node is not running (no api.addr in {})", .0.display())]
    NotRunning(PathBuf),
    #[error("no API token in {}: run `mmls init` first", .0.display())]
    NoToken(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The node answered with an error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// Whatever listens at the data dir's API address could not prove it
    /// holds the data dir's token, so the token was not sent to it.
    #[error(
        "the program at {addr} does not prove it knows this data dir's API token, so the \
         token was not sent (a stale api.addr after a crash, another program on that port, \
         or a data dir re-initialised while its node ran)"
    )]
    Unproven { addr: String },
    /// The node could not be reached.
    #[error("cannot reach the node at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// The node's answer was not what the API promises.
    #[error("unexpected answer from the node: {0}")]
    Decode(String),
}

impl ClientError {
    /// The server's error code, if the node answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}
