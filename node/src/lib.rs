//! `node`: the MMLS daemon. It drives the sans-IO engine (`mmls-core`) over
//! a libp2p swarm and serves a local HTTP API.
//!
//! * [`DataDir`] — the data directory (identity key, store, API token).
//! * [`Node::start`] → [`NodeHandle`] — a node in-process (tests, demo, CLI).
//! * [`run`] — a node until SIGINT/SIGTERM (`mmls run`).
//! * [`Client`] — a blocking client of a running node's API (the CLI).
//!
//! Module map: `config` (settings), `datadir` (files), `swarm` (libp2p
//! behaviour and sync codec), `driver` (the event loop owning the engine),
//! `handle` (start/stop and the async handle), `offline` (the engine of
//! a data dir whose node is not running), `api` (axum server), `types`
//! (the API's JSON shapes), `client` (API client), `error`, `names`
//! (display names and nicknames), `own` (where our texts went, for
//! receipts), `rate` (per-peer rate limits that outlive reconnects),
//! `views` (conversation, members, receipts on the driver task),
//! `web` (the browser app on the API port and its session login).

pub mod api;
pub mod api_proof;
mod batch;
pub mod client;
pub mod config;
pub mod datadir;
mod driver;
pub mod error;
mod handle;
mod meter;
pub mod names;
pub mod offline;
mod own;
mod rate;
mod redial;
pub mod swarm;
pub mod types;
pub mod views;
pub mod web;
pub mod wipe;

pub use client::{Client, EventStream};
pub use config::{Config, Limits, Timing};
pub use datadir::{DataDir, NodeInfo};
pub use driver::{now_ms, NodeStatus, PeerInfo};
pub use error::{ClientError, NodeError};
pub use handle::{run, shutdown_signal, Node, NodeHandle};

/// Re-exported so users of the node need not depend on these directly.
pub use libp2p::{Multiaddr, PeerId};
pub use mmls_core;
