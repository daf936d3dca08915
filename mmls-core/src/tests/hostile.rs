//! Hostile input: forged, replayed, misplaced or equivocating entries get
//! typed errors and change nothing.

use super::*;

#[test]
fn hostile_envelopes_are_rejected_with_typed_errors_and_change_nothing() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    net.send(1, &uid, "real");
    net.run();
    let before = net.node(0).status(&uid).unwrap();
    let delivered_before = net.delivered[0].len();
    // A real envelope from node 1's stream, to tamper with.
    let real = net
        .all_bytes
        .iter()
        .rev()
        .find_map(|b| {
            Envelope::decode(b)
                .ok()
                .filter(|e| e.kind == Kind::Application)
        })
        .unwrap();
    let p = net.node(0);
    assert!(matches!(
        p.handle_incoming(b"garbage"),
        Err(MmlsError::Envelope(_))
    ));
    let bytes = real.encode();
    assert!(matches!(
        p.handle_incoming(&bytes[..bytes.len() / 2]),
        Err(MmlsError::Envelope(_))
    ));
    // An unknown version: key 0 (the version) set to 9.
    let mut v9 = bytes.clone();
    assert_eq!(&v9[1..3], &[0x00, 0x02]);
    v9[2] = 0x09;
    assert!(matches!(
        p.handle_incoming(&v9),
        Err(MmlsError::Envelope(
            crate::envelope::EnvelopeError::UnknownVersion(9)
        ))
    ));
    // Replay.
    assert!(matches!(
        p.handle_incoming(&bytes),
        Err(MmlsError::Duplicate { .. })
    ));
    // Wrong universe.
    let mut wu = real.clone();
    wu.universe = Some(crate::id::Id32([0xee; 32]));
    assert!(matches!(
        p.handle_incoming(&wu.encode()),
        Err(MmlsError::NotInUniverse(_))
    ));
    // Corrupted MLS body at the right position.
    let mut bad = real.clone();
    bad.seq += 1;
    let n = bad.body.len();
    bad.body[n - 5] ^= 0xff;
    assert!(p.handle_incoming(&bad.encode()).is_err());
    // The seq of a real message moved forward: rejected by the AAD check
    // once it is processed (the forged copy is buffered, then dropped).
    let after = net.node(0).status(&uid).unwrap();
    assert_eq!(
        before
            .groups
            .iter()
            .map(|g| (g.epoch, g.next_seq))
            .collect::<Vec<_>>(),
        after
            .groups
            .iter()
            .map(|g| (g.epoch, g.next_seq))
            .collect::<Vec<_>>()
    );
    assert_eq!(net.delivered[0].len(), delivered_before);
    // And the node still works.
    net.send(2, &uid, "still fine");
    net.run();
    assert!(net.texts(0).contains(&"still fine".to_string()));
}

#[test]
fn non_owner_messages_and_commits_are_rejected() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    // Node 1 forges an application message and a commit inside node 2's
    // send group, where it is only a receiver.
    let m2 = net.member(2);
    let g2 = net.node(0).group_of(&uid, &m2).unwrap();
    let forged_app = net.node(1).forge_in_group(&uid, &g2, false).unwrap();
    let forged_commit = net.node(1).forge_in_group(&uid, &g2, true).unwrap();
    let before = net.node(0).status(&uid).unwrap();
    let r = net.node(0).handle_incoming(&forged_app);
    assert!(matches!(r, Err(MmlsError::NotOwner { .. })), "{r:?}");
    let r = net.node(0).handle_incoming(&forged_commit);
    assert!(r.is_err(), "{r:?}");
    let after = net.node(0).status(&uid).unwrap();
    assert_eq!(before, after);
    // The real owner's next message still gets through at that position.
    net.send(2, &uid, "from the owner");
    net.run();
    assert!(net.texts(0).contains(&"from the owner".to_string()));
    assert!(net.node(0).rejected_inputs() >= 2);
}

#[test]
fn an_equivocating_owner_is_detected_and_named() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    // Node 1 forks itself: two different commits for the same epoch.
    let snap = net.stores[1].snapshot().unwrap();
    let (mut twin, _) =
        crate::participant::Participant::open(net.ids[1].clone(), snap, config(), net.now).unwrap();
    let a = net.node(1).update(&uid).unwrap();
    let b = twin.update(&uid).unwrap();
    let commit_of = |outs: &[crate::participant::Output]| {
        outs.iter()
            .find_map(|o| match o {
                crate::participant::Output::Publish(p) => Envelope::decode(&p.bytes)
                    .ok()
                    .filter(|e| e.kind == Kind::Commit)
                    .map(|_| p.bytes.clone()),
                _ => None,
            })
            .unwrap()
    };
    let (ca, cb) = (commit_of(&a), commit_of(&b));
    assert_ne!(ca, cb);
    // Node 0 sees version A, node 2 sees version B.
    let o = net.node(0).handle_incoming(&ca).unwrap();
    net.absorb(0, o);
    let o = net.node(2).handle_incoming(&cb).unwrap();
    net.absorb(2, o);
    // Their next commits carry their frontier; each sees the other's.
    net.update(0, &uid);
    net.update(2, &uid);
    net.run();
    let owner = net.member(1);
    let seen = |net: &Net, i: usize| {
        net.events[i]
            .iter()
            .any(|e| matches!(e, Event::Equivocation { owner: o, .. } if *o == owner))
    };
    assert!(seen(&net, 0) || seen(&net, 2), "no Equivocation event");
    let st = net.node(0).status(&uid).unwrap();
    let st2 = net.node(2).status(&uid).unwrap();
    assert!(st
        .equivocations
        .iter()
        .chain(&st2.equivocations)
        .any(|(o, _, _)| *o == owner));
}

