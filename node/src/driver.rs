//! The event loop: one task owns the engine (`Participant`) and the swarm,
//! and turns swarm events, API commands and timer ticks into engine calls,
//! and engine outputs into gossip publishes, sync requests and events.
//!
//! Sync policy (whom to ask, retries, Welcome polling, the KeyPackage relay)
//! is the engine's [`SyncAgent`]: this loop only maps swarm events to its
//! inputs and its actions to requests, publishes and events.
//!
//! Nothing here blocks on the network: every reply from a peer is a later
//! swarm event, so the loop stays responsive while requests are in flight.
//! Everything that a peer can make us hold is bounded (publish queue, the
//! agent's requests in flight and KeyPackage cache, per-peer token buckets,
//! request sizes).

use crate::config::Config;
use crate::error::NodeError;
use crate::meter::Meter;
use crate::rate::{Rate, Rates};
use crate::redial::{Redial, Target};
use crate::swarm::{lobby_topic, topic_of, universe_topic, Behaviour, BehaviourEvent};
use libp2p::futures::StreamExt;
use libp2p::gossipsub::{self, MessageAcceptance, PublishError, TopicHash};
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{core::ConnectedPoint, identify, mdns, ping, Multiaddr, PeerId, Swarm};
use mmls_core::link::{Admit, Dialer, LinkAction, LinkStatus, Links};
use mmls_core::sync::{Action, RequestId, SyncAgent, SyncConfig, SyncError, SyncMessage};
use mmls_core::{
    Delivered, Event, ExportReport, Id32, ImportReport, MemberId, MmlsError, Output, Participant,
    Profile, Publish, Relay, UniverseStatus,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, watch};

/// A job run on the driver task with exclusive access to it (the API
/// handle's commands: each one replies through a oneshot it captured).
pub(crate) type Command = Box<dyn FnOnce(&mut Driver) + Send>;

/// Round trips of a connection's handshakes (transport, Noise, muxer) as
/// the driver counts them to turn the time they took into a round trip.
const HANDSHAKE_ROUND_TRIPS: u64 = 3;

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
    /// How each peer's link is doing (connected peers, and those waiting
    /// to be dialled again).
    pub links: Vec<(PeerId, LinkStatus)>,
}

#[derive(Default)]
pub(crate) struct PeerState {
    conn_addrs: BTreeSet<Multiaddr>,
    listen_addrs: Vec<Multiaddr>,
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
    /// The engine's sync agent, and its requests in flight by libp2p id.
    sync: SyncAgent<PeerId>,
    requests: HashMap<OutboundRequestId, RequestId>,
    pub(crate) peers: BTreeMap<PeerId, PeerState>,
    /// Per-peer token buckets, kept a while after a peer leaves.
    rates: Rates<PeerId>,
    redial: Redial,
    /// The link policy (`mmls_core::link`): liveness, one connection per
    /// peer, redial backoff; fed by `meter`'s byte counts and pongs.
    links: Links<PeerId, ConnectionId>,
    meter: Meter,
    /// Peers that do not speak ping: never judged silent (we cannot tell).
    no_ping: HashSet<PeerId>,
    blocked: HashSet<PeerId>,
    node_rejected: u64,
    /// Names, own-send index, receipts and last-seen (`views.rs`).
    pub(crate) ux: crate::views::Ux,
    pub(crate) stop: bool,
    /// The group commit in progress (`batch.rs`).
    batch: crate::batch::Batch,
    /// The sealed batch being written, if any.
    in_flight: Option<crate::batch::InFlight>,
}

