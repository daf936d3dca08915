//! Embedded, crash-safe, transactional store: redb on disk, plain maps in
//! memory (see `backend`).
//!
//! The engine makes each *step* (one openmls call plus its own bookkeeping)
//! one store transaction: every write of a step — to the engine's tables
//! ([`Table`]) and to openmls's state ([`MlsStorage`]) — is buffered in memory
//! and applied in a single redb write transaction by [`Store::commit`], or
//! discarded by [`Store::rollback`]. A crash at any point leaves either the
//! whole step or none of it on disk.
//!
//! Reads ([`Store::get`], [`Store::range`], the openmls getters) see the
//! step's pending writes.

mod backend;
mod mls_storage;
#[cfg(test)]
pub(crate) use mls_storage::SLOW_DECODES;

use mls_storage::MlsState;
pub use mls_storage::{MlsStorage, MlsStorageError, SharedValues};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

use backend::Backend;
use openmls_rust_crypto::RustCrypto;
use redb::Database;

/// The engine's tables. Each is its own redb table of `&[u8] -> &[u8]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// The engine's node row and small per-member sets (see
    /// `participant::state`).
    Meta,
    Log,
    Outbox,
    Delivered,
    Buffer,
    /// The latest KeyPackage heard from each member, by member id.
    KeyPackages,
    /// Per (send group, member): the newest epoch of that group the member's
    /// own commits have named, i.e. the oldest epoch it could still import.
    PskViews,
    /// Own texts by (universe, per-sender seq), for re-sends to rejoiners.
    Sent,
    /// Per universe: the engine's universe state, by universe id.
    Universes,
    /// Per send group: its engine state, by (universe id, group id).
    Groups,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 10] = [
        Table::Meta,
        Table::Log,
        Table::Outbox,
        Table::Delivered,
        Table::Buffer,
        Table::KeyPackages,
        Table::PskViews,
        Table::Sent,
        Table::Universes,
        Table::Groups,
    ];

    /// The redb table name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Log => "log",
            Table::Outbox => "outbox",
            Table::Delivered => "delivered",
            Table::Buffer => "buffer",
            Table::KeyPackages => "key_packages",
            Table::PskViews => "psk_views",
            Table::Sent => "sent",
            Table::Universes => "universes",
            Table::Groups => "groups",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// redb page cache of a file-backed store.
const FILE_CACHE_BYTES: usize = 64 << 20;
/// A `(key, value)` entry, as returned by [`Store::range`].
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error("cannot open the store at {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    /// The stored data is corrupt or inconsistent.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// A file system error.
    #[error("store I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A redb transaction could not be started.
    #[error("store transaction error: {0}")]
    Txn(#[from] redb::TransactionError),
    /// A redb transaction could not be committed.
    #[error("store commit error: {0}")]
    Commit(#[from] redb::CommitError),
    /// A redb table could not be opened.
    #[error("store table error: {0}")]
    Table(#[from] redb::TableError),
    /// A redb storage (read/write) error.
    #[error("store storage error: {0}")]
    Storage(redb::StorageError),
    /// The transaction's durability could not be set.
    #[error("store durability error: {0}")]
    Durability(#[from] redb::SetDurabilityError),
    /// A value could not be (de)serialized.
    #[error("store serialization error: {0}")]
    Serialization(String),
    /// An error of the openmls storage provider.
    #[error(transparent)]
    Mls(#[from] MlsStorageError),
    /// A durable write was asked for while a group commit's flush was
    /// still being written: it could reach the disk before that flush, or
    /// without it if the flush failed.
    #[error("a flush is in flight: finish it first")]
    FlushInFlight,
}

impl From<redb::StorageError> for StoreError {
    fn from(e: redb::StorageError) -> Self {
        match e {
            redb::StorageError::Corrupted(msg) => StoreError::Corrupt(msg),
            other => StoreError::Storage(other),
        }
    }
}

/// Pending writes of the current step, per table (`None`: delete).
#[derive(Default)]
struct Pending {
    tables: [BTreeMap<Vec<u8>, Option<Vec<u8>>>; Table::ALL.len()],
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.tables.iter().all(BTreeMap::is_empty)
    }

    fn clear(&mut self) {
        self.tables.iter_mut().for_each(BTreeMap::clear);
    }
}

/// Steps committed with [`Store::commit_deferred`] and not yet flushed
/// (file stores only). They are kept here, not in redb: a redb commit,
/// even without fsync, writes and copies pages, and was a third of a
/// node's CPU under load; one transaction per flush does that once.
#[derive(Default)]
struct Deferred {
    tables: Pending,
    /// openmls keys written since the flush; their values are read from
    /// the image at the flush.
    mls_keys: HashSet<Vec<u8>>,
}

impl Deferred {
    fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.mls_keys.is_empty()
    }

    fn clear(&mut self) {
        self.tables.clear();
        self.mls_keys.clear();
    }
}

/// Deferred steps frozen for a flush that another thread is writing
/// ([`Store::begin_flush`]). openmls's values are copied out: the image
/// moves on with the next steps while this one is on its way to the disk.
struct Frozen {
    tables: Pending,
    mls: Vec<(Vec<u8>, Option<mls_storage::Value>)>,
}

struct Inner {
    backend: Backend,
    /// The database file, `None` in memory.
    path: Option<PathBuf>,
    pending: Mutex<Pending>,
    mls: MlsStorage,
    deferred: Mutex<Deferred>,
    /// The flush being written, readable until it is on disk.
    flushing: Mutex<Option<Arc<Frozen>>>,
}

/// A group commit's flush, frozen by [`Store::begin_flush`]: its one
/// durable transaction can be written on another thread
/// ([`FlushWrite::write`]) while the next steps run, and is handed back to
/// [`Store::end_flush`]. Overlapping the fsync with the next batch's work
/// is what lets a node on disk keep up with one on tmpfs.
pub struct FlushWrite {
    store: Store,
    frozen: Arc<Frozen>,
}

impl std::fmt::Debug for FlushWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushWrite")
            .field("mls_values", &self.frozen.mls.len())
            .finish()
    }
}

impl FlushWrite {
    /// Writes the frozen steps in one durable transaction (blocks for the
    /// fsync).
    pub fn write(&self) -> Result<(), StoreError> {
        let mut mls = self
            .frozen
            .mls
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()));
        self.store
            .inner
            .backend
            .apply(&self.frozen.tables, &mut mls, true)
    }
}