/// A Welcome entry is encrypted to its joiners only, so the other members
/// check the owner's signature before they step over it; a forged one must
/// not make them skip the owner's real entry at that position.
#[test]
fn forged_welcome_entry_cannot_skip_a_stream_position() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    let owner = net.member(0);
    let g = net.node(1).group_of(&uid, &owner).unwrap();
    let next = |net: &mut Net| {
        let st = net.node(1).status(&uid).unwrap();
        st.groups.iter().find(|s| s.group == g).unwrap().next_seq
    };
    let before = next(&mut net);
    // A real Welcome body (of some group), re-addressed to node 0's stream.
    let real = net
        .all_bytes
        .iter()
        .filter_map(|b| Envelope::decode(b).ok())
        .find(|e| e.kind == Kind::Welcome && e.sig.is_some())
        .expect("a Welcome was published");
    let mut forged = real.clone();
    forged.group = Some(g);
    forged.seq = before;
    forged.sig = None;
    let unsigned = net.node(1).handle_incoming(&forged.encode());
    assert!(
        matches!(unsigned, Err(MmlsError::BadSignature)),
        "{unsigned:?}"
    );
    // Signed, but by a member who is not the owner.
    let by_other = net.ids[2].sign_detached(&forged.welcome_signed_bytes());
    forged.sig = Some(serde_bytes::ByteBuf::from(by_other));
    let wrong_key = net.node(1).handle_incoming(&forged.encode());
    assert!(
        matches!(wrong_key, Err(MmlsError::BadSignature)),
        "{wrong_key:?}"
    );
    assert_eq!(next(&mut net), before, "the stream did not move");
    // The owner's real next entry still goes through.
    net.send(0, &uid, "real entry");
    net.run();
    assert!(net.texts(1).contains(&"real entry".to_string()));
    net.assert_consistent(&uid);
}

/// Lobby messages are not inside any MLS group, so each carries its own
/// proof: a KeyPackage whose credential names someone else's PeerId, a
/// rejoin request signed by the wrong key, and a replayed rejoin request are
/// refused, typed, and change nothing.
#[test]
fn lobby_forgeries_and_replays_are_refused() {
    use crate::universe::{to_cbor, RejoinRequest, SignedRejoin};
    use openmls::prelude::{BasicCredential, CredentialWithKey, KeyPackage};
    use serde_bytes::ByteBuf;
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    let attacker = crate::identity::Identity::from_seed([99; 32]);
    let victim = net.member(1);
    let before = net.node(0).status(&uid).unwrap();
    let rejected = net.node(0).rejected_inputs();

    // 1. A KeyPackage claiming node 1's PeerId, signed with the attacker's key.
    let provider = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let claimed = CredentialWithKey {
        credential: BasicCredential::new(victim.to_peer_id_bytes()).into(),
        signature_key: attacker.public_key().to_vec().into(),
    };
    let kp = KeyPackage::builder()
        .build(crate::DEFAULT_CIPHERSUITE, &provider, &attacker, claimed)
        .unwrap();
    let mut e = Envelope::new(
        Kind::KeyPackage,
        openmls::prelude::tls_codec::Serialize::tls_serialize_detached(kp.key_package()).unwrap(),
    );
    e.sender = Some(victim.to_string());
    let r = net.node(0).handle_incoming(&e.encode());
    assert!(matches!(r, Err(MmlsError::BadCredential)), "{r:?}");

    // 2. A rejoin request for node 1, signed by the attacker.
    let req = RejoinRequest {
        universe: uid,
        member: victim.clone(),
        key_packages: vec![],
        lost_state: true,
        any_key_package: None,
        any_key_packages: vec![],
        nonce: u64::MAX,
        received: vec![],
    };
    let bytes = to_cbor(&req);
    let signed = SignedRejoin {
        signature: ByteBuf::from(attacker.sign_detached(&bytes)),
        request: ByteBuf::from(bytes),
    };
    let mut e = Envelope::new(Kind::Rejoin, to_cbor(&signed));
    e.universe = Some(uid);
    let r = net.node(0).handle_incoming(&e.encode());
    assert!(matches!(r, Err(MmlsError::BadSignature)), "{r:?}");
    assert_eq!(net.node(0).status(&uid).unwrap(), before);
    assert_eq!(net.node(0).rejected_inputs(), rejected + 2);

    // 3. A real rejoin (node 2 lost its state), then the same bytes again.
    let outs = net.node(2).recover_universe(&uid).unwrap();
    let real = outs
        .iter()
        .find_map(|o| match o {
            crate::participant::Output::Publish(p) => Envelope::decode(&p.bytes)
                .ok()
                .filter(|e| e.kind == Kind::Rejoin)
                .map(|_| p.bytes.clone()),
            _ => None,
        })
        .unwrap();
    net.absorb(2, outs);
    net.run();
    net.settle();
    let after_rejoin = net.node(0).status(&uid).unwrap();
    let r = net.node(0).handle_incoming(&real);
    assert!(matches!(r, Err(MmlsError::Duplicate { .. })), "{r:?}");
    assert_eq!(net.node(0).status(&uid).unwrap(), after_rejoin);
    // The universe works: node 2 is back and reads.
    net.send(0, &uid, "after the replay");
    net.run();
    let st2 = net.node(2).status(&uid);
    assert!(
        net.texts(2).contains(&"after the replay".to_string()),
        "{st2:#?} {:?} {:?}",
        net.rejections[2],
        net.events[2]
            .iter()
            .filter(|e| !matches!(e, Event::Message(_) | Event::Committed { .. }))
            .collect::<Vec<_>>()
    );
}

