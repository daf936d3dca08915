//! Membership: adds and removals mirrored by every owner, and what only
//! an admin may do.

use super::*;

#[test]
fn removal_is_mirrored_by_every_owner() {
    let mut net = Net::new(4);
    let uid = net.universe(Profile::Mmls00);
    let victim = net.member(3);
    let outs = net.node(0).remove_member(&uid, &victim).unwrap();
    net.absorb(0, outs);
    net.run();
    net.settle();
    for i in 0..3 {
        let st = net.node(i).status(&uid).unwrap();
        assert!(!st.roster.contains(&victim), "node {i}");
        let own = st.own_group.unwrap();
        let g = st.groups.iter().find(|g| g.group == own).unwrap();
        assert_eq!(
            g.members, 3,
            "node {i} still has the removed member in its group"
        );
    }
    assert!(net.events[3]
        .iter()
        .any(|e| matches!(e, Event::RemovedFromUniverse { .. })));
    net.send(1, &uid, "secret");
    net.run();
    assert!(!net.texts(3).contains(&"secret".to_string()));
    assert!(net.texts(2).contains(&"secret".to_string()));
}

/// Node 0 creates a universe with every node but the last, which the
/// tests then add.
fn universe_without_the_last_node(net: &mut Net) -> Id32 {
    let n = net.nodes.len();
    let members: Vec<_> = (0..n - 1).map(|i| net.member(i)).collect();
    let (uid, outs) = net
        .node(0)
        .create_universe("t", &members, &[], Profile::Mmls00)
        .unwrap();
    net.absorb(0, outs);
    net.run();
    net.settle();
    uid
}

#[test]
fn admin_adds_a_member_and_everyone_mirrors_it() {
    let mut net = Net::new(4);
    // Node 3 is not in the universe at first.
    let uid = universe_without_the_last_node(&mut net);
    let newbie = net.member(3);
    let outs = net.node(0).add_member(&uid, &newbie).unwrap();
    net.absorb(0, outs);
    net.run();
    net.settle();
    for i in 0..4 {
        let st = net.node(i).status(&uid).unwrap();
        assert_eq!(st.roster.len(), 4, "node {i}");
        assert_eq!(st.groups.len(), 4, "node {i}");
    }
    net.send(3, &uid, "hi from the newbie");
    net.send(1, &uid, "welcome");
    net.run();
    assert!(net.texts(0).contains(&"hi from the newbie".to_string()));
    assert!(net.texts(3).contains(&"welcome".to_string()));
    net.assert_consistent(&uid);
}

/// Membership is the admins': a member that drops someone from its own send
/// group stops sending to them, but nobody mirrors it and the dropped member
/// stays in the universe, reading everyone else.
#[test]
fn a_non_admin_owner_cannot_evict_a_member_from_the_universe() {
    let mut net = Net::new(4);
    let uid = net.universe(Profile::Mmls00);
    let victim = net.member(3);
    let outs = net.node(1).drop_from_own_group(&uid, &victim).unwrap();
    net.absorb(1, outs);
    net.run();
    net.settle();
    for i in [0, 2] {
        let st = net.node(i).status(&uid).unwrap();
        assert!(st.roster.contains(&victim), "node {i} dropped the victim");
    }
    let st = net.node(3).status(&uid).unwrap();
    assert!(!st.removed, "the victim believes it left the universe");
    assert!(!net.events[3]
        .iter()
        .any(|e| matches!(e, Event::RemovedFromUniverse { .. })));
    net.send(0, &uid, "still with us");
    net.send(2, &uid, "me too");
    net.run();
    let got = net.texts(3);
    assert!(got.contains(&"still with us".to_string()), "{got:?}");
    assert!(got.contains(&"me too".to_string()), "{got:?}");
    // And an admin's removal does apply everywhere.
    let outs = net.node(0).remove_member(&uid, &victim).unwrap();
    net.absorb(0, outs);
    net.run();
    net.settle();
    let st3 = net.node(3).status(&uid).unwrap();
    assert!(st3.removed, "{st3:#?} {:?}", net.rejections[3]);
    assert!(!net.node(2).status(&uid).unwrap().roster.contains(&victim));
}

/// A member whose send group stays silent past `silent_removal_ms` is
/// removed by the admin, and every owner mirrors the removal; members that
/// keep updating on their timer are not touched.
#[test]
fn a_long_silent_member_is_removed_and_every_owner_mirrors_it() {
    let mut cfg = config();
    cfg.update_interval_ms = Some(10_000);
    cfg.silent_removal_ms = Some(60_000);
    let mut net = Net::with_config(4, cfg);
    let uid = net.universe(Profile::Mmls00);
    let silent = net.member(3);
    net.offline[3] = true;
    for _ in 0..30 {
        net.tick(1_000);
    }
    for i in 0..3 {
        let st = net.node(i).status(&uid).unwrap();
        assert!(st.roster.contains(&silent), "removed too early on node {i}");
    }
    for _ in 0..50 {
        net.tick(1_000);
    }
    net.settle();
    for i in 0..3 {
        let st = net.node(i).status(&uid).unwrap();
        assert!(
            !st.roster.contains(&silent),
            "node {i} keeps the silent member"
        );
        assert_eq!(st.roster.len(), 3, "node {i} removed an active member");
        let own = st.own_group.unwrap();
        let g = st.groups.iter().find(|g| g.group == own).unwrap();
        assert_eq!(g.members, 3, "node {i} did not mirror the removal");
    }
    net.send(1, &uid, "after the removal");
    net.run();
    assert!(net.texts(2).contains(&"after the removal".to_string()));
}