/// The transactional store. A cheap handle: clones share the database, the
/// pending step and the openmls state.
///
/// `Store::open` on a path this process already has open (e.g. reopening
/// after a simulated crash while an old handle is still alive) shares the
/// underlying redb database but starts from its on-disk state; the old
/// handles must not be used afterwards.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("has_pending", &self.has_pending())
            .finish()
    }
}

/// redb databases this process has open, by canonical path: redb refuses a
/// second open of the same file, so a reopen shares the live database.
static OPEN_DBS: LazyLock<Mutex<HashMap<PathBuf, Weak<Database>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent: recover from poison.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

impl Store {
    /// Opens (or creates) the file-backed store at `path`. The file's
    /// integrity is checked: a corrupt or foreign file gives an error.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut registry = lock(&OPEN_DBS);
        registry.retain(|_, db| db.strong_count() > 0);
        if path.exists() {
            let key = std::fs::canonicalize(path)?;
            if let Some(db) = registry.get(&key).and_then(Weak::upgrade) {
                return Self::with_backend(Backend::Redb(db), Some(path.to_path_buf()), None);
            }
        }
        let opened = catch_unwind(AssertUnwindSafe(|| {
            Database::builder()
                .set_cache_size(FILE_CACHE_BYTES)
                .set_check_integrity_on_open(true)
                .create(path)
        }))
        .map_err(|p| {
            StoreError::Corrupt(format!(
                "{}: redb failed opening the file: {}",
                path.display(),
                panic_message(p.as_ref())
            ))
        })?;
        let db = Arc::new(opened.map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?);
        let store = Self::with_backend(Backend::Redb(db.clone()), Some(path.to_path_buf()), None)?;
        registry.insert(std::fs::canonicalize(path)?, Arc::downgrade(&db));
        Ok(store)
    }

    /// A fresh store in memory (for simulations and tests).
    pub fn in_memory() -> Result<Store, StoreError> {
        Self::with_backend(Backend::Memory(Box::default()), None, None)
    }

    /// A fresh store in memory whose group trees are held once between
    /// all the stores created with the same `shared` (the simulator: every
    /// member stores the same trees).
    pub fn in_memory_sharing(shared: &SharedValues) -> Result<Store, StoreError> {
        let maps = backend::Maps::sharing(Some(shared.clone()));
        Self::with_backend(
            Backend::Memory(Box::new(Mutex::new(maps))),
            None,
            Some(shared.clone()),
        )
    }

    /// Creates the tables if missing and loads the openmls state.
    fn with_backend(
        backend: Backend,
        path: Option<PathBuf>,
        shared: Option<SharedValues>,
    ) -> Result<Store, StoreError> {
        let values = catch_unwind(AssertUnwindSafe(|| backend.init())).map_err(|p| {
            StoreError::Corrupt(format!(
                "redb failed loading the store: {}",
                panic_message(p.as_ref())
            ))
        })??;
        Ok(Store {
            inner: Arc::new(Inner {
                backend,
                path,
                pending: Mutex::new(Pending::default()),
                mls: MlsStorage::new(values, shared),
                deferred: Mutex::new(Deferred::default()),
                flushing: Mutex::new(None),
            }),
        })
    }

    /// An independent in-memory copy of the committed state (every table
    /// and openmls's state; this step's pending writes are not included),
    /// e.g. to model an attacker who copies a device's storage.
    pub fn snapshot(&self) -> Result<Store, StoreError> {
        let backend = self
            .inner
            .backend
            .snapshot(|| self.inner.mls.lock().committed())?;
        Self::with_backend(backend, None, None)
    }

    /// What the store holds in memory, by table: entries and key + value
    /// bytes (openmls's state as `"mls"`; the engine's tables only for a
    /// memory store, whose committed tables live in memory too). For
    /// measuring, e.g. the simulator's bytes per member.
    pub fn memory_usage(&self) -> Vec<(&'static str, usize, usize)> {
        let (entries, bytes) = self.inner.mls.lock().usage();
        let mut out = vec![("mls", entries, bytes)];
        out.extend(
            self.inner
                .backend
                .memory_usage()
                .into_iter()
                .map(|(t, n, b)| (t.name(), n, b)),
        );
        out
    }

    /// openmls's storage provider view (shares this store's transaction).
    pub fn mls(&self) -> &MlsStorage {
        &self.inner.mls
    }

    /// The value at `key`, including this step's pending writes.
    pub fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = lock(&self.inner.pending).tables[t.index()].get(key) {
            return Ok(v.clone());
        }
        if let Some(v) = lock(&self.inner.deferred).tables.tables[t.index()].get(key) {
            return Ok(v.clone());
        }
        if let Some(f) = lock(&self.inner.flushing).as_ref() {
            if let Some(v) = f.tables.tables[t.index()].get(key) {
                return Ok(v.clone());
            }
        }
        self.inner.backend.get(t, key)
    }

    /// Sets `key` to `value` (buffered until [`Store::commit`]).
    pub fn put(&self, t: Table, key: &[u8], value: &[u8]) {
        lock(&self.inner.pending).tables[t.index()].insert(key.to_vec(), Some(value.to_vec()));
    }

    /// Deletes `key` (buffered until [`Store::commit`]).
    pub fn delete(&self, t: Table, key: &[u8]) {
        lock(&self.inner.pending).tables[t.index()].insert(key.to_vec(), None);
    }

    /// Entries with `start <= key < end` (`end` `None`: unbounded), in key
    /// order, at most `limit`, merged with this step's pending writes.
    pub fn range(
        &self,
        t: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        if limit == 0 || end.is_some_and(|e| e <= start) {
            return Ok(Vec::new());
        }
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = (
            Bound::Included(start),
            end.map_or(Bound::Unbounded, Bound::Excluded),
        );
        let pending = lock(&self.inner.pending);
        let deferred = lock(&self.inner.deferred);
        let flushing = lock(&self.inner.flushing).clone();
        let pend = pending.tables[t.index()].range::<[u8], _>(bounds);
        let def = &deferred.tables.tables[t.index()];
        let fl = flushing.as_ref().map(|f| &f.tables.tables[t.index()]);
        if def.is_empty() && fl.is_none_or(BTreeMap::is_empty) {
            return self
                .inner
                .backend
                .range(t, bounds, |disk| merge(disk, pend, limit))?;
        }
        // The step's writes shadow the deferred ones, which shadow the
        // flush in flight, which shadows the disk.
        let mut writes: BTreeMap<&Vec<u8>, &Option<Vec<u8>>> = BTreeMap::new();
        if let Some(fl) = fl {
            writes.extend(fl.range::<[u8], _>(bounds));
        }
        writes.extend(def.range::<[u8], _>(bounds));
        writes.extend(pend);
        self.inner
            .backend
            .range(t, bounds, |disk| merge(disk, writes.into_iter(), limit))?
    }

    /// Applies every pending write (all tables, including openmls's state)
    /// in one durable redb write transaction, then clears the step. On error
    /// nothing is written and the step stays pending (call
    /// [`Store::rollback`]).
    pub fn commit(&self) -> Result<(), StoreError> {
        self.apply_step(true)
    }

    /// Like [`Store::commit`], but without waiting for the disk (group
    /// commit): atomic as a step, durable only with the next
    /// [`Store::flush`] or durable commit. A crash before that loses it and
    /// every deferred commit after the last durable one, never a part of
    /// one. Whoever defers must hold back what it announces until the flush.
    pub fn commit_deferred(&self) -> Result<(), StoreError> {
        self.apply_step(false)
    }

    /// Makes every deferred commit durable: one transaction, one fsync for
    /// all of them. On error they stay deferred.
    pub fn flush(&self) -> Result<(), StoreError> {
        match self.begin_flush()? {
            None => Ok(()),
            Some(w) => {
                let r = w.write();
                self.end_flush(w, r.is_ok());
                r
            }
        }
    }

    /// Freezes the deferred commits for a flush written elsewhere
    /// ([`FlushWrite::write`], e.g. on a blocking thread) while later
    /// steps go on deferring; reads see the frozen writes until
    /// [`Store::end_flush`]. `None`: nothing to flush. One flush at a time
    /// ([`StoreError::FlushInFlight`]), so flushes reach the disk in order.
    pub fn begin_flush(&self) -> Result<Option<FlushWrite>, StoreError> {
        let mls = self.inner.mls.lock();
        let mut deferred = lock(&self.inner.deferred);
        let mut flushing = lock(&self.inner.flushing);
        if flushing.is_some() {
            return Err(StoreError::FlushInFlight);
        }
        if deferred.is_empty() {
            return Ok(None);
        }
        let d = std::mem::take(&mut *deferred);
        // As committed: a key the open step changed keeps its value from
        // before the step.
        let values = d
            .mls_keys
            .into_iter()
            .map(|k| {
                let v = match mls.undo.get(&k) {
                    Some(original) => original.clone(),
                    None => mls.values.get(&k).cloned(),
                };
                (k, v)
            })
            .collect();
        let frozen = Arc::new(Frozen {
            tables: d.tables,
            mls: values,
        });
        *flushing = Some(frozen.clone());
        Ok(Some(FlushWrite {
            store: self.clone(),
            frozen,
        }))
    }

    /// Ends the flush begun by [`Store::begin_flush`]: `durable` is
    /// whether its write succeeded. If not, its steps are deferred again
    /// (under the ones deferred since, which shadow them).
    pub fn end_flush(&self, w: FlushWrite, durable: bool) {
        let mut deferred = lock(&self.inner.deferred);
        let mut flushing = lock(&self.inner.flushing);
        if !flushing.as_ref().is_some_and(|f| Arc::ptr_eq(f, &w.frozen)) {
            // Not ours (a crash discarded it): nothing to put back.
            return;
        }
        *flushing = None;
        if durable {
            return;
        }
        for t in Table::ALL {
            let i = t.index();
            let mut merged = w.frozen.tables.tables[i].clone();
            merged.extend(std::mem::take(&mut deferred.tables.tables[i]));
            deferred.tables.tables[i] = merged;
        }
        deferred
            .mls_keys
            .extend(w.frozen.mls.iter().map(|(k, _)| k.clone()));
    }

    /// Writes the deferred steps and the open one in one durable
    /// transaction (openmls's values from the image as it is now).
    fn write_deferred(&self, mls: &MlsState, deferred: &Deferred) -> Result<(), StoreError> {
        let mut writes = deferred
            .mls_keys
            .iter()
            .map(|k| (k.as_slice(), mls.values.get(k).map(|v| &**v)));
        self.inner
            .backend
            .apply(&deferred.tables, &mut writes, true)
    }

    fn apply_step(&self, durable: bool) -> Result<(), StoreError> {
        let mut pending = lock(&self.inner.pending);
        let mut mls = self.inner.mls.lock();
        if pending.is_empty() && mls.dirty().next().is_none() {
            pending.clear();
            mls.undo.clear();
            drop(mls);
            drop(pending);
            // A durable commit persists the deferred ones before it.
            return if durable { self.flush() } else { Ok(()) };
        }
        if !self.inner.backend.is_file() {
            // Memory has nothing to defer: the maps are the state.
            self.inner
                .backend
                .apply(&pending, &mut mls.dirty(), durable)?;
            pending.clear();
            mls.undo.clear();
            return Ok(());
        }
        let mut deferred = lock(&self.inner.deferred);
        if durable && lock(&self.inner.flushing).is_some() {
            return Err(StoreError::FlushInFlight);
        }
        if durable {
            // This step and every deferred one before it, in one
            // transaction; nothing moves until it is on disk.
            let dirty: Vec<Vec<u8>> = mls.dirty().map(|(k, _)| k.to_vec()).collect();
            let mut all = Deferred::default();
            for t in Table::ALL {
                let i = t.index();
                all.tables.tables[i] = deferred.tables.tables[i].clone();
                all.tables.tables[i].extend(
                    pending.tables[i]
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone())),
                );
            }
            all.mls_keys = deferred.mls_keys.clone();
            all.mls_keys.extend(dirty);
            // On error the step stays pending (undo intact) and the
            // deferred ones deferred.
            self.write_deferred(&mls, &all)?;
            deferred.clear();
        } else {
            for t in Table::ALL {
                let i = t.index();
                let step = std::mem::take(&mut pending.tables[i]);
                deferred.tables.tables[i].extend(step);
            }
            let dirty: Vec<Vec<u8>> = mls.dirty().map(|(k, _)| k.to_vec()).collect();
            deferred.mls_keys.extend(dirty);
        }
        pending.clear();
        mls.undo.clear();
        Ok(())
    }

    /// Discards the step: drops the pending table writes and restores the
    /// openmls state from the undo log.
    pub fn rollback(&self) {
        let mut pending = lock(&self.inner.pending);
        let mut mls = self.inner.mls.lock();
        pending.clear();
        mls.rollback();
    }

    /// Whether the current step has uncommitted writes.
    pub fn has_pending(&self) -> bool {
        let pending = lock(&self.inner.pending);
        let mls = self.inner.mls.lock();
        !pending.is_empty() || !mls.undo.is_empty()
    }

    /// Size of the database file in bytes (0 in memory).
    pub fn approx_size_bytes(&self) -> u64 {
        match &self.inner.path {
            Some(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            None => 0,
        }
    }

    /// Test hook for crash tests: drops every pending write *without*
    /// restoring the in-memory openmls state, as if the process died before
    /// the commit. The handle is then stale: reopen the store from its path
    /// to observe the on-disk state.
    pub fn crash_discard(&self) {
        let mut pending = lock(&self.inner.pending);
        let mut mls = self.inner.mls.lock();
        pending.clear();
        mls.undo.clear();
        lock(&self.inner.deferred).clear();
        *lock(&self.inner.flushing) = None;
    }
}

