//! The sync agent, sans-IO: the conversation with peers around one
//! [`Participant`]. It decides whom to ask for what, retries across peers,
//! polls for Welcomes while we wait to join, relays KeyPackages to new
//! peers, and answers peers' requests. Drivers map their transport to its
//! inputs (peer connected / gone, request from a peer, answer or failure of
//! our request, lobby envelope seen, the time) and its [`Action`]s to their
//! transport; the node and the simulator both drive it, so the simulator
//! measures the node's policy.
//!
//! Peers are the driver's opaque ids (`P`: a libp2p `PeerId`, a node index).
//! Every decision iterates ordered maps, so a seeded driver stays
//! deterministic.

use super::key_packages::{KeyPackageRelay, Seen};
use super::kp_request::{KpRequest, KpRequests, KpResponse};
use super::told::{digest, Told};
use super::{FetchRequest, FetchResponse, SyncMessage, SyncSummary, MAX_FETCH_ENVELOPES};
use crate::envelope::{Envelope, Kind};
use crate::id::Id32;
use crate::identity::MemberId;
use crate::participant::{Event, Output, Participant, Publish};
use serde_bytes::ByteBuf;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The agent's policy knobs. Times are the driver's milliseconds.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// A request without an answer for this long has failed (a roaming
    /// fetch then goes to another peer). Drivers whose transport has its
    /// own timeout set this at or above it.
    pub request_timeout_ms: u64,
    /// Ask for the Welcomes of a universe we are not in at most this often.
    pub welcome_poll_ms: u64,
    /// Ask the lobby for one member's KeyPackage at most this often.
    pub kp_ask_ms: u64,
    /// Requests in flight at most (more are dropped; the engine asks again).
    pub max_outstanding: usize,
    /// Our requests in flight to one peer at most; more wait their turn.
    /// A node serves at most 8 sync streams of a connection at once
    /// (`node::swarm::MAX_INBOUND_STREAMS`), its peer's requests and its own
    /// to that peer together, and drops streams past that: half is ours.
    pub max_inflight_per_peer: usize,
    /// Welcome polls (for universes we are not in) waiting or in flight to
    /// one peer at most: a summary naming a thousand made-up universes, or
    /// a peer repeating summaries faster than it answers, starts no more.
    pub welcome_polls_per_peer: usize,
    /// Universes whose last Welcome poll we remember at most (the one
    /// polled longest ago is forgotten first, and may be polled sooner).
    pub max_welcome_polls: usize,
    /// Universes we look at in one peer's summaries.
    pub max_summaries: usize,
    /// Groups whose head we remember per peer (to prefer a peer that has
    /// what we miss).
    pub max_heads_per_peer: usize,
    /// Others' KeyPackages kept to hand to new peers.
    pub kp_cache: usize,
    /// KeyPackage requests we serve per requesting peer: this many a
    /// minute, in bursts of `kp_serve_burst`; more are refused
    /// (`KpRefusal::RateLimited`).
    pub kp_serve_per_min: u64,
    pub kp_serve_burst: u64,
    /// How often every connected peer gets our summaries (the periodic
    /// round that repairs what gossip lost). `None`: only when the driver
    /// calls [`SyncAgent::sync_all`] (tests that step sync by hand).
    pub round_interval_ms: Option<u64>,
    /// A round skips a peer that already has the summaries we would send,
    /// until this long after we sent them (`told.rs`).
    pub quiet_round_ms: u64,
    /// The KeyPackages pushed on connect, and our lobby announcement, are
    /// not sent again unchanged to the same peer (the lobby) before this.
    pub repeat_push_ms: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            request_timeout_ms: 30_000,
            welcome_poll_ms: 30_000,
            kp_ask_ms: 1_000,
            max_outstanding: 1024,
            max_inflight_per_peer: 4,
            welcome_polls_per_peer: 8,
            max_welcome_polls: 256,
            max_summaries: 1024,
            max_heads_per_peer: 4096,
            kp_cache: 256,
            kp_serve_per_min: 30,
            kp_serve_burst: 8,
            round_interval_ms: Some(5_000),
            quiet_round_ms: 60_000,
            repeat_push_ms: 600_000,
        }
    }
}

