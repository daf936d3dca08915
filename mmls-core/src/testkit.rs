//! An in-memory network of participants for tests (the engine's own and the
//! integration tests, through the `testkit` feature): every publish reaches
//! every other live node (in order, or shuffled and duplicated when asked);
//! every live node is connected to every other, and each runs the same
//! [`SyncAgent`] as the node and the simulator (fetches, retries across
//! peers, Welcome polling, the KeyPackage relay), its requests answered at
//! once. Uses the public API only, so what passes here passes for any
//! driver.

use crate::sync::{Action, FetchRequest, RequestId, SyncAgent, SyncConfig, SyncMessage};
use crate::{
    Config, Delivered, Envelope, Event, Id32, Identity, Kind, MemberId, Output, Participant,
    Profile, Store, Topic,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;

/// The testkit steps sync rounds by hand ([`Net::sync_all`]), so a test
/// says when peers compare summaries, and every round and connection
/// sends in full (the repetition rules have their own tests).
fn manual_rounds() -> SyncConfig {
    SyncConfig {
        round_interval_ms: None,
        quiet_round_ms: 0,
        repeat_push_ms: 0,
        ..SyncConfig::default()
    }
}

pub struct Net {
    pub nodes: Vec<Option<Participant>>,
    pub ids: Vec<Identity>,
    pub stores: Vec<Store>,
    pub queue: VecDeque<(usize, Topic, Vec<u8>)>,
    /// The sync agent of each node.
    pub agents: Vec<SyncAgent<usize>>,
    /// Sync requests in flight: (from, to, id, message).
    pub requests: VecDeque<(usize, usize, RequestId, SyncMessage)>,
    pub now: u64,
    pub delivered: Vec<Vec<Delivered>>,
    pub events: Vec<Vec<Event>>,
    /// Errors other than duplicates, per receiving node.
    pub rejections: Vec<Vec<String>>,
    pub rng: ChaCha8Rng,
    pub shuffle: bool,
    pub dup_prob: f64,
    /// Nodes that receive nothing (offline).
    pub offline: Vec<bool>,
    /// Every envelope any node published, in order.
    pub all_bytes: Vec<Vec<u8>>,
    pub config: Config,
}

/// The engine tests' configuration: commit imports at once.
/// A test knob from the environment (`MMLS_FUZZ_CASES`, `MMLS_FUZZ_SEED`,
/// ...), else `default`: CI runs the default, long runs set the variable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

pub fn config() -> Config {
    Config {
        commit_delay_ms: 0,
        ..Config::default()
    }
}

/// The deterministic identity of node `i`.
pub fn identity(i: usize) -> Identity {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    Identity::from_seed(seed)
}

impl Net {
    pub fn new(n: usize) -> Net {
        Net::with_config(n, config())
    }

    pub fn with_config(n: usize, cfg: Config) -> Net {
        Net::with_identities((0..n).map(identity).collect(), cfg, 1_000)
    }

    /// A network of nodes with these identities (e.g. with certificates),
    /// starting at driver time `now` (ms).
    pub fn with_identities(ids: Vec<Identity>, cfg: Config, now: u64) -> Net {
        let cfgs = vec![cfg; ids.len()];
        Net::with_node_configs(ids, cfgs, now)
    }

    /// A network whose node `i` runs with `cfgs[i]` (e.g. preferring other
    /// ciphersuites); `Net::config` is the first one.
    pub fn with_node_configs(ids: Vec<Identity>, cfgs: Vec<Config>, now: u64) -> Net {
        let stores = ids
            .iter()
            .map(|_| Store::in_memory().expect("store"))
            .collect();
        Net::with_stores(ids, cfgs, stores, now)
    }

    /// A network whose node `i` keeps its state in `stores[i]` (e.g. a
    /// file store, for benchmarks and crash tests).
    pub fn with_stores(ids: Vec<Identity>, cfgs: Vec<Config>, stores: Vec<Store>, now: u64) -> Net {
        let n = ids.len();
        assert_eq!(cfgs.len(), n, "one config per node");
        assert_eq!(stores.len(), n, "one store per node");
        let mut net = Net {
            nodes: vec![],
            ids: vec![],
            stores: vec![],
            queue: VecDeque::new(),
            agents: vec![],
            requests: VecDeque::new(),
            now,
            delivered: vec![vec![]; n],
            events: vec![vec![]; n],
            rejections: vec![vec![]; n],
            rng: ChaCha8Rng::seed_from_u64(7),
            shuffle: false,
            dup_prob: 0.0,
            offline: vec![false; n],
            all_bytes: vec![],
            config: cfgs[0].clone(),
        };
        for (i, ((id, cfg), store)) in ids.into_iter().zip(cfgs).zip(stores).enumerate() {
            let (p, outs) =
                Participant::open(id.clone(), store.clone(), cfg, net.now).expect("open");
            net.agents
                .push(SyncAgent::new(id.member_id(), manual_rounds()));
            net.ids.push(id);
            net.stores.push(store);
            net.nodes.push(Some(p));
            net.absorb(i, outs);
        }
        net.run();
        net
    }

    pub fn member(&self, i: usize) -> MemberId {
        self.ids[i].member_id()
    }

    pub fn node(&mut self, i: usize) -> &mut Participant {
        self.nodes[i].as_mut().expect("node is down")
    }

    /// Is node `i` up and online?
    pub fn live(&self, i: usize) -> bool {
        !self.offline[i] && self.nodes[i].is_some()
    }

    /// Takes a node's outputs through its sync agent: publishes go on the
    /// wire (and are acked), events are recorded, fetches become requests.
    pub fn absorb(&mut self, from: usize, outs: Vec<Output>) {
        let now = self.now;
        self.agents[from].handle_outputs(outs, None, now);
        self.drain(from);
    }

    /// Carries out what node `i`'s agent asks for.
    fn drain(&mut self, i: usize) {
        let mut acks = vec![];
        while let Some(a) = self.agents[i].poll_action() {
            match a {
                Action::Publish(p) => {
                    if let Some(id) = p.outbox_id {
                        acks.push(id);
                    }
                    self.all_bytes.push(p.bytes.clone());
                    self.queue.push_back((i, p.topic, p.bytes));
                }
                Action::Event(e) => {
                    if let Event::Message(d) = &e {
                        self.delivered[i].push(d.clone());
                    }
                    self.events[i].push(e);
                }
                Action::Request { peer, id, msg } => self.requests.push_back((i, peer, id, msg)),
            }
        }
        if let Some(p) = self.nodes[i].as_mut() {
            p.ack_published(&acks);
        }
    }

    /// Every live node is connected to every other live node: tells the
    /// agents about links that came up or went down since last time.
    pub fn refresh_links(&mut self) {
        let now = self.now;
        for i in 0..self.nodes.len() {
            let gone: Vec<usize> = self.agents[i]
                .peers()
                .copied()
                .filter(|j| !self.live(i) || !self.live(*j))
                .collect();
            for j in gone {
                self.agents[i].peer_disconnected(&j, now);
            }
            if self.live(i) {
                for j in 0..self.nodes.len() {
                    if j != i && self.live(j) && !self.agents[i].is_connected(&j) {
                        let m = self.member(j);
                        self.agents[i].peer_identified(j, m);
                        if let Some(p) = self.nodes[i].as_ref() {
                            self.agents[i].peer_connected(p, j, now);
                        }
                    }
                }
            }
            self.drain(i);
        }
    }

    /// Delivers one envelope to node `to` as the network would.
    pub fn deliver(&mut self, to: usize, bytes: &[u8]) {
        self.deliver_from(to, None, bytes, true);
    }

    fn deliver_from(&mut self, to: usize, from: Option<usize>, bytes: &[u8], lobby: bool) {
        let r = self.node(to).handle_incoming(bytes);
        let now = self.now;
        match r {
            Ok(outs) => {
                self.absorb(to, outs);
                if lobby {
                    self.agents[to].lobby_envelope(bytes, from.as_ref(), now);
                    self.drain(to);
                }
            }
            Err(e) if e.is_duplicate() => {
                if lobby {
                    self.agents[to].lobby_envelope(bytes, from.as_ref(), now);
                    self.drain(to);
                }
            }
            // Held (a group not known yet): not judged, so not refused.
            Err(crate::MmlsError::Held(_)) => {}
            Err(e) => self.rejections[to].push(e.to_string()),
        }
    }

    /// Carries one sync request to its peer and the answer back.
    fn carry(&mut self, from: usize, to: usize, id: RequestId, msg: SyncMessage) {
        let now = self.now;
        if !self.live(from) || !self.live(to) {
            self.agents[from].handle_failure(id, now);
            self.drain(from);
            return;
        }
        let Some(server) = self.nodes[to].as_mut() else {
            return;
        };
        let answer = self.agents[to].handle_request(server, &from, msg, now);
        self.drain(to);
        let Some(client) = self.nodes[from].as_mut() else {
            return;
        };
        // An unknown id is a request the agent gave up on: nothing to do.
        let _ = self.agents[from].handle_response(client, id, answer, now);
        self.drain(from);
    }

    /// Delivers everything queued (and what that causes) until quiet.
    pub fn run(&mut self) {
        self.refresh_links();
        let mut guard = 0;
        while !self.queue.is_empty() || !self.requests.is_empty() {
            guard += 1;
            assert!(guard < 1_000_000, "network does not settle");
            if self.shuffle && self.queue.len() > 1 {
                let i = self.rng.gen_range(0..self.queue.len());
                self.queue.swap(0, i);
            }
            if let Some((from, topic, bytes)) = self.queue.pop_front() {
                if self.dup_prob > 0.0 && self.rng.gen_bool(self.dup_prob) {
                    self.queue.push_back((from, topic, bytes.clone()));
                }
                for to in 0..self.nodes.len() {
                    if to == from || !self.live(to) {
                        continue;
                    }
                    // Like gossipsub: a universe topic reaches its members only.
                    if let Topic::Universe(u) = topic {
                        if !self.node(to).universes().contains(&u) {
                            continue;
                        }
                    }
                    self.deliver_from(to, Some(from), &bytes, topic == Topic::Lobby);
                }
                continue;
            }
            if let Some((from, to, id, msg)) = self.requests.pop_front() {
                self.carry(from, to, id, msg);
            }
        }
    }

    /// A sync round: every live node sends its summaries to every other
    /// (each side fetches what the other has more of), as the node driver
    /// does periodically.
    pub fn sync_all(&mut self) {
        self.refresh_links();
        let now = self.now;
        for i in 0..self.nodes.len() {
            if !self.live(i) {
                continue;
            }
            if let Some(p) = self.nodes[i].as_ref() {
                self.agents[i].sync_all(p, now);
            }
            self.drain(i);
        }
        self.run();
    }

    /// Advances time by `ms` on every node, then runs the network.
    pub fn tick(&mut self, ms: u64) {
        self.now += ms;
        for i in 0..self.nodes.len() {
            if self.offline[i] || self.nodes[i].is_none() {
                continue;
            }
            let now = self.now;
            let outs = self.node(i).tick(now);
            self.absorb(i, outs);
            if let Some(p) = self.nodes[i].as_ref() {
                self.agents[i].handle_timeout(p, now);
            }
            self.drain(i);
        }
        self.run();
    }

    /// Ticks (with periodic sync) until no node has anything left to do.
    pub fn settle(&mut self) {
        for _ in 0..10 {
            self.tick(1_000);
            self.sync_all();
        }
    }

    /// Node 0 creates a universe with everyone.
    pub fn universe(&mut self, profile: Profile) -> Id32 {
        self.universe_with_suites(profile, crate::ciphersuites::DEFAULT_ACCEPTED)
    }

    /// Node 0 creates a universe with everyone, accepting `suites`.
    pub fn universe_with_suites(&mut self, profile: Profile, suites: &[u16]) -> Id32 {
        let members: Vec<MemberId> = (0..self.nodes.len()).map(|i| self.member(i)).collect();
        let (uid, outs) = self
            .node(0)
            .create_universe_with("test", &members, &[], profile, vec![], suites)
            .expect("create");
        self.absorb(0, outs);
        self.run();
        self.settle();
        uid
    }

    pub fn send(&mut self, i: usize, uid: &Id32, text: &str) -> u64 {
        let (seq, outs) = self.node(i).send(uid, text.as_bytes()).expect("send");
        self.absorb(i, outs);
        seq
    }

    pub fn update(&mut self, i: usize, uid: &Id32) {
        let outs = self.node(i).update(uid).expect("update");
        self.absorb(i, outs);
    }

    /// Every live node's view of every send group agrees (epoch and secrets).
    pub fn assert_consistent(&mut self, uid: &Id32) {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some() && !self.offline[*i])
            .collect();
        let members: Vec<MemberId> = up.iter().map(|i| self.member(*i)).collect();
        for owner in &members {
            let mut seen: Option<(u64, Vec<u8>)> = None;
            for &i in &up {
                let g = self
                    .node(i)
                    .group_of(uid, owner)
                    .unwrap_or_else(|| panic!("node {i} lacks group of {owner:?}"));
                let fp = self.node(i).epoch_fingerprint(&g).expect("fingerprint");
                if let Some(s) = &seen {
                    assert_eq!(s, &fp, "node {i} disagrees on the group of {owner:?}");
                }
                seen = Some(fp);
            }
        }
    }

    pub fn texts(&self, i: usize) -> Vec<String> {
        self.delivered[i]
            .iter()
            .map(|d| String::from_utf8_lossy(&d.body).to_string())
            .collect()
    }

    /// The last published envelope of `kind` (decoded and raw).
    pub fn last_of(&self, kind: Kind) -> Option<(Envelope, Vec<u8>)> {
        self.all_bytes.iter().rev().find_map(|b| {
            Envelope::decode(b)
                .ok()
                .filter(|e| e.kind == kind)
                .map(|e| (e, b.clone()))
        })
    }
}