/// Committed entries merged with a step's pending writes (which shadow
/// them; `None` deletes), in key order, at most `limit`.
fn merge<'a>(
    disk: &mut dyn Iterator<Item = Result<KeyValue, StoreError>>,
    mut pend: impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>,
    limit: usize,
) -> Result<Vec<KeyValue>, StoreError> {
    let mut out = Vec::new();
    let mut d = disk.next().transpose()?;
    let mut p = pend.next();
    while out.len() < limit {
        match (d.take(), p) {
            (None, None) => break,
            (Some(entry), None) => {
                out.push(entry);
                d = disk.next().transpose()?;
            }
            (disk_entry, Some((pk, pv))) => {
                if let Some(entry) = disk_entry {
                    match entry.0.as_slice().cmp(pk.as_slice()) {
                        std::cmp::Ordering::Less => {
                            out.push(entry);
                            d = disk.next().transpose()?;
                            continue;
                        }
                        // The pending write shadows the disk entry.
                        std::cmp::Ordering::Equal => d = disk.next().transpose()?,
                        std::cmp::Ordering::Greater => d = Some(entry),
                    }
                }
                if let Some(v) = pv {
                    out.push((pk.clone(), v.clone()));
                }
                p = pend.next();
            }
        }
    }
    Ok(out)
}

/// The openmls provider the engine hands to `MlsGroup` calls.
pub struct MmlsProvider {
    crypto: RustCrypto,
    store: Store,
}

impl std::fmt::Debug for MmlsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmlsProvider")
            .field("store", &self.store)
            .finish()
    }
}

impl MmlsProvider {
    pub fn new(store: Store) -> Self {
        MmlsProvider {
            crypto: RustCrypto::default(),
            store,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl openmls_traits::OpenMlsProvider for MmlsProvider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MlsStorage;

    fn storage(&self) -> &Self::StorageProvider {
        self.store.mls()
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

#[cfg(test)]
mod tests;
