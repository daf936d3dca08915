//! Single-use KeyPackages (RFC 9420 16.8): an owner uses a member's
//! KeyPackage only if it is last-resort or was handed to that owner alone;
//! a member that publishes no last-resort KeyPackage (as AWS mls-rs) gets
//! a fresh one asked of it by each owner.

use super::*;
use crate::participant::Config;
use crate::testkit::identity;
use crate::MemberId;
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{KeyPackageIn, MlsMessageBodyIn, MlsMessageIn, ProtocolVersion};
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;
use std::collections::{BTreeMap, BTreeSet};

/// A node that announces a single-use KeyPackage and no last-resort one.
fn mls_rs_style() -> Config {
    Config {
        publish_last_resort: false,
        ..config()
    }
}

/// Four nodes; the last publishes no last-resort KeyPackage.
fn net_with_a_single_use_member() -> Net {
    let cfgs = vec![config(), config(), config(), mls_rs_style()];
    Net::with_node_configs((0..4).map(identity).collect(), cfgs, 1_000)
}

/// The hash ref of a KeyPackage (TLS bytes).
fn kp_ref(kp: &[u8]) -> Vec<u8> {
    let crypto = OpenMlsRustCrypto::default();
    let kp = KeyPackageIn::tls_deserialize_exact(kp)
        .expect("KeyPackage")
        .validate(crypto.crypto(), ProtocolVersion::Mls10)
        .expect("valid");
    kp.hash_ref(crypto.crypto())
        .expect("ref")
        .as_slice()
        .to_vec()
}

/// The KeyPackage a node announces on the lobby, and its ref.
fn announced(net: &mut Net, i: usize) -> (Vec<u8>, bool) {
    let Output::Publish(p) = net.node(i).announcement() else {
        panic!("an announcement is a publish")
    };
    let env = Envelope::decode(&p.bytes).expect("envelope");
    let crypto = OpenMlsRustCrypto::default();
    let kp = KeyPackageIn::tls_deserialize_exact(env.body.as_slice())
        .expect("KeyPackage")
        .validate(crypto.crypto(), ProtocolVersion::Mls10)
        .expect("valid");
    (kp_ref(env.body.as_slice()), kp.last_resort())
}

/// Every Welcome published, once each: (group, the KeyPackage refs it is
/// addressed to).
fn welcomes(net: &Net) -> BTreeMap<(Id32, u64), Vec<Vec<u8>>> {
    let mut out = BTreeMap::new();
    for b in &net.all_bytes {
        let Ok(env) = Envelope::decode(b) else {
            continue;
        };
        if env.kind != Kind::Welcome {
            continue;
        }
        let msg = MlsMessageIn::tls_deserialize_exact(env.body.as_slice()).expect("MLS");
        let MlsMessageBodyIn::Welcome(w) = msg.extract() else {
            panic!("a Welcome envelope holds a Welcome")
        };
        let refs = w
            .secrets()
            .iter()
            .map(|s| s.new_member().as_slice().to_vec())
            .collect();
        out.insert((env.group.expect("group"), env.seq), refs);
    }
    out
}

/// Creates the universe of all four from node 0, which first has to ask
/// the single-use member for a KeyPackage of its own.
fn create_with_all(net: &mut Net) -> Id32 {
    let members: Vec<MemberId> = (0..4).map(|i| net.member(i)).collect();
    let err = net
        .node(0)
        .create_universe("t", &members, &[], Profile::Mmls00)
        .expect_err("no usable KeyPackage of node 3 yet");
    assert!(
        matches!(&err, MmlsError::MissingKeyPackage(m) if *m == net.member(3).to_string()),
        "{err}"
    );
    // What the node's driver does with that error: ask (lobby and direct).
    let now = net.now;
    let m3 = net.member(3).to_string();
    net.agents[0].missing_key_package(&m3, now);
    net.absorb(0, vec![]);
    net.run();
    assert_eq!(
        net.node(0).key_package_pool().handed_to_us,
        vec![net.member(3)],
        "node 3 handed node 0 a KeyPackage of its own"
    );
    let (uid, outs) = net
        .node(0)
        .create_universe("t", &members, &[], Profile::Mmls00)
        .expect("create");
    net.absorb(0, outs);
    net.run();
    net.settle();
    uid
}

