//! Unit tests of the planning rule and of the sync agent's policy.

use super::*;
use crate::identity::Identity;
use crate::participant::KpRefusal;
use crate::participant::{Output, Participant};
use crate::testkit;
use crate::{Envelope, Kind, MemberId, Store};
use std::collections::{BTreeMap, BTreeSet};

#[test]
fn plans_only_what_the_peer_has_more_of() {
    let me = Identity::from_seed([1; 32]).member_id();
    let u = Id32([0; 32]);
    let (a, b, c) = (Id32([1; 32]), Id32([2; 32]), Id32([3; 32]));
    let ours = BTreeMap::from([(a, 5), (b, 9)]);
    let theirs = SyncSummary {
        universe: u,
        heads: vec![(a, 7), (b, 3), (c, 1)],
    };
    let p = plan(u, &ours, &theirs, &me);
    assert_eq!(
        p,
        vec![
            FetchRequest::Range {
                universe: u,
                group: a,
                from: 5
            },
            FetchRequest::Welcomes {
                universe: u,
                member: me,
                groups: vec![c],
            }
        ]
    );
}

const T0: u64 = 1_000;

fn participant(i: usize) -> Participant {
    let store = Store::in_memory().expect("store");
    let (p, _) =
        Participant::open(testkit::identity(i), store, testkit::config(), T0).expect("open");
    p
}

/// An agent of participant 0 with `peers` connected and its connection
/// actions drained.
fn agent(p: &Participant, peers: &[u32]) -> SyncAgent<u32> {
    let cfg = SyncConfig {
        round_interval_ms: None,
        ..SyncConfig::default()
    };
    let mut a = SyncAgent::new(p.me().clone(), cfg);
    for peer in peers {
        a.peer_connected(p, *peer, T0);
    }
    // The connection's summaries and pushes fail: not what is tested.
    for (_, id, _) in requests(&drain(&mut a)) {
        a.handle_failure(id, T0);
    }
    assert!(drain(&mut a).is_empty());
    assert_eq!(a.outstanding(), 0);
    a
}

fn drain(a: &mut SyncAgent<u32>) -> Vec<Action<u32>> {
    std::iter::from_fn(|| a.poll_action()).collect()
}

/// The requests among `actions`: (peer, id, message).
fn requests(actions: &[Action<u32>]) -> Vec<(u32, RequestId, SyncMessage)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Request { peer, id, msg } => Some((*peer, *id, msg.clone())),
            _ => None,
        })
        .collect()
}

fn range(from: u64) -> FetchRequest {
    FetchRequest::Range {
        universe: Id32([9; 32]),
        group: Id32([8; 32]),
        from,
    }
}

/// Asks `a` for a roaming (engine) fetch; returns where it went.
fn engine_fetch(a: &mut SyncAgent<u32>, req: &FetchRequest, now: u64) -> Vec<(u32, RequestId)> {
    a.handle_outputs(vec![Output::Fetch(req.clone())], None, now);
    requests(&drain(a))
        .into_iter()
        .map(|(peer, id, msg)| {
            assert_eq!(msg, SyncMessage::Fetch(req.clone()));
            (peer, id)
        })
        .collect()
}

#[test]
fn a_failed_fetch_is_retried_at_each_other_peer_once_then_given_up() {
    let p = participant(0);
    let mut a = agent(&p, &[1, 2, 3]);
    let req = range(4);
    let mut asked = vec![];
    let sent = engine_fetch(&mut a, &req, T0);
    assert_eq!(sent.len(), 1);
    let (mut peer, mut id) = sent[0];
    asked.push(peer);
    for _ in 0..2 {
        a.handle_failure(id, T0 + 10);
        let next = requests(&drain(&mut a));
        assert_eq!(next.len(), 1, "one retry per failure");
        assert_eq!(next[0].2, SyncMessage::Fetch(req.clone()));
        assert!(
            !asked.contains(&next[0].0),
            "retried at a peer already tried"
        );
        (peer, id) = (next[0].0, next[0].1);
        asked.push(peer);
    }
    a.handle_failure(id, T0 + 20);
    assert!(drain(&mut a).is_empty(), "every peer tried: give up");
    assert_eq!(a.outstanding(), 0);
    asked.sort();
    assert_eq!(asked, vec![1, 2, 3]);
    // Given up, it is not in flight any more: the engine may ask again.
    assert_eq!(engine_fetch(&mut a, &req, T0 + 30).len(), 1);
}

#[test]
fn a_timed_out_fetch_goes_to_another_peer() {
    let p = participant(0);
    let mut a = agent(&p, &[1, 2]);
    let timeout = a.config().request_timeout_ms;
    let req = range(0);
    let sent = engine_fetch(&mut a, &req, T0);
    assert_eq!(a.poll_timeout(), Some(T0 + timeout));
    a.handle_timeout(&p, T0 + timeout - 1);
    assert!(drain(&mut a).is_empty(), "retried before its timeout");
    a.handle_timeout(&p, T0 + timeout);
    let next = requests(&drain(&mut a));
    assert_eq!(next.len(), 1);
    assert_ne!(next[0].0, sent[0].0);
    assert_eq!(next[0].2, SyncMessage::Fetch(req));
    // The late answer of the first peer is not taken for the new request.
    let mut p = p;
    let late = a.handle_response(
        &mut p,
        sent[0].1,
        SyncMessage::Fetched(FetchResponse::default()),
        T0 + timeout + 1,
    );
    assert_eq!(late, Err(SyncError::UnknownRequest(sent[0].1)));
}

