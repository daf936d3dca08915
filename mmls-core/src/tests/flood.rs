//! Floods from strangers: junk send groups, junk KeyPackages, throwaway
//! device statements. Whatever the flood, what we keep stays within the
//! stated bounds (SECURITY.md, "Hostile neighbours") and nothing unverified
//! is relayed.

use super::*;
use crate::devices::UserKey;
use crate::identity::Identity;
use crate::participant::{Participant, MAX_DIRECTORY, MAX_LINK_AHEAD_MS};
use crate::relay::{relay, Relay};
use crate::store::Store;

fn junk_entry(uid: Id32, group: [u8; 32], seq: u64, body: usize) -> Vec<u8> {
    let mut e = Envelope::new(Kind::Application, vec![0x5a; body]);
    e.universe = Some(uid);
    e.group = Some(Id32(group));
    e.seq = seq;
    e.epoch = 1;
    e.encode()
}

fn buffer_rows(store: &Store) -> usize {
    store
        .range(Table::Buffer, &[], None, usize::MAX)
        .unwrap()
        .len()
}

#[test]
fn junk_for_made_up_groups_is_held_within_budget_never_persisted_nor_relayed() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    let cfg = net.config.clone();
    // 4,000 made-up groups, one 1 KiB entry each (the bundle), then
    // 200 entries of 64 KiB: the count bound, then the byte bound, bite.
    let mut verdicts = vec![];
    for i in 0..4_200u32 {
        let mut g = [0u8; 32];
        g[..4].copy_from_slice(&i.to_be_bytes());
        let body = if i < 4_000 { 1024 } else { 64 * 1024 };
        let r = net
            .node(0)
            .handle_incoming(&junk_entry(uid, g, 3 + u64::from(i % 5), body));
        assert!(matches!(r, Err(MmlsError::Held(_))), "{r:?}");
        verdicts.push(relay(&r, false));
        verdicts.push(relay(&r, true));
        let held = net.node(0).held_unverified(&uid);
        assert!(held.entries <= cfg.held_per_universe, "{held:?}");
        assert!(held.bytes <= cfg.held_bytes_per_universe, "{held:?}");
    }
    assert!(verdicts.iter().all(|v| *v == Relay::Drop));
    let held = net.node(0).held_unverified(&uid);
    assert!(held.entries > 0, "the budget holds the newest");
    // Nothing on disk, nothing in the buffers, nothing counted as refused.
    assert_eq!(buffer_rows(&net.stores[0]), 0);
    assert_eq!(net.node(0).buffered_entries(), 0);
    assert_eq!(net.node(0).rejected_inputs(), 0);
    // Held entries age out.
    net.tick(cfg.held_max_age_ms);
    assert_eq!(net.node(0).held_unverified(&uid).entries, 0);
    // The universe still works.
    net.send(1, &uid, "after the flood");
    net.run();
    assert!(net.texts(0).contains(&"after the flood".to_string()));
}

#[test]
fn an_entry_of_a_group_we_do_not_know_yet_is_held_then_processed_when_we_join() {
    let mut net = Net::new(3);
    // Node 2 hears nothing while the universe forms and node 1 speaks.
    net.offline[2] = true;
    let uid = net.universe(Profile::Mmls00);
    net.send(1, &uid, "early");
    net.run();
    net.offline[2] = false;
    let m1 = net.member(1);
    let g1 = net.node(1).group_of(&uid, &m1).unwrap();
    let of_g1 = |b: &Vec<u8>| Envelope::decode(b).is_ok_and(|e| e.group == Some(g1));
    let welcome = |b: &Vec<u8>| Envelope::decode(b).is_ok_and(|e| e.kind == Kind::Welcome);
    let wire = net.all_bytes.clone();
    // Feeds node 2 alone, keeping what it delivers (nothing is relayed).
    let feed = |net: &mut Net, b: &[u8]| {
        let r = net.node(2).handle_incoming(b);
        if let Ok(outs) = &r {
            for o in outs {
                if let Output::Event(Event::Message(d)) = o {
                    net.delivered[2].push(d.clone());
                }
            }
        }
        r
    };
    // Everything but node 1's group first: node 2 joins the universe.
    for b in wire.iter().filter(|b| !of_g1(b)) {
        let _ = feed(&mut net, b);
    }
    assert!(net.node(2).universes().contains(&uid));
    assert!(net.node(2).group_of(&uid, &m1).is_none());
    // Node 1's stream before its Welcome: held, not relayed.
    let mut held = 0;
    for b in wire.iter().filter(|b| of_g1(b) && !welcome(b)) {
        let r = feed(&mut net, b);
        if matches!(r, Err(MmlsError::Held(_))) {
            assert_eq!(relay(&r, false), Relay::Drop);
            held += 1;
        }
    }
    assert!(held > 0, "nothing of node 1's group was held");
    assert_eq!(net.node(2).held_unverified(&uid).entries, held);
    assert!(!net.texts(2).contains(&"early".to_string()));
    // Its Welcome: node 2 joins, and the held entries are processed at
    // once (no fetch: nothing else reaches node 2).
    for b in wire.iter().filter(|b| of_g1(b) && welcome(b)) {
        let _ = feed(&mut net, b);
    }
    // Outputs of an input that came back `Err` wait for the next call.
    let now = net.now;
    for o in net.node(2).tick(now) {
        if let Output::Event(Event::Message(d)) = o {
            net.delivered[2].push(d);
        }
    }
    assert!(net.node(2).group_of(&uid, &m1).is_some());
    assert_eq!(net.node(2).held_unverified(&uid).entries, 0);
    assert!(
        net.texts(2).contains(&"early".to_string()),
        "{:?}",
        net.texts(2)
    );
}

