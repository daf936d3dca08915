//! openmls [`StorageProvider`] over the store's transactional "mls" table.
//!
//! Adapted from openmls_memory_storage 0.6.0 (MIT).
//!
//! The key scheme is the one of `openmls_memory_storage`
//! (`label || key || version_be`, serde_json keys); values are CBOR
//! (JSON values of older stores still read). The whole "mls" table
//! lives in memory (loaded when the [`Store`](super::Store) opens); every
//! change records, the first time a key is touched in the current step, the
//! key's original value in an undo log. The keys of the undo log are the dirty
//! keys: [`Store::commit`](super::Store::commit) writes their current value in
//! the step's redb transaction, [`Store::rollback`](super::Store::rollback)
//! restores their original value.
//!
//! Unlike the original, nothing here panics: malformed stored data yields
//! [`MlsStorageError`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use openmls_traits::storage::*;
use serde::Serialize;

mod provider;
mod shared;
use provider::build_key_from_vec;
pub use shared::SharedValues;
pub(crate) use shared::Value;

/// Errors of the openmls storage provider.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum MlsStorageError {
    /// A value could not be (de)serialized (corrupt stored data or a bug).
    #[error("mls storage: serialization error: {0}")]
    Serialization(String),
    /// The stored openmls state is inconsistent.
    #[error("mls storage: inconsistent state: {0}")]
    Corrupt(String),
}

impl From<serde_json::Error> for MlsStorageError {
    fn from(e: serde_json::Error) -> Self {
        Self::Serialization(e.to_string())
    }
}

/// First byte of a CBOR value. Never the first byte of a JSON text (nor
/// valid UTF-8), so the values written as JSON before stay readable.
pub(super) const CBOR_VALUE: u8 = 0xff;

/// A stored value: CBOR behind [`CBOR_VALUE`], else JSON.
fn decode<V: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<V, MlsStorageError> {
    match bytes.split_first() {
        Some((&CBOR_VALUE, cbor)) => decode_cbor(cbor),
        _ => Ok(serde_json::from_slice(bytes)?),
    }
}

/// Values are written by ciborium and read by cbor4ii: openmls's state is
/// mostly byte strings that serde hands over as one integer each, and
/// ciborium spent most of a group decode (MlsGroup::load: ~60% of a
/// 256-member simulation's CPU with a bounded group cache) parsing those
/// integers' headers. The two agree on every shape but one, the unit value
/// (ciborium writes null, cbor4ii wants an empty array), so a value
/// cbor4ii refuses is read again by ciborium: anything readable before
/// still is, and the store's format does not change.
fn decode_cbor<V: serde::de::DeserializeOwned>(cbor: &[u8]) -> Result<V, MlsStorageError> {
    match cbor4ii::serde::from_slice(cbor) {
        Ok(v) => Ok(v),
        Err(_) => {
            #[cfg(test)]
            SLOW_DECODES.with(|n| n.set(n.get() + 1));
            ciborium::from_reader(cbor).map_err(|e| MlsStorageError::Serialization(e.to_string()))
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Values this thread read with the fallback decoder (tests check the
    /// fast path is the one taken).
    pub(crate) static SLOW_DECODES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The in-memory image of the "mls" table plus this step's undo log.
#[derive(Debug, Default)]
pub(super) struct MlsState {
    /// Current values (committed state + this step's changes).
    pub(super) values: HashMap<Vec<u8>, Value>,
    /// For each key touched in this step: its value at the start of the step.
    pub(super) undo: HashMap<Vec<u8>, Option<Value>>,
}

impl MlsState {
    fn touch(&mut self, key: &[u8]) {
        if !self.undo.contains_key(key) {
            let original = self.values.get(key).cloned();
            self.undo.insert(key.to_vec(), original);
        }
    }

    fn insert(&mut self, key: Vec<u8>, value: Value) {
        self.touch(&key);
        self.values.insert(key, value);
    }

    fn remove(&mut self, key: &[u8]) {
        // An absent key that is not in the undo log is absent on disk too.
        if self.values.contains_key(key) {
            self.touch(key);
            self.values.remove(key);
        }
    }

    /// Dirty keys with their current value (`None`: delete), skipping keys
    /// whose value is back to the original.
    pub(super) fn dirty(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.undo.iter().filter_map(|(k, original)| {
            let current = self.values.get(k);
            if current == original.as_ref() {
                None
            } else {
                Some((k.as_slice(), current.map(|v| &**v)))
            }
        })
    }

    /// The committed values: the current ones with this step's changes
    /// undone.
    pub(super) fn committed(&self) -> HashMap<Vec<u8>, Vec<u8>> {
        let mut values: HashMap<Vec<u8>, Vec<u8>> = self
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.to_vec()))
            .collect();
        for (k, original) in &self.undo {
            match original {
                Some(v) => values.insert(k.clone(), v.to_vec()),
                None => values.remove(k),
            };
        }
        values
    }

    /// Entries and key + value bytes, a value shared with other stores
    /// ([`SharedValues`]) counting for its share.
    pub(super) fn usage(&self) -> (usize, usize) {
        let bytes = self
            .values
            .iter()
            .map(|(k, v)| k.len() + v.len() / Arc::strong_count(v))
            .sum();
        (self.values.len(), bytes)
    }

    pub(super) fn rollback(&mut self) {
        for (k, original) in self.undo.drain() {
            match original {
                Some(v) => {
                    self.values.insert(k, v);
                }
                None => {
                    self.values.remove(&k);
                }
            }
        }
    }
}

/// openmls's storage provider, a view of the [`Store`](super::Store)'s "mls"
/// table sharing the store's step transaction.
pub struct MlsStorage {
    state: Mutex<MlsState>,
    shared: Option<SharedValues>,
}

impl std::fmt::Debug for MlsStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("MlsStorage")
            .field("entries", &s.values.len())
            .field("dirty", &s.undo.len())
            .finish()
    }
}

