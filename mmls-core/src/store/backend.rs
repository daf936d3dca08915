//! Where committed data lives: a redb database (a file: durable, checked on
//! open) or plain ordered maps (simulations and tests).
//!
//! redb's in-memory backend used to stand in for the second: it gave no
//! durability, yet every step paid for a B-tree write transaction (page
//! allocation, checksums, copies), about a third of an application
//! message's cost in the engine. The maps keep exactly what a memory store
//! needs: committed values, atomic commits, and independent snapshots.
//!
//! openmls's state is not copied into the maps: the store's `MlsStorage`
//! already holds all of it in memory (committed values plus the step's
//! undo log), so for a memory store that one image is the committed state
//! and a snapshot is taken from it. A second serialized copy per store
//! would double the largest part of a simulated node.

use super::mls_storage::{SharedValues, Value};
use super::{lock, KeyValue, Pending, StoreError, Table};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

/// openmls's state (the `MlsStorage` key/value pairs).
const MLS_TABLE: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("mls");

fn def(t: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(t.name())
}

/// The committed tables of a memory store.
#[derive(Clone, Default)]
pub(super) struct Maps {
    /// Values are shared: a snapshot copies pointers, and with `shared`
    /// the stores of one simulation hold each large value once (every
    /// node's log keeps the same envelopes, byte for byte).
    tables: [BTreeMap<Vec<u8>, Value>; Table::ALL.len()],
    shared: Option<SharedValues>,
    /// openmls's state a snapshot starts from, handed over (and emptied)
    /// when its store opens: afterwards the store's `MlsStorage` is the one
    /// copy.
    mls: HashMap<Vec<u8>, Vec<u8>>,
}

impl Maps {
    /// Empty tables whose large values go through `shared`.
    pub(super) fn sharing(shared: Option<SharedValues>) -> Maps {
        Maps {
            shared,
            ..Maps::default()
        }
    }
}

pub(super) enum Backend {
    Redb(Arc<Database>),
    Memory(Box<Mutex<Maps>>),
}

/// openmls's committed state, as one write to apply.
pub(super) type MlsWrites<'a> = dyn Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a;

impl Backend {
    /// Creates the tables if missing and returns openmls's committed state.
    pub(super) fn init(&self) -> Result<HashMap<Vec<u8>, Vec<u8>>, StoreError> {
        match self {
            Backend::Memory(m) => Ok(std::mem::take(&mut lock(m).mls)),
            Backend::Redb(db) => {
                let txn = db.begin_write()?;
                for t in Table::ALL {
                    txn.open_table(def(t))?;
                }
                txn.open_table(MLS_TABLE)?;
                txn.commit()?;
                let read = db.begin_read()?;
                let table = read.open_table(MLS_TABLE)?;
                let mut values = HashMap::new();
                for entry in table.iter()? {
                    let (k, v) = entry?;
                    values.insert(k.value().to_vec(), v.value().to_vec());
                }
                Ok(values)
            }
        }
    }

