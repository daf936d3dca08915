//! Delivery: every member reads every other, exactly once, in per-sender
//! order, under shuffling, duplication and catch-up through any peer.

use super::*;

fn everyone_reads_everyone(n: usize, profile: Profile) {
    let mut net = Net::new(n);
    let uid = net.universe(profile);
    for i in 0..n {
        net.send(i, &uid, &format!("hello from {i}"));
        net.run();
        net.send(i, &uid, &format!("bye from {i}"));
        net.run();
    }
    net.settle();
    for i in 0..n {
        let mut got = net.texts(i);
        got.sort();
        let mut want: Vec<String> = (0..n)
            .filter(|j| *j != i)
            .flat_map(|j| [format!("hello from {j}"), format!("bye from {j}")])
            .collect();
        want.sort();
        assert_eq!(got, want, "node {i}");
        assert!(
            net.rejections[i].is_empty(),
            "node {i}: {:?}",
            net.rejections[i]
        );
    }
    net.assert_consistent(&uid);
}

#[test]
fn universe_of_2() {
    everyone_reads_everyone(2, Profile::Mmls00);
}

#[test]
fn universe_of_5() {
    everyone_reads_everyone(5, Profile::Mmls00);
}

#[test]
fn universe_of_16() {
    everyone_reads_everyone(16, Profile::Mmls00);
}

#[test]
fn dmls_profile_universe_works_end_to_end() {
    everyone_reads_everyone(4, Profile::Dmls);
}

#[test]
fn per_sender_order_and_sequence_numbers() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    for k in 0..20 {
        net.send(1, &uid, &format!("m{k}"));
    }
    net.run();
    let seqs: Vec<u64> = net.delivered[0].iter().map(|d| d.seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    assert!(net.delivered[0].iter().all(|d| d.sender == net.member(1)));
}

#[test]
fn randomized_delivery_converges_exactly_once() {
    for seed in 0..4u64 {
        let n = 4;
        let mut net = Net::new(n);
        let uid = net.universe(Profile::Mmls00);
        net.rng = rand::SeedableRng::seed_from_u64(seed);
        net.shuffle = true;
        net.dup_prob = 0.2;
        for round in 0..3 {
            for i in 0..n {
                net.send(i, &uid, &format!("{i}-{round}"));
            }
            net.update(round % n, &uid);
            net.run();
            net.tick(100);
        }
        net.shuffle = false;
        net.dup_prob = 0.0;
        net.settle();
        for i in 0..n {
            let mut got = net.texts(i);
            got.sort();
            let mut want: Vec<String> = (0..n)
                .filter(|j| *j != i)
                .flat_map(|j| (0..3).map(move |r| format!("{j}-{r}")))
                .collect();
            want.sort();
            assert_eq!(got, want, "seed {seed} node {i}");
        }
        net.assert_consistent(&uid);
    }
}

#[test]
fn both_profiles_derive_different_psks() {
    use openmls::prelude::*;
    let id = crate::identity::Identity::from_seed([3; 32]);
    let provider = crate::store::MmlsProvider::new(crate::store::Store::in_memory().unwrap());
    let group = MlsGroup::builder()
        .ciphersuite(crate::DEFAULT_CIPHERSUITE)
        .build(&provider, &id, id.credential_with_key())
        .unwrap();
    let u = crate::id::Id32([5; 32]);
    let a = Profile::Mmls00
        .export_psk(provider.crypto(), &group, &u, 32)
        .unwrap();
    let b = Profile::Dmls
        .export_psk(provider.crypto(), &group, &u, 32)
        .unwrap();
    assert_eq!(a.len(), 32);
    assert_eq!(b.len(), 32);
    assert_ne!(a, b);
    // mmls-00 binds the universe id; dmls does not.
    let a2 = Profile::Mmls00
        .export_psk(provider.crypto(), &group, &crate::id::Id32([6; 32]), 32)
        .unwrap();
    let b2 = Profile::Dmls
        .export_psk(provider.crypto(), &group, &crate::id::Id32([6; 32]), 32)
        .unwrap();
    assert_ne!(a, a2);
    assert_eq!(b, b2);
}

#[test]
fn offline_member_catches_up_through_sync() {
    let mut net = Net::new(4);
    let uid = net.universe(Profile::Mmls00);
    net.offline[3] = true;
    for k in 0..5 {
        net.send(k % 3, &uid, &format!("while away {k}"));
        net.update(k % 3, &uid);
        net.run();
        net.tick(100);
    }
    net.settle();
    net.offline[3] = false;
    // Coming back: exchange summaries as a driver would.
    for peer in 0..3 {
        let sums = net.node(peer).summaries();
        for s in sums {
            let reqs = net.node(3).plan_fetches(&s);
            for r in reqs {
                let resp = net.node(peer).serve_fetch(&r).unwrap();
                let outs = net.node(3).handle_fetch_response(&r, resp);
                net.absorb(3, outs);
            }
        }
        net.run();
    }
    net.settle();
    let got = net.texts(3);
    let st = net.node(3).status(&uid);
    for k in 0..5 {
        assert!(
            got.contains(&format!("while away {k}")),
            "{got:?} {:?} {st:?}",
            net.rejections[3]
        );
    }
    net.assert_consistent(&uid);
}

/// Store-and-forward: a member that missed an owner's entries catches up
/// from another member (the owner unreachable), even after that member
/// restarted from its store; a member that joined later says it never had
/// old entries rather than that they were pruned.
#[test]
fn catch_up_through_a_peer_that_is_not_the_owner() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    net.offline[2] = true;
    for k in 0..4 {
        net.send(0, &uid, &format!("via the middle {k}"));
    }
    net.update(0, &uid);
    net.run();
    net.settle();
    // The owner disappears; node 1 restarts from its store.
    net.offline[0] = true;
    net.nodes[1] = None;
    let (p, outs) = crate::participant::Participant::open(
        net.ids[1].clone(),
        net.stores[1].clone(),
        config(),
        net.now,
    )
    .unwrap();
    net.nodes[1] = Some(p);
    net.absorb(1, outs);
    net.offline[2] = false;
    let m0 = net.member(0);
    let g0 = net.node(2).group_of(&uid, &m0).unwrap();
    let sums = net.node(1).summaries();
    let mut fetched = 0;
    for s in sums {
        for r in net.node(2).plan_fetches(&s) {
            let resp = net.node(1).serve_fetch(&r).unwrap();
            assert!(!resp.pruned);
            fetched += resp.envelopes.len();
            let outs = net.node(2).handle_fetch_response(&r, resp);
            net.absorb(2, outs);
        }
    }
    net.run();
    assert!(fetched >= 5, "served {fetched} entries");
    let got = net.texts(2);
    for k in 0..4 {
        assert!(got.contains(&format!("via the middle {k}")), "{got:?}");
    }
    let st = net.node(2).status(&uid).unwrap();
    let view = st.groups.iter().find(|s| s.group == g0).unwrap();
    assert!(!view.stale && !view.blocked, "{view:?}");
    // Node 1 joined node 0's group at its Welcome: asking it for seq 0 of
    // that group gets "never had it", not "pruned".
    let r = crate::sync::FetchRequest::Range {
        universe: uid,
        group: g0,
        from: 0,
    };
    let resp = net.node(1).serve_fetch(&r).unwrap();
    assert!(resp.envelopes.is_empty());
    assert!(!resp.pruned);
    assert!(resp.oldest.is_some_and(|o| o > 0));
}
