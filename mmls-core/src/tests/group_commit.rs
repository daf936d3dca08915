//! Group commit: the steps of a batch are made durable by one flush, their
//! outputs leave only after it, and each step stays atomic.

use super::*;
use crate::participant::Participant;
use crate::store::Store;

/// The envelopes `outs` publish.
fn published(outs: &[Output]) -> Vec<Vec<u8>> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Publish(p) => Some(p.bytes.clone()),
            _ => None,
        })
        .collect()
}

fn messages(outs: &[Output]) -> Vec<Vec<u8>> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Event(Event::Message(d)) => Some(d.body.to_vec()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_batch_holds_its_outputs_until_one_flush_and_is_on_disk_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("n2.redb");
    let mut net = Net::new(3);
    let store = Store::open(&path).expect("file store");
    let (p, outs) =
        Participant::open(net.ids[2].clone(), store.clone(), config(), net.now).expect("open");
    net.nodes[2] = Some(p);
    net.stores[2] = store;
    net.absorb(2, outs);
    net.run();
    let uid = net.universe(Profile::Mmls00);

    // Five texts of node 0, taken off the wire before node 2 sees them.
    let mut wire = vec![];
    for i in 0..5 {
        let (_, outs) = net
            .node(0)
            .send(&uid, format!("t{i}").as_bytes())
            .expect("send");
        wire.extend(published(&outs));
    }
    let before = net.node(2).status(&uid).expect("status");

    net.node(2).begin_batch().expect("begin");
    for (i, bytes) in wire.iter().enumerate() {
        let outs = net.node(2).handle_incoming(bytes).expect("in order");
        assert!(outs.is_empty(), "nothing leaves before the flush");
        if i == 2 {
            // A bad input in the middle fails alone; the batch goes on.
            assert!(net.node(2).handle_incoming(b"\xa1garbage").is_err());
            assert!(matches!(
                net.node(2).handle_incoming(bytes),
                Err(MmlsError::Duplicate { .. })
            ));
        }
    }
    let (seq, outs) = net.node(2).send(&uid, b"mine, in the batch").expect("send");
    assert!(outs.is_empty(), "our own entry waits for the flush too");
    let outs = net.node(2).end_batch().expect("flush");
    assert_eq!(
        messages(&outs),
        (0..5)
            .map(|i| format!("t{i}").into_bytes())
            .collect::<Vec<_>>()
    );
    let ours = published(&outs);
    assert_eq!(ours.len(), 1, "our text, published once it is durable");

    // On disk: a fresh open of the file has all of it.
    net.nodes[2] = None;
    net.stores[2] = Store::open(&path).expect("reopen");
    let (p, reopened) =
        Participant::open(net.ids[2].clone(), net.stores[2].clone(), config(), net.now)
            .expect("open");
    net.nodes[2] = Some(p);
    let after = net.node(2).status(&uid).expect("status");
    assert_eq!(after.messages_sent, before.messages_sent + 1);
    assert_eq!(after.messages_sent, seq);
    let texts: Vec<Vec<u8>> = net
        .node(2)
        .messages(&uid, None, usize::MAX)
        .expect("messages")
        .into_iter()
        .map(|d| d.body.to_vec())
        .collect();
    for i in 0..5 {
        assert!(texts.contains(&format!("t{i}").into_bytes()), "{i}");
    }
    net.absorb(2, reopened);
    net.absorb(2, outs);
    net.run();
    net.settle();
    assert!(net.texts(0).contains(&"mine, in the batch".to_string()));
    net.assert_consistent(&uid);
}

