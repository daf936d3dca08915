//! A rejoin loses nothing: each owner re-sends what the rejoiner missed, and
//! nobody else sees it twice.

use crate::id::Id32;
use crate::participant::Event;
use crate::profile::Profile;
use crate::testkit::{config, Net};
use std::collections::BTreeMap;

/// What node `i` got, per sender: the (seq, text) pairs in delivery order.
fn by_sender(net: &Net, i: usize) -> BTreeMap<String, Vec<(u64, String)>> {
    let mut out: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for d in &net.delivered[i] {
        out.entry(d.sender.to_string())
            .or_default()
            .push((d.seq, String::from_utf8_lossy(&d.body).to_string()));
    }
    out
}

/// Every text node `i` should have from the others, exactly once, each
/// sender's in its own order.
fn assert_complete(net: &Net, i: usize, sent: &[(usize, String)]) {
    let got = by_sender(net, i);
    for (s, list) in &got {
        let seqs: Vec<u64> = list.iter().map(|(q, _)| *q).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(seqs, sorted, "node {i}: texts of {s} out of order or twice");
    }
    let mut want: Vec<String> = sent
        .iter()
        .filter(|(s, _)| *s != i)
        .map(|(_, t)| t.clone())
        .collect();
    let mut have: Vec<String> = got.values().flatten().map(|(_, t)| t.clone()).collect();
    want.sort();
    have.sort();
    assert_eq!(have, want, "node {i}");
}

fn send(net: &mut Net, sent: &mut Vec<(usize, String)>, i: usize, uid: &Id32, text: String) {
    net.send(i, uid, &text);
    sent.push((i, text));
}

/// History pruned everywhere while a member was away: it goes stale,
/// rejoins, and each owner re-sends the texts it had not received, with
/// their original numbers, so its conversation is complete and nobody
/// else's has a duplicate.
#[test]
fn a_rejoin_after_pruned_history_delivers_what_was_missed_exactly_once() {
    let mut cfg = config();
    cfg.log_retention = 3;
    let mut net = Net::with_config(4, cfg);
    let uid = net.universe(Profile::Mmls00);
    let mut sent = vec![];
    for k in 0..3 {
        send(&mut net, &mut sent, k, &uid, format!("before {k}"));
    }
    net.run();
    net.offline[3] = true;
    for k in 0..9 {
        send(&mut net, &mut sent, k % 3, &uid, format!("missed {k}"));
        net.update(k % 3, &uid);
        net.run();
        net.tick(100);
    }
    net.settle();
    net.offline[3] = false;
    net.sync_all();
    for _ in 0..4 {
        net.tick(30_000);
        net.sync_all();
    }
    net.settle();
    assert!(
        net.events[3]
            .iter()
            .any(|e| matches!(e, Event::Rejoined { .. })),
        "node 3 had to rejoin"
    );
    send(&mut net, &mut sent, 0, &uid, "after".into());
    send(&mut net, &mut sent, 3, &uid, "i am back".into());
    net.run();
    net.settle();
    for i in 0..4 {
        assert_complete(&net, i, &sent);
    }
    net.assert_consistent(&uid);
}

/// A member that lost its whole state gets back every text the owners
/// still hold, once, in order; the others see nothing twice.
#[test]
fn a_member_that_lost_its_state_gets_the_conversation_back() {
    let mut net = Net::new(4);
    let uid = net.universe(Profile::Mmls00);
    let mut sent = vec![];
    for k in 0..6 {
        send(&mut net, &mut sent, k % 3, &uid, format!("before {k}"));
    }
    net.run();
    // Node 3 loses everything but its identity key, while the others talk.
    net.offline[3] = true;
    for k in 0..4 {
        send(&mut net, &mut sent, k % 3, &uid, format!("while down {k}"));
        net.run();
    }
    let id = net.ids[3].clone();
    let store = crate::store::Store::in_memory().expect("store");
    let (p, outs) =
        crate::participant::Participant::open(id, store.clone(), config(), net.now).expect("open");
    net.nodes[3] = Some(p);
    net.stores[3] = store;
    net.delivered[3].clear();
    net.offline[3] = false;
    net.absorb(3, outs);
    let outs = net.node(3).recover_universe(&uid).expect("recover");
    net.absorb(3, outs);
    net.run();
    net.settle();
    send(&mut net, &mut sent, 0, &uid, "after recovery".into());
    send(&mut net, &mut sent, 3, &uid, "new me".into());
    net.run();
    net.settle();
    for i in 0..4 {
        assert_complete(&net, i, &sent);
    }
    net.assert_consistent(&uid);
}
