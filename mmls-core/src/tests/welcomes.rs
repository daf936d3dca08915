//! Welcomes lost on the way: fetched from any member that holds one, for a
//! group the asker holds nothing of; never again into a group retired.

use super::*;
use crate::sync::{FetchRequest, SyncSummary};

/// A Welcome lost on the lobby can be fetched from any member that holds
/// it, not only from its owner: in a mesh the owner may be out of the
/// recipient's reach for hours (found by the long-partition scenario: a
/// member missing one send group blocked every stream whose commits named
/// it, rejoined after 30 s, and the rejoins cascaded).
#[test]
fn a_lost_welcome_comes_from_a_member_when_the_owner_is_out_of_reach() {
    let mut net = Net::new(3);
    // Node 2 misses the creation: node 0's Welcome and node 1's.
    net.offline[2] = true;
    let members: Vec<crate::identity::MemberId> = (0..3).map(|i| net.member(i)).collect();
    let (uid, outs) = net
        .node(0)
        .create_universe("test", &members, &[], Profile::Mmls00)
        .expect("create");
    net.absorb(0, outs);
    net.run();
    net.settle();
    // The owner leaves reach before node 2 comes back.
    net.offline[0] = true;
    net.offline[2] = false;
    let m0 = net.member(0);
    let g0 = net.node(1).group_of(&uid, &m0).expect("node 1 is in g0");
    assert!(net.node(2).group_of(&uid, &m0).is_none());
    // Node 1 hands over node 0's Welcome only when asked for node 0's
    // group by name (a group node 2 holds nothing of).
    let ask = |groups: Vec<Id32>| FetchRequest::Welcomes {
        universe: uid,
        member: net.member(2),
        groups,
    };
    let (plain, named) = (ask(vec![]), ask(vec![g0]));
    let resp = net.node(1).serve_fetch(&plain).expect("serve");
    assert_eq!(resp.envelopes.len(), 1, "node 1's own Welcome only");
    let resp = net.node(1).serve_fetch(&named).expect("serve");
    assert_eq!(
        resp.envelopes.len(),
        2,
        "node 1's own Welcome and node 0's, which node 1 holds"
    );
    // Not to a member it does not name (node 0 is not in its own
    // Welcome's secrets).
    let other = FetchRequest::Welcomes {
        universe: uid,
        member: net.member(0),
        groups: vec![g0],
    };
    let served = net.node(1).serve_fetch(&other).unwrap().envelopes;
    assert!(served
        .iter()
        .all(|e| Envelope::decode(e).is_ok_and(|e| e.group != Some(g0))));
    // The agents find it themselves.
    net.sync_all();
    net.settle();
    let joined = net
        .node(2)
        .group_of(&uid, &m0)
        .expect("node 2 joined node 0's group through node 1");
    assert_eq!(joined, g0);
    let fp1 = net.node(1).epoch_fingerprint(&g0).unwrap();
    let fp2 = net.node(2).epoch_fingerprint(&g0).unwrap();
    assert_eq!(fp1, fp2);
    // Node 0 back: its texts reach node 2 in the group it joined.
    net.offline[0] = false;
    net.send(0, &uid, "after the lost welcome");
    net.run();
    net.settle();
    assert!(net.texts(2).iter().any(|t| t == "after the lost welcome"));
    net.assert_consistent(&uid);
}

/// An owner that lost its state makes a new send group; its old one is
/// retired everywhere. An old Welcome into it (a peer still holds copies,
/// and serves them to anyone missing the group) must not bring it back:
/// joining it would displace the owner's live group.
#[test]
fn an_old_welcome_never_brings_back_a_retired_group() {
    let mut net = Net::new(4);
    let uid = net.universe(Profile::Mmls00);
    let m3 = net.member(3);
    let old = net.node(1).group_of(&uid, &m3).expect("node 3's group");
    let old_welcomes: Vec<Vec<u8>> = net
        .all_bytes
        .iter()
        .filter(|b| {
            Envelope::decode(b).is_ok_and(|e| e.kind == Kind::Welcome && e.group == Some(old))
        })
        .cloned()
        .collect();
    assert!(!old_welcomes.is_empty());
    // Node 3 loses everything but its identity key and recovers.
    let id = net.ids[3].clone();
    let store = crate::store::Store::in_memory().unwrap();
    let (p, outs) =
        crate::participant::Participant::open(id, store.clone(), config(), net.now).unwrap();
    net.nodes[3] = Some(p);
    net.stores[3] = store;
    net.delivered[3].clear();
    net.absorb(3, outs);
    let outs = net.node(3).recover_universe(&uid).unwrap();
    net.absorb(3, outs);
    net.run();
    net.settle();
    let live = net.node(1).group_of(&uid, &m3).expect("node 3's new group");
    assert_ne!(live, old);
    // Every old Welcome is refused, and nothing changes.
    let before = crate::testkit::view(net.node(1), &uid);
    for w in &old_welcomes {
        match net.node(1).handle_incoming(w) {
            Err(MmlsError::GroupRetired(g)) => assert_eq!(g, old),
            other => panic!("an old Welcome into a retired group: {other:?}"),
        }
    }
    assert_eq!(crate::testkit::view(net.node(1), &uid), before);
    assert_eq!(net.node(1).group_of(&uid, &m3), Some(live));
    // A peer that still lists the old group makes no one ask for it.
    let theirs = SyncSummary {
        universe: uid,
        heads: vec![(old, 9)],
    };
    assert!(net.node(1).plan_fetches(&theirs).is_empty());
    // Nor is it served to anyone.
    let ask = FetchRequest::Welcomes {
        universe: uid,
        member: net.member(2),
        groups: vec![old],
    };
    let served = net.node(1).serve_fetch(&ask).unwrap().envelopes;
    assert!(served
        .iter()
        .all(|e| Envelope::decode(e).is_ok_and(|e| e.group != Some(old))));
    // And the conversation goes on in the live group.
    net.send(3, &uid, "new me");
    net.run();
    net.settle();
    assert!(net.texts(1).contains(&"new me".to_string()));
    net.assert_consistent(&uid);
}
