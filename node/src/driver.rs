//! The event loop: one task owns the engine (`Participant`) and the swarm,
//! and turns swarm events, API commands and timer ticks into engine calls,
//! and engine outputs into gossip publishes, sync requests and events.
//!
//! Nothing here blocks on the network: every reply from a peer is a later
//! swarm event, so the loop stays responsive while requests are in flight.
//! Everything that a peer can make us hold is bounded (publish queue, fetches
//! in flight, per-peer token buckets, KeyPackage cache, request sizes).

use crate::config::Config;
use crate::error::NodeError;
use crate::liveness::Liveness;
use crate::redial::{Redial, Target};
use crate::swarm::{lobby_topic, topic_of, universe_topic, Behaviour, BehaviourEvent};
use libp2p::futures::StreamExt;
use libp2p::gossipsub::{self, MessageAcceptance, PublishError, TopicHash};
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{core::ConnectedPoint, identify, mdns, ping, Multiaddr, PeerId, Swarm};
use mmls_core::sync::{SyncMessage, MAX_FETCH_ENVELOPES};
use mmls_core::{
    Delivered, Envelope, Event, ExportReport, FetchRequest, FetchResponse, Id32, ImportReport,
    Kind, MemberId, MmlsError, Output, Participant, Profile, Publish, Relay, SyncSummary,
    UniverseStatus,
};
use serde_bytes::ByteBuf;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, watch};

/// A job run on the driver task with exclusive access to it (the API
/// handle's commands: each one replies through a oneshot it captured).
pub(crate) type Command = Box<dyn FnOnce(&mut Driver) + Send>;

/// Sync requests we wait for at most (more are dropped; the engine asks
/// again after its retry delay).
const MAX_OUTSTANDING: usize = 1024;
/// KeyPackages of others we keep to hand to newly connected peers.
const KP_CACHE: usize = 256;
/// Summaries we look at from one peer's answer.
const MAX_SUMMARIES: usize = 1024;
/// How often we ask for the Welcomes of a universe we are not in.
const WELCOME_ASK_EVERY: Duration = Duration::from_secs(30);
/// How often we ask for one member's KeyPackage.
const KP_ASK_EVERY: Duration = Duration::from_secs(1);
/// Non-stream gossip (announcements, requests) waits this long at most.
const LOBBY_QUEUE_TTL: Duration = Duration::from_secs(60);

/// Wall-clock milliseconds: the engine's time.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    /// Addresses of our connections to it, then the addresses it listens on
    /// (from identify).
    pub addrs: Vec<Multiaddr>,
}

/// The node's state, for `status()`.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub member: MemberId,
    pub peer_id: PeerId,
    pub name: String,
    pub listen_addrs: Vec<Multiaddr>,
    pub peers: Vec<PeerInfo>,
    pub universes: Vec<UniverseStatus>,
    pub store_bytes: u64,
    /// Rejected by the engine (since the store was created) plus refused by
    /// this node (rate limits, malformed sync, since start).
    pub rejected_inputs: u64,
    pub queued_publishes: usize,
}