impl MlsStorage {
    pub(super) fn new(values: HashMap<Vec<u8>, Vec<u8>>, shared: Option<SharedValues>) -> Self {
        let values = values
            .into_iter()
            .map(|(k, v)| (k, Value::from(v)))
            .collect();
        MlsStorage {
            state: Mutex::new(MlsState {
                values,
                undo: HashMap::new(),
            }),
            shared,
        }
    }

    /// Locks the state (a poisoned lock is recovered: the state is always
    /// consistent between two statements).
    pub(super) fn lock(&self) -> MutexGuard<'_, MlsState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Internal helper to abstract write operations.
    fn write(&self, label: &[u8], key: &[u8], value: Vec<u8>) -> Result<(), MlsStorageError> {
        self.put(label, key, Value::from(value))
    }

    /// [`Self::write`] of a value every member of the group writes
    /// identically (the public tree): shared with the other stores of this
    /// store's [`SharedValues`], if any. Only those: a value unique to a
    /// member would cost a hash and a pool entry for nothing.
    fn write_common(
        &self,
        label: &[u8],
        key: &[u8],
        value: Vec<u8>,
    ) -> Result<(), MlsStorageError> {
        let value = match &self.shared {
            Some(shared) => shared.share(value),
            None => Value::from(value),
        };
        self.put(label, key, value)
    }

    fn put(&self, label: &[u8], key: &[u8], value: Value) -> Result<(), MlsStorageError> {
        let storage_key = build_key_from_vec(label, key.to_vec());
        self.lock().insert(storage_key, value);
        Ok(())
    }

    fn append(&self, label: &[u8], key: &[u8], value: Vec<u8>) -> Result<(), MlsStorageError> {
        let storage_key = build_key_from_vec(label, key.to_vec());
        let mut state = self.lock();

        // fetch value from db, falling back to an empty list if it doesn't exist
        let mut list: Vec<Vec<u8>> = match state.values.get(&storage_key) {
            Some(list_bytes) => serde_json::from_slice(list_bytes)?,
            None => vec![],
        };
        list.push(value);

        let list_bytes = serde_json::to_vec(&list)?;
        state.insert(storage_key, Value::from(list_bytes));
        Ok(())
    }

