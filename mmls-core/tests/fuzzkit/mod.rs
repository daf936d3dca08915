//! What the fuzzers check, shared by the stable property tests
//! (`tests/fuzz.rs`, proptest with a fixed seed) and the cargo-fuzz targets
//! (`fuzz/`, libFuzzer): a small real universe to fuzz against, and one
//! checker per entry point that panics when a property is violated.
//!
//! The fixture is a 3-member universe (node 0 creator) that has sent, updated
//! every leaf, rejoined and sent again; `corpus` holds every envelope it
//! published. Node 1's committed state is kept as a store snapshot (`base`),
//! taken while node 1 was offline for the last few messages (`held`). Each
//! fuzz case restores node 1 from that snapshot, feeds it hostile input, and
//! then checks that delivering the held messages still works and brings node
//! 1 to the same group states as the others (`liveness`).
//!
//! Properties (every entry point): no panic, no abort; errors are typed and
//! short; a rejected input changes nothing visible (groups' epoch and next
//! seq, roster, delivered log) and is counted; an input is never blamed on
//! our own store (`Store`/`Internal` errors); the universe still works.

#![allow(dead_code)]

use crate::common::{config, identity, logged_texts, view, Net};
use mmls_core::envelope::{EnvelopeError, MAX_ENVELOPE_BYTES};
use mmls_core::sync::{SyncMessage, MAX_FETCH_BYTES, MAX_FETCH_ENVELOPES};
use mmls_core::{
    Envelope, FetchRequest, FetchResponse, Id32, Kind, Output, Participant, Profile, Store,
    SyncSummary,
};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Longest error message a hostile input may produce (errors are truncated
/// where they quote parser output).
pub const MAX_ERROR_CHARS: usize = 600;

pub struct Fixture {
    pub uid: Id32,
    /// Every envelope the universe published, in order (held ones included).
    pub corpus: Vec<Vec<u8>>,
    /// Valid encoded sync messages of every variant.
    pub sync: Vec<Vec<u8>>,
    /// Committed store states of nodes 0, 1 and 2 (node 1's before `held`).
    pub bases: Vec<Store>,
    /// Envelopes published while node 1 was offline, in order.
    pub held: Vec<Vec<u8>>,
    /// The texts `held` delivers to node 1.
    pub held_texts: Vec<String>,
    /// Every send group's (epoch, fingerprint) once `held` is processed.
    pub fingerprints: BTreeMap<Id32, (u64, Vec<u8>)>,
    /// Driver time of the snapshots.
    pub now: u64,
}

/// The fixture, built once per process (a few hundred ms in release).
pub fn fixture() -> &'static Fixture {
    static FX: OnceLock<Fixture> = OnceLock::new();
    FX.get_or_init(build)
}

fn build() -> Fixture {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    for i in 0..3 {
        net.send(i, &uid, &format!("warm-up from {i}"));
        net.run();
    }
    // Leaf rotation everywhere: path commits, Update proposals, PSK imports.
    for i in 0..3 {
        net.update(i, &uid);
        net.run();
    }
    net.settle();
    // A signed rejoin request (and the re-adds it causes: Welcomes).
    let outs = net.node(2).request_rejoin(&uid).expect("rejoin request");
    net.absorb(2, outs);
    net.run();
    net.settle();
    for i in 0..3 {
        net.send(i, &uid, &format!("after rejoin from {i}"));
        net.run();
    }
    net.settle();
    // A KeyPackage request on the lobby, addressed to node 1.
    let mut req = Envelope::new(Kind::KeyPackageRequest, vec![]);
    req.sender = Some(net.member(0).to_string());
    req.to = Some(net.member(1).to_string());
    net.all_bytes.push(req.encode());
    for (i, r) in net.rejections.iter().enumerate() {
        assert!(r.is_empty(), "fixture: node {i} rejected {r:?}");
    }
    net.assert_consistent(&uid);

    // Node 1 misses the last messages.
    net.offline[1] = true;
    let mark = net.all_bytes.len();
    let held_texts = vec![
        "held: first from 0".to_string(),
        "held: from 2".to_string(),
        "held: second from 0".to_string(),
    ];
    net.send(0, &uid, &held_texts[0]);
    net.run();
    net.send(2, &uid, &held_texts[1]);
    net.run();
    net.send(0, &uid, &held_texts[2]);
    net.run();
    let held = net.all_bytes[mark..].to_vec();
    assert!(!held.is_empty());

    let mut fingerprints = BTreeMap::new();
    let groups: Vec<Id32> = net
        .node(0)
        .status(&uid)
        .expect("status")
        .groups
        .iter()
        .map(|g| g.group)
        .collect();
    for g in groups {
        let a = net.node(0).epoch_fingerprint(&g).expect("fingerprint");
        let b = net.node(2).epoch_fingerprint(&g).expect("fingerprint");
        assert_eq!(a, b, "fixture: nodes 0 and 2 disagree");
        fingerprints.insert(g, a);
    }

    let bases = (0..3)
        .map(|i| net.stores[i].snapshot().expect("snapshot"))
        .collect();
    let now = net.now;
    let mut fx = Fixture {
        uid,
        corpus: net.all_bytes.clone(),
        sync: vec![],
        bases,
        held,
        held_texts,
        fingerprints,
        now,
    };
    fx.sync = sync_seeds(&fx);
    fx
}

