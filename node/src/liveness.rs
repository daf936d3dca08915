//! Which connections are dead: those whose pings have gone unanswered for
//! `ping_interval + ping_timeout`, from a peer that sent us nothing else
//! in that time either (a busy connection can hold a pong up behind what
//! it carries, and a peer we hear from is not gone; the price is that a
//! dead connection next to a live one to the same peer is not noticed by
//! this, only by its transport's own timeout).
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
    /// When each peer last sent us anything (gossip, sync).
    heard: HashMap<PeerId, Instant>,
    dead_after: Duration,
}

impl Liveness {
    pub(crate) fn new(ping_interval: Duration, ping_timeout: Duration) -> Liveness {
        Liveness {
            last_pong: HashMap::new(),
            heard: HashMap::new(),
            dead_after: ping_interval + ping_timeout,
        }
    }

    pub(crate) fn opened(&mut self, c: ConnectionId, peer: PeerId, now: Instant) {
        self.last_pong.insert(c, (peer, now));
        self.heard.insert(peer, now);
    }

    pub(crate) fn pong(&mut self, c: ConnectionId, now: Instant) {
        if let Some((_, t)) = self.last_pong.get_mut(&c) {
            *t = now;
        }
    }

    /// `peer` sent us something: its connections are alive.
    pub(crate) fn heard(&mut self, peer: PeerId, now: Instant) {
        if let Some(t) = self.heard.get_mut(&peer) {
            *t = now;
        }
    }

    /// The peer does not speak ping: we cannot tell, so we never close it.
    pub(crate) fn unsupported(&mut self, c: ConnectionId) {
        self.last_pong.remove(&c);
    }

    pub(crate) fn closed(&mut self, c: ConnectionId) {
        if let Some((p, _)) = self.last_pong.remove(&c) {
            if !self.last_pong.values().any(|(q, _)| *q == p) {
                self.heard.remove(&p);
            }
        }
    }

    /// The connections to close now (each reported once).
    pub(crate) fn dead(&mut self, now: Instant) -> Vec<(ConnectionId, PeerId)> {
        let after = self.dead_after;
        let heard = &self.heard;
        let dead: Vec<(ConnectionId, PeerId)> = self
            .last_pong
            .iter()
            .filter(|(_, (p, t))| {
                let last = heard.get(p).map_or(*t, |h| (*h).max(*t));
                now.saturating_duration_since(last) > after
            })
            .map(|(c, (p, _))| (*c, *p))
            .collect();
        for (c, _) in &dead {
            self.closed(*c);
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

    #[test]
    fn a_peer_we_hear_from_is_alive_though_its_pongs_are_late() {
        let mut l = Liveness::new(Duration::from_secs(1), Duration::from_secs(2));
        let t0 = Instant::now();
        let c = ConnectionId::new_unchecked(1);
        let p = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        l.opened(c, p, t0);
        l.heard(p, t0 + Duration::from_secs(2));
        assert!(l.dead(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(l.dead(t0 + Duration::from_millis(5100)), vec![(c, p)]);
    }
}
