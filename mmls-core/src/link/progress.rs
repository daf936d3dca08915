//! Whether a connected peer is still there: any progress counts as life
//! (bytes received on any stream, a pong), and the silence we tolerate
//! grows with the measured round trip and with what we queued in front of
//! our own ping.
//!
//! The rule it replaces closed a connection after 3 s without a pong. On a
//! 256 kbit/s radio, a pong queued behind a fetch answer or a burst of
//! gossip takes longer than that, so every busy connection was closed,
//! redialled, and re-ran its handshakes and summaries on a link that never
//! drained.

use super::rtt::Rtt;
use super::LinkConfig;

/// Receive-rate samples are taken over windows this long.
const RATE_WINDOW_MS: u64 = 1000;

#[derive(Debug, Clone)]
pub(crate) struct Progress {
    /// Last time the peer showed life.
    heard_ms: u64,
    /// Bytes we wrote to the peer since then: they sit in queues in front
    /// of anything the peer could answer.
    written_since_heard: u64,
    pub(crate) rtt: Rtt,
    /// The highest receive rate seen (bytes per second, decaying): what
    /// the link can carry, at least.
    rate_bps: f64,
    window_start_ms: u64,
    window_bytes: u64,
    pub(crate) received: u64,
    pub(crate) sent: u64,
}

impl Progress {
    pub(crate) fn new(now_ms: u64) -> Progress {
        Progress {
            heard_ms: now_ms,
            written_since_heard: 0,
            rtt: Rtt::default(),
            rate_bps: 0.0,
            window_start_ms: now_ms,
            window_bytes: 0,
            received: 0,
            sent: 0,
        }
    }

    pub(crate) fn received(&mut self, bytes: u64, now_ms: u64) {
        if bytes == 0 {
            return;
        }
        self.heard_ms = self.heard_ms.max(now_ms);
        self.written_since_heard = 0;
        self.received += bytes;
        let elapsed = now_ms.saturating_sub(self.window_start_ms);
        if elapsed >= RATE_WINDOW_MS {
            let rate = self.window_bytes as f64 * 1000.0 / elapsed as f64;
            // Slow decay: a link that was fast once is assumed fast for a
            // while (a shorter allowance), and re-measured as data flows.
            self.rate_bps = rate.max(self.rate_bps * 0.9);
            self.window_start_ms = now_ms;
            self.window_bytes = 0;
        }
        self.window_bytes += bytes;
    }

    pub(crate) fn sent(&mut self, bytes: u64) {
        self.written_since_heard += bytes;
        self.sent += bytes;
    }

    pub(crate) fn pong(&mut self, rtt_ms: u64, now_ms: u64) {
        self.rtt.sample(rtt_ms);
        self.heard_ms = self.heard_ms.max(now_ms);
        self.written_since_heard = 0;
    }

    /// Bytes per second the link carries, as far as we know (never below
    /// the configured floor).
    pub(crate) fn rate_bytes_per_s(&self, cfg: &LinkConfig) -> f64 {
        self.rate_bps.max(cfg.min_rate_bps as f64 / 8.0)
    }

    /// How long what we queued takes to drain at that rate.
    pub(crate) fn queue_ms(&self, cfg: &LinkConfig) -> u64 {
        (self.written_since_heard as f64 * 1000.0 / self.rate_bytes_per_s(cfg)).ceil() as u64
    }

    /// The silence after which the peer counts as gone: a ping interval,
    /// the time an answer takes, and the queue in front of our ping.
    pub(crate) fn allowance_ms(&self, cfg: &LinkConfig) -> u64 {
        (cfg.ping_interval_ms + self.rtt.rto_ms() + self.queue_ms(cfg))
            .clamp(cfg.min_silence_ms, cfg.max_silence_ms)
    }

    pub(crate) fn deadline_ms(&self, cfg: &LinkConfig) -> u64 {
        self.heard_ms.saturating_add(self.allowance_ms(cfg))
    }

    pub(crate) fn silent_for_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.heard_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_slow_link_earns_a_longer_allowance() {
        let cfg = LinkConfig::default();
        let mut p = Progress::new(0);
        assert_eq!(p.allowance_ms(&cfg), cfg.min_silence_ms);
        // 256 kbit/s: 32 KB/s flows in, answers take ~1.8 s.
        for t in 1..=10u64 {
            p.received(32_000, t * 1000);
            p.pong(1800, t * 1000);
        }
        let idle = p.allowance_ms(&cfg);
        assert!(idle > cfg.min_silence_ms, "rtt counts: {idle}");
        // We queue a 256 KiB fetch answer: ~8 s of drain at 32 KB/s.
        p.sent(256 * 1024);
        let busy = p.allowance_ms(&cfg);
        assert!(busy >= idle + 7000, "{busy} vs {idle}");
        // Anything heard resets the queue in front.
        p.received(100, 11_000);
        assert_eq!(p.allowance_ms(&cfg), idle);
        assert!(p.deadline_ms(&cfg) >= 11_000 + idle);
    }

    #[test]
    fn a_lan_outage_is_noticed_in_seconds() {
        let cfg = LinkConfig::default();
        let mut p = Progress::new(0);
        for t in 1..=20u64 {
            p.pong(1, t * 500);
            p.received(2_000_000, t * 500);
        }
        // The link goes at 10 s; we keep writing a little gossip.
        p.sent(4000);
        let d = p.deadline_ms(&cfg);
        assert!(d <= 10_000 + cfg.min_silence_ms + 100, "{d}");
        assert!(p.silent_for_ms(12_000) == 2000);
    }
}