/// Valid sync messages of every kind, as peers of this universe send them.
fn sync_seeds(fx: &Fixture) -> Vec<Vec<u8>> {
    let server = fx.restore(0);
    let me = fx.restore(1);
    let sums = server.summaries();
    let mut out = vec![
        SyncMessage::Summary(sums.clone()).encode(),
        SyncMessage::Summaries(me.summaries()).encode(),
        SyncMessage::Summaries(vec![]).encode(),
        SyncMessage::Fetched(FetchResponse::default()).encode(),
    ];
    for s in &sums {
        for (g, _) in &s.heads {
            let req = FetchRequest::Range {
                universe: s.universe,
                group: *g,
                from: 0,
            };
            out.push(SyncMessage::Fetch(req.clone()).encode());
            if let Ok(resp) = server.serve_fetch(&req) {
                let mut small = resp.clone();
                small.envelopes.truncate(4);
                small.more = resp.envelopes.len() > 4 || resp.more;
                out.push(SyncMessage::Fetched(small).encode());
            }
        }
        let req = FetchRequest::Welcomes {
            universe: s.universe,
            member: identity(1).member_id(),
            groups: s.heads.iter().map(|(g, _)| *g).collect(),
        };
        out.push(SyncMessage::Fetch(req.clone()).encode());
        if let Ok(resp) = server.serve_fetch(&req) {
            out.push(SyncMessage::Fetched(resp).encode());
        }
    }
    out.push(
        SyncMessage::Fetched(FetchResponse {
            envelopes: vec![],
            oldest: Some(3),
            more: false,
            pruned: true,
        })
        .encode(),
    );
    out
}

impl Fixture {
    /// Node `i` as it was at the snapshot, on a private copy of its store.
    pub fn restore(&self, i: usize) -> Participant {
        let store = self.bases[i].snapshot().expect("snapshot");
        let (p, _) =
            Participant::open(identity(i), store, config(), self.now).expect("reopen participant");
        p
    }

    /// The fuzzed member: node 1, before the held messages.
    pub fn member(&self) -> Participant {
        self.restore(1)
    }

    /// The send groups of the universe.
    pub fn groups(&self) -> Vec<Id32> {
        self.fingerprints.keys().copied().collect()
    }

    /// After any input: the held messages still get through (in order, as
    /// gossip would bring them), the member ends in the very group states
    /// the others are in, and nothing was delivered that nobody sent.
    pub fn check_liveness(&self, p: &mut Participant) {
        for (i, h) in self.held.iter().enumerate() {
            match p.handle_incoming(h) {
                Ok(_) => {}
                Err(e) if e.is_duplicate() => {}
                Err(e) => panic!("held envelope {i} rejected after fuzz input: {e}"),
            }
        }
        let texts = logged_texts(p, &self.uid);
        for t in &self.held_texts {
            assert!(texts.contains(t), "held message {t:?} not delivered");
        }
        for t in &texts {
            assert!(
                t.starts_with("warm-up from ")
                    || t.starts_with("after rejoin from ")
                    || t.starts_with("held: "),
                "delivered a message nobody sent: {t:?}"
            );
        }
        for (g, fp) in &self.fingerprints {
            let got = p.epoch_fingerprint(g).expect("fingerprint");
            assert_eq!(&got, fp, "group {g:?} diverged after fuzz input");
        }
    }
}

// --------------------------------------------------------------- checkers --

fn check_error_text(e: &impl std::fmt::Display) {
    let s = e.to_string();
    assert!(!s.is_empty(), "empty error message");
    assert!(
        s.chars().count() <= MAX_ERROR_CHARS,
        "error message of {} chars: {}...",
        s.chars().count(),
        s.chars().take(120).collect::<String>()
    );
}

