//! The store against a model, across rollbacks, crashes and reopen.
use super::*;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use std::collections::BTreeMap;

const CS: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

fn kv(k: &[u8], v: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (k.to_vec(), v.to_vec())
}

fn signer_and_credential(name: &str) -> (SignatureKeyPair, CredentialWithKey) {
    let signer = SignatureKeyPair::new(CS.signature_algorithm()).expect("signature key pair");
    let credential = CredentialWithKey {
        credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
        signature_key: signer.public().into(),
    };
    (signer, credential)
}

fn new_group(
    provider: &MmlsProvider,
    signer: &SignatureKeyPair,
    credential: &CredentialWithKey,
) -> MlsGroup {
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(CS)
        .use_ratchet_tree_extension(true)
        .build();
    MlsGroup::new(provider, signer, &config, credential.clone()).expect("new group")
}

#[test]
fn store_is_send_sync_and_cheap_to_clone() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Store>();
    fn assert_send_sync_provider<T: Send + Sync>() {}
    assert_send_sync_provider::<MmlsProvider>();
}

#[test]
fn put_get_range_delete_within_step_and_after_commit() {
    let store = Store::in_memory().unwrap();
    assert!(!store.has_pending());
    assert_eq!(store.get(Table::Log, b"a").unwrap(), None);

    store.put(Table::Log, b"c", b"3");
    store.put(Table::Log, b"a", b"1");
    store.put(Table::Log, b"b", b"2");
    store.put(Table::Meta, b"b", b"meta");
    assert!(store.has_pending());
    // Visible within the step.
    assert_eq!(store.get(Table::Log, b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(
        store.get(Table::Meta, b"b").unwrap(),
        Some(b"meta".to_vec())
    );
    assert_eq!(store.get(Table::Outbox, b"b").unwrap(), None);
    assert_eq!(
        store.range(Table::Log, b"", None, usize::MAX).unwrap(),
        vec![kv(b"a", b"1"), kv(b"b", b"2"), kv(b"c", b"3")]
    );

    store.commit().unwrap();
    assert!(!store.has_pending());
    assert_eq!(store.get(Table::Log, b"b").unwrap(), Some(b"2".to_vec()));
    assert_eq!(
        store.range(Table::Log, b"", None, usize::MAX).unwrap(),
        vec![kv(b"a", b"1"), kv(b"b", b"2"), kv(b"c", b"3")]
    );

    // Pending writes merged with the committed ones.
    store.delete(Table::Log, b"b");
    store.put(Table::Log, b"bb", b"22");
    store.put(Table::Log, b"c", b"33");
    store.put(Table::Log, b"d", b"4");
    assert_eq!(store.get(Table::Log, b"b").unwrap(), None);
    assert_eq!(
        store.range(Table::Log, b"", None, usize::MAX).unwrap(),
        vec![
            kv(b"a", b"1"),
            kv(b"bb", b"22"),
            kv(b"c", b"33"),
            kv(b"d", b"4")
        ]
    );
    // Limit and bounds.
    assert_eq!(
        store.range(Table::Log, b"", None, 2).unwrap(),
        vec![kv(b"a", b"1"), kv(b"bb", b"22")]
    );
    assert_eq!(
        store.range(Table::Log, b"b", Some(b"c"), 10).unwrap(),
        vec![kv(b"bb", b"22")]
    );
    assert_eq!(
        store.range(Table::Log, b"bb", Some(b"d"), 10).unwrap(),
        vec![kv(b"bb", b"22"), kv(b"c", b"33")]
    );
    assert!(store.range(Table::Log, b"", None, 0).unwrap().is_empty());
    assert!(store
        .range(Table::Log, b"d", Some(b"a"), 9)
        .unwrap()
        .is_empty());
    assert!(store
        .range(Table::Log, b"c", Some(b"c"), 9)
        .unwrap()
        .is_empty());
    assert!(store.range(Table::Meta, b"a", None, 9).unwrap().len() == 1);

    store.commit().unwrap();
    assert_eq!(store.get(Table::Log, b"b").unwrap(), None);
    assert_eq!(store.get(Table::Log, b"c").unwrap(), Some(b"33".to_vec()));
    assert_eq!(
        store.range(Table::Log, b"", None, usize::MAX).unwrap(),
        vec![
            kv(b"a", b"1"),
            kv(b"bb", b"22"),
            kv(b"c", b"33"),
            kv(b"d", b"4")
        ]
    );

    // Clones share the store.
    let other = store.clone();
    other.put(Table::Buffer, b"x", b"y");
    assert!(store.has_pending());
    store.commit().unwrap();
    assert_eq!(other.get(Table::Buffer, b"x").unwrap(), Some(b"y".to_vec()));
    assert_eq!(store.approx_size_bytes(), 0);
}

/// Random puts/deletes/commits/rollbacks checked against a model, on both
/// backends; the file one is then reopened and must hold what was committed.
#[test]
fn random_ops_match_a_model() {
    random_ops_on(&Store::in_memory().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.redb");
    let committed = random_ops_on(&Store::open(&path).unwrap());
    let reopened = Store::open(&path).unwrap();
    let all = reopened
        .range(Table::Delivered, &[], None, usize::MAX)
        .unwrap();
    assert_eq!(all, committed.into_iter().collect::<Vec<_>>());
}

/// Runs the random operations; returns the model's committed state after
/// a final rollback.
fn random_ops_on(store: &Store) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut committed: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut current = committed.clone();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for i in 0..3000u32 {
        let key = vec![b'k', rnd(40) as u8];
        match rnd(10) {
            0..=3 => {
                let v = i.to_be_bytes().to_vec();
                store.put(Table::Delivered, &key, &v);
                current.insert(key.clone(), v);
            }
            4..=5 => {
                store.delete(Table::Delivered, &key);
                current.remove(&key);
            }
            6 => {
                store.commit().unwrap();
                committed = current.clone();
            }
            7 => {
                store.rollback();
                current = committed.clone();
            }
            _ => {
                let start = vec![b'k', rnd(40) as u8];
                let end = match rnd(3) {
                    0 => None,
                    _ => Some(vec![b'k', rnd(45) as u8]),
                };
                let limit = rnd(12) as usize;
                let got = store
                    .range(Table::Delivered, &start, end.as_deref(), limit)
                    .unwrap();
                let want: Vec<_> = current
                    .iter()
                    .filter(|(k, _)| {
                        **k >= start && end.as_ref().is_none_or(|e| k.as_slice() < e.as_slice())
                    })
                    .take(limit)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(got, want, "range at op {i}");
            }
        }
        assert_eq!(
            store.get(Table::Delivered, &key).unwrap(),
            current.get(&key).cloned()
        );
    }
    store.rollback();
    committed
}

#[test]
fn rollback_restores_tables_and_mls_and_commit_persists_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let (signer, credential) = signer_and_credential("alice");

    let gid;
    let epoch;
    {
        let store = Store::open(&path).unwrap();
        let provider = MmlsProvider::new(store.clone());

        // Step 1, rolled back: nothing of it remains, in memory or on disk.
        store.put(Table::Meta, b"state", b"v1");
        store.put(Table::KeyPackages, b"kp", b"x");
        signer.store(store.mls()).unwrap();
        let group = new_group(&provider, &signer, &credential);
        let rolled_back_gid = group.group_id().clone();
        assert!(store.has_pending());
        assert!(MlsGroup::load(store.mls(), &rolled_back_gid)
            .unwrap()
            .is_some());
        store.rollback();
        assert!(!store.has_pending());
        assert!(MlsGroup::load(store.mls(), &rolled_back_gid)
            .unwrap()
            .is_none());
        assert!(
            SignatureKeyPair::read(store.mls(), signer.public(), signer.signature_scheme())
                .is_none()
        );
        assert_eq!(store.get(Table::Meta, b"state").unwrap(), None);
        assert_eq!(store.get(Table::KeyPackages, b"kp").unwrap(), None);

        // Step 2, committed.
        store.put(Table::Meta, b"state", b"v2");
        signer.store(store.mls()).unwrap();
        let mut group = new_group(&provider, &signer, &credential);
        store.commit().unwrap();
        gid = group.group_id().clone();

        // Step 3, committed: the group moves to the next epoch.
        group
            .self_update(&provider, &signer, LeafNodeParameters::default())
            .unwrap();
        group.merge_pending_commit(&provider).unwrap();
        store.commit().unwrap();
        epoch = group.epoch();
        assert_eq!(epoch.as_u64(), 1);

        // Step 4, rolled back: modifies existing mls entries.
        group
            .self_update(&provider, &signer, LeafNodeParameters::default())
            .unwrap();
        group.merge_pending_commit(&provider).unwrap();
        store.put(Table::Meta, b"state", b"v4");
        store.rollback();
        let reloaded = MlsGroup::load(store.mls(), &gid).unwrap().unwrap();
        assert_eq!(reloaded.epoch(), epoch);
        assert_eq!(
            store.get(Table::Meta, b"state").unwrap(),
            Some(b"v2".to_vec())
        );
        assert!(store.approx_size_bytes() > 0);
    }

    // Every handle is dropped: a fresh open loads the state from the file.
    let store = Store::open(&path).unwrap();
    assert!(!store.has_pending());
    let group = MlsGroup::load(store.mls(), &gid)
        .unwrap()
        .expect("the committed group is on disk");
    assert_eq!(group.epoch(), epoch);
    assert!(
        SignatureKeyPair::read(store.mls(), signer.public(), signer.signature_scheme()).is_some()
    );
    assert_eq!(
        store.get(Table::Meta, b"state").unwrap(),
        Some(b"v2".to_vec())
    );
    assert_eq!(store.get(Table::KeyPackages, b"kp").unwrap(), None);

    // The reloaded group is usable with the reopened store.
    let provider = MmlsProvider::new(store.clone());
    let mut group = group;
    group
        .self_update(&provider, &signer, LeafNodeParameters::default())
        .unwrap();
    group.merge_pending_commit(&provider).unwrap();
    store.commit().unwrap();
    assert_eq!(
        MlsGroup::load(store.mls(), &gid)
            .unwrap()
            .unwrap()
            .epoch()
            .as_u64(),
        2
    );
}

#[test]
fn crash_discard_leaves_only_committed_steps_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let (signer, credential) = signer_and_credential("bob");

    let store = Store::open(&path).unwrap();
    let provider = MmlsProvider::new(store.clone());
    store.put(Table::Log, b"1", b"one");
    store.put(Table::Outbox, b"o1", b"out");
    let group = new_group(&provider, &signer, &credential);
    let committed_gid = group.group_id().clone();
    store.commit().unwrap();

    store.put(Table::Log, b"2", b"two");
    store.delete(Table::Log, b"1");
    store.delete(Table::Outbox, b"o1");
    let group = new_group(&provider, &signer, &credential);
    let crashed_gid = group.group_id().clone();
    signer.store(store.mls()).unwrap();
    store.crash_discard();
    // "The process died": the old handle's memory still has the group.
    assert!(MlsGroup::load(store.mls(), &crashed_gid).unwrap().is_some());

    // Reopen while the old handle is still alive (as the engine's tests do).
    let reopened = Store::open(&path).unwrap();
    let check = |s: &Store| {
        assert_eq!(s.get(Table::Log, b"1").unwrap(), Some(b"one".to_vec()));
        assert_eq!(s.get(Table::Log, b"2").unwrap(), None);
        assert_eq!(s.get(Table::Outbox, b"o1").unwrap(), Some(b"out".to_vec()));
        assert_eq!(
            s.range(Table::Log, b"", None, 10).unwrap(),
            vec![kv(b"1", b"one")]
        );
        assert!(MlsGroup::load(s.mls(), &committed_gid).unwrap().is_some());
        assert!(MlsGroup::load(s.mls(), &crashed_gid).unwrap().is_none());
        assert!(
            SignatureKeyPair::read(s.mls(), signer.public(), signer.signature_scheme()).is_none()
        );
    };
    check(&reopened);
    drop(provider);
    drop(store);
    drop(reopened);

    // And after every handle is gone.
    let fresh = Store::open(&path).unwrap();
    check(&fresh);
}