#[test]
fn an_identical_outstanding_fetch_is_not_sent_twice() {
    let mut p = participant(0);
    let mut a = agent(&p, &[1, 2]);
    let req = range(7);
    let sent = engine_fetch(&mut a, &req, T0);
    assert_eq!(sent.len(), 1);
    assert!(engine_fetch(&mut a, &req, T0 + 1).is_empty(), "sent twice");
    // A different start is a different request.
    assert_eq!(engine_fetch(&mut a, &range(8), T0 + 1).len(), 1);
    // Once answered, the same request may go again.
    let pruned = FetchResponse {
        pruned: true,
        ..FetchResponse::default()
    };
    a.handle_response(&mut p, sent[0].1, SyncMessage::Fetched(pruned), T0 + 2)
        .expect("answer");
    assert_eq!(engine_fetch(&mut a, &req, T0 + 3).len(), 1);
}

#[test]
fn an_empty_answer_moves_a_roaming_fetch_on_but_not_a_planned_one() {
    let mut p = participant(0);
    let mut a = agent(&p, &[1, 2]);
    let req = range(3);
    let sent = engine_fetch(&mut a, &req, T0);
    let empty = SyncMessage::Fetched(FetchResponse::default());
    a.handle_response(&mut p, sent[0].1, empty.clone(), T0 + 1)
        .expect("answer");
    let next = requests(&drain(&mut a));
    assert_eq!(next.len(), 1);
    assert_ne!(next[0].0, sent[0].0);
    // A fetch planned from a peer's answer stays with that peer.
    a.handle_response(&mut p, next[0].1, empty.clone(), T0 + 2)
        .expect("answer");
    assert!(drain(&mut a).is_empty(), "both peers tried");
    a.handle_outputs(vec![Output::Fetch(req.clone())], Some(&2), T0 + 3);
    let planned = requests(&drain(&mut a));
    assert_eq!(planned.len(), 1);
    assert_eq!(planned[0].0, 2);
    a.handle_response(&mut p, planned[0].1, empty, T0 + 4)
        .expect("answer");
    assert!(drain(&mut a).is_empty(), "a planned fetch roamed");
}

#[test]
fn a_roaming_fetch_prefers_a_peer_whose_summary_shows_it_has_the_entries() {
    let mut p = participant(0);
    let mut a = agent(&p, &[1, 2, 3]);
    let req = range(5);
    let FetchRequest::Range {
        universe, group, ..
    } = req.clone()
    else {
        unreachable!()
    };
    let theirs = vec![SyncSummary {
        universe,
        heads: vec![(group, 9)],
    }];
    a.handle_request(&mut p, &3, SyncMessage::Summary(theirs), T0);
    drain(&mut a);
    for i in 0..3 {
        let now = T0 + 1 + i;
        let sent = engine_fetch(&mut a, &req, now);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, 3, "not the peer that has it");
        a.handle_failure(sent[0].1, now);
        // Then the others, one after the other, then give up.
        let next = requests(&drain(&mut a));
        assert_eq!(next.len(), 1);
        assert_ne!(next[0].0, 3);
        a.handle_failure(next[0].1, now);
        let last = requests(&drain(&mut a));
        assert_eq!(last.len(), 1);
        assert!(![3, next[0].0].contains(&last[0].0));
        a.handle_failure(last[0].1, now);
        assert!(drain(&mut a).is_empty());
    }
}

#[test]
fn a_new_peer_gets_our_summary_our_key_package_and_those_we_relay() {
    let p = participant(0);
    let other = participant(1);
    let Output::Publish(kp) = other.announcement() else {
        panic!("announcement is a publish")
    };
    let mut a: SyncAgent<u32> = SyncAgent::new(p.me().clone(), SyncConfig::default());
    a.lobby_envelope(&kp.bytes, Some(&5), T0);
    assert!(drain(&mut a).is_empty());
    a.peer_connected(&p, 7, T0 + 1);
    let actions = drain(&mut a);
    let Output::Publish(ours) = p.announcement() else {
        panic!("announcement is a publish")
    };
    assert!(
        actions.contains(&Action::Publish(ours.clone())),
        "our announcement on the lobby"
    );
    let reqs = requests(&actions);
    assert!(reqs.iter().all(|(peer, _, _)| *peer == 7));
    let pushed: Vec<Vec<u8>> = reqs
        .iter()
        .filter_map(|(_, _, m)| match m {
            SyncMessage::Fetched(r) => Some(r.envelopes.iter().map(|e| e.to_vec()).collect()),
            _ => None,
        })
        .next()
        .expect("a push of KeyPackages");
    assert_eq!(pushed, vec![ours.bytes, kp.bytes]);
    assert!(
        reqs.iter()
            .any(|(_, _, m)| *m == SyncMessage::Summary(p.summaries())),
        "our summary"
    );
    // A second connection of the same peer only re-syncs.
    a.peer_connected(&p, 7, T0 + 2);
    let again = requests(&drain(&mut a));
    assert_eq!(again.len(), 1);
    assert!(matches!(again[0].2, SyncMessage::Summary(_)));
}

#[test]
fn a_request_for_a_key_package_we_relay_is_answered_to_the_neighbour_that_relayed_it() {
    let p = participant(0);
    let other = participant(1);
    let Output::Publish(kp) = other.announcement() else {
        panic!("announcement is a publish")
    };
    let mut a = agent(&p, &[4]);
    a.lobby_envelope(&kp.bytes, None, T0);
    let ask =
        key_package_request(&testkit::identity(2).member_id(), other.me().as_str(), T0).encode();
    a.lobby_envelope(&ask, Some(&4), T0 + 1);
    let reqs = requests(&drain(&mut a));
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].0, 4);
    let SyncMessage::Fetched(r) = &reqs[0].2 else {
        panic!("not a push: {:?}", reqs[0].2)
    };
    assert_eq!(r.envelopes.len(), 1);
    assert_eq!(r.envelopes[0].as_slice(), kp.bytes.as_slice());
    // A request for someone we hold nothing of, or for us, is left alone.
    let ask = key_package_request(other.me(), testkit::identity(3).member_id().as_str(), T0);
    a.lobby_envelope(&ask.encode(), Some(&4), T0 + 2);
    let ask = key_package_request(other.me(), p.me().as_str(), T0);
    a.lobby_envelope(&ask.encode(), Some(&4), T0 + 2);
    assert!(drain(&mut a).is_empty());
}