    /// The committed value at `key`.
    pub(super) fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Backend::Memory(m) => Ok(lock(m).tables[t.index()].get(key).map(|v| v.to_vec())),
            Backend::Redb(db) => {
                let read = db.begin_read()?;
                let table = read.open_table(def(t))?;
                Ok(table.get(key)?.map(|v| v.value().to_vec()))
            }
        }
    }

    /// Runs `f` over the committed entries of `t` within `bounds`, in key
    /// order.
    pub(super) fn range<R>(
        &self,
        t: Table,
        bounds: (Bound<&[u8]>, Bound<&[u8]>),
        f: impl FnOnce(&mut dyn Iterator<Item = Result<KeyValue, StoreError>>) -> R,
    ) -> Result<R, StoreError> {
        match self {
            Backend::Memory(m) => {
                let maps = lock(m);
                let mut it = maps.tables[t.index()]
                    .range::<[u8], _>(bounds)
                    .map(|(k, v)| Ok((k.clone(), v.to_vec())));
                Ok(f(&mut it))
            }
            Backend::Redb(db) => {
                let read = db.begin_read()?;
                let table = read.open_table(def(t))?;
                let mut it = table.range::<&[u8]>(bounds)?.map(|entry| {
                    let (k, v) = entry?;
                    Ok((k.value().to_vec(), v.value().to_vec()))
                });
                Ok(f(&mut it))
            }
        }
    }

    /// Whether commits go to a file (and can be deferred to a flush).
    pub(super) fn is_file(&self) -> bool {
        matches!(self, Backend::Redb(_))
    }

    /// Applies a step's writes atomically: one redb transaction, durable
    /// (fsync) or deferred to the next durable one (group commit).
    pub(super) fn apply(
        &self,
        pending: &Pending,
        mls: &mut MlsWrites<'_>,
        durable: bool,
    ) -> Result<(), StoreError> {
        match self {
            Backend::Memory(m) => {
                let mut guard = lock(m);
                let maps = &mut *guard;
                for t in Table::ALL {
                    let table = &mut maps.tables[t.index()];
                    for (k, v) in &pending.tables[t.index()] {
                        match v {
                            Some(v) => {
                                let v = match &maps.shared {
                                    Some(pool) => pool.share(v.clone()),
                                    None => Value::from(v.as_slice()),
                                };
                                table.insert(k.clone(), v)
                            }
                            None => table.remove(k),
                        };
                    }
                }
                // openmls's committed state is the store's `MlsStorage`
                // image itself (see the module documentation).
                let _ = mls;
                Ok(())
            }
            Backend::Redb(db) => {
                let mut txn = db.begin_write()?;
                txn.set_durability(if durable {
                    Durability::Immediate
                } else {
                    Durability::None
                })?;
                for t in Table::ALL {
                    let writes = &pending.tables[t.index()];
                    if writes.is_empty() {
                        continue;
                    }
                    let mut table = txn.open_table(def(t))?;
                    for (k, v) in writes {
                        match v {
                            Some(v) => table.insert(k.as_slice(), v.as_slice())?,
                            None => table.remove(k.as_slice())?,
                        };
                    }
                }
                {
                    let mut table = txn.open_table(MLS_TABLE)?;
                    for (k, v) in mls {
                        match v {
                            Some(v) => table.insert(k, v)?,
                            None => table.remove(k)?,
                        };
                    }
                }
                txn.commit()?;
                Ok(())
            }
        }
    }

    /// An independent memory copy of the committed state; `mls` is
    /// openmls's committed state for a memory backend (which does not keep
    /// its own copy).
    pub(super) fn snapshot(
        &self,
        mls: impl FnOnce() -> HashMap<Vec<u8>, Vec<u8>>,
    ) -> Result<Backend, StoreError> {
        let maps = match self {
            Backend::Memory(m) => {
                let tables = lock(m).tables.clone();
                Maps {
                    tables,
                    shared: None,
                    mls: mls(),
                }
            }
            Backend::Redb(db) => {
                let mut maps = Maps::default();
                let read = db.begin_read()?;
                for t in Table::ALL {
                    let src = read.open_table(def(t))?;
                    for entry in src.iter()? {
                        let (k, v) = entry?;
                        maps.tables[t.index()].insert(k.value().to_vec(), v.value().into());
                    }
                }
                let src = read.open_table(MLS_TABLE)?;
                for entry in src.iter()? {
                    let (k, v) = entry?;
                    maps.mls.insert(k.value().to_vec(), v.value().to_vec());
                }
                maps
            }
        };
        Ok(Backend::Memory(Box::new(Mutex::new(maps))))
    }

    /// Entries and key + value bytes of each committed table of a memory
    /// backend, in [`Table::ALL`] order (empty for redb).
    pub(super) fn memory_usage(&self) -> Vec<(Table, usize, usize)> {
        match self {
            Backend::Memory(m) => {
                let maps = lock(m);
                Table::ALL
                    .iter()
                    .map(|t| {
                        let table = &maps.tables[t.index()];
                        let bytes = table.iter().map(|(k, v)| k.len() + v.len()).sum();
                        (*t, table.len(), bytes)
                    })
                    .collect()
            }
            Backend::Redb(_) => vec![],
        }
    }
}