#[test]
fn snapshot_is_an_independent_copy_of_the_committed_state() {
    let store = Store::in_memory().unwrap();
    let provider = MmlsProvider::new(store.clone());
    let (signer, credential) = signer_and_credential("carol");
    store.put(Table::Log, b"k", b"v");
    let group = new_group(&provider, &signer, &credential);
    let gid = group.group_id().clone();
    store.commit().unwrap();
    store.put(Table::Log, b"pending", b"p");

    let snap = store.snapshot().unwrap();
    assert_eq!(snap.get(Table::Log, b"k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(snap.get(Table::Log, b"pending").unwrap(), None);
    assert_eq!(
        MlsGroup::load(snap.mls(), &gid).unwrap().unwrap().epoch(),
        group.epoch()
    );

    snap.put(Table::Log, b"k", b"changed");
    snap.commit().unwrap();
    store.commit().unwrap();
    assert_eq!(store.get(Table::Log, b"k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(snap.get(Table::Log, b"pending").unwrap(), None);
    assert_eq!(
        snap.get(Table::Log, b"k").unwrap(),
        Some(b"changed".to_vec())
    );
}

#[test]
fn a_memory_snapshot_holds_the_committed_openmls_state_only() {
    // A memory store keeps openmls's state once (its `MlsStorage`), not in
    // its maps too: a snapshot must still see exactly the committed state.
    let store = Store::in_memory().unwrap();
    let provider = MmlsProvider::new(store.clone());
    let (signer, credential) = signer_and_credential("dave");
    let first = new_group(&provider, &signer, &credential);
    store.commit().unwrap();
    let second = new_group(&provider, &signer, &credential);

    let snap = store.snapshot().unwrap();
    assert!(MlsGroup::load(snap.mls(), first.group_id())
        .unwrap()
        .is_some());
    assert!(MlsGroup::load(snap.mls(), second.group_id())
        .unwrap()
        .is_none());

    store.commit().unwrap();
    assert!(MlsGroup::load(store.mls(), second.group_id())
        .unwrap()
        .is_some());
    assert!(MlsGroup::load(snap.mls(), second.group_id())
        .unwrap()
        .is_none());
    let again = snap.snapshot().unwrap();
    assert!(MlsGroup::load(again.mls(), first.group_id())
        .unwrap()
        .is_some());

    let usage = store.memory_usage();
    let mls = usage.iter().find(|(name, _, _)| *name == "mls").unwrap();
    assert!(mls.1 > 0 && mls.2 > 0, "{usage:?}");
}

#[test]
fn garbage_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed: u64 = 42;
    for (i, len) in [1usize, 17, 512, 4096, 5000, 65536, 300_000]
        .into_iter()
        .enumerate()
    {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 56) as u8
            })
            .collect();
        let path = dir.path().join(format!("garbage{i}.redb"));
        std::fs::write(&path, &bytes).unwrap();
        let r = Store::open(&path);
        assert!(r.is_err(), "garbage of {len} bytes opened");
        let msg = r.unwrap_err().to_string();
        assert!(!msg.is_empty());
    }
}

