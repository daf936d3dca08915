//! The envelope on the wire: what a text costs in each encoding, and one
//! entry held in both encodings is still processed once.

use super::*;

/// A 100-byte text sent through a real participant: its envelope, in
/// version 2 (what is sent) and version 1 (what was), against the MLS
/// message inside it. Printed as a table; the target is 320 bytes.
#[test]
fn text_envelope_size() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    let text = "x".repeat(100);
    net.send(1, &uid, &text);
    net.run();
    assert!(net.texts(0).contains(&text), "the text arrived");
    let (env, wire) = net.last_of(Kind::Application).expect("the text's envelope");
    let v1 = env.encode_v1();
    assert_eq!(Envelope::decode(&v1).unwrap(), env, "version 1 still reads");
    let mut rows = vec![("text 100 B", wire.len(), v1.len(), env.body.len())];
    net.update(1, &uid);
    net.run();
    for (name, kind) in [("commit", Kind::Commit), ("proposal", Kind::Proposal)] {
        if let Some((e, b)) = net.last_of(kind) {
            assert_eq!(Envelope::decode(&e.encode_v1()).unwrap(), e);
            rows.push((name, b.len(), e.encode_v1().len(), e.body.len()));
        }
    }
    eprintln!("envelope      v2 B   v1 B  MLS body B  v2/v1  v2 overhead");
    for (name, v2, v1, body) in &rows {
        eprintln!(
            "{name:<12} {v2:>5}  {v1:>5}  {body:>10}  {:>5.2}  {:>5} B",
            *v2 as f64 / *v1 as f64,
            v2 - body
        );
    }
    let (_, v2_len, v1_len, _) = rows[0];
    assert!(v2_len <= 320, "a 100 B text is a {v2_len} B envelope");
    assert!(v2_len < v1_len);
    assert!(rows.len() == 3, "an update makes a commit and a proposal");
    assert!(rows.iter().all(|(_, v2, v1, _)| v2 < v1));
}

/// One stream entry in both encodings reaches a member once, whichever
/// comes first: the stream deduplicates by position, not by bytes.
#[test]
fn an_entry_in_both_versions_is_processed_once() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    net.offline[2] = true;
    net.send(1, &uid, "twice on the wire");
    net.send(1, &uid, "and once more");
    net.run();
    let mut texts: Vec<Vec<u8>> = net
        .all_bytes
        .iter()
        .filter(|b| Envelope::decode(b).is_ok_and(|e| e.kind == Kind::Application))
        .cloned()
        .collect();
    texts.drain(..texts.len().saturating_sub(2));
    assert_eq!(texts.len(), 2);
    let v1 = |b: &[u8]| Envelope::decode(b).unwrap().encode_v1();
    net.offline[2] = false;
    // First text: version 1 (an old log) before version 2.
    net.node(2)
        .handle_incoming(&v1(&texts[0]))
        .expect("v1 accepted");
    let again = net.node(2).handle_incoming(&texts[0]);
    assert!(
        matches!(again, Err(MmlsError::Duplicate { .. })),
        "{again:?}"
    );
    // Second text: version 2 before version 1.
    net.node(2).handle_incoming(&texts[1]).expect("v2 accepted");
    let again = net.node(2).handle_incoming(&v1(&texts[1]));
    assert!(
        matches!(again, Err(MmlsError::Duplicate { .. })),
        "{again:?}"
    );
    let got = crate::testkit::logged_texts(net.node(2), &uid);
    assert_eq!(got, ["twice on the wire", "and once more"]);
}
