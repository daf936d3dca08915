//! Whom to dial, and when: the static peers (`--peer`) and the peers mDNS
//! found, re-dialled while they are not connected.
//!
//! We keep mDNS peers' addresses ourselves because mDNS reports a peer once
//! and again only after its record expired (TTL, 6 min) and a later query
//! found it: a link that comes back after a minute would otherwise wait for
//! that. Dials are paced per target (one per `interval`) but may overlap: a
//! dial started while the link was down can take until its timeout to fail,
//! and the next one, started after the link returned, must not wait for it.

use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Addresses kept per mDNS peer (the newest).
const MAX_ADDRS: usize = 8;
/// mDNS peers kept (the most recently seen).
const MAX_FOUND: usize = 256;
/// Dials in flight to one target at most, whatever the timeout and the
/// interval. A dial into a dead link fails within seconds (no route, no
/// ARP answer), so a few in flight keep one starting about every interval;
/// on a slow live link every one of them completes its handshakes, and all
/// but one connection are closed as duplicates: more would only load it.
const MAX_INFLIGHT: usize = 4;

/// What one dial goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    /// A static address whose peer we do not know (yet).
    Addr(Multiaddr),
    /// A peer, at every address we know for it (the swarm ranks them:
    /// QUIC first, TCP a moment later if QUIC has not answered).
    Peer(PeerId),
}

/// A dial to start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dial {
    pub target: Target,
    pub addrs: Vec<Multiaddr>,
}

struct Found {
    addrs: Vec<Multiaddr>,
    /// Last found by mDNS or connected.
    seen: Instant,
}

pub(crate) struct Redial {
    statics: Vec<Multiaddr>,
    /// Peers of static addresses, learnt when a dial to one succeeds.
    static_peer: HashMap<Multiaddr, PeerId>,
    found: HashMap<PeerId, Found>,
    last_dial: HashMap<Target, Instant>,
    inflight: HashMap<ConnectionId, (Target, Instant)>,
    interval: Duration,
    forget_after: Duration,
    dial_timeout: Duration,
    max_inflight: usize,
}

impl Redial {
    pub(crate) fn new(
        statics: Vec<Multiaddr>,
        interval: Duration,
        forget_after: Duration,
        dial_timeout: Duration,
    ) -> Redial {
        Redial {
            statics,
            static_peer: HashMap::new(),
            found: HashMap::new(),
            last_dial: HashMap::new(),
            inflight: HashMap::new(),
            interval,
            forget_after,
            dial_timeout,
            max_inflight: max_inflight(interval, dial_timeout),
        }
    }

    /// A static address to keep dialling (the API's dial command).
    pub(crate) fn add_static(&mut self, addr: Multiaddr) {
        if !self.statics.contains(&addr) {
            self.statics.push(addr);
        }
    }

    /// mDNS found `peer` at `addr` (or found it again).
    pub(crate) fn found(&mut self, peer: PeerId, addr: Multiaddr, now: Instant) {
        let addr = strip_p2p(addr);
        let f = self.found.entry(peer).or_insert_with(|| Found {
            addrs: vec![],
            seen: now,
        });
        f.seen = now;
        f.addrs.retain(|a| *a != addr);
        f.addrs.insert(0, addr);
        f.addrs.truncate(MAX_ADDRS);
        if self.found.len() > MAX_FOUND {
            let oldest = self
                .found
                .iter()
                .min_by_key(|(_, f)| f.seen)
                .map(|(p, _)| *p);
            if let Some(p) = oldest {
                self.found.remove(&p);
                self.last_dial.remove(&Target::Peer(p));
            }
        }
    }

    /// A connection to `peer` is up (`dialled`: the address we dialled, if
    /// we did).
    pub(crate) fn connected(&mut self, peer: PeerId, dialled: Option<&Multiaddr>, now: Instant) {
        if let Some(f) = self.found.get_mut(&peer) {
            f.seen = now;
        }
        if let Some(a) = dialled {
            if self.statics.contains(a) {
                self.static_peer.insert(a.clone(), peer);
            }
        }
    }

