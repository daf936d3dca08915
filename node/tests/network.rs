//! Real swarms on 127.0.0.1: full mesh, line topology, partition and heal,
//! restart from the data dir. Each test is bounded and stops by itself.

mod common;

use common::*;
use node::mmls_core::{Event, Id32, MemberId};
use std::time::Duration;
use tokio::time::timeout;

async fn send_n(n: &TestNode, u: Id32, count: usize, tag: &str) -> Vec<u64> {
    let mut seqs = vec![];
    for i in 0..count {
        let s =
            n.h.send(u, format!("{tag} {i} from {}", n.name))
                .await
                .expect("send");
        seqs.push(s);
    }
    seqs
}

/// 3 nodes, full mesh: 100 messages from each, every node gets the 200 of
/// the others exactly once and in per-sender order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mesh_three_nodes() {
    init_tracing();
    timeout(Duration::from_secs(120), async {
        let root = root();
        let a = start(root.path(), "a").await;
        let b = start(root.path(), "b").await;
        let c = start(root.path(), "c").await;
        link(&a, &b).await;
        link(&a, &c).await;
        link(&b, &c).await;
        let u = create_and_wait(&a, &[&b, &c], Duration::from_secs(30)).await;

        let mut events = c.h.subscribe();
        let (sa, sb, sc) = tokio::join!(
            send_n(&a, u, 100, "m"),
            send_n(&b, u, 100, "m"),
            send_n(&c, u, 100, "m")
        );
        for s in [&sa, &sb, &sc] {
            assert_eq!(s, &(1..=100).collect::<Vec<u64>>());
        }
        let nodes = [&a, &b, &c];
        wait_for(
            "200 messages at every node",
            Duration::from_secs(60),
            || async {
                for n in nodes {
                    if all_messages(n, u).await.len() < 200 {
                        return false;
                    }
                }
                true
            },
        )
        .await;
        for n in nodes {
            let msgs = all_messages(n, u).await;
            assert_eq!(msgs.len(), 200, "{}", n.name);
            let per = check_order(&n.name, &msgs);
            assert_eq!(per.len(), 2, "{}: senders {:?}", n.name, per.keys());
            assert!(
                !per.contains_key(&n.member()),
                "{} got its own messages",
                n.name
            );
            for (sender, seqs) in per {
                assert_eq!(
                    seqs,
                    (1..=100).collect::<Vec<u64>>(),
                    "{} from {sender}",
                    n.name
                );
            }
        }
        // The event stream saw them too.
        let mut streamed = 0;
        while let Ok(e) = events.try_recv() {
            if let Event::Message(d) = e {
                assert_eq!(d.universe, u);
                streamed += 1;
            }
        }
        assert_eq!(streamed, 200, "messages on C's event stream");
        shutdown_all(&nodes).await;
    })
    .await
    .expect("test timed out");
}

/// A - B - C: A and C never connect; everything flows through B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_topology_relays_through_the_middle() {
    init_tracing();
    timeout(Duration::from_secs(120), async {
        let root = root();
        let a = start(root.path(), "a").await;
        let b = start(root.path(), "b").await;
        let c = start(root.path(), "c").await;
        a.h.block_peer(c.h.peer_id()).await.unwrap();
        c.h.block_peer(a.h.peer_id()).await.unwrap();
        link(&a, &b).await;
        link(&c, &b).await;

        let u = create_and_wait(&a, &[&b, &c], Duration::from_secs(40)).await;
        let (sa, sc) = tokio::join!(send_n(&a, u, 20, "line"), send_n(&c, u, 20, "line"));
        assert_eq!(sa.len() + sc.len(), 40);
        a.h.update(u).await.expect("update");
        let (ma, mc) = (a.member(), c.member());
        wait_for(
            "A and C hear each other",
            Duration::from_secs(40),
            || async { count_from(&c, u, &ma).await == 20 && count_from(&a, u, &mc).await == 20 },
        )
        .await;
        for n in [&a, &b, &c] {
            let msgs = all_messages(n, u).await;
            check_order(&n.name, &msgs);
            assert_eq!(
                msgs.len(),
                if n.name == "b" { 40 } else { 20 },
                "{}",
                n.name
            );
        }
        // A's commit (its update) reached C through B: same epoch and epoch
        // authenticator everywhere.
        wait_for("converged", Duration::from_secs(30), || async {
            converged(&[&a, &b, &c], u).await
        })
        .await;
        // C drops off B; A keeps talking; when C is back, it can only get
        // A's entries from B (A and C never meet, gossip does not repeat).
        c.h.block_peer(b.h.peer_id()).await.unwrap();
        wait_for("C cut off", Duration::from_secs(10), || async {
            !connected(&c, &b).await && !connected(&b, &c).await
        })
        .await;
        send_n(&a, u, 10, "while C is away").await;
        wait_for("B has them", Duration::from_secs(20), || async {
            count_from(&b, u, &ma).await == 30
        })
        .await;
        c.h.unblock_all().await.unwrap();
        wait_for("C caught up through B", Duration::from_secs(30), || async {
            count_from(&c, u, &ma).await == 30
        })
        .await;
        check_order("c", &all_messages(&c, u).await);
        let ga = a.h.universe_status(u).await.unwrap().own_group.unwrap();
        let ea =
            a.h.universe_status(u)
                .await
                .unwrap()
                .groups
                .iter()
                .find(|g| g.group == ga)
                .unwrap()
                .epoch;
        assert!(ea >= 2, "A committed its update (epoch {ea})");
        assert!(
            !connected(&a, &c).await && !connected(&c, &a).await,
            "A and C must never connect"
        );
        shutdown_all(&[&a, &b, &c]).await;
    })
    .await
    .expect("test timed out");
}

