//! Tests of the state rows: the row formats, their migrations, and what
//! a step writes.

use super::super::rows::prefix_end;
use super::*;
use crate::participant::Participant;
use crate::profile::Profile;
use crate::testkit::{config, view, Net};
use ciborium::Value;

const MANDATORY: u16 = crate::ciphersuites::X25519_AES128GCM;

/// The whole-state blob an older engine wrote for `store`'s rows.
fn legacy_blob(store: &Store) -> Vec<u8> {
    let st = EngineState::load(store).expect("rows load");
    let node = st.node.get();
    let cbor = |v: &dyn erased::Ser| -> Value { v.value() };
    let mut universes = vec![];
    for (uid, u) in st.universes.iter() {
        let Value::Map(mut fields) = cbor(u) else {
            panic!("a universe row is a map")
        };
        let groups: Vec<(Value, Value)> =
            u.groups.iter().map(|(g, s)| (cbor(g), cbor(s))).collect();
        fields.push((Value::Text("groups".into()), Value::Map(groups)));
        fields.push((
            Value::Text("next_text_seq".into()),
            cbor(&u.texts.next_text_seq()),
        ));
        let received: BTreeMap<&MemberId, u64> = u.texts.received_all().collect();
        fields.push((Value::Text("received_from".into()), cbor(&received)));
        universes.push((cbor(uid), Value::Map(fields)));
    }
    let set = |r: &Rows<ByteBuf, ()>| Value::Array(r.keys().map(|k| cbor(k)).collect());
    let blob = Value::Map(vec![
        (Value::Text("member".into()), cbor(&node.member)),
        (Value::Text("universes".into()), Value::Map(universes)),
        (
            Value::Text("known_kps".into()),
            // One KeyPackage per member then, in 0x0001.
            Value::Map(
                st.known_kps
                    .iter()
                    .map(|(m, k)| (cbor(m), cbor(&k.0[&MANDATORY])))
                    .collect(),
            ),
        ),
        (
            Value::Text("my_kp".into()),
            cbor(&st.my_kps.get(&MANDATORY)),
        ),
        (Value::Text("my_kp_refs".into()), set(&st.my_kp_refs)),
        (
            Value::Text("last_resort_refs".into()),
            set(&st.last_resort_refs),
        ),
        (Value::Text("used_kp_refs".into()), set(&st.used_kp_refs)),
        (
            Value::Text("kp_requested".into()),
            Value::Map(
                st.kp_requested
                    .iter()
                    .map(|(m, t)| (cbor(m), cbor(t)))
                    .collect(),
            ),
        ),
        (Value::Text("outbox_next".into()), cbor(&node.outbox_next)),
        (
            Value::Text("delivered_next".into()),
            cbor(&node.delivered_next),
        ),
        (
            Value::Text("rejected_inputs".into()),
            cbor(&node.rejected_inputs),
        ),
    ]);
    let mut out = vec![];
    ciborium::into_writer(&blob, &mut out).expect("encode");
    out
}

mod erased {
    pub trait Ser {
        fn value(&self) -> ciborium::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn value(&self) -> ciborium::Value {
            ciborium::Value::serialized(self).expect("serializable")
        }
    }
}

/// Removes every engine row, as a store written by an older engine
/// would have none.
fn drop_rows(store: &Store) {
    for t in [
        Table::Universes,
        Table::Groups,
        Table::KeyPackages,
        Table::Meta,
    ] {
        for (k, _) in store.range(t, &[], None, usize::MAX).expect("range") {
            store.delete(t, &k);
        }
    }
}

#[test]
fn a_legacy_state_blob_is_migrated_to_rows_and_the_node_carries_on() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    net.send(1, &uid, "before");
    net.run();
    net.settle();
    let before = view(net.node(0), &uid);
    let status_before = net.node(0).status(&uid).expect("status");

    let store = net.stores[0].clone();
    let blob = legacy_blob(&store);
    drop_rows(&store);
    store.put(Table::Meta, LEGACY_KEY, &blob);
    store.commit().expect("commit");
    net.nodes[0] = None;
    // Nothing of the rows is left: only the blob can bring the state back.
    assert!(EngineState::load_rows_only(&store)
        .universes
        .iter()
        .next()
        .is_none());

    let (p, outs) = Participant::open(net.ids[0].clone(), store.clone(), config(), net.now)
        .expect("a legacy store opens");
    net.nodes[0] = Some(p);
    net.absorb(0, outs);
    assert_eq!(net.node(0).status(&uid).expect("status"), status_before);
    assert_eq!(view(net.node(0), &uid), before);
    // The blob is gone and the rows are written.
    assert!(store.get(Table::Meta, LEGACY_KEY).expect("get").is_none());
    assert!(store
        .get(Table::Universes, uid.as_bytes())
        .expect("get")
        .is_some());

    // It keeps working: messages both ways, and after another restart.
    net.send(0, &uid, "after, from 0");
    net.send(2, &uid, "after, from 2");
    net.run();
    net.settle();
    assert!(net.texts(0).contains(&"after, from 2".to_string()));
    assert!(net.texts(1).contains(&"after, from 0".to_string()));
    net.nodes[0] = None;
    let (p, _) =
        Participant::open(net.ids[0].clone(), store, config(), net.now).expect("reopen from rows");
    net.nodes[0] = Some(p);
    assert_eq!(
        net.node(0).status(&uid).expect("status").groups.len(),
        status_before.groups.len()
    );
    net.assert_consistent(&uid);
}