#[test]
fn damaged_database_file_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.redb");
    {
        let store = Store::open(&path).unwrap();
        for i in 0..200u32 {
            store.put(Table::Log, &i.to_be_bytes(), &[i as u8; 300]);
        }
        store.commit().unwrap();
    }
    let good = std::fs::read(&path).unwrap();

    // Truncated.
    let truncated = dir.path().join("truncated.redb");
    std::fs::write(&truncated, &good[..good.len() / 3]).unwrap();
    assert!(Store::open(&truncated).is_err());

    // Header overwritten.
    let mut bad = good.clone();
    bad[..64].iter_mut().for_each(|b| *b ^= 0x5a);
    let header = dir.path().join("header.redb");
    std::fs::write(&header, &bad).unwrap();
    assert!(Store::open(&header).is_err());

    // Data pages flipped: must be an error, or still read back consistently.
    for (i, at) in [good.len() / 2, good.len() * 3 / 4, good.len() - 100]
        .into_iter()
        .enumerate()
    {
        let mut bad = good.clone();
        bad[at..at + 64].iter_mut().for_each(|b| *b ^= 0xff);
        let p = dir.path().join(format!("flip{i}.redb"));
        std::fs::write(&p, &bad).unwrap();
        if let Ok(s) = Store::open(&p) {
            let _ = s.range(Table::Log, b"", None, usize::MAX);
        }
    }
}

