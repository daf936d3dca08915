//! Round-trip time of one peer, smoothed as TCP does (RFC 6298): a slow
//! link is told from a dead one by how long its answers have been taking,
//! not by a fixed timeout that a busy 256 kbit/s radio exceeds every time.

/// Smoothed RTT and its variation, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rtt {
    srtt: f64,
    rttvar: f64,
    min: u64,
    samples: u64,
}

/// Before the first sample: RFC 6298's initial RTO is 1 s (the smoothed
/// values start from it too, and the first sample replaces them).
const INITIAL_MS: f64 = 1000.0;

impl Default for Rtt {
    fn default() -> Self {
        Rtt {
            srtt: INITIAL_MS,
            rttvar: INITIAL_MS / 2.0,
            min: u64::MAX,
            samples: 0,
        }
    }
}

impl Rtt {
    pub(crate) fn sample(&mut self, ms: u64) {
        let r = ms as f64;
        if self.samples == 0 {
            self.srtt = r;
            self.rttvar = r / 2.0;
        } else {
            self.rttvar = 0.75 * self.rttvar + 0.25 * (self.srtt - r).abs();
            self.srtt = 0.875 * self.srtt + 0.125 * r;
        }
        self.min = self.min.min(ms);
        self.samples += 1;
    }

    /// The retransmission timeout: how long an answer may take before its
    /// absence means something.
    pub(crate) fn rto_ms(&self) -> u64 {
        if self.samples == 0 {
            return INITIAL_MS as u64;
        }
        (self.srtt + 4.0 * self.rttvar).ceil() as u64
    }

    pub(crate) fn smoothed_ms(&self) -> Option<u64> {
        (self.samples > 0).then(|| self.srtt.round() as u64)
    }

    pub(crate) fn min_ms(&self) -> Option<u64> {
        (self.samples > 0).then_some(self.min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_a_link_that_slows_down_and_recovers() {
        let mut r = Rtt::default();
        assert_eq!(r.smoothed_ms(), None);
        for _ in 0..20 {
            r.sample(2);
        }
        assert!(r.rto_ms() <= 10, "LAN: {}", r.rto_ms());
        // A radio under load: answers take 1.5-2.5 s.
        for i in 0..30 {
            r.sample(1500 + (i % 3) * 500);
        }
        let slow = r.rto_ms();
        assert!(slow > 2000 && slow < 6000, "radio: {slow}");
        assert_eq!(r.min_ms(), Some(2));
        for _ in 0..60 {
            r.sample(3);
        }
        assert!(r.rto_ms() < 100, "recovered: {}", r.rto_ms());
    }
}
