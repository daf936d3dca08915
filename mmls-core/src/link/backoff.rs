//! When to dial a peer again after its connection ended.
//!
//! A connection that ends young (closed for silence, reset, refused by the
//! peer) cost a handshake and a summary exchange for little; on a
//! saturated link, dialling again at once only adds to the load that
//! killed it. So each young end doubles the wait, and a connection that
//! lived `stable_after_ms` clears it. Failed dials do not count: a dial
//! into a dead link costs a few packets and must keep coming, or a link
//! that returns after an outage would be used late.

use super::LinkConfig;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// Connections in a row that ended young.
    failures: u32,
    /// Not before then.
    next_dial_ms: u64,
}

impl Backoff {
    /// A connection that opened at `opened_ms` ended at `now_ms`.
    pub(crate) fn ended(&mut self, opened_ms: u64, now_ms: u64, cfg: &LinkConfig) {
        if now_ms.saturating_sub(opened_ms) >= cfg.stable_after_ms {
            self.failures = 0;
            self.next_dial_ms = 0;
            return;
        }
        self.failures = self.failures.saturating_add(1);
        self.next_dial_ms = now_ms.saturating_add(self.wait_ms(cfg));
    }

    /// The wait after the last young end.
    pub(crate) fn wait_ms(&self, cfg: &LinkConfig) -> u64 {
        if self.failures == 0 {
            return 0;
        }
        let shift = (self.failures - 1).min(20);
        cfg.redial_base_ms
            .saturating_mul(1u64 << shift)
            .min(cfg.redial_max_ms)
    }

    pub(crate) fn may_dial(&self, now_ms: u64) -> bool {
        now_ms >= self.next_dial_ms
    }

    pub(crate) fn next_dial_ms(&self) -> u64 {
        self.next_dial_ms
    }

    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn young_ends_double_the_wait_and_a_stable_connection_clears_it() {
        let cfg = LinkConfig::default();
        let mut b = Backoff::default();
        assert!(b.may_dial(0));
        let mut t = 0;
        let mut waits = vec![];
        for _ in 0..10 {
            b.ended(t, t + 5000, &cfg);
            t += 5000;
            waits.push(b.wait_ms(&cfg));
            assert!(!b.may_dial(t));
            assert!(b.may_dial(t + b.wait_ms(&cfg)));
        }
        assert_eq!(waits[0], cfg.redial_base_ms);
        assert_eq!(waits[1], 2 * cfg.redial_base_ms);
        assert_eq!(*waits.last().unwrap(), cfg.redial_max_ms);
        b.ended(t, t + cfg.stable_after_ms, &cfg);
        assert_eq!(b.failures(), 0);
        assert!(b.may_dial(t + cfg.stable_after_ms));
    }
}