/// Names one of our requests; the driver reports its answer or failure
/// with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action<P> {
    /// Send `msg` to `peer` as a request; report the answer with
    /// [`SyncAgent::handle_response`] or the failure with
    /// [`SyncAgent::handle_failure`].
    Request {
        peer: P,
        id: RequestId,
        msg: SyncMessage,
    },
    /// Publish on gossip (the engine's publishes, our KeyPackage requests).
    Publish(Publish),
    /// For the user.
    Event(Event),
}

/// What an answer could not be used for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// No request of ours has this id (answered, timed out, its peer gone).
    #[error("no outstanding request {0:?}")]
    UnknownRequest(RequestId),
    /// The peer answered with the wrong kind of message.
    #[error("a {asked} request was answered with a {got} message")]
    UnexpectedAnswer {
        asked: &'static str,
        got: &'static str,
    },
}

/// Who may answer a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route<P> {
    /// Planned from this peer's summary (it has what we miss, or a
    /// follow-up of its answer): no retry elsewhere; the next summary
    /// plans again.
    Planned,
    /// An engine fetch: any peer may answer. After a failure, a timeout or
    /// an empty answer the next untried peer is asked; when none is left we
    /// give up (the engine asks again after its retry delay).
    Roaming { tried: Vec<P> },
}

/// What an outstanding request was for.
#[derive(Debug, Clone)]
enum Purpose<P> {
    /// Our summaries; the answer is the peer's.
    Summary,
    /// KeyPackages handed over; the answer is empty.
    Push,
    /// A KeyPackage request for this target.
    KeyPackages {
        target: String,
    },
    Fetch {
        req: FetchRequest,
        route: Route<P>,
    },
}

/// One request in flight, or waiting for room at its peer.
#[derive(Debug, Clone)]
struct Asked<P> {
    peer: P,
    /// When it was sent (its timeout counts from then).
    at: u64,
    purpose: Purpose<P>,
    /// The message while it waits (`max_inflight_per_peer`); `None` once
    /// sent.
    waiting: Option<SyncMessage>,
}

/// A connected peer, as far as sync goes.
#[derive(Debug, Default)]
struct Peer {
    /// Its heads from its last summary: group -> next seq.
    heads: BTreeMap<Id32, u64>,
}

/// The sync agent of one participant.
pub struct SyncAgent<P> {
    me: MemberId,
    cfg: SyncConfig,
    peers: BTreeMap<P, Peer>,
    asked: BTreeMap<RequestId, Asked<P>>,
    /// Requests waiting for room at their peer, oldest first.
    queued: BTreeMap<P, VecDeque<RequestId>>,
    /// Fetches in flight, and whom they are asked of: an identical range
    /// is not asked again of anyone (any holder answers the same entries);
    /// Welcomes not again of the same peer (each peer holds its own).
    inflight: BTreeMap<FetchRequest, Vec<P>>,
    next_id: u64,
    /// Round robin over peers for roaming fetches.
    rr: usize,
    /// Universes we are not in: when we last asked for their Welcomes.
    welcome_polls: BTreeMap<Id32, u64>,
    kps: KeyPackageRelay,
    kp_requests: KpRequests<P>,
    actions: VecDeque<Action<P>>,
    /// When the next summary round is due (set by the first timeout or by
    /// [`SyncAgent::start_rounds`]).
    next_round: Option<u64>,
    /// What each peer (and the lobby) already got from us.
    told: Told<P>,
}

impl<P: Ord + Clone> SyncAgent<P> {
    pub fn new(me: MemberId, cfg: SyncConfig) -> SyncAgent<P> {
        let kps = KeyPackageRelay::new(cfg.kp_cache);
        let kp_requests = KpRequests::new(cfg.kp_serve_per_min, cfg.kp_serve_burst);
        SyncAgent {
            me,
            cfg,
            peers: BTreeMap::new(),
            asked: BTreeMap::new(),
            queued: BTreeMap::new(),
            inflight: BTreeMap::new(),
            next_id: 0,
            rr: 0,
            welcome_polls: BTreeMap::new(),
            kps,
            kp_requests,
            actions: VecDeque::new(),
            next_round: None,
            told: Told::default(),
        }
    }