    fn remove_item(&self, label: &[u8], key: &[u8], value: Vec<u8>) -> Result<(), MlsStorageError> {
        let storage_key = build_key_from_vec(label, key.to_vec());
        let mut state = self.lock();

        // fetch value from db, falling back to an empty list if it doesn't exist
        let mut list: Vec<Vec<u8>> = match state.values.get(&storage_key) {
            Some(list_bytes) => serde_json::from_slice(list_bytes)?,
            None => vec![],
        };
        if let Some(pos) = list.iter().position(|stored_item| stored_item == &value) {
            list.remove(pos);
        }

        let list_bytes = serde_json::to_vec(&list)?;
        state.insert(storage_key, Value::from(list_bytes));
        Ok(())
    }

    /// Internal helper to abstract read operations.
    fn read<V: Entity<CURRENT_VERSION>>(
        &self,
        label: &[u8],
        key: &[u8],
    ) -> Result<Option<V>, MlsStorageError> {
        let storage_key = build_key_from_vec(label, key.to_vec());
        let state = self.lock();
        match state.values.get(&storage_key) {
            Some(value) => Ok(Some(decode(value)?)),
            None => Ok(None),
        }
    }

    /// Like `read`, but a stored JSON `null` reads as `None` (as the
    /// original's direct `Option<V>` deserialization does).
    fn read_nullable<V: Entity<CURRENT_VERSION>>(
        &self,
        label: &[u8],
        key: &[u8],
    ) -> Result<Option<V>, MlsStorageError> {
        let storage_key = build_key_from_vec(label, key.to_vec());
        let state = self.lock();
        match state.values.get(&storage_key) {
            Some(value) => decode::<Option<V>>(value),
            None => Ok(None),
        }
    }

    /// Internal helper to abstract list read operations.
    fn read_list<V: Entity<CURRENT_VERSION>>(
        &self,
        label: &[u8],
        key: &[u8],
    ) -> Result<Vec<V>, MlsStorageError> {
        let storage_key = build_key_from_vec(label, key.to_vec());
        let state = self.lock();

        let value: Vec<Vec<u8>> = match state.values.get(&storage_key) {
            Some(list_bytes) => serde_json::from_slice(list_bytes)?,
            None => vec![],
        };

        value
            .iter()
            .map(|value_bytes| serde_json::from_slice(value_bytes))
            .collect::<Result<Vec<V>, _>>()
            .map_err(MlsStorageError::from)
    }