#[test]
fn the_key_package_cache_is_bounded_and_skips_our_own() {
    let p = participant(0);
    let cfg = SyncConfig {
        kp_cache: 2,
        ..SyncConfig::default()
    };
    let mut relay = super::key_packages::KeyPackageRelay::new(cfg.kp_cache);
    let Output::Publish(own) = p.announcement() else {
        panic!()
    };
    relay.observe(p.me(), &own.bytes);
    assert_eq!(relay.len(), 0);
    for i in 1..5 {
        let Output::Publish(kp) = participant(i).announcement() else {
            panic!()
        };
        relay.observe(p.me(), &kp.bytes);
        relay.observe(p.me(), &kp.bytes);
    }
    assert_eq!(relay.len(), 2);
}

#[test]
fn a_missing_key_package_is_asked_for_once_per_interval() {
    let p = participant(0);
    let mut a = agent(&p, &[1]);
    let every = a.config().kp_ask_ms;
    let who = testkit::identity(3).member_id();
    a.missing_key_package(who.as_str(), T0);
    a.missing_key_package(who.as_str(), T0 + every - 1);
    // One request-response request to a peer (the only one: a neighbour
    // that may hold it) and one on the lobby (for a target hops away).
    let acts = drain(&mut a);
    assert_eq!(acts.len(), 2, "{acts:?}");
    let Action::Request {
        peer: 1,
        msg: SyncMessage::KeyPackageRequest(r),
        ..
    } = &acts[0]
    else {
        panic!("not a KeyPackage request: {:?}", acts[0])
    };
    assert_eq!(r.target, who.as_str());
    assert_eq!(&r.requester, p.me());
    assert_eq!(r.ciphersuites, Participant::ciphersuites());
    let Action::Publish(pb) = &acts[1] else {
        panic!("not a publish")
    };
    let env = Envelope::decode(&pb.bytes).expect("envelope");
    assert_eq!(env.kind, Kind::KeyPackageRequest);
    assert_eq!(env.to.as_deref(), Some(who.as_str()));
    assert_eq!(env.sender.as_deref(), Some(p.me().as_str()));
    a.missing_key_package(who.as_str(), T0 + every);
    assert_eq!(drain(&mut a).len(), 2);
}

#[test]
fn a_summary_of_a_universe_we_are_not_in_polls_for_welcomes_addressed_to_us() {
    let mut p = participant(0);
    let mut a = agent(&p, &[1, 2]);
    let poll = a.config().welcome_poll_ms;
    let u = Id32([5; 32]);
    let theirs = vec![SyncSummary {
        universe: u,
        heads: vec![(Id32([6; 32]), 3)],
    }];
    let welcomes = SyncMessage::Fetch(FetchRequest::Welcomes {
        universe: u,
        member: p.me().clone(),
        groups: vec![],
    });
    let answer = a.handle_request(&mut p, &1, SyncMessage::Summary(theirs.clone()), T0);
    assert_eq!(answer, SyncMessage::Summaries(p.summaries()));
    let reqs = requests(&drain(&mut a));
    assert_eq!(reqs.len(), 1);
    assert_eq!((reqs[0].0, &reqs[0].2), (1, &welcomes));
    // Nothing came; not again before the poll interval, from anyone.
    a.handle_response(
        &mut p,
        reqs[0].1,
        SyncMessage::Fetched(FetchResponse::default()),
        T0 + 1,
    )
    .expect("answer");
    drain(&mut a);
    a.handle_request(&mut p, &2, SyncMessage::Summary(theirs.clone()), T0 + 2);
    assert!(requests(&drain(&mut a)).is_empty(), "polled too often");
    a.handle_request(&mut p, &2, SyncMessage::Summaries(theirs), T0 + poll);
    let reqs = requests(&drain(&mut a));
    assert_eq!(reqs.len(), 1);
    assert_eq!((reqs[0].0, &reqs[0].2), (2, &welcomes));
}

#[test]
fn a_disconnected_peer_fails_its_requests_and_roaming_ones_move_on() {
    let p = participant(0);
    let mut a = agent(&p, &[1, 2]);
    let req = range(1);
    let sent = engine_fetch(&mut a, &req, T0);
    a.send_summary(&p, sent[0].0, T0);
    drain(&mut a);
    assert_eq!(a.outstanding(), 2);
    a.peer_disconnected(&sent[0].0, T0 + 1);
    assert!(!a.is_connected(&sent[0].0));
    let next = requests(&drain(&mut a));
    assert_eq!(next.len(), 1);
    assert_ne!(next[0].0, sent[0].0);
    assert_eq!(a.outstanding(), 1);
    // No peer left: an engine fetch waits for the engine's next retry.
    a.peer_disconnected(&next[0].0, T0 + 2);
    assert!(drain(&mut a).is_empty());
    assert!(engine_fetch(&mut a, &req, T0 + 3).is_empty());
    assert_eq!(a.outstanding(), 0);
}

