//! Federated universes: X.509 credentials checked against the anchor of the
//! member's own domain, anchor changes by admins only, certificate lifetime.
//! Certificates are made here with rcgen.

use super::*;
use crate::federation::{self, DomainAnchor, FederationError};
use crate::identity::{Identity, MemberId};
use crate::testkit::identity;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType, PKCS_ED25519};

/// Driver time of these tests: 2026-05-28 (ms).
const NOW_MS: u64 = 1_780_000_000_000;
const NOW: i64 = (NOW_MS / 1000) as i64;
const DAY: i64 = 86_400;

fn at(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap()
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    /// A CA (ECDSA P-256, rcgen's default) named `name`.
    fn new(name: &str) -> Ca {
        Ca::issued(name, None)
    }

    /// A CA, self-signed or (an intermediate) signed by `parent`.
    fn issued(name: &str, parent: Option<&Ca>) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.not_before = at(NOW - 365 * DAY);
        p.not_after = at(NOW + 365 * DAY);
        let cert = match parent {
            None => p.self_signed(&key).unwrap(),
            Some(ca) => p.signed_by(&key, &ca.cert, &ca.key).unwrap(),
        };
        Ca { cert, key }
    }

    fn der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    fn anchor(&self, domain: &str) -> DomainAnchor {
        DomainAnchor {
            domain: domain.into(),
            cert: self.der(),
        }
    }

    /// A leaf certifying `id`'s Ed25519 key, naming `email`, valid in
    /// [not_before, not_after] (unix seconds).
    fn leaf_for(&self, id: &Identity, email: &str, not_before: i64, not_after: i64) -> Vec<u8> {
        let mut pkcs8 = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        pkcs8.extend_from_slice(id.secret_bytes().as_slice());
        let member_key = KeyPair::try_from(pkcs8.as_slice()).unwrap();
        assert!(member_key.is_compatible(&PKCS_ED25519));
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, email);
        p.subject_alt_names = vec![SanType::Rfc822Name(email.try_into().unwrap())];
        p.not_before = at(not_before);
        p.not_after = at(not_after);
        p.signed_by(&member_key, &self.cert, &self.key)
            .unwrap()
            .der()
            .to_vec()
    }

    /// A leaf valid now, as a one-certificate chain.
    fn chain_for(&self, id: &Identity, email: &str) -> Vec<Vec<u8>> {
        vec![self.leaf_for(id, email, NOW - DAY, NOW + 30 * DAY)]
    }
}

/// Three organisations, each with its own CA; charlie's members are issued
/// by an intermediate under charlie's root.
struct Coalition {
    alpha: Ca,
    beta: Ca,
    charlie: Ca,
    charlie_ops: Ca,
}

impl Coalition {
    fn new() -> Coalition {
        let charlie = Ca::new("charlie root");
        let charlie_ops = Ca::issued("charlie ops", Some(&charlie));
        Coalition {
            alpha: Ca::new("alpha CA"),
            beta: Ca::new("beta CA"),
            charlie,
            charlie_ops,
        }
    }

    fn anchors(&self) -> Vec<DomainAnchor> {
        vec![
            self.alpha.anchor("alpha.example"),
            self.beta.anchor("beta.example"),
            self.charlie.anchor("charlie.example"),
        ]
    }

    /// Node 0 alice@alpha, 1 bob@beta, 2 cathy@charlie (via the
    /// intermediate), then `extra` more identities as given.
    fn identities(&self, extra: Vec<Identity>) -> Vec<Identity> {
        let (a, b, c) = (identity(0), identity(1), identity(2));
        let mut cathy =
            vec![self
                .charlie_ops
                .leaf_for(&c, "cathy@charlie.example", NOW - DAY, NOW + 30 * DAY)];
        cathy.push(self.charlie_ops.der());
        let mut ids = vec![
            a.clone()
                .with_x509_chain(self.alpha.chain_for(&a, "alice@alpha.example"))
                .unwrap(),
            b.clone()
                .with_x509_chain(self.beta.chain_for(&b, "bob@beta.example"))
                .unwrap(),
            c.with_x509_chain(cathy).unwrap(),
        ];
        ids.extend(extra);
        ids
    }
}