#[test]
fn a_single_use_key_package_is_never_used_by_two_owners() {
    let mut net = net_with_a_single_use_member();
    let (broadcast, last_resort) = announced(&mut net, 3);
    assert!(!last_resort, "node 3 announces a single-use KeyPackage");
    for i in 0..3 {
        let (_, lr) = announced(&mut net, i);
        assert!(lr, "node {i} announces a last-resort KeyPackage");
    }
    let uid = create_with_all(&mut net);

    // Everyone is in every send group and reads everyone.
    for i in 0..4 {
        let st = net.node(i).status(&uid).expect("status");
        assert_eq!(st.groups.len(), 4, "node {i}: {st:?}");
        assert!(st.groups.iter().all(|g| g.members == 4), "node {i}: {st:?}");
    }
    net.send(3, &uid, "from the single-use member");
    net.send(2, &uid, "to it");
    net.run();
    assert!(net
        .texts(0)
        .contains(&"from the single-use member".to_string()));
    assert!(net.texts(3).contains(&"to it".to_string()));
    net.assert_consistent(&uid);

    // Each owner added node 3 with a KeyPackage of its own; the announced
    // one went into no Welcome at all.
    let last_resort: BTreeSet<Vec<u8>> = (0..3).map(|i| announced(&mut net, i).0).collect();
    let node3_refs: Vec<Vec<u8>> = welcomes(&net)
        .into_values()
        .flatten()
        .filter(|r| !last_resort.contains(r))
        .collect();
    assert_eq!(node3_refs.len(), 3, "one Welcome of node 3 per other owner");
    let distinct: BTreeSet<&Vec<u8>> = node3_refs.iter().collect();
    assert_eq!(distinct.len(), 3, "a single-use KeyPackage used twice");
    assert!(!node3_refs.contains(&broadcast));

    // Node 3 forgot each of them once its Welcome arrived, and refilled;
    // what it still has out are those handed in the owners' other suites
    // (a request gets one per suite the requester implements).
    let used = crate::ciphersuites::X25519_AES128GCM;
    let pool = net.node(3).key_package_pool();
    assert!(!pool.issued_suites.contains(&used), "{pool:?}");
    assert_eq!(pool.fresh, net.node(3).config().kp_pool_size, "{pool:?}");
    // The owners hold no handed KeyPackage of the groups' suite any more:
    // each was spent.
    for i in 0..3 {
        let pool = net.node(i).key_package_pool();
        assert!(!pool.handed_suites.contains(&used), "node {i}: {pool:?}");
    }
}

