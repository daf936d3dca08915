//! The network model: links with latency, jitter, loss and bandwidth, the
//! topologies, partitions and offline nodes. Every random decision takes
//! the simulator's one RNG, in event order.

use crate::scenario::{NetworkSpec, TopologyKind};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// One undirected link; each direction has its own queue.
#[derive(Debug, Clone)]
pub struct Link {
    pub a: usize,
    pub b: usize,
    pub latency_us: u64,
    pub jitter_us: u64,
    /// Per direction (0: a->b, 1: b->a): when the sender finishes putting
    /// the previous frame on the wire.
    busy_until: [u64; 2],
    /// Per direction: arrival of the previous frame (links are FIFO, like
    /// the libp2p streams they model).
    last_arrival: [u64; 2],
}

/// The outcome of sending one frame over one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmission {
    /// Arrives at this virtual time (µs).
    Arrives(u64),
    /// Lost on the way (it still used the sender's bandwidth).
    Lost,
    /// Dropped at the sender: its link's queue was full.
    QueueFull,
}

#[derive(Debug, Clone)]
pub struct Network {
    pub n: usize,
    pub links: Vec<Link>,
    /// Per node: (neighbour, link index), sorted by neighbour.
    pub adj: Vec<Vec<(usize, usize)>>,
    online: Vec<bool>,
    /// Active partitions: (scenario index, group of every node).
    partitions: Vec<(usize, Vec<usize>)>,
    pub loss: f64,
    /// Bits per second per direction (None = unlimited).
    pub bandwidth_bps: Option<f64>,
    /// Longest wait in a send queue (µs) before tail drop.
    pub max_queue_us: u64,
    /// `geometric`: node positions in the unit square.
    pub positions: Vec<(f64, f64)>,
}

