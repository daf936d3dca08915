//! Users with several devices: a universe of users, a device linked later
//! joining the user's universes, an unlinked one removed everywhere and
//! unable to read what follows, and statements nobody may make.

use super::*;
use crate::devices::UserKey;
use crate::participant::Participant;
use crate::testkit::identity;
use crate::universe::Payload;

/// Node 0 is Alice's laptop, 1 Bob, 2 Carol, 3 Alice's phone.
const LAPTOP: usize = 0;
const BOB: usize = 1;
const CAROL: usize = 2;
const PHONE: usize = 3;

fn link(net: &mut Net, alice: &UserKey, device: usize) {
    let signed = alice.link(&identity(device), net.now);
    let outs = net.node(device).publish_device_link(signed).expect("link");
    net.absorb(device, outs);
    net.run();
}

/// Bob creates a universe of the users Alice (her linked devices, as the
/// directory knows them), Bob and Carol; Bob is its only admin.
fn universe_of_users(net: &mut Net, alice: &UserKey) -> Id32 {
    let mut members = net.node(BOB).devices_of(&alice.user_id());
    members.sort();
    members.push(net.member(CAROL));
    let (uid, outs) = net
        .node(BOB)
        .create_universe("users", &members, &[], Profile::Mmls00)
        .expect("create");
    net.absorb(BOB, outs);
    net.run();
    net.settle();
    uid
}

fn roster(net: &mut Net, i: usize, uid: &Id32) -> Vec<crate::identity::MemberId> {
    net.node(i).status(uid).expect("status").roster
}

/// Who delivered texts from whom, as (sender, user) of the text `body`.
fn attribution(
    net: &Net,
    i: usize,
    body: &str,
) -> Option<(crate::identity::MemberId, Option<String>)> {
    net.delivered[i]
        .iter()
        .find(|d| d.body.as_slice() == body.as_bytes())
        .map(|d| (d.sender.clone(), d.user.clone()))
}

#[test]
fn a_user_with_two_devices_reads_and_sends_from_both() {
    let mut net = Net::new(4);
    let alice = UserKey::generate();
    link(&mut net, &alice, LAPTOP);
    link(&mut net, &alice, PHONE);
    // Bob heard both links on the lobby: Alice is her two devices.
    let mut devices = net.node(BOB).devices_of(&alice.user_id());
    devices.sort();
    let mut want = vec![net.member(LAPTOP), net.member(PHONE)];
    want.sort();
    assert_eq!(devices, want);

    let uid = universe_of_users(&mut net, &alice);
    for i in 0..4 {
        assert_eq!(roster(&mut net, i, &uid).len(), 4, "node {i}");
    }
    for i in 0..4 {
        net.send(i, &uid, &format!("hello from {i}"));
    }
    net.run();
    net.settle();
    for i in 0..4 {
        for j in (0..4).filter(|j| *j != i) {
            assert!(
                net.texts(i).contains(&format!("hello from {j}")),
                "node {i} lacks node {j}'s text"
            );
        }
    }
    // Bob and Carol see Alice behind both devices, and which device spoke.
    for reader in [BOB, CAROL] {
        for dev in [LAPTOP, PHONE] {
            let (sender, user) =
                attribution(&net, reader, &format!("hello from {dev}")).expect("delivered");
            assert_eq!(sender, net.member(dev));
            assert_eq!(user.as_deref(), Some(alice.user_id().as_str()));
        }
        let (_, user) = attribution(&net, reader, "hello from 1")
            .or(attribution(&net, reader, "hello from 2"))
            .expect("delivered");
        assert_eq!(
            user, None,
            "Bob and Carol have no user key: their own names"
        );
    }
    net.assert_consistent(&uid);
}

/// Bob's universe has Alice's laptop; her phone is linked afterwards.
fn phone_linked_later(net: &mut Net, alice: &UserKey) -> Id32 {
    link(net, alice, LAPTOP);
    let uid = universe_of_users(net, alice);
    assert_eq!(roster(net, BOB, &uid).len(), 3);
    net.send(CAROL, &uid, "before the phone");
    net.run();
    link(net, alice, PHONE);
    net.run();
    net.settle();
    net.settle();
    uid
}

