//! Which connections are dead: those whose pings have gone unanswered for
//! `ping_interval + ping_timeout`.
//!
//! libp2p's ping reports a failure only at the second one in a row, and
//! the second needs a new stream, whose negotiation over a dead link waits
//! for the swarm's 10 s substream timeout: a dead link would be noticed
//! after 10 to 14 s. Counting from the last answered ping notices it after
//! one missed answer.

use libp2p::swarm::ConnectionId;
use libp2p::PeerId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub(crate) struct Liveness {
    /// Connections whose peer answers pings: when it last did (or when the
    /// connection opened).
    last_pong: HashMap<ConnectionId, (PeerId, Instant)>,
    dead_after: Duration,
}

impl Liveness {
    pub(crate) fn new(ping_interval: Duration, ping_timeout: Duration) -> Liveness {
        Liveness {
            last_pong: HashMap::new(),
            dead_after: ping_interval + ping_timeout,
        }
    }

    pub(crate) fn opened(&mut self, c: ConnectionId, peer: PeerId, now: Instant) {
        self.last_pong.insert(c, (peer, now));
    }

    pub(crate) fn pong(&mut self, c: ConnectionId, now: Instant) {
        if let Some((_, t)) = self.last_pong.get_mut(&c) {
            *t = now;
        }
    }

    /// The peer does not speak ping: we cannot tell, so we never close it.
    pub(crate) fn unsupported(&mut self, c: ConnectionId) {
        self.last_pong.remove(&c);
    }

    pub(crate) fn closed(&mut self, c: ConnectionId) {
        self.last_pong.remove(&c);
    }

    /// The connections to close now (each reported once).
    pub(crate) fn dead(&mut self, now: Instant) -> Vec<(ConnectionId, PeerId)> {
        let after = self.dead_after;
        let dead: Vec<(ConnectionId, PeerId)> = self
            .last_pong
            .iter()
            .filter(|(_, (_, t))| now.saturating_duration_since(*t) > after)
            .map(|(c, (p, _))| (*c, *p))
            .collect();
        for (c, _) in &dead {
            self.last_pong.remove(c);
        }
        dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_dead_after_one_unanswered_ping() {
        let mut l = Liveness::new(Duration::from_secs(1), Duration::from_secs(2));
        let t0 = Instant::now();
        let (a, b, c) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
            ConnectionId::new_unchecked(3),
        );
        let p = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        for x in [a, b, c] {
            l.opened(x, p, t0);
        }
        l.unsupported(c);
        assert!(l.dead(t0 + Duration::from_secs(3)).is_empty());
        l.pong(a, t0 + Duration::from_secs(1));
        assert_eq!(l.dead(t0 + Duration::from_millis(3500)), vec![(b, p)]);
        // Reported once; a pinged in time lives on; c is never judged.
        assert!(l.dead(t0 + Duration::from_millis(3600)).is_empty());
        assert_eq!(l.dead(t0 + Duration::from_millis(4100)), vec![(a, p)]);
        assert!(l.dead(t0 + Duration::from_secs(100)).is_empty());
        // Closed connections are forgotten.
        l.opened(b, p, t0);
        l.closed(b);
        assert!(l.dead(t0 + Duration::from_secs(100)).is_empty());
    }
}