/// 4 nodes split {A,B} / {C,D}; both sides keep sending (and update); after
/// healing every message is delivered exactly once everywhere and every
/// send group is at the same epoch with the same authenticator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_and_heal_converge() {
    init_tracing();
    timeout(Duration::from_secs(150), async {
        let root = root();
        let a = start(root.path(), "a").await;
        let b = start(root.path(), "b").await;
        let c = start(root.path(), "c").await;
        let d = start(root.path(), "d").await;
        let nodes = [&a, &b, &c, &d];
        for (i, x) in nodes.iter().enumerate() {
            for y in &nodes[i + 1..] {
                link(x, y).await;
            }
        }
        let u = create_and_wait(&a, &[&b, &c, &d], Duration::from_secs(40)).await;
        for n in nodes {
            send_n(n, u, 5, "before").await;
        }
        wait_for(
            "pre-partition delivery",
            Duration::from_secs(30),
            || async {
                for n in nodes {
                    if all_messages(n, u).await.len() < 15 {
                        return false;
                    }
                }
                true
            },
        )
        .await;

        // Partition.
        for x in [&a, &b] {
            for y in [&c, &d] {
                x.h.block_peer(y.h.peer_id()).await.unwrap();
                y.h.block_peer(x.h.peer_id()).await.unwrap();
            }
        }
        wait_for("partitioned", Duration::from_secs(15), || async {
            !connected(&a, &c).await
                && !connected(&a, &d).await
                && !connected(&b, &c).await
                && !connected(&b, &d).await
        })
        .await;
        let ((), (), (), ()) = tokio::join!(
            async {
                send_n(&a, u, 15, "split").await;
            },
            async {
                send_n(&b, u, 15, "split").await;
                a.h.update(u).await.unwrap();
            },
            async {
                send_n(&c, u, 15, "split").await;
                c.h.update(u).await.unwrap();
            },
            async {
                send_n(&d, u, 15, "split").await;
            }
        );
        // Each side sees its own side's messages.
        wait_for(
            "delivery inside each side",
            Duration::from_secs(30),
            || async {
                count_from(&b, u, &a.member()).await == 20
                    && count_from(&d, u, &c.member()).await == 20
            },
        )
        .await;
        assert_eq!(
            count_from(&a, u, &c.member()).await,
            5,
            "C's split messages cannot reach A"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;

        // Heal.
        for n in nodes {
            n.h.unblock_all().await.unwrap();
        }
        let t = std::time::Instant::now();
        wait_for(
            "every message everywhere",
            Duration::from_secs(60),
            || async {
                for n in nodes {
                    if all_messages(n, u).await.len() < 60 {
                        return false;
                    }
                }
                true
            },
        )
        .await;
        wait_for("groups converged", Duration::from_secs(60), || async {
            converged(&nodes, u).await
        })
        .await;
        eprintln!("partition healed and converged in {:?}", t.elapsed());
        let members: Vec<MemberId> = nodes.iter().map(|n| n.member()).collect();
        for n in nodes {
            let msgs = all_messages(n, u).await;
            assert_eq!(msgs.len(), 60, "{}", n.name);
            let per = check_order(&n.name, &msgs);
            for m in &members {
                if *m == n.member() {
                    continue;
                }
                assert_eq!(
                    per.get(m).map(|v| v.len()),
                    Some(20),
                    "{}: from {m}",
                    n.name
                );
            }
        }
        shutdown_all(&nodes).await;
    })
    .await
    .expect("test timed out");
}

