//! A bounded cache of decoded send groups: evicted groups are decoded from
//! the store again, and nothing a member sees changes.

use super::*;

#[test]
fn nodes_keeping_one_decoded_group_deliver_update_and_agree() {
    let n = 4;
    let cfg = crate::Config {
        group_cache: Some(1),
        ..config()
    };
    let mut net = Net::with_config(n, cfg);
    let uid = net.universe(Profile::Mmls00);
    for i in 0..n {
        net.send(i, &uid, &format!("before {i}"));
    }
    net.run();
    net.update(2, &uid);
    net.run();
    net.settle();
    for i in 0..n {
        net.send(i, &uid, &format!("after {i}"));
    }
    net.run();
    net.assert_consistent(&uid);
    for i in 0..n {
        let mut texts = net.texts(i);
        texts.sort();
        let mut want: Vec<String> = (0..n)
            .filter(|j| *j != i)
            .flat_map(|j| [format!("after {j}"), format!("before {j}")])
            .collect();
        want.sort();
        assert_eq!(texts, want, "node {i}");
        // Every send group was decoded again after eviction, and no more
        // than one is held between steps (views included).
        let (held, decodes) = net.node(i).group_cache_stats();
        assert!(held <= 1, "node {i} holds {held} decoded groups");
        assert!(decodes >= n as u64, "node {i} decoded {decodes} times");
    }
    // Every openmls value those decodes read (trees, secrets, proposals,
    // key pairs...) took the fast CBOR reader, none the fallback.
    let slow = crate::store::SLOW_DECODES.with(|c| c.get());
    assert_eq!(slow, 0, "{slow} stored values needed the fallback decoder");
}