#[test]
fn a_failed_flush_releases_nothing_and_refuses_every_later_step() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    let (_, outs) = net.node(0).send(&uid, b"held").expect("send");
    let wire = published(&outs);

    net.node(1).begin_batch().expect("begin");
    for bytes in &wire {
        assert!(net.node(1).handle_incoming(bytes).expect("in").is_empty());
    }
    net.node(1).send(&uid, b"never announced").expect("send");
    net.node(1).inject_flush_failure();
    assert!(matches!(
        net.node(1).end_batch(),
        Err(MmlsError::Unflushed(_))
    ));
    // Memory is ahead of the disk: nothing more is committed or announced.
    assert!(matches!(
        net.node(1).send(&uid, b"after"),
        Err(MmlsError::Unflushed(_))
    ));
    assert!(matches!(
        net.node(1).begin_batch(),
        Err(MmlsError::Unflushed(_))
    ));
    assert!(matches!(
        net.node(1).end_batch(),
        Err(MmlsError::Unflushed(_))
    ));
    assert!(!net
        .all_bytes
        .iter()
        .any(|b| b.windows(15).any(|w| w == b"never announced")));

    // A restart carries on from the store.
    net.nodes[1] = None;
    let (p, outs) = Participant::open(net.ids[1].clone(), net.stores[1].clone(), config(), net.now)
        .expect("reopen");
    net.nodes[1] = Some(p);
    net.absorb(1, outs);
    net.send(1, &uid, "after the restart");
    net.run();
    net.settle();
    assert!(net.texts(0).contains(&"after the restart".to_string()));
    net.assert_consistent(&uid);
}

/// Node 2 on a file, the others in memory; its store's path.
fn net_with_file_node(dir: &tempfile::TempDir) -> (Net, std::path::PathBuf, Id32) {
    let path = dir.path().join("n2.redb");
    let mut net = Net::new(3);
    let store = Store::open(&path).expect("file store");
    let (p, outs) =
        Participant::open(net.ids[2].clone(), store.clone(), config(), net.now).expect("open");
    net.nodes[2] = Some(p);
    net.stores[2] = store;
    net.absorb(2, outs);
    net.run();
    let uid = net.universe(Profile::Mmls00);
    (net, path, uid)
}

/// Texts of node 0, taken off the wire before anyone sees them.
fn texts_on_the_wire(net: &mut Net, uid: &Id32, names: &[&str]) -> Vec<Vec<u8>> {
    let mut wire = vec![];
    for t in names {
        let (_, outs) = net.node(0).send(uid, t.as_bytes()).expect("send");
        wire.extend(published(&outs));
    }
    wire
}

fn bodies(net: &mut Net, n: usize, uid: &Id32) -> Vec<Vec<u8>> {
    net.node(n)
        .messages(uid, None, usize::MAX)
        .expect("messages")
        .into_iter()
        .map(|d| d.body.to_vec())
        .collect()
}

#[test]
fn a_sealed_batch_is_written_while_the_next_runs_and_each_releases_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut net, path, uid) = net_with_file_node(&dir);
    let wire = texts_on_the_wire(&mut net, &uid, &["a0", "a1", "b0", "b1"]);
    let sent_before = net.node(2).status(&uid).expect("status").messages_sent;

    net.node(2).begin_batch().expect("begin");
    for bytes in &wire[..2] {
        assert!(net.node(2).handle_incoming(bytes).expect("in").is_empty());
    }
    let first = net.node(2).seal_batch().expect("seal");
    assert!(first.needs_write());
    // The next batch runs before the first is on disk, on top of it.
    for bytes in &wire[2..] {
        assert!(net.node(2).handle_incoming(bytes).expect("in").is_empty());
    }
    assert!(
        matches!(
            net.node(2).handle_incoming(&wire[0]),
            Err(MmlsError::Duplicate { .. })
        ),
        "the batch in flight is read"
    );
    let (_, outs) = net.node(2).send(&uid, b"mine").expect("send");
    assert!(outs.is_empty());
    assert!(
        net.node(2).seal_batch().is_err(),
        "one flush in flight at a time"
    );

    let written = first.write();
    let outs = net.node(2).batch_written(first, written).expect("durable");
    assert_eq!(messages(&outs), vec![b"a0".to_vec(), b"a1".to_vec()]);
    assert!(published(&outs).is_empty(), "our text is in the next batch");
    let second = net.node(2).seal_batch().expect("seal the next");
    let written = second.write();
    let outs = net.node(2).batch_written(second, written).expect("durable");
    assert_eq!(messages(&outs), vec![b"b0".to_vec(), b"b1".to_vec()]);
    assert_eq!(published(&outs).len(), 1, "our text, once durable");
    let outs = net.node(2).end_batch().expect("nothing left open");
    assert!(outs.is_empty());

    // All of it on disk.
    net.nodes[2] = None;
    net.stores[2] = Store::open(&path).expect("reopen");
    let (p, _) = Participant::open(net.ids[2].clone(), net.stores[2].clone(), config(), net.now)
        .expect("open");
    net.nodes[2] = Some(p);
    let texts = bodies(&mut net, 2, &uid);
    for t in ["a0", "a1", "b0", "b1"] {
        assert!(texts.contains(&t.as_bytes().to_vec()), "{t}");
    }
    let status = net.node(2).status(&uid).expect("status");
    assert_eq!(status.messages_sent, sent_before + 1, "our text too");
}