/// Group commit on a file: deferred steps are read back (get, range, the
/// openmls image) before the flush, are gone after a crash before it, and
/// are all on disk after it; a step left open at the flush is not.
#[test]
fn deferred_steps_reach_the_disk_only_with_the_flush() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("batch.redb");
    let (signer, credential) = signer_and_credential("carol");

    let store = Store::open(&path).unwrap();
    let provider = MmlsProvider::new(store.clone());
    store.put(Table::Log, b"1", b"one");
    store.commit().unwrap();

    // Two deferred steps: the second shadows and deletes the first's keys.
    store.put(Table::Log, b"2", b"two");
    store.put(Table::Log, b"3", b"three");
    let group = new_group(&provider, &signer, &credential);
    let gid = group.group_id().clone();
    store.commit_deferred().unwrap();
    store.delete(Table::Log, b"1");
    store.put(Table::Log, b"3", b"THREE");
    store.commit_deferred().unwrap();
    let expect = vec![kv(b"2", b"two"), kv(b"3", b"THREE")];
    assert_eq!(store.get(Table::Log, b"1").unwrap(), None);
    assert_eq!(store.range(Table::Log, b"", None, 10).unwrap(), expect);
    // A step's own writes still shadow the deferred ones.
    store.put(Table::Log, b"2", b"TWO");
    assert_eq!(
        store.range(Table::Log, b"", None, 10).unwrap(),
        vec![kv(b"2", b"TWO"), kv(b"3", b"THREE")]
    );
    store.rollback();

    // Nothing deferred is on disk: a second handle on the file sees the
    // last durable commit only, and so does the disk after a crash.
    let on_disk = |p: &Path| {
        let s = Store::open(p).unwrap();
        let log = s.range(Table::Log, b"", None, 10).unwrap();
        let has_group = MlsGroup::load(s.mls(), &gid).unwrap().is_some();
        (log, has_group)
    };
    assert_eq!(on_disk(&path), (vec![kv(b"1", b"one")], false));

    // A step open at the flush stays out of it.
    store.put(Table::Log, b"4", b"open");
    store.flush().unwrap();
    assert_eq!(on_disk(&path), (expect.clone(), true));
    store.rollback();
    assert_eq!(store.range(Table::Log, b"", None, 10).unwrap(), expect);

    // A crash before the flush loses the deferred steps, never a part of one.
    store.put(Table::Log, b"5", b"five");
    store.commit_deferred().unwrap();
    store.crash_discard();
    drop(provider);
    drop(store);
    assert_eq!(on_disk(&path), (expect, true));
}