impl Network {
    /// Builds the topology for `n` nodes (random topologies draw from `rng`).
    pub fn build(spec: &NetworkSpec, n: usize, rng: &mut ChaCha8Rng) -> Network {
        let lat = ms_to_us(spec.latency_ms);
        let jit = ms_to_us(spec.jitter_ms);
        let mut edges: Vec<(usize, usize, u64)> = vec![];
        let mut positions = vec![];
        match spec.topology {
            TopologyKind::Mesh => {
                for a in 0..n {
                    for b in a + 1..n {
                        edges.push((a, b, lat));
                    }
                }
            }
            TopologyKind::Line => {
                for a in 0..n.saturating_sub(1) {
                    edges.push((a, a + 1, lat));
                }
            }
            TopologyKind::Star => {
                for b in 1..n {
                    edges.push((0, b, lat));
                }
            }
            TopologyKind::Clusters => {
                let k = spec.clusters.clamp(1, n);
                let inter = ms_to_us(
                    spec.inter_cluster_latency_ms
                        .unwrap_or(4.0 * spec.latency_ms),
                );
                let bounds: Vec<(usize, usize)> =
                    (0..k).map(|c| (c * n / k, (c + 1) * n / k)).collect();
                for &(lo, hi) in &bounds {
                    for a in lo..hi {
                        for b in a + 1..hi {
                            edges.push((a, b, lat));
                        }
                    }
                }
                for (i, &(ga, _)) in bounds.iter().enumerate() {
                    for &(gb, _) in bounds.iter().skip(i + 1) {
                        edges.push((ga, gb, inter));
                    }
                }
            }
            TopologyKind::Geometric => {
                positions = (0..n)
                    .map(|_| (rng.gen::<f64>(), rng.gen::<f64>()))
                    .collect();
                let dist = |a: usize, b: usize| {
                    let (xa, ya) = positions[a];
                    let (xb, yb) = positions[b];
                    ((xa - xb).powi(2) + (ya - yb).powi(2)).sqrt()
                };
                for a in 0..n {
                    for b in a + 1..n {
                        if dist(a, b) <= spec.radius {
                            edges.push((a, b, lat));
                        }
                    }
                }
                // Bridge components by their closest pair until connected.
                loop {
                    let comp = components(n, &edges);
                    if comp.iter().all(|c| *c == comp[0]) {
                        break;
                    }
                    let mut best: Option<(f64, usize, usize)> = None;
                    for a in (0..n).filter(|a| comp[*a] == comp[0]) {
                        for b in (0..n).filter(|b| comp[*b] != comp[0]) {
                            let d = dist(a, b);
                            if best.is_none_or(|(bd, _, _)| d < bd) {
                                best = Some((d, a.min(b), a.max(b)));
                            }
                        }
                    }
                    let (_, a, b) = best.expect("two components have a closest pair");
                    edges.push((a, b, lat));
                }
            }
            TopologyKind::Random => {
                let d = spec.degree.min(n.saturating_sub(1));
                let mut set = vec![vec![false; n]; n];
                let mut add = |a: usize, b: usize, edges: &mut Vec<(usize, usize, u64)>| {
                    if a != b && !set[a][b] {
                        set[a][b] = true;
                        set[b][a] = true;
                        edges.push((a.min(b), a.max(b), lat));
                    }
                };
                // A random ring first: connected whatever follows.
                let mut order: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    let j = rng.gen_range(0..=i);
                    order.swap(i, j);
                }
                for i in 0..n {
                    if n > 2 || i == 0 {
                        add(order[i], order[(i + 1) % n], &mut edges);
                    }
                }
                for a in 0..n {
                    let mut tries = 0;
                    while deg_of(&edges, a) < d && tries < 20 * n {
                        tries += 1;
                        let b = rng.gen_range(0..n);
                        if deg_of(&edges, b) < d + 1 {
                            add(a, b, &mut edges);
                        }
                    }
                }
            }
        }
        edges.sort_unstable();
        edges.dedup_by(|x, y| x.0 == y.0 && x.1 == y.1);
        let mut adj = vec![vec![]; n];
        let links: Vec<Link> = edges
            .iter()
            .enumerate()
            .map(|(i, &(a, b, l))| {
                adj[a].push((b, i));
                adj[b].push((a, i));
                Link {
                    a,
                    b,
                    latency_us: l,
                    jitter_us: jit,
                    busy_until: [0; 2],
                    last_arrival: [0; 2],
                }
            })
            .collect();
        for v in &mut adj {
            v.sort_unstable();
        }
        Network {
            n,
            links,
            adj,
            online: vec![true; n],
            partitions: vec![],
            loss: spec.loss,
            bandwidth_bps: spec.bandwidth_kbps.map(|k| k * 1000.0),
            max_queue_us: ms_to_us(spec.max_queue_ms),
            positions,
        }
    }

    pub fn is_online(&self, a: usize) -> bool {
        self.online[a]
    }

    pub fn set_online(&mut self, a: usize, up: bool) {
        self.online[a] = up;
    }

    /// Starts partition `id`: links between different groups go down.
    /// Nodes in no group form one more group.
    pub fn partition(&mut self, id: usize, groups: &[Vec<usize>]) {
        let rest = groups.len();
        let mut of = vec![rest; self.n];
        for (gi, g) in groups.iter().enumerate() {
            for &m in g {
                if m < self.n {
                    of[m] = gi;
                }
            }
        }
        self.partitions.retain(|(i, _)| *i != id);
        self.partitions.push((id, of));
    }

    pub fn heal(&mut self, id: usize) {
        self.partitions.retain(|(i, _)| *i != id);
    }

    pub fn heal_all(&mut self) {
        self.partitions.clear();
    }

    pub fn partitioned(&self) -> bool {
        !self.partitions.is_empty()
    }

    /// Whether a frame can cross between two nodes now (both online, no
    /// partition between them). Says nothing about whether they are linked.
    pub fn reachable(&self, a: usize, b: usize) -> bool {
        self.online[a] && self.online[b] && self.partitions.iter().all(|(_, of)| of[a] == of[b])
    }

    /// Neighbours of `a` reachable now, in node order.
    pub fn up_neighbours(&self, a: usize) -> Vec<(usize, usize)> {
        self.adj[a]
            .iter()
            .copied()
            .filter(|(b, _)| self.reachable(a, *b))
            .collect()
    }

    /// Puts `bytes` on `link` from `from` at `now` (µs): queues behind the
    /// previous frame (bandwidth), then latency plus jitter, then maybe lost.
    pub fn transmit(
        &mut self,
        link: usize,
        from: usize,
        bytes: usize,
        now: u64,
        rng: &mut ChaCha8Rng,
    ) -> Transmission {
        let loss = self.loss;
        let bw = self.bandwidth_bps;
        let l = &mut self.links[link];
        let dir = usize::from(l.a != from);
        let start = now.max(l.busy_until[dir]);
        if bw.is_some() && start - now > self.max_queue_us {
            return Transmission::QueueFull;
        }
        let ser = bw
            .map(|bps| ((bytes as f64 * 8.0 / bps) * 1e6).ceil() as u64)
            .unwrap_or(0);
        l.busy_until[dir] = start + ser;
        let jitter = if l.jitter_us > 0 {
            rng.gen_range(0..l.jitter_us)
        } else {
            0
        };
        let lost = loss > 0.0 && rng.gen_bool(loss);
        if lost {
            return Transmission::Lost;
        }
        let arrive = (start + ser + l.latency_us + jitter).max(l.last_arrival[dir]);
        l.last_arrival[dir] = arrive;
        Transmission::Arrives(arrive)
    }

    /// The smallest one-way latency of any link (µs): the lookahead of the
    /// simulation (nothing sent now arrives sooner).
    pub fn min_latency_us(&self) -> u64 {
        self.links.iter().map(|l| l.latency_us).min().unwrap_or(0)
    }

    /// Node degree statistics (min, mean, max) for the report.
    pub fn degree_stats(&self) -> (usize, f64, usize) {
        let d: Vec<usize> = self.adj.iter().map(|v| v.len()).collect();
        let min = d.iter().copied().min().unwrap_or(0);
        let max = d.iter().copied().max().unwrap_or(0);
        let mean = if d.is_empty() {
            0.0
        } else {
            d.iter().sum::<usize>() as f64 / d.len() as f64
        };
        (min, mean, max)
    }
}

