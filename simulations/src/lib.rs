//! `mmls-sim`: a deterministic discrete-event simulator that drives many
//! real `mmls-core` participants (real openmls crypto) over a modelled
//! network: latency, jitter, loss, bandwidth, topologies, partitions,
//! churn, state loss and compromise. See `simulations/README.md`.
//!
//! One concept per module:
//! - [`scenario`]: the TOML scenario files, validated;
//! - [`network`]: links, topologies, partitions;
//! - [`overlay`]: the gossip overlay (gossipsub's mesh, IHAVE/IWANT);
//! - [`sim`]: the event queue in virtual time and the driver of the engines;
//! - [`attacker`]: the compromise model and the PCS measurement;
//! - [`metrics`]: the metrics object and time series;
//! - [`plots`]: SVG plots;
//! - [`report`]: writing the outputs and the human summary.

pub mod attacker;
pub mod metrics;
pub mod network;
pub mod overlay;
pub mod plots;
pub mod report;
pub mod scenario;
pub mod sim;

pub use metrics::Metrics;
pub use scenario::Scenario;
pub use sim::{run, RunOptions, SimOutput};
