//! Ciphersuite choice (MMLS draft section 6): send groups of one universe in
//! different suites deliver both ways and PCS heals across them; anything
//! outside the universe's list is refused with nothing changed; a node whose
//! preferences are all refused falls back to an accepted suite.

use super::*;
use crate::ciphersuites::X25519_CHACHA20POLY1305 as S3;
use crate::ciphersuites::{P256_AES128GCM as S2, X25519_AES128GCM as S1};
use crate::identity::MemberId;
use crate::participant::Participant;
use crate::testkit::{identity, view};
use crate::universe::{to_cbor, RejoinRequest, SignedRejoin};
use serde_bytes::ByteBuf;

/// A network where node `i` prefers `prefs[i]`.
fn net_preferring(prefs: &[&[u16]]) -> Net {
    let ids = (0..prefs.len()).map(identity).collect();
    let cfgs = prefs
        .iter()
        .map(|p| crate::Config {
            ciphersuites: p.to_vec(),
            ..config()
        })
        .collect();
    Net::with_node_configs(ids, cfgs, 1_000)
}

/// The suite of each member's send group as node `at` sees it, by owner.
fn suites_seen(net: &mut Net, at: usize, uid: &Id32) -> Vec<(MemberId, u16)> {
    let st = net.node(at).status(uid).expect("status");
    let mut v: Vec<(MemberId, u16)> = st
        .groups
        .iter()
        .map(|g| (g.owner.clone(), g.ciphersuite))
        .collect();
    v.sort();
    v
}

/// Every member's send group is in its owner's expected suite, as every
/// node sees it, and as openmls has it.
fn assert_suites(net: &mut Net, uid: &Id32, expected: &[u16]) {
    let mut want: Vec<(MemberId, u16)> = expected
        .iter()
        .enumerate()
        .map(|(i, s)| (net.member(i), *s))
        .collect();
    want.sort();
    for i in 0..expected.len() {
        assert_eq!(suites_seen(net, i, uid), want, "as node {i} sees them");
        for (owner, suite) in &want {
            let g = net.node(i).group_of(uid, owner).expect("group");
            assert_eq!(net.node(i).suite_of_group(&g).expect("suite"), *suite);
        }
    }
}

/// Node `victim`'s state is copied; after one update round nobody reads
/// with the copy, while before it everything was readable: PCS heals
/// across send groups of different suites (the victim's PSK, exported from
/// its group, is imported by groups of other suites).
fn assert_pcs_heals(net: &mut Net, uid: &Id32, victim: usize) {
    let n = net.nodes.len();
    let snap = net.stores[victim].snapshot().expect("snapshot");
    let (mut attacker, _) =
        Participant::open(net.ids[victim].clone(), snap, net.config.clone(), net.now)
            .expect("attacker opens the copy");
    let mark = net.all_bytes.len();
    for i in (0..n).filter(|i| *i != victim) {
        net.send(i, uid, &format!("pre {i}"));
    }
    net.run();
    let marks: Vec<usize> = net.events.iter().map(|e| e.len()).collect();
    net.update(victim, uid);
    net.run();
    net.settle();
    // Every other owner imported the victim's PSK into its own group.
    for (i, mark) in marks.iter().enumerate().filter(|(i, _)| *i != victim) {
        let imported = net.events[i][*mark..]
            .iter()
            .any(|e| matches!(e, Event::Committed { imports, .. } if *imports >= 1));
        assert!(imported, "node {i} imported the victim's update");
    }
    for i in 0..n {
        assert_eq!(
            net.node(i).status(uid).expect("status").pending_imports,
            0,
            "node {i} has imports it cannot commit"
        );
    }
    for i in 0..n {
        net.send(i, uid, &format!("post {i}"));
    }
    net.run();
    net.settle();
    let read = crate::testkit::texts_read_by(&mut attacker, &net.all_bytes[mark..]);
    for i in (0..n).filter(|i| *i != victim) {
        assert!(
            read.contains(&format!("pre {i}")),
            "the copy reads pre-heal traffic of node {i}: {read:?}"
        );
        assert!(
            !read.contains(&format!("post {i}")),
            "the copy read post-heal traffic in the group of node {i}"
        );
    }
}

/// Every node delivers every other node's text.
fn assert_all_deliver(net: &mut Net, uid: &Id32, tag: &str) {
    let n = net.nodes.len();
    for i in 0..n {
        net.send(i, uid, &format!("{tag} from {i}"));
    }
    net.run();
    net.settle();
    for i in 0..n {
        for j in (0..n).filter(|j| *j != i) {
            assert!(
                net.texts(i).contains(&format!("{tag} from {j}")),
                "node {i} lacks node {j}'s text: {:?}",
                net.texts(i)
            );
        }
    }
}

