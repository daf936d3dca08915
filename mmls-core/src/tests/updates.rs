//! MMLS updates: imports settle in bounded commits, leaves rotate, PCS
//! locks out a copied state, frontiers name only what moved.

use super::*;

#[test]
fn updates_import_everywhere_and_settle_in_bounded_commits() {
    let n = 5;
    let mut net = Net::new(n);
    let uid = net.universe(Profile::Mmls00);
    let marks: Vec<usize> = net.events.iter().map(|e| e.len()).collect();
    net.update(2, &uid);
    net.run();
    net.settle();
    let commits: Vec<(usize, usize, bool)> = net
        .events
        .iter()
        .enumerate()
        .flat_map(|(i, ev)| {
            ev[marks[i]..].iter().filter_map(move |e| match e {
                Event::Committed { imports, path, .. } => Some((i, *imports, *path)),
                _ => None,
            })
        })
        .collect();
    let after = &commits;
    // Settling: every other member commits node 2's PSK together with its
    // leaf-rotation Update. RFC 9420 forces a path on that commit, but its
    // AAD says it is not an MMLS update of its own, so nobody imports it
    // and no second wave follows: one commit per member, then quiet.
    assert_eq!(after.len(), n, "{commits:?}");
    for i in 0..n {
        let mine: Vec<_> = after.iter().filter(|(w, _, _)| *w == i).collect();
        let expected_imports = usize::from(i != 2);
        assert_eq!(
            mine.as_slice(),
            [&(i, expected_imports, true)],
            "node {i}: one path commit, importing node 2's update unless it is node 2"
        );
    }
    // Quiet now: nothing more to commit.
    let total = net
        .events
        .iter()
        .flatten()
        .filter(|e| matches!(e, Event::Committed { .. }))
        .count();
    net.settle();
    assert_eq!(
        net.events
            .iter()
            .flatten()
            .filter(|e| matches!(e, Event::Committed { .. }))
            .count(),
        total
    );
    net.assert_consistent(&uid);
    // Messages still flow.
    net.send(4, &uid, "after update");
    net.run();
    assert!(net.texts(0).contains(&"after update".to_string()));
}

#[test]
fn pcs_attacker_snapshot_is_locked_out_after_one_update_round() {
    let n = 4;
    let victim = 2;
    let mut net = Net::new(n);
    let uid = net.universe(Profile::Mmls00);
    // The attacker copies the victim's whole state.
    let snap = net.stores[victim].snapshot().unwrap();
    let (mut attacker, _) =
        crate::participant::Participant::open(net.ids[victim].clone(), snap, config(), net.now)
            .unwrap();
    let mark = net.all_bytes.len();
    // Before healing: traffic in every other send group is readable.
    for i in (0..n).filter(|i| *i != victim) {
        net.send(i, &uid, &format!("pre {i}"));
    }
    net.run();
    // The victim updates; everyone imports (one round).
    net.update(victim, &uid);
    net.run();
    net.settle();
    let mid = net.all_bytes.len();
    for i in 0..n {
        net.send(i, &uid, &format!("post {i}"));
    }
    net.run();
    net.settle();
    let mut read = vec![];
    for b in &net.all_bytes[mark..] {
        if let Ok(outs) = attacker.handle_incoming(b) {
            for o in outs {
                if let crate::participant::Output::Event(Event::Message(d)) = o {
                    read.push(String::from_utf8_lossy(&d.body).to_string());
                }
            }
        }
    }
    let _ = mid;
    for i in (0..n).filter(|i| *i != victim) {
        assert!(
            read.contains(&format!("pre {i}")),
            "attacker should read pre-heal traffic: {read:?}"
        );
        assert!(
            !read.contains(&format!("post {i}")),
            "attacker read post-heal traffic in group of {i}"
        );
    }
    assert!(!read.contains(&format!("post {victim}")));
}

#[test]
fn an_update_rotates_the_updaters_leaf_in_every_send_group() {
    let n = 4;
    let mut net = Net::new(n);
    let uid = net.universe(Profile::Mmls00);
    let x = net.member(1);
    let leaf_key = |net: &mut Net, owner: usize| -> Vec<u8> {
        let m = net.member(owner);
        let g = net.node(0).group_of(&uid, &m).unwrap();
        let group = net.node(0).group(&g).unwrap();
        let me = group
            .members()
            .find(|mm| {
                crate::identity::verify_binding(&mm.credential, &mm.signature_key).ok()
                    == Some(x.clone())
            })
            .unwrap();
        me.encryption_key.clone()
    };
    let before: Vec<Vec<u8>> = (0..n)
        .filter(|o| *o != 1)
        .map(|o| leaf_key(&mut net, o))
        .collect();
    net.update(1, &uid);
    net.run();
    net.settle();
    let after: Vec<Vec<u8>> = (0..n)
        .filter(|o| *o != 1)
        .map(|o| leaf_key(&mut net, o))
        .collect();
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(b, a, "node 1's leaf key was not rotated in some send group");
    }
    net.assert_consistent(&uid);
}