#[test]
fn owners_wait_rather_than_reuse_a_single_use_key_package() {
    let mut net = net_with_a_single_use_member();
    let members: Vec<MemberId> = (0..3).map(|i| net.member(i)).collect();
    let (uid, outs) = net
        .node(0)
        .create_universe("t", &members, &[], Profile::Mmls00)
        .expect("create");
    net.absorb(0, outs);
    net.run();
    net.settle();

    // The admin gets a KeyPackage from node 3 and adds it; then node 3 goes
    // away before the other owners could ask for theirs.
    let m3 = net.member(3);
    assert!(matches!(
        net.node(0).add_member(&uid, &m3),
        Err(MmlsError::MissingKeyPackage(_))
    ));
    let now = net.now;
    net.agents[0].missing_key_package(m3.as_str(), now);
    net.absorb(0, vec![]);
    net.run();
    let outs = net.node(0).add_member(&uid, &m3).expect("add");
    net.offline[3] = true;
    net.absorb(0, outs);
    net.run();
    net.settle();
    for i in 1..3 {
        let st = net.node(i).status(&uid).expect("status");
        assert!(st.roster.contains(&m3), "node {i} mirrors the add");
        let own = st.own_group.expect("own group");
        let g = st.groups.iter().find(|g| g.group == own).expect("own");
        assert_eq!(
            g.members, 3,
            "node {i} added node 3 without a KeyPackage of its own"
        );
    }
    let before: usize = welcomes(&net).len();

    // Back: the waiting owners ask, each gets its own, and all is well.
    net.offline[3] = false;
    net.settle();
    net.settle();
    for i in 0..4 {
        let st = net.node(i).status(&uid).expect("status");
        assert_eq!(st.groups.len(), 4, "node {i}: {st:?}");
        assert!(st.groups.iter().all(|g| g.members == 4), "node {i}: {st:?}");
    }
    net.send(1, &uid, "you are in");
    net.run();
    assert!(net.texts(3).contains(&"you are in".to_string()));
    let last_resort: BTreeSet<Vec<u8>> = (0..3).map(|i| announced(&mut net, i).0).collect();
    let node3_refs: Vec<Vec<u8>> = welcomes(&net)
        .into_values()
        .flatten()
        .filter(|r| !last_resort.contains(r))
        .collect();
    assert!(welcomes(&net).len() > before);
    let distinct: BTreeSet<&Vec<u8>> = node3_refs.iter().collect();
    assert_eq!(distinct.len(), node3_refs.len(), "a KeyPackage used twice");
    assert_eq!(distinct.len(), 3);
}

#[test]
fn a_key_package_handed_to_one_owner_is_no_use_to_another() {
    let mut net = net_with_a_single_use_member();
    let m3 = net.member(3);
    // A lobby request from node 1 (a target hops away is asked this way):
    // node 3 answers on the lobby with a KeyPackage for node 1 alone.
    let req = crate::sync::key_package_request(&net.member(1), m3.as_str(), net.now).encode();
    let outs = net.node(3).handle_incoming(&req).expect("request");
    let (env, raw) = outs
        .iter()
        .filter_map(|o| match o {
            Output::Publish(p) => Envelope::decode(&p.bytes)
                .ok()
                .map(|e| (e, p.bytes.clone())),
            _ => None,
        })
        .find(|(e, _)| e.kind == Kind::KeyPackage && e.to.is_some())
        .expect("a handed KeyPackage on the lobby");
    assert_eq!(env.to.as_deref(), Some(net.member(1).as_str()));
    assert_eq!(net.node(3).key_package_pool().issued, 1);
    // Asked again at once: the same one, not another.
    let again = net.node(3).handle_incoming(&req).expect("request");
    assert!(again
        .iter()
        .any(|o| matches!(o, Output::Publish(p) if p.bytes == raw)));
    assert_eq!(net.node(3).key_package_pool().issued, 1);

    // Node 2 sees it (gossip reaches everyone) and does not take it.
    net.deliver(2, &raw);
    assert!(net.node(2).key_package_pool().handed_to_us.is_empty());
    // Re-addressed to node 2, its signature no longer holds.
    let mut forged = env.clone();
    forged.to = Some(net.member(2).to_string());
    let err = net
        .node(2)
        .handle_incoming(&forged.encode())
        .expect_err("re-addressed");
    assert!(matches!(err, MmlsError::BadSignature), "{err}");
    // Unsigned, it is refused too.
    forged.sig = None;
    assert!(net.node(2).handle_incoming(&forged.encode()).is_err());
    assert!(net.node(2).key_package_pool().handed_to_us.is_empty());
    // Node 1, its addressee, keeps it.
    net.deliver(1, &raw);
    assert_eq!(net.node(1).key_package_pool().handed_to_us, vec![m3]);
}

