//! Embedded, crash-safe, transactional store on redb.
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

mod mls_storage;

pub use mls_storage::{MlsStorage, MlsStorageError};

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

use openmls_rust_crypto::RustCrypto;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

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

    fn def(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

/// openmls's state (the `MlsStorage` key/value pairs).
const MLS_TABLE: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("mls");

/// redb page cache of a file-backed store.
const FILE_CACHE_BYTES: usize = 64 << 20;
/// redb page cache of an in-memory store (the backend is memory already).
const MEMORY_CACHE_BYTES: usize = 4 << 20;

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

struct Inner {
    db: Arc<Database>,
    /// The database file, `None` in memory.
    path: Option<PathBuf>,
    pending: Mutex<Pending>,
    mls: MlsStorage,
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
                return Self::with_db(db, Some(path.to_path_buf()));
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
        let store = Self::with_db(db.clone(), Some(path.to_path_buf()))?;
        registry.insert(std::fs::canonicalize(path)?, Arc::downgrade(&db));
        Ok(store)
    }

    /// A fresh store in memory (for simulations and tests).
    pub fn in_memory() -> Result<Store, StoreError> {
        let db = Database::builder()
            .set_cache_size(MEMORY_CACHE_BYTES)
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|source| StoreError::Open {
                path: PathBuf::from(":memory:"),
                source,
            })?;
        Self::with_db(Arc::new(db), None)
    }

    /// Creates the tables if missing and loads the openmls state.
    fn with_db(db: Arc<Database>, path: Option<PathBuf>) -> Result<Store, StoreError> {
        let init = || -> Result<HashMap<Vec<u8>, Vec<u8>>, StoreError> {
            let txn = db.begin_write()?;
            for t in Table::ALL {
                txn.open_table(t.def())?;
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
        };
        let values = catch_unwind(AssertUnwindSafe(init)).map_err(|p| {
            StoreError::Corrupt(format!(
                "redb failed loading the store: {}",
                panic_message(p.as_ref())
            ))
        })??;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                path,
                pending: Mutex::new(Pending::default()),
                mls: MlsStorage::new(values),
            }),
        })
    }

    /// An independent in-memory copy of the committed state (every table
    /// and openmls's state; this step's pending writes are not included),
    /// e.g. to model an attacker who copies a device's storage.
    pub fn snapshot(&self) -> Result<Store, StoreError> {
        let copy = Database::builder()
            .set_cache_size(MEMORY_CACHE_BYTES)
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|source| StoreError::Open {
                path: PathBuf::from(":memory:"),
                source,
            })?;
        let read = self.inner.db.begin_read()?;
        let txn = copy.begin_write()?;
        for def in Table::ALL.map(Table::def).into_iter().chain([MLS_TABLE]) {
            let src = read.open_table(def)?;
            let mut dst = txn.open_table(def)?;
            for entry in src.iter()? {
                let (k, v) = entry?;
                dst.insert(k.value(), v.value())?;
            }
        }
        txn.commit()?;
        Self::with_db(Arc::new(copy), None)
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
        let read = self.inner.db.begin_read()?;
        let table = read.open_table(t.def())?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
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
        let mut pend = pending.tables[t.index()].range::<[u8], _>(bounds);
        let read = self.inner.db.begin_read()?;
        let table = read.open_table(t.def())?;
        let mut disk = table.range::<&[u8]>(bounds)?;
        let mut next_disk = || -> Result<Option<KeyValue>, StoreError> {
            match disk.next() {
                Some(entry) => {
                    let (k, v) = entry?;
                    Ok(Some((k.value().to_vec(), v.value().to_vec())))
                }
                None => Ok(None),
            }
        };

        let mut out = Vec::new();
        let mut d = next_disk()?;
        let mut p = pend.next();
        while out.len() < limit {
            match (d.take(), p) {
                (None, None) => break,
                (Some(entry), None) => {
                    out.push(entry);
                    d = next_disk()?;
                }
                (disk_entry, Some((pk, pv))) => {
                    if let Some(entry) = disk_entry {
                        match entry.0.as_slice().cmp(pk.as_slice()) {
                            std::cmp::Ordering::Less => {
                                out.push(entry);
                                d = next_disk()?;
                                continue;
                            }
                            // The pending write shadows the disk entry.
                            std::cmp::Ordering::Equal => d = next_disk()?,
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

    /// Applies every pending write (all tables, including openmls's state)
    /// in one durable redb write transaction, then clears the step. On error
    /// nothing is written and the step stays pending (call
    /// [`Store::rollback`]).
    pub fn commit(&self) -> Result<(), StoreError> {
        let mut pending = lock(&self.inner.pending);
        let mut mls = self.inner.mls.lock();
        if pending.is_empty() && mls.dirty().next().is_none() {
            pending.clear();
            mls.undo.clear();
            return Ok(());
        }
        let mut txn = self.inner.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        for t in Table::ALL {
            let writes = &pending.tables[t.index()];
            if writes.is_empty() {
                continue;
            }
            let mut table = txn.open_table(t.def())?;
            for (k, v) in writes {
                match v {
                    Some(v) => {
                        table.insert(k.as_slice(), v.as_slice())?;
                    }
                    None => {
                        table.remove(k.as_slice())?;
                    }
                }
            }
        }
        {
            let mut table = txn.open_table(MLS_TABLE)?;
            for (k, v) in mls.dirty() {
                match v {
                    Some(v) => {
                        table.insert(k, v)?;
                    }
                    None => {
                        table.remove(k)?;
                    }
                }
            }
        }
        txn.commit()?;
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
    }
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
mod tests {
    use super::*;
    use openmls::prelude::*;
    use openmls_basic_credential::SignatureKeyPair;
    use std::collections::BTreeMap;

    const CS: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

    fn kv(k: &[u8], v: &[u8]) -> (Vec<u8>, Vec<u8>) {
        (k.to_vec(), v.to_vec())
    }

    fn signer_and_credential(name: &str) -> (SignatureKeyPair, CredentialWithKey) {
        let signer = SignatureKeyPair::new(CS.signature_algorithm()).expect("signature key pair");
        let credential = CredentialWithKey {
            credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        (signer, credential)
    }

    fn new_group(
        provider: &MmlsProvider,
        signer: &SignatureKeyPair,
        credential: &CredentialWithKey,
    ) -> MlsGroup {
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CS)
            .use_ratchet_tree_extension(true)
            .build();
        MlsGroup::new(provider, signer, &config, credential.clone()).expect("new group")
    }

    #[test]
    fn store_is_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Store>();
        fn assert_send_sync_provider<T: Send + Sync>() {}
        assert_send_sync_provider::<MmlsProvider>();
    }

    #[test]
    fn put_get_range_delete_within_step_and_after_commit() {
        let store = Store::in_memory().unwrap();
        assert!(!store.has_pending());
        assert_eq!(store.get(Table::Log, b"a").unwrap(), None);

        store.put(Table::Log, b"c", b"3");
        store.put(Table::Log, b"a", b"1");
        store.put(Table::Log, b"b", b"2");
        store.put(Table::Meta, b"b", b"meta");
        assert!(store.has_pending());
        // Visible within the step.
        assert_eq!(store.get(Table::Log, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(
            store.get(Table::Meta, b"b").unwrap(),
            Some(b"meta".to_vec())
        );
        assert_eq!(store.get(Table::Outbox, b"b").unwrap(), None);
        assert_eq!(
            store.range(Table::Log, b"", None, usize::MAX).unwrap(),
            vec![kv(b"a", b"1"), kv(b"b", b"2"), kv(b"c", b"3")]
        );

        store.commit().unwrap();
        assert!(!store.has_pending());
        assert_eq!(store.get(Table::Log, b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(
            store.range(Table::Log, b"", None, usize::MAX).unwrap(),
            vec![kv(b"a", b"1"), kv(b"b", b"2"), kv(b"c", b"3")]
        );

        // Pending writes merged with the committed ones.
        store.delete(Table::Log, b"b");
        store.put(Table::Log, b"bb", b"22");
        store.put(Table::Log, b"c", b"33");
        store.put(Table::Log, b"d", b"4");
        assert_eq!(store.get(Table::Log, b"b").unwrap(), None);
        assert_eq!(
            store.range(Table::Log, b"", None, usize::MAX).unwrap(),
            vec![
                kv(b"a", b"1"),
                kv(b"bb", b"22"),
                kv(b"c", b"33"),
                kv(b"d", b"4")
            ]
        );
        // Limit and bounds.
        assert_eq!(
            store.range(Table::Log, b"", None, 2).unwrap(),
            vec![kv(b"a", b"1"), kv(b"bb", b"22")]
        );
        assert_eq!(
            store.range(Table::Log, b"b", Some(b"c"), 10).unwrap(),
            vec![kv(b"bb", b"22")]
        );
        assert_eq!(
            store.range(Table::Log, b"bb", Some(b"d"), 10).unwrap(),
            vec![kv(b"bb", b"22"), kv(b"c", b"33")]
        );
        assert!(store.range(Table::Log, b"", None, 0).unwrap().is_empty());
        assert!(store
            .range(Table::Log, b"d", Some(b"a"), 9)
            .unwrap()
            .is_empty());
        assert!(store
            .range(Table::Log, b"c", Some(b"c"), 9)
            .unwrap()
            .is_empty());
        assert!(store.range(Table::Meta, b"a", None, 9).unwrap().len() == 1);

        store.commit().unwrap();
        assert_eq!(store.get(Table::Log, b"b").unwrap(), None);
        assert_eq!(store.get(Table::Log, b"c").unwrap(), Some(b"33".to_vec()));
        assert_eq!(
            store.range(Table::Log, b"", None, usize::MAX).unwrap(),
            vec![
                kv(b"a", b"1"),
                kv(b"bb", b"22"),
                kv(b"c", b"33"),
                kv(b"d", b"4")
            ]
        );

        // Clones share the store.
        let other = store.clone();
        other.put(Table::Buffer, b"x", b"y");
        assert!(store.has_pending());
        store.commit().unwrap();
        assert_eq!(other.get(Table::Buffer, b"x").unwrap(), Some(b"y".to_vec()));
        assert_eq!(store.approx_size_bytes(), 0);
    }

    /// Random puts/deletes/commits/rollbacks checked against a model.
    #[test]
    fn random_ops_match_a_model() {
        let store = Store::in_memory().unwrap();
        let mut committed: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut current = committed.clone();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for i in 0..3000u32 {
            let key = vec![b'k', rnd(40) as u8];
            match rnd(10) {
                0..=3 => {
                    let v = i.to_be_bytes().to_vec();
                    store.put(Table::Delivered, &key, &v);
                    current.insert(key.clone(), v);
                }
                4..=5 => {
                    store.delete(Table::Delivered, &key);
                    current.remove(&key);
                }
                6 => {
                    store.commit().unwrap();
                    committed = current.clone();
                }
                7 => {
                    store.rollback();
                    current = committed.clone();
                }
                _ => {
                    let start = vec![b'k', rnd(40) as u8];
                    let end = match rnd(3) {
                        0 => None,
                        _ => Some(vec![b'k', rnd(45) as u8]),
                    };
                    let limit = rnd(12) as usize;
                    let got = store
                        .range(Table::Delivered, &start, end.as_deref(), limit)
                        .unwrap();
                    let want: Vec<_> = current
                        .iter()
                        .filter(|(k, _)| {
                            **k >= start && end.as_ref().is_none_or(|e| k.as_slice() < e.as_slice())
                        })
                        .take(limit)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    assert_eq!(got, want, "range at op {i}");
                }
            }
            assert_eq!(
                store.get(Table::Delivered, &key).unwrap(),
                current.get(&key).cloned()
            );
        }
    }

    #[test]
    fn rollback_restores_tables_and_mls_and_commit_persists_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let (signer, credential) = signer_and_credential("alice");

        let gid;
        let epoch;
        {
            let store = Store::open(&path).unwrap();
            let provider = MmlsProvider::new(store.clone());

            // Step 1, rolled back: nothing of it remains, in memory or on disk.
            store.put(Table::Meta, b"state", b"v1");
            store.put(Table::KeyPackages, b"kp", b"x");
            signer.store(store.mls()).unwrap();
            let group = new_group(&provider, &signer, &credential);
            let rolled_back_gid = group.group_id().clone();
            assert!(store.has_pending());
            assert!(MlsGroup::load(store.mls(), &rolled_back_gid)
                .unwrap()
                .is_some());
            store.rollback();
            assert!(!store.has_pending());
            assert!(MlsGroup::load(store.mls(), &rolled_back_gid)
                .unwrap()
                .is_none());
            assert!(SignatureKeyPair::read(
                store.mls(),
                signer.public(),
                signer.signature_scheme()
            )
            .is_none());
            assert_eq!(store.get(Table::Meta, b"state").unwrap(), None);
            assert_eq!(store.get(Table::KeyPackages, b"kp").unwrap(), None);

            // Step 2, committed.
            store.put(Table::Meta, b"state", b"v2");
            signer.store(store.mls()).unwrap();
            let mut group = new_group(&provider, &signer, &credential);
            store.commit().unwrap();
            gid = group.group_id().clone();

            // Step 3, committed: the group moves to the next epoch.
            group
                .self_update(&provider, &signer, LeafNodeParameters::default())
                .unwrap();
            group.merge_pending_commit(&provider).unwrap();
            store.commit().unwrap();
            epoch = group.epoch();
            assert_eq!(epoch.as_u64(), 1);

            // Step 4, rolled back: modifies existing mls entries.
            group
                .self_update(&provider, &signer, LeafNodeParameters::default())
                .unwrap();
            group.merge_pending_commit(&provider).unwrap();
            store.put(Table::Meta, b"state", b"v4");
            store.rollback();
            let reloaded = MlsGroup::load(store.mls(), &gid).unwrap().unwrap();
            assert_eq!(reloaded.epoch(), epoch);
            assert_eq!(
                store.get(Table::Meta, b"state").unwrap(),
                Some(b"v2".to_vec())
            );
            assert!(store.approx_size_bytes() > 0);
        }

        // Every handle is dropped: a fresh open loads the state from the file.
        let store = Store::open(&path).unwrap();
        assert!(!store.has_pending());
        let group = MlsGroup::load(store.mls(), &gid)
            .unwrap()
            .expect("the committed group is on disk");
        assert_eq!(group.epoch(), epoch);
        assert!(
            SignatureKeyPair::read(store.mls(), signer.public(), signer.signature_scheme())
                .is_some()
        );
        assert_eq!(
            store.get(Table::Meta, b"state").unwrap(),
            Some(b"v2".to_vec())
        );
        assert_eq!(store.get(Table::KeyPackages, b"kp").unwrap(), None);

        // The reloaded group is usable with the reopened store.
        let provider = MmlsProvider::new(store.clone());
        let mut group = group;
        group
            .self_update(&provider, &signer, LeafNodeParameters::default())
            .unwrap();
        group.merge_pending_commit(&provider).unwrap();
        store.commit().unwrap();
        assert_eq!(
            MlsGroup::load(store.mls(), &gid)
                .unwrap()
                .unwrap()
                .epoch()
                .as_u64(),
            2
        );
    }

    #[test]
    fn crash_discard_leaves_only_committed_steps_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crash.redb");
        let (signer, credential) = signer_and_credential("bob");

        let store = Store::open(&path).unwrap();
        let provider = MmlsProvider::new(store.clone());
        store.put(Table::Log, b"1", b"one");
        store.put(Table::Outbox, b"o1", b"out");
        let group = new_group(&provider, &signer, &credential);
        let committed_gid = group.group_id().clone();
        store.commit().unwrap();

        store.put(Table::Log, b"2", b"two");
        store.delete(Table::Log, b"1");
        store.delete(Table::Outbox, b"o1");
        let group = new_group(&provider, &signer, &credential);
        let crashed_gid = group.group_id().clone();
        signer.store(store.mls()).unwrap();
        store.crash_discard();
        // "The process died": the old handle's memory still has the group.
        assert!(MlsGroup::load(store.mls(), &crashed_gid).unwrap().is_some());

        // Reopen while the old handle is still alive (as the engine's tests do).
        let reopened = Store::open(&path).unwrap();
        let check = |s: &Store| {
            assert_eq!(s.get(Table::Log, b"1").unwrap(), Some(b"one".to_vec()));
            assert_eq!(s.get(Table::Log, b"2").unwrap(), None);
            assert_eq!(s.get(Table::Outbox, b"o1").unwrap(), Some(b"out".to_vec()));
            assert_eq!(
                s.range(Table::Log, b"", None, 10).unwrap(),
                vec![kv(b"1", b"one")]
            );
            assert!(MlsGroup::load(s.mls(), &committed_gid).unwrap().is_some());
            assert!(MlsGroup::load(s.mls(), &crashed_gid).unwrap().is_none());
            assert!(
                SignatureKeyPair::read(s.mls(), signer.public(), signer.signature_scheme())
                    .is_none()
            );
        };
        check(&reopened);
        drop(provider);
        drop(store);
        drop(reopened);

        // And after every handle is gone.
        let fresh = Store::open(&path).unwrap();
        check(&fresh);
    }

    #[test]
    fn snapshot_is_an_independent_copy_of_the_committed_state() {
        let store = Store::in_memory().unwrap();
        let provider = MmlsProvider::new(store.clone());
        let (signer, credential) = signer_and_credential("carol");
        store.put(Table::Log, b"k", b"v");
        let group = new_group(&provider, &signer, &credential);
        let gid = group.group_id().clone();
        store.commit().unwrap();
        store.put(Table::Log, b"pending", b"p");

        let snap = store.snapshot().unwrap();
        assert_eq!(snap.get(Table::Log, b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(snap.get(Table::Log, b"pending").unwrap(), None);
        assert_eq!(
            MlsGroup::load(snap.mls(), &gid).unwrap().unwrap().epoch(),
            group.epoch()
        );

        snap.put(Table::Log, b"k", b"changed");
        snap.commit().unwrap();
        store.commit().unwrap();
        assert_eq!(store.get(Table::Log, b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(snap.get(Table::Log, b"pending").unwrap(), None);
        assert_eq!(
            snap.get(Table::Log, b"k").unwrap(),
            Some(b"changed".to_vec())
        );
    }

    #[test]
    fn garbage_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut seed: u64 = 42;
        for (i, len) in [1usize, 17, 512, 4096, 5000, 65536, 300_000]
            .into_iter()
            .enumerate()
        {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 56) as u8
                })
                .collect();
            let path = dir.path().join(format!("garbage{i}.redb"));
            std::fs::write(&path, &bytes).unwrap();
            let r = Store::open(&path);
            assert!(r.is_err(), "garbage of {len} bytes opened");
            let msg = r.unwrap_err().to_string();
            assert!(!msg.is_empty());
        }
    }

    #[test]
    fn damaged_database_file_does_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ok.redb");
        {
            let store = Store::open(&path).unwrap();
            for i in 0..200u32 {
                store.put(Table::Log, &i.to_be_bytes(), &[i as u8; 300]);
            }
            store.commit().unwrap();
        }
        let good = std::fs::read(&path).unwrap();

        // Truncated.
        let truncated = dir.path().join("truncated.redb");
        std::fs::write(&truncated, &good[..good.len() / 3]).unwrap();
        assert!(Store::open(&truncated).is_err());

        // Header overwritten.
        let mut bad = good.clone();
        bad[..64].iter_mut().for_each(|b| *b ^= 0x5a);
        let header = dir.path().join("header.redb");
        std::fs::write(&header, &bad).unwrap();
        assert!(Store::open(&header).is_err());

        // Data pages flipped: must be an error, or still read back consistently.
        for (i, at) in [good.len() / 2, good.len() * 3 / 4, good.len() - 100]
            .into_iter()
            .enumerate()
        {
            let mut bad = good.clone();
            bad[at..at + 64].iter_mut().for_each(|b| *b ^= 0xff);
            let p = dir.path().join(format!("flip{i}.redb"));
            std::fs::write(&p, &bad).unwrap();
            if let Ok(s) = Store::open(&p) {
                let _ = s.range(Table::Log, b"", None, usize::MAX);
            }
        }
    }
}
