//! `mmls-core`: the Multi-MLS protocol engine (draft-xue-multi-mls) on openmls.
//!
//! Sans-IO: a [`Participant`] takes bytes received, user commands and the
//! current time, and returns [`Output`]s (envelopes to publish, events for the
//! user, fetch requests). It never opens a socket, spawns a task or reads a
//! clock, so the libp2p node and the deterministic simulator drive the very
//! same code.

pub mod bundle;
mod cbor_scan;
pub mod ciphersuites;
pub mod devices;
pub mod envelope;
pub mod error;
pub mod federation;
pub mod id;
pub mod identity;
pub mod link;
pub mod participant;
pub mod profile;
pub mod relay;
pub mod store;
pub mod sync;
pub mod universe;

#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
#[cfg(test)]
mod tests;

pub use bundle::{Bundle, BundleError, ExportReport, ImportReport};
pub use envelope::{Envelope, EnvelopeError, Kind};
pub use error::MmlsError;
pub use id::Id32;
pub use identity::{Identity, MemberId};
pub use participant::{
    Config, Delivered, DeviceInfo, Event, GroupStatus, KpPoolStatus, KpRefusal, Output,
    Participant, Publish, SealedBatch, Topic, UniverseStatus,
};
pub use profile::Profile;
pub use relay::{relay, Relay};
pub use store::{SharedValues, Store};
pub use sync::{FetchRequest, FetchResponse, SyncSummary};
pub use universe::UniverseDef;

/// The mandatory ciphersuite, the only one a universe accepts unless its
/// creator lists others (see [`ciphersuites`]).
pub const DEFAULT_CIPHERSUITE: openmls::prelude::Ciphersuite =
    openmls::prelude::Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
