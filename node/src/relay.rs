//! The relay cache: stream entries of *other* owners' send groups that this
//! node has seen, kept (bounded, in memory) so it can serve them to peers
//! that fetch.
//!
//! The engine's envelope log only holds a node's own stream entries, so
//! without this a member can only catch up from the owner itself: in a line
//! A - B - C, C could never fetch what it missed of A's stream. With it, any
//! peer that saw an entry can hand it on, as the design intends ("fetch what
//! they missed from any peer"). Entries are MLS-protected; the fetcher's
//! engine authenticates them like gossip.

use mmls_core::sync::{FetchResponse, MAX_FETCH_BYTES, MAX_FETCH_ENVELOPES};
use mmls_core::{Envelope, Id32, Kind};
use serde_bytes::ByteBuf;
use std::collections::{HashMap, VecDeque};

pub(crate) struct RelayCache {
    entries: HashMap<(Id32, u64), Vec<u8>>,
    order: VecDeque<(Id32, u64)>,
    bytes: usize,
    max_bytes: usize,
    max_entries: usize,
}

impl RelayCache {
    pub(crate) fn new(max_bytes: usize, max_entries: usize) -> RelayCache {
        RelayCache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_entries,
        }
    }

    /// Remembers a stream entry. `replace`: the engine accepted these bytes
    /// (a previously cached entry for the position may have been a forgery
    /// it later dropped).
    pub(crate) fn remember(&mut self, bytes: &[u8], replace: bool) {
        if self.max_entries == 0 {
            return;
        }
        let Ok(env) = Envelope::decode(bytes) else {
            return;
        };
        if !matches!(env.kind, Kind::Commit | Kind::Application | Kind::Welcome) {
            return;
        }
        let Some(g) = env.group else { return };
        let key = (g, env.seq);
        if let Some(old) = self.entries.get_mut(&key) {
            if replace && old.as_slice() != bytes {
                self.bytes = self.bytes - old.len() + bytes.len();
                *old = bytes.to_vec();
            }
            return;
        }
        self.entries.insert(key, bytes.to_vec());
        self.order.push_back(key);
        self.bytes += bytes.len();
        while self.bytes > self.max_bytes || self.entries.len() > self.max_entries {
            let Some(k) = self.order.pop_front() else {
                break;
            };
            if let Some(v) = self.entries.remove(&k) {
                self.bytes -= v.len();
            }
        }
    }

    /// Entries `from..head` of `group`, as far as they are contiguous here.
    pub(crate) fn serve(&self, group: &Id32, from: u64, head: u64) -> FetchResponse {
        let mut resp = FetchResponse::default();
        let mut size = 0;
        let mut seq = from;
        while seq < head {
            let Some(v) = self.entries.get(&(*group, seq)) else {
                break;
            };
            if resp.envelopes.len() == MAX_FETCH_ENVELOPES || size + v.len() > MAX_FETCH_BYTES {
                resp.more = true;
                break;
            }
            size += v.len();
            resp.envelopes.push(ByteBuf::from(v.clone()));
            seq += 1;
        }
        resp
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(g: u8, seq: u64, body: &[u8]) -> Vec<u8> {
        let mut e = Envelope::new(Kind::Application, body.to_vec());
        e.universe = Some(Id32([9; 32]));
        e.group = Some(Id32([g; 32]));
        e.seq = seq;
        e.encode()
    }

    #[test]
    fn serves_contiguous_runs_below_the_head() {
        let mut c = RelayCache::new(1 << 20, 100);
        for s in [3, 4, 5, 7] {
            c.remember(&entry(1, s, b"x"), false);
        }
        let g = Id32([1; 32]);
        assert_eq!(c.serve(&g, 3, 100).envelopes.len(), 3);
        assert_eq!(c.serve(&g, 4, 5).envelopes.len(), 1);
        assert!(c.serve(&g, 2, 100).envelopes.is_empty());
        assert!(c.serve(&Id32([2; 32]), 3, 100).envelopes.is_empty());
    }

    #[test]
    fn bounded_and_replaceable() {
        let mut c = RelayCache::new(1 << 20, 10);
        for s in 0..50 {
            c.remember(&entry(1, s, b"x"), false);
        }
        assert_eq!(c.len(), 10);
        let g = Id32([1; 32]);
        assert!(c.serve(&g, 0, 100).envelopes.is_empty(), "oldest evicted");
        let forged = entry(1, 45, b"forged");
        let real = entry(1, 45, b"real");
        c.remember(&real, false);
        let mut c2 = RelayCache::new(1 << 20, 10);
        c2.remember(&forged, false);
        c2.remember(&real, false);
        assert_eq!(
            c2.serve(&g, 45, 46).envelopes[0].as_slice(),
            forged.as_slice()
        );
        c2.remember(&real, true);
        assert_eq!(
            c2.serve(&g, 45, 46).envelopes[0].as_slice(),
            real.as_slice()
        );
        // Lobby kinds are not stream entries.
        let mut kp = Envelope::new(Kind::KeyPackage, vec![1]);
        kp.group = Some(g);
        c2.remember(&kp.encode(), true);
        assert_eq!(c2.len(), 1);
    }
}