#[test]
fn the_wrong_answer_kind_is_an_error_and_a_roaming_fetch_moves_on() {
    let mut p = participant(0);
    let mut a = agent(&p, &[1, 2]);
    let sent = engine_fetch(&mut a, &range(2), T0);
    let r = a.handle_response(&mut p, sent[0].1, SyncMessage::Summaries(vec![]), T0 + 1);
    assert_eq!(
        r,
        Err(SyncError::UnexpectedAnswer {
            asked: "fetch",
            got: "summaries"
        })
    );
    assert_eq!(requests(&drain(&mut a)).len(), 1);
}

/// The whole conversation between two real participants: a member that
/// missed its Welcome (offline when it went round) joins by sync alone.
#[test]
fn a_member_that_missed_its_welcome_joins_through_the_agents() {
    let mut net = testkit::Net::new(2);
    net.offline[1] = true;
    let uid = net.universe(crate::Profile::Mmls00);
    assert!(!net.node(1).universes().contains(&uid));
    net.offline[1] = false;
    net.settle();
    assert!(net.node(1).universes().contains(&uid), "not joined by sync");
    net.send(0, &uid, "hello");
    net.run();
    assert_eq!(net.texts(1), vec!["hello".to_string()]);
}

#[test]
fn welcomes_in_flight_at_one_peer_are_still_asked_of_another_but_a_range_is_not() {
    let p = participant(0);
    let mut a = agent(&p, &[1, 2]);
    let welcomes = FetchRequest::Welcomes {
        universe: Id32([5; 32]),
        member: p.me().clone(),
        groups: vec![],
    };
    let ask = |a: &mut SyncAgent<u32>, req: &FetchRequest, from: Option<u32>| {
        a.handle_outputs(vec![Output::Fetch(req.clone())], from.as_ref(), T0);
        requests(&drain(a))
            .into_iter()
            .map(|(peer, _, _)| peer)
            .collect::<Vec<u32>>()
    };
    // Each peer holds its own Welcomes.
    assert_eq!(ask(&mut a, &welcomes, Some(1)), vec![1]);
    assert_eq!(ask(&mut a, &welcomes, Some(2)), vec![2]);
    assert!(ask(&mut a, &welcomes, Some(1)).is_empty(), "asked twice");
    assert!(ask(&mut a, &welcomes, None).is_empty(), "asked twice");
    // Any holder answers a range the same.
    assert_eq!(ask(&mut a, &range(0), Some(1)), vec![1]);
    assert!(ask(&mut a, &range(0), Some(2)).is_empty(), "asked twice");
}

#[test]
fn welcomes_that_add_us_to_nothing_start_no_new_summary_round() {
    // Otherwise two peers ping-pong summaries and Welcome fetches forever.
    let mut p = participant(0);
    let mut a = agent(&p, &[1]);
    let welcomes = FetchRequest::Welcomes {
        universe: Id32([5; 32]),
        member: p.me().clone(),
        groups: vec![],
    };
    a.handle_outputs(vec![Output::Fetch(welcomes)], Some(&1), T0);
    let sent = requests(&drain(&mut a));
    let Output::Publish(kp) = participant(1).announcement() else {
        panic!("announcement is a publish")
    };
    let answer = FetchResponse {
        envelopes: vec![serde_bytes::ByteBuf::from(kp.bytes)],
        ..FetchResponse::default()
    };
    a.handle_response(&mut p, sent[0].1, SyncMessage::Fetched(answer), T0 + 1)
        .expect("answer");
    let after = requests(&drain(&mut a));
    assert!(
        !after
            .iter()
            .any(|(_, _, m)| matches!(m, SyncMessage::Summary(_))),
        "{after:?}"
    );
}

/// A KeyPackage request of `requester` for `target`.
fn kp_request(target: &MemberId, requester: &MemberId) -> SyncMessage {
    SyncMessage::KeyPackageRequest(KpRequest {
        target: target.to_string(),
        requester: requester.clone(),
        ciphersuites: vec![u16::from(crate::DEFAULT_CIPHERSUITE)],
    })
}

#[test]
fn a_connected_target_is_asked_directly_and_not_on_the_lobby() {
    let p = participant(0);
    let mut a = agent(&p, &[1, 2]);
    let target = testkit::identity(2).member_id();
    a.peer_identified(2, target.clone());
    a.missing_key_package(target.as_str(), T0);
    let acts = drain(&mut a);
    assert_eq!(acts.len(), 1, "{acts:?}");
    assert!(matches!(
        &acts[0],
        Action::Request { peer: 2, msg: SyncMessage::KeyPackageRequest(r), .. } if r.target == target.as_str()
    ));
}

#[test]
fn the_target_hands_a_key_package_for_the_requester_alone() {
    let mut p = participant(0);
    let mut a = agent(&p, &[1]);
    let requester = testkit::identity(1).member_id();
    a.peer_identified(1, requester.clone());
    let me = p.me().clone();
    let SyncMessage::KeyPackages(KpResponse::KeyPackages(envs)) =
        a.handle_request(&mut p, &1, kp_request(&me, &requester), T0)
    else {
        panic!("no KeyPackages")
    };
    assert_eq!(envs.len(), 1);
    let env = Envelope::decode(&envs[0]).expect("envelope");
    assert_eq!(env.kind, Kind::KeyPackage);
    assert_eq!(env.to.as_deref(), Some(requester.as_str()));
    me.verify(
        &crate::participant::handed_signed_bytes(requester.as_str(), &env.body),
        env.sig.as_deref().expect("signed"),
    )
    .expect("the addressee is signed by the target");
    assert_eq!(p.key_package_pool().issued, 1);
    // The requester takes it.
    let mut r = participant(1);
    r.handle_incoming(&envs[0]).expect("handed KeyPackage");
    assert_eq!(r.key_package_pool().handed_to_us, vec![me]);
}