#[derive(Default)]
pub(crate) struct PeerState {
    conn_addrs: BTreeSet<Multiaddr>,
    listen_addrs: Vec<Multiaddr>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(burst: f64) -> Bucket {
        Bucket {
            tokens: burst,
            last: Instant::now(),
        }
    }
    fn take(&mut self, rate: f64, burst: f64) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Buckets {
    sync: Bucket,
    gossip: Bucket,
}

enum Outstanding {
    Summary,
    Push,
    Fetch {
        req: FetchRequest,
        tried: Vec<PeerId>,
        /// An engine fetch (any peer may answer) rather than one planned
        /// from this peer's summary.
        roaming: bool,
    },
}

struct Queued {
    publish: Publish,
    since: Instant,
}

enum PublishFailure {
    /// No subscribed peer (yet): keep and retry.
    Retry,
    /// Will never succeed.
    Fatal(PublishError),
}

pub(crate) struct Driver {
    pub(crate) swarm: Swarm<Behaviour>,
    pub(crate) p: Participant,
    pub(crate) cfg: Config,
    pub(crate) name: String,
    pub(crate) me: MemberId,
    peer_id: PeerId,
    events: broadcast::Sender<Event>,
    listen_addrs: Vec<Multiaddr>,
    listeners_ready: watch::Sender<usize>,
    subscribed: HashSet<TopicHash>,
    lobby: TopicHash,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    requests: HashMap<OutboundRequestId, Outstanding>,
    inflight: Vec<FetchRequest>,
    rr: usize,
    pub(crate) peers: BTreeMap<PeerId, PeerState>,
    buckets: HashMap<PeerId, Buckets>,
    redial: Redial,
    liveness: Liveness,
    blocked: HashSet<PeerId>,
    kp_cache: VecDeque<(String, Vec<u8>)>,
    kp_seen: HashSet<[u8; 32]>,
    kp_asked: HashMap<String, Instant>,
    welcome_asked: HashMap<Id32, Instant>,
    node_rejected: u64,
    /// Names, own-send index, receipts and last-seen (`views.rs`).
    pub(crate) ux: crate::views::Ux,
    pub(crate) stop: bool,
}

pub(crate) struct DriverParts {
    pub swarm: Swarm<Behaviour>,
    pub participant: Participant,
    pub cfg: Config,
    pub name: String,
    pub events: broadcast::Sender<Event>,
    pub listeners_ready: watch::Sender<usize>,
    pub ux: crate::views::Ux,
}

impl Driver {
    pub(crate) fn new(parts: DriverParts) -> Driver {
        let me = parts.participant.me().clone();
        let peer_id = *parts.swarm.local_peer_id();
        let t = parts.cfg.timing.clone();
        let redial = Redial::new(
            parts.cfg.peers.clone(),
            t.redial_interval,
            t.forget_after,
            t.dial_timeout,
        );
        Driver {
            swarm: parts.swarm,
            p: parts.participant,
            cfg: parts.cfg,
            name: parts.name,
            me,
            peer_id,
            events: parts.events,
            listen_addrs: vec![],
            listeners_ready: parts.listeners_ready,
            subscribed: HashSet::new(),
            lobby: lobby_topic().hash(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            requests: HashMap::new(),
            inflight: vec![],
            rr: 0,
            peers: BTreeMap::new(),
            buckets: HashMap::new(),
            redial,
            liveness: Liveness::new(t.ping_interval, t.ping_timeout),
            blocked: HashSet::new(),
            kp_cache: VecDeque::new(),
            kp_seen: HashSet::new(),
            kp_asked: HashMap::new(),
            welcome_asked: HashMap::new(),
            node_rejected: 0,
            ux: parts.ux,
            stop: false,
        }
    }

    /// Runs until a shutdown command (or until every handle is gone).
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>, startup: Vec<Output>) {
        let lobby = lobby_topic();
        if let Err(e) = self.swarm.behaviour_mut().gossipsub.subscribe(&lobby) {
            tracing::error!(error = %e, "cannot subscribe to the lobby topic");
        }
        self.subscribed.insert(lobby.hash());
        self.sync_subscriptions();
        // The outbox of a previous run and our announcement: queued until a
        // peer subscribes.
        self.handle_outputs(startup, None);
        self.redial();
        let t = self.cfg.timing.clone();
        let mut tick = tokio::time::interval(t.tick);
        let mut sync = tokio::time::interval(t.sync_interval);
        let mut redial = tokio::time::interval(t.redial_interval);
        let mut republish = tokio::time::interval(t.republish_interval);
        for i in [&mut tick, &mut sync, &mut redial, &mut republish] {
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        tracing::info!(member = %self.me, "node running");
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                cmd = commands.recv() => match cmd {
                    Some(job) => job(&mut self),
                    None => break,
                },
                _ = tick.tick() => {
                    let outs = self.p.tick(now_ms());
                    self.handle_outputs(outs, None);
                    self.flush_announcements();
                }
                _ = sync.tick() => self.sync_all(),
                _ = redial.tick() => {
                    self.close_dead();
                    self.redial();
                }
                _ = republish.tick() => {
                    self.retry_queue();
                    self.gc();
                }
            }
            if self.stop {
                break;
            }
        }
        // Persist the last publish acknowledgements.
        let outs = self.p.tick(now_ms());
        for o in outs {
            if let Output::Event(e) = o {
                let _ = self.events.send(e);
            }
        }
        tracing::info!(member = %self.me, "node stopped");
    }

    // ------------------------------------------------------------ outputs --

    pub(crate) fn handle_outputs_pub(&mut self, outs: Vec<Output>) {
        self.handle_outputs(outs, None);
    }

    fn handle_outputs(&mut self, outs: Vec<Output>, prefer: Option<PeerId>) {
        for o in outs {
            match o {
                Output::Publish(p) => self.publish(p),
                Output::Event(e) => self.emit(e),
                Output::Fetch(r) => self.fetch(r, prefer),
            }
        }
        self.sync_subscriptions();
    }

    fn emit(&mut self, e: Event) {
        if !self.observe(&e) {
            return;
        }
        match &e {
            Event::Message(d) => {
                tracing::debug!(universe = %d.universe.short(), sender = %d.sender.short(), seq = d.seq, "message delivered")
            }
            Event::Committed {
                universe,
                epoch,
                imports,
                path,
            } => tracing::debug!(universe = %universe.short(), epoch, imports, path, "own commit"),
            Event::Rejected {
                universe,
                group,
                seq,
                reason,
            } => {
                tracing::warn!(universe = %universe.short(), group = %group.short(), seq, %reason, "stream entry rejected")
            }
            Event::Equivocation {
                universe,
                owner,
                group,
                epoch,
            } => {
                tracing::warn!(universe = %universe.short(), owner = %owner, group = %group.short(), epoch, "EQUIVOCATION detected")
            }
            other => tracing::info!(event = ?other, "event"),
        }
        let _ = self.events.send(e);
    }