/// Alice, from her laptop, unlinks her phone; everyone settles.
fn unlink_phone(net: &mut Net, alice: &UserKey) {
    let unlink = alice.unlink(&net.member(PHONE), net.now);
    let outs = net
        .node(LAPTOP)
        .publish_device_link(unlink)
        .expect("unlink");
    net.absorb(LAPTOP, outs);
    net.run();
    net.settle();
    net.settle();
}

#[test]
fn a_device_linked_later_joins_its_users_universes_through_a_non_admin_device() {
    let mut net = Net::new(4);
    let alice = UserKey::generate();
    let uid = phone_linked_later(&mut net, &alice);
    // The laptop (not an admin) brought the phone in; every owner mirrored.
    for i in 0..4 {
        assert!(
            roster(&mut net, i, &uid).contains(&net.member(PHONE)),
            "node {i} lacks the phone"
        );
    }
    for reader in [BOB, CAROL] {
        assert!(net.events[reader].iter().any(|e| matches!(
            e,
            Event::DeviceLinked { universe, device, user }
                if *universe == uid && *device == net.member(PHONE) && *user == alice.user_id()
        )));
    }
    net.send(CAROL, &uid, "after the phone");
    net.send(PHONE, &uid, "from the phone");
    net.run();
    net.settle();
    assert!(net.texts(PHONE).contains(&"after the phone".to_string()));
    assert!(
        !net.texts(PHONE).contains(&"before the phone".to_string()),
        "a new device does not read history from before it joined"
    );
    let (_, user) = attribution(&net, BOB, "from the phone").expect("delivered");
    assert_eq!(user.as_deref(), Some(alice.user_id().as_str()));
    net.assert_consistent(&uid);
}

#[test]
fn an_unlinked_device_is_removed_everywhere_and_reads_nothing_new() {
    let mut net = Net::new(4);
    let alice = UserKey::generate();
    let uid = phone_linked_later(&mut net, &alice);
    net.send(BOB, &uid, "pre");
    net.run();
    net.settle();
    assert!(net.texts(PHONE).contains(&"pre".to_string()));
    // The phone is stolen: a copy of its state keeps running elsewhere.
    let snap = net.stores[PHONE].snapshot().expect("snapshot");
    let (mut thief, _) = Participant::open(identity(PHONE), snap, net.config.clone(), net.now)
        .expect("the copy opens");
    let mark = net.all_bytes.len();
    let events = net.events[PHONE].len();

    // Alice unlinks it from her laptop.
    unlink_phone(&mut net, &alice);
    for i in [LAPTOP, BOB, CAROL] {
        assert!(
            !roster(&mut net, i, &uid).contains(&net.member(PHONE)),
            "node {i} still has the phone"
        );
        let st = net.node(i).status(&uid).expect("status");
        let own = st.own_group.expect("own group");
        let g = st.groups.iter().find(|g| g.group == own).expect("group");
        assert_eq!(g.members, 3, "node {i}'s send group still has the phone");
    }
    assert!(net.events[PHONE][events..]
        .iter()
        .any(|e| matches!(e, Event::RemovedFromUniverse { universe } if *universe == uid)));
    for i in [LAPTOP, BOB, CAROL] {
        net.send(i, &uid, &format!("post {i}"));
    }
    net.run();
    net.settle();
    for i in [LAPTOP, BOB, CAROL] {
        assert!(!net.texts(PHONE).contains(&format!("post {i}")));
        assert!(net.texts((i + 1) % 3).contains(&format!("post {i}")));
    }
    // The copy, fed every byte since, decrypts none of it.
    let read = crate::testkit::texts_read_by(&mut thief, &net.all_bytes[mark..]);
    for i in [LAPTOP, BOB, CAROL] {
        assert!(
            !read.contains(&format!("post {i}")),
            "the unlinked device's copy read node {i}'s text: {read:?}"
        );
    }
    // The others agree on every send group (the phone is out of them).
    net.offline[PHONE] = true;
    net.assert_consistent(&uid);
}

