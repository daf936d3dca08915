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

/// A member whose rejoin requests get no answer (its link saturated, the
/// owners out of reach) backs off: 30 s, then 1, 2 and 4 minutes between
/// requests, not one every 30 s, which would feed the congestion that
/// stalled it. Once it is back in every group the backoff starts over.
#[test]
fn unanswered_rejoin_requests_back_off() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    net.run();
    net.settle();
    // Two texts of node 0; node 2 gets only the second: its stream of
    // node 0's group is blocked on the first, which never comes.
    let _lost = net.node(0).send(&uid, b"lost").expect("send");
    let (_, second) = net.node(0).send(&uid, b"stuck").expect("send");
    let app = |outs: &[crate::participant::Output]| {
        outs.iter()
            .find_map(|o| match o {
                crate::participant::Output::Publish(p)
                    if crate::envelope::Envelope::decode(&p.bytes)
                        .is_ok_and(|e| e.kind == crate::envelope::Kind::Application) =>
                {
                    Some(p.bytes.clone())
                }
                _ => None,
            })
            .expect("an application envelope")
    };
    let stuck = app(&second);
    let _ = net.node(2).handle_incoming(&stuck);
    // Ten minutes of ticks every 5 s; nothing node 2 sends gets through.
    let mut now = net.now;
    let mut rejoins = vec![];
    for _ in 0..120 {
        now += 5_000;
        if publishes_rejoin(&net.node(2).tick(now)) {
            rejoins.push(now - net.now);
        }
    }
    // Blocked at 0: the first request after 30 s, then 30, 60, 120 and
    // 240 s apart.
    assert_eq!(
        rejoins,
        vec![30_000, 60_000, 120_000, 240_000, 480_000],
        "rejoin requests at (ms after the block)"
    );
}

#[test]
fn a_blocked_group_waits_longer_while_its_universe_makes_progress() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    net.run();
    net.settle();
    // Node 2's stream of node 0's group is blocked on a text it never gets,
    // while node 1's texts keep arriving (a slow link, not a dead one).
    let _lost = net.node(0).send(&uid, b"lost").expect("send");
    let (_, second) = net.node(0).send(&uid, b"stuck").expect("send");
    for o in second {
        if let crate::participant::Output::Publish(p) = o {
            let _ = net.node(2).handle_incoming(&p.bytes);
        }
    }
    let mut now = net.now;
    let mut first_rejoin = None;
    for i in 0..40u64 {
        now += 5_000;
        let _ = net.node(1).tick(now);
        let body = format!("progress {i}");
        let (_, outs) = net.node(1).send(&uid, body.as_bytes()).expect("send");
        for o in outs {
            if let crate::participant::Output::Publish(p) = o {
                let _ = net.node(2).handle_incoming(&p.bytes);
            }
        }
        if publishes_rejoin(&net.node(2).tick(now)) {
            first_rejoin.get_or_insert(now - net.now);
        }
    }
    // Without progress the request goes after 30 s (the test above); with
    // it, after four times that.
    assert_eq!(
        first_rejoin,
        Some(120_000),
        "first rejoin request (ms after the block)"
    );
}

/// Whether `outs` publish a rejoin request.
fn publishes_rejoin(outs: &[crate::participant::Output]) -> bool {
    outs.iter().any(|o| {
        matches!(o, crate::participant::Output::Publish(p)
            if crate::envelope::Envelope::decode(&p.bytes)
                .is_ok_and(|e| e.kind == crate::envelope::Kind::Rejoin))
    })
}