/// The frontiers (owner's view, for the equivocation check) in the AADs of
/// every commit in `owner`'s send group, in stream order.
fn commit_frontiers(
    net: &mut Net,
    uid: &Id32,
    owner: usize,
) -> Vec<Vec<crate::universe::FrontierEntry>> {
    use openmls::prelude::tls_codec::Deserialize as _;
    use openmls::prelude::{MlsMessageIn, ProtocolMessage};
    commits_of(net, uid, owner)
        .into_iter()
        .map(|(env, _)| {
            let msg = MlsMessageIn::tls_deserialize_exact(env.body.as_slice()).unwrap();
            let ProtocolMessage::PrivateMessage(pm) = msg.try_into_protocol_message().unwrap()
            else {
                panic!("commits are private messages");
            };
            let aad: crate::universe::Aad = crate::universe::from_cbor(pm.aad()).unwrap();
            aad.frontier
        })
        .collect()
}

#[test]
fn a_commit_names_only_the_groups_that_moved_since_the_owners_last() {
    let mut net = Net::new(5);
    let uid = net.universe(Profile::Mmls00);
    for k in [2, 3, 1, 2] {
        net.update(k, &uid);
        net.run();
        net.settle();
    }
    let fs = commit_frontiers(&mut net, &uid, 1);
    assert!(fs.len() >= 4, "{} commits", fs.len());
    // No (group, epoch) is named twice in a row: unchanged groups are left
    // out...
    for w in fs.windows(2) {
        for e in &w[1] {
            assert!(
                !w[0]
                    .iter()
                    .any(|p| p.group == e.group && p.epoch == e.epoch),
                "{e:?} named again"
            );
        }
    }
    // ...so the frontiers are smaller than 5 groups per commit.
    let named: usize = fs.iter().map(Vec::len).sum();
    assert!(
        named < 5 * fs.len(),
        "{named} entries in {} commits",
        fs.len()
    );
    net.assert_consistent(&uid);
}

/// The health view's "last key update": the time we processed its owner's
/// latest MMLS update (path commit); the owner's own view moves at once.
#[test]
fn status_tells_when_each_owner_last_renewed_its_keys() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    let m1 = net.member(1);
    let g1 = net.node(0).group_of(&uid, &m1).unwrap();
    let key_update = |net: &mut Net, i: usize, g: Id32| {
        let st = net.node(i).status(&uid).unwrap();
        st.groups
            .iter()
            .find(|s| s.group == g)
            .unwrap()
            .last_key_update
    };
    let before = key_update(&mut net, 0, g1);
    net.tick(60_000);
    assert_eq!(
        key_update(&mut net, 0, g1),
        before,
        "moved without an update"
    );
    let t = net.now;
    net.update(1, &uid);
    net.run();
    net.settle();
    let seen = key_update(&mut net, 0, g1).expect("the update is seen");
    assert!(seen >= t && Some(seen) != before, "{seen} < {t}");
    assert!(key_update(&mut net, 1, g1).is_some_and(|v| v >= t));
}

/// `(node, imports)` of every commit made since `marks` (event counts).
fn commits_since(net: &Net, marks: &[usize]) -> Vec<(usize, usize)> {
    net.events
        .iter()
        .enumerate()
        .flat_map(|(i, ev)| {
            ev[marks[i]..].iter().filter_map(move |e| match e {
                Event::Committed { imports, .. } => Some((i, *imports)),
                _ => None,
            })
        })
        .collect()
}

fn window_config(window_ms: u64) -> crate::participant::Config {
    let mut cfg = config();
    // Leaf rotation brings Update proposals, which never wait: off, the
    // imports are all there is to commit.
    cfg.rotate_leaves = false;
    cfg.import_window_ms = Some(window_ms);
    cfg
}

