//! PSK gaps: a member re-added to a group never holds the epochs it
//! skipped, so commits importing them cannot be processed by it. The
//! reader asks to be re-added at once instead of refetching for minutes,
//! and importers that know of a pending re-add wait for it.

use super::*;

/// The rejoin request in `outs` (raw bytes), if any.
fn rejoin_in(outs: &[Output]) -> Option<Vec<u8>> {
    outs.iter().find_map(|o| match o {
        Output::Publish(p) => Envelope::decode(&p.bytes)
            .ok()
            .filter(|e| e.kind == Kind::Rejoin)
            .map(|_| p.bytes.clone()),
        _ => None,
    })
}

/// Every refusal node `i` met: inputs refused and stream entries dropped.
fn refusals(net: &Net, i: usize) -> Vec<String> {
    let dropped = net.events[i].iter().filter_map(|e| match e {
        Event::Rejected { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    net.rejections[i].iter().cloned().chain(dropped).collect()
}

fn group_of(net: &mut Net, uid: &Id32, owner: usize) -> Id32 {
    let m = net.member(owner);
    net.node(owner).group_of(uid, &m).expect("own group")
}

/// The imports node `i` committed, as its `Committed` events counted them.
fn imports_committed(net: &Net, i: usize) -> usize {
    net.events[i]
        .iter()
        .map(|e| match e {
            Event::Committed { imports, .. } => *imports,
            _ => 0,
        })
        .sum()
}

/// Node 1 imports node 0's group at an epoch node 2 never reaches: node 2,
/// away, is re-added to node 0's group past it. On its return node 2 hits
/// the PSK it can never hold, asks node 1 to re-add it at once, and the
/// universe converges within seconds, not after the minutes of refetching
/// and block timeouts it took before.
#[test]
fn a_reader_re_added_past_an_imported_epoch_asks_again_at_once() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    let g0 = group_of(&mut net, &uid, 0);
    net.offline[2] = true;
    net.update(0, &uid);
    net.run();
    net.tick(1_000);
    assert!(
        imports_committed(&net, 1) >= 1,
        "node 1 imported node 0's update"
    );

    // Node 2 asks node 0 alone to re-add it to node 0's group.
    net.node(2).mark_stale(&uid, &g0);
    let outs = net.node(2).request_rejoin(&uid).expect("rejoin");
    let req = rejoin_in(&outs).expect("a rejoin request");
    net.deliver(0, &req);
    net.run();

    net.offline[2] = false;
    net.settle();
    let seen = refusals(&net, 2);
    let gap_errors = seen.iter().filter(|r| r.contains("KeyNotFound")).count();
    assert!(gap_errors >= 1, "node 2 met the PSK gap: {seen:?}");
    assert!(
        gap_errors <= 2,
        "node 2 refetched an entry it can never process: {seen:?}"
    );
    net.assert_consistent(&uid);
}

/// Node 2 asks to be re-added; node 1 hears the request before node 0
/// answers it. Node 1's import of node 0's group waits until node 1 has
/// processed node 0's re-add (an import before it would name an epoch node
/// 2 never holds), then goes out, and the universe converges with nobody
/// meeting a PSK it lacks.
#[test]
fn an_import_waits_for_the_re_add_a_reader_asked_for() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    let g0 = group_of(&mut net, &uid, 0);
    net.node(2).mark_stale(&uid, &g0);
    let outs = net.node(2).request_rejoin(&uid).expect("rejoin");
    let req = rejoin_in(&outs).expect("a rejoin request");
    net.deliver(1, &req);

    // Node 0 updates before it hears the request: node 1 owes an import.
    let imported = imports_committed(&net, 1);
    net.update(0, &uid);
    net.run();
    net.tick(1_000);
    assert_eq!(
        imports_committed(&net, 1),
        imported,
        "node 1 imported node 0's group before node 0 re-added node 2"
    );

    net.deliver(0, &req);
    net.run();
    net.settle();
    assert!(
        imports_committed(&net, 1) > imported,
        "the import went out once the re-add was seen"
    );
    let lacking: Vec<String> = (0..3)
        .flat_map(|i| refusals(&net, i))
        .filter(|r| r.contains("KeyNotFound"))
        .collect();
    assert!(lacking.is_empty(), "{lacking:?}");
    net.assert_consistent(&uid);
}