fn mixed_suites_deliver_and_heal(profile: Profile) {
    // Nodes 0 and 2 prefer 0x0001, nodes 1 and 3 0x0003; the universe
    // accepts both (0x0001 first).
    let mut net = net_preferring(&[&[S1, S3], &[S3, S1], &[S1], &[S3]]);
    let uid = net.universe_with_suites(profile, &[S1, S3]);
    assert_suites(&mut net, &uid, &[S1, S3, S1, S3]);
    let st = net.node(2).status(&uid).expect("status");
    assert_eq!(st.ciphersuites, [S1, S3]);
    assert_all_deliver(&mut net, &uid, "hello");
    net.assert_consistent(&uid);
    // The victim owns a 0x0003 group; the others import its PSK into
    // groups of both suites.
    assert_pcs_heals(&mut net, &uid, 1);
    net.assert_consistent(&uid);
    // And the other way: a 0x0001 owner's update heals the 0x0003 groups.
    assert_pcs_heals(&mut net, &uid, 2);
    net.assert_consistent(&uid);
    assert_eq!(
        net.rejections.iter().flatten().count(),
        0,
        "{:?}",
        net.rejections
    );
}

#[test]
fn send_groups_in_suites_1_and_3_deliver_both_ways_and_pcs_heals() {
    mixed_suites_deliver_and_heal(Profile::Mmls00);
}

/// `dmls` exports KDF.Nh bytes in the draft; here the universe's export
/// length, whatever the exporting group's suite (section 6: only the
/// export length is shared).
#[test]
fn a_dmls_universe_of_mixed_suites_heals_too() {
    mixed_suites_deliver_and_heal(Profile::Dmls);
}

/// 0x0002 signs with the P-256 key the identity key vouches for: its
/// groups sit next to Ed25519 ones, members are still their PeerIds, and
/// PCS heals across all three suites.
#[test]
fn a_p256_send_group_joins_a_universe_of_ed25519_ones() {
    let mut net = net_preferring(&[&[S1], &[S2, S1], &[S3], &[S2]]);
    let uid = net.universe_with_suites(Profile::Mmls00, &[S1, S3, S2]);
    assert_suites(&mut net, &uid, &[S1, S2, S3, S2]);
    // Inside the P-256 groups every leaf is bound to its PeerId by the link.
    let owner = net.member(1);
    let g = net.node(0).group_of(&uid, &owner).expect("group");
    let group = net.node(0).group(&g).expect("group");
    let mut ids: Vec<MemberId> = group
        .members()
        .map(|m| {
            assert_eq!(m.signature_key.len(), 65, "a P-256 key");
            crate::identity::verify_binding(&m.credential, &m.signature_key).expect("bound")
        })
        .collect();
    ids.sort();
    let mut all: Vec<MemberId> = (0..4).map(|i| net.member(i)).collect();
    all.sort();
    assert_eq!(ids, all);
    assert_all_deliver(&mut net, &uid, "p256");
    assert_pcs_heals(&mut net, &uid, 3);
    net.assert_consistent(&uid);
    assert_eq!(
        net.rejections.iter().flatten().count(),
        0,
        "{:?}",
        net.rejections
    );
}

#[test]
fn a_node_whose_preferences_are_refused_falls_back_to_an_accepted_suite() {
    // Node 1 would take only 0x0003, node 2 only 0x0002; the universe
    // accepts 0x0001 alone (the default).
    let mut net = net_preferring(&[&[S1], &[S3], &[S2]]);
    let uid = net.universe(Profile::Mmls00);
    assert_suites(&mut net, &uid, &[S1, S1, S1]);
    assert_all_deliver(&mut net, &uid, "fallback");
    // Preferences the universe's list does not reach: its first choice.
    let mut net = net_preferring(&[&[S1], &[S2], &[S1]]);
    let uid = net.universe_with_suites(Profile::Mmls00, &[S3, S1]);
    assert_suites(&mut net, &uid, &[S1, S3, S1]);
    assert_all_deliver(&mut net, &uid, "first choice");
}

#[test]
fn a_universe_refuses_bad_suite_lists_at_creation_and_changes_nothing() {
    let mut net = Net::new(2);
    let members = [net.member(0), net.member(1)];
    for (suites, want) in [
        (vec![], "at least one"),
        (vec![S1, 7], "not implemented"),
        (vec![S3, S3], "listed twice"),
    ] {
        let r =
            net.node(0)
                .create_universe_with("x", &members, &[], Profile::Mmls00, vec![], &suites);
        let e = r.expect_err("refused");
        assert!(e.to_string().contains(want), "{suites:?}: {e}");
    }
    assert!(matches!(
        net.node(0)
            .create_universe_with("x", &members, &[], Profile::Mmls00, vec![], &[7]),
        Err(MmlsError::UnsupportedCiphersuite(7))
    ));
    assert!(net.node(0).universes().is_empty());
}

