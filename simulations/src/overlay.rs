//! The gossip overlay: which neighbours a node pushes a gossip message to.
//!
//! The node runs libp2p gossipsub 1.2, not a flood: per topic, each node
//! keeps a *mesh* of about `d` of its connected neighbours (between `d_lo`
//! and `d_hi`, repaired at every heartbeat by GRAFT and PRUNE), pushes a
//! message eagerly to its mesh peers only, and announces the ids it saw
//! recently (IHAVE) to a few non-mesh neighbours each heartbeat, which ask
//! for what they lack (IWANT). IDONTWANT (1.2) tells mesh peers a message
//! arrived, so they do not send it too. A flood to every neighbour instead
//! put 81 times the published bytes on the wire of a 12-member full mesh
//! (381 times for 24 members split four ways): the simulator measured
//! links the node would never load.
//!
//! This module owns the mesh and the message cache; the simulator's event
//! loop moves the frames (it owns the network, the RNG and the clock).

use crate::network::Network;
use crate::scenario::{GossipMode, GossipSpec};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::sync::Arc;

/// Gossipsub topics of the simulated node: its universe's and the lobby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GossipTopic {
    Universe = 0,
    Lobby = 1,
}

impl GossipTopic {
    pub fn of(lobby: bool) -> GossipTopic {
        if lobby {
            GossipTopic::Lobby
        } else {
            GossipTopic::Universe
        }
    }

    pub fn is_lobby(self) -> bool {
        self == GossipTopic::Lobby
    }
}

const TOPICS: usize = 2;

/// Bytes of one message id in a control message (a 32-byte envelope id
/// plus its protobuf tag and length).
pub const ID_BYTES: usize = 34;
/// Framing of one control message (RPC envelope, topic, stream framing).
pub const CONTROL_FRAMING: usize = 24;

/// The wire size of a control message (IHAVE, IWANT, IDONTWANT) naming
/// `ids` message ids.
pub fn control_bytes(ids: usize) -> usize {
    CONTROL_FRAMING + ids * ID_BYTES
}

/// A message a node can still serve to an IWANT.
#[derive(Debug, Clone)]
pub struct Cached {
    pub id: u32,
    pub bytes: Arc<Vec<u8>>,
}

/// One node's view: its mesh peers and recent messages, per topic.
#[derive(Debug, Clone, Default)]
struct Peer {
    /// Mesh peers per topic, sorted.
    mesh: [Vec<usize>; TOPICS],
    /// Per topic: the message cache, one window per heartbeat, newest
    /// first (gossipsub's `mcache`).
    mcache: [VecDeque<Vec<Cached>>; TOPICS],
}

/// One IHAVE to send at a heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct Announce {
    pub from: usize,
    pub to: usize,
    pub topic: GossipTopic,
    /// Every id announced (what the frame's size counts).
    pub announced: usize,
    /// The announced ids the receiver had not seen when the heartbeat ran
    /// (the only ones it can ask for).
    pub ids: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct Overlay {
    spec: GossipSpec,
    peers: Vec<Peer>,
}

impl Overlay {
    pub fn new(spec: &GossipSpec, n: usize) -> Overlay {
        let mut peers = vec![Peer::default(); n];
        for p in &mut peers {
            for c in &mut p.mcache {
                c.push_front(vec![]);
            }
        }
        Overlay {
            spec: spec.clone(),
            peers,
        }
    }

    pub fn spec(&self) -> &GossipSpec {
        &self.spec
    }

    /// `x`'s mesh peers on `topic`.
    pub fn mesh(&self, x: usize, topic: GossipTopic) -> &[usize] {
        &self.peers[x].mesh[topic as usize]
    }

    /// Where `x` pushes a message eagerly: its own publish goes to every
    /// reachable neighbour under `flood_publish` or in flood mode; a
    /// relayed one to its reachable mesh peers. An own publish from a mesh
    /// smaller than `d` (a node just back online, before its first
    /// heartbeat grafts) tops up with other reachable neighbours, as
    /// rust-libp2p's publish does; else a member back from a wipe would
    /// send its rejoin request to nobody.
    pub fn push_targets(
        &self,
        net: &Network,
        x: usize,
        topic: GossipTopic,
        own: bool,
    ) -> Vec<(usize, usize)> {
        let all = net.up_neighbours(x);
        let flood = self.spec.mode == GossipMode::Flood || (own && self.spec.flood_publish);
        if flood {
            return all;
        }
        let mesh = self.mesh(x, topic);
        let (mut to, rest): (Vec<_>, Vec<_>) = all
            .into_iter()
            .partition(|(b, _)| mesh.binary_search(b).is_ok());
        if own && to.len() < self.spec.d {
            let need = self.spec.d - to.len();
            to.extend(rest.into_iter().take(need));
            to.sort_unstable();
        }
        to
    }

    /// Remembers a message `x` saw (published or accepted), for IHAVE and
    /// IWANT.
    pub fn remember(&mut self, x: usize, topic: GossipTopic, id: u32, bytes: Arc<Vec<u8>>) {
        if self.spec.mode == GossipMode::Flood {
            return;
        }
        if let Some(w) = self.peers[x].mcache[topic as usize].front_mut() {
            w.push(Cached { id, bytes });
        }
    }

