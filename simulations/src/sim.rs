//! The simulator: an event queue in virtual time (µs) driving one real
//! `mmls_core::Participant` per node over the [`Network`] model.
//!
//! Determinism: one ChaCha8 RNG, seeded from the scenario, takes every
//! network and workload decision in event order; events at the same time
//! run in the order they were scheduled; maps are BTreeMaps; outputs whose
//! order inside one engine call follows the engine's random group ids
//! (fetch requests) are put in a canonical order before they touch the RNG.
//! What remains random is the crypto's own randomness (keys, nonces, group
//! ids), which changes bytes but not sizes or decisions.

use crate::attacker::{self, Attacker, SentMessage};
use crate::metrics::{
    openmls_commit_us, peak_rss_mb, Convergence, Latency, Metrics, RunCost, Series,
    OPENMLS_DECRYPT_US,
};
use crate::network::{Network, SeenCache, Transmission};
use crate::overlay::{control_bytes, GossipTopic, Overlay};
use crate::scenario::GossipMode;
use crate::scenario::Scenario;
use anyhow::{anyhow, Context, Result};
use mmls_core::sync::{Action, RequestId, SyncAgent, SyncConfig, SyncMessage};
use mmls_core::{
    Config, Envelope, Event, FetchRequest, Id32, Identity, Kind, MemberId, Output, Participant,
    Profile, Publish, Relay, SharedValues, Store, Topic,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Instant;

/// The simulator's message id, carried in the first 8 bytes of every body.
pub fn message_id(body: &[u8]) -> Option<u64> {
    body.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

/// The identity of node `i` (the same in every run).
pub fn identity_of(i: usize) -> Identity {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    seed[8..16].copy_from_slice(b"mmls-sim");
    Identity::from_seed(seed)
}

const NONE: u32 = u32::MAX;
const SEC: u64 = 1_000_000;

fn secs(us: u64) -> f64 {
    us as f64 / SEC as f64
}

fn s_to_us(s: f64) -> u64 {
    (s * SEC as f64).round().max(0.0) as u64
}

#[derive(Debug, Clone)]
enum Ev {
    Tick(usize),
    Gossip {
        to: usize,
        from: usize,
        id: u32,
        bytes: Arc<Vec<u8>>,
        /// Published on the lobby topic (else a universe topic).
        lobby: bool,
    },
    SyncNow(usize),
    /// Every node's gossipsub heartbeat (mesh repair, IHAVE).
    Heartbeat,
    /// An IHAVE arrives at `to`: the ids `from` announced that `to` had not
    /// seen when it was sent.
    IHave {
        to: usize,
        from: usize,
        topic: GossipTopic,
        ids: Vec<u32>,
    },
    /// An IWANT arrives at `to`, the node that announced `ids`.
    IWant {
        to: usize,
        from: usize,
        topic: GossipTopic,
        ids: Vec<u32>,
    },
    /// A sync agent's request; `inc` is the sender's incarnation (a node
    /// that lost its state runs a new agent: old answers are not for it).
    SyncReq {
        to: usize,
        from: usize,
        inc: usize,
        id: RequestId,
        msg: SyncMessage,
    },
    SyncResp {
        to: usize,
        from: usize,
        inc: usize,
        id: RequestId,
        msg: SyncMessage,
    },
    Send(usize),
    Update(usize),
    Create,
    PartitionStart(usize),
    PartitionHeal(usize),
    OfflineStart(usize),
    OfflineEnd(usize),
    Compromise(usize),
    Join(usize),
    Remove(usize),
    Quiet,
    Sample,
}

struct Item {
    t: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    // Reversed: BinaryHeap pops the earliest.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.t, o.seq).cmp(&(self.t, self.seq))
    }
}

struct Node {
    p: Participant,
    /// Its sync agent (the node's policy), peers by node index.
    sync: SyncAgent<usize>,
    store: Store,
    member: MemberId,
    online: bool,
    /// In the universe as far as the scenario goes (initial member, or
    /// added and not removed).
    in_universe: bool,
    /// Gossip duplicate cache (gossipsub's, with its time to live).
    seen: SeenCache,
    bytes_sent: u64,
    bytes_recv: u64,
    /// When the node lost its state (went offline with `lose_state`).
    lost_at: Vec<u64>,
    /// Path commits (own MMLS updates), µs.
    path_commits: Vec<u64>,
    /// Messages sent (the on-send update policy counts them).
    sent: u64,
}

struct MsgRec {
    sender: usize,
    sent: u64,
    group: Id32,
    seq: u64,
    /// Per node: virtual ms of the (first) delivery, NONE if never.
    recv: Vec<u32>,
    /// Per node that lost its state after `recv`: virtual ms of the
    /// delivery to its new incarnation (a rejoin re-send), if any.
    again: Vec<(usize, u32)>,
}

#[derive(Default)]
struct Counters {
    messages_sent: u64,
    duplicates: u64,
    deliveries_total: u64,
    bytes_gossip: u64,
    /// The gossip control messages' part of `bytes_gossip`.
    bytes_gossip_control: u64,
    bytes_sync: u64,
    gossip_redundant: u64,
    republish_refused: u64,
    frames_lost: u64,
    queue_drops: u64,
    commits: u64,
    commits_with_path: u64,
    updates: u64,
    sync_exchanges: u64,
    fetch_requests: u64,
    fetched_envelopes: u64,
    input_errors: BTreeMap<String, u64>,
    rejected_entries: u64,
    rejections: BTreeMap<String, u64>,
    psk_errors: u64,
    published: BTreeMap<String, crate::metrics::Published>,
    stale_events: u64,
    rejoins: u64,
    equivocations: u64,
    sends_refused: u64,
    updates_refused: u64,
    driver_errors: Vec<String>,
    /// `Message` events (application messages decrypted).
    decryptions: u64,
}

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Worker threads for the node-local work of a slice (0: one per
    /// available core). Changes wall time only, never the metrics.
    pub threads: usize,
}

/// A member's view of one send group: epoch and an epoch-secret fingerprint.
type Fingerprint = (u64, Vec<u8>);

/// One message sent after a compromise, as the attacker saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PcsPoint {
    /// The member whose send group carried it.
    pub owner: usize,
    /// Seconds after the compromise it was sent.
    pub sent_s: f64,
    /// Whether the attacker's copy could decrypt it.
    pub read: bool,
}

/// The attacker's view of one compromise, for the PCS timeline plot.
#[derive(Debug, Clone, PartialEq)]
pub struct PcsPanel {
    pub victim: usize,
    pub at_s: f64,
    pub points: Vec<PcsPoint>,
}

/// Everything a run produces.
pub struct SimOutput {
    pub metrics: Metrics,
    pub series: Series,
    /// Sorted delivery latencies (virtual ms) of expected deliveries.
    pub latencies: Vec<u32>,
    /// Per compromise, every message the attacker tried to read.
    pub pcs_points: Vec<PcsPanel>,
    /// Total bytes sent per node.
    pub bytes_per_node: Vec<u64>,
    pub scenario: Scenario,
}

pub struct Sim {
    sc: Scenario,
    seed: u64,
    rng: ChaCha8Rng,
    now: u64,
    end: u64,
    queue: BinaryHeap<Item>,
    seq: u64,
    nodes: Vec<Node>,
    net: Network,
    overlay: Overlay,
    cfg: Config,
    profile: Profile,
    uid: Option<Id32>,
    member_index: BTreeMap<MemberId, usize>,
    interned: HashMap<[u8; 32], u32>,
    msgs: Vec<MsgRec>,
    /// (group, member) -> [(stream seq of a Welcome adding the member, µs)]
    welcomes: BTreeMap<(Id32, usize), Vec<(u64, u64)>>,
    group_owner: BTreeMap<Id32, usize>,
    removed_at: Vec<Option<u64>>,
    /// (owner, removed member) -> (owner's group, first seq after the
    /// owner learned of the removal).
    removal_cut: BTreeMap<(usize, usize), (Id32, u64)>,
    attackers: Vec<Attacker>,
    quiet: bool,
    c: Counters,
    series: Series,
    sample_us: u64,
    last_sample_deliveries: u64,
    events: u64,
    started: Instant,
    progress: Option<indicatif::ProgressBar>,
    /// Wall time per engine call kind (MMLS_SIM_PROFILE=1 prints it).
    prof: BTreeMap<&'static str, (u64, f64)>,
    /// Worker threads of the slices (None: one thread).
    pool: Option<rayon::ThreadPool>,
    threads: usize,
    /// The members' stores hold each group's tree at an epoch, and each
    /// logged envelope, once for the whole universe.
    shared: SharedValues,
}