/// With an import window, two peers' updates wait for one commit per other
/// owner that imports both; a send inside the window does not commit first,
/// and every member still reads it.
#[test]
fn an_import_window_covers_several_updates_with_one_commit() {
    const WINDOW: u64 = 60_000;
    let mut net = Net::with_config(4, window_config(WINDOW));
    let uid = net.universe(Profile::Mmls00);
    // The send groups' creations are updates too: their imports first.
    net.tick(WINDOW);
    net.settle();
    let marks: Vec<usize> = net.events.iter().map(|e| e.len()).collect();
    net.update(0, &uid);
    net.update(1, &uid);
    net.run();
    net.send(2, &uid, "inside the window");
    net.run();
    net.tick(WINDOW / 2);
    for i in [0, 1, 3] {
        assert!(net.texts(i).contains(&"inside the window".to_string()));
    }
    let early = commits_since(&net, &marks);
    assert_eq!(early, [(0, 0), (1, 0)], "only the two updates so far");
    net.tick(WINDOW / 2);
    net.settle();
    let mut all = commits_since(&net, &marks);
    all.sort();
    // Nodes 0 and 1 import each other's update; 2 and 3 import both, in one
    // commit each. No commit imports a PSK-only commit: quiet after that.
    assert_eq!(all, [(0, 0), (0, 1), (1, 0), (1, 1), (2, 2), (3, 2)]);
    net.assert_consistent(&uid);
}

/// The window is for imports only: a member an admin removed is out of our
/// send group before our next text, even with an import still waiting.
#[test]
fn a_removal_is_committed_before_a_send_whatever_the_import_window() {
    let mut net = Net::with_config(4, window_config(3_600_000));
    let uid = net.universe(Profile::Mmls00);
    net.tick(3_600_000);
    net.settle();
    net.update(1, &uid);
    net.run();
    let victim = net.member(3);
    let outs = net.node(0).remove_member(&uid, &victim).expect("remove");
    net.absorb(0, outs);
    net.run();
    let marks: Vec<usize> = net.events.iter().map(|e| e.len()).collect();
    net.send(2, &uid, "after the removal");
    net.run();
    assert_eq!(
        commits_since(&net, &marks),
        [(2, 0)],
        "node 2 commits the removal before it sends (the waiting import never goes with a removal)"
    );
    assert!(net.texts(1).contains(&"after the removal".to_string()));
    assert!(!net.texts(3).contains(&"after the removal".to_string()));
}

/// Every member updates at once: each one's Update proposals meet owners
/// that moved on (their own update commits), so most go stale. A stale
/// proposal is re-sent once per new epoch of its group, after a backoff,
/// not at every commit that missed it: with a 6-member universe the
/// re-sends stay at most one per (update, group), and every leaf still
/// rotates everywhere. The counts are printed for `proposal_retry_ms` 0
/// (re-send at the next tick, which races the owners' import commits) and
/// the default.
#[test]
fn concurrent_updates_re_send_stale_proposals_once_per_epoch_with_backoff() {
    let n = 6;
    let mut rows = vec![];
    for retry_ms in [0, crate::participant::Config::default().proposal_retry_ms] {
        let cfg = crate::participant::Config {
            proposal_retry_ms: retry_ms,
            ..config()
        };
        let mut net = Net::with_config(n, cfg);
        net.shuffle = true;
        let uid = net.universe(Profile::Mmls00);
        let leaves = |net: &mut Net| -> Vec<Vec<u8>> {
            let g: Vec<Id32> = (0..n)
                .map(|o| {
                    let m = net.member(o);
                    net.node(0).group_of(&uid, &m).unwrap()
                })
                .collect();
            g.iter()
                .flat_map(|g| {
                    let group = net.node(0).group(g).unwrap();
                    group
                        .members()
                        .map(|m| m.encryption_key.clone())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let before = leaves(&mut net);
        let mark = net.all_bytes.len();
        for i in 0..n {
            net.update(i, &uid);
        }
        net.run();
        for _ in 0..4 {
            net.settle();
        }
        let proposals = net.all_bytes[mark..]
            .iter()
            .filter(|b| Envelope::decode(b).is_ok_and(|e| e.kind == Kind::Proposal))
            .count();
        let after = leaves(&mut net);
        let kept: Vec<&Vec<u8>> = after.iter().filter(|k| before.contains(k)).collect();
        assert!(
            kept.is_empty(),
            "retry {retry_ms}: leaves not rotated: {}",
            kept.len()
        );
        net.assert_consistent(&uid);
        rows.push((retry_ms, proposals));
    }
    let pairs = n * (n - 1);
    eprintln!("proposal_retry_ms  proposals  per (update, member)");
    for (ms, p) in &rows {
        eprintln!("{ms:>17}  {p:>9}  {:>20.2}", *p as f64 / pairs as f64);
    }
    for (ms, p) in &rows {
        assert!(
            *p >= pairs,
            "retry {ms}: every update proposes in every other group"
        );
    }
    // With the default backoff the owners' import commits are seen before
    // the re-send: one re-send per (update, group), not one per commit.
    let (eager, default) = (rows[0].1, rows[1].1);
    assert!(
        default <= 2 * pairs,
        "{default} proposals for {pairs} (update, member)"
    );
    assert!(default < eager, "backoff {default} vs next tick {eager}");
}