/// A member that ignores the list makes its send group in 0x0003 although
/// the universe accepts 0x0001 only: every other member refuses its
/// Welcome (`CiphersuiteRefused`) and keeps its state as it was.
#[test]
fn a_welcome_in_a_suite_the_universe_refuses_changes_nothing() {
    let mut net = Net::new(4);
    net.node(2).force_suite(S3);
    let uid = net.universe(Profile::Mmls00);
    let hostile = net.member(2);
    // Node 2's group exists for node 2 only.
    let g2 = net.node(2).group_of(&uid, &hostile).expect("its own group");
    assert_eq!(net.node(2).suite_of_group(&g2).expect("suite"), S3);
    for i in [0, 1, 3] {
        assert_eq!(net.node(i).group_of(&uid, &hostile), None, "node {i}");
        assert!(
            net.rejections[i]
                .iter()
                .any(|r| r.contains("ciphersuite 0x0003 is not accepted")),
            "node {i}: {:?}",
            net.rejections[i]
        );
    }
    // Replayed: refused again with the typed error, nothing changed.
    let welcome = net
        .all_bytes
        .iter()
        .find(|b| Envelope::decode(b).is_ok_and(|e| e.kind == Kind::Welcome && e.group == Some(g2)))
        .cloned()
        .expect("node 2's Welcome");
    let before = view(net.node(0), &uid);
    let status = net.node(0).status(&uid).expect("status");
    let r = net.node(0).handle_incoming(&welcome);
    assert!(matches!(r, Err(MmlsError::CiphersuiteRefused(S3))), "{r:?}");
    assert_eq!(view(net.node(0), &uid), before);
    assert_eq!(net.node(0).status(&uid).expect("status"), status);
    // The others carry on among themselves.
    for i in [0, 1, 3] {
        net.send(i, &uid, &format!("still here {i}"));
    }
    net.run();
    net.settle();
    assert!(net.texts(0).contains(&"still here 3".to_string()));
    assert!(net.texts(3).contains(&"still here 1".to_string()));
}

/// A joiner that meets the refused group's Welcome before it knows the
/// universe joins it (it can only check that it implements the suite);
/// the first Hello then tells it the list, and the group is dropped.
#[test]
fn a_refused_group_joined_before_the_universe_was_known_is_dropped() {
    let mut net = Net::new(4);
    net.node(2).force_suite(S3);
    net.offline[3] = true;
    let members: Vec<MemberId> = (0..3).map(|i| net.member(i)).collect();
    let (uid, outs) = net
        .node(0)
        .create_universe("t", &members, &[], Profile::Mmls00)
        .expect("create");
    net.absorb(0, outs);
    net.run();
    net.settle();
    let mark = net.all_bytes.len();
    let newcomer = net.member(3);
    let outs = net.node(0).add_member(&uid, &newcomer).expect("add");
    net.absorb(0, outs);
    net.run();
    net.settle();
    let hostile = net.member(2);
    let g2 = net
        .node(2)
        .group_of(&uid, &hostile)
        .expect("node 2's group");
    // Node 3 gets node 2's Welcome first, then everything else.
    let mut entries: Vec<Vec<u8>> = net.all_bytes[mark..].to_vec();
    entries.sort_by_key(|b| {
        !Envelope::decode(b).is_ok_and(|e| e.kind == Kind::Welcome && e.group == Some(g2))
    });
    net.offline[3] = false;
    let first = net.node(3).handle_incoming(&entries[0]);
    assert!(first.is_ok(), "joined before the list was known: {first:?}");
    assert_eq!(net.node(3).group_of(&uid, &hostile), Some(g2));
    for b in &entries[1..] {
        if let Ok(outs) = net.node(3).handle_incoming(b) {
            net.absorb(3, outs);
        }
    }
    net.run();
    net.settle();
    assert_eq!(net.node(3).group_of(&uid, &hostile), None, "dropped");
    assert!(
        net.events[3].iter().any(|e| matches!(
            e,
            Event::Rejected { group, reason, .. }
                if *group == g2 && reason.contains("0x0003")
        )),
        "{:?}",
        net.events[3]
    );
    assert!(net.events[3]
        .iter()
        .any(|e| matches!(e, Event::UniverseJoined { .. })));
    net.send(0, &uid, "welcome, 3");
    net.run();
    net.settle();
    assert!(net.texts(3).contains(&"welcome, 3".to_string()));
}

