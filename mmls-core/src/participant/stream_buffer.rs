//! The out-of-order buffer of each send group's stream, and the alternates
//! kept for positions where two different entries arrived.

use super::*;

impl Participant {
    pub(super) fn buffer_put(&mut self, g: Id32, seq: u64, v: Vec<u8>) {
        let old = self.buffers.entry(g).or_default().insert(seq, v.clone());
        self.buffer_undo.push((g, seq, old));
        self.provider
            .store()
            .put(Table::Buffer, &log_key(&g, seq), &v);
    }

    pub(super) fn buffer_remove(&mut self, g: Id32, seq: u64) {
        if let Some(old) = self.buffers.get_mut(&g).and_then(|b| b.remove(&seq)) {
            self.buffer_undo.push((g, seq, Some(old)));
            self.provider
                .store()
                .delete(Table::Buffer, &log_key(&g, seq));
        }
    }

    /// Remembers another candidate for stream position `seq` of `g`
    /// (bounded; false if it is known or there is no room).
    pub(super) fn add_alternate(&mut self, g: Id32, seq: u64, bytes: &[u8]) -> bool {
        let total: usize = self.alternates.values().map(Vec::len).sum();
        let list = self.alternates.entry((g, seq)).or_default();
        if list.iter().any(|a| a.as_slice() == bytes) {
            return false;
        }
        if list.len() >= MAX_ALTERNATES_PER_POSITION || total >= MAX_ALTERNATES {
            // Keep the newest: the real entry is fetched again on every
            // retry, a flood of forgeries must not pin the slots.
            if list.is_empty() {
                return false;
            }
            list.remove(0);
        }
        list.push(bytes.to_vec());
        true
    }

    /// The first seq not yet in our buffer, starting at `next`.
    pub(super) fn buffer_head(&self, g: &Id32, next: u64) -> u64 {
        let mut n = next;
        if let Some(b) = self.buffers.get(g) {
            while b.contains_key(&n) {
                n += 1;
            }
        }
        n
    }
}