    /// Internal helper to abstract delete operations.
    fn delete(&self, label: &[u8], key: &[u8]) -> Result<(), MlsStorageError> {
        let storage_key = build_key_from_vec(label, key.to_vec());
        self.lock().remove(&storage_key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value the way openmls hands state over: byte strings as integer
    /// sequences.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Secret {
        epoch: u64,
        bytes: Vec<u8>,
    }

    fn secret() -> Secret {
        Secret {
            epoch: 7,
            bytes: (0..=255).collect(),
        }
    }

    #[test]
    fn values_are_cbor_and_the_json_of_older_stores_still_reads() {
        let cbor = provider::stored(&secret()).expect("encode");
        assert_eq!(cbor[0], CBOR_VALUE);
        let json = provider::json(&secret()).expect("encode");
        assert!(
            cbor.len() * 3 < json.len() * 2,
            "{} vs {}",
            cbor.len(),
            json.len()
        );
        assert_eq!(decode::<Secret>(&cbor).expect("cbor"), secret());
        assert_eq!(decode::<Secret>(&json).expect("json"), secret());
    }

    /// The shapes openmls's state is made of, beyond `Secret`.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Node {
        Leaf { key: Vec<u8>, source: Source },
        Parent(Vec<u8>, Vec<u32>),
        Blank,
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Source {
        KeyPackage,
        Commit(Vec<u8>),
    }

    #[test]
    fn what_ciborium_wrote_reads_through_the_fast_reader() {
        let value: (
            Secret,
            Vec<Option<Node>>,
            std::collections::BTreeMap<u32, String>,
            bool,
        ) = (
            secret(),
            vec![
                Some(Node::Leaf {
                    key: vec![1; 32],
                    source: Source::KeyPackage,
                }),
                None,
                Some(Node::Parent(vec![200; 32], vec![0, 70_000, u32::MAX])),
                Some(Node::Leaf {
                    key: vec![],
                    source: Source::Commit(vec![9; 3]),
                }),
                Some(Node::Blank),
            ],
            [(1, "a".into()), (u32::MAX, "é".into())].into(),
            true,
        );
        let bytes = provider::stored(&value).expect("encode");
        let before = SLOW_DECODES.with(|c| c.get());
        assert_eq!(decode::<_>(&bytes).ok(), Some(value));
        assert_eq!(SLOW_DECODES.with(|c| c.get()), before, "fast path");
    }

    #[test]
    fn the_unit_ciborium_writes_reads_through_the_fallback() {
        // ciborium writes () as null, which cbor4ii refuses.
        let bytes = provider::stored(&(5u8, ())).expect("encode");
        let before = SLOW_DECODES.with(|c| c.get());
        assert_eq!(decode::<(u8, ())>(&bytes).ok(), Some((5, ())));
        assert_eq!(SLOW_DECODES.with(|c| c.get()), before + 1);
        // Neither reader takes a truncated value.
        let cut = &bytes[..bytes.len() - 1];
        assert!(matches!(
            decode::<(u8, ())>(cut),
            Err(MlsStorageError::Serialization(_))
        ));
    }

    fn key(label: &[u8]) -> Vec<u8> {
        build_key_from_vec(label, b"group".to_vec())
    }

    #[test]
    fn stores_sharing_values_hold_a_large_value_once_and_stay_independent() {
        let shared = SharedValues::new();
        let a = MlsStorage::new(HashMap::new(), Some(shared.clone()));
        let b = MlsStorage::new(HashMap::new(), Some(shared.clone()));
        let tree = vec![7u8; 4096];
        a.write_common(b"Tree", b"group", tree.clone())
            .expect("write");
        b.write_common(b"Tree", b"group", tree.clone())
            .expect("write");
        let in_a = a.lock().values[&key(b"Tree")].clone();
        let in_b = b.lock().values[&key(b"Tree")].clone();
        assert!(Arc::ptr_eq(&in_a, &in_b), "one copy for both stores");
        assert_eq!(shared.live(), 1);
        drop((in_a, in_b));
        // Each store counts its half.
        let (_, bytes) = a.lock().usage();
        assert_eq!(bytes, key(b"Tree").len() + 2048);

        a.write(b"Secrets", b"group", tree.clone()).expect("write");
        b.write(b"Secrets", b"group", tree.clone()).expect("write");
        assert!(!Arc::ptr_eq(
            &a.lock().values[&key(b"Secrets")],
            &b.lock().values[&key(b"Secrets")]
        ));
        // Small values are not worth sharing, nor values unique to a
        // member (above).
        a.write_common(b"Epoch", b"group", vec![1; 16])
            .expect("write");
        b.write_common(b"Epoch", b"group", vec![1; 16])
            .expect("write");
        assert!(!Arc::ptr_eq(
            &a.lock().values[&key(b"Epoch")],
            &b.lock().values[&key(b"Epoch")]
        ));

        // b moves on (then rolls back, then moves on for good): a keeps its
        // value, and the pool holds both.
        b.lock().undo.clear();
        let next = vec![8u8; 4096];
        b.write_common(b"Tree", b"group", next.clone())
            .expect("write");
        b.lock().rollback();
        assert_eq!(&*b.lock().values[&key(b"Tree")], tree.as_slice());
        b.write_common(b"Tree", b"group", next.clone())
            .expect("write");
        assert_eq!(&*a.lock().values[&key(b"Tree")], tree.as_slice());
        assert_eq!(&*b.lock().values[&key(b"Tree")], next.as_slice());
        assert_eq!(shared.live(), 2);
        // Once nobody holds the old value it is gone from the pool.
        // (after both steps commit: their undo logs held it too).
        a.write_common(b"Tree", b"group", next).expect("write");
        a.lock().undo.clear();
        b.lock().undo.clear();
        assert_eq!(shared.live(), 1);
    }

    #[test]
    fn a_damaged_value_is_an_error_not_a_panic() {
        let cbor = provider::stored(&secret()).expect("encode");
        for cut in [1, cbor.len() / 2, cbor.len() - 1] {
            assert!(decode::<Secret>(&cbor[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode::<Secret>(&[CBOR_VALUE, 0xff, 0x00]).is_err());
        assert!(decode::<Secret>(b"{\"epoch\":").is_err());
        assert!(decode::<Secret>(&[]).is_err());
    }
}