    /// A dial we started.
    pub(crate) fn started(&mut self, target: Target, id: ConnectionId, now: Instant) {
        self.last_dial.insert(target.clone(), now);
        self.inflight.insert(id, (target, now));
    }

    /// A dial ended (connected or failed).
    pub(crate) fn ended(&mut self, id: ConnectionId) {
        self.inflight.remove(&id);
    }

    /// The dials due now. `skip(peer)`: connected, blocked, or ourselves.
    pub(crate) fn due(&mut self, now: Instant, skip: impl Fn(&PeerId) -> bool) -> Vec<Dial> {
        // Every dial ends with an event; this only guards the bookkeeping
        // against one that never reported.
        let stale = self.dial_timeout * 2;
        self.inflight
            .retain(|_, (_, t)| now.saturating_duration_since(*t) < stale);
        let forget = self.forget_after;
        self.found
            .retain(|_, f| now.saturating_duration_since(f.seen) < forget);

        let mut out = vec![];
        let mut peers_due: Vec<PeerId> = vec![];
        for a in &self.statics {
            match peer_in(a).or_else(|| self.static_peer.get(a).copied()) {
                Some(p) if skip(&p) => {}
                // A known peer is dialled once, at all its addresses.
                Some(p) => {
                    if !peers_due.contains(&p) {
                        peers_due.push(p)
                    }
                }
                None => {
                    let t = Target::Addr(a.clone());
                    if self.ready(&t, now) {
                        out.push(Dial {
                            target: t,
                            addrs: vec![a.clone()],
                        });
                    }
                }
            }
        }
        for p in self.found.keys() {
            if !skip(p) && !peers_due.contains(p) {
                peers_due.push(*p);
            }
        }
        peers_due.sort();
        for p in peers_due {
            let t = Target::Peer(p);
            if !self.ready(&t, now) {
                continue;
            }
            let mut addrs: Vec<Multiaddr> = self
                .found
                .get(&p)
                .map(|f| f.addrs.clone())
                .unwrap_or_default();
            for a in &self.statics {
                let of_p = peer_in(a) == Some(p) || self.static_peer.get(a) == Some(&p);
                let a = strip_p2p(a.clone());
                if of_p && !addrs.contains(&a) {
                    addrs.push(a);
                }
            }
            out.push(Dial { target: t, addrs });
        }
        out
    }

    fn ready(&self, t: &Target, now: Instant) -> bool {
        let paced = self
            .last_dial
            .get(t)
            .is_none_or(|l| now.saturating_duration_since(*l) >= self.interval);
        let n = self.inflight.values().filter(|(x, _)| x == t).count();
        paced && n < self.max_inflight
    }
}

/// One dial per interval while each takes up to `dial_timeout` to fail.
fn max_inflight(interval: Duration, dial_timeout: Duration) -> usize {
    let per = dial_timeout.as_millis() / interval.as_millis().max(1);
    (per as usize + 2).min(MAX_INFLIGHT)
}

