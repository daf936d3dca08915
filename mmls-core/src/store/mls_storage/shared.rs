//! Large stored values held once per process.
//!
//! Every member of a group stores the same public tree for the same epoch,
//! and keeps the same envelopes in its log for peers that catch up, byte
//! for byte. A node holds one copy of each, but the simulator runs a whole
//! universe in one process: at N members it held N copies of each of the N
//! groups' trees and logs, most of a simulated node's memory at 128
//! members. Memory stores created with one [`SharedValues`] keep each
//! distinct tree and envelope once, so a simulated node costs its share of
//! the group state. Values are immutable once written (a write replaces
//! the whole value), so sharing them changes nothing a store can observe.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};

/// A value of openmls's state as the store holds it (cheap to clone into
/// the undo log and a frozen flush).
pub(crate) type Value = Arc<[u8]>;

/// Below this a value is not worth a hash and a lookup.
const MIN_SHARED_LEN: usize = 1024;

/// Values shared between the memory stores of one process
/// ([`Store::in_memory_sharing`](crate::store::Store::in_memory_sharing)).
#[derive(Clone, Default)]
pub struct SharedValues(Arc<Mutex<Pool>>);

impl std::fmt::Debug for SharedValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pool = self.lock();
        f.debug_struct("SharedValues")
            .field("entries", &pool.by_hash.len())
            .finish()
    }
}

#[derive(Default)]
struct Pool {
    /// A collision keeps the newest value: the other stays unshared, which
    /// costs memory, never correctness (a hit is compared byte for byte).
    by_hash: HashMap<u64, Weak<[u8]>>,
    /// Dead entries keep their allocation (a `Weak` holds it) until swept.
    /// Sweeping once as many values were added as the pool held at the
    /// last sweep keeps the dead at most about the live, at O(1) a value.
    added: usize,
    swept_at: usize,
}

impl SharedValues {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shared copy of `value` (the first store to write it provides it).
    pub(crate) fn share(&self, value: Vec<u8>) -> Value {
        if value.len() < MIN_SHARED_LEN {
            return value.into();
        }
        let mut h = DefaultHasher::new();
        value.hash(&mut h);
        let h = h.finish();
        let mut pool = self.lock();
        if let Some(existing) = pool.by_hash.get(&h).and_then(Weak::upgrade) {
            if *existing == *value {
                return existing;
            }
        }
        let shared: Value = value.into();
        pool.by_hash.insert(h, Arc::downgrade(&shared));
        pool.added += 1;
        if pool.added > pool.swept_at.max(64) {
            pool.by_hash.retain(|_, w| w.strong_count() > 0);
            pool.swept_at = pool.by_hash.len();
            pool.added = 0;
        }
        shared
    }

    /// Distinct live values.
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.lock()
            .by_hash
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}