    /// The first periodic round runs at `at` (a simulator spreads its
    /// nodes' rounds over the interval instead of starting them together).
    pub fn start_rounds(&mut self, at: u64) {
        if self.cfg.round_interval_ms.is_some() {
            self.next_round = Some(at);
        }
    }

    pub fn config(&self) -> &SyncConfig {
        &self.cfg
    }

    /// The next thing to do, in order.
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    /// Connected peers, in order.
    pub fn peers(&self) -> impl Iterator<Item = &P> {
        self.peers.keys()
    }

    pub fn is_connected(&self, peer: &P) -> bool {
        self.peers.contains_key(peer)
    }

    /// Requests in flight or waiting to be sent.
    pub fn outstanding(&self) -> usize {
        self.asked.len()
    }

    /// Universes whose last Welcome poll we remember.
    #[cfg(test)]
    pub(crate) fn remembered_polls(&self) -> usize {
        self.welcome_polls.len()
    }

    // ------------------------------------------------------------ inputs --

    /// A peer connected: it gets our KeyPackage and the others we relay (a
    /// push: gossip would not re-send them), our announcement on the lobby,
    /// and our summaries.
    pub fn peer_connected(&mut self, p: &Participant, peer: P, now: u64) {
        if self.peers.contains_key(&peer) {
            self.send_summary(p, peer, now);
            return;
        }
        self.peers.insert(peer.clone(), Peer::default());
        // Our device link too: a creator resolving `--user` needs it.
        let anns: Vec<Output> = std::iter::once(p.announcement())
            .chain(p.device_announcement())
            .collect();
        let mut envelopes = vec![];
        for a in &anns {
            if let Output::Publish(a) = a {
                envelopes.push(ByteBuf::from(a.bytes.clone()));
            }
        }
        let ours = digest(&envelopes);
        envelopes.extend(
            self.kps
                .newest(MAX_FETCH_ENVELOPES - envelopes.len())
                .map(|b| ByteBuf::from(b.to_vec())),
        );
        // Not again to a peer that got this very set (a reconnect), and
        // our announcement on the lobby only when it changed.
        let repeat = self.cfg.repeat_push_ms;
        let set = digest(&envelopes);
        if self.told.push_due(&peer, set, now, repeat) {
            self.told.pushed(peer.clone(), set, now);
            self.push(peer.clone(), envelopes, now);
        }
        if self.told.announce_due(ours, now, repeat) {
            self.told.announced(ours, now);
            self.handle_outputs(anns, None, now);
        }
        self.send_summary(p, peer, now);
    }

    /// The driver knows which member `peer` is (its transport identity):
    /// KeyPackage requests for that member go to it directly, and its own
    /// requests must name it as requester.
    pub fn peer_identified(&mut self, peer: P, member: MemberId) {
        self.kp_requests.identified(peer, member);
    }

