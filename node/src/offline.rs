//! A data dir whose node is not running: the engine opened in this process
//! for one command (bundle export and import work without a node, which is
//! the point of carrying files). The store is single-process, so this is
//! refused with [`NodeError::StoreInUse`] while a node runs; the caller
//! then goes through the node's API instead.
//!
//! Outputs of such a command are not lost: own stream entries (commits,
//! Welcomes, messages) sit in the store's outbox and the node publishes them
//! when it next runs; delivered messages are in the store's delivered log.

use crate::datadir::{store_error, DataDir, STORE_FILE};
use crate::driver::now_ms;
use crate::error::NodeError;
use crate::types;
use mmls_core::Participant;
use std::path::Path;

/// Runs `f` on the engine of the data dir at `dir` (node not running).
pub fn with_engine<T>(
    dir: &Path,
    f: impl FnOnce(&mut Participant) -> Result<T, NodeError>,
) -> Result<T, NodeError> {
    let dd = DataDir::open(dir)?;
    let identity = dd.identity()?;
    let store = dd.open_store()?;
    let (mut p, _outbox) =
        Participant::open(identity, store, mmls_core::Config::default(), now_ms())
            .map_err(|e| store_error(&dd.file(STORE_FILE), e))?;
    f(&mut p)
}

/// The universes of an engine, as the API lists them.
pub fn universes(p: &mut Participant) -> Vec<types::Universe> {
    p.universes()
        .iter()
        .filter_map(|u| p.status(u).ok())
        .map(|s| types::Universe::from(&s))
        .collect()
}