/// A network of `ids` where node 0 created a federated universe with the
/// first three.
fn federated_net(co: &Coalition, ids: Vec<Identity>) -> (Net, Id32) {
    let mut net = Net::with_identities(ids, config(), NOW_MS);
    let members: Vec<MemberId> = (0..3).map(|i| net.member(i)).collect();
    let (uid, outs) = net
        .node(0)
        .create_federated_universe("coalition", &members, &[], Profile::Mmls00, co.anchors())
        .expect("create");
    net.absorb(0, outs);
    net.run();
    net.settle();
    (net, uid)
}

/// What a refused input must leave untouched: epochs, positions, roster,
/// anchors, certificates.
fn snapshot(net: &mut Net, i: usize, uid: &Id32) -> String {
    format!("{:?}", net.node(i).status(uid).unwrap())
}

/// The protocol state a refused stream entry must not move: each group's
/// epoch, authenticator and position, the roster, anchors, certificates
/// (entries behind the refused one may wait in the buffer).
fn protocol_state(net: &mut Net, i: usize, uid: &Id32) -> String {
    let st = net.node(i).status(uid).unwrap();
    let groups: Vec<_> = st
        .groups
        .iter()
        .map(|g| (g.group, g.epoch, g.auth.clone(), g.next_seq))
        .collect();
    format!("{groups:?} {:?} {:?} {:?}", st.roster, st.anchors, st.certs)
}

#[test]
fn three_domains_talk_and_every_send_group_carries_the_anchors() {
    let co = Coalition::new();
    let (mut net, uid) = federated_net(&co, co.identities(vec![]));
    for i in 0..3 {
        net.send(i, &uid, &format!("from {i}"));
    }
    net.run();
    net.settle();
    for i in 0..3 {
        let texts = net.texts(i);
        for j in (0..3).filter(|j| *j != i) {
            assert!(texts.contains(&format!("from {j}")), "node {i}: {texts:?}");
        }
        let st = net.node(i).status(&uid).unwrap();
        let domains: Vec<&str> = st.anchors.iter().map(|a| a.domain.as_str()).collect();
        assert_eq!(
            domains,
            ["alpha.example", "beta.example", "charlie.example"]
        );
        // Every member's certificate, by domain, as this node validated it.
        let mut seen: Vec<(String, String)> = st
            .certs
            .iter()
            .map(|c| (c.name.clone(), c.domain.clone()))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("alice@alpha.example".into(), "alpha.example".into()),
                ("bob@beta.example".into(), "beta.example".into()),
                ("cathy@charlie.example".into(), "charlie.example".into()),
            ],
            "node {i}"
        );
        for g in st.groups.iter().map(|g| g.group) {
            assert_eq!(net.node(i).anchors_of_group(&g).unwrap(), co.anchors());
        }
    }
    net.assert_consistent(&uid);
}

/// With X.509 the certified name is the user: Alice's two devices, each
/// certified as alice@alpha.example by her domain's CA, speak for her.
#[test]
fn two_devices_certified_with_one_name_are_one_user() {
    let co = Coalition::new();
    let phone = identity(3);
    let phone = phone
        .clone()
        .with_x509_chain(co.alpha.chain_for(&phone, "alice@alpha.example"))
        .unwrap();
    let mut net = Net::with_identities(co.identities(vec![phone]), config(), NOW_MS);
    // Bob names Alice by her certified name: both devices are found from
    // the KeyPackages they published.
    let mut alice = net.node(1).devices_of("alice@alpha.example");
    alice.sort();
    let mut want = vec![net.member(0), net.member(3)];
    want.sort();
    assert_eq!(alice, want);
    assert!(net.node(1).devices_of("nobody@alpha.example").is_empty());
    let mut members = alice;
    members.push(net.member(2));
    let (uid, outs) = net
        .node(1)
        .create_federated_universe("coalition", &members, &[], Profile::Mmls00, co.anchors())
        .expect("create");
    net.absorb(1, outs);
    net.run();
    net.settle();
    for i in [0, 3, 2] {
        net.send(i, &uid, &format!("from {i}"));
    }
    net.run();
    net.settle();
    let user_of = |text: &str| {
        net.delivered[1]
            .iter()
            .find(|d| d.body.as_slice() == text.as_bytes())
            .map(|d| d.user.clone())
            .expect("delivered")
    };
    assert_eq!(user_of("from 0").as_deref(), Some("alice@alpha.example"));
    assert_eq!(user_of("from 3").as_deref(), Some("alice@alpha.example"));
    assert_eq!(user_of("from 2").as_deref(), Some("cathy@charlie.example"));
}