/// A node that was down catches up from its peers after a restart from its
/// data dir, with nothing delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_catches_up_via_sync() {
    init_tracing();
    timeout(Duration::from_secs(120), async {
        let root = root();
        let a = start(root.path(), "a").await;
        let b = start(root.path(), "b").await;
        let c = start(root.path(), "c").await;
        link(&a, &b).await;
        link(&a, &c).await;
        link(&b, &c).await;
        let u = create_and_wait(&a, &[&b, &c], Duration::from_secs(30)).await;
        send_n(&a, u, 5, "before").await;
        send_n(&c, u, 5, "before").await;
        let ma = a.member();
        wait_for(
            "C has A's first messages",
            Duration::from_secs(20),
            || async { count_from(&c, u, &ma).await == 5 },
        )
        .await;

        c.h.shutdown().await;
        assert!(c.h.is_stopped());
        send_n(&a, u, 20, "while down").await;
        send_n(&b, u, 20, "while down").await;
        a.h.update(u).await.unwrap();

        let peers = vec![a.addr.clone(), b.addr.clone()];
        let c2 = start_with(root.path(), "c", |cfg| cfg.peers = peers).await;
        assert_eq!(c2.member(), c.member(), "same identity after restart");
        let mb = b.member();
        wait_for("C caught up", Duration::from_secs(40), || async {
            count_from(&c2, u, &ma).await == 25 && count_from(&c2, u, &mb).await == 20
        })
        .await;
        let msgs = all_messages(&c2, u).await;
        check_order("c", &msgs);
        assert_eq!(msgs.len(), 45);
        // And C can still talk.
        let s = c2.h.send(u, "back").await.unwrap();
        assert_eq!(s, 6, "C's sequence continues after restart");
        let mc = c2.member();
        wait_for("A hears C again", Duration::from_secs(20), || async {
            count_from(&a, u, &mc).await == 6
        })
        .await;
        wait_for("converged", Duration::from_secs(30), || async {
            converged(&[&a, &b, &c2], u).await
        })
        .await;
        shutdown_all(&[&a, &b, &c2]).await;
    })
    .await
    .expect("test timed out");
}

/// A member that was down for longer than every peer's log retention cannot
/// catch up from history: it notices the gap was pruned, rejoins (every owner
/// removes and re-adds it with a fresh KeyPackage) and reads what is sent
/// after, and the others read it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_beyond_retention_rejoins_and_reads_new_messages() {
    init_tracing();
    timeout(Duration::from_secs(150), async {
        let short = |c: &mut node::Config| {
            c.engine.log_retention = 6;
            c.engine.rejoin_after_ms = 3_000;
        };
        let root = root();
        let a = start_with(root.path(), "a", short).await;
        let b = start_with(root.path(), "b", short).await;
        let c = start_with(root.path(), "c", short).await;
        link(&a, &b).await;
        link(&a, &c).await;
        link(&b, &c).await;
        let u = create_and_wait(&a, &[&b, &c], Duration::from_secs(30)).await;
        send_n(&a, u, 2, "before").await;
        let ma = a.member();
        wait_for(
            "C has A's first messages",
            Duration::from_secs(20),
            || async { count_from(&c, u, &ma).await == 2 },
        )
        .await;

        c.h.shutdown().await;
        // Far more than the retention window, in both other groups.
        for _ in 0..4 {
            send_n(&a, u, 5, "while away").await;
            send_n(&b, u, 5, "while away").await;
            a.h.update(u).await.unwrap();
            b.h.update(u).await.unwrap();
        }
        // Retention is applied on the engine's tick (every 200 ms): let
        // A and B prune before C comes back.
        tokio::time::sleep(Duration::from_secs(1)).await;

        let peers = vec![a.addr.clone(), b.addr.clone()];
        let c2 = start_with(root.path(), "c", |cfg| {
            short(cfg);
            cfg.peers = peers;
        })
        .await;
        let mut events = c2.h.subscribe();
        let rejoined = async {
            let mut seen = std::collections::BTreeSet::new();
            while seen.len() < 2 {
                match events.recv().await {
                    Ok(mmls_core::Event::Rejoined { owner, .. }) => {
                        seen.insert(owner);
                    }
                    Ok(_) => {}
                    Err(e) => panic!("event stream: {e}"),
                }
            }
            seen
        };
        let Ok(seen) = tokio::time::timeout(Duration::from_secs(60), rejoined).await else {
            panic!(
                "C did not rejoin A's and B's groups; C's view: {:#?}",
                c2.h.universe_status(u).await
            );
        };
        assert!(seen.contains(&a.member()) && seen.contains(&b.member()));
        wait_for(
            "groups converged after the rejoin",
            Duration::from_secs(40),
            || async { converged(&[&a, &b, &c2], u).await },
        )
        .await;

        // New traffic flows both ways.
        let sa = a.h.send(u, "after rejoin").await.unwrap();
        let sc = c2.h.send(u, "c is back").await.unwrap();
        let mc = c2.member();
        wait_for(
            "C reads A's new message",
            Duration::from_secs(30),
            || async {
                all_messages(&c2, u)
                    .await
                    .iter()
                    .any(|d| d.sender == ma && d.seq == sa && d.body.as_slice() == b"after rejoin")
            },
        )
        .await;
        wait_for(
            "A and B read C's new message",
            Duration::from_secs(30),
            || async {
                for n in [&a, &b] {
                    if !all_messages(n, u)
                        .await
                        .iter()
                        .any(|d| d.sender == mc && d.seq == sc)
                    {
                        return false;
                    }
                }
                true
            },
        )
        .await;
        // What C did get is in order and never twice.
        check_order("c", &all_messages(&c2, u).await);
        shutdown_all(&[&a, &b, &c2]).await;
    })
    .await
    .expect("test timed out");
}