#[test]
fn a_flush_in_flight_stays_readable_goes_first_and_comes_back_if_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipelined.redb");
    let (signer, credential) = signer_and_credential("dave");
    let on_disk = |p: &Path| {
        Store::open(p)
            .unwrap()
            .range(Table::Log, b"", None, 10)
            .unwrap()
    };

    let store = Store::open(&path).unwrap();
    let provider = MmlsProvider::new(store.clone());
    store.put(Table::Log, b"1", b"one");
    store.commit_deferred().unwrap();
    let group = new_group(&provider, &signer, &credential);
    let gid = group.group_id().clone();
    store.commit_deferred().unwrap();
    let first = store.begin_flush().unwrap().expect("something to flush");

    // The next steps run while it is on its way: they read it, shadow it,
    // and may not overtake it.
    assert_eq!(store.get(Table::Log, b"1").unwrap(), Some(b"one".to_vec()));
    store.put(Table::Log, b"2", b"two");
    store.delete(Table::Log, b"1");
    store.commit_deferred().unwrap();
    assert_eq!(
        store.range(Table::Log, b"", None, 10).unwrap(),
        vec![kv(b"2", b"two")]
    );
    assert!(matches!(
        store.begin_flush(),
        Err(StoreError::FlushInFlight)
    ));
    assert!(matches!(store.flush(), Err(StoreError::FlushInFlight)));
    store.put(Table::Log, b"3", b"three");
    assert!(matches!(store.commit(), Err(StoreError::FlushInFlight)));
    store.rollback();
    assert_eq!(on_disk(&path), vec![]);

    // Its write failed: its steps are deferred again, under the later ones,
    // and the next flush writes them all.
    store.end_flush(first, false);
    assert_eq!(
        store.range(Table::Log, b"", None, 10).unwrap(),
        vec![kv(b"2", b"two")]
    );
    let again = store.begin_flush().unwrap().expect("all of it");
    // Written on another thread, as the node does.
    let written = std::thread::spawn(move || {
        let r = again.write();
        (again, r)
    });
    let (again, r) = written.join().unwrap();
    assert!(r.is_ok());
    store.end_flush(again, true);
    assert_eq!(on_disk(&path), vec![kv(b"2", b"two")]);
    let reopened = Store::open(&path).unwrap();
    assert!(MlsGroup::load(reopened.mls(), &gid).unwrap().is_some());
    assert!(store.begin_flush().unwrap().is_none(), "nothing left");
}