    /// Subscribes to the topic of every universe the engine knows.
    fn sync_subscriptions(&mut self) {
        for u in self.p.universes() {
            let t = universe_topic(&u);
            if self.subscribed.contains(&t.hash()) {
                continue;
            }
            match self.swarm.behaviour_mut().gossipsub.subscribe(&t) {
                Ok(_) => {
                    tracing::debug!(universe = %u.short(), "subscribed");
                    self.subscribed.insert(t.hash());
                }
                Err(e) => tracing::warn!(universe = %u.short(), error = %e, "subscribe failed"),
            }
        }
    }

    fn try_publish(&mut self, p: &Publish) -> Result<(), PublishFailure> {
        let topic = topic_of(&p.topic);
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic, p.bytes.clone())
        {
            // Duplicate: these very bytes went out within the duplicate
            // window (or reached us from a peer): they are on the network.
            Ok(_) | Err(PublishError::Duplicate) => Ok(()),
            Err(PublishError::NoPeersSubscribedToTopic) | Err(PublishError::AllQueuesFull(_)) => {
                Err(PublishFailure::Retry)
            }
            Err(e) => Err(PublishFailure::Fatal(e)),
        }
    }

    fn publish(&mut self, p: Publish) {
        // Keep gossip order per topic: behind queued entries, queue too.
        let behind = self.queue.iter().any(|q| q.publish.topic == p.topic);
        if behind {
            self.enqueue(p);
            return;
        }
        match self.try_publish(&p) {
            Ok(()) => self.ack(&p),
            Err(PublishFailure::Retry) => self.enqueue(p),
            Err(PublishFailure::Fatal(e)) => self.publish_failed(&p, e),
        }
    }

    fn publish_failed(&mut self, p: &Publish, e: PublishError) {
        tracing::warn!(error = %e, bytes = p.bytes.len(), "cannot gossip an envelope; peers can still fetch own stream entries by sync");
        self.ack(p);
    }

    fn ack(&mut self, p: &Publish) {
        if let Some(id) = p.outbox_id {
            self.p.ack_published(&[id]);
        }
    }

    fn enqueue(&mut self, p: Publish) {
        let lim = &self.cfg.limits;
        if self.queue.len() >= lim.max_queued_publishes
            || self.queued_bytes + p.bytes.len() > lim.max_queued_bytes
        {
            if let Some(i) = self
                .queue
                .iter()
                .position(|q| q.publish.outbox_id.is_none())
            {
                if let Some(q) = self.queue.remove(i) {
                    self.queued_bytes -= q.publish.bytes.len();
                }
            } else {
                // Own stream entries stay in the durable outbox (published
                // again at the next start) and in the log peers fetch from.
                tracing::warn!(
                    queued = self.queue.len(),
                    "publish queue full: entry left to sync"
                );
                return;
            }
        }
        self.queued_bytes += p.bytes.len();
        self.queue.push_back(Queued {
            publish: p,
            since: Instant::now(),
        });
    }

    /// Publishes what waits for subscribers, in order, per topic.
    fn retry_queue(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let mut stuck: Vec<mmls_core::Topic> = vec![];
        let n = self.queue.len();
        for _ in 0..n {
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            let expired = q.publish.outbox_id.is_none() && q.since.elapsed() > LOBBY_QUEUE_TTL;
            if expired {
                self.queued_bytes -= q.publish.bytes.len();
                continue;
            }
            if stuck.contains(&q.publish.topic) {
                self.queue.push_back(q);
                continue;
            }
            match self.try_publish(&q.publish) {
                Ok(()) => {
                    self.queued_bytes -= q.publish.bytes.len();
                    self.ack(&q.publish);
                }
                Err(PublishFailure::Retry) => {
                    stuck.push(q.publish.topic);
                    self.queue.push_back(q);
                }
                Err(PublishFailure::Fatal(e)) => {
                    self.queued_bytes -= q.publish.bytes.len();
                    self.publish_failed(&q.publish, e);
                }
            }
        }
    }

    // -------------------------------------------------------------- sync --

    fn connected(&self) -> Vec<PeerId> {
        self.peers.keys().copied().collect()
    }

    fn next_peer(&mut self, tried: &[PeerId]) -> Option<PeerId> {
        let cands: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|p| !tried.contains(p))
            .copied()
            .collect();
        if cands.is_empty() {
            return None;
        }
        self.rr = self.rr.wrapping_add(1);
        Some(cands[self.rr % cands.len()])
    }

    fn request(&mut self, peer: PeerId, msg: SyncMessage, what: Outstanding) -> bool {
        if self.requests.len() >= MAX_OUTSTANDING {
            tracing::debug!("too many sync requests in flight; dropping one");
            return false;
        }
        let id = self.swarm.behaviour_mut().sync.send_request(&peer, msg);
        self.requests.insert(id, what);
        true
    }

    /// Sends a fetch to `prefer` (a peer whose summary shows it has what we
    /// need), or round robin to a connected peer.
    fn fetch(&mut self, req: FetchRequest, prefer: Option<PeerId>) {
        if self.inflight.contains(&req) {
            return;
        }
        let roaming = prefer.is_none_or(|p| !self.peers.contains_key(&p));
        let peer = match prefer.filter(|p| self.peers.contains_key(p)) {
            Some(p) => p,
            None => match self.next_peer(&[]) {
                Some(p) => p,
                None => return,
            },
        };
        self.send_fetch(peer, req, vec![peer], roaming);
    }

    fn send_fetch(&mut self, peer: PeerId, req: FetchRequest, tried: Vec<PeerId>, roaming: bool) {
        tracing::trace!(%peer, ?req, roaming, "fetch");
        let msg = SyncMessage::Fetch(req.clone());
        let sent = self.request(
            peer,
            msg,
            Outstanding::Fetch {
                req: req.clone(),
                tried,
                roaming,
            },
        );
        if sent {
            self.inflight.push(req);
        }
    }

    fn send_summary(&mut self, peer: PeerId) {
        let s = self.p.summaries();
        self.request(peer, SyncMessage::Summary(s), Outstanding::Summary);
    }

    fn sync_all(&mut self) {
        for p in self.connected() {
            self.send_summary(p);
        }
    }

    /// What to fetch from `peer`, given its summaries.
    fn plan_from(&mut self, peer: PeerId, theirs: &[SyncSummary]) {
        self.note_heads(peer, theirs);
        let known: HashSet<Id32> = self.p.universes().into_iter().collect();
        for s in theirs.iter().take(MAX_SUMMARIES) {
            if known.contains(&s.universe) {
                for r in self.p.plan_fetches(s) {
                    self.fetch(r, Some(peer));
                }
            } else {
                // A universe we are not in may hold a Welcome for us that we
                // missed on the lobby (offline when it was sent).
                let due = self
                    .welcome_asked
                    .get(&s.universe)
                    .is_none_or(|t| t.elapsed() >= WELCOME_ASK_EVERY);
                if due {
                    self.welcome_asked.insert(s.universe, Instant::now());
                    let req = FetchRequest::Welcomes {
                        universe: s.universe,
                        member: self.me.clone(),
                    };
                    self.fetch(req, Some(peer));
                }
            }
        }
    }

    /// Hands our KeyPackage and the others we know to a new peer directly,
    /// as a push (a `Fetched` sent as a request): gossip cannot re-send
    /// identical bytes inside its duplicate window.
    fn push_key_packages(&mut self, peer: PeerId) {
        let mut envelopes = vec![];
        if let Output::Publish(p) = self.p.announcement() {
            envelopes.push(ByteBuf::from(p.bytes));
        }
        for (_, kp) in self.kp_cache.iter().rev().take(MAX_FETCH_ENVELOPES - 1) {
            envelopes.push(ByteBuf::from(kp.clone()));
        }
        let msg = SyncMessage::Fetched(FetchResponse {
            envelopes,
            ..FetchResponse::default()
        });
        self.request(peer, msg, Outstanding::Push);
    }

    /// Looks at an accepted lobby envelope: keeps others' KeyPackages (to
    /// hand to new peers), and answers a request for a KeyPackage we hold by
    /// pushing it to the neighbour that relayed the request (the addressee's
    /// own answer cannot be re-gossiped inside the duplicate window).
    fn on_lobby_envelope(&mut self, bytes: &[u8], from: Option<PeerId>) {
        let Ok(env) = Envelope::decode(bytes) else {
            return;
        };
        match env.kind {
            Kind::KeyPackage => {
                let Some(sender) = env.sender else { return };
                if sender == self.me.as_str() || !self.kp_seen.insert(Envelope::id_of(bytes)) {
                    return;
                }
                self.kp_cache.push_back((sender, bytes.to_vec()));
                if self.kp_cache.len() > KP_CACHE {
                    if let Some((_, old)) = self.kp_cache.pop_front() {
                        self.kp_seen.remove(&Envelope::id_of(&old));
                    }
                }
            }
            Kind::KeyPackageRequest => {
                let (Some(to), Some(peer)) = (env.to, from) else {
                    return;
                };
                if to == self.me.as_str() {
                    return;
                }
                let kp = self
                    .kp_cache
                    .iter()
                    .rev()
                    .find(|(s, _)| *s == to)
                    .map(|(_, b)| ByteBuf::from(b.clone()));
                if let Some(kp) = kp {
                    let msg = SyncMessage::Fetched(FetchResponse {
                        envelopes: vec![kp],
                        ..FetchResponse::default()
                    });
                    self.request(peer, msg, Outstanding::Push);
                }
            }
            _ => {}
        }
    }

    /// Answers a fetch from the engine's envelope log (every entry it has
    /// processed, own or not; an unanswerable fetch gets an empty answer).
    fn serve(&self, req: &FetchRequest) -> FetchResponse {
        self.p.serve_fetch(req).unwrap_or_default()
    }

    /// Feeds envelopes a peer pushed to us.
    fn absorb_push(&mut self, resp: FetchResponse) {
        for e in resp.envelopes.iter().take(MAX_FETCH_ENVELOPES) {
            match self.p.handle_incoming(e) {
                Ok(outs) => {
                    self.on_lobby_envelope(e, None);
                    self.handle_outputs(outs, None);
                }
                Err(err) if err.is_duplicate() => {
                    self.on_lobby_envelope(e, None);
                }
                Err(err) => tracing::debug!(error = %err, "pushed envelope rejected"),
            }
        }
    }

    fn on_fetched(
        &mut self,
        peer: PeerId,
        req: FetchRequest,
        resp: FetchResponse,
        mut tried: Vec<PeerId>,
        roaming: bool,
    ) {
        // Nothing useful from this peer (it joined later, or is behind us):
        // another may have it. A pruned history is an answer, though.
        let empty = resp.envelopes.is_empty() && !resp.pruned && !resp.more;
        tracing::trace!(%peer, ?req, n = resp.envelopes.len(), more = resp.more, "fetched");
        if empty && roaming {
            if let Some(next) = self.next_peer(&tried) {
                tried.push(next);
                self.send_fetch(next, req, tried, true);
                return;
            }
        }
        let welcomes = matches!(req, FetchRequest::Welcomes { .. }) && !resp.envelopes.is_empty();
        let outs = self.p.handle_fetch_response(&req, resp);
        self.handle_outputs(outs, Some(peer));
        if welcomes {
            // We may have joined: fetch the rest of the streams now.
            self.send_summary(peer);
        }
    }

    fn sync_token(&mut self, peer: PeerId) -> bool {
        let l = &self.cfg.limits;
        let (rate, burst, gburst) = (l.sync_rate, l.sync_burst, l.gossip_burst);
        self.buckets
            .entry(peer)
            .or_insert_with(|| Buckets {
                sync: Bucket::new(burst),
                gossip: Bucket::new(gburst),
            })
            .sync
            .take(rate, burst)
    }

    fn gossip_token(&mut self, peer: PeerId) -> bool {
        let l = &self.cfg.limits;
        let (rate, burst, sburst) = (l.gossip_rate, l.gossip_burst, l.sync_burst);
        self.buckets
            .entry(peer)
            .or_insert_with(|| Buckets {
                sync: Bucket::new(sburst),
                gossip: Bucket::new(burst),
            })
            .gossip
            .take(rate, burst)
    }

    // ------------------------------------------------------------ events --

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => self.on_gossip(e),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(e)) => self.on_sync(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if let Some(st) = self.peers.get_mut(&peer_id) {
                    st.listen_addrs = info.listen_addrs.into_iter().take(16).collect();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                let now = Instant::now();
                for (peer, addr) in found {
                    tracing::debug!(%peer, %addr, "mDNS: found");
                    self.redial.found(peer, addr, now);
                }
                self.redial();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            })) => match result {
                Ok(_) => self.liveness.pong(connection, Instant::now()),
                // Not dead, only older: never closed for missing pings.
                Err(ping::Failure::Unsupported) => self.liveness.unsupported(connection),
                Err(error) => {
                    tracing::info!(%peer, %error, "ping failed: closing the connection");
                    self.liveness.closed(connection);
                    self.swarm.close_connection(connection);
                }
            },
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let st = self.peers.entry(peer_id).or_default();
                st.conn_addrs.insert(endpoint.get_remote_address().clone());
                self.redial.ended(connection_id);
                self.liveness.opened(connection_id, peer_id, Instant::now());
                let dialled = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => Some(address),
                    ConnectedPoint::Listener { .. } => None,
                };
                self.redial.connected(peer_id, dialled, Instant::now());
                if num_established.get() == 1 {
                    tracing::info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "peer connected");
                    self.push_key_packages(peer_id);
                    let ann = self.p.announcement();
                    self.handle_outputs(vec![ann], None);
                }
                // On every new connection, not only the first: an older one
                // may be dead and not yet noticed (its pings still pending).
                self.send_summary(peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                self.liveness.closed(connection_id);
                if num_established == 0 {
                    tracing::info!(peer = %peer_id, "peer disconnected");
                    self.peers.remove(&peer_id);
                    self.buckets.remove(&peer_id);
                } else if let Some(st) = self.peers.get_mut(&peer_id) {
                    st.conn_addrs.remove(endpoint.get_remote_address());
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if !self.listen_addrs.contains(&address) {
                    self.listen_addrs.push(address);
                }
                self.listeners_ready.send_modify(|n| *n += 1);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| *a != address);
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "listener error");
            }
            SwarmEvent::ListenerClosed { reason, .. } => {
                tracing::debug!(?reason, "listener closed");
                self.listeners_ready.send_modify(|n| *n += 1);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                connection_id,
                error,
            } => {
                self.redial.ended(connection_id);
                tracing::debug!(peer = ?peer_id, %error, "dial failed");
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "incoming connection failed");
            }
            _ => {}
        }
    }

    fn on_gossip(&mut self, e: gossipsub::Event) {
        match e {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                self.liveness.heard(propagation_source, Instant::now());
                if !self.gossip_token(propagation_source) {
                    self.node_rejected += 1;
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            MessageAcceptance::Ignore,
                        );
                    return;
                }
                let lobby = message.topic == self.lobby;
                let r = self.p.handle_incoming(&message.data);
                let verdict = verdict(&r, lobby);
                if let Err(e) = &r {
                    if !e.is_duplicate() {
                        tracing::debug!(peer = %propagation_source, error = %e, ?verdict, "gossip input not accepted");
                    }
                }
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, verdict);
                match r {
                    Ok(outs) => {
                        if lobby {
                            self.on_lobby_envelope(&message.data, Some(propagation_source));
                        }
                        self.handle_outputs(outs, None);
                    }
                    Err(e) if e.is_duplicate() && lobby => {
                        self.on_lobby_envelope(&message.data, Some(propagation_source))
                    }
                    Err(_) => {}
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                tracing::debug!(peer = %peer_id, %topic, "peer subscribed");
                self.retry_queue();
                if topic != self.lobby && self.subscribed.contains(&topic) {
                    // A peer that just joined a universe of ours: catch it
                    // up now rather than at the next sync round.
                    self.send_summary(peer_id);
                }
            }
            gossipsub::Event::SlowPeer { peer_id, .. } => {
                tracing::debug!(peer = %peer_id, "slow gossip peer");
            }
            _ => {}
        }
    }

    fn on_sync(&mut self, e: request_response::Event<SyncMessage, SyncMessage>) {
        if let request_response::Event::Message { peer, .. } = &e {
            self.liveness.heard(*peer, Instant::now());
            self.ux.seen_peer(peer);
        }
        match e {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    if !self.sync_token(peer) {
                        // Over the rate: dropped unanswered (the peer sees a
                        // failed request) and counted.
                        self.node_rejected += 1;
                        tracing::debug!(%peer, "sync request over the rate limit");
                        return;
                    }
                    let resp = match request {
                        SyncMessage::Summary(theirs) => {
                            self.plan_from(peer, &theirs);
                            SyncMessage::Summaries(self.p.summaries())
                        }
                        SyncMessage::Fetch(req) => SyncMessage::Fetched(self.serve(&req)),
                        SyncMessage::Fetched(push) => {
                            self.absorb_push(push);
                            SyncMessage::Fetched(FetchResponse::default())
                        }
                        SyncMessage::Summaries(theirs) => {
                            self.plan_from(peer, &theirs);
                            SyncMessage::Summaries(vec![])
                        }
                    };
                    let _ = self.swarm.behaviour_mut().sync.send_response(channel, resp);
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => match (self.requests.remove(&request_id), response) {
                    (Some(Outstanding::Summary), SyncMessage::Summaries(s)) => {
                        self.plan_from(peer, &s)
                    }
                    (
                        Some(Outstanding::Fetch {
                            req,
                            tried,
                            roaming,
                        }),
                        SyncMessage::Fetched(resp),
                    ) => {
                        self.inflight.retain(|r| *r != req);
                        self.on_fetched(peer, req, resp, tried, roaming);
                    }
                    (Some(Outstanding::Fetch { req, .. }), _) => {
                        self.inflight.retain(|r| *r != req);
                        self.node_rejected += 1;
                    }
                    (Some(Outstanding::Push), _) | (None, _) => {}
                    (Some(Outstanding::Summary), _) => self.node_rejected += 1,
                },
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, %error, "sync request failed");
                if let Some(Outstanding::Fetch {
                    req,
                    mut tried,
                    roaming,
                }) = self.requests.remove(&request_id)
                {
                    self.inflight.retain(|r| *r != req);
                    if roaming {
                        if let Some(next) = self.next_peer(&tried) {
                            tried.push(next);
                            self.send_fetch(next, req, tried, true);
                        }
                    }
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound sync request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    // ----------------------------------------------------------- dialling --

    /// Closes the connections whose pings went unanswered (see
    /// [`Liveness`]): over a dead link the close is local and immediate, and
    /// the peer is re-dialled from then on.
    fn close_dead(&mut self) {
        for (c, peer) in self.liveness.dead(Instant::now()) {
            tracing::info!(%peer, connection = %c, "no answer to pings: closing the connection");
            self.swarm.close_connection(c);
        }
    }

    /// Dials the known peers that are not connected and are due (see
    /// [`Redial`]: one dial per peer per `redial_interval`).
    fn redial(&mut self) {
        let (peers, blocked, me) = (&self.peers, &self.blocked, self.peer_id);
        let due = self.redial.due(Instant::now(), |p| {
            peers.contains_key(p) || blocked.contains(p) || *p == me
        });
        for d in due {
            let opts = match &d.target {
                Target::Peer(p) => DialOpts::peer_id(*p)
                    .addresses(d.addrs.clone())
                    // Dials may overlap: one started while the link was
                    // down must not hold up the next.
                    .condition(PeerCondition::Disconnected)
                    .build(),
                Target::Addr(a) => DialOpts::unknown_peer_id().address(a.clone()).build(),
            };
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => self.redial.started(d.target, id, Instant::now()),
                Err(e) => tracing::debug!(target = ?d.target, error = %e, "dial refused"),
            }
        }
    }

    /// Forgets rate state and request bookkeeping that cannot matter anymore.
    fn gc(&mut self) {
        self.kp_asked
            .retain(|_, t| t.elapsed() < Duration::from_secs(60));
        self.welcome_asked
            .retain(|_, t| t.elapsed() < WELCOME_ASK_EVERY * 2);
        let peers = &self.peers;
        self.buckets.retain(|p, _| peers.contains_key(p));
    }

    /// Asks the lobby for a member's KeyPackage. The engine's own request
    /// from `create_universe` does not reach us (it is dropped with the
    /// error), so the node sends one itself.
    fn ask_key_package(&mut self, member: &str) {
        if self
            .kp_asked
            .get(member)
            .is_some_and(|t| t.elapsed() < KP_ASK_EVERY)
        {
            return;
        }
        self.kp_asked.insert(member.to_string(), Instant::now());
        let mut e = Envelope::new(Kind::KeyPackageRequest, vec![]);
        e.sender = Some(self.me.to_string());
        e.to = Some(member.to_string());
        self.publish(Publish {
            topic: mmls_core::Topic::Lobby,
            bytes: e.encode(),
            outbox_id: None,
        });
    }

    fn engine<T>(&mut self, r: Result<(T, Vec<Output>), MmlsError>) -> Result<T, NodeError> {
        match r {
            Ok((v, outs)) => {
                self.handle_outputs(outs, None);
                Ok(v)
            }
            Err(e) => {
                if let MmlsError::MissingKeyPackage(m) = &e {
                    let m = m.clone();
                    self.ask_key_package(&m);
                }
                Err(e.into())
            }
        }
    }

    // ---------------------------------------------------------- commands --

    pub(crate) fn cmd_listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen_addrs.clone()
    }

    pub(crate) fn cmd_dial(&mut self, addr: Multiaddr) -> Result<(), NodeError> {
        self.redial.add_static(addr.clone());
        if let Some(p) = crate::redial::peer_in(&addr) {
            if self.peers.contains_key(&p) {
                return Ok(());
            }
        }
        self.swarm
            .dial(addr)
            .map_err(|e| NodeError::Network(e.to_string()))
    }

    pub(crate) fn cmd_create_universe(
        &mut self,
        name: &str,
        members: &[MemberId],
        admins: &[MemberId],
        profile: Profile,
    ) -> Result<Id32, NodeError> {
        let r = self.p.create_universe(name, members, admins, profile);
        let u = self.engine(r)?;
        self.queue_announcement(u);
        self.flush_announcements();
        Ok(u)
    }

    pub(crate) fn cmd_add_member(&mut self, u: &Id32, m: &MemberId) -> Result<(), NodeError> {
        let r = self.p.add_member(u, m).map(|o| ((), o));
        self.engine(r)
    }

    pub(crate) fn cmd_remove_member(&mut self, u: &Id32, m: &MemberId) -> Result<(), NodeError> {
        let r = self.p.remove_member(u, m).map(|o| ((), o));
        self.engine(r)
    }

    pub(crate) fn cmd_send(&mut self, u: &Id32, body: &[u8]) -> Result<u64, NodeError> {
        let r = self.p.send(u, body);
        let seq = self.engine(r)?;
        self.sent(u, seq, body);
        Ok(seq)
    }

    pub(crate) fn cmd_update(&mut self, u: &Id32) -> Result<(), NodeError> {
        let r = self.p.update(u).map(|o| ((), o));
        self.engine(r)
    }

    /// Rejoin the stale groups of a universe we know; or, for a universe
    /// this store does not know (state lost, fresh store, same identity),
    /// ask every owner to re-add us.
    pub(crate) fn cmd_rejoin(&mut self, u: &Id32) -> Result<(), NodeError> {
        let r = if self.p.universes().contains(u) {
            self.p.request_rejoin(u)
        } else {
            self.p.recover_universe(u)
        };
        let r = r.map(|o| ((), o));
        self.engine(r)
    }

    /// Sneakernet: a bundle file of `u` (an introduction when None).
    pub(crate) fn cmd_bundle_export(
        &self,
        u: Option<&Id32>,
        since: Option<&MemberId>,
    ) -> Result<(Vec<u8>, ExportReport), NodeError> {
        Ok(mmls_core::bundle::export_file(&self.p, u, since)?)
    }

    /// Feeds a bundle file to the engine; its outputs go where a fetch
    /// answer's go (publishes, events, fetches).
    pub(crate) fn cmd_bundle_import(&mut self, bytes: &[u8]) -> Result<ImportReport, NodeError> {
        let (r, outs) = mmls_core::bundle::import(&mut self.p, bytes)?;
        self.handle_outputs(outs, None);
        Ok(r)
    }

    /// Delivered texts after `after`, at most `limit`; the node's own
    /// control texts (name announcements) are skipped, not counted.
    pub(crate) fn cmd_messages(
        &self,
        u: &Id32,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Delivered>, NodeError> {
        if !self.p.universes().contains(u) {
            return Err(MmlsError::UnknownUniverse(*u).into());
        }
        let mut out = vec![];
        let mut cursor = after;
        while out.len() < limit {
            let want = limit - out.len();
            let page = self.p.messages(u, cursor, want)?;
            let n = page.len();
            if let Some(last) = page.last() {
                cursor = Some(last.cursor);
            }
            out.extend(
                page.into_iter()
                    .filter(|d| !crate::names::is_control(&d.body)),
            );
            if n < want {
                break;
            }
        }
        Ok(out)
    }

    pub(crate) fn cmd_universe_status(&mut self, u: &Id32) -> Result<UniverseStatus, NodeError> {
        Ok(self.p.status(u)?)
    }

    pub(crate) fn cmd_universes(&mut self) -> Vec<UniverseStatus> {
        self.p
            .universes()
            .iter()
            .filter_map(|u| self.p.status(u).ok())
            .collect()
    }

    pub(crate) fn cmd_peers(&self) -> Vec<PeerInfo> {
        self.peers
            .iter()
            .map(|(id, st)| {
                let mut addrs: Vec<Multiaddr> = st.conn_addrs.iter().cloned().collect();
                for a in &st.listen_addrs {
                    if !addrs.contains(a) {
                        addrs.push(a.clone());
                    }
                }
                PeerInfo {
                    peer_id: *id,
                    addrs,
                }
            })
            .collect()
    }

    pub(crate) fn cmd_status(&mut self) -> NodeStatus {
        NodeStatus {
            member: self.me.clone(),
            peer_id: self.peer_id,
            name: self.name.clone(),
            listen_addrs: self.listen_addrs.clone(),
            peers: self.cmd_peers(),
            universes: self.cmd_universes(),
            store_bytes: self.p.store().approx_size_bytes(),
            rejected_inputs: self.p.rejected_inputs() + self.node_rejected,
            queued_publishes: self.queue.len(),
        }
    }

    pub(crate) fn cmd_block(&mut self, peer: PeerId) {
        self.blocked.insert(peer);
        self.swarm.behaviour_mut().blocked.block_peer(peer);
    }

    pub(crate) fn cmd_unblock_all(&mut self) {
        for p in std::mem::take(&mut self.blocked) {
            self.swarm.behaviour_mut().blocked.unblock_peer(p);
        }
        self.redial();
    }
}

