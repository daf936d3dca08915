//! Recovery: crashes, failed commits, damaged stores and rejoins.

use super::*;

#[test]
fn rejoin_after_history_was_pruned() {
    let mut cfg = config();
    cfg.log_retention = 3;
    let mut net = Net::with_config(4, cfg);
    let uid = net.universe(Profile::Mmls00);
    net.offline[3] = true;
    for k in 0..8 {
        net.send(k % 3, &uid, &format!("missed {k}"));
        net.update(k % 3, &uid);
        net.run();
        net.tick(100);
    }
    net.settle();
    net.offline[3] = false;
    for peer in 0..3 {
        for s in net.node(peer).summaries() {
            for r in net.node(3).plan_fetches(&s) {
                let resp = net.node(peer).serve_fetch(&r).unwrap();
                let outs = net.node(3).handle_fetch_response(&r, resp);
                net.absorb(3, outs);
            }
        }
        net.run();
    }
    net.settle();
    assert!(net.events[3]
        .iter()
        .any(|e| matches!(e, Event::Stale { .. })));
    assert!(net.events[3]
        .iter()
        .any(|e| matches!(e, Event::Rejoined { .. })));
    net.send(0, &uid, "after rejoin");
    net.send(3, &uid, "i am back");
    net.run();
    net.settle();
    assert!(net.texts(3).contains(&"after rejoin".to_string()));
    assert!(net.texts(1).contains(&"i am back".to_string()));
    net.assert_consistent(&uid);
}

#[test]
fn rejoin_after_state_loss() {
    let mut net = Net::new(4);
    let uid = net.universe(Profile::Mmls00);
    net.send(1, &uid, "before");
    net.run();
    // Node 3 loses everything but its identity key.
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
    net.send(0, &uid, "after recovery");
    net.send(3, &uid, "new me");
    net.run();
    net.settle();
    assert!(
        net.texts(3).contains(&"after recovery".to_string()),
        "{:?}",
        net.texts(3)
    );
    assert!(net.texts(1).contains(&"new me".to_string()));
    net.assert_consistent(&uid);
}

#[test]
fn crash_before_publish_and_mid_step_recovers_without_fork() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new(3);
    // Node 2 lives on a file store.
    let path = dir.path().join("n2.redb");
    let store = crate::store::Store::open(&path).unwrap();
    let (p, outs) =
        crate::participant::Participant::open(net.ids[2].clone(), store.clone(), config(), net.now)
            .unwrap();
    net.nodes[2] = Some(p);
    net.stores[2] = store;
    net.absorb(2, outs);
    net.run();
    let uid = net.universe(Profile::Mmls00);

    // 1. Crash after the step is durable, before anything is published.
    let outs = net.node(2).update(&uid).unwrap();
    drop(outs);
    net.nodes[2] = None;
    net.stores[2] = crate::store::Store::open(&path).unwrap();
    let (p, outs) = crate::participant::Participant::open(
        net.ids[2].clone(),
        net.stores[2].clone(),
        config(),
        net.now,
    )
    .unwrap();
    net.nodes[2] = Some(p);
    assert!(
        outs.iter()
            .any(|o| matches!(o, crate::participant::Output::Publish(p) if p.outbox_id.is_some())),
        "the unpublished commit must come back from the outbox"
    );
    net.absorb(2, outs);
    net.run();
    net.settle();
    net.assert_consistent(&uid);

    // 2. Crash in the middle of a step (before its transaction commits).
    net.node(2).inject_crash_before_commit();
    assert!(net.node(2).update(&uid).is_err());
    net.nodes[2] = None;
    net.stores[2] = crate::store::Store::open(&path).unwrap();
    let (p, outs) = crate::participant::Participant::open(
        net.ids[2].clone(),
        net.stores[2].clone(),
        config(),
        net.now,
    )
    .unwrap();
    net.nodes[2] = Some(p);
    net.absorb(2, outs);
    net.update(2, &uid);
    net.run();
    net.settle();
    net.send(2, &uid, "after crashes");
    net.run();
    assert!(net.texts(0).contains(&"after crashes".to_string()));
    net.assert_consistent(&uid);
}