#[test]
fn a_ca_of_one_domain_issuing_for_another_is_refused_naming_both() {
    let co = Coalition::new();
    // Mallory claims beta.example, but alpha's CA signed it.
    let m = identity(3);
    let mallory = m
        .clone()
        .with_x509_chain(co.alpha.chain_for(&m, "mallory@beta.example"))
        .unwrap();
    let (mut net, uid) = federated_net(&co, co.identities(vec![mallory]));
    let before = snapshot(&mut net, 0, &uid);
    let who = net.member(3);
    let e = net.node(0).add_member(&uid, &who).unwrap_err();
    assert!(
        matches!(
            &e,
            MmlsError::Federation(FederationError::CrossDomain { member_domain, issuer_domain })
                if member_domain == "beta.example" && issuer_domain == "alpha.example"
        ),
        "{e}"
    );
    assert!(e.to_string().contains("beta.example") && e.to_string().contains("alpha.example"));
    assert_eq!(snapshot(&mut net, 0, &uid), before);
}

#[test]
fn a_chain_that_does_not_reach_the_anchor_is_refused() {
    let co = Coalition::new();
    let rogue = Ca::new("rogue CA");
    let m = identity(3);
    let eve = m
        .clone()
        .with_x509_chain(rogue.chain_for(&m, "eve@alpha.example"))
        .unwrap();
    let (mut net, uid) = federated_net(&co, co.identities(vec![eve]));
    let before = snapshot(&mut net, 0, &uid);
    let who = net.member(3);
    let e = net.node(0).add_member(&uid, &who).unwrap_err();
    assert!(
        matches!(&e, MmlsError::Federation(FederationError::UntrustedChain(d)) if d == "alpha.example"),
        "{e}"
    );
    assert_eq!(snapshot(&mut net, 0, &uid), before);
    // A domain the universe does not list at all.
    let m = identity(4);
    let cred = federation::x509_credential(&co.alpha.chain_for(&m, "m@delta.example")).unwrap();
    let e = federation::validate(&cred, &m.public_key(), &co.anchors(), Some(NOW)).unwrap_err();
    assert_eq!(e, FederationError::UnknownDomain("delta.example".into()));
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused_at_join() {
    let co = Coalition::new();
    let (m3, m4) = (identity(3), identity(4));
    let expired = m3
        .clone()
        .with_x509_chain(vec![co.alpha.leaf_for(
            &m3,
            "old@alpha.example",
            NOW - 30 * DAY,
            NOW - DAY,
        )])
        .unwrap();
    let early = m4
        .clone()
        .with_x509_chain(vec![co.beta.leaf_for(
            &m4,
            "new@beta.example",
            NOW + DAY,
            NOW + 30 * DAY,
        )])
        .unwrap();
    let (mut net, uid) = federated_net(&co, co.identities(vec![expired, early]));
    let before = snapshot(&mut net, 0, &uid);
    let who = net.member(3);
    let e = net.node(0).add_member(&uid, &who).unwrap_err();
    assert!(
        matches!(&e, MmlsError::Federation(FederationError::Expired { not_after, .. }) if *not_after == NOW - DAY),
        "{e}"
    );
    let who = net.member(4);
    let e = net.node(0).add_member(&uid, &who).unwrap_err();
    assert!(
        matches!(&e, MmlsError::Federation(FederationError::NotYetValid { not_before, .. }) if *not_before == NOW + DAY),
        "{e}"
    );
    assert_eq!(snapshot(&mut net, 0, &uid), before);
}

#[test]
fn a_certificate_for_another_key_than_the_peer_id_is_refused() {
    use openmls::prelude::*;
    let co = Coalition::new();
    let (mut net, uid) = federated_net(&co, co.identities(vec![]));
    let (a, b) = (identity(5), identity(6));
    let for_b = co.alpha.chain_for(&b, "b@alpha.example");
    // The node itself will not present it...
    assert!(matches!(
        a.clone().with_x509_chain(for_b.clone()),
        Err(MmlsError::Federation(FederationError::KeyMismatch))
    ));
    // ...and a KeyPackage signed by a's key with b's certificate is refused
    // on the lobby, leaving what we know of KeyPackages unchanged.
    let provider = crate::store::MmlsProvider::new(crate::store::Store::in_memory().unwrap());
    let cwk = CredentialWithKey {
        credential: federation::x509_credential(&for_b).unwrap(),
        signature_key: a.public_key().to_vec().into(),
    };
    let kp = KeyPackage::builder()
        .leaf_node_capabilities(Capabilities::new(
            None,
            None,
            None,
            None,
            Some(&[CredentialType::Basic, CredentialType::X509]),
        ))
        .build(crate::DEFAULT_CIPHERSUITE, &provider, &a, cwk)
        .unwrap();
    let mut env = Envelope::new(
        Kind::KeyPackage,
        tls_codec::Serialize::tls_serialize_detached(kp.key_package()).unwrap(),
    );
    env.sender = Some(a.member_id().to_string());
    let before = snapshot(&mut net, 0, &uid);
    let e = net.node(0).handle_incoming(&env.encode()).unwrap_err();
    assert!(
        matches!(e, MmlsError::Federation(FederationError::KeyMismatch)),
        "{e}"
    );
    assert_eq!(snapshot(&mut net, 0, &uid), before);
    let e = net.node(0).add_member(&uid, &a.member_id()).unwrap_err();
    assert!(matches!(e, MmlsError::MissingKeyPackage(_)), "{e}");
}

#[test]
fn a_basic_credential_is_refused_by_a_federated_universe() {
    let co = Coalition::new();
    let (mut net, uid) = federated_net(&co, co.identities(vec![identity(3)]));
    let before = snapshot(&mut net, 0, &uid);
    let who = net.member(3);
    let e = net.node(0).add_member(&uid, &who).unwrap_err();
    assert!(
        matches!(e, MmlsError::Federation(FederationError::X509Required(_))),
        "{e}"
    );
    assert_eq!(snapshot(&mut net, 0, &uid), before);
}

#[test]
fn an_anchor_change_by_a_non_admin_is_refused_by_every_reader() {
    let co = Coalition::new();
    let (mut net, uid) = federated_net(&co, co.identities(vec![]));
    let before: Vec<String> = [0, 2]
        .iter()
        .map(|i| snapshot(&mut net, *i, &uid))
        .collect();
    let rejected_before: Vec<usize> = net.rejections.iter().map(|r| r.len()).collect();
    // Bob (not an admin) swaps beta's anchor for a CA of his own in his
    // send group.
    let bobs_ca = Ca::new("bob's own CA");
    let mut forged = co.anchors();
    forged[1] = bobs_ca.anchor("beta.example");
    let outs = net.node(1).forge_anchor_change(&uid, forged).unwrap();
    net.absorb(1, outs);
    net.run();
    for (k, i) in [0usize, 2].iter().enumerate() {
        let got = &net.rejections[*i][rejected_before[*i]..];
        assert!(
            got.iter()
                .any(|r| r.contains("not an admin") && r.contains("trust anchors")),
            "node {i}: {got:?}"
        );
        assert_eq!(snapshot(&mut net, *i, &uid), before[k], "node {i}");
    }
}

#[test]
fn an_admin_adds_a_domain_owners_mirror_it_and_its_members_can_join() {
    let co = Coalition::new();
    let delta = Ca::new("delta CA");
    let d = identity(3);
    let dan = d
        .clone()
        .with_x509_chain(delta.chain_for(&d, "dan@delta.example"))
        .unwrap();
    let (mut net, uid) = federated_net(&co, co.identities(vec![dan]));
    let who = net.member(3);
    // Not yet: delta is not a domain of this universe.
    let e = net.node(0).add_member(&uid, &who).unwrap_err();
    assert!(
        matches!(&e, MmlsError::Federation(FederationError::UnknownDomain(x)) if x == "delta.example"),
        "{e}"
    );
    // Only an admin may add a domain.
    assert!(matches!(
        net.node(1).set_anchor(&uid, "delta.example", &delta.der()),
        Err(MmlsError::NotAdmin)
    ));
    let outs = net
        .node(0)
        .set_anchor(&uid, "delta.example", &delta.der())
        .unwrap();
    net.absorb(0, outs);
    net.run();
    net.settle();
    let mut want = co.anchors();
    want.push(delta.anchor("delta.example"));
    for i in 0..3 {
        let groups: Vec<Id32> = net
            .node(i)
            .status(&uid)
            .unwrap()
            .groups
            .iter()
            .map(|g| g.group)
            .collect();
        assert_eq!(groups.len(), 3);
        for g in groups {
            assert_eq!(net.node(i).anchors_of_group(&g).unwrap(), want, "node {i}");
        }
        assert!(net.events[i]
            .iter()
            .any(|e| matches!(e, Event::AnchorsChanged { .. })));
    }
    let outs = net.node(0).add_member(&uid, &who).unwrap();
    net.absorb(0, outs);
    net.run();
    net.settle();
    net.send(3, &uid, "dan here");
    net.run();
    net.settle();
    for i in 0..3 {
        assert!(net.texts(i).contains(&"dan here".to_string()), "node {i}");
    }
    net.assert_consistent(&uid);
}

#[test]
fn an_expiry_in_the_universe_is_flagged_and_a_renewal_clears_it() {
    let co = Coalition::new();
    let b = identity(1);
    let mut ids = co.identities(vec![]);
    // Bob's certificate runs out in an hour.
    ids[1] = b
        .clone()
        .with_x509_chain(vec![co.beta.leaf_for(
            &b,
            "bob@beta.example",
            NOW - DAY,
            NOW + 3600,
        )])
        .unwrap();
    let mut net = Net::with_identities(ids, config(), NOW_MS);
    let members: Vec<MemberId> = (0..3).map(|i| net.member(i)).collect();
    let (uid, outs) = net
        .node(0)
        .create_federated_universe("c", &members, &[], Profile::Mmls00, co.anchors())
        .unwrap();
    net.absorb(0, outs);
    net.run();
    net.settle();
    let bob = net.member(1);
    net.tick(2 * 3600 * 1000);
    for i in [0usize, 2] {
        assert!(
            net.events[i]
                .iter()
                .any(|e| matches!(e, Event::CertificateExpired { member, .. } if *member == bob)),
            "node {i}"
        );
        let st = net.node(i).status(&uid).unwrap();
        let c = st.certs.iter().find(|c| c.member == bob).unwrap();
        assert!(c.expired);
    }
    // Flagged, not dropped: bob still talks.
    net.send(1, &uid, "still here");
    net.run();
    assert!(net.texts(0).contains(&"still here".to_string()));
    // Renewal: an Update whose leaves carry the new certificate.
    let now = (net.now / 1000) as i64;
    let renewed = vec![co
        .beta
        .leaf_for(&b, "bob@beta.example", now - 60, now + 30 * DAY)];
    let outs = net.node(1).renew_certificate(renewed).unwrap();
    net.absorb(1, outs);
    net.run();
    net.settle();
    for i in [0usize, 2] {
        let st = net.node(i).status(&uid).unwrap();
        let c = st.certs.iter().find(|c| c.member == bob).unwrap();
        assert!(!c.expired, "node {i}: {c:?}");
        assert_eq!(c.not_after, now + 30 * DAY, "node {i}");
    }
    net.send(1, &uid, "renewed");
    net.run();
    net.settle();
    assert!(net.texts(2).contains(&"renewed".to_string()));
    net.assert_consistent(&uid);
    // A renewal the universe would refuse changes nothing.
    let before = snapshot(&mut net, 1, &uid);
    let bad = vec![co
        .alpha
        .leaf_for(&b, "bob@beta.example", now - 60, now + DAY)];
    assert!(matches!(
        net.node(1).renew_certificate(bad),
        Err(MmlsError::Federation(FederationError::CrossDomain { .. }))
    ));
    assert_eq!(snapshot(&mut net, 1, &uid), before);
}

#[test]
fn x509_and_basic_members_share_a_universe_without_anchors() {
    let co = Coalition::new();
    let a = identity(0);
    let ids = vec![
        a.clone()
            .with_x509_chain(co.alpha.chain_for(&a, "alice@alpha.example"))
            .unwrap(),
        identity(1),
        identity(2),
    ];
    let mut net = Net::with_identities(ids, config(), NOW_MS);
    let uid = net.universe(Profile::Mmls00);
    net.send(0, &uid, "x509 speaks");
    net.send(1, &uid, "basic speaks");
    net.run();
    net.settle();
    assert!(net.texts(1).contains(&"x509 speaks".to_string()));
    assert!(net.texts(0).contains(&"basic speaks".to_string()));
    assert!(net.node(0).status(&uid).unwrap().anchors.is_empty());
}

#[test]
fn the_anchors_extension_round_trips_and_avoids_openmls_last_resort() {
    use openmls::prelude::*;
    let co = Coalition::new();
    let ext = federation::anchors_to_extension(&co.anchors()).unwrap();
    let exts = Extensions::<GroupContext>::single(ext).unwrap();
    let bytes = tls_codec::Serialize::tls_serialize_detached(&exts).unwrap();
    let back: Extensions<GroupContext> =
        tls_codec::Deserialize::tls_deserialize_exact(bytes.as_slice()).unwrap();
    assert_eq!(
        federation::anchors_from_extensions(&back).unwrap(),
        co.anchors()
    );
    // Why not the draft's 0x000A: openmls reads type 10 as LastResort.
    assert_eq!(ExtensionType::from(0x000A_u16), ExtensionType::LastResort);
    assert_eq!(
        ExtensionType::from(federation::GROUP_TRUST_ANCHORS),
        ExtensionType::Unknown(federation::GROUP_TRUST_ANCHORS)
    );
    // Duplicate domains are refused.
    let mut dup = co.anchors();
    dup.push(co.beta.anchor("alpha.example"));
    assert_eq!(
        DomainAnchor::check_list(&dup),
        Err(FederationError::DuplicateDomain("alpha.example".into()))
    );
}

#[test]
fn ed25519_pkcs8_keys_become_the_identity_and_garbage_is_refused() {
    // ring (rcgen) writes PKCS#8 v2, with the public key.
    let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let seed = federation::ed25519_seed_from_pem(key.serialize_pem().as_bytes()).unwrap();
    assert_eq!(
        Identity::from_seed(seed).public_key().as_slice(),
        key.public_key_raw()
    );
    // Not Ed25519 (a P-256 key), or no key at all.
    let p256 = KeyPair::generate().unwrap();
    assert!(matches!(
        federation::ed25519_seed_from_pem(p256.serialize_pem().as_bytes()),
        Err(FederationError::MalformedKey(_))
    ));
    assert!(matches!(
        federation::ed25519_seed_from_pem(b"hello"),
        Err(FederationError::MalformedKey(_))
    ));
}

#[test]
fn every_reader_refuses_an_added_leaf_from_another_domains_ca() {
    let co = Coalition::new();
    let m = identity(3);
    let mallory = m
        .clone()
        .with_x509_chain(co.alpha.chain_for(&m, "mallory@beta.example"))
        .unwrap();
    let (mut net, uid) = federated_net(&co, co.identities(vec![mallory]));
    // A corrupt admin engine believes alpha's CA anchors beta.example, so
    // it commits the add; its send group still carries the real anchors,
    // which every reader checks the new leaf against.
    let mut forged = co.anchors();
    forged[1] = co.alpha.anchor("beta.example");
    net.node(0).forge_local_anchors(&uid, forged).unwrap();
    let before: Vec<String> = [1, 2]
        .iter()
        .map(|i| protocol_state(&mut net, *i, &uid))
        .collect();
    let rejected_before: Vec<usize> = net.rejections.iter().map(|r| r.len()).collect();
    let who = net.member(3);
    let outs = net.node(0).add_member(&uid, &who).unwrap();
    net.absorb(0, outs);
    net.run();
    for (k, i) in [1usize, 2].iter().enumerate() {
        let got = &net.rejections[*i][rejected_before[*i]..];
        assert!(
            got.iter()
                .any(|r| r.contains("beta.example") && r.contains("alpha.example")),
            "node {i}: {got:?}"
        );
        assert_eq!(protocol_state(&mut net, *i, &uid), before[k], "node {i}");
    }
}

#[test]
fn rotating_an_anchor_keeps_the_universe_working_and_members_renew_under_it() {
    let co = Coalition::new();
    let (mut net, uid) = federated_net(&co, co.identities(vec![]));
    let beta2 = Ca::new("beta CA 2");
    let outs = net
        .node(0)
        .set_anchor(&uid, "beta.example", &beta2.der())
        .unwrap();
    net.absorb(0, outs);
    net.run();
    net.settle();
    let mut want = co.anchors();
    want[1] = beta2.anchor("beta.example");
    for i in 0..3 {
        let groups: Vec<Id32> = net
            .node(i)
            .status(&uid)
            .unwrap()
            .groups
            .iter()
            .map(|g| g.group)
            .collect();
        for g in groups {
            assert_eq!(net.node(i).anchors_of_group(&g).unwrap(), want, "node {i}");
        }
    }
    // Bob still holds a certificate of the old beta CA: his key rotation
    // with it is not a new credential, so nothing wedges.
    net.update(1, &uid);
    net.run();
    net.settle();
    net.send(1, &uid, "old cert, new anchor");
    net.run();
    net.settle();
    assert!(net.texts(2).contains(&"old cert, new anchor".to_string()));
    net.assert_consistent(&uid);
    // A renewal must hold under the new anchor...
    let b = identity(1);
    let now = (net.now / 1000) as i64;
    let before = snapshot(&mut net, 1, &uid);
    let stale = vec![co
        .beta
        .leaf_for(&b, "bob@beta.example", now - 60, now + DAY)];
    let e = net.node(1).renew_certificate(stale).unwrap_err();
    assert!(
        matches!(&e, MmlsError::Federation(FederationError::UntrustedChain(d)) if d == "beta.example"),
        "{e}"
    );
    assert_eq!(snapshot(&mut net, 1, &uid), before);
    // ...and one from the new CA is taken by everyone.
    let fresh = vec![beta2.leaf_for(&b, "bob@beta.example", now - 60, now + 60 * DAY)];
    let outs = net.node(1).renew_certificate(fresh).unwrap();
    net.absorb(1, outs);
    net.run();
    net.settle();
    for i in [0usize, 2] {
        let bob = net.member(1);
        let st = net.node(i).status(&uid).unwrap();
        let c = st.certs.iter().find(|c| c.member == bob).unwrap();
        assert_eq!(c.not_after, now + 60 * DAY, "node {i}");
    }
    net.assert_consistent(&uid);
}