/// The gossip validation result for an engine result, by the engine's
/// relay rule.
fn verdict<T>(r: &Result<T, MmlsError>, lobby: bool) -> MessageAcceptance {
    match mmls_core::relay(r, lobby) {
        Relay::Forward => MessageAcceptance::Accept,
        Relay::Drop => MessageAcceptance::Ignore,
        Relay::Penalise => MessageAcceptance::Reject,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_limits_bursts_and_refills() {
        let mut b = Bucket::new(5.0);
        let n = (0..100).filter(|_| b.take(1.0, 5.0)).count();
        assert_eq!(n, 5);
        b.last -= Duration::from_secs(2);
        assert!(b.take(1.0, 5.0));
        assert!(b.take(1.0, 5.0));
        assert!(!b.take(1.0, 5.0));
    }

    #[test]
    fn verdicts() {
        let ok: Result<(), MmlsError> = Ok(());
        assert_eq!(verdict(&ok, false), MessageAcceptance::Accept);
        let bad: Result<(), MmlsError> = Err(MmlsError::BadSignature);
        assert_eq!(verdict(&bad, true), MessageAcceptance::Reject);
        let dup: Result<(), MmlsError> = Err(MmlsError::Duplicate {
            group: Id32([0; 32]),
            seq: 1,
        });
        assert_eq!(verdict(&dup, true), MessageAcceptance::Ignore);
    }
}