/// `Envelope::decode`: errors are typed and short; whatever it accepts obeys
/// the envelope's rules and re-encodes to an envelope that decodes to itself.
pub fn check_envelope(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
    let r = Envelope::decode(bytes);
    match &r {
        Ok(e) => {
            assert!(bytes.len() <= MAX_ENVELOPE_BYTES);
            if matches!(
                e.kind,
                Kind::Welcome | Kind::Commit | Kind::Application | Kind::Proposal
            ) {
                assert!(e.group.is_some() && e.universe.is_some(), "{e:?}");
            }
            if e.kind == Kind::Rejoin {
                assert!(e.universe.is_some());
            }
            assert!(e.deps.len() <= 4096 && e.proposals.len() <= 4096);
            let again = Envelope::decode(&e.encode()).expect("a re-encoded envelope decodes");
            assert_eq!(&again, e, "re-encoding changed the envelope");
        }
        Err(err) => {
            check_error_text(err);
            if bytes.len() > MAX_ENVELOPE_BYTES {
                assert_eq!(err, &EnvelopeError::TooLarge(bytes.len()));
            }
        }
    }
    r
}

/// `Participant::handle_incoming` on a member: a rejected input changes
/// nothing visible and is counted; an accepted one decodes and makes only
/// well-formed outputs.
pub fn check_incoming(p: &mut Participant, uid: &Id32, bytes: &[u8]) -> bool {
    let before = view(p, uid);
    let rejected = p.rejected_inputs();
    match p.handle_incoming(bytes) {
        Err(e) => {
            check_error_text(&e);
            assert!(
                e.is_rejection(),
                "hostile input blamed on our own state: {e}"
            );
            assert_eq!(view(p, uid), before, "rejected input ({e}) changed state");
            // Held (a send group we do not know) is not judged yet.
            let held = matches!(e, mmls_core::MmlsError::Held(_));
            let counted = if e.is_duplicate() || held { 0 } else { 1 };
            assert_eq!(
                p.rejected_inputs(),
                rejected + counted,
                "rejection of {e} not counted"
            );
            false
        }
        Ok(outs) => {
            assert!(
                Envelope::decode(bytes).is_ok(),
                "accepted an envelope that does not decode"
            );
            check_outputs(p, &outs);
            true
        }
    }
}

/// Outputs are what a driver can act on: envelopes we publish decode, and
/// fetches name a universe we are in.
pub fn check_outputs(p: &Participant, outs: &[Output]) {
    let ours = p.universes();
    for o in outs {
        match o {
            Output::Publish(pb) => {
                assert!(pb.bytes.len() <= MAX_ENVELOPE_BYTES);
                Envelope::decode(&pb.bytes).expect("our own publish decodes");
            }
            // A Welcomes fetch may name a universe we were invited to but
            // do not know yet; a range fetch only one we are in.
            Output::Fetch(FetchRequest::Range { universe, .. }) => {
                assert!(ours.contains(universe), "fetch for a foreign universe");
            }
            Output::Fetch(FetchRequest::Welcomes { .. }) => {}
            Output::Event(_) => {}
        }
    }
}

/// `Participant::serve_fetch` (read-only): answers stay within the limits
/// and, for ranges, are the contiguous run the request starts at.
pub fn check_serve(server: &Participant, req: &FetchRequest) {
    match server.serve_fetch(req) {
        Err(e) => {
            check_error_text(&e);
            assert!(e.is_rejection(), "a fetch request broke our store: {e}");
        }
        Ok(resp) => {
            assert!(resp.envelopes.len() <= MAX_FETCH_ENVELOPES);
            let size: usize = resp.envelopes.iter().map(|e| e.len()).sum();
            assert!(size <= MAX_FETCH_BYTES);
            if let FetchRequest::Range { group, from, .. } = req {
                for (i, b) in resp.envelopes.iter().enumerate() {
                    let e = Envelope::decode(b).expect("served envelope decodes");
                    assert_eq!(e.group, Some(*group));
                    assert_eq!(Some(e.seq), from.checked_add(i as u64), "not contiguous");
                }
            }
            // What we serve fits one sync message.
            let enc = SyncMessage::Fetched(resp).encode();
            assert!(
                SyncMessage::decode(&enc).is_ok(),
                "our own answer is refused"
            );
        }
    }
}