#[test]
fn a_crash_with_a_batch_in_flight_keeps_the_written_one_and_loses_the_rest_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut net, path, uid) = net_with_file_node(&dir);
    let wire = texts_on_the_wire(&mut net, &uid, &["a0", "b0", "c0"]);

    net.node(2).begin_batch().expect("begin");
    net.node(2).handle_incoming(&wire[0]).expect("in");
    let first = net.node(2).seal_batch().expect("seal");
    let written = first.write();
    let released = net.node(2).batch_written(first, written).expect("durable");
    net.node(2).handle_incoming(&wire[1]).expect("in");
    let second = net.node(2).seal_batch().expect("seal");
    net.node(2).handle_incoming(&wire[2]).expect("in");
    // The process dies while the second is being written.
    net.stores[2].crash_discard();
    drop(second);
    net.nodes[2] = None;
    net.stores[2] = Store::open(&path).expect("reopen");
    let (p, outs) = Participant::open(net.ids[2].clone(), net.stores[2].clone(), config(), net.now)
        .expect("open");
    net.nodes[2] = Some(p);
    assert_eq!(messages(&released), vec![b"a0".to_vec()]);
    assert_eq!(bodies(&mut net, 2, &uid), vec![b"a0".to_vec()]);
    // What was lost was never announced, and comes again from the wire.
    net.absorb(2, outs);
    for bytes in &wire[1..] {
        net.node(2).handle_incoming(bytes).expect("again");
    }
    let texts = bodies(&mut net, 2, &uid);
    assert_eq!(texts.len(), 3);
    net.run();
    net.settle();
    net.assert_consistent(&uid);
}

#[test]
fn a_failed_write_in_flight_releases_neither_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut net, _path, uid) = net_with_file_node(&dir);
    let wire = texts_on_the_wire(&mut net, &uid, &["a0", "b0"]);

    net.node(2).begin_batch().expect("begin");
    net.node(2).handle_incoming(&wire[0]).expect("in");
    let first = net.node(2).seal_batch().expect("seal");
    net.node(2).handle_incoming(&wire[1]).expect("in");
    net.node(2)
        .send(&uid, b"never announced")
        .expect("send into the open batch");
    assert!(matches!(
        net.node(2)
            .batch_written(first, Err(MmlsError::Internal("fsync: I/O error".into()))),
        Err(MmlsError::Unflushed(_))
    ));
    assert!(matches!(
        net.node(2).seal_batch(),
        Err(MmlsError::Unflushed(_))
    ));
    assert!(matches!(
        net.node(2).end_batch(),
        Err(MmlsError::Unflushed(_))
    ));
    assert!(matches!(
        net.node(2).send(&uid, b"after"),
        Err(MmlsError::Unflushed(_))
    ));
    assert!(!net
        .all_bytes
        .iter()
        .any(|b| b.windows(15).any(|w| w == b"never announced")));
}