    /// A message of `x`'s cache, if it is still there (IWANT).
    pub fn cached(&self, x: usize, topic: GossipTopic, id: u32) -> Option<Arc<Vec<u8>>> {
        self.peers[x].mcache[topic as usize]
            .iter()
            .flatten()
            .find(|c| c.id == id)
            .map(|c| c.bytes.clone())
    }

    /// A node that lost its state lost its message cache too.
    pub fn forget_messages(&mut self, x: usize) {
        for c in &mut self.peers[x].mcache {
            c.clear();
            c.push_front(vec![]);
        }
    }

    /// One heartbeat of every node, in node order: mesh maintenance, then
    /// the IHAVEs to send (`has(peer, id)`: whether the peer has seen the
    /// id), then the message cache shifts. Returns the GRAFT and PRUNE
    /// control messages sent, and the announcements.
    pub fn heartbeat(
        &mut self,
        net: &Network,
        rng: &mut ChaCha8Rng,
        has: impl Fn(usize, u32) -> bool,
    ) -> (usize, Vec<Announce>) {
        if self.spec.mode == GossipMode::Flood {
            return (0, vec![]);
        }
        let mut control = 0;
        for x in 0..self.peers.len() {
            for t in 0..TOPICS {
                control += self.maintain(net, rng, x, t);
            }
        }
        let mut out = vec![];
        for x in 0..self.peers.len() {
            for topic in [GossipTopic::Universe, GossipTopic::Lobby] {
                self.announce(net, rng, x, topic, &has, &mut out);
            }
        }
        let keep = self
            .spec
            .history_length
            .max(self.spec.history_gossip)
            .max(1);
        for p in &mut self.peers {
            for c in &mut p.mcache {
                c.push_front(vec![]);
                c.truncate(keep);
            }
        }
        (control, out)
    }

    /// Mesh repair of `x` on topic `t`: drop peers it cannot reach, GRAFT
    /// up to `d` when under `d_lo`, PRUNE down to `d` when over `d_hi`.
    /// Both ends change together (a GRAFT is accepted, a PRUNE obeyed).
    /// Returns the control messages this sent.
    fn maintain(&mut self, net: &Network, rng: &mut ChaCha8Rng, x: usize, t: usize) -> usize {
        let up: Vec<usize> = net.up_neighbours(x).into_iter().map(|(b, _)| b).collect();
        let gone: Vec<usize> = self.peers[x].mesh[t]
            .iter()
            .copied()
            .filter(|b| up.binary_search(b).is_err())
            .collect();
        for b in gone {
            self.unlink(x, b, t);
        }
        let (d, d_lo, d_hi) = (self.spec.d, self.spec.d_lo, self.spec.d_hi);
        let mut sent = 0;
        let have = self.peers[x].mesh[t].len();
        if have < d_lo {
            let mut cand: Vec<usize> = up
                .iter()
                .copied()
                .filter(|b| self.peers[x].mesh[t].binary_search(b).is_err())
                .collect();
            cand.shuffle(rng);
            for b in cand.into_iter().take(d.saturating_sub(have)) {
                self.link(x, b, t);
                sent += 1;
            }
        } else if have > d_hi {
            let mut drop = self.peers[x].mesh[t].clone();
            drop.shuffle(rng);
            for b in drop.into_iter().take(have - d) {
                self.unlink(x, b, t);
                sent += 1;
            }
        }
        sent
    }

    fn link(&mut self, a: usize, b: usize, t: usize) {
        for (p, q) in [(a, b), (b, a)] {
            let m = &mut self.peers[p].mesh[t];
            if let Err(i) = m.binary_search(&q) {
                m.insert(i, q);
            }
        }
    }

    fn unlink(&mut self, a: usize, b: usize, t: usize) {
        for (p, q) in [(a, b), (b, a)] {
            let m = &mut self.peers[p].mesh[t];
            if let Ok(i) = m.binary_search(&q) {
                m.remove(i);
            }
        }
    }