#[test]
fn key_package_requests_are_refused_with_a_reason() {
    let mut p = participant(0);
    let mut a = agent(&p, &[1, 2]);
    let one = testkit::identity(1).member_id();
    a.peer_identified(1, one.clone());
    let me = p.me().clone();
    let stranger = testkit::identity(7).member_id();
    let refused = |m: SyncMessage| match m {
        SyncMessage::KeyPackages(KpResponse::Refused(r)) => r,
        other => panic!("not refused: {other:?}"),
    };
    // Nobody we know.
    let r = refused(a.handle_request(&mut p, &1, kp_request(&stranger, &one), T0));
    assert_eq!(r, KpRefusal::Unknown(stranger.to_string()));
    // Peer 1 asking in someone else's name.
    let r = refused(a.handle_request(&mut p, &1, kp_request(&me, &stranger), T0));
    assert_eq!(r, KpRefusal::WrongRequester);
    // No common ciphersuite.
    let msg = SyncMessage::KeyPackageRequest(KpRequest {
        target: me.to_string(),
        requester: one.clone(),
        ciphersuites: vec![0x0007],
    });
    let r = refused(a.handle_request(&mut p, &1, msg, T0));
    assert!(matches!(r, KpRefusal::NoCommonSuite { .. }), "{r:?}");
    assert_eq!(p.key_package_pool().issued, 0, "nothing handed out");

    // For a member we hold a published KeyPackage of, we answer with it.
    let Output::Publish(theirs) = participant(3).announcement() else {
        panic!()
    };
    p.handle_incoming(&theirs.bytes).expect("announcement");
    let three = testkit::identity(3).member_id();
    let SyncMessage::KeyPackages(KpResponse::KeyPackages(envs)) = a.handle_request(
        &mut p,
        &2,
        kp_request(&three, &testkit::identity(2).member_id()),
        T0,
    ) else {
        panic!("no published KeyPackage")
    };
    let env = Envelope::decode(&envs[0]).expect("envelope");
    assert_eq!(env.sender.as_deref(), Some(three.as_str()));
    assert_eq!(env.to, None, "published, not handed");
    assert_eq!(env.body, Envelope::decode(&theirs.bytes).unwrap().body);
}

#[test]
fn a_request_for_a_user_gets_one_key_package_per_device_with_its_link() {
    let alice = crate::devices::UserKey::generate();
    let mut p = participant(0);
    let mut phone = participant(3);
    let link = |q: &mut Participant, i: usize| {
        q.publish_device_link(alice.link(&testkit::identity(i), T0))
            .expect("link")
    };
    link(&mut p, 0);
    // The phone's link and KeyPackage, as the lobby brings them.
    for o in link(&mut phone, 3)
        .into_iter()
        .chain(std::iter::once(phone.announcement()))
    {
        if let Output::Publish(pb) = o {
            p.handle_incoming(&pb.bytes).expect("lobby envelope");
        }
    }
    let mut a = agent(&p, &[1]);
    let requester = testkit::identity(1).member_id();
    a.peer_identified(1, requester.clone());
    let msg = SyncMessage::KeyPackageRequest(KpRequest {
        target: alice.user_id(),
        requester: requester.clone(),
        ciphersuites: vec![u16::from(crate::DEFAULT_CIPHERSUITE)],
    });
    let SyncMessage::KeyPackages(KpResponse::KeyPackages(envs)) =
        a.handle_request(&mut p, &1, msg, T0)
    else {
        panic!("no KeyPackages for the user")
    };
    let kinds: Vec<(Kind, Option<String>, Option<String>)> = envs
        .iter()
        .map(|b| {
            let e = Envelope::decode(b).expect("envelope");
            (e.kind, e.sender, e.to)
        })
        .collect();
    assert_eq!(kinds.iter().filter(|k| k.0 == Kind::DeviceLink).count(), 2);
    // Ours handed to the requester alone; the phone's as it published it.
    assert!(kinds.contains(&(
        Kind::KeyPackage,
        Some(p.me().to_string()),
        Some(requester.to_string())
    )));
    assert!(kinds.contains(&(Kind::KeyPackage, Some(phone.me().to_string()), None)));
    // The requester learns both devices of the user and can add them.
    let mut r = participant(1);
    for e in &envs {
        r.handle_incoming(e).expect("answer entry");
    }
    let mut devs = r.devices_of(&alice.user_id());
    devs.sort();
    let mut want = vec![p.me().clone(), phone.me().clone()];
    want.sort();
    assert_eq!(devs, want);
    assert_eq!(r.key_package_pool().handed_to_us, vec![p.me().clone()]);
    // A user nobody linked: refused as unknown.
    let stranger = crate::devices::UserKey::generate().user_id();
    let msg = SyncMessage::KeyPackageRequest(KpRequest {
        target: stranger.clone(),
        requester,
        ciphersuites: vec![u16::from(crate::DEFAULT_CIPHERSUITE)],
    });
    assert!(matches!(
        a.handle_request(&mut p, &1, msg, T0),
        SyncMessage::KeyPackages(KpResponse::Refused(KpRefusal::Unknown(u))) if u == stranger
    ));
}