/// What a rejected input must leave untouched: per group (epoch, next seq),
/// the roster and the delivered log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub groups: Vec<(Id32, u64, u64)>,
    pub roster: Vec<MemberId>,
    pub messages: Vec<(MemberId, u64, Vec<u8>)>,
}

pub fn view(p: &mut Participant, uid: &Id32) -> View {
    let st = p.status(uid).expect("status");
    let messages = p
        .messages(uid, None, usize::MAX)
        .expect("messages")
        .into_iter()
        .map(|d| (d.sender, d.seq, d.body.into_vec()))
        .collect();
    View {
        groups: st
            .groups
            .iter()
            .map(|g| (g.group, g.epoch, g.next_seq))
            .collect(),
        roster: st.roster,
        messages,
    }
}

/// Texts in the delivered log of `p` for `uid` (the durable record).
pub fn logged_texts(p: &Participant, uid: &Id32) -> Vec<String> {
    p.messages(uid, None, usize::MAX)
        .expect("messages")
        .into_iter()
        .map(|d| String::from_utf8_lossy(&d.body).to_string())
        .collect()
}

/// The texts `p` (e.g. a copy of a member's stolen state) decrypts from
/// `wire`, the envelopes as they went out: the check of post-compromise
/// security and of removal.
pub fn texts_read_by(p: &mut Participant, wire: &[Vec<u8>]) -> Vec<String> {
    let mut read = vec![];
    for b in wire {
        for o in p.handle_incoming(b).unwrap_or_default() {
            if let Output::Event(Event::Message(d)) = o {
                read.push(String::from_utf8_lossy(&d.body).to_string());
            }
        }
    }
    read
}

/// Pulls everything `victim` misses from `peers` (read-only), as the
/// driver's periodic sync would, until nothing new comes.
pub fn pull_from(victim: &mut Participant, peers: &[&Participant]) -> Vec<Output> {
    let mut outs = vec![];
    for _round in 0..8 {
        let mut progressed = false;
        let mut pending: Vec<FetchRequest> = vec![];
        for peer in peers {
            for s in peer.summaries() {
                pending.extend(victim.plan_fetches(&s));
            }
        }
        let mut guard = 0;
        while let Some(r) = pending.pop() {
            guard += 1;
            if guard > 10_000 {
                break;
            }
            for peer in peers {
                let Ok(resp) = peer.serve_fetch(&r) else {
                    continue;
                };
                if resp.envelopes.is_empty() {
                    continue;
                }
                progressed = true;
                for o in victim.handle_fetch_response(&r, resp) {
                    match o {
                        Output::Fetch(f) => pending.push(f),
                        o => outs.push(o),
                    }
                }
                break;
            }
        }
        if !progressed {
            break;
        }
    }
    outs
}