/// Rewrites `store`'s rows as the first row format wrote them: text
/// counters inside each universe row, our KeyPackage inside the node
/// row, neither with rows of its own.
fn to_first_row_format(store: &Store) {
    let st = EngineState::load(store).expect("rows load");
    for (uid, u) in st.universes.iter() {
        let Value::Map(mut fields) = Value::serialized(u).expect("row") else {
            panic!("a universe row is a map")
        };
        fields.push((
            Value::Text("next_text_seq".into()),
            Value::serialized(&u.texts.next_text_seq()).expect("value"),
        ));
        let received: BTreeMap<&MemberId, u64> = u.texts.received_all().collect();
        fields.push((
            Value::Text("received_from".into()),
            Value::serialized(&received).expect("value"),
        ));
        let mut row = vec![];
        ciborium::into_writer(&Value::Map(fields), &mut row).expect("encode");
        store.put(Table::Universes, uid.as_bytes(), &row);
    }
    let Value::Map(mut node) = Value::serialized(st.node.get()).expect("row") else {
        panic!("the node row is a map")
    };
    node.push((
        Value::Text("my_kp".into()),
        Value::serialized(&st.my_kps.get(&MANDATORY)).expect("value"),
    ));
    let mut row = vec![];
    ciborium::into_writer(&Value::Map(node), &mut row).expect("encode");
    store.put(Table::Meta, NODE_KEY, &row);
    delete_prefix(store, MY_KPS);
    let texts_end = prefix_end(TEXTS);
    for (k, _) in store
        .range(Table::Meta, TEXTS, texts_end.as_deref(), usize::MAX)
        .expect("range")
    {
        store.delete(Table::Meta, &k);
    }
    store.commit().expect("commit");
}

#[test]
fn rows_of_the_first_row_format_open_with_their_counters_and_key_package() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    net.send(0, &uid, "mine");
    net.send(1, &uid, "from 1");
    net.send(2, &uid, "from 2");
    net.send(2, &uid, "from 2 again");
    net.run();
    net.settle();
    let before = view(net.node(0), &uid);
    let status_before = net.node(0).status(&uid).expect("status");
    let acks_before = net.node(0).received_acks(&uid);
    assert_eq!(acks_before.len(), 2, "{acks_before:?}");
    let kp_before = net.node(0).state.my_kps.get(&MANDATORY).cloned();
    assert!(kp_before.is_some());

    let store = net.stores[0].clone();
    to_first_row_format(&store);
    net.nodes[0] = None;
    let (p, outs) = Participant::open(net.ids[0].clone(), store.clone(), config(), net.now)
        .expect("first-format rows open");
    net.nodes[0] = Some(p);
    net.absorb(0, outs);
    assert_eq!(net.node(0).status(&uid).expect("status"), status_before);
    assert_eq!(net.node(0).received_acks(&uid), acks_before);
    assert_eq!(net.node(0).state.my_kps.get(&MANDATORY), kp_before.as_ref());
    assert_eq!(view(net.node(0), &uid), before);
    // Moved to rows of their own.
    assert!(store
        .get(
            Table::Meta,
            &[MY_KPS, &MANDATORY.to_be_bytes()[..]].concat()
        )
        .expect("get")
        .is_some());
    assert!(!store
        .range(Table::Meta, TEXTS, prefix_end(TEXTS).as_deref(), 1)
        .expect("range")
        .is_empty());

    // The numbering carries on where it was: no text number twice.
    net.send(0, &uid, "mine, after");
    net.run();
    net.settle();
    assert_eq!(
        net.node(0).status(&uid).expect("status").messages_sent,
        status_before.messages_sent + 1
    );
    assert!(net.texts(1).contains(&"mine, after".to_string()));
    net.assert_consistent(&uid);
}

