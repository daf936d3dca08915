//! Journaled rows: engine state kept one store row per entity (per universe,
//! per send group, per known KeyPackage, ...), so that a step writes only the
//! rows it touched and a failed step restores only those.
//!
//! A whole-state blob made every step serialize everything and a rollback
//! re-parse it: over 40 % of CPU at 32 members. Here a step pays for what it
//! changes: the first mutable access to a row records its prior image, the
//! commit writes the touched rows, the rollback puts the images back.

use crate::store::{Store, StoreError, Table};
use crate::universe::{from_cbor, to_cbor};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;

/// A value stored as one row.
pub(super) trait Row: Serialize + DeserializeOwned {
    /// What restores this row after a failed step: the whole row by default.
    /// Takes `&mut self` so a row holding its own journaled sub-rows can
    /// leave them out of the image (they have their own journal).
    fn undo_image(&mut self) -> Self;
    /// Puts an image back.
    fn restore(&mut self, image: Self);
}

/// Rows that are plain values.
macro_rules! plain_row {
    ($($t:ty),*) => {$(
        impl Row for $t {
            fn undo_image(&mut self) -> Self {
                self.clone()
            }
            fn restore(&mut self, image: Self) {
                *self = image;
            }
        }
    )*};
}
pub(super) use plain_row;

plain_row!(u64, (), serde_bytes::ByteBuf);

/// A row key: its bytes in the store (after the map's prefix).
pub(super) trait RowKey: Ord + Clone {
    fn to_key(&self) -> Vec<u8>;
    fn from_key(k: &[u8]) -> Option<Self>;
}

impl RowKey for crate::id::Id32 {
    fn to_key(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
    fn from_key(k: &[u8]) -> Option<Self> {
        crate::id::Id32::from_slice(k)
    }
}

impl RowKey for crate::identity::MemberId {
    fn to_key(&self) -> Vec<u8> {
        self.as_str().as_bytes().to_vec()
    }
    fn from_key(k: &[u8]) -> Option<Self> {
        crate::identity::MemberId::parse(std::str::from_utf8(k).ok()?).ok()
    }
}

impl RowKey for serde_bytes::ByteBuf {
    fn to_key(&self) -> Vec<u8> {
        self.to_vec()
    }
    fn from_key(k: &[u8]) -> Option<Self> {
        Some(serde_bytes::ByteBuf::from(k.to_vec()))
    }
}

/// How a row touched in this step looked before it.
#[derive(Debug)]
enum Before<V> {
    /// Not there: a rollback removes it.
    Absent,
    /// There; this image restores it.
    Image(V),
    /// Removed in this step: the whole row, moved here.
    Removed(V),
}

/// A map of rows with a journal of the current step.
#[derive(Debug)]
pub(super) struct Rows<K, V> {
    rows: BTreeMap<K, V>,
    journal: BTreeMap<K, Before<V>>,
}

impl<'a, K, V> IntoIterator for &'a Rows<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::collections::btree_map::Iter<'a, K, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.rows.iter()
    }
}

/// A read-only copy (no journal).
impl<K: Clone, V: Clone> Clone for Rows<K, V> {
    fn clone(&self) -> Self {
        Rows {
            rows: self.rows.clone(),
            journal: BTreeMap::new(),
        }
    }
}

impl<K, V> Default for Rows<K, V> {
    fn default() -> Self {
        Rows {
            rows: BTreeMap::new(),
            journal: BTreeMap::new(),
        }
    }
}

impl<K: RowKey, V: Row> Rows<K, V> {
    /// Loads every row of `table` under `prefix`. A row that does not parse
    /// is a corrupt store, reported, never skipped.
    pub(super) fn load(store: &Store, table: Table, prefix: &[u8]) -> Result<Self, StoreError> {
        let end = prefix_end(prefix);
        let mut rows = BTreeMap::new();
        for (k, v) in store.range(table, prefix, end.as_deref(), usize::MAX)? {
            let key = k
                .get(prefix.len()..)
                .and_then(K::from_key)
                .ok_or_else(|| StoreError::Corrupt(format!("bad {} row key", table.name())))?;
            let row: V = from_cbor(&v)
                .map_err(|e| StoreError::Corrupt(format!("{} row: {e}", table.name())))?;
            rows.insert(key, row);
        }
        Ok(Rows {
            rows,
            journal: BTreeMap::new(),
        })
    }

    /// Rows as loaded from the store by someone else (nothing to write).
    pub(super) fn from_committed(rows: BTreeMap<K, V>) -> Self {
        Rows {
            rows,
            journal: BTreeMap::new(),
        }
    }