#[test]
fn a_peer_answers_for_an_unreachable_target_with_its_published_key_package() {
    let mut net = Net::new(4);
    let m3 = net.member(3);
    // Node 0 never heard node 3's announcement, and node 3 is away.
    net.node(0).forget_key_package(&m3);
    net.offline[3] = true;
    net.run();
    let members: Vec<MemberId> = (0..4).map(|i| net.member(i)).collect();
    let err = net
        .node(0)
        .create_universe("t", &members, &[], Profile::Mmls00)
        .expect_err("nothing of node 3");
    assert!(matches!(err, MmlsError::MissingKeyPackage(_)));
    let now = net.now;
    net.agents[0].missing_key_package(m3.as_str(), now);
    net.absorb(0, vec![]);
    net.run();
    // A neighbour answered with node 3's last-resort KeyPackage.
    let (uid, outs) = net
        .node(0)
        .create_universe("t", &members, &[], Profile::Mmls00)
        .expect("create with the relayed KeyPackage");
    net.absorb(0, outs);
    net.offline[3] = false;
    net.run();
    net.settle();
    let st = net.node(3).status(&uid).expect("node 3 joined");
    assert_eq!(st.groups.len(), 4, "{st:?}");
}

/// In a universe that accepts only 0x0003, a member without a last-resort
/// KeyPackage is added by each owner with a single-use 0x0003 KeyPackage
/// handed to that owner alone: every owner's group gets it, none uses
/// another's, and none uses the 0x0001 ones handed alongside.
#[test]
fn a_handed_key_package_in_the_groups_suite_is_used_once() {
    let mut net = net_with_a_single_use_member();
    let members: Vec<MemberId> = (0..4).map(|i| net.member(i)).collect();
    let suites = [crate::ciphersuites::X25519_CHACHA20POLY1305];
    let err = net
        .node(0)
        .create_universe_with("t", &members, &[], Profile::Mmls00, vec![], &suites)
        .expect_err("no usable KeyPackage of node 3 yet");
    assert!(matches!(&err, MmlsError::MissingKeyPackage(_)), "{err}");
    let now = net.now;
    let m3 = net.member(3).to_string();
    net.agents[0].missing_key_package(&m3, now);
    net.absorb(0, vec![]);
    net.run();
    let (uid, outs) = net
        .node(0)
        .create_universe_with("t", &members, &[], Profile::Mmls00, vec![], &suites)
        .expect("create with the handed 0x0003 KeyPackage");
    net.absorb(0, outs);
    net.run();
    net.settle();
    for i in 0..4 {
        let st = net.node(i).status(&uid).expect("status");
        assert_eq!(st.groups.len(), 4, "node {i}: {st:?}");
        assert!(st.groups.iter().all(|g| g.members == 4), "node {i}: {st:?}");
        assert!(
            st.groups.iter().all(|g| g.ciphersuite == suites[0]),
            "node {i}: {st:?}"
        );
    }
    net.send(1, &uid, "to the single-use member");
    net.send(3, &uid, "from it");
    net.run();
    assert!(net
        .texts(3)
        .contains(&"to the single-use member".to_string()));
    assert!(net.texts(2).contains(&"from it".to_string()));
    net.assert_consistent(&uid);
    // Node 3's KeyPackages in the Welcomes: one per other owner, all
    // different, none announced.
    let last_resort: BTreeSet<Vec<u8>> = (0..3)
        .flat_map(|i| {
            let Output::Publish(p) = net.node(i).announcement() else {
                panic!()
            };
            let env = Envelope::decode(&p.bytes).expect("envelope");
            std::iter::once(env.body.to_vec())
                .chain(env.proposals.iter().map(|k| k.to_vec()))
                .map(|k| kp_ref(&k))
                .collect::<Vec<_>>()
        })
        .collect();
    let node3_refs: Vec<Vec<u8>> = welcomes(&net)
        .into_values()
        .flatten()
        .filter(|r| !last_resort.contains(r))
        .collect();
    assert_eq!(node3_refs.len(), 3, "one Welcome of node 3 per other owner");
    let distinct: BTreeSet<&Vec<u8>> = node3_refs.iter().collect();
    assert_eq!(distinct.len(), 3, "a single-use KeyPackage used twice");
}