#[test]
fn a_restart_drops_buffered_entries_of_groups_no_universe_knows() {
    // A store of before held entries: junk persisted in `Table::Buffer`.
    let mut net = Net::new(2);
    let _uid = net.universe(Profile::Mmls00);
    let store = net.stores[0].clone();
    let mut key = vec![0xab; 32];
    key.extend_from_slice(&7u64.to_be_bytes());
    store.put(Table::Buffer, &key, b"junk");
    store.commit().unwrap();
    assert_eq!(buffer_rows(&store), 1);
    let (p, _) = Participant::open(net.ids[0].clone(), store.clone(), config(), net.now).unwrap();
    assert_eq!(p.buffered_entries(), 0);
    assert_eq!(buffer_rows(&store), 0);
}

/// `n` strangers, each a real node with its KeyPackages.
fn strangers(from: usize, n: usize) -> Vec<Participant> {
    (from..from + n)
        .map(|i| {
            let id = crate::testkit::identity(i);
            Participant::open(id, Store::in_memory().unwrap(), config(), 1_000)
                .unwrap()
                .0
        })
        .collect()
}

#[test]
fn announced_and_handed_key_packages_of_strangers_are_bounded_newest_kept() {
    let cfg = crate::Config {
        kp_strangers_max: 8,
        kp_handed_max: 4,
        ..config()
    };
    let mut net = Net::with_config(3, cfg);
    let uid = net.universe(Profile::Mmls00);
    let members = net.node(0).known_key_package_count();
    let me = net.member(0);
    let mut flood = strangers(100, 20);
    for s in &flood {
        let Output::Publish(a) = s.announcement() else {
            panic!("announcement")
        };
        let r = net.node(0).handle_incoming(&a.bytes);
        assert!(r.is_ok(), "{r:?}");
        assert!(net.node(0).known_key_package_count() <= members + 8);
    }
    assert_eq!(net.node(0).known_key_package_count(), members + 8);
    // The newest stranger is kept, the first one went; members stay.
    let last = flood.last().unwrap().me().to_string();
    let first = flood[0].me().to_string();
    assert!(net.node(0).published_key_package(&last).is_some());
    assert!(net.node(0).published_key_package(&first).is_none());
    let m1 = net.member(1);
    assert!(net.node(0).published_key_package(m1.as_str()).is_some());
    // Handed to us alone: bounded too.
    for s in flood.iter_mut() {
        let (envs, _) = s
            .hand_key_packages(s.me().to_string().as_str(), &me, &[0x0001])
            .unwrap();
        for e in envs {
            let r = net.node(0).handle_incoming(&e);
            assert!(r.is_ok(), "{r:?}");
        }
        assert!(net.node(0).key_package_pool().handed_to_us.len() <= 4);
    }
    let handed = net.node(0).key_package_pool().handed_to_us;
    assert_eq!(handed.len(), 4);
    assert!(handed.contains(flood.last().unwrap().me()));
    // The universe still works.
    net.send(1, &uid, "still fine");
    net.run();
    assert!(net.texts(0).contains(&"still fine".to_string()));
}

fn link_envelope(user: &UserKey, device: &Identity, at: u64) -> Vec<u8> {
    Envelope::new(Kind::DeviceLink, user.link(device, at).encode()).encode()
}

#[test]
fn a_full_device_directory_evicts_strangers_oldest_first_and_learns_a_real_device() {
    let mut net = Net::new(2);
    let _uid = net.universe(Profile::Mmls00);
    let now = net.now;
    let junk = UserKey::generate();
    let flood = MAX_DIRECTORY + 100;
    for i in 0..flood {
        let mut seed = [0x77u8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let r = net
            .node(0)
            .handle_incoming(&link_envelope(&junk, &Identity::from_seed(seed), now));
        assert!(r.is_ok(), "{r:?}");
    }
    assert_eq!(net.node(0).devices().len(), MAX_DIRECTORY);
    // The first statements went, the last stayed.
    let first = Identity::from_seed({
        let mut s = [0x77u8; 32];
        s[..8].copy_from_slice(&0u64.to_be_bytes());
        s
    });
    assert!(net.node(0).user_of(&first.member_id()).is_none());
    // A real new device, after the flood, is learnt.
    let alice = UserKey::generate();
    let phone = crate::testkit::identity(50);
    net.node(0)
        .handle_incoming(&link_envelope(&alice, &phone, now))
        .unwrap();
    assert_eq!(
        net.node(0).user_of(&phone.member_id()),
        Some(alice.user_id())
    );
    assert_eq!(net.node(0).devices().len(), MAX_DIRECTORY);
}

#[test]
fn a_device_statement_dated_far_ahead_is_refused() {
    let mut net = Net::new(2);
    let now = net.now;
    let alice = UserKey::generate();
    let phone = crate::testkit::identity(50);
    for at in [now + MAX_LINK_AHEAD_MS + 1, u64::MAX] {
        let r = net
            .node(0)
            .handle_incoming(&link_envelope(&alice, &phone, at));
        assert!(
            matches!(r, Err(MmlsError::DeviceLinkFromFuture { .. })),
            "{r:?}"
        );
        assert_eq!(relay(&r, true), Relay::Drop);
        let r = net.node(0).publish_device_link(alice.link(&phone, at));
        assert!(
            matches!(r, Err(MmlsError::DeviceLinkFromFuture { .. })),
            "{r:?}"
        );
    }
    assert!(net.node(0).devices().is_empty());
    // Within ten minutes of our clock: accepted (clock skew).
    net.node(0)
        .handle_incoming(&link_envelope(&alice, &phone, now + MAX_LINK_AHEAD_MS))
        .unwrap();
    assert_eq!(net.node(0).devices().len(), 1);
}
