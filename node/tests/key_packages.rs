//! Single-use KeyPackages over real swarms on 127.0.0.1: a node that
//! publishes no last-resort KeyPackage (as AWS mls-rs) is added by every
//! owner with a KeyPackage made for that owner alone, asked of it over the
//! request-response protocol when connected, over the lobby when not.

mod common;
use common::*;
use std::time::Duration;
use tokio::time::timeout;

/// A node announcing only a single-use KeyPackage.
async fn single_use(root: &std::path::Path, name: &str) -> TestNode {
    start_with(root, name, |c| c.engine.publish_last_resort = false).await
}

async fn texts_from(n: &TestNode, u: node::mmls_core::Id32, from: &TestNode) -> Vec<String> {
    all_messages(n, u)
        .await
        .into_iter()
        .filter(|d| d.sender == from.member())
        .map(|d| String::from_utf8_lossy(&d.body).to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_owner_gets_its_own_key_package_from_a_single_use_member() {
    init_tracing();
    timeout(Duration::from_secs(120), async {
        let root = root();
        let a = start(root.path(), "a").await;
        let b = start(root.path(), "b").await;
        let c = single_use(root.path(), "c").await;
        link(&a, &b).await;
        link(&a, &c).await;
        link(&b, &c).await;
        let u = create_and_wait(&a, &[&b, &c], Duration::from_secs(60)).await;
        // C handed A and B KeyPackages of their own (one per suite they
        // implement), and the 0x0001 ones the groups are in were used:
        // none of those is outstanding at C or held by A or B.
        let used = node::mmls_core::ciphersuites::X25519_AES128GCM;
        let st = c.h.key_package_pool().await.expect("pool");
        assert!(!st.issued_suites.contains(&used), "{st:?}");
        for n in [&a, &b] {
            let st = n.h.key_package_pool().await.expect("pool");
            assert!(!st.handed_suites.contains(&used), "{}: {st:?}", n.name);
        }
        c.h.send(u, "from the single-use node").await.expect("send");
        wait_for("A and B read C", Duration::from_secs(20), || async {
            texts_from(&a, u, &c).await.len() == 1 && texts_from(&b, u, &c).await.len() == 1
        })
        .await;
        shutdown_all(&[&a, &b, &c]).await;
    })
    .await
    .expect("test timed out");
}

/// A - B - C: A never connects to C; its request goes over the lobby and
/// C hands A's KeyPackage back the same way, signed for A alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_use_member_hops_away_hands_its_key_package_over_the_lobby() {
    init_tracing();
    timeout(Duration::from_secs(120), async {
        let root = root();
        let a = start(root.path(), "a").await;
        let b = start(root.path(), "b").await;
        let c = single_use(root.path(), "c").await;
        link(&a, &b).await;
        link(&b, &c).await;
        let u = create_and_wait(&a, &[&b, &c], Duration::from_secs(60)).await;
        assert!(!connected(&a, &c).await, "A and C must not be linked");
        c.h.send(u, "two hops").await.expect("send");
        wait_for("A reads C", Duration::from_secs(20), || async {
            texts_from(&a, u, &c).await == vec!["two hops".to_string()]
        })
        .await;
        shutdown_all(&[&a, &b, &c]).await;
    })
    .await
    .expect("test timed out");
}