#[test]
fn statements_nobody_may_make_change_nothing() {
    let mut net = Net::new(4);
    let alice = UserKey::generate();
    link(&mut net, &alice, LAPTOP);
    let uid = universe_of_users(&mut net, &alice);
    let before = crate::testkit::view(net.node(BOB), &uid);
    let directory = net.node(BOB).devices();

    // Mallory's user key claims Bob's device without it (on the lobby).
    let mallory = UserKey::generate();
    let mut claim = mallory.link(&identity(PHONE), net.now);
    let mut forged: crate::devices::DeviceLink =
        crate::universe::from_cbor(&claim.link).expect("cbor");
    forged.device = net.member(BOB);
    claim.link = serde_bytes::ByteBuf::from(crate::universe::to_cbor(&forged));
    let env = Envelope::new(Kind::DeviceLink, claim.encode()).encode();
    assert!(matches!(
        net.node(CAROL).handle_incoming(&env),
        Err(MmlsError::BadSignature)
    ));
    // Garbage as a statement.
    let env = Envelope::new(Kind::DeviceLink, b"\xa1\x00\x00".to_vec()).encode();
    assert!(net.node(CAROL).handle_incoming(&env).is_err());

    // Carol, a member but not Alice, says in her own send group that
    // Alice's phone joins, with the phone's real link (both signatures:
    // she could have heard it on the lobby).
    let phone_link = alice.link(&identity(PHONE), net.now);
    let outs = net
        .node(CAROL)
        .send_test_payload(&uid, &Payload::Devices(vec![phone_link]))
        .expect("carol sends");
    let marks: Vec<usize> = net.events.iter().map(|e| e.len()).collect();
    net.absorb(CAROL, outs);
    net.run();
    net.settle();
    for i in [LAPTOP, BOB] {
        assert!(
            net.events[i][marks[i]..].iter().any(|e| matches!(
                e,
                Event::Rejected { reason, .. } if reason.contains("not a device of the sender's user")
            )),
            "node {i} took Carol's statement"
        );
        assert!(!roster(&mut net, i, &uid).contains(&net.member(PHONE)));
    }
    // Bob's state is what it was: no new device, no message, same groups.
    assert_eq!(crate::testkit::view(net.node(BOB), &uid), before);
    assert_eq!(net.node(BOB).devices(), directory);
}

#[test]
fn a_device_unlinked_then_linked_again_is_back_in_its_users_universes() {
    let mut net = Net::new(4);
    let alice = UserKey::generate();
    let uid = phone_linked_later(&mut net, &alice);
    unlink_phone(&mut net, &alice);
    assert!(!roster(&mut net, BOB, &uid).contains(&net.member(PHONE)));
    net.send(BOB, &uid, "while it was out");
    net.run();
    net.settle();
    // Found again: Alice links it anew (on the phone, with her key).
    net.now += 1_000;
    link(&mut net, &alice, PHONE);
    for _ in 0..4 {
        net.settle();
    }
    for i in 0..4 {
        assert!(
            roster(&mut net, i, &uid).contains(&net.member(PHONE)),
            "node {i} lacks the phone"
        );
    }
    net.send(CAROL, &uid, "welcome back");
    net.send(PHONE, &uid, "back again");
    net.run();
    net.settle();
    assert!(
        net.texts(PHONE).contains(&"welcome back".to_string()),
        "{:?}",
        net.rejections[PHONE]
    );
    assert!(!net.texts(PHONE).contains(&"while it was out".to_string()));
    let (_, user) = attribution(&net, BOB, "back again").expect("delivered");
    assert_eq!(user.as_deref(), Some(alice.user_id().as_str()));
    net.assert_consistent(&uid);
}