pub(crate) struct DriverParts {
    pub swarm: Swarm<Behaviour>,
    pub meter: Meter,
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
        let sync = SyncAgent::new(
            me.clone(),
            SyncConfig {
                // Past the transport's own timeout, which reports first.
                request_timeout_ms: (t.request_timeout + Duration::from_secs(5)).as_millis() as u64,
                round_interval_ms: Some(t.sync_interval.as_millis() as u64),
                ..SyncConfig::default()
            },
        );
        let l = &parts.cfg.limits;
        let rates = Rates::new(
            Rate {
                per_sec: l.sync_rate,
                burst: l.sync_burst,
            },
            Rate {
                per_sec: l.gossip_rate,
                burst: l.gossip_burst,
            },
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
            sync,
            requests: HashMap::new(),
            peers: BTreeMap::new(),
            rates,
            redial,
            links: Links::new(peer_id, t.link_config()),
            meter: parts.meter,
            no_ping: HashSet::new(),
            blocked: HashSet::new(),
            node_rejected: 0,
            ux: parts.ux,
            stop: false,
            batch: crate::batch::Batch::default(),
            in_flight: None,
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
        self.handle_outputs(startup);
        self.redial();
        let t = self.cfg.timing.clone();
        let mut tick = tokio::time::interval(t.tick);
        let mut redial = tokio::time::interval(t.redial_interval);
        let mut republish = tokio::time::interval(t.republish_interval);
        for i in [&mut tick, &mut redial, &mut republish] {
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        tracing::info!(member = %self.me, "node running");
        loop {
            if let Err(e) = self.p.begin_batch() {
                tracing::error!(error = %e, "stopping");
                break;
            }
            self.batch.begin();
            tokio::select! {
                done = crate::batch::written(&mut self.in_flight) => {
                    // The previous batch is on disk: out with what it held,
                    // and the open one is sealed below.
                    if let Err(e) = self.release(done) {
                        tracing::error!(error = %e, "stopping: the store failed");
                        break;
                    }
                }
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                cmd = commands.recv() => match cmd {
                    Some(job) => job(&mut self),
                    None => break,
                },
                _ = tick.tick() => {
                    let now = now_ms();
                    let outs = self.p.tick(now);
                    self.sync.handle_outputs(outs, None, now);
                    self.sync.handle_timeout(&self.p, now);
                    self.drain();
                    self.flush_announcements();
                }
                _ = redial.tick() => {
                    self.close_dead();
                    self.redial();
                }
                _ = republish.tick() => {
                    self.retry_queue();
                    self.gc();
                }
            }
            // Whatever else is ready joins the batch (never waited for).
            while !self.stop && self.batch.take_more() {
                let mut more = false;
                if let Ok(job) = commands.try_recv() {
                    job(&mut self);
                    more = true;
                }
                // Polled with this task's waker (not a no-op one, as
                // `now_or_never` would): a no-op waker left the swarm's
                // connections unwoken and a flooded node read less.
                let swarm = &mut self.swarm;
                let ready = std::future::poll_fn(|cx| {
                    std::task::Poll::Ready(match swarm.poll_next_unpin(cx) {
                        std::task::Poll::Ready(ev) => ev,
                        std::task::Poll::Pending => None,
                    })
                })
                .await;
                if let Some(ev) = ready {
                    self.on_swarm(ev);
                    more = true;
                }
                if !more {
                    break;
                }
            }
            if self.in_flight.is_some() && !self.batch.is_full() && !self.stop {
                // The disk is still busy with the previous batch: this one
                // keeps taking inputs until that flush is done.
                continue;
            }
            if let Err(e) = self.seal_batch().await {
                // The disk did not take a batch: what we hold in memory may
                // not be on it, so nothing more may leave. A restart carries
                // on from the last durable state (fsync errors are not retried).
                tracing::error!(error = %e, "stopping: the store failed");
                break;
            }
            if self.stop {
                break;
            }
        }
        // The last batch's flush, then the last publish acknowledgements.
        if self.in_flight.is_some() {
            let last = crate::batch::written(&mut self.in_flight).await;
            if self.release(last).is_err() {
                tracing::info!(member = %self.me, "node stopped");
                return;
            }
        }
        if let Ok(outs) = self.p.end_batch() {
            for o in outs {
                if let Output::Event(e) = o {
                    let _ = self.events.send(e);
                }
            }
        }
        let outs = self.p.tick(now_ms());
        for o in outs {
            if let Output::Event(e) = o {
                let _ = self.events.send(e);
            }
        }
        tracing::info!(member = %self.me, "node stopped");
    }

    // ------------------------------------------------------------ outputs --

    /// The engine's outputs go through the sync agent (which turns fetches
    /// into requests), then out.
    pub(crate) fn handle_outputs(&mut self, outs: Vec<Output>) {
        self.sync.handle_outputs(outs, None, now_ms());
        self.drain();
    }

    /// Closes the open batch: waits for the previous one's flush (flushes
    /// reach the disk in order, and what a batch held leaves in order),
    /// then starts this one's on a blocking thread. A batch that wrote
    /// nothing is released at once.
    async fn seal_batch(&mut self) -> Result<(), MmlsError> {
        if self.in_flight.is_some() {
            let done = crate::batch::written(&mut self.in_flight).await;
            self.release(done)?;
        }
        let sealed = self.p.seal_batch()?;
        let mut held = self.batch.close();
        held.actions
            .extend(std::iter::from_fn(|| self.sync.poll_action()));
        if sealed.needs_write() {
            self.in_flight = Some(crate::batch::InFlight::start(sealed, held));
            Ok(())
        } else {
            self.release(crate::batch::Written {
                sealed: Some(sealed),
                result: Ok(()),
                held,
            })
        }
    }

    /// A sealed batch is written: its engine outputs, the sync actions,
    /// responses and API replies it held go out, in that order. On failure
    /// they are dropped unsent: callers see the node stop, not an
    /// acknowledgement of what may be lost.
    fn release(&mut self, done: crate::batch::Written) -> Result<(), MmlsError> {
        let sealed = done.sealed.ok_or_else(|| match &done.result {
            Err(e) => MmlsError::Unflushed(e.to_string()),
            Ok(()) => MmlsError::Internal("a flush without its batch".into()),
        })?;
        let outs = self.p.batch_written(sealed, done.result)?;
        // What the open batch has queued so far stays with it.
        let open: Vec<_> = std::iter::from_fn(|| self.sync.poll_action()).collect();
        self.batch.hold(open);
        for a in done.held.actions {
            self.act(a);
        }
        self.sync.handle_outputs(outs, None, now_ms());
        while let Some(a) = self.sync.poll_action() {
            self.act(a);
        }
        self.sync_subscriptions();
        for (channel, msg) in done.held.responses {
            let _ = self.swarm.behaviour_mut().sync.send_response(channel, msg);
        }
        for r in done.held.replies {
            r();
        }
        Ok(())
    }

    /// Sends `r` once the current batch is durable (at once outside one).
    pub(crate) fn reply_when_durable(&mut self, r: crate::batch::Reply) {
        if self.batch.is_open() {
            self.batch.reply(r);
        } else {
            r();
        }
    }

    /// Carries out what the sync agent asks for (after the batch's flush:
    /// what it publishes may be our own entries).
    fn drain(&mut self) {
        if self.batch.is_open() {
            return;
        }
        while let Some(a) = self.sync.poll_action() {
            self.act(a);
        }
        self.sync_subscriptions();
    }

    /// Carries out one sync agent action.
    fn act(&mut self, a: crate::batch::Action) {
        match a {
            Action::Request { peer, id, msg } => {
                let rid = self.swarm.behaviour_mut().sync.send_request(&peer, msg);
                self.requests.insert(rid, id);
            }
            Action::Publish(p) => self.publish(p),
            Action::Event(e) => self.emit(e),
        }
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

    fn sync_token(&mut self, peer: PeerId) -> bool {
        self.rates.sync(&peer, Instant::now())
    }

    fn gossip_token(&mut self, peer: PeerId) -> bool {
        self.rates.gossip(&peer, Instant::now())
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
                Ok(rtt) => {
                    if self.links.connection(&peer) == Some(&connection) {
                        self.links.pong(&peer, rtt.as_millis() as u64, now_ms());
                    }
                }
                // Not dead, only older: never closed for missing pings.
                Err(ping::Failure::Unsupported) => {
                    self.no_ping.insert(peer);
                }
                // Late or failed pings alone close nothing: the link
                // policy judges silence on every byte the peer sends.
                Err(error) => tracing::debug!(%peer, %error, "ping failed"),
            },
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                established_in,
                ..
            } => {
                self.redial.ended(connection_id);
                let dialled = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => Some(address),
                    ConnectedPoint::Listener { .. } => None,
                };
                self.redial.connected(peer_id, dialled, Instant::now());
                self.rates.connected(&peer_id);
                let dialer = if dialled.is_some() {
                    Dialer::Us
                } else {
                    Dialer::Them
                };
                // One connection per peer: both ends keep the same one, so
                // the handshakes and the summary exchange run once.
                match self
                    .links
                    .connected(peer_id, connection_id, dialer, now_ms())
                {
                    Admit::Duplicate => {
                        tracing::debug!(peer = %peer_id, connection = %connection_id, "duplicate connection: closed");
                        self.swarm.close_connection(connection_id);
                        return;
                    }
                    Admit::Replaces(old) => {
                        tracing::debug!(peer = %peer_id, connection = %connection_id, old = %old, "new connection replaces the old one");
                        self.swarm.close_connection(old);
                    }
                    Admit::First => {}
                }
                // The handshakes took a few round trips: the first sample
                // of the link's round trip, before any pong (a new
                // connection over a loaded radio must not be judged by a
                // LAN's allowance).
                let rtt = established_in.as_millis() as u64 / HANDSHAKE_ROUND_TRIPS;
                self.links.pong(&peer_id, rtt, now_ms());
                let st = self.peers.entry(peer_id).or_default();
                st.conn_addrs.insert(endpoint.get_remote_address().clone());
                if num_established.get() == 1 {
                    tracing::info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "peer connected");
                }
                // On the connection kept, first or replacing one that was
                // likely dead: the agent sends our summaries, and to a new
                // peer also our KeyPackage and those it relays.
                // A member is its PeerId: KeyPackage requests for it go to
                // it directly, and its own must name it.
                if let Some(m) = MemberId::from_peer_id_bytes(&peer_id.to_bytes()) {
                    self.sync.peer_identified(peer_id, m);
                }
                self.sync.peer_connected(&self.p, peer_id, now_ms());
                self.drain();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                self.links.closed(&peer_id, &connection_id, now_ms());
                if num_established == 0 {
                    tracing::info!(peer = %peer_id, "peer disconnected");
                    self.peers.remove(&peer_id);
                    // Its buckets stay (`rate.rs`): reconnecting must not
                    // buy a fresh burst.
                    self.rates.disconnected(&peer_id, Instant::now());
                    self.no_ping.remove(&peer_id);
                    self.sync.peer_disconnected(&peer_id, now_ms());
                    self.drain();
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
                let now = now_ms();
                let seen = match r {
                    Ok(outs) => {
                        self.sync.handle_outputs(outs, None, now);
                        true
                    }
                    Err(e) => e.is_duplicate(),
                };
                if seen && lobby {
                    self.sync
                        .lobby_envelope(&message.data, Some(&propagation_source), now);
                }
                self.drain();
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                tracing::debug!(peer = %peer_id, %topic, "peer subscribed");
                self.retry_queue();
                if topic != self.lobby && self.subscribed.contains(&topic) {
                    // A peer that just joined a universe of ours: catch it
                    // up now rather than at the next sync round.
                    self.sync.send_summary(&self.p, peer_id, now_ms());
                    self.drain();
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
                    if let SyncMessage::Summary(theirs) = &request {
                        self.note_heads(peer, theirs);
                    }
                    let resp = self
                        .sync
                        .handle_request(&mut self.p, &peer, request, now_ms());
                    self.drain();
                    if self.batch.is_open() {
                        self.batch.respond(channel, resp);
                    } else {
                        let _ = self.swarm.behaviour_mut().sync.send_response(channel, resp);
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    let Some(id) = self.requests.remove(&request_id) else {
                        return;
                    };
                    if let SyncMessage::Summaries(theirs) = &response {
                        self.note_heads(peer, theirs);
                    }
                    let r = self
                        .sync
                        .handle_response(&mut self.p, id, response, now_ms());
                    match r {
                        Ok(()) | Err(SyncError::UnknownRequest(_)) => {}
                        Err(e @ SyncError::UnexpectedAnswer { .. }) => {
                            tracing::debug!(%peer, error = %e, "malformed sync answer");
                            self.node_rejected += 1;
                        }
                    }
                    self.drain();
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, %error, "sync request failed");
                if let Some(id) = self.requests.remove(&request_id) {
                    self.sync.handle_failure(id, now_ms());
                    self.drain();
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound sync request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    // ----------------------------------------------------------- dialling --

    /// Feeds the bytes each peer moved to the link policy, and closes the
    /// connections it judges silent (over a dead link the close is local
    /// and immediate, and the peer is re-dialled from then on).
    fn close_dead(&mut self) {
        let now = now_ms();
        for m in self.meter.take() {
            self.links.received(&m.peer, m.received, now);
            self.links.sent(&m.peer, m.sent);
        }
        for p in &self.no_ping {
            self.links.received(p, 1, now);
        }
        self.links.handle_timeout(now);
        while let Some(a) = self.links.poll_action() {
            match a {
                LinkAction::Close { peer, conn, reason } => {
                    let allowance = self.links.config().min_silence_ms;
                    tracing::info!(%peer, connection = %conn, ?reason, min_silence_ms = allowance, "peer silent past its allowance: closing the connection");
                    self.swarm.close_connection(conn);
                }
            }
        }
    }

    /// Dials the known peers that are not connected and are due (see
    /// [`Redial`]: one dial per peer per `redial_interval`).
    fn redial(&mut self) {
        let (peers, blocked, me, links) = (&self.peers, &self.blocked, self.peer_id, &self.links);
        let now = now_ms();
        let due = self.redial.due(Instant::now(), |p| {
            peers.contains_key(p) || blocked.contains(p) || *p == me || !links.may_dial(p, now)
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
        let peers = &self.peers;
        self.rates.gc(Instant::now(), |p| peers.contains_key(p));
        self.links.gc(now_ms());
    }

    fn engine<T>(&mut self, r: Result<(T, Vec<Output>), MmlsError>) -> Result<T, NodeError> {
        match r {
            Ok((v, outs)) => {
                self.handle_outputs(outs);
                Ok(v)
            }
            Err(e) => {
                if let MmlsError::MissingKeyPackage(m) = &e {
                    // The engine's own request is dropped with the error.
                    self.sync.missing_key_package(m, now_ms());
                    self.drain();
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
        anchors: Vec<mmls_core::federation::DomainAnchor>,
        suites: &[u16],
    ) -> Result<Id32, NodeError> {
        let r = self
            .p
            .create_universe_with(name, members, admins, profile, anchors, suites);
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

    pub(crate) fn cmd_renew_certificate(&mut self, chain: Vec<Vec<u8>>) -> Result<(), NodeError> {
        let r = self.p.renew_certificate(chain).map(|o| ((), o));
        self.engine(r)
    }

    pub(crate) fn cmd_set_anchor(
        &mut self,
        u: &Id32,
        domain: &str,
        cert: &[u8],
    ) -> Result<(), NodeError> {
        let r = self.p.set_anchor(u, domain, cert).map(|o| ((), o));
        self.engine(r)
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

    pub(crate) fn cmd_publish_device_link(
        &mut self,
        signed: mmls_core::devices::SignedDeviceLink,
    ) -> Result<(), NodeError> {
        let r = self.p.publish_device_link(signed).map(|o| ((), o));
        self.engine(r)
    }

    pub(crate) fn cmd_leave(&mut self, u: &Id32) -> Result<(), NodeError> {
        let r = self.p.leave_universe(u).map(|o| ((), o));
        self.engine(r)
    }

    pub(crate) fn cmd_forget(&mut self, u: &Id32) -> Result<(), NodeError> {
        let r = self.p.forget_universe(u).map(|o| ((), o));
        self.engine(r)?;
        self.sync_subscriptions();
        Ok(())
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
        self.handle_outputs(outs);
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
            links: self.links.statuses(now_ms()),
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