/// `Participant::plan_fetches`: only groups we are in and the peer is
/// ahead in, from our own position, plus at most one Welcomes request.
pub fn check_plan(p: &Participant, theirs: &SyncSummary) {
    let ours: BTreeMap<Id32, u64> = p
        .summaries()
        .into_iter()
        .filter(|s| s.universe == theirs.universe)
        .flat_map(|s| s.heads)
        .collect();
    let plan = p.plan_fetches(theirs);
    let mut welcomes = 0;
    for r in &plan {
        match r {
            FetchRequest::Range {
                universe,
                group,
                from,
            } => {
                assert_eq!(*universe, theirs.universe);
                let mine = ours
                    .get(group)
                    .expect("planned a fetch for a foreign group");
                assert!(from >= mine, "fetch from before our position");
                assert!(
                    theirs.heads.iter().any(|(g, n)| g == group && n > from),
                    "fetch of what the peer does not have"
                );
            }
            FetchRequest::Welcomes { universe, .. } => {
                assert_eq!(*universe, theirs.universe);
                welcomes += 1;
            }
        }
    }
    assert!(welcomes <= 1);
    assert!(plan.len() <= theirs.heads.len() + 1);
}

/// `SyncMessage::decode` (the request-response codec's parser): errors are
/// short; what it accepts re-encodes identically and is then served
/// (`serve_fetch`, `plan_fetches`) without breaking a rule. `Fetched`
/// answers go to `member` through `handle_fetch_response`. Returns false
/// if the member was (legitimately) sent into a rejoin by a "pruned" answer.
pub fn check_sync(
    bytes: &[u8],
    fx: &Fixture,
    server: &Participant,
    member: Option<&mut Participant>,
) -> bool {
    match SyncMessage::decode(bytes) {
        Err(e) => {
            check_error_text(&e);
            true
        }
        Ok(m) => {
            let enc = m.encode();
            let again = SyncMessage::decode(&enc).expect("a re-encoded sync message decodes");
            assert_eq!(again.encode(), enc, "re-encoding changed the sync message");
            match m {
                SyncMessage::Fetch(req) => {
                    check_serve(server, &req);
                    true
                }
                SyncMessage::Summary(s) | SyncMessage::Summaries(s) => {
                    for x in s.iter().take(64) {
                        check_plan(server, x);
                    }
                    true
                }
                SyncMessage::Fetched(resp) => match member {
                    Some(p) => {
                        let req = FetchRequest::Range {
                            universe: fx.uid,
                            group: fx.groups()[0],
                            from: 0,
                        };
                        check_fetch_response(fx, p, &req, resp)
                    }
                    None => true,
                },
                // Served by the agent (rate limit, typed refusals): its
                // own tests; here the codec round trip above is the check.
                SyncMessage::KeyPackageRequest(_) | SyncMessage::KeyPackages(_) => true,
            }
        }
    }
}

/// `Participant::handle_fetch_response` with an answer a peer made up.
/// Envelopes in it are judged one by one like gossip; a fake "pruned"
/// answer may legitimately send the member into a rejoin, otherwise the
/// universe must still work afterwards (checked by the caller with
/// `check_liveness` when this returns true).
pub fn check_fetch_response(
    fx: &Fixture,
    p: &mut Participant,
    req: &FetchRequest,
    resp: FetchResponse,
) -> bool {
    let pruned = resp.pruned;
    let before = view(p, &fx.uid);
    let outs = p.handle_fetch_response(req, resp);
    check_outputs(p, &outs);
    let fetches = outs
        .iter()
        .filter(|o| matches!(o, Output::Fetch(_)))
        .count();
    // At most: one follow-up for the range, plus gap fetches of groups.
    assert!(fetches <= 1 + fx.groups().len() * 2, "{fetches} fetches");
    let after = view(p, &fx.uid);
    // Nothing went backwards.
    for (g, e, n) in &before.groups {
        if let Some((_, e2, n2)) = after.groups.iter().find(|(g2, ..)| g2 == g) {
            assert!(e2 >= e && n2 >= n, "group {g:?} went backwards");
        }
    }
    !pruned
}

/// A few envelopes and sync messages that any seed corpus should hold:
/// one of each kind (the first seen), plus every held entry.
pub fn seed_envelopes(fx: &Fixture, all: bool) -> Vec<Vec<u8>> {
    if all {
        return fx.corpus.clone();
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = vec![];
    for b in &fx.corpus {
        if let Ok(e) = Envelope::decode(b) {
            let k = format!("{:?}/{}", e.kind, e.deps.is_empty());
            if seen.insert(k) {
                out.push(b.clone());
            }
        }
    }
    for h in &fx.held {
        if !out.contains(h) {
            out.push(h.clone());
        }
    }
    out
}

/// A made-up fetch answer around `envelopes`.
pub fn fake_response(
    envelopes: Vec<Vec<u8>>,
    oldest: Option<u64>,
    more: bool,
    pruned: bool,
) -> FetchResponse {
    FetchResponse {
        envelopes: envelopes.into_iter().map(ByteBuf::from).collect(),
        oldest,
        more,
        pruned,
    }
}
