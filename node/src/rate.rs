//! Per-peer rate limits (sync requests, gossip messages) that a reconnect
//! does not reset.
//!
//! A peer's token buckets used to be forgotten when its last connection
//! closed, so a peer that disconnected and dialled again at once got a fresh
//! burst each time: reconnecting every 100 ms bought 2,000 sync requests a
//! second instead of 50. A disconnected peer's record is kept for
//! [`KEEP_GONE`] (issue 29: 10 minutes), and refills only at the rate while
//! it is away. At most [`MAX_GONE`] such records are kept (identities cost
//! nothing), the one gone longest evicted first; records of connected peers
//! are bounded by the connection limits. Sans-IO: time is passed in.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How long a disconnected peer's buckets are kept.
pub(crate) const KEEP_GONE: Duration = Duration::from_secs(600);
/// Disconnected peers whose buckets are kept at most.
pub(crate) const MAX_GONE: usize = 4096;

/// A token bucket: `burst` tokens, refilled at `rate` a second.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.last = self.last.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A rate and a burst.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

#[derive(Debug)]
struct Record {
    sync: Bucket,
    gossip: Bucket,
    /// When its last connection closed; `None` while connected.
    gone: Option<Instant>,
}

/// Every peer's buckets.
#[derive(Debug)]
pub(crate) struct Rates<K> {
    sync: Rate,
    gossip: Rate,
    peers: HashMap<K, Record>,
    keep_gone: Duration,
    max_gone: usize,
}

impl<K: Hash + Eq + Clone> Rates<K> {
    pub(crate) fn new(sync: Rate, gossip: Rate) -> Rates<K> {
        Rates {
            sync,
            gossip,
            peers: HashMap::new(),
            keep_gone: KEEP_GONE,
            max_gone: MAX_GONE,
        }
    }

    fn record(&mut self, peer: &K, now: Instant) -> &mut Record {
        let (s, g) = (self.sync.burst, self.gossip.burst);
        self.peers.entry(peer.clone()).or_insert_with(|| Record {
            sync: Bucket::new(s, now),
            gossip: Bucket::new(g, now),
            gone: None,
        })
    }

    /// Takes one of `peer`'s sync request tokens.
    pub(crate) fn sync(&mut self, peer: &K, now: Instant) -> bool {
        let r = self.sync;
        self.record(peer, now).sync.take(r.per_sec, r.burst, now)
    }

    /// Takes one of `peer`'s gossip tokens.
    pub(crate) fn gossip(&mut self, peer: &K, now: Instant) -> bool {
        let r = self.gossip;
        self.record(peer, now).gossip.take(r.per_sec, r.burst, now)
    }

    /// `peer` is connected (again): its record, if kept, is its own again.
    pub(crate) fn connected(&mut self, peer: &K) {
        if let Some(r) = self.peers.get_mut(peer) {
            r.gone = None;
        }
    }

    /// `peer`'s last connection closed: its record is kept for a while.
    pub(crate) fn disconnected(&mut self, peer: &K, now: Instant) {
        if let Some(r) = self.peers.get_mut(peer) {
            r.gone = Some(now);
        }
        self.evict();
    }

    /// Forgets records gone longer than `KEEP_GONE`, and counts as gone
    /// from now the records of peers `is_connected` denies (a token taken
    /// for a peer whose connection closed before its event came).
    pub(crate) fn gc(&mut self, now: Instant, is_connected: impl Fn(&K) -> bool) {
        let keep = self.keep_gone;
        self.peers.retain(|k, r| {
            if r.gone.is_none() && !is_connected(k) {
                r.gone = Some(now);
            }
            r.gone
                .is_none_or(|t| now.saturating_duration_since(t) < keep)
        });
        self.evict();
    }

    /// Past `max_gone` disconnected records, the one gone longest goes.
    fn evict(&mut self) {
        let mut gone: Vec<(Instant, K)> = self
            .peers
            .iter()
            .filter_map(|(k, r)| r.gone.map(|t| (t, k.clone())))
            .collect();
        if gone.len() <= self.max_gone {
            return;
        }
        let excess = gone.len() - self.max_gone;
        gone.select_nth_unstable_by_key(excess - 1, |(t, _)| *t);
        for (_, k) in gone.into_iter().take(excess) {
            self.peers.remove(&k);
        }
    }