/// A node's gossip duplicate cache, as gossipsub keeps it: a message id is
/// remembered for `ttl` after it was first seen (not refreshed by repeats),
/// then forgotten, so identical bytes published again later (a KeyPackage
/// announcement answering a request) travel again. A cache that never
/// forgets would silently stop such re-announcements one hop from their
/// sender, which the real node does not do.
#[derive(Debug, Clone, Default)]
pub struct SeenCache {
    /// Per interned envelope id: virtual ms of first sight, plus one (0 =
    /// never). Dense because ids are handed out consecutively.
    first_ms: Vec<u32>,
}

impl SeenCache {
    /// Records `id` at `now_ms` unless it is still cached; true if it was
    /// new (or expired), i.e. if gossipsub would accept it.
    pub fn insert(&mut self, id: u32, now_ms: u64, ttl_ms: u64) -> bool {
        if self.contains(id, now_ms, ttl_ms) {
            return false;
        }
        let i = id as usize;
        if self.first_ms.len() <= i {
            self.first_ms.resize(i + 1, 0);
        }
        self.first_ms[i] = u32::try_from(now_ms + 1).unwrap_or(u32::MAX);
        true
    }

    /// When `id` was first seen (ms), if it is still cached at `now_ms`.
    pub fn first_seen_ms(&self, id: u32, now_ms: u64, ttl_ms: u64) -> Option<u64> {
        match self.first_ms.get(id as usize) {
            Some(&f) if f > 0 && now_ms < u64::from(f - 1) + ttl_ms => Some(u64::from(f - 1)),
            _ => None,
        }
    }

    /// Whether `id` is still cached at `now_ms`.
    pub fn contains(&self, id: u32, now_ms: u64, ttl_ms: u64) -> bool {
        match self.first_ms.get(id as usize) {
            Some(&f) if f > 0 => now_ms < u64::from(f - 1) + ttl_ms,
            _ => false,
        }
    }
}

fn deg_of(edges: &[(usize, usize, u64)], a: usize) -> usize {
    edges.iter().filter(|(x, y, _)| *x == a || *y == a).count()
}

pub fn ms_to_us(ms: f64) -> u64 {
    (ms * 1000.0).round().max(0.0) as u64
}