    /// A peer is gone: its requests fail now (roaming fetches move on).
    pub fn peer_disconnected(&mut self, peer: &P, now: u64) {
        self.kp_requests.gone(peer);
        self.told.forget_summary(peer);
        // Its waiting requests fail below with the rest, unsent.
        self.queued.remove(peer);
        if self.peers.remove(peer).is_none() {
            return;
        }
        let ids: Vec<RequestId> = self
            .asked
            .iter()
            .filter(|(_, a)| a.peer == *peer)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.fail(id, now);
        }
    }

    /// The engine's outputs: fetches become requests (to `from` when it is
    /// connected: the peer whose answer caused them), the rest actions.
    pub fn handle_outputs(&mut self, outs: Vec<Output>, from: Option<&P>, now: u64) {
        for o in outs {
            match o {
                Output::Publish(p) => {
                    // Our request for a target we are connected to goes to
                    // it alone; the lobby is for targets further away.
                    let direct = own_kp_request(&self.me, &p)
                        .is_some_and(|target| self.ask_key_packages(&target, now));
                    if !direct {
                        self.actions.push_back(Action::Publish(p))
                    }
                }
                Output::Event(e) => self.actions.push_back(Action::Event(e)),
                Output::Fetch(r) => self.fetch(r, from, now),
            }
        }
    }

    /// A command failed for lack of `member`'s KeyPackage: ask the lobby
    /// (rate-limited per member).
    pub fn missing_key_package(&mut self, member: &str, now: u64) {
        if self.ask_key_packages(member, now) {
            return;
        }
        if let Some(p) = self.kps.ask(&self.me, member, now, self.cfg.kp_ask_ms) {
            self.actions.push_back(Action::Publish(p));
        }
    }

    /// Asks a peer for `target`'s KeyPackages (request-response): the
    /// target itself when connected, else a neighbour (rate-limited per
    /// target). True if the target itself was asked.
    pub fn ask_key_packages(&mut self, target: &str, now: u64) -> bool {
        let peers: Vec<P> = self.peers.keys().cloned().collect();
        let Some((peer, direct)) = self
            .kp_requests
            .whom(target, &peers, now, self.cfg.kp_ask_ms)
        else {
            return false;
        };
        let msg = SyncMessage::KeyPackageRequest(KpRequest {
            target: target.to_string(),
            requester: self.me.clone(),
            ciphersuites: Participant::ciphersuites(),
        });
        let purpose = Purpose::KeyPackages {
            target: target.to_string(),
        };
        self.request(peer, msg, purpose, now) && direct
    }

    /// A lobby envelope the engine accepted or already had, relayed to us by
    /// `from`: caches KeyPackages, and answers a request for one we hold by
    /// pushing it to `from` (the addressee's own answer cannot be
    /// re-gossiped inside the duplicate window).
    pub fn lobby_envelope(&mut self, bytes: &[u8], from: Option<&P>, now: u64) {
        if let Seen::Answer(kp) = self.kps.observe(&self.me, bytes) {
            if let Some(peer) = from {
                self.push(peer.clone(), vec![ByteBuf::from(kp)], now);
            }
        }
    }

    /// A peer's request; returns the answer to send back.
    pub fn handle_request(
        &mut self,
        p: &mut Participant,
        peer: &P,
        msg: SyncMessage,
        now: u64,
    ) -> SyncMessage {
        let answer = match msg {
            SyncMessage::Summary(theirs) => {
                self.plan_from(p, peer, &theirs, now);
                SyncMessage::Summaries(p.summaries())
            }
            SyncMessage::Fetch(req) => {
                SyncMessage::Fetched(p.serve_fetch(&req).unwrap_or_default())
            }
            SyncMessage::Fetched(push) => {
                self.absorb_push(p, peer, push, now);
                SyncMessage::Fetched(FetchResponse::default())
            }
            SyncMessage::Summaries(theirs) => {
                self.plan_from(p, peer, &theirs, now);
                SyncMessage::Summaries(vec![])
            }
            SyncMessage::KeyPackageRequest(req) => {
                let (resp, outs) = self.kp_requests.serve(p, &self.kps, peer, req, now);
                self.handle_outputs(outs, None, now);
                SyncMessage::KeyPackages(resp)
            }
            // Not a request: unasked KeyPackages are not taken this way.
            SyncMessage::KeyPackages(_) => SyncMessage::Fetched(FetchResponse::default()),
        };
        answer.fit()
    }

    /// The answer to our request `id`.
    pub fn handle_response(
        &mut self,
        p: &mut Participant,
        id: RequestId,
        msg: SyncMessage,
        now: u64,
    ) -> Result<(), SyncError> {
        // One still waiting was never sent: no answer can be to it.
        if self.asked.get(&id).is_none_or(|a| a.waiting.is_some()) {
            return Err(SyncError::UnknownRequest(id));
        }
        let Some(a) = self.asked.remove(&id) else {
            return Err(SyncError::UnknownRequest(id));
        };
        self.release(&a.peer, now);
        match (a.purpose, msg) {
            (Purpose::Summary, SyncMessage::Summaries(s)) => {
                self.plan_from(p, &a.peer, &s, now);
                Ok(())
            }
            (Purpose::Push, _) => Ok(()),
            (Purpose::KeyPackages { target }, SyncMessage::KeyPackages(resp)) => {
                match resp {
                    KpResponse::KeyPackages(envs) => {
                        let push = FetchResponse {
                            envelopes: envs.into_iter().take(super::MAX_KP_ANSWER).collect(),
                            ..FetchResponse::default()
                        };
                        self.absorb_push(p, &a.peer, push, now);
                    }
                    KpResponse::Refused(why) => {
                        tracing::debug!(%target, %why, "KeyPackage request refused")
                    }
                }
                Ok(())
            }
            (Purpose::KeyPackages { .. }, other) => Err(SyncError::UnexpectedAnswer {
                asked: "key packages",
                got: other.kind(),
            }),
            (Purpose::Fetch { req, route }, SyncMessage::Fetched(resp)) => {
                self.landed(&req, &a.peer);
                self.on_fetched(p, a.peer, req, route, resp, now);
                Ok(())
            }
            (Purpose::Fetch { req, route }, other) => {
                self.landed(&req, &a.peer);
                self.retry(req, route, now);
                Err(SyncError::UnexpectedAnswer {
                    asked: "fetch",
                    got: other.kind(),
                })
            }
            (Purpose::Summary, other) => Err(SyncError::UnexpectedAnswer {
                asked: "summary",
                got: other.kind(),
            }),
        }
    }

    /// Our request `id` failed (transport error, refused, connection lost).
    pub fn handle_failure(&mut self, id: RequestId, now: u64) {
        if self.asked.get(&id).is_some_and(|a| a.waiting.is_none()) {
            self.fail(id, now);
        }
    }

    /// Sends our summaries to every connected peer (the periodic round).
    /// A peer that already has these summaries from us is skipped until
    /// `quiet_round_ms` (`told.rs`): its own round tells us what it has.
    pub fn sync_all(&mut self, p: &Participant, now: u64) {
        let ours = p.summaries();
        let d = digest(&ours);
        let quiet = self.cfg.quiet_round_ms;
        let peers: Vec<P> = self
            .peers
            .keys()
            .filter(|peer| self.told.summary_due(peer, d, now, quiet))
            .cloned()
            .collect();
        for peer in peers {
            self.summary_to(peer, ours.clone(), d, now);
        }
    }

    /// Sends our summaries to `peer` (it answers with its own, and each side
    /// fetches what the other has more of).
    pub fn send_summary(&mut self, p: &Participant, peer: P, now: u64) {
        let ours = p.summaries();
        let d = digest(&ours);
        self.summary_to(peer, ours, d, now);
    }

    fn summary_to(&mut self, peer: P, ours: Vec<SyncSummary>, d: u64, now: u64) {
        if self.request(
            peer.clone(),
            SyncMessage::Summary(ours),
            Purpose::Summary,
            now,
        ) {
            self.told.told_summary(peer, d, now);
        }
    }

    // ------------------------------------------------------------ timers --

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.asked
            .values()
            .filter(|a| a.waiting.is_none())
            .map(|a| a.at.saturating_add(self.cfg.request_timeout_ms))
            .chain(self.next_round)
            .min()
    }

    /// Runs the periodic summary round when it is due, fails the requests
    /// unanswered for `request_timeout_ms`, and forgets rate-limit records
    /// that cannot matter any more.
    pub fn handle_timeout(&mut self, p: &Participant, now: u64) {
        if let Some(every) = self.cfg.round_interval_ms {
            match self.next_round {
                None => self.next_round = Some(now.saturating_add(every)),
                Some(due) if now >= due => {
                    self.next_round = Some(now.saturating_add(every));
                    self.sync_all(p, now);
                }
                Some(_) => {}
            }
        }
        let timeout = self.cfg.request_timeout_ms;
        let due: Vec<RequestId> = self
            .asked
            .iter()
            .filter(|(_, a)| a.waiting.is_none() && now >= a.at.saturating_add(timeout))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.fail(id, now);
        }
        let keep = self.cfg.welcome_poll_ms.saturating_mul(2);
        self.welcome_polls
            .retain(|_, t| now < t.saturating_add(keep));
        self.kps.gc(now, self.cfg.kp_ask_ms.saturating_mul(60));
        self.kp_requests
            .gc(now, self.cfg.kp_ask_ms.saturating_mul(60));
    }

    // ----------------------------------------------------------- policy --

    fn fail(&mut self, id: RequestId, now: u64) {
        let Some(a) = self.asked.remove(&id) else {
            return;
        };
        self.release(&a.peer, now);
        if matches!(a.purpose, Purpose::Summary) {
            self.told.forget_summary(&a.peer);
        }
        if let Purpose::Fetch { req, route } = a.purpose {
            self.landed(&req, &a.peer);
            self.retry(req, route, now);
        }
    }

    /// A roaming fetch goes to the next untried peer, if any.
    fn retry(&mut self, req: FetchRequest, route: Route<P>, now: u64) {
        let Route::Roaming { mut tried } = route else {
            return;
        };
        if let Some(next) = self.next_peer(&req, &tried) {
            tried.push(next.clone());
            self.send_fetch(next, req, Route::Roaming { tried }, now);
        }
    }

    /// Sends a fetch to `prefer` (connected: the peer that has it), or to a
    /// connected peer chosen by [`next_peer`](Self::next_peer).
    fn fetch(&mut self, req: FetchRequest, prefer: Option<&P>, now: u64) {
        let prefer = prefer.filter(|p| self.peers.contains_key(*p));
        if let Some(asked) = self.inflight.get(&req) {
            let welcomes = matches!(req, FetchRequest::Welcomes { .. });
            if !welcomes || prefer.is_none_or(|p| asked.contains(p)) {
                return;
            }
        }
        match prefer {
            Some(p) => self.send_fetch(p.clone(), req, Route::Planned, now),
            None => {
                if let Some(p) = self.next_peer(&req, &[]) {
                    let tried = vec![p.clone()];
                    self.send_fetch(p, req, Route::Roaming { tried }, now);
                }
            }
        }
    }

    /// An untried connected peer: one whose last summary shows it holds
    /// what `req` asks for if there is one, round robin among them.
    fn next_peer(&mut self, req: &FetchRequest, tried: &[P]) -> Option<P> {
        let untried: Vec<(&P, &Peer)> = self
            .peers
            .iter()
            .filter(|(p, _)| !tried.contains(p))
            .collect();
        let has: Vec<&P> = match req {
            FetchRequest::Range { group, from, .. } => untried
                .iter()
                .filter(|(_, st)| st.heads.get(group).is_some_and(|n| n > from))
                .map(|(p, _)| *p)
                .collect(),
            // Peers in the groups we lack hold their Welcomes.
            FetchRequest::Welcomes { groups, .. } => untried
                .iter()
                .filter(|(_, st)| groups.iter().any(|g| st.heads.contains_key(g)))
                .map(|(p, _)| *p)
                .collect(),
        };
        let pool: Vec<&P> = if has.is_empty() {
            untried.iter().map(|(p, _)| *p).collect()
        } else {
            has
        };
        if pool.is_empty() {
            return None;
        }
        self.rr = self.rr.wrapping_add(1);
        Some(pool[self.rr % pool.len()].clone())
    }

    fn send_fetch(&mut self, peer: P, req: FetchRequest, route: Route<P>, now: u64) {
        let msg = SyncMessage::Fetch(req.clone());
        let purpose = Purpose::Fetch {
            req: req.clone(),
            route,
        };
        if self.request(peer.clone(), msg, purpose, now) {
            self.inflight.entry(req).or_default().push(peer);
        }
    }

    /// A fetch asked of `peer` is over (answered or failed).
    fn landed(&mut self, req: &FetchRequest, peer: &P) {
        if let Some(asked) = self.inflight.get_mut(req) {
            if let Some(i) = asked.iter().position(|p| p == peer) {
                asked.swap_remove(i);
            }
            if asked.is_empty() {
                self.inflight.remove(req);
            }
        }
    }

    fn push(&mut self, peer: P, envelopes: Vec<ByteBuf>, now: u64) {
        let msg = SyncMessage::Fetched(FetchResponse {
            envelopes,
            ..FetchResponse::default()
        });
        self.request(peer, msg, Purpose::Push, now);
    }

    /// Sends `msg` to `peer`, or queues it while `max_inflight_per_peer`
    /// of ours are in flight there. False if dropped (`max_outstanding`).
    fn request(&mut self, peer: P, msg: SyncMessage, purpose: Purpose<P>, now: u64) -> bool {
        if self.asked.len() >= self.cfg.max_outstanding {
            tracing::debug!("too many sync requests in flight; dropping one");
            return false;
        }
        self.next_id += 1;
        let id = RequestId(self.next_id);
        let msg = msg.fit();
        let busy = self.sent_to(&peer) >= self.cfg.max_inflight_per_peer;
        let (waiting, send) = if busy {
            (Some(msg), None)
        } else {
            (None, Some(msg))
        };
        self.asked.insert(
            id,
            Asked {
                peer: peer.clone(),
                at: now,
                purpose,
                waiting,
            },
        );
        match send {
            Some(msg) => self.actions.push_back(Action::Request { peer, id, msg }),
            None => self.queued.entry(peer).or_default().push_back(id),
        }
        true
    }

    /// Our requests in flight to `peer` (sent, not answered).
    fn sent_to(&self, peer: &P) -> usize {
        self.asked
            .values()
            .filter(|a| a.peer == *peer && a.waiting.is_none())
            .count()
    }

    /// Sends `peer`'s waiting requests, oldest first, while it has room.
    fn release(&mut self, peer: &P, now: u64) {
        let mut room = self
            .cfg
            .max_inflight_per_peer
            .saturating_sub(self.sent_to(peer));
        let Some(queue) = self.queued.get_mut(peer) else {
            return;
        };
        while room > 0 {
            let Some(id) = queue.pop_front() else {
                break;
            };
            // Gone meanwhile (failed with its peer), or already sent.
            let Some(a) = self.asked.get_mut(&id) else {
                continue;
            };
            let Some(msg) = a.waiting.take() else {
                continue;
            };
            a.at = now;
            room -= 1;
            self.actions.push_back(Action::Request {
                peer: peer.clone(),
                id,
                msg,
            });
        }
        if queue.is_empty() {
            self.queued.remove(peer);
        }
    }

    /// What to fetch from `peer`, given its summaries; and, for a universe
    /// we are not in, a poll for Welcomes addressed to us.
    fn plan_from(&mut self, p: &Participant, peer: &P, theirs: &[SyncSummary], now: u64) {
        let known: BTreeSet<Id32> = p.universes().into_iter().collect();
        let theirs = &theirs[..theirs.len().min(self.cfg.max_summaries)];
        let cap = self.cfg.max_heads_per_peer;
        if let Some(st) = self.peers.get_mut(peer) {
            for s in theirs {
                for (g, n) in &s.heads {
                    if st.heads.len() < cap || st.heads.contains_key(g) {
                        st.heads.insert(*g, *n);
                    }
                }
            }
        }
        for s in theirs {
            if known.contains(&s.universe) {
                for r in p.plan_fetches(s) {
                    self.fetch(r, Some(peer), now);
                }
            }
        }
        self.poll_welcomes(peer, theirs, &known, now);
    }

    /// Universes of `theirs` we are not in may hold a Welcome for us that
    /// we missed on the lobby (offline when it was sent): we ask `peer`.
    /// Universe ids are free to make up, so a peer gets at most
    /// `welcome_polls_per_peer` polls waiting or in flight, those never
    /// polled (or polled longest ago) first, and at most
    /// `max_welcome_polls` last-poll times are kept.
    fn poll_welcomes(
        &mut self,
        peer: &P,
        theirs: &[SyncSummary],
        known: &BTreeSet<Id32>,
        now: u64,
    ) {
        let polling = self
            .asked
            .values()
            .filter(|a| a.peer == *peer)
            .filter(|a| match &a.purpose {
                Purpose::Fetch {
                    req: FetchRequest::Welcomes { universe, .. },
                    ..
                } => !known.contains(universe),
                _ => false,
            })
            .count();
        let room = self.cfg.welcome_polls_per_peer.saturating_sub(polling);
        if room == 0 {
            return;
        }
        let every = self.cfg.welcome_poll_ms;
        let mut seen = BTreeSet::new();
        let mut due: Vec<(Option<u64>, Id32)> = theirs
            .iter()
            .map(|s| s.universe)
            .filter(|u| !known.contains(u) && seen.insert(*u))
            .map(|u| (self.welcome_polls.get(&u).copied(), u))
            .filter(|(last, _)| last.is_none_or(|t| now >= t.saturating_add(every)))
            .collect();
        // Never polled first, then polled longest ago; ties in summary order.
        due.sort_by_key(|(last, _)| *last);
        for (_, universe) in due.into_iter().take(room) {
            self.welcome_polls.insert(universe, now);
            let req = FetchRequest::Welcomes {
                universe,
                member: self.me.clone(),
                // Owners only: a universe we do not know may be one we
                // left or were removed from, where old Welcomes other
                // members hold still name us.
                groups: vec![],
            };
            self.fetch(req, Some(peer), now);
        }
        while self.welcome_polls.len() > self.cfg.max_welcome_polls {
            let oldest = self
                .welcome_polls
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(u, _)| *u);
            match oldest {
                Some(u) => self.welcome_polls.remove(&u),
                None => break,
            };
        }
    }

    /// Feeds envelopes a peer pushed to us.
    fn absorb_push(&mut self, p: &mut Participant, peer: &P, push: FetchResponse, now: u64) {
        for e in push.envelopes.iter().take(MAX_FETCH_ENVELOPES) {
            match p.handle_incoming(e) {
                Ok(outs) => {
                    self.kps.observe(&self.me, e);
                    self.handle_outputs(outs, Some(peer), now);
                }
                Err(err) if err.is_duplicate() => {
                    self.kps.observe(&self.me, e);
                }
                Err(err) => tracing::debug!(error = %err, "pushed envelope rejected"),
            }
        }
    }

    fn on_fetched(
        &mut self,
        p: &mut Participant,
        peer: P,
        req: FetchRequest,
        route: Route<P>,
        resp: FetchResponse,
        now: u64,
    ) {
        // Nothing from this peer (it joined later, or is behind us): another
        // may have it. A pruned history is an answer, though.
        let empty = resp.envelopes.is_empty() && !resp.pruned && !resp.more;
        if empty {
            if let Route::Roaming { tried } = &route {
                if let Some(next) = self.next_peer(&req, tried) {
                    let mut tried = tried.clone();
                    tried.push(next.clone());
                    self.send_fetch(next, req, Route::Roaming { tried }, now);
                    return;
                }
            }
        }
        let welcomes = matches!(req, FetchRequest::Welcomes { .. }) && !resp.envelopes.is_empty();
        let before = welcomes.then(|| groups_in(p));
        let outs = p.handle_fetch_response(&req, resp);
        self.handle_outputs(outs, Some(&peer), now);
        let joined = before.is_some_and(|n| groups_in(p) > n);
        if joined && self.peers.contains_key(&peer) {
            // A Welcome got us into a group: fetch the rest of the streams
            // now. (Only then: Welcomes we had already processed must not
            // start another round, or two peers would ping-pong summaries.)
            self.send_summary(p, peer, now);
        }
    }
}

/// How many send groups we are in, over all universes.
fn groups_in(p: &Participant) -> usize {
    p.summaries().iter().map(|s| s.heads.len()).sum()
}

impl SyncMessage {
    /// The message's kind, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SyncMessage::Summary(_) => "summary",
            SyncMessage::Fetch(_) => "fetch",
            SyncMessage::Summaries(_) => "summaries",
            SyncMessage::Fetched(_) => "fetched",
            SyncMessage::KeyPackageRequest(_) => "key package request",
            SyncMessage::KeyPackages(_) => "key packages",
        }
    }
}

/// The target of our own lobby KeyPackage request, if `p` is one.
fn own_kp_request(me: &MemberId, p: &Publish) -> Option<String> {
    if p.topic != crate::participant::Topic::Lobby {
        return None;
    }
    let env = Envelope::decode(&p.bytes).ok()?;
    if env.kind != Kind::KeyPackageRequest || env.sender.as_deref() != Some(me.as_str()) {
        return None;
    }
    env.to
}