fn delete_prefix(store: &Store, prefix: &[u8]) {
    let end = prefix_end(prefix);
    for (k, _) in store
        .range(Table::Meta, prefix, end.as_deref(), usize::MAX)
        .expect("range")
    {
        store.delete(Table::Meta, &k);
    }
}

/// Rewrites `store`'s rows as nodes wrote them before suite choice: one
/// KeyPackage of ours (its own row), one per known member (the row is
/// the KeyPackage), send-group rows without a suite. All in 0x0001,
/// the only suite then.
fn to_pre_suite_format(store: &Store) {
    let st = EngineState::load(store).expect("rows load");
    store.put(
        Table::Meta,
        MY_KP,
        &to_cbor(&st.my_kps.get(&MANDATORY).cloned()),
    );
    delete_prefix(store, MY_KPS);
    for (m, kps) in st.known_kps.iter() {
        store.put(
            Table::KeyPackages,
            &m.to_key(),
            &to_cbor(&kps.0[&MANDATORY]),
        );
    }
    for (uid, u) in st.universes.iter() {
        for (g, gs) in u.groups.iter() {
            assert_eq!(gs.suite, MANDATORY);
            let Value::Map(mut fields) = Value::serialized(gs).expect("row") else {
                panic!("a group row is a map")
            };
            fields.retain(|(k, _)| k.as_text() != Some("suite"));
            let mut row = vec![];
            ciborium::into_writer(&Value::Map(fields), &mut row).expect("encode");
            store.put(Table::Groups, &GroupKey(*uid, *g).to_key(), &row);
        }
    }
    store.commit().expect("commit");
}

#[test]
fn a_store_of_before_suite_choice_opens_as_all_0x0001_and_gains_the_other_suites() {
    let mut net = Net::new(3);
    let uid = net.universe(Profile::Mmls00);
    net.send(1, &uid, "before");
    net.run();
    net.settle();
    let before = view(net.node(0), &uid);
    let status_before = net.node(0).status(&uid).expect("status");
    let kp_before = net.node(0).state.my_kps.get(&MANDATORY).cloned();
    let m1 = net.member(1);
    let known_before = net.node(0).state.known_kps.get(&m1).cloned();

    let store = net.stores[0].clone();
    to_pre_suite_format(&store);
    net.nodes[0] = None;
    let (p, outs) = Participant::open(net.ids[0].clone(), store.clone(), config(), net.now)
        .expect("a store of before suite choice opens");
    net.nodes[0] = Some(p);
    net.absorb(0, outs);
    // Every group reads as 0x0001, as it was.
    let status = net.node(0).status(&uid).expect("status");
    assert_eq!(status, status_before);
    assert!(status.groups.iter().all(|g| g.ciphersuite == MANDATORY));
    assert_eq!(view(net.node(0), &uid), before);
    // Our 0x0001 KeyPackage is kept, the other suites' are new, and the
    // old single row is gone.
    let st = &net.node(0).state;
    assert_eq!(st.my_kps.get(&MANDATORY), kp_before.as_ref());
    for suite in crate::ciphersuites::IMPLEMENTED {
        assert!(st.my_kps.contains_key(suite), "{suite:#06x}");
    }
    assert!(store.get(Table::Meta, MY_KP).expect("get").is_none());
    // A known member's single KeyPackage is its 0x0001 one.
    let known = st.known_kps.get(&m1).expect("known");
    assert_eq!(
        known.0.get(&MANDATORY),
        known_before.as_ref().and_then(|k| k.0.get(&MANDATORY))
    );
    assert_eq!(known.0.len(), 1);

    net.send(0, &uid, "after, from 0");
    net.send(2, &uid, "after, from 2");
    net.run();
    net.settle();
    assert!(net.texts(0).contains(&"after, from 2".to_string()));
    assert!(net.texts(1).contains(&"after, from 0".to_string()));
    // Reopened from the new rows: the same again.
    net.nodes[0] = None;
    let (mut p, _) =
        Participant::open(net.ids[0].clone(), store, config(), net.now).expect("reopen from rows");
    assert_eq!(p.state.my_kps.get(&MANDATORY), kp_before.as_ref());
    assert_eq!(
        p.status(&uid).expect("status").groups.len(),
        status_before.groups.len()
    );
}

#[test]
fn an_unreadable_legacy_blob_is_a_typed_error_saying_what_it_is() {
    let store = Store::in_memory().expect("store");
    store.put(Table::Meta, LEGACY_KEY, b"\xa1\x66member\x05garbage");
    store.commit().expect("commit");
    let err = EngineState::load(&store).expect_err("garbage must not load");
    assert!(err.to_string().contains("older format"), "{err}");
}
