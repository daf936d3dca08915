//! Exported-PSK retention: kept while a member may import them, never past
//! the time bound.

use crate::id::Id32;
use crate::participant::{Event, Output};
use crate::profile::Profile;
use crate::testkit::{config, Net};

const MIN: u64 = 60_000;

fn epoch_of(net: &mut Net, node: usize, uid: &Id32, g: &Id32) -> u64 {
    let st = net.node(node).status(uid).expect("status");
    st.groups
        .iter()
        .find(|s| s.group == *g)
        .expect("group")
        .epoch
}

/// Node 0 updates, node 2 sees it (so it owes an import of node 0's group)
/// and is cut off before it commits; nodes 0 and 1 then go on for `rounds`
/// minutes, updating every minute. Returns node 0's group, the epoch node 2
/// will import, and node 2's commit, made while cut off and not yet
/// delivered.
fn cut_off_with_an_import_owed(
    net: &mut Net,
    uid: &Id32,
    rounds: usize,
) -> (Id32, u64, Vec<Output>) {
    let m0 = net.member(0);
    let g0 = net.node(1).group_of(uid, &m0).expect("group of node 0");
    net.update(0, uid);
    net.run();
    net.offline[2] = true;
    let owed = epoch_of(net, 2, uid, &g0);
    for _ in 0..rounds {
        net.update(0, uid);
        net.update(1, uid);
        net.run();
        net.tick(MIN);
    }
    let now = net.now;
    let outs = net.node(2).tick(now);
    let imported = outs
        .iter()
        .any(|o| matches!(o, Output::Event(Event::Committed { imports, .. }) if *imports >= 1));
    assert!(imported, "node 2 committed its import while cut off");
    (g0, owed, outs)
}

fn psk_rejections(net: &Net) -> Vec<String> {
    net.rejections
        .iter()
        .flatten()
        .filter(|r| r.contains("Psk") || r.contains("KeyNotFound"))
        .cloned()
        .collect()
}

/// The field failure of an epoch-count window: a commit made on the other
/// side of a long partition imports an epoch that the rest moved past long
/// ago (here 80 minutes and hundreds of epochs: beyond the old 128-epoch
/// window and 10-minute floor). Retention by need keeps it, so the commit
/// is processed, nobody rejoins and the universe converges.
#[test]
fn a_commit_made_across_a_long_partition_still_finds_its_psk() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    let (g0, owed, outs) = cut_off_with_an_import_owed(&mut net, &uid, 80);
    let now_epoch = epoch_of(&mut net, 1, &uid, &g0);
    assert!(
        now_epoch >= owed + 150,
        "the others moved on: {owed} -> {now_epoch}"
    );
    assert!(net.node(1).holds_psk(&g0, owed), "kept for node 2's import");
    net.offline[2] = false;
    net.absorb(2, outs);
    net.run();
    net.settle();
    assert_eq!(psk_rejections(&net), Vec::<String>::new());
    for (i, evs) in net.events.iter().enumerate() {
        assert!(
            !evs.iter().any(|e| matches!(e, Event::Stale { .. })),
            "node {i} went stale"
        );
    }
    net.assert_consistent(&uid);
}

/// Need alone would let a silent member pin keys forever: past
/// `psk_max_age_ms` after their epoch ended they go, whoever still lags.
/// The member that lagged then rejoins and the universe converges again.
#[test]
fn a_silent_member_does_not_hold_back_key_deletion_beyond_the_time_bound() {
    let mut cfg = config();
    cfg.psk_max_age_ms = 30 * MIN;
    let mut net = Net::with_config(3, cfg);
    let uid = net.universe(Profile::Mmls00);
    let (g0, owed, outs) = cut_off_with_an_import_owed(&mut net, &uid, 20);
    // 20 minutes: younger than the bound, kept for the silent member.
    assert!(net.node(1).holds_psk(&g0, owed), "deleted before the bound");
    for _ in 0..30 {
        net.update(0, &uid);
        net.update(1, &uid);
        net.run();
        net.tick(MIN);
    }
    let e = epoch_of(&mut net, 1, &uid, &g0);
    for node in [0, 1] {
        let p = net.node(node);
        assert!(p.holds_psk(&g0, e), "node {node}: the current epoch's PSK");
        assert!(p.holds_psk(&g0, e - 3), "node {node}: ended minutes ago");
        assert!(!p.holds_psk(&g0, owed), "node {node}: outlived the bound");
    }
    // Node 2's old commit can no longer be processed: it rejoins.
    net.offline[2] = false;
    net.absorb(2, outs);
    net.run();
    for _ in 0..8 {
        net.tick(20_000);
        net.sync_all();
    }
    net.settle();
    net.assert_consistent(&uid);
    net.send(0, &uid, "after the rejoin");
    net.run();
    assert!(net.texts(2).contains(&"after the rejoin".to_string()));
}

/// Forward secrecy does not wait for the time bound when nobody needs a
/// key: once every member that could import a group has named a newer
/// epoch of it in a commit, the older PSKs go.
#[test]
fn psks_nobody_can_import_are_deleted_without_waiting_for_the_bound() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    for _ in 0..10 {
        for i in 0..3 {
            net.update(i, &uid);
        }
        net.run();
        net.tick(1_000);
    }
    // Past the retention re-evaluation interval (a minute).
    net.tick(61_000);
    let m1 = net.member(1);
    let g1 = net.node(0).group_of(&uid, &m1).expect("group of node 1");
    let e = epoch_of(&mut net, 0, &uid, &g1);
    assert!(e >= 20, "group of node 1 at epoch {e}");
    let p = net.node(0);
    assert!(p.holds_psk(&g1, e), "the current epoch's PSK is kept");
    for old in 1..=e - 5 {
        assert!(!p.holds_psk(&g1, old), "PSK of epoch {old} of {e} kept");
    }
}