#[test]
fn a_flood_of_key_package_requests_is_rate_limited_per_peer() {
    let mut p = participant(0);
    let mut a = agent(&p, &[1, 2]);
    let (burst, per_min) = (a.config().kp_serve_burst, a.config().kp_serve_per_min);
    let me = p.me().clone();
    // Peer 1 floods, in as many requesters' names (it is not identified).
    let mut granted = 0;
    let mut limited = 0;
    for i in 0..1000u32 {
        let name = testkit::identity(100 + i as usize).member_id();
        match a.handle_request(&mut p, &1, kp_request(&me, &name), T0) {
            SyncMessage::KeyPackages(KpResponse::KeyPackages(_)) => granted += 1,
            SyncMessage::KeyPackages(KpResponse::Refused(KpRefusal::RateLimited)) => limited += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(granted, burst);
    assert_eq!(limited, 1000 - burst);
    // What the flood cost us: `burst` KeyPackages at most.
    assert!(p.key_package_pool().issued as u64 <= burst);
    // Another peer is served meanwhile.
    let two = testkit::identity(2).member_id();
    assert!(matches!(
        a.handle_request(&mut p, &2, kp_request(&me, &two), T0),
        SyncMessage::KeyPackages(KpResponse::KeyPackages(_))
    ));
    // A minute on, peer 1 has its burst again (not more).
    let later = T0 + 60_000;
    let mut again = 0;
    for i in 0..100u32 {
        let name = testkit::identity(2000 + i as usize).member_id();
        if let SyncMessage::KeyPackages(KpResponse::KeyPackages(_)) =
            a.handle_request(&mut p, &1, kp_request(&me, &name), later)
        {
            again += 1;
        }
    }
    assert_eq!(again, burst.min(per_min));
}

#[test]
fn the_agent_runs_its_own_summary_rounds() {
    let p = participant(0);
    let every = 5_000;
    let cfg = SyncConfig {
        round_interval_ms: Some(every),
        ..SyncConfig::default()
    };
    let mut a = SyncAgent::new(p.me().clone(), cfg);
    a.start_rounds(T0 + 100);
    assert_eq!(a.poll_timeout(), Some(T0 + 100));
    // No peer yet: the round is due but asks nobody.
    a.handle_timeout(&p, T0 + 100);
    assert!(drain(&mut a).is_empty());
    assert_eq!(a.poll_timeout(), Some(T0 + 100 + every));
    for peer in [1, 2] {
        a.peer_connected(&p, peer, T0 + 200);
    }
    for (_, id, _) in requests(&drain(&mut a)) {
        a.handle_failure(id, T0 + 200);
    }
    a.handle_timeout(&p, T0 + 100 + every - 1);
    assert!(drain(&mut a).is_empty(), "a round before it was due");
    a.handle_timeout(&p, T0 + 100 + every);
    let round = requests(&drain(&mut a));
    let mut to: Vec<u32> = round.iter().map(|r| r.0).collect();
    to.sort();
    assert_eq!(to, vec![1, 2], "one summary to each connected peer");
    assert!(round.iter().all(|r| matches!(r.2, SyncMessage::Summary(_))));
    // The next round is one interval later, not at once again.
    a.handle_timeout(&p, T0 + 100 + every + 1);
    assert!(requests(&drain(&mut a)).is_empty());
}

#[test]
fn without_an_interval_rounds_are_the_drivers() {
    let p = participant(0);
    let mut a = agent(&p, &[1]);
    assert_eq!(a.poll_timeout(), None);
    a.handle_timeout(&p, T0 + 3_600_000);
    assert!(drain(&mut a).is_empty());
}

/// The summaries `actions` send, by peer.
fn summaries_to(actions: &[Action<u32>]) -> Vec<u32> {
    requests(actions)
        .into_iter()
        .filter(|(_, _, m)| matches!(m, SyncMessage::Summary(_)))
        .map(|(peer, _, _)| peer)
        .collect()
}

#[test]
fn an_unchanged_summary_is_not_repeated_until_the_quiet_interval() {
    let mut p = participant(0);
    let mut a = agent(&p, &[1, 2]);
    // The connection's summaries failed (see `agent`): both are due.
    a.sync_all(&p, T0 + 5_000);
    let first = requests(&drain(&mut a));
    assert_eq!(summaries_to(&drain_again(&first)), vec![1, 2]);
    // Peer 1 answers; peer 2's request fails.
    for (peer, id, _) in &first {
        if *peer == 1 {
            a.handle_response(&mut p, *id, SyncMessage::Summaries(vec![]), T0 + 5_100)
                .expect("answer");
        } else {
            a.handle_failure(*id, T0 + 5_100);
        }
    }
    drain(&mut a);
    // Nothing changed: peer 1 is not told again; peer 2 (whose request
    // failed) is.
    a.sync_all(&p, T0 + 10_000);
    assert_eq!(summaries_to(&drain(&mut a)), vec![2]);
    // After the quiet interval, peer 1 again.
    let quiet = SyncConfig::default().quiet_round_ms;
    a.sync_all(&p, T0 + 5_000 + quiet);
    assert!(summaries_to(&drain(&mut a)).contains(&1));
    // A reconnect always sends.
    a.peer_disconnected(&1, T0 + quiet + 6_000);
    a.peer_connected(&p, 1, T0 + quiet + 6_001);
    assert_eq!(summaries_to(&drain(&mut a)), vec![1]);
}

#[test]
fn a_reconnect_does_not_push_the_same_key_packages_again() {
    let p = participant(0);
    let mut a = agent(&p, &[]);
    a.peer_connected(&p, 1, T0);
    let pushes = |acts: &[Action<u32>]| {
        requests(acts)
            .into_iter()
            .filter(|(_, _, m)| matches!(m, SyncMessage::Fetched(_)))
            .count()
    };
    let publishes = |acts: &[Action<u32>]| {
        acts.iter()
            .filter(|x| matches!(x, Action::Publish(_)))
            .count()
    };
    let first = drain(&mut a);
    assert_eq!(pushes(&first), 1, "{first:?}");
    assert!(publishes(&first) >= 1, "our announcement on the lobby");
    a.peer_disconnected(&1, T0 + 1_000);
    a.peer_connected(&p, 1, T0 + 2_000);
    let again = drain(&mut a);
    assert_eq!(pushes(&again), 0, "pushed again: {again:?}");
    assert_eq!(publishes(&again), 0, "announced again: {again:?}");
    assert_eq!(summaries_to(&again), vec![1]);
    // A new peer gets the push, not a second lobby announcement.
    a.peer_connected(&p, 2, T0 + 3_000);
    let other = drain(&mut a);
    assert_eq!(pushes(&other), 1);
    assert_eq!(publishes(&other), 0);
}

fn drain_again(reqs: &[(u32, RequestId, SyncMessage)]) -> Vec<Action<u32>> {
    reqs.iter()
        .map(|(peer, id, msg)| Action::Request {
            peer: *peer,
            id: *id,
            msg: msg.clone(),
        })
        .collect()
}

// ------------------------------------------- bounds (issue 29, hostile) --

/// A made-up universe (or group) id from a number.
fn made_up(tag: u8, i: u32) -> Id32 {
    let mut b = [tag; 32];
    b[..4].copy_from_slice(&i.to_be_bytes());
    Id32(b)
}

/// Summaries of `n` universes nobody we know is in, from `from` on.
fn junk_summaries(from: u32, n: u32) -> Vec<SyncSummary> {
    (from..from + n)
        .map(|i| SyncSummary {
            universe: made_up(0xee, i),
            heads: vec![(made_up(0xdd, i), 1)],
        })
        .collect()
}

/// The universe a Welcome poll is for, if `msg` is one.
fn polled(msg: &SyncMessage) -> Option<Id32> {
    match msg {
        SyncMessage::Fetch(FetchRequest::Welcomes {
            universe, groups, ..
        }) if groups.is_empty() => Some(*universe),
        _ => None,
    }
}

/// Answers every request of `a` (and those the answers release) with an
/// empty fetch answer; returns the Welcome polls among them.
fn answer_all(a: &mut SyncAgent<u32>, p: &mut Participant, now: u64) -> Vec<(u32, Id32)> {
    let mut polls = vec![];
    loop {
        let reqs = requests(&drain(a));
        if reqs.is_empty() {
            return polls;
        }
        for (peer, id, msg) in reqs {
            polls.extend(polled(&msg).map(|u| (peer, u)));
            let _ = a.handle_response(p, id, SyncMessage::Fetched(FetchResponse::default()), now);
        }
    }
}

#[test]
fn one_peer_starts_at_most_eight_welcome_polls_and_cannot_crowd_out_another() {
    let mut p = participant(0);
    let mut a = agent(&p, &[1, 2]);
    let per_peer = 8;
    // One summary naming 1,024 made-up universes (what `max_summaries`
    // lets through): eight polls, not 1,024 requests.
    a.handle_request(
        &mut p,
        &1,
        SyncMessage::Summary(junk_summaries(0, 1024)),
        T0,
    );
    let sent = requests(&drain(&mut a));
    assert!(sent
        .iter()
        .all(|(peer, _, m)| *peer == 1 && polled(m).is_some()));
    assert_eq!(a.outstanding(), per_peer, "polls started by one summary");
    // More made-up universes while those are unanswered start nothing.
    a.handle_request(
        &mut p,
        &1,
        SyncMessage::Summaries(junk_summaries(5_000, 1024)),
        T0 + 1,
    );
    assert!(requests(&drain(&mut a)).is_empty());
    assert_eq!(a.outstanding(), per_peer);
    // An honest peer's universe is polled all the same.
    let real = made_up(0x01, 7);
    let honest = vec![SyncSummary {
        universe: real,
        heads: vec![(made_up(0x02, 7), 4)],
    }];
    a.handle_request(&mut p, &2, SyncMessage::Summary(honest), T0 + 2);
    let polls: Vec<(u32, Option<Id32>)> = requests(&drain(&mut a))
        .iter()
        .map(|(peer, _, m)| (*peer, polled(m)))
        .collect();
    assert_eq!(polls, vec![(2, Some(real))]);
    // Answered, the first four let the four waiting ones go.
    for (_, id, _) in &sent {
        a.handle_response(
            &mut p,
            *id,
            SyncMessage::Fetched(FetchResponse::default()),
            T0 + 3,
        )
        .expect("answer");
    }
    assert_eq!(
        answer_all(&mut a, &mut p, T0 + 3).len(),
        per_peer - sent.len()
    );
    // A peer that answers at once and sends new universes every time:
    // eight polls per summary, and the record of them stays bounded.
    for round in 0..100u32 {
        a.handle_request(
            &mut p,
            &1,
            SyncMessage::Summary(junk_summaries(10_000 + round * 1024, 1024)),
            T0 + 4,
        );
        let polls = answer_all(&mut a, &mut p, T0 + 4);
        assert_eq!(polls.len(), per_peer);
    }
    assert!(
        a.remembered_polls() <= 256,
        "{} poll times kept",
        a.remembered_polls()
    );
}

#[test]
fn welcome_polls_take_turns_among_a_peers_universes() {
    // An honest peer in 20 universes we are not in (we were added to the
    // last one): each summary polls the ones polled longest ago, so every
    // universe is polled within three summaries.
    let mut p = participant(0);
    let mut a = agent(&p, &[1]);
    let theirs = junk_summaries(0, 20);
    let mut polled_once = BTreeSet::new();
    for k in 0..3u64 {
        a.handle_request(&mut p, &1, SyncMessage::Summary(theirs.clone()), T0 + k);
        for (_, u) in answer_all(&mut a, &mut p, T0 + k) {
            assert!(polled_once.insert(u), "polled again before the others");
        }
    }
    assert_eq!(polled_once.len(), 20);
}

#[test]
fn requests_to_one_peer_wait_while_four_are_in_flight() {
    let mut p = participant(0);
    let mut a = agent(&p, &[1]);
    let cap = a.config().max_inflight_per_peer;
    assert_eq!(cap, 4);
    let outs = (0..10).map(|i| Output::Fetch(range(i))).collect();
    a.handle_outputs(outs, None, T0);
    let sent = requests(&drain(&mut a));
    assert_eq!(sent.len(), cap, "sent at once");
    assert_eq!(a.outstanding(), 10);
    // One answered, one failed: two more go out, oldest first.
    a.handle_response(
        &mut p,
        sent[0].1,
        SyncMessage::Fetched(FetchResponse::default()),
        T0 + 1,
    )
    .expect("answer");
    a.handle_failure(sent[1].1, T0 + 1);
    let next = requests(&drain(&mut a));
    let msgs: Vec<SyncMessage> = next.iter().map(|r| r.2.clone()).collect();
    assert_eq!(
        msgs,
        vec![SyncMessage::Fetch(range(4)), SyncMessage::Fetch(range(5))]
    );
    // A waiting request has not been sent: it cannot time out nor be
    // answered, and its timeout counts from when it is sent.
    let timeout = a.config().request_timeout_ms;
    assert_eq!(a.poll_timeout(), Some(T0 + timeout));
    a.handle_timeout(&p, T0 + timeout);
    let after = requests(&drain(&mut a));
    assert_eq!(
        after.len(),
        2,
        "the two sent at T0 timed out, two waiting went"
    );
    assert_eq!(a.poll_timeout(), Some(T0 + 1 + timeout));
    // The peer goes: everything of it fails, nothing is sent to it.
    a.peer_disconnected(&1, T0 + timeout + 1);
    assert!(requests(&drain(&mut a)).is_empty());
    assert_eq!(a.outstanding(), 0);
}

#[test]
fn sync_messages_over_one_mebibyte_are_refused() {
    assert_eq!(MAX_FRAME_BYTES, 1 << 20);
    let big = SyncMessage::Fetched(FetchResponse {
        envelopes: vec![ByteBuf::from(vec![7u8; 1 << 20])],
        ..FetchResponse::default()
    })
    .encode();
    assert!(big.len() > 1 << 20 && big.len() < 2 << 20);
    let err = SyncMessage::decode(&big).expect_err("a frame over 1 MiB");
    assert!(err.contains("too large"), "{err}");
    // An envelope at its limit still fits a frame alone.
    let max = SyncMessage::Fetched(FetchResponse {
        envelopes: vec![ByteBuf::from(vec![
            7u8;
            crate::envelope::MAX_ENVELOPE_BYTES
        ])],
        oldest: Some(u64::MAX),
        more: true,
        pruned: true,
    })
    .encode();
    assert!(max.len() <= MAX_FRAME_BYTES);
    SyncMessage::decode(&max).expect("fits");
}

#[test]
fn what_we_send_is_cut_to_fit_a_frame() {
    let fits = |m: &SyncMessage| {
        let b = m.encode();
        assert!(b.len() <= MAX_FRAME_BYTES, "{} bytes", b.len());
        assert_eq!(&SyncMessage::decode(&b).expect("decodes"), m);
    };
    // A fetch answer of three 600 KiB envelopes: the first, and `more`.
    let env = |i: u8| ByteBuf::from(vec![i; 600 << 10]);
    let m = SyncMessage::Fetched(FetchResponse {
        envelopes: vec![env(1), env(2), env(3)],
        ..FetchResponse::default()
    })
    .fit();
    fits(&m);
    let SyncMessage::Fetched(r) = &m else {
        panic!("{}", m.kind())
    };
    assert_eq!((r.envelopes.len(), r.envelopes[0][0], r.more), (1, 1, true));
    // The most envelopes an answer holds, as large as they fit.
    let many = vec![ByteBuf::from(vec![9u8; MAX_FETCH_BYTES / MAX_FETCH_ENVELOPES]); 256];
    let m = SyncMessage::Fetched(FetchResponse {
        envelopes: many.clone(),
        oldest: Some(u64::MAX),
        more: false,
        pruned: true,
    })
    .fit();
    fits(&m);
    assert!(matches!(&m, SyncMessage::Fetched(r) if r.envelopes.len() == 256 && !r.more));
    // KeyPackage answers likewise.
    let kps = vec![ByteBuf::from(vec![3u8; 40 << 10]); 32];
    let m = SyncMessage::KeyPackages(KpResponse::KeyPackages(kps)).fit();
    fits(&m);
    assert!(matches!(&m, SyncMessage::KeyPackages(KpResponse::KeyPackages(e)) if e.len() == 25));
    // Summaries of 40 universes of 1,000 groups: the first 23,000-odd
    // heads, no summary left without its heads.
    let sums: Vec<SyncSummary> = (0..40u32)
        .map(|u| SyncSummary {
            universe: made_up(0x10, u),
            heads: (0..1000)
                .map(|g| (made_up(0x20, u * 1000 + g), u64::MAX))
                .collect(),
        })
        .collect();
    for m in [
        SyncMessage::Summary(sums.clone()).fit(),
        SyncMessage::Summaries(sums.clone()).fit(),
    ] {
        fits(&m);
        let (SyncMessage::Summary(s) | SyncMessage::Summaries(s)) = &m else {
            panic!("{}", m.kind())
        };
        let heads: usize = s.iter().map(|s| s.heads.len()).sum();
        assert!(heads > 23_000, "{heads} heads kept");
        assert!(s.iter().all(|s| !s.heads.is_empty()));
        assert_eq!(s[..s.len() - 1], sums[..s.len() - 1]);
    }
    // Small messages are left alone.
    let small = SyncMessage::Summaries(sums[..2].to_vec());
    assert_eq!(small.clone().fit(), small);
}