#[test]
fn an_owners_add_that_overtakes_the_admins_waits_for_it() {
    // Node 2 misses the admin's commit that adds node 3 and then gets node
    // 1's commit adding node 3 first (gossip gives no order across groups).
    // It must wait for the admin's commit, not refuse node 1's as an add
    // by a non-admin.
    let mut net = Net::new(4);
    let uid = universe_without_the_last_node(&mut net);
    net.offline[2] = true;
    let newbie = net.member(3);
    let outs = net.node(0).add_member(&uid, &newbie).unwrap();
    net.absorb(0, outs);
    net.run();
    net.tick(10);
    let (env, commit) = commits_of(&mut net, &uid, 1)
        .pop()
        .expect("node 1 committed the add");
    assert!(
        !env.deps.is_empty(),
        "the add does not name the admin's epoch"
    );
    let outs = net.node(2).handle_incoming(&commit).unwrap();
    net.absorb(2, outs);
    let rejected = |net: &Net| {
        net.events[2]
            .iter()
            .filter(|e| matches!(e, Event::Rejected { .. }))
            .count()
    };
    assert_eq!(rejected(&net), 0, "node 1's add was refused");
    net.offline[2] = false;
    net.settle();
    assert_eq!(rejected(&net), 0);
    assert_eq!(net.node(2).status(&uid).unwrap().roster.len(), 4);
    net.assert_consistent(&uid);
}

/// A member that leaves is removed by every owner (admin or not), hears no
/// more, and can then forget the universe: nothing of it is left in its
/// store, and a restart does not bring it back. A member cannot forget a
/// universe it is still in.
#[test]
fn a_member_that_leaves_is_removed_everywhere_and_can_forget_the_universe() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    net.send(2, &uid, "before leaving");
    net.run();
    let m2 = net.member(2);

    let err = net.node(0).forget_universe(&uid).unwrap_err();
    assert!(matches!(err, MmlsError::StillMember(_)), "{err}");
    assert!(net.node(0).universes().contains(&uid));

    let outs = net.node(2).leave_universe(&uid).unwrap();
    net.absorb(2, outs);
    net.run();
    net.settle();
    for i in [0, 1] {
        let st = net.node(i).status(&uid).unwrap();
        assert!(!st.roster.contains(&m2), "node {i} still lists the leaver");
        assert!(
            st.groups.iter().all(|g| g.owner != m2),
            "node {i} still reads the leaver's send group"
        );
        assert!(net.node(i).group_of(&uid, &m2).is_none());
    }
    assert!(net.node(2).status(&uid).unwrap().removed);
    let heard_before = net.texts(2).len();
    net.send(0, &uid, "after the leave");
    net.run();
    net.settle();
    assert!(net.texts(1).contains(&"after the leave".to_string()));
    assert_eq!(net.texts(2).len(), heard_before, "the leaver still hears");
    // The others agree on every remaining send group.
    net.offline[2] = true;
    net.assert_consistent(&uid);
    net.offline[2] = false;

    net.node(2).forget_universe(&uid).unwrap();
    assert!(!net.node(2).universes().contains(&uid));
    let store = net.stores[2].clone();
    for t in [
        Table::Universes,
        Table::Groups,
        Table::Delivered,
        Table::Sent,
    ] {
        let left = store.range(t, &[], None, usize::MAX).unwrap();
        assert!(left.is_empty(), "{t:?} still holds {} rows", left.len());
    }
    net.nodes[2] = None;
    let (p, _) =
        crate::participant::Participant::open(net.ids[2].clone(), store, config(), net.now)
            .unwrap();
    assert!(
        !p.universes().contains(&uid),
        "forgotten universe came back"
    );
    assert!(matches!(
        net.node(0).forget_universe(&Id32([7; 32])),
        Err(MmlsError::UnknownUniverse(_))
    ));
}

#[test]
fn a_removed_member_added_again_is_back_with_a_new_send_group() {
    let mut net = Net::new(4);
    let uid = net.universe(Profile::Mmls00);
    let m3 = net.member(3);
    let old_group = net.node(3).group_of(&uid, &m3).expect("its group");
    let outs = net.node(0).remove_member(&uid, &m3).unwrap();
    net.absorb(0, outs);
    net.run();
    net.settle();
    assert!(net.events[3]
        .iter()
        .any(|e| matches!(e, Event::RemovedFromUniverse { .. })));
    net.send(1, &uid, "while it was out");
    net.run();
    net.settle();
    let outs = net.node(0).add_member(&uid, &m3).unwrap();
    net.absorb(0, outs);
    for _ in 0..3 {
        net.settle();
    }
    for i in 0..4 {
        assert!(
            net.node(i).status(&uid).unwrap().roster.contains(&m3),
            "node {i}"
        );
    }
    let new_group = net.node(3).group_of(&uid, &m3).expect("a new group");
    assert_ne!(
        new_group, old_group,
        "the old send group was retired by all"
    );
    net.send(2, &uid, "welcome back");
    net.send(3, &uid, "back again");
    net.run();
    net.settle();
    assert!(net.texts(3).contains(&"welcome back".to_string()));
    assert!(!net.texts(3).contains(&"while it was out".to_string()));
    assert!(net.texts(1).contains(&"back again".to_string()));
    net.assert_consistent(&uid);
}