/// A step whose store commit fails leaves the participant in memory exactly
/// as it was before the step (not as the step would have left it), and it
/// carries on without a restart.
#[test]
fn a_failed_commit_rolls_memory_back_to_the_disk_state() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    net.send(2, &uid, "before");
    net.run();
    let before = net.node(2).status(&uid).unwrap();
    net.node(2).inject_commit_failure();
    assert!(net.node(2).update(&uid).is_err());
    assert_eq!(net.node(2).status(&uid).unwrap(), before);
    net.node(2).inject_commit_failure();
    assert!(net.node(2).send(&uid, b"lost").is_err());
    assert_eq!(net.node(2).status(&uid).unwrap(), before);
    net.update(2, &uid);
    net.send(2, &uid, "after");
    net.run();
    net.settle();
    let got = net.texts(0);
    let st0 = net.node(0).status(&uid);
    assert!(
        got.contains(&"after".to_string()),
        "{got:?} {:?} {st0:?}",
        net.rejections[0]
    );
    assert!(!got.contains(&"lost".to_string()));
    net.assert_consistent(&uid);
}

/// A store file cut short or overwritten in places (power loss mid-write on
/// a bad disk, a bad copy) opens as a typed error, or as a consistent store
/// (redb recovers what it can), and never panics.
#[test]
fn a_truncated_or_corrupted_store_is_a_typed_error_never_a_panic() {
    use crate::participant::Participant;
    use crate::store::Store;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n2.redb");
    let mut net = Net::new(3);
    let store = Store::open(&path).unwrap();
    let (p, outs) =
        Participant::open(net.ids[2].clone(), store.clone(), config(), net.now).unwrap();
    net.nodes[2] = Some(p);
    net.stores[2] = store;
    net.absorb(2, outs);
    net.run();
    let uid = net.universe(Profile::Mmls00);
    for k in 0..30 {
        net.send(k % 3, &uid, &format!("message {k}"));
    }
    net.run();
    // Close the file.
    net.nodes[2] = None;
    net.stores[2] = Store::in_memory().unwrap();
    let good = std::fs::read(&path).unwrap();
    let mut cases: Vec<(String, Vec<u8>)> = vec![];
    for pct in [1, 10, 50, 90, 99] {
        cases.push((
            format!("truncated to {pct}%"),
            good[..good.len() * pct / 100].to_vec(),
        ));
    }
    for q in 1..8 {
        let off = good.len() * q / 8;
        let mut b = good.clone();
        for x in &mut b[off..(off + 4096).min(good.len())] {
            *x ^= 0x5a;
        }
        cases.push((format!("4 KiB overwritten at {q}/8"), b));
    }
    let (mut typed, mut opened) = (0, 0);
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("case{i}.redb"));
        std::fs::write(&p, bytes).unwrap();
        let id = net.ids[2].clone();
        let now = net.now;
        let r = catch_unwind(AssertUnwindSafe(|| -> Result<(), MmlsError> {
            let store = Store::open(&p)?;
            let (mut part, _) = Participant::open(id, store, config(), now)?;
            // Whatever opened must be usable.
            if part.universes().contains(&uid) {
                part.status(&uid)?;
                part.messages(&uid, None, 1_000)?;
            }
            Ok(())
        }));
        match r {
            Err(_) => panic!("{what}: opening panicked"),
            Ok(Err(e)) => {
                assert!(!e.to_string().is_empty());
                typed += 1;
            }
            Ok(Ok(())) => opened += 1,
        }
    }
    eprintln!("corrupted stores: {typed} typed errors, {opened} opened consistently");
    assert!(typed > 0, "no corruption was detected at all");
}