impl Sim {
    pub fn new(sc: Scenario, opts: &RunOptions) -> Result<Sim> {
        let seed = opts.seed.unwrap_or(sc.seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = sc.nodes();
        let net = Network::build(&sc.network, n, &mut rng);
        let overlay = Overlay::new(&sc.gossip, n);
        let cfg = Config {
            commit_delay_ms: sc.engine.commit_delay_ms,
            import_window_ms: sc.engine.import_window_ms,
            update_interval_ms: None,
            psk_max_age_ms: (sc.engine.psk_max_age_h * 3_600_000.0) as u64,
            log_retention: sc.engine.log_retention,
            fetch_retry_ms: sc.engine.fetch_retry_ms,
            rejoin_after_ms: sc.engine.rejoin_after_ms,
            kp_retry_ms: sc.engine.kp_retry_ms,
            rotate_leaves: sc.engine.rotate_leaves,
            group_cache: sc.engine.group_cache,
            ..Config::default()
        };
        let profile = if sc.profile == "dmls" {
            Profile::Dmls
        } else {
            Profile::Mmls00
        };
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            opts.threads
        };
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .context("starting the simulator's worker threads")?,
            )
        } else {
            None
        };
        let end = s_to_us(sc.end_s());
        let sample_us = if sc.sim.sample_s > 0.0 {
            s_to_us(sc.sim.sample_s)
        } else {
            (end / 300).max(SEC)
        };
        let progress = if opts.progress {
            let pb = indicatif::ProgressBar::new(sc.end_s().ceil() as u64);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} virtual s  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            Some(pb)
        } else {
            None
        };
        let mut sim = Sim {
            seed,
            rng,
            now: 0,
            end,
            queue: BinaryHeap::new(),
            seq: 0,
            nodes: Vec::with_capacity(n),
            net,
            overlay,
            cfg,
            profile,
            uid: None,
            member_index: BTreeMap::new(),
            interned: HashMap::new(),
            msgs: vec![],
            welcomes: BTreeMap::new(),
            group_owner: BTreeMap::new(),
            removed_at: vec![None; n],
            removal_cut: BTreeMap::new(),
            attackers: vec![],
            quiet: false,
            c: Counters::default(),
            series: Series::default(),
            sample_us,
            last_sample_deliveries: 0,
            events: 0,
            started: Instant::now(),
            progress,
            prof: BTreeMap::new(),
            pool,
            threads,
            shared: SharedValues::new(),
            sc,
        };
        sim.setup()?;
        Ok(sim)
    }

    fn prof(&mut self, what: &'static str, since: Instant) {
        let e = self.prof.entry(what).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += since.elapsed().as_secs_f64();
    }

    fn push(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Item {
            t,
            seq: self.seq,
            ev,
        });
    }

    fn now_ms(&self) -> u64 {
        self.now / 1000
    }

    fn setup(&mut self) -> Result<()> {
        let n = self.sc.nodes();
        let mut opened = vec![];
        for i in 0..n {
            let id = identity_of(i);
            let store = Store::in_memory_sharing(&self.shared)
                .map_err(|e| anyhow!("in-memory store: {e}"))?;
            let (p, outs) = Participant::open(id.clone(), store.clone(), self.cfg.clone(), 0)
                .map_err(|e| anyhow!("opening participant {i}: {e}"))?;
            self.member_index.insert(id.member_id(), i);
            let sync = SyncAgent::new(id.member_id(), self.sync_config());
            self.nodes.push(Node {
                p,
                sync,
                store,
                member: id.member_id(),
                online: true,
                in_universe: false,
                seen: SeenCache::default(),
                bytes_sent: 0,
                bytes_recv: 0,
                lost_at: vec![],
                path_commits: vec![],
                sent: 0,
            });
            opened.push(outs);
        }
        // Periodic per-node activities, each at its own random phase.
        let tick = self.sc.sim.tick_ms * 1000;
        let sync = s_to_us(self.sc.sim.sync_interval_s);
        for i in 0..n {
            let t = self.rng.gen_range(0..tick);
            self.push(t, Ev::Tick(i));
            // The agent runs its own rounds (at its node's ticks).
            let t = self.rng.gen_range(0..sync);
            self.nodes[i].sync.start_rounds(t / 1000);
        }
        let start = s_to_us(self.sc.workload.start_s);
        if self.sc.workload.message_interval_s > 0.0 {
            let iv = s_to_us(self.sc.workload.message_interval_s);
            for i in 0..n {
                let t = start + self.rng.gen_range(0..iv);
                self.push(t, Ev::Send(i));
            }
        }
        if self.sc.workload.update_interval_s > 0.0 {
            let iv = s_to_us(self.sc.workload.update_interval_s);
            for i in 0..n {
                let t = start + self.rng.gen_range(0..iv);
                self.push(t, Ev::Update(i));
            }
        }
        self.push(s_to_us(self.sc.sim.create_s), Ev::Create);
        let dur = s_to_us(self.sc.duration_s);
        for (i, p) in self.sc.partitions.clone().iter().enumerate() {
            self.push(s_to_us(p.at_s), Ev::PartitionStart(i));
            if let Some(h) = p.heal_s {
                self.push(s_to_us(h), Ev::PartitionHeal(i));
            }
        }
        for (i, o) in self.sc.offline.clone().iter().enumerate() {
            self.push(s_to_us(o.at_s), Ev::OfflineStart(i));
            if let Some(b) = o.back_s {
                self.push(s_to_us(b), Ev::OfflineEnd(i));
            }
        }
        for (i, c) in self.sc.compromises.clone().iter().enumerate() {
            self.push(s_to_us(c.at_s), Ev::Compromise(i));
        }
        for (i, j) in self.sc.joins.clone().iter().enumerate() {
            self.push(s_to_us(j.at_s), Ev::Join(i));
        }
        for (i, r) in self.sc.removes.clone().iter().enumerate() {
            self.push(s_to_us(r.at_s), Ev::Remove(i));
        }
        self.push(dur, Ev::Quiet);
        self.push(0, Ev::Sample);
        if self.sc.gossip.mode == GossipMode::Mesh {
            let hb = self.sc.gossip.heartbeat_ms * 1000;
            let t = self.rng.gen_range(0..hb);
            self.push(t, Ev::Heartbeat);
        }
        for (i, outs) in opened.into_iter().enumerate() {
            self.absorb(i, outs);
        }
        self.refresh_links();
        Ok(())
    }

    /// Runs to the end and computes the metrics.
    ///
    /// Events run in slices of virtual time no longer than the smallest
    /// link latency: nothing a node sends within a slice reaches another
    /// node within it. In a slice, every node's engine work on its own
    /// events (in their order) runs in parallel, each node on its own
    /// state; then the outcomes are merged sequentially in event order
    /// (time, then scheduling sequence), and only the merge touches the
    /// RNG, the network, the bookkeeping and the event queue. The thread
    /// count therefore changes nothing but wall time. Global events
    /// (partitions, churn, compromise, samples...) run alone, between
    /// slices.
    pub fn run(mut self) -> Result<SimOutput> {
        let lookahead = self.net.min_latency_us().max(1);
        let mut next_progress = 0;
        while let Some(top) = self.queue.peek() {
            if top.t > self.end {
                break;
            }
            if node_of(&top.ev).is_some() {
                let limit = top.t.saturating_add(lookahead);
                let mut slice = vec![];
                while let Some(top) = self.queue.peek() {
                    if top.t >= limit || top.t > self.end {
                        break;
                    }
                    let Some(x) = node_of(&top.ev) else { break };
                    if let Some(item) = self.queue.pop() {
                        slice.push((x, item));
                    }
                }
                self.run_slice(slice)?;
            } else if let Some(item) = self.queue.pop() {
                self.now = item.t;
                self.events += 1;
                self.handle(item.ev)?;
            }
            if self.events >= next_progress {
                next_progress = self.events + 2048;
                if let Some(pb) = &self.progress {
                    pb.set_position(self.now / SEC);
                    pb.set_message(format!(
                        "{} msgs, {} commits",
                        self.c.messages_sent, self.c.commits
                    ));
                }
            }
        }
        self.now = self.end;
        if let Some(pb) = self.progress.take() {
            pb.finish_and_clear();
        }
        self.finish()
    }

    /// One slice: the node-local work of every event (per node, in event
    /// order; nodes in parallel), then the merge in event order.
    fn run_slice(&mut self, slice: Vec<(usize, Item)>) -> Result<()> {
        let len = slice.len();
        let mut per_node: Vec<Vec<(usize, Item)>> = Vec::new();
        per_node.resize_with(self.nodes.len(), Vec::new);
        for (k, (x, item)) in slice.into_iter().enumerate() {
            if let Some(v) = per_node.get_mut(x) {
                v.push((k, item));
            }
        }
        let ctx = Ctx {
            net: &self.net,
            group_owner: &self.group_owner,
            member_index: &self.member_index,
            cache_ms: (self.sc.network.gossip_cache_s * 1000.0).round() as u64,
        };
        let work = |node: &mut Node, items: Vec<(usize, Item)>| -> Vec<(usize, Item, LocalOut)> {
            items
                .into_iter()
                .map(|(k, mut item)| {
                    let out = run_local(node, &ctx, item.t, &mut item.ev);
                    (k, item, out)
                })
                .collect()
        };
        let done = on_each_node(self.pool.as_ref(), &mut self.nodes, per_node, work);
        // Back in event order, whatever order the work finished in.
        let mut merged: Vec<Option<(Item, LocalOut)>> = Vec::new();
        merged.resize_with(len, || None);
        for (k, item, out) in done.into_iter().flatten() {
            merged[k] = Some((item, out));
        }
        for (item, out) in merged.into_iter().flatten() {
            self.now = item.t;
            self.events += 1;
            self.merge(item.ev, out)?;
        }
        Ok(())
    }

    /// The shared half of a node event, given its node-local outcome.
    fn merge(&mut self, ev: Ev, out: LocalOut) -> Result<()> {
        if let Some((what, secs)) = out.prof {
            let e = self.prof.entry(what).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += secs;
        }
        match (ev, out.local) {
            (Ev::Send(x), Local::Deferred) => self.on_send(x),
            (Ev::Update(x), Local::Deferred) => self.on_update(x),
            (Ev::Tick(x), Local::Done(actions)) => {
                let next = self.now + self.sc.sim.tick_ms * 1000;
                self.push(next, Ev::Tick(x));
                self.dispatch(x, actions);
            }
            (Ev::SyncNow(x), Local::Done(actions)) => self.dispatch(x, actions),
            (
                Ev::IHave {
                    to,
                    from,
                    topic,
                    ids,
                },
                Local::Deferred,
            ) => self.on_ihave(to, from, topic, ids),
            (
                Ev::IWant {
                    to,
                    from,
                    topic,
                    ids,
                },
                Local::Deferred,
            ) => self.on_iwant(to, from, topic, ids),
            (Ev::Gossip { .. }, Local::GossipUnreachable) => self.c.frames_lost += 1,
            (Ev::Gossip { .. }, Local::GossipRedundant) => self.c.gossip_redundant += 1,
            (
                Ev::Gossip {
                    to,
                    from,
                    id,
                    bytes,
                    lobby,
                },
                Local::Gossip {
                    forward,
                    error,
                    actions,
                },
            ) => {
                self.dont_want(to, from, id, lobby);
                if forward {
                    self.forward(to, id, bytes, lobby, Some(from));
                }
                self.dispatch(to, actions);
                if let Some(e) = error {
                    self.input_error(&e);
                }
            }
            (Ev::SyncReq { .. }, Local::Answered(None)) => {}
            (
                Ev::SyncReq {
                    to: server,
                    from: client,
                    inc,
                    id,
                    ..
                },
                Local::Answered(Some((answer, actions))),
            ) => {
                self.dispatch(server, actions);
                if let SyncMessage::Fetched(resp) = &answer {
                    for e in &resp.envelopes {
                        let id = self.intern(e);
                        self.tap(id, e);
                    }
                }
                let len = answer.encode().len();
                self.send_sync(
                    server,
                    client,
                    len,
                    Ev::SyncResp {
                        to: client,
                        from: server,
                        inc,
                        id,
                        msg: answer,
                    },
                );
            }
            (Ev::SyncResp { .. }, Local::Responded(None)) => {}
            (Ev::SyncResp { to, .. }, Local::Responded(Some((fetched, actions)))) => {
                self.c.fetched_envelopes += fetched;
                self.dispatch(to, actions);
            }
            (ev, _) => {
                return Err(anyhow!(
                    "internal: event {ev:?} does not match its node-local outcome"
                ))
            }
        }
        Ok(())
    }

    /// Runs one event alone (global events; node events outside a slice).
    fn handle(&mut self, mut ev: Ev) -> Result<()> {
        if let Some(x) = node_of(&ev) {
            let ctx = Ctx {
                net: &self.net,
                group_owner: &self.group_owner,
                member_index: &self.member_index,
                cache_ms: (self.sc.network.gossip_cache_s * 1000.0).round() as u64,
            };
            let out = run_local(&mut self.nodes[x], &ctx, self.now, &mut ev);
            return self.merge(ev, out);
        }
        match ev {
            // Node events: above.
            Ev::Tick(_)
            | Ev::Gossip { .. }
            | Ev::SyncNow(_)
            | Ev::SyncReq { .. }
            | Ev::SyncResp { .. }
            | Ev::Send(_)
            | Ev::Update(_)
            | Ev::IHave { .. }
            | Ev::IWant { .. } => {}
            Ev::Create => self.on_create()?,
            Ev::Heartbeat => {
                self.heartbeat();
                let next = self.now + self.sc.gossip.heartbeat_ms * 1000;
                self.push(next, Ev::Heartbeat);
            }
            Ev::PartitionStart(i) => {
                let groups = self.sc.partitions[i].groups.clone();
                self.net.partition(i, &groups);
                self.refresh_links();
            }
            Ev::PartitionHeal(i) => {
                self.net.heal(i);
                self.refresh_links();
                self.sync_everyone();
            }
            Ev::OfflineStart(i) => {
                let o = self.sc.offline[i].clone();
                self.net.set_online(o.member, false);
                self.nodes[o.member].online = false;
                if o.lose_state {
                    self.nodes[o.member].lost_at.push(self.now);
                }
                self.refresh_links();
            }
            Ev::OfflineEnd(i) => self.on_back_online(i)?,
            Ev::Compromise(i) => {
                let x = self.sc.compromises[i].member;
                let snap = self.nodes[x]
                    .store
                    .snapshot()
                    .map_err(|e| anyhow!("snapshot of member {x}'s store: {e}"))?;
                let (copy, _) =
                    Participant::open(identity_of(x), snap, self.cfg.clone(), self.now_ms())
                        .map_err(|e| anyhow!("opening the attacker's copy of member {x}: {e}"))?;
                self.attackers.push(Attacker::new(x, self.now, copy));
            }
            Ev::Join(i) => self.on_join(i),
            Ev::Remove(i) => self.on_remove(i),
            Ev::Quiet => {
                self.quiet = true;
                self.net.heal_all();
                self.net.loss = 0.0;
                self.refresh_links();
                self.sync_everyone();
            }
            Ev::Sample => {
                self.sample();
                let next = self.now + self.sample_us;
                if next <= self.end {
                    self.push(next, Ev::Sample);
                } else if self.now < self.end {
                    self.push(self.end, Ev::Sample);
                }
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------- gossip --

    fn intern(&mut self, bytes: &[u8]) -> u32 {
        let h = Envelope::id_of(bytes);
        let next = self.interned.len() as u32;
        *self.interned.entry(h).or_insert(next)
    }

    fn tap(&mut self, id: u32, bytes: &[u8]) {
        let now = self.now;
        let t0 = Instant::now();
        for a in &mut self.attackers {
            a.observe(id, bytes, now);
        }
        if !self.attackers.is_empty() {
            self.prof("attacker", t0);
        }
    }

    /// The gossip duplicate cache's time to live, ms.
    fn cache_ms(&self) -> u64 {
        (self.sc.network.gossip_cache_s * 1000.0).round() as u64
    }

    /// A node publishes (to every reachable neighbour under
    /// `flood_publish`, else its mesh). Like gossipsub, a node refuses to
    /// publish bytes still in its own duplicate cache.
    fn publish(&mut self, x: usize, bytes: Vec<u8>, lobby: bool) {
        let id = self.intern(&bytes);
        let (now, ttl) = (self.now_ms(), self.cache_ms());
        if !self.nodes[x].seen.insert(id, now, ttl) {
            self.c.republish_refused += 1;
            return;
        }
        self.forward(x, id, Arc::new(bytes), lobby, None);
    }

    /// Pushes a message `x` publishes (`except` None) or relays (received
    /// from `except`) to the overlay's targets, minus the neighbours known
    /// to have it already.
    fn forward(
        &mut self,
        x: usize,
        id: u32,
        bytes: Arc<Vec<u8>>,
        lobby: bool,
        except: Option<usize>,
    ) {
        let topic = GossipTopic::of(lobby);
        self.overlay.remember(x, topic, id, bytes.clone());
        let targets: Vec<(usize, usize)> = self
            .overlay
            .push_targets(&self.net, x, topic, except.is_none())
            .into_iter()
            .filter(|(b, link)| Some(*b) != except && !self.known_to_have(*b, *link, id))
            .collect();
        if targets.is_empty() {
            return;
        }
        self.tap(id, &bytes);
        for (b, link) in targets {
            self.send_gossip(x, b, link, id, bytes.clone(), lobby);
        }
    }

    /// Whether `x` knows that neighbour `b` (over `link`) has message `id`:
    /// `b` sent it or announced it (IHAVE), or told its mesh it arrived
    /// (IDONTWANT), early enough for that to have crossed the link. Each
    /// of these reaches `x` one latency after `b` first saw the message,
    /// so that is the rule. Flood mode knows nothing.
    fn known_to_have(&self, b: usize, link: usize, id: u32) -> bool {
        if self.sc.gossip.mode == GossipMode::Flood {
            return false;
        }
        let lat = self.net.links[link].latency_us;
        self.nodes[b]
            .seen
            .first_seen_ms(id, self.now_ms(), self.cache_ms())
            .is_some_and(|f| f * 1000 + lat <= self.now)
    }

    /// One gossip frame from `x` to its neighbour `b`.
    fn send_gossip(
        &mut self,
        x: usize,
        b: usize,
        link: usize,
        id: u32,
        bytes: Arc<Vec<u8>>,
        lobby: bool,
    ) {
        let len = bytes.len() as u64;
        let ttl = self.cache_ms();
        let tx = self
            .net
            .transmit(link, x, len as usize, self.now, &mut self.rng);
        if tx != Transmission::QueueFull {
            self.nodes[x].bytes_sent += len;
            self.c.bytes_gossip += len;
        }
        match tx {
            Transmission::Lost => self.c.frames_lost += 1,
            Transmission::QueueFull => self.c.queue_drops += 1,
            Transmission::Arrives(t) => {
                if self.nodes[b].seen.contains(id, t / 1000, ttl) {
                    // Still cached when it arrives (entries are not
                    // refreshed): it could only be dropped as seen.
                    self.c.gossip_redundant += 1;
                    self.nodes[b].bytes_recv += len;
                } else {
                    self.push(
                        t,
                        Ev::Gossip {
                            to: b,
                            from: x,
                            id,
                            bytes,
                            lobby,
                        },
                    );
                }
            }
        }
    }

    /// A control frame of `len` bytes from `x` over `link`: it takes its
    /// share of the link (and may be lost or dropped like any frame).
    fn send_control(&mut self, x: usize, link: usize, len: usize) -> Transmission {
        let tx = self.net.transmit(link, x, len, self.now, &mut self.rng);
        if tx != Transmission::QueueFull {
            self.nodes[x].bytes_sent += len as u64;
            self.c.bytes_gossip += len as u64;
            self.c.bytes_gossip_control += len as u64;
        }
        match tx {
            Transmission::Lost => self.c.frames_lost += 1,
            Transmission::QueueFull => self.c.queue_drops += 1,
            Transmission::Arrives(_) => {}
        }
        tx
    }

    /// gossipsub 1.2's IDONTWANT: `x`, which just got message `id` from
    /// `from`, tells its other mesh peers (the rule that uses it is
    /// [`known_to_have`](Self::known_to_have); here it costs its bytes).
    fn dont_want(&mut self, x: usize, from: usize, id: u32, lobby: bool) {
        if self.sc.gossip.mode == GossipMode::Flood {
            return;
        }
        let _ = id;
        let peers: Vec<(usize, usize)> = self
            .overlay
            .push_targets(&self.net, x, GossipTopic::of(lobby), false)
            .into_iter()
            .filter(|(b, _)| *b != from)
            .collect();
        for (_, link) in peers {
            self.send_control(x, link, control_bytes(1));
        }
    }

    /// Every node's heartbeat: mesh repair (GRAFT, PRUNE) and IHAVE to a
    /// few non-mesh neighbours.
    fn heartbeat(&mut self) {
        let (now, ttl) = (self.now_ms(), self.cache_ms());
        let nodes = &self.nodes;
        let (control, announces) = self.overlay.heartbeat(&self.net, &mut self.rng, |b, id| {
            nodes[b].seen.contains(id, now, ttl)
        });
        // GRAFT and PRUNE are rare and tiny: counted, not queued.
        let graft = (control * control_bytes(0)) as u64;
        self.c.bytes_gossip += graft;
        self.c.bytes_gossip_control += graft;
        for a in announces {
            let Some(link) = self.link_between(a.from, a.to) else {
                continue;
            };
            let tx = self.send_control(a.from, link, control_bytes(a.announced));
            if let Transmission::Arrives(t) = tx {
                if !a.ids.is_empty() {
                    self.push(
                        t,
                        Ev::IHave {
                            to: a.to,
                            from: a.from,
                            topic: a.topic,
                            ids: a.ids,
                        },
                    );
                }
            }
        }
    }

    /// An IHAVE arrived at `x` from `from`: ask for what is still missing.
    fn on_ihave(&mut self, x: usize, from: usize, topic: GossipTopic, ids: Vec<u32>) {
        if !self.net.reachable(from, x) {
            self.c.frames_lost += 1;
            return;
        }
        let (now, ttl) = (self.now_ms(), self.cache_ms());
        let want: Vec<u32> = ids
            .into_iter()
            .filter(|id| !self.nodes[x].seen.contains(*id, now, ttl))
            .collect();
        let Some(link) = self.link_between(x, from) else {
            return;
        };
        if want.is_empty() {
            return;
        }
        if let Transmission::Arrives(t) = self.send_control(x, link, control_bytes(want.len())) {
            self.push(
                t,
                Ev::IWant {
                    to: from,
                    from: x,
                    topic,
                    ids: want,
                },
            );
        }
    }

    /// An IWANT arrived at `x`: send what its message cache still holds.
    fn on_iwant(&mut self, x: usize, from: usize, topic: GossipTopic, ids: Vec<u32>) {
        if !self.net.reachable(from, x) {
            self.c.frames_lost += 1;
            return;
        }
        let Some(link) = self.link_between(x, from) else {
            return;
        };
        for id in ids {
            if let Some(bytes) = self.overlay.cached(x, topic, id) {
                self.tap(id, &bytes);
                self.send_gossip(x, from, link, id, bytes, topic.is_lobby());
            }
        }
    }

    fn input_error(&mut self, e: &mmls_core::MmlsError) {
        let d = format!("{e:?}");
        if names_a_psk(&d) {
            self.c.psk_errors += 1;
        }
        let kind = d
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or("Other")
            .to_string();
        *self.c.input_errors.entry(kind).or_insert(0) += 1;
    }

    // ------------------------------------------------------------ sync --

    fn link_between(&self, a: usize, b: usize) -> Option<usize> {
        self.net.adj[a]
            .binary_search_by_key(&b, |(n, _)| *n)
            .ok()
            .map(|i| self.net.adj[a][i].1)
    }

    fn send_sync(&mut self, from: usize, to: usize, len: usize, ev: Ev) {
        let Some(link) = self.link_between(from, to) else {
            return;
        };
        if !self.net.reachable(from, to) {
            return;
        }
        let tx = self.net.transmit(link, from, len, self.now, &mut self.rng);
        if tx != Transmission::QueueFull {
            self.nodes[from].bytes_sent += len as u64;
            self.c.bytes_sync += len as u64;
        }
        match tx {
            Transmission::Lost => self.c.frames_lost += 1,
            Transmission::QueueFull => self.c.queue_drops += 1,
            Transmission::Arrives(t) => self.push(t, ev),
        }
    }

    fn sync_everyone(&mut self) {
        for x in 0..self.nodes.len() {
            if self.nodes[x].online {
                self.push(self.now, Ev::SyncNow(x));
            }
        }
    }

    fn sync_config(&self) -> SyncConfig {
        SyncConfig {
            request_timeout_ms: (self.sc.sim.request_timeout_s * 1000.0).round() as u64,
            round_interval_ms: Some((self.sc.sim.sync_interval_s * 1000.0).round() as u64),
            // The node's per-peer cap on requests in flight (4, queued
            // beyond) made two runs of one seed differ, for a reason not
            // found yet (`the_same_seed_gives_identical_metrics`); the
            // simulator runs without it until then, so it does not model
            // that queue.
            max_inflight_per_peer: usize::MAX,
            ..SyncConfig::default()
        }
    }

    /// The sync agents' view of the links: a node is connected to the
    /// neighbours it can reach now. Tells each agent what came up or went
    /// down (in node order: deterministic).
    fn refresh_links(&mut self) {
        let now = self.now_ms();
        for x in 0..self.nodes.len() {
            let want: Vec<usize> = if self.nodes[x].online {
                self.net
                    .up_neighbours(x)
                    .into_iter()
                    .map(|(y, _)| y)
                    .collect()
            } else {
                vec![]
            };
            let gone: Vec<usize> = self.nodes[x]
                .sync
                .peers()
                .copied()
                .filter(|y| !want.contains(y))
                .collect();
            for y in gone {
                self.nodes[x].sync.peer_disconnected(&y, now);
            }
            for y in want {
                let m = self.nodes[y].p.me().clone();
                let n = &mut self.nodes[x];
                if !n.sync.is_connected(&y) {
                    n.sync.peer_identified(y, m);
                    n.sync.peer_connected(&n.p, y, now);
                }
            }
            self.drain(x);
        }
    }

    /// A position for a fetch that does not depend on random group ids.
    fn fetch_key(&self, r: &FetchRequest) -> (u8, usize, u64) {
        fetch_key(&self.group_owner, &self.member_index, r)
    }

    /// A canonical position for a sync request: summaries and pushes first
    /// (in the agent's order), then fetches by owner and start, by peer.
    fn request_key(&self, peer: usize, msg: &SyncMessage) -> (u8, (u8, usize, u64), usize) {
        match msg {
            SyncMessage::Fetch(r) => (1, self.fetch_key(r), peer),
            _ => (0, (0, 0, 0), 0),
        }
    }

    fn send_request(&mut self, x: usize, peer: usize, id: RequestId, msg: SyncMessage) {
        match &msg {
            SyncMessage::Summary(_) => self.c.sync_exchanges += 1,
            SyncMessage::Fetch(_) => self.c.fetch_requests += 1,
            _ => {}
        }
        let len = msg.encode().len();
        let inc = self.nodes[x].lost_at.len();
        self.send_sync(
            x,
            peer,
            len,
            Ev::SyncReq {
                to: peer,
                from: x,
                inc,
                id,
                msg,
            },
        );
    }

    // -------------------------------------------------- engine outputs --

    /// Feeds a node's outputs through its sync agent into the network and
    /// the bookkeeping.
    fn absorb(&mut self, x: usize, outs: Vec<Output>) {
        let now = self.now_ms();
        let ctx = Ctx {
            net: &self.net,
            group_owner: &self.group_owner,
            member_index: &self.member_index,
            cache_ms: 0,
        };
        absorb_local(&mut self.nodes[x], &ctx, outs, now);
        self.drain(x);
    }

    /// Carries out what node `x`'s sync agent asks for.
    fn drain(&mut self, x: usize) {
        let actions = collect(&mut self.nodes[x]);
        self.dispatch(x, actions);
    }

    /// The shared half of [`drain`](Self::drain): bookkeeping, network and
    /// RNG, in the order of `actions` (run sequentially, in event order).
    fn dispatch(&mut self, x: usize, actions: Vec<Action<usize>>) {
        if actions.is_empty() {
            return;
        }
        let mut requests = vec![];
        let mut publishes = vec![];
        for a in actions {
            match a {
                Action::Publish(p) => {
                    let env = Envelope::decode(&p.bytes).ok();
                    if let Some(env) = &env {
                        self.on_own_publish(x, env, &p.bytes);
                    }
                    publishes.push((env, p));
                }
                Action::Event(e) => self.on_event(x, e),
                Action::Request { peer, id, msg } => requests.push((peer, id, msg)),
            }
        }
        // The engine emits the publishes of one call in the order of its
        // (random) group ids; each takes network randomness in turn, so that
        // order would make runs of one seed diverge. A stable sort by the
        // groups' owners keeps every stream's own order. Requests likewise.
        let mut keyed: Vec<(usize, Publish)> = publishes
            .into_iter()
            .map(|(env, p)| (self.publish_key(x, env.as_ref()), p))
            .collect();
        keyed.sort_by_key(|(k, _)| *k);
        for (_, p) in keyed {
            self.publish(x, p.bytes, p.topic == Topic::Lobby);
        }
        requests.sort_by_key(|(peer, _, msg)| self.request_key(*peer, msg));
        for (peer, id, msg) in requests {
            self.send_request(x, peer, id, msg);
        }
    }

    /// Canonical position of a publish of node `x`: envelopes without a
    /// group (KeyPackages, requests, rejoins) first, then by the index of
    /// the group's owner.
    fn publish_key(&self, x: usize, env: Option<&Envelope>) -> usize {
        let Some(env) = env else {
            return usize::MAX;
        };
        match env.group {
            None => 0,
            Some(g) => match self.group_owner.get(&g) {
                Some(o) => o + 1,
                None if matches!(env.kind, Kind::Commit | Kind::Welcome | Kind::Application) => {
                    x + 1
                }
                None => usize::MAX,
            },
        }
    }

    fn on_own_publish(&mut self, x: usize, env: &Envelope, bytes: &[u8]) {
        let p = self
            .c
            .published
            .entry(format!("{:?}", env.kind))
            .or_default();
        p.count += 1;
        p.bytes += bytes.len() as u64;
        p.max_bytes = p.max_bytes.max(bytes.len() as u64);
        if !matches!(env.kind, Kind::Welcome | Kind::Commit | Kind::Application) {
            return;
        }
        let Some(g) = env.group else { return };
        self.group_owner.insert(g, x);
        if env.kind != Kind::Welcome {
            return;
        }
        // Whom the Welcome adds: the owner serves it to exactly those.
        let Some(uid) = env.universe else { return };
        for r in 0..self.nodes.len() {
            if r == x {
                continue;
            }
            let req = FetchRequest::Welcomes {
                universe: uid,
                member: self.nodes[r].member.clone(),
                groups: vec![],
            };
            let Ok(resp) = self.nodes[x].p.serve_fetch(&req) else {
                continue;
            };
            if resp.envelopes.iter().any(|e| e.as_slice() == bytes) {
                self.welcomes
                    .entry((g, r))
                    .or_default()
                    .push((env.seq, self.now));
            }
        }
    }

    fn on_event(&mut self, x: usize, e: Event) {
        if !matches!(e, Event::Message(_) | Event::Rejected { .. }) && watched(x) {
            let d = format!("{e:?}");
            let cut = d.char_indices().nth(200).map_or(d.len(), |(i, _)| i);
            eprintln!("watch t={:.3} member {x}: {}", secs(self.now), &d[..cut]);
        }
        match e {
            Event::Message(d) => {
                self.c.decryptions += 1;
                let Some(mid) = message_id(&d.body) else {
                    return;
                };
                let ms = self.now_ms().min(NONE as u64 - 1) as u32;
                let lost_at = &self.nodes[x].lost_at;
                if let Some(m) = self.msgs.get_mut(mid as usize) {
                    // A node that lost its state since its last copy is a
                    // new incarnation: a rejoin re-sends it what it had.
                    let last = m
                        .again
                        .iter()
                        .rev()
                        .find(|(r, _)| *r == x)
                        .map_or(m.recv[x], |(_, t)| *t);
                    let lost_since =
                        last != NONE && lost_at.iter().any(|t| *t >= (last as u64) * 1000);
                    if m.recv[x] == NONE {
                        m.recv[x] = ms;
                        self.c.deliveries_total += 1;
                    } else if lost_since {
                        m.again.push((x, ms));
                        self.c.deliveries_total += 1;
                    } else {
                        self.c.duplicates += 1;
                    }
                }
            }
            Event::Committed { path, .. } => {
                self.c.commits += 1;
                if path {
                    self.c.commits_with_path += 1;
                    self.nodes[x].path_commits.push(self.now);
                }
            }
            Event::MemberRemoved { member, .. } => {
                let Some(&r) = self.member_index.get(&member) else {
                    return;
                };
                if r == x || self.removal_cut.contains_key(&(x, r)) {
                    return;
                }
                if let Some(uid) = self.uid {
                    if let Ok(st) = self.nodes[x].p.status(&uid) {
                        if let Some(own) = st.own_group {
                            if let Some(gs) = st.groups.iter().find(|g| g.group == own) {
                                self.removal_cut.insert((x, r), (own, gs.next_seq));
                            }
                        }
                    }
                }
            }
            Event::Stale { .. } => self.c.stale_events += 1,
            Event::Rejoined { .. } => self.c.rejoins += 1,
            Event::Rejected {
                reason, group, seq, ..
            } => {
                if watched(x) {
                    let owner = self.group_owner.get(&group).copied();
                    eprintln!(
                        "watch t={:.3} member {x} rejected seq {seq} of owner {owner:?}'s group: {reason}",
                        secs(self.now)
                    );
                    self.watch_deps(x, owner, group, seq);
                }
                self.c.rejected_entries += 1;
                if names_a_psk(&reason) {
                    self.c.psk_errors += 1;
                }
                *self.c.rejections.entry(reason_kind(&reason)).or_insert(0) += 1;
            }
            Event::Equivocation { .. } => self.c.equivocations += 1,
            _ => {}
        }
    }

    // -------------------------------------------------------- workload --

    fn can_act(&self, x: usize) -> Option<Id32> {
        let n = &self.nodes[x];
        if n.online && n.in_universe {
            self.uid
        } else {
            None
        }
    }

    fn on_send(&mut self, x: usize) {
        if self.quiet {
            return;
        }
        let next = self.now + s_to_us(self.sc.workload.message_interval_s);
        self.push(next, Ev::Send(x));
        let Some(uid) = self.can_act(x) else { return };
        let mid = self.msgs.len() as u64;
        let mut body = vec![0u8; self.sc.workload.message_bytes];
        body[..8].copy_from_slice(&mid.to_be_bytes());
        let t0 = Instant::now();
        let r = self.nodes[x].p.send(&uid, &body);
        self.prof("send", t0);
        match r {
            Ok((_, outs)) => {
                let app = outs.iter().rev().find_map(|o| match o {
                    Output::Publish(p) => Envelope::decode(&p.bytes)
                        .ok()
                        .filter(|e| e.kind == Kind::Application)
                        .and_then(|e| e.group.map(|g| (g, e.seq))),
                    _ => None,
                });
                let Some((group, seq)) = app else {
                    self.c
                        .driver_errors
                        .push(format!("member {x}: send produced no application envelope"));
                    return;
                };
                self.msgs.push(MsgRec {
                    sender: x,
                    sent: self.now,
                    group,
                    seq,
                    recv: vec![NONE; self.nodes.len()],
                    again: vec![],
                });
                self.c.messages_sent += 1;
                self.absorb(x, outs);
                self.nodes[x].sent += 1;
                let k = u64::from(self.sc.workload.update_every_sends);
                if k > 0 && self.nodes[x].sent.is_multiple_of(k) {
                    self.update(x, uid);
                }
            }
            Err(_) => self.c.sends_refused += 1,
        }
    }

    fn on_update(&mut self, x: usize) {
        if self.quiet {
            return;
        }
        let next = self.now + s_to_us(self.sc.workload.update_interval_s);
        self.push(next, Ev::Update(x));
        let Some(uid) = self.can_act(x) else { return };
        self.update(x, uid);
    }

    fn update(&mut self, x: usize, uid: Id32) {
        let t0 = Instant::now();
        let r = self.nodes[x].p.update(&uid);
        self.prof("update", t0);
        match r {
            Ok(outs) => {
                self.c.updates += 1;
                self.absorb(x, outs);
            }
            Err(_) => self.c.updates_refused += 1,
        }
    }

    fn on_create(&mut self) -> Result<()> {
        if self.uid.is_some() {
            return Ok(());
        }
        if !self.nodes[0].online {
            self.push(self.now + SEC / 2, Ev::Create);
            return Ok(());
        }
        let members: Vec<MemberId> = (0..self.sc.members)
            .map(|i| self.nodes[i].member.clone())
            .collect();
        match self.nodes[0]
            .p
            .create_universe("mmls-sim", &members, &[], self.profile)
        {
            Ok((uid, outs)) => {
                self.uid = Some(uid);
                for i in 0..self.sc.members {
                    self.nodes[i].in_universe = true;
                }
                self.absorb(0, outs);
            }
            Err(mmls_core::MmlsError::MissingKeyPackage(m)) => {
                // Ask the lobby (as the node's driver does); try again.
                let now = self.now_ms();
                self.nodes[0].sync.missing_key_package(&m, now);
                self.drain(0);
                self.push(self.now + SEC / 2, Ev::Create);
            }
            Err(e) => return Err(anyhow!("member 0 cannot create the universe: {e}")),
        }
        Ok(())
    }

    fn on_back_online(&mut self, i: usize) -> Result<()> {
        let o = self.sc.offline[i].clone();
        let x = o.member;
        self.net.set_online(x, true);
        self.nodes[x].online = true;
        if !o.lose_state {
            // The engine's clock moves only with tick: without one now, the
            // first catch-up input would be stamped with the time the node
            // went offline, and every stream it blocks would look blocked
            // for the whole absence (and be rejoined at the next tick). The
            // node's driver ticks on its own timer whatever the network does.
            let now = self.now_ms();
            let outs = self.nodes[x].p.tick(now);
            self.absorb(x, outs);
        }
        if o.lose_state {
            let store = Store::in_memory_sharing(&self.shared)
                .map_err(|e| anyhow!("in-memory store: {e}"))?;
            let (p, outs) = Participant::open(
                identity_of(x),
                store.clone(),
                self.cfg.clone(),
                self.now_ms(),
            )
            .map_err(|e| anyhow!("reopening member {x}: {e}"))?;
            let sync = self.sync_config();
            let n = &mut self.nodes[x];
            n.p = p;
            n.store = store;
            n.seen = SeenCache::default();
            self.overlay.forget_messages(x);
            // A new process: a new agent (the old one's links went down
            // with it, in `refresh_links`).
            n.sync = SyncAgent::new(n.member.clone(), sync);
            self.absorb(x, outs);
            if let Some(uid) = self.uid {
                if self.nodes[x].in_universe {
                    match self.nodes[x].p.recover_universe(&uid) {
                        Ok(outs) => self.absorb(x, outs),
                        Err(e) => self
                            .c
                            .driver_errors
                            .push(format!("member {x}: recover_universe: {e}")),
                    }
                }
            }
        }
        self.refresh_links();
        self.push(self.now, Ev::SyncNow(x));
        Ok(())
    }

    fn on_join(&mut self, i: usize) {
        let r = self.sc.joins[i].member;
        let retry = self.now + SEC;
        let Some(uid) = self.uid.filter(|_| self.nodes[0].online) else {
            if retry < self.end {
                self.push(retry, Ev::Join(i));
            }
            return;
        };
        let m = self.nodes[r].member.clone();
        match self.nodes[0].p.add_member(&uid, &m) {
            Ok(outs) => {
                self.nodes[r].in_universe = true;
                self.absorb(0, outs);
            }
            Err(mmls_core::MmlsError::AlreadyMember(_)) => self.nodes[r].in_universe = true,
            Err(mmls_core::MmlsError::MissingKeyPackage(m)) => {
                let now = self.now_ms();
                self.nodes[0].sync.missing_key_package(&m, now);
                self.drain(0);
                if retry < self.end {
                    self.push(retry, Ev::Join(i));
                }
            }
            Err(mmls_core::MmlsError::UniverseNotReady(_)) => {
                if retry < self.end {
                    self.push(retry, Ev::Join(i));
                }
            }
            Err(e) => self
                .c
                .driver_errors
                .push(format!("admin add_member({r}): {e}")),
        }
    }

    fn on_remove(&mut self, i: usize) {
        let r = self.sc.removes[i].member;
        let retry = self.now + SEC;
        let Some(uid) = self.uid.filter(|_| self.nodes[0].online) else {
            if retry < self.end {
                self.push(retry, Ev::Remove(i));
            }
            return;
        };
        let m = self.nodes[r].member.clone();
        match self.nodes[0].p.remove_member(&uid, &m) {
            Ok(outs) => {
                self.nodes[r].in_universe = false;
                self.removed_at[r] = Some(self.now);
                self.absorb(0, outs);
            }
            Err(mmls_core::MmlsError::UniverseNotReady(_)) => {
                if retry < self.end {
                    self.push(retry, Ev::Remove(i));
                }
            }
            Err(e) => self
                .c
                .driver_errors
                .push(format!("admin remove_member({r}): {e}")),
        }
    }

    // --------------------------------------------------------- samples --

    fn sample(&mut self) {
        let t0 = Instant::now();
        self.sample_inner();
        self.watch();
        self.prof("sample", t0);
    }

    /// For a watched rejection: the PSKs the entry depends on, and where
    /// the watched member stands in those groups.
    fn watch_deps(&mut self, x: usize, owner: Option<usize>, group: Id32, seq: u64) {
        let (Some(o), Some(uid)) = (owner, self.uid) else {
            return;
        };
        let req = FetchRequest::Range {
            universe: uid,
            group,
            from: seq,
        };
        let Ok(resp) = self.nodes[o].p.serve_fetch(&req) else {
            return;
        };
        let Some(env) = resp
            .envelopes
            .first()
            .and_then(|b| Envelope::decode(b).ok())
        else {
            return;
        };
        let st = self.nodes[x].p.status(&uid).ok();
        for (g, e) in &env.deps {
            let dep_owner = self.group_owner.get(g).copied();
            let mine = st
                .as_ref()
                .and_then(|s| s.groups.iter().find(|s| s.group == *g))
                .map(|s| (s.epoch, s.stale));
            eprintln!(
                "    {:?} seq {} epoch {} depends on owner {dep_owner:?}'s group at epoch {e}; member {x} is at {mine:?}",
                env.kind, env.seq, env.epoch
            );
        }
    }

    /// `MMLS_SIM_WATCH=3,5` prints those members' stream states at every
    /// sample (stderr): the first thing to look at when a run does not
    /// converge.
    fn watch(&mut self) {
        let Some(list) = std::env::var_os("MMLS_SIM_WATCH") else {
            return;
        };
        let Some(uid) = self.uid else { return };
        let t = secs(self.now);
        for w in list.to_string_lossy().split(',') {
            let Ok(x) = w.trim().parse::<usize>() else {
                continue;
            };
            if x >= self.nodes.len() {
                continue;
            }
            let online = self.nodes[x].online;
            let Ok(st) = self.nodes[x].p.status(&uid) else {
                eprintln!("watch t={t:.1} member {x}: not in the universe (online {online})");
                continue;
            };
            eprintln!(
                "watch t={t:.1} member {x} (online {online}): roster {}, own group {}, pending imports {}",
                st.roster.len(),
                st.own_group.map(|g| g.short()).unwrap_or_else(|| "-".into()),
                st.pending_imports
            );
            for g in &st.groups {
                let owner = self
                    .member_index
                    .get(&g.owner)
                    .copied()
                    .unwrap_or(usize::MAX);
                if g.blocked || g.stale || g.buffered > 0 {
                    eprintln!(
                        "    owner {owner:>3} epoch {:>4} next_seq {:>5} members {:>3} buffered {:>4} blocked {} stale {} waiting {:?}",
                        g.epoch, g.next_seq, g.members, g.buffered, g.blocked, g.stale, g.waiting_for
                    );
                }
            }
        }
    }

    fn sample_inner(&mut self) {
        let t = (secs(self.now) * 1000.0).round() / 1000.0;
        let d = self.c.deliveries_total;
        self.series.deliveries.push((
            t,
            d - self.last_sample_deliveries,
            d,
            self.c.messages_sent,
            self.c.commits,
        ));
        self.last_sample_deliveries = d;
        for (i, n) in self.nodes.iter().enumerate() {
            self.series.bytes.push((t, i, n.bytes_sent, n.bytes_recv));
        }
        let Some(uid) = self.uid else { return };
        let owners: Vec<usize> = (0..self.nodes.len())
            .filter(|o| self.nodes[*o].in_universe)
            .collect();
        let online: Vec<usize> = owners
            .iter()
            .copied()
            .filter(|r| self.nodes[*r].online)
            .collect();
        let mut rows = vec![];
        for &o in &owners {
            let mo = self.nodes[o].member.clone();
            let own = self.nodes[o]
                .p
                .group_of(&uid, &mo)
                .and_then(|g| self.nodes[o].p.group_epoch(&g).ok());
            let Some(own) = own else { continue };
            let (mut lo, mut hi) = (u64::MAX, 0);
            for &r in &online {
                let p = &mut self.nodes[r].p;
                if let Some(e) = p.group_of(&uid, &mo).and_then(|g| p.group_epoch(&g).ok()) {
                    lo = lo.min(e);
                    hi = hi.max(e);
                }
            }
            rows.push((t, o, own, if lo == u64::MAX { 0 } else { lo }, hi));
        }
        self.series.epochs.extend(rows);
    }

    // ---------------------------------------------------------- finish --

    /// The crypto the run did, priced in plain openmls, against its cost.
    fn cost(&self, wall: f64) -> RunCost {
        let c = &self.c;
        // Every commit is made once and processed by the group's other
        // members: a group's size in handlings (members in the universe at
        // the end; a new member joins by Welcome instead, not counted).
        let group = self.nodes.iter().filter(|n| n.in_universe).count().max(1);
        let commit_handlings = c.commits * group as u64;
        let openmls_seconds = (commit_handlings as f64 * openmls_commit_us(group)
            + c.decryptions as f64 * OPENMLS_DECRYPT_US)
            / 1e6;
        let rss = peak_rss_mb() * 1024.0 * 1024.0;
        if std::env::var_os("MMLS_SIM_PROFILE").is_some() {
            // What a simulated node's store is made of (logical bytes:
            // values shared between the stores count in each).
            let mut by: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
            for n in &self.nodes {
                for (t, c, b) in n.store.memory_usage() {
                    let e = by.entry(t).or_default();
                    e.0 += c;
                    e.1 += b;
                }
            }
            for (t, (entries, bytes)) in by {
                eprintln!("profile: store {t:<12} {entries:>10} entries {bytes:>14} bytes");
            }
        }
        if std::env::var_os("MMLS_SIM_PROFILE").is_some() {
            let held: usize = self.nodes.iter().map(|n| n.p.group_cache_stats().0).sum();
            eprintln!("profile: decoded groups held {held}");
        }
        let store: f64 = self
            .nodes
            .iter()
            .flat_map(|n| n.store.memory_usage())
            .map(|(_, _, b)| b as f64)
            .sum();
        RunCost {
            commit_handlings,
            decryptions: c.decryptions,
            openmls_seconds: (openmls_seconds * 1000.0).round() / 1000.0,
            threads: self.threads,
            overhead: (openmls_seconds > 0.0)
                .then(|| (wall / openmls_seconds * 100.0).round() / 100.0),
            bytes_per_member: (rss / self.nodes.len().max(1) as f64) as u64,
            store_bytes_per_member: (store / self.nodes.len().max(1) as f64) as u64,
            group_decodes_per_member: self
                .nodes
                .iter()
                .map(|n| n.p.group_cache_stats().1)
                .sum::<u64>()
                / self.nodes.len().max(1) as u64,
        }
    }

    fn finish(mut self) -> Result<SimOutput> {
        let wall = self.started.elapsed().as_secs_f64();
        let n = self.nodes.len();
        if std::env::var_os("MMLS_SIM_PROFILE").is_some() {
            let total = self.started.elapsed().as_secs_f64();
            eprintln!("profile: {} events, {total:.2} s wall", self.events);
            for (k, (c, t)) in &self.prof {
                eprintln!(
                    "  {k:<24} {c:>10} calls {t:>9.2} s {:>8.1} us/call",
                    t / *c as f64 * 1e6
                );
            }
            eprintln!(
                "  engine state of member 0: {} bytes",
                self.nodes[0].p.state_size()
            );
            eprintln!("  store of member 0 (entries, key + value bytes):");
            for (table, entries, bytes) in self.nodes[0].store.memory_usage() {
                eprintln!("    {table:<12} {entries:>8} {bytes:>12}");
            }
        }
        let mut conv = Convergence::default();
        // Epochs: every checked member's view of every owner's group agrees.
        let is_checked: Vec<bool> = self
            .nodes
            .iter()
            .map(|x| x.in_universe && x.online)
            .collect();
        let checked: Vec<usize> = (0..n).filter(|r| is_checked[*r]).collect();
        conv.members_checked = checked.len();
        if let Some(uid) = self.uid {
            let owners: Vec<usize> = (0..n).filter(|o| self.nodes[*o].in_universe).collect();
            let owner_ids: Vec<_> = owners
                .iter()
                .map(|o| self.nodes[*o].member.clone())
                .collect();
            // Each member's views are read on the thread pool, member by
            // member, like the run's own steps: read on the main thread,
            // owner by owner, every member's group cache turned over on one
            // thread whose allocator arena then grew by a decoded group per
            // view (6 GB more at 256 members keeping 160 groups each).
            let views_of = |node: &mut Node, checked: bool| -> Vec<Option<Fingerprint>> {
                if !checked {
                    return vec![];
                }
                owner_ids
                    .iter()
                    .map(|mo| {
                        let p = &mut node.p;
                        p.group_of(&uid, mo)
                            .and_then(|g| p.epoch_fingerprint(&g).ok())
                    })
                    .collect()
            };
            let mut seen = on_each_node(self.pool.as_ref(), &mut self.nodes, is_checked, views_of);
            for (k, &o) in owners.iter().enumerate() {
                let views: Vec<(usize, Option<Fingerprint>)> =
                    checked.iter().map(|&r| (r, seen[r][k].take())).collect();
                // The reference view: the owner's own if it is checked,
                // else the most common one.
                let reference = views
                    .iter()
                    .find(|(r, _)| *r == o)
                    .and_then(|(_, f)| f.clone())
                    .or_else(|| {
                        let mut counts: BTreeMap<&(u64, Vec<u8>), usize> = BTreeMap::new();
                        for f in views.iter().filter_map(|(_, f)| f.as_ref()) {
                            *counts.entry(f).or_insert(0) += 1;
                        }
                        counts
                            .into_iter()
                            .max_by_key(|(_, c)| *c)
                            .map(|(f, _)| f.clone())
                    });
                for (r, f) in &views {
                    let ok = matches!((f, &reference), (Some(a), Some(b)) if a == b);
                    if !ok {
                        conv.epoch_mismatches += 1;
                        if conv.problems.len() < 12 {
                            conv.problems.push(match f {
                                None => format!("member {r} has no usable view of member {o}'s send group"),
                                Some((e, _)) => format!(
                                    "member {r} is at epoch {e} of member {o}'s send group (reference epoch {})",
                                    reference.as_ref().map(|x| x.0.to_string()).unwrap_or("?".into())
                                ),
                            });
                        }
                    }
                }
            }
        } else {
            conv.problems.push("the universe was never created".into());
        }

        // Deliveries.
        let mut expected = 0u64;
        let mut delivered = 0u64;
        let mut optional = 0u64;
        let mut unexpected = 0u64;
        let mut lost_with_sender = 0u64;
        let mut lost_for_rejoiner = 0u64;
        let mut latencies: Vec<u32> = vec![];
        let mut missing_examples = vec![];
        for (mid, m) in self.msgs.iter().enumerate() {
            let s = m.sender;
            let anyone = m.recv.iter().any(|v| *v != NONE);
            let sender_lost = self.nodes[s].lost_at.iter().any(|t| *t > m.sent);
            if sender_lost && !anyone {
                lost_with_sender += 1;
                continue;
            }
            for r in 0..n {
                if r == s {
                    continue;
                }
                let mut got = m.recv[r] != NONE;
                let class = match self.classify(m, r) {
                    Class::ExpectedAgain { since_ms } => {
                        let last = m
                            .again
                            .iter()
                            .filter(|(x, _)| *x == r)
                            .map(|(_, t)| *t)
                            .max()
                            .unwrap_or(m.recv[r]);
                        got = last != NONE && last as u64 >= since_ms;
                        Class::Expected
                    }
                    Class::LostWithSender => {
                        lost_for_rejoiner += 1;
                        Class::Optional
                    }
                    c => c,
                };
                match class {
                    Class::Expected => {
                        expected += 1;
                        if got {
                            delivered += 1;
                            latencies.push(m.recv[r].saturating_sub((m.sent / 1000) as u32));
                        } else {
                            conv.missing_deliveries += 1;
                            if missing_examples.len() < 5 {
                                missing_examples.push(format!(
                                    "member {r} never got message {mid} from member {s} (sent at {:.3} s)",
                                    secs(m.sent)
                                ));
                            }
                        }
                    }
                    Class::Optional => {
                        if got {
                            optional += 1;
                        }
                    }
                    Class::Forbidden => {
                        if got {
                            unexpected += 1;
                        }
                    }
                    // Mapped above.
                    Class::ExpectedAgain { .. } | Class::LostWithSender => {}
                }
            }
        }
        for p in missing_examples {
            if conv.problems.len() < 16 {
                conv.problems.push(p);
            }
        }
        latencies.sort_unstable();

        // PCS.
        let sent: Vec<SentMessage> = self
            .msgs
            .iter()
            .enumerate()
            .map(|(i, m)| SentMessage {
                id: i as u64,
                sender: m.sender,
                group: m.group,
                sent_us: m.sent,
            })
            .collect();
        let mut pcs = vec![];
        let mut pcs_points = vec![];
        for a in &self.attackers {
            pcs.push(attacker::analyse(
                a,
                &sent,
                &self.nodes[a.victim].path_commits,
            ));
            let points = sent
                .iter()
                .filter(|m| m.sender != a.victim && m.sent_us >= a.at_us)
                .map(|m| PcsPoint {
                    owner: m.sender,
                    sent_s: secs(m.sent_us - a.at_us),
                    read: a.read.contains_key(&m.id),
                })
                .collect();
            pcs_points.push(PcsPanel {
                victim: a.victim,
                at_s: secs(a.at_us),
                points,
            });
        }

        let converged =
            conv.missing_deliveries == 0 && conv.epoch_mismatches == 0 && self.uid.is_some();
        let c = &self.c;
        let published: u64 = c.published.values().map(|p| p.bytes).sum();
        let ratio = |a: u64, b: u64| (b > 0).then(|| (a as f64 / b as f64 * 10.0).round() / 10.0);
        let metrics = Metrics {
            scenario: self.sc.name.clone(),
            seed: self.seed,
            members: self.sc.members,
            nodes: n,
            topology: self.sc.network.topology.to_string(),
            links: self.net.links.len(),
            virtual_seconds: self.sc.end_s(),
            messages_sent: c.messages_sent,
            deliveries_expected: expected,
            deliveries: delivered,
            duplicates: c.duplicates,
            unexpected_deliveries: unexpected,
            optional_deliveries: optional,
            lost_with_sender_state: lost_with_sender,
            deliveries_lost_with_sender_state: lost_for_rejoiner,
            latency_ms: Latency::of(&latencies),
            converged,
            convergence: conv,
            bytes_on_wire: c.bytes_gossip + c.bytes_sync,
            bytes_gossip: c.bytes_gossip,
            bytes_gossip_control: c.bytes_gossip_control,
            bytes_published: published,
            wire_per_published: ratio(c.bytes_gossip + c.bytes_sync, published),
            gossip_per_published: ratio(c.bytes_gossip, published),
            bytes_sync: c.bytes_sync,
            gossip_redundant: c.gossip_redundant,
            republish_refused: c.republish_refused,
            frames_lost: c.frames_lost,
            queue_drops: c.queue_drops,
            commits: c.commits,
            commits_with_path: c.commits_with_path,
            updates: c.updates,
            commits_per_update: if c.updates > 0 {
                Some((c.commits as f64 / c.updates as f64 * 100.0).round() / 100.0)
            } else {
                None
            },
            sync_exchanges: c.sync_exchanges,
            fetch_requests: c.fetch_requests,
            fetched_envelopes: c.fetched_envelopes,
            input_errors: c.input_errors.clone(),
            rejected_entries: c.rejected_entries,
            rejections: c.rejections.clone(),
            psk_errors: c.psk_errors,
            published: c.published.clone(),
            stale_events: c.stale_events,
            rejoins: c.rejoins,
            equivocations: c.equivocations,
            sends_refused: c.sends_refused,
            updates_refused: c.updates_refused,
            driver_errors: c.driver_errors.clone(),
            pcs,
            cost: self.cost(wall),
            wall_seconds: (wall * 100.0).round() / 100.0,
            peak_rss_mb: peak_rss_mb(),
        };
        let bytes_per_node = self.nodes.iter().map(|n| n.bytes_sent).collect();
        Ok(SimOutput {
            metrics,
            series: self.series,
            latencies,
            pcs_points,
            bytes_per_node,
            scenario: self.sc,
        })
    }

    /// Whether member `r` must, may, or must not get message `m`.
    fn classify(&self, m: &MsgRec, r: usize) -> Class {
        let s = m.sender;
        // The Welcome that put r into the group before m (stream order).
        let entry = self.welcomes.get(&(m.group, r)).and_then(|v| {
            v.iter()
                .filter(|(seq, _)| *seq < m.seq)
                .max_by_key(|(seq, _)| *seq)
                .copied()
        });
        let Some((_, welcomed_at)) = entry else {
            return Class::Forbidden;
        };
        if let Some(t_rm) = self.removed_at[r] {
            if let Some((g, cut)) = self.removal_cut.get(&(s, r)) {
                if *g == m.group && m.seq >= *cut {
                    return Class::Forbidden;
                }
            }
            let _ = t_rm;
            return Class::Optional;
        }
        if !self.nodes[r].online || !self.nodes[r].in_universe {
            return Class::Optional;
        }
        // Welcomed into an incarnation that later lost its state: the new
        // one is re-sent what it lacks by each owner, unless that owner lost
        // its own state since it sent the message.
        if let Some(loss) = self.nodes[r]
            .lost_at
            .iter()
            .copied()
            .find(|t| *t > welcomed_at)
        {
            if self.nodes[s].lost_at.iter().any(|t| *t > m.sent) {
                return Class::LostWithSender;
            }
            // Only a sender still in the universe can re-add and re-send.
            if self.removed_at[s].is_some() || !self.nodes[s].online || !self.nodes[s].in_universe {
                return Class::Optional;
            }
            return Class::ExpectedAgain {
                since_ms: loss / 1000,
            };
        }
        Class::Expected
    }
}

// ------------------------------------------------- the parallel phase --

/// What node-local work may read of the shared state: nothing it reads
/// changes while a slice's node-local work runs.
struct Ctx<'a> {
    net: &'a Network,
    group_owner: &'a BTreeMap<Id32, usize>,
    member_index: &'a BTreeMap<MemberId, usize>,
    /// The gossip duplicate cache's time to live, ms.
    cache_ms: u64,
}

/// A position for a fetch that does not depend on random group ids.
fn fetch_key(
    group_owner: &BTreeMap<Id32, usize>,
    member_index: &BTreeMap<MemberId, usize>,
    r: &FetchRequest,
) -> (u8, usize, u64) {
    match r {
        FetchRequest::Range { group, from, .. } => (
            0,
            group_owner.get(group).copied().unwrap_or(usize::MAX),
            *from,
        ),
        FetchRequest::Welcomes { member, .. } => (
            1,
            member_index.get(member).copied().unwrap_or(usize::MAX),
            0,
        ),
    }
}

/// Hands engine outputs to the node's sync agent, fetches in a canonical
/// order (the engine's follows its random group ids).
fn absorb_local(node: &mut Node, ctx: &Ctx<'_>, outs: Vec<Output>, now_ms: u64) {
    if outs.is_empty() {
        return;
    }
    let (mut fetches, mut rest): (Vec<Output>, Vec<Output>) = outs
        .into_iter()
        .partition(|o| matches!(o, Output::Fetch(_)));
    fetches.sort_by_key(|o| match o {
        Output::Fetch(r) => fetch_key(ctx.group_owner, ctx.member_index, r),
        _ => (2, 0, 0),
    });
    rest.extend(fetches);
    node.sync.handle_outputs(rest, None, now_ms);
}

/// The node's half of draining its sync agent: takes its actions and acks
/// its own publishes (the network delivers them when they are dispatched).
fn collect(node: &mut Node) -> Vec<Action<usize>> {
    let mut actions = vec![];
    let mut acks = vec![];
    while let Some(a) = node.sync.poll_action() {
        if let Action::Publish(p) = &a {
            if let Some(id) = p.outbox_id {
                acks.push(id);
            }
        }
        actions.push(a);
    }
    if !acks.is_empty() {
        node.p.ack_published(&acks);
    }
    actions
}

/// Events whose engine work touches only their node: a slice runs that
/// work for every node in parallel.
fn node_of(ev: &Ev) -> Option<usize> {
    match ev {
        Ev::Tick(x)
        | Ev::SyncNow(x)
        | Ev::Send(x)
        | Ev::Update(x)
        | Ev::IHave { to: x, .. }
        | Ev::IWant { to: x, .. }
        | Ev::Gossip { to: x, .. }
        | Ev::SyncReq { to: x, .. }
        | Ev::SyncResp { to: x, .. } => Some(*x),
        _ => None,
    }
}

/// The outcome of one event's node-local work.
enum Local {
    /// Nothing was done here (the event runs entirely in the merge).
    Deferred,
    /// The node did its part (online or not): actions to dispatch.
    Done(Vec<Action<usize>>),
    GossipUnreachable,
    GossipRedundant,
    Gossip {
        forward: bool,
        error: Option<mmls_core::MmlsError>,
        actions: Vec<Action<usize>>,
    },
    /// A sync request answered (None: the client was unreachable).
    Answered(Option<(SyncMessage, Vec<Action<usize>>)>),
    /// A sync response taken (None: not for this incarnation, or unreachable).
    Responded(Option<(u64, Vec<Action<usize>>)>),
}

/// One event's node-local work, with the wall time it took.
struct LocalOut {
    local: Local,
    prof: Option<(&'static str, f64)>,
}

/// Runs the node-local part of event `ev` at virtual time `t` (µs) on
/// `node`: the engine and the sync agent, nothing shared.
/// `f` on every node with its own input, on the worker pool when there is
/// one: a node's state is only touched by one thread at a time, and the
/// results come back in node order whatever order the work finished in.
fn on_each_node<I: Send, T: Send>(
    pool: Option<&rayon::ThreadPool>,
    nodes: &mut [Node],
    inputs: Vec<I>,
    f: impl Fn(&mut Node, I) -> T + Sync,
) -> Vec<T> {
    match pool {
        Some(pool) => pool.install(|| {
            nodes
                .par_iter_mut()
                .zip(inputs.into_par_iter())
                .map(|(node, input)| f(node, input))
                .collect()
        }),
        None => nodes
            .iter_mut()
            .zip(inputs)
            .map(|(node, input)| f(node, input))
            .collect(),
    }
}

fn run_local(node: &mut Node, ctx: &Ctx<'_>, t: u64, ev: &mut Ev) -> LocalOut {
    let now = t / 1000;
    let t0 = Instant::now();
    let (local, what) = match ev {
        // An offline node does nothing (its agent's actions wait until it
        // is back: acking a publish nobody received would lose it).
        Ev::Tick(_) if !node.online => (Local::Done(vec![]), None),
        Ev::SyncNow(_) if !node.online => (Local::Done(vec![]), None),
        Ev::Tick(_) => {
            let outs = node.p.tick(now);
            absorb_local(node, ctx, outs, now);
            node.sync.handle_timeout(&node.p, now);
            (Local::Done(collect(node)), Some("tick"))
        }
        Ev::SyncNow(_) => {
            node.sync.sync_all(&node.p, now);
            (Local::Done(collect(node)), None)
        }
        Ev::Gossip {
            from,
            to,
            id,
            bytes,
            lobby,
        } => {
            if !ctx.net.reachable(*from, *to) {
                (Local::GossipUnreachable, None)
            } else {
                node.bytes_recv += bytes.len() as u64;
                if !node.seen.insert(*id, now, ctx.cache_ms) {
                    (Local::GossipRedundant, None)
                } else {
                    let r = node.p.handle_incoming(bytes);
                    // gossipsub validates before it forwards
                    // (`validate_messages`), by the engine's relay rule,
                    // as the node does.
                    let forward = mmls_core::relay(&r, *lobby) == Relay::Forward;
                    let (seen, error) = match r {
                        Ok(outs) => {
                            absorb_local(node, ctx, outs, now);
                            (true, None)
                        }
                        Err(e) if e.is_duplicate() => (true, None),
                        Err(e) => (false, Some(e)),
                    };
                    if seen && *lobby {
                        // The KeyPackage relay, as the node's driver feeds it.
                        node.sync.lobby_envelope(bytes, Some(from), now);
                    }
                    let actions = collect(node);
                    (
                        Local::Gossip {
                            forward,
                            error,
                            actions,
                        },
                        Some("handle_incoming"),
                    )
                }
            }
        }
        Ev::SyncReq { to, from, msg, .. } => {
            if !ctx.net.reachable(*from, *to) {
                (Local::Answered(None), None)
            } else {
                // The merge needs the request's addresses, not its body.
                let msg = std::mem::replace(msg, SyncMessage::Summary(Vec::new()));
                let answer = node.sync.handle_request(&mut node.p, from, msg, now);
                let actions = collect(node);
                (
                    Local::Answered(Some((answer, actions))),
                    Some("sync request"),
                )
            }
        }
        Ev::SyncResp {
            to,
            from,
            inc,
            id,
            msg,
        } => {
            if !ctx.net.reachable(*from, *to) || node.lost_at.len() != *inc {
                (Local::Responded(None), None)
            } else {
                let fetched = match msg {
                    SyncMessage::Fetched(resp) => resp.envelopes.len() as u64,
                    _ => 0,
                };
                // An unknown id is a request the agent gave up on (timed out).
                let msg = std::mem::replace(msg, SyncMessage::Summary(Vec::new()));
                let _ = node.sync.handle_response(&mut node.p, *id, msg, now);
                let actions = collect(node);
                (
                    Local::Responded(Some((fetched, actions))),
                    Some("sync response"),
                )
            }
        }
        _ => (Local::Deferred, None),
    };
    LocalOut {
        local,
        prof: what.map(|w| (w, t0.elapsed().as_secs_f64())),
    }
}

/// Whether `MMLS_SIM_WATCH` names member `x`.
fn watched(x: usize) -> bool {
    std::env::var("MMLS_SIM_WATCH").is_ok_and(|l| {
        l.split(',')
            .any(|w| w.trim().parse::<usize>().is_ok_and(|w| w == x))
    })
}

/// An engine error caused by a PSK the commit imports and the store does
/// not hold (openmls's `PskError`): counted on its own because the
/// rejection map truncates reasons, and because with no state lost it must
/// never happen (an exported PSK deleted while a peer still needs it).
fn names_a_psk(error: &str) -> bool {
    error.contains("PskError") || error.contains("PskNotHeld")
}

/// A rejection reason with its numbers and ids masked, so that reasons of
/// one kind count together (and do not depend on random group ids).
fn reason_kind(reason: &str) -> String {
    let mut out = String::new();
    let mut in_num = false;
    for c in reason.chars().take(120) {
        if c.is_ascii_hexdigit() && (c.is_ascii_digit() || in_num) {
            if !in_num {
                out.push('#');
            }
            in_num = true;
        } else {
            in_num = false;
            out.push(c);
        }
    }
    out
}

enum Class {
    Expected,
    /// Expected in the recipient's incarnation after a state loss: only a
    /// delivery at or after `since_ms` counts.
    ExpectedAgain {
        since_ms: u64,
    },
    /// The recipient lost its state, and the sender too: nobody can re-send.
    LostWithSender,
    Optional,
    Forbidden,
}

/// Runs a scenario.
pub fn run(sc: Scenario, opts: &RunOptions) -> Result<SimOutput> {
    let name = sc.name.clone();
    Sim::new(sc, opts)
        .and_then(Sim::run)
        .with_context(|| format!("scenario {name}"))
}