/// A forged entry that reaches a position first and waits for PSKs that
/// never come must not lock the owner's real entry out: the real one is kept
/// as an alternate and goes through in its place.
#[test]
fn a_forgery_waiting_for_impossible_psks_does_not_block_the_real_entry() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    let owner = net.member(0);
    let g = net.node(1).group_of(&uid, &owner).unwrap();
    let next = net
        .node(1)
        .status(&uid)
        .unwrap()
        .groups
        .iter()
        .find(|s| s.group == g)
        .unwrap()
        .next_seq;
    let mut forged = Envelope::new(Kind::Application, vec![0x17; 300]);
    forged.universe = Some(uid);
    forged.group = Some(g);
    forged.seq = next;
    forged.deps = vec![(crate::id::Id32([0xdd; 32]), 1 << 40)];
    // Buffered, waiting for a PSK of a group nobody has.
    let r = net.node(1).handle_incoming(&forged.encode());
    assert!(r.is_ok(), "{r:?}");
    // The owner's real entry for that position: delivered at once.
    net.send(0, &uid, "the real one");
    net.run();
    assert!(
        net.texts(1).contains(&"the real one".to_string()),
        "{:?}",
        net.node(1).status(&uid)
    );
    // And the stream goes on.
    net.send(0, &uid, "and the next");
    net.run();
    assert!(net.texts(1).contains(&"and the next".to_string()));
    let st = net.node(1).status(&uid).unwrap();
    let view = st.groups.iter().find(|s| s.group == g).unwrap();
    assert!(!view.blocked && view.buffered == 0, "{view:?}");
    net.assert_consistent(&uid);
}

/// A full buffer keeps the lowest positions, the ones the stream waits for:
/// later entries make room, and the group catches up by fetching them again.
#[test]
fn a_full_buffer_never_refuses_the_entry_the_stream_waits_for() {
    let mut cfg = config();
    cfg.max_buffer_per_group = 4;
    let mut net = Net::with_config(3, cfg);
    let uid = net.universe(Profile::Mmls00);
    net.offline[1] = true;
    let mark = net.all_bytes.len();
    for k in 0..10 {
        net.send(0, &uid, &format!("burst {k}"));
    }
    net.run();
    let burst: Vec<Vec<u8>> = net.all_bytes[mark..]
        .iter()
        .filter(|b| Envelope::decode(b).is_ok_and(|e| e.kind == Kind::Application))
        .cloned()
        .collect();
    assert_eq!(burst.len(), 10);
    net.offline[1] = false;
    // Newest first: the buffer fills with late positions before the first.
    for b in burst.iter().rev() {
        let r = net.node(1).handle_incoming(b);
        assert!(
            !matches!(r, Err(MmlsError::BufferFull(_))),
            "a lower position was refused: {r:?}"
        );
        if let Ok(outs) = r {
            net.absorb(1, outs);
        }
    }
    net.run();
    net.settle();
    let got = net.texts(1);
    for k in 0..10 {
        assert!(got.contains(&format!("burst {k}")), "{got:?}");
    }
    assert_eq!(got.iter().filter(|t| t.starts_with("burst")).count(), 10);
}

#[test]
fn a_re_announced_key_package_is_valid_input_for_relays() {
    // An owner answers a KeyPackage request with the KeyPackage the others
    // already hold. A relay must accept (and so forward) it, not call it a
    // duplicate, or it never reaches the member who asked.
    let mut net = Net::new(2);
    let Output::Publish(p) = net.node(0).announcement() else {
        panic!("announcement is not a publish");
    };
    let before = net.node(1).rejected_inputs();
    for _ in 0..2 {
        let r = net.node(1).handle_incoming(&p.bytes);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(
            crate::relay(&r, true),
            crate::Relay::Forward,
            "a relay would drop the re-announcement"
        );
    }
    assert_eq!(net.node(1).rejected_inputs(), before);
}