    /// Records kept (connected and gone).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYNC: Rate = Rate {
        per_sec: 50.0,
        burst: 200.0,
    };
    const GOSSIP: Rate = Rate {
        per_sec: 2_000.0,
        burst: 10_000.0,
    };

    /// Sync tokens `peer` gets in one go at `now`.
    fn burst(r: &mut Rates<u32>, peer: u32, now: Instant) -> usize {
        (0..1_000).filter(|_| r.sync(&peer, now)).count()
    }

    #[test]
    fn token_bucket_limits_bursts_and_refills() {
        let t0 = Instant::now();
        let mut b = Bucket::new(5.0, t0);
        let n = (0..100).filter(|_| b.take(1.0, 5.0, t0)).count();
        assert_eq!(n, 5);
        let t = t0 + Duration::from_secs(2);
        assert!(b.take(1.0, 5.0, t));
        assert!(b.take(1.0, 5.0, t));
        assert!(!b.take(1.0, 5.0, t));
        // Time going backwards (another thread's `now`) refills nothing.
        assert!(!b.take(1.0, 5.0, t0));
    }

    #[test]
    fn a_reconnect_does_not_refill_a_peers_buckets() {
        let t0 = Instant::now();
        let mut r: Rates<u32> = Rates::new(SYNC, GOSSIP);
        assert_eq!(burst(&mut r, 7, t0), 200);
        assert_eq!((0..20_000).filter(|_| r.gossip(&7, t0)).count(), 10_000);
        // Gone and back 100 ms later: 5 sync tokens (the rate), not a
        // fresh burst of 200; the same for gossip.
        let back = t0 + Duration::from_millis(100);
        r.disconnected(&7, t0);
        r.gc(back, |_| false);
        r.connected(&7);
        assert_eq!(burst(&mut r, 7, back), 5);
        assert_eq!((0..20_000).filter(|_| r.gossip(&7, back)).count(), 200);
        // Another peer has its own burst.
        assert_eq!(burst(&mut r, 8, back), 200);
        // Gone for 10 minutes: forgotten (it would have refilled anyway).
        r.disconnected(&7, back);
        let later = back + KEEP_GONE - Duration::from_millis(1);
        r.gc(later, |p| *p == 8);
        assert_eq!(r.len(), 2, "kept until ten minutes are up");
        r.gc(back + KEEP_GONE, |p| *p == 8);
        assert_eq!(r.len(), 1);
        // A connected peer's record stays however long.
        r.gc(back + KEEP_GONE * 10, |p| *p == 8);
        assert_eq!(burst(&mut r, 8, back + KEEP_GONE * 10), 200);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn records_of_disconnected_peers_are_bounded_oldest_evicted() {
        let t0 = Instant::now();
        let mut r: Rates<u32> = Rates::new(SYNC, GOSSIP);
        let n = MAX_GONE as u32 + 100;
        for p in 0..n {
            let at = t0 + Duration::from_millis(p as u64);
            assert_eq!(burst(&mut r, p, at), 200);
            r.disconnected(&p, at);
        }
        assert_eq!(r.len(), MAX_GONE);
        let at = t0 + Duration::from_millis(n as u64);
        // The first 100 to leave were forgotten; the latest are kept.
        assert_eq!(burst(&mut r, 0, at), 200);
        assert!(burst(&mut r, n - 1, at) < 200);
        // Connected peers are never evicted for gone ones.
        let mut r: Rates<u32> = Rates::new(SYNC, GOSSIP);
        assert_eq!(burst(&mut r, u32::MAX, t0), 200);
        for p in 0..n {
            r.sync(&p, t0);
            r.disconnected(&p, t0);
        }
        assert_eq!(r.len(), MAX_GONE + 1);
        assert_eq!(burst(&mut r, u32::MAX, t0), 0);
    }
}