pub(crate) fn peer_in(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

fn strip_p2p(mut a: Multiaddr) -> Multiaddr {
    if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
        a.pop();
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(n: u8) -> PeerId {
        let kp = libp2p::identity::Keypair::ed25519_from_bytes([n; 32]).unwrap();
        kp.public().to_peer_id()
    }

    fn book(statics: Vec<Multiaddr>) -> Redial {
        Redial::new(
            statics,
            Duration::from_secs(1),
            Duration::from_secs(60),
            Duration::from_secs(5),
        )
    }

    #[test]
    fn found_peers_are_redialled_every_interval_while_absent() {
        let mut r = book(vec![]);
        let t0 = Instant::now();
        let p = pid(1);
        r.found(p, "/ip4/10.0.0.2/tcp/4001".parse().unwrap(), t0);
        r.found(p, "/ip4/10.0.0.2/udp/4001/quic-v1".parse().unwrap(), t0);
        let d = r.due(t0, |_| false);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].target, Target::Peer(p));
        assert_eq!(d[0].addrs.len(), 2);
        r.started(d[0].target.clone(), ConnectionId::new_unchecked(1), t0);
        // Paced: not again within the interval, even with the dial pending...
        assert!(r.due(t0 + Duration::from_millis(500), |_| false).is_empty());
        // ... but again after it, though the first dial has not ended: a dial
        // started while the link was down must not hold up the next one.
        assert_eq!(r.due(t0 + Duration::from_secs(1), |_| false).len(), 1);
        // Never while connected.
        assert!(r.due(t0 + Duration::from_secs(3), |_| true).is_empty());
    }

    #[test]
    fn found_peers_outlive_mdns_expiry_until_forget_after() {
        let mut r = book(vec![]);
        let t0 = Instant::now();
        let p = pid(2);
        r.found(p, "/ip4/10.0.0.2/tcp/4001".parse().unwrap(), t0);
        // Kept past any mDNS expiry, up to `forget_after` (60 s here).
        assert_eq!(r.due(t0 + Duration::from_secs(59), |_| false).len(), 1);
        assert!(r.due(t0 + Duration::from_secs(61), |_| false).is_empty());
        // A connection counts as seen.
        r.found(p, "/ip4/10.0.0.2/tcp/4001".parse().unwrap(), t0);
        r.connected(p, None, t0 + Duration::from_secs(50));
        assert_eq!(r.due(t0 + Duration::from_secs(100), |_| false).len(), 1);
    }

    #[test]
    fn inflight_dials_are_bounded_per_target() {
        let mut r = book(vec![]);
        let t0 = Instant::now();
        let p = pid(3);
        r.found(p, "/ip4/10.0.0.2/tcp/4001".parse().unwrap(), t0);
        let mut t = t0;
        // 5 s timeout, 1 s interval: 7 would fit, MAX_INFLIGHT caps it.
        assert_eq!(r.max_inflight, MAX_INFLIGHT);
        for i in 0..r.max_inflight {
            let d = r.due(t, |_| false);
            assert_eq!(d.len(), 1, "dial {i}");
            r.started(d[0].target.clone(), ConnectionId::new_unchecked(i), t);
            t += Duration::from_millis(1000);
        }
        assert!(r.due(t, |_| false).is_empty());
        r.ended(ConnectionId::new_unchecked(0));
        assert_eq!(r.due(t, |_| false).len(), 1);
    }

    #[test]
    fn static_addresses_join_their_peer_once_known() {
        let a: Multiaddr = "/ip4/10.0.0.3/tcp/4001".parse().unwrap();
        let mut r = book(vec![a.clone()]);
        let t0 = Instant::now();
        let d = r.due(t0, |_| false);
        assert_eq!(
            d,
            vec![Dial {
                target: Target::Addr(a.clone()),
                addrs: vec![a.clone()]
            }]
        );
        // Connected through it: now we know whose address it is, and skip
        // it while that peer is connected.
        let p = pid(4);
        r.connected(p, Some(&a), t0);
        assert!(r.due(t0 + Duration::from_secs(2), |q| *q == p).is_empty());
        // That peer, also found by mDNS, is dialled once at both addresses.
        let m: Multiaddr = "/ip4/10.0.0.3/udp/4001/quic-v1".parse().unwrap();
        r.found(p, m.clone(), t0);
        let d = r.due(t0 + Duration::from_secs(4), |_| false);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].target, Target::Peer(p));
        assert_eq!(d[0].addrs, vec![m, a]);
    }

    #[test]
    fn the_book_is_bounded() {
        let mut r = book(vec![]);
        let t0 = Instant::now();
        for i in 0..(MAX_FOUND + 10) {
            let kp = libp2p::identity::Keypair::generate_ed25519();
            let t = t0 + Duration::from_millis(i as u64);
            for port in 0..(MAX_ADDRS as u16 + 3) {
                let a: Multiaddr = format!("/ip4/10.0.0.9/tcp/{}", 1000 + port)
                    .parse()
                    .unwrap();
                r.found(kp.public().to_peer_id(), a, t);
            }
        }
        assert_eq!(r.found.len(), MAX_FOUND);
        assert!(r.found.values().all(|f| f.addrs.len() == MAX_ADDRS));
    }
}