    /// Every row mutably, without journaling: only to reach sub-rows.
    pub(super) fn iter_untracked_mut(&mut self) -> std::collections::btree_map::IterMut<'_, K, V> {
        self.rows.iter_mut()
    }

    /// Rows from memory (a migrated blob): all of them count as touched, so
    /// the next commit writes them.
    pub(super) fn fresh(rows: BTreeMap<K, V>) -> Self {
        let journal = rows.keys().map(|k| (k.clone(), Before::Absent)).collect();
        Rows { rows, journal }
    }

    pub(super) fn get(&self, k: &K) -> Option<&V> {
        self.rows.get(k)
    }

    pub(super) fn contains_key(&self, k: &K) -> bool {
        self.rows.contains_key(k)
    }

    pub(super) fn iter(&self) -> std::collections::btree_map::Iter<'_, K, V> {
        self.rows.iter()
    }

    pub(super) fn keys(&self) -> std::collections::btree_map::Keys<'_, K, V> {
        self.rows.keys()
    }

    pub(super) fn values(&self) -> std::collections::btree_map::Values<'_, K, V> {
        self.rows.values()
    }

    fn note(&mut self, k: &K) {
        if self.journal.contains_key(k) {
            return;
        }
        let before = match self.rows.get_mut(k) {
            Some(v) => Before::Image(v.undo_image()),
            None => Before::Absent,
        };
        self.journal.insert(k.clone(), before);
    }

    /// Mutable access: the row is written at the next commit.
    pub(super) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        if !self.rows.contains_key(k) {
            return None;
        }
        self.note(k);
        self.rows.get_mut(k)
    }

    /// Mutable access without journaling, only to reach a row's own
    /// journaled sub-rows (a universe's groups): changing the row itself
    /// through it would be lost on restart.
    pub(super) fn get_untracked_mut(&mut self, k: &K) -> Option<&mut V> {
        self.rows.get_mut(k)
    }

    /// Records `old`, just taken out of `rows`, as the row before the step.
    fn note_removed(&mut self, k: &K, mut old: V) {
        match self.journal.remove(k) {
            None => {
                self.journal.insert(k.clone(), Before::Removed(old));
            }
            Some(Before::Image(img)) => {
                // Back to how it was before the step (keeping its sub-rows).
                old.restore(img);
                self.journal.insert(k.clone(), Before::Removed(old));
            }
            // Inserted or already replaced in this step: `old` is not the
            // row before the step.
            Some(b) => {
                self.journal.insert(k.clone(), b);
            }
        }
    }

    /// Inserts or replaces a row.
    pub(super) fn insert(&mut self, k: K, v: V) {
        match self.rows.remove(&k) {
            Some(old) => self.note_removed(&k, old),
            None => {
                self.journal.entry(k.clone()).or_insert(Before::Absent);
            }
        }
        self.rows.insert(k, v);
    }

    /// Removes a row; true if it was there.
    pub(super) fn remove(&mut self, k: &K) -> bool {
        match self.rows.remove(k) {
            Some(old) => {
                self.note_removed(k, old);
                true
            }
            None => false,
        }
    }

    /// Rows removed in this step, as they were before it.
    pub(super) fn removed(&self) -> impl Iterator<Item = &V> {
        self.journal.values().filter_map(|b| match b {
            Before::Removed(v) => Some(v),
            _ => None,
        })
    }

    pub(super) fn get_or_insert_with(&mut self, k: K, f: impl FnOnce() -> V) -> &mut V {
        self.note(&k);
        self.rows.entry(k).or_insert_with(f)
    }

    /// Whether this step touched any row.
    pub(super) fn is_touched(&self) -> bool {
        !self.journal.is_empty()
    }

    /// The rows this step touched: `Some` to write, `None` to delete.
    pub(super) fn touched(&self) -> impl Iterator<Item = (&K, Option<&V>)> {
        self.journal.keys().map(|k| (k, self.rows.get(k)))
    }

    /// Writes the touched rows to `table` under `prefix` (in the store's
    /// pending step).
    pub(super) fn write(&self, store: &Store, table: Table, prefix: &[u8]) {
        for (k, v) in self.touched() {
            let mut key = prefix.to_vec();
            key.extend_from_slice(&k.to_key());
            match v {
                Some(v) => store.put(table, &key, &to_cbor(v)),
                None => store.delete(table, &key),
            }
        }
    }

    /// The step is durable: forget the journal.
    pub(super) fn settle(&mut self) {
        self.journal.clear();
    }

    /// The step failed: every touched row back to how it was.
    pub(super) fn rollback(&mut self) {
        for (k, before) in std::mem::take(&mut self.journal) {
            match before {
                Before::Absent => {
                    self.rows.remove(&k);
                }
                Before::Image(img) => {
                    if let Some(v) = self.rows.get_mut(&k) {
                        v.restore(img);
                    }
                }
                Before::Removed(v) => {
                    self.rows.insert(k, v);
                }
            }
        }
    }
}

/// What a step's end does to every journal, whatever its rows.
pub(super) trait Journal {
    fn settle(&mut self);
    fn rollback(&mut self);
}

impl<K: RowKey, V: Row> Journal for Rows<K, V> {
    fn settle(&mut self) {
        Rows::settle(self)
    }
    fn rollback(&mut self) {
        Rows::rollback(self)
    }
}

impl<V: Row + Default> Journal for Cell<V> {
    fn settle(&mut self) {
        Cell::settle(self)
    }
    fn rollback(&mut self) {
        Cell::rollback(self)
    }
}

/// The first key after every key starting with `prefix` (None: no end).
pub(super) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A single journaled row (node-wide state).
#[derive(Debug, Default)]
pub(super) struct Cell<V> {
    value: V,
    before: Option<V>,
}

impl<V: Row + Default> Cell<V> {
    pub(super) fn new(value: V) -> Self {
        Cell {
            value,
            before: None,
        }
    }
    pub(super) fn get(&self) -> &V {
        &self.value
    }
    pub(super) fn get_mut(&mut self) -> &mut V {
        if self.before.is_none() {
            self.before = Some(self.value.undo_image());
        }
        &mut self.value
    }
    pub(super) fn is_touched(&self) -> bool {
        self.before.is_some()
    }
    pub(super) fn settle(&mut self) {
        self.before = None;
    }
    pub(super) fn rollback(&mut self) {
        if let Some(b) = self.before.take() {
            self.value.restore(b);
        }
    }
}