/// Connected-component label of every node.
fn components(n: usize, edges: &[(usize, usize, u64)]) -> Vec<usize> {
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(p: &mut [usize], x: usize) -> usize {
        let mut r = x;
        while p[r] != r {
            r = p[r];
        }
        let mut c = x;
        while p[c] != r {
            let next = p[c];
            p[c] = r;
            c = next;
        }
        r
    }
    for &(a, b, _) in edges {
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        if ra != rb {
            parent[ra.max(rb)] = ra.min(rb);
        }
    }
    (0..n).map(|x| find(&mut parent, x)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn spec(t: TopologyKind) -> NetworkSpec {
        NetworkSpec {
            topology: t,
            ..NetworkSpec::default()
        }
    }

    #[test]
    fn topologies_are_connected() {
        for t in [
            TopologyKind::Mesh,
            TopologyKind::Line,
            TopologyKind::Star,
            TopologyKind::Clusters,
            TopologyKind::Geometric,
            TopologyKind::Random,
        ] {
            for n in [2, 3, 8, 33] {
                let mut rng = ChaCha8Rng::seed_from_u64(3);
                let net = Network::build(&spec(t), n, &mut rng);
                let edges: Vec<(usize, usize, u64)> =
                    net.links.iter().map(|l| (l.a, l.b, 0)).collect();
                let c = components(n, &edges);
                assert!(
                    c.iter().all(|x| *x == 0),
                    "{t} with {n} nodes is not connected"
                );
            }
        }
    }

    #[test]
    fn shapes() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(
            Network::build(&spec(TopologyKind::Mesh), 8, &mut rng)
                .links
                .len(),
            28
        );
        assert_eq!(
            Network::build(&spec(TopologyKind::Line), 8, &mut rng)
                .links
                .len(),
            7
        );
        assert_eq!(
            Network::build(&spec(TopologyKind::Star), 8, &mut rng)
                .links
                .len(),
            7
        );
        let r = Network::build(&spec(TopologyKind::Random), 64, &mut rng);
        let (min, _, _) = r.degree_stats();
        assert!(min >= 6, "random overlay min degree {min}");
    }

    #[test]
    fn bandwidth_queues_and_fifo() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut s = spec(TopologyKind::Line);
        s.bandwidth_kbps = Some(8.0); // 1000 bytes/s
        s.latency_ms = 10.0;
        let mut net = Network::build(&s, 2, &mut rng);
        // 100 bytes = 100 ms on the wire.
        assert_eq!(
            net.transmit(0, 0, 100, 0, &mut rng),
            Transmission::Arrives(110_000)
        );
        assert_eq!(
            net.transmit(0, 0, 100, 0, &mut rng),
            Transmission::Arrives(210_000)
        );
        // The other direction has its own queue.
        assert_eq!(
            net.transmit(0, 1, 100, 0, &mut rng),
            Transmission::Arrives(110_000)
        );
    }

    #[test]
    fn a_full_queue_drops_at_the_tail() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut s = spec(TopologyKind::Line);
        s.bandwidth_kbps = Some(8.0); // 1000 bytes/s
        s.latency_ms = 10.0;
        s.max_queue_ms = 250.0;
        let mut net = Network::build(&s, 2, &mut rng);
        // Frames of 100 ms each: they start at 0, 100, 200 ms; the next
        // would wait 300 ms > 250 ms and is dropped without using the link.
        for k in 0..3u64 {
            assert_eq!(
                net.transmit(0, 0, 100, 0, &mut rng),
                Transmission::Arrives(110_000 + k * 100_000)
            );
        }
        assert_eq!(
            net.transmit(0, 0, 100, 0, &mut rng),
            Transmission::QueueFull
        );
        // Once the queue drained, frames go again.
        assert_eq!(
            net.transmit(0, 0, 100, 300_000, &mut rng),
            Transmission::Arrives(410_000)
        );
    }

    #[test]
    fn seen_cache_forgets_after_ttl() {
        let mut c = SeenCache::default();
        assert!(c.insert(5, 1_000, 10_000));
        assert!(!c.insert(5, 10_999, 10_000));
        assert!(c.contains(5, 10_999, 10_000));
        // Repeats do not refresh the entry: it expires 10 s after first sight.
        assert!(!c.contains(5, 11_000, 10_000));
        assert!(c.insert(5, 11_000, 10_000));
        assert!(!c.contains(4, 11_000, 10_000));
    }

    #[test]
    fn partitions_cut_links_between_groups() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut net = Network::build(&spec(TopologyKind::Mesh), 4, &mut rng);
        net.partition(0, &[vec![0, 1]]);
        assert!(net.reachable(0, 1));
        assert!(net.reachable(2, 3));
        assert!(!net.reachable(1, 2));
        net.heal(0);
        assert!(net.reachable(1, 2));
        net.set_online(2, false);
        assert!(!net.reachable(1, 2));
    }
}