/// The engine's tables of memory stores created with one pool hold each
/// large value once (every simulated node logs the same envelopes), and
/// each store still sees only its own writes.
#[test]
fn engine_tables_of_sharing_stores_hold_a_large_value_once() {
    let shared = SharedValues::new();
    let a = Store::in_memory_sharing(&shared).expect("store a");
    let b = Store::in_memory_sharing(&shared).expect("store b");
    let envelope = vec![5u8; 8192];
    for s in [&a, &b] {
        s.put(Table::Log, b"group/0", &envelope);
        s.commit().expect("commit");
    }
    assert_eq!(shared.live(), 1, "one copy for both logs");
    assert_eq!(
        a.get(Table::Log, b"group/0").expect("get"),
        Some(envelope.clone())
    );

    // b's entry is replaced: a keeps its own, the pool holds both.
    let other = vec![6u8; 8192];
    b.put(Table::Log, b"group/0", &other);
    b.commit().expect("commit");
    assert_eq!(shared.live(), 2);
    assert_eq!(a.get(Table::Log, b"group/0").expect("get"), Some(envelope));
    assert_eq!(
        b.get(Table::Log, b"group/0").expect("get"),
        Some(other.clone())
    );

    // A snapshot (an attacker's copy) is independent of later writes.
    let copy = b.snapshot().expect("snapshot");
    b.delete(Table::Log, b"group/0");
    b.commit().expect("commit");
    assert_eq!(copy.get(Table::Log, b"group/0").expect("get"), Some(other));
    assert_eq!(b.get(Table::Log, b"group/0").expect("get"), None);
}