    /// `x`'s IHAVEs on `topic`: the ids of its last `history_gossip`
    /// windows, to `d_lazy` (or a quarter, if more) random reachable
    /// neighbours outside its mesh.
    fn announce(
        &self,
        net: &Network,
        rng: &mut ChaCha8Rng,
        x: usize,
        topic: GossipTopic,
        has: &impl Fn(usize, u32) -> bool,
        out: &mut Vec<Announce>,
    ) {
        let p = &self.peers[x];
        let mut ids: Vec<u32> = p.mcache[topic as usize]
            .iter()
            .take(self.spec.history_gossip)
            .flatten()
            .map(|c| c.id)
            .collect();
        if ids.is_empty() {
            return;
        }
        ids.sort_unstable();
        ids.dedup();
        let mesh = &p.mesh[topic as usize];
        let mut cand: Vec<usize> = net
            .up_neighbours(x)
            .into_iter()
            .map(|(b, _)| b)
            .filter(|b| mesh.binary_search(b).is_err())
            .collect();
        if cand.is_empty() {
            return;
        }
        let k = self.spec.d_lazy.max(cand.len() / 4).min(cand.len());
        cand.shuffle(rng);
        cand.truncate(k);
        cand.sort_unstable();
        for to in cand {
            let lacking: Vec<u32> = ids.iter().copied().filter(|id| !has(to, *id)).collect();
            out.push(Announce {
                from: x,
                to,
                topic,
                announced: ids.len(),
                ids: lacking,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{NetworkSpec, TopologyKind};
    use rand::SeedableRng;

    fn net(n: usize) -> Network {
        let spec = NetworkSpec {
            topology: TopologyKind::Mesh,
            ..NetworkSpec::default()
        };
        Network::build(&spec, n, &mut ChaCha8Rng::seed_from_u64(1))
    }

    #[test]
    fn heartbeats_keep_every_mesh_between_d_lo_and_d_hi_and_symmetric() {
        let net = net(20);
        let spec = GossipSpec::default();
        let mut o = Overlay::new(&spec, 20);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        o.heartbeat(&net, &mut rng, |_, _| false);
        for x in 0..20 {
            for t in [GossipTopic::Universe, GossipTopic::Lobby] {
                let m = o.mesh(x, t);
                assert!(
                    (spec.d_lo..=spec.d_hi).contains(&m.len()),
                    "node {x}: mesh of {}",
                    m.len()
                );
                for b in m {
                    assert!(o.mesh(*b, t).contains(&x), "{x}-{b} is one-sided");
                }
            }
        }
        // A relay goes to the mesh only, and so does an own publish
        // unless `flood_publish`.
        let mesh = o.mesh(3, GossipTopic::Universe).len();
        for own in [false, true] {
            let to = o.push_targets(&net, 3, GossipTopic::Universe, own);
            assert_eq!(to.len(), mesh);
        }
        // Before any heartbeat the mesh is empty: an own publish still
        // reaches `d` neighbours, a relay nobody.
        let fresh = Overlay::new(&spec, 20);
        assert_eq!(
            fresh.push_targets(&net, 3, GossipTopic::Lobby, true).len(),
            spec.d
        );
        assert!(fresh
            .push_targets(&net, 3, GossipTopic::Lobby, false)
            .is_empty());
        let flood = Overlay::new(
            &GossipSpec {
                flood_publish: true,
                ..spec.clone()
            },
            20,
        );
        assert_eq!(
            flood
                .push_targets(&net, 3, GossipTopic::Universe, true)
                .len(),
            19
        );
    }

    #[test]
    fn unreachable_mesh_peers_are_replaced_at_the_next_heartbeat() {
        let mut net = net(12);
        let mut o = Overlay::new(&GossipSpec::default(), 12);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        o.heartbeat(&net, &mut rng, |_, _| false);
        net.partition(0, &[vec![0, 1, 2, 3, 4, 5]]);
        o.heartbeat(&net, &mut rng, |_, _| false);
        for x in 0..6 {
            let m = o.mesh(x, GossipTopic::Universe);
            assert!(m.iter().all(|b| *b < 6), "node {x} keeps {m:?}");
            assert_eq!(m.len(), 5, "node {x}: every reachable peer");
        }
    }

    #[test]
    fn recent_messages_are_announced_to_non_mesh_peers_then_expire() {
        let net = net(20);
        let spec = GossipSpec::default();
        let mut o = Overlay::new(&spec, 20);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        o.heartbeat(&net, &mut rng, |_, _| false);
        o.remember(0, GossipTopic::Universe, 7, Arc::new(vec![1, 2, 3]));
        let (_, ann) = o.heartbeat(&net, &mut rng, |peer, _| peer == 19);
        let to: Vec<usize> = ann.iter().map(|a| a.to).collect();
        assert_eq!(to.len(), spec.d_lazy, "{to:?}");
        for a in &ann {
            assert_eq!(a.from, 0);
            assert!(!o.mesh(0, GossipTopic::Universe).contains(&a.to));
            assert_eq!(a.announced, 1);
            assert_eq!(a.ids, if a.to == 19 { vec![] } else { vec![7] });
        }
        assert_eq!(
            o.cached(0, GossipTopic::Universe, 7).as_deref(),
            Some(&vec![1, 2, 3])
        );
        for _ in 0..spec.history_length {
            o.heartbeat(&net, &mut rng, |_, _| false);
        }
        assert!(o.cached(0, GossipTopic::Universe, 7).is_none());
        let (_, ann) = o.heartbeat(&net, &mut rng, |_, _| false);
        assert!(ann.is_empty(), "{ann:?}");
    }

    #[test]
    fn flood_mode_pushes_everywhere_and_keeps_no_mesh() {
        let net = net(8);
        let spec = GossipSpec {
            mode: GossipMode::Flood,
            ..GossipSpec::default()
        };
        let mut o = Overlay::new(&spec, 8);
        let (control, ann) = o.heartbeat(&net, &mut ChaCha8Rng::seed_from_u64(5), |_, _| false);
        assert_eq!((control, ann.len()), (0, 0));
        assert_eq!(o.push_targets(&net, 2, GossipTopic::Lobby, false).len(), 7);
    }
}