/// A rejoin request whose KeyPackage for us is in a suite the universe
/// does not accept is refused (`CiphersuiteRefused`); the owner re-adds
/// nobody.
#[test]
fn a_rejoin_key_package_in_a_refused_suite_changes_nothing() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    let owner = net.member(0);
    // Node 1's own last-resort KeyPackage in 0x0003, from its announcement.
    let Output::Publish(ann) = net.node(1).announcement() else {
        panic!("announcement is a publish")
    };
    let ann = Envelope::decode(&ann.bytes).expect("announcement");
    let kp3 = ann
        .proposals
        .iter()
        .find(|k| crate::ciphersuites::of_key_package(k) == Some(S3))
        .cloned()
        .expect("a 0x0003 KeyPackage is announced");
    let req = RejoinRequest {
        universe: uid,
        member: net.member(1),
        key_packages: vec![(owner.clone(), kp3)],
        lost_state: false,
        any_key_package: None,
        any_key_packages: vec![],
        nonce: net.now + 1,
        received: vec![],
    };
    let bytes = to_cbor(&req);
    let signed = SignedRejoin {
        signature: ByteBuf::from(net.ids[1].sign_detached(&bytes)),
        request: ByteBuf::from(bytes),
    };
    let mut e = Envelope::new(Kind::Rejoin, to_cbor(&signed));
    e.universe = Some(uid);
    e.sender = Some(net.member(1).to_string());
    let before = view(net.node(0), &uid);
    let status = net.node(0).status(&uid).expect("status");
    let r = net.node(0).handle_incoming(&e.encode());
    assert!(matches!(r, Err(MmlsError::CiphersuiteRefused(S3))), "{r:?}");
    assert_eq!(view(net.node(0), &uid), before);
    assert_eq!(net.node(0).status(&uid).expect("status"), status);
    // Nothing queued: node 0's next entries re-add nobody (no Welcome).
    let g0 = net.node(0).group_of(&uid, &owner).expect("own group");
    let mark = net.all_bytes.len();
    net.send(0, &uid, "after");
    net.run();
    net.settle();
    assert!(!net.all_bytes[mark..].iter().any(|b| {
        Envelope::decode(b).is_ok_and(|e| e.kind == Kind::Welcome && e.group == Some(g0))
    }));
    assert!(net.texts(1).contains(&"after".to_string()));
}

/// The lobby announcement carries a KeyPackage per implemented suite, all
/// of one member; one mixing members, or repeating a suite, is refused;
/// a suite we do not implement is skipped, not refused (newer nodes).
#[test]
fn announcements_carry_one_key_package_per_suite_and_are_checked_whole() {
    let mut net = Net::new(3);
    let Output::Publish(a0) = net.node(0).announcement() else {
        panic!("publish")
    };
    let Output::Publish(a2) = net.node(2).announcement() else {
        panic!("publish")
    };
    let a0 = Envelope::decode(&a0.bytes).expect("decode");
    let a2 = Envelope::decode(&a2.bytes).expect("decode");
    let mut suites: Vec<u16> = std::iter::once(&a0.body)
        .chain(&a0.proposals)
        .filter_map(|k| crate::ciphersuites::of_key_package(k))
        .collect();
    assert_eq!(
        suites[0], S1,
        "the body is the 0x0001 one (older nodes read it)"
    );
    suites.sort();
    assert_eq!(suites, [S1, S2, S3]);

    // Node 0's body with node 2's 0x0003 attached: refused.
    let mut mixed = a0.clone();
    mixed.proposals = a2
        .proposals
        .iter()
        .filter(|k| crate::ciphersuites::of_key_package(k) == Some(S3))
        .cloned()
        .collect();
    let r = net.node(1).handle_incoming(&mixed.encode());
    assert!(matches!(r, Err(MmlsError::BadCredential)), "{r:?}");
    // The same suite twice: refused.
    let mut twice = a0.clone();
    twice.proposals = vec![a0.body.clone()];
    assert!(net.node(1).handle_incoming(&twice.encode()).is_err());
    // A suite we do not implement (0x0007) is skipped.
    let mut newer = a0.clone();
    let mut future = a0.proposals[0].to_vec();
    future[2..4].copy_from_slice(&7u16.to_be_bytes());
    newer.proposals.push(ByteBuf::from(future));
    let r = net.node(1).handle_incoming(&newer.encode());
    assert!(r.is_ok(), "{r:?}");
}
