//! Sneakernet: participants that never exchange anything but bundle files
//! create a universe, talk both ways and converge; bad bundles are typed
//! errors that change nothing.

use mmls_core::bundle::{self, Bundle, BundleError, ImportReport};
use mmls_core::testkit::{self, view, View};
use mmls_core::{Event, Id32, MemberId, Output, Participant, Profile, Store};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// A node with no network at all: its publishes go nowhere.
struct Island {
    p: Participant,
    now: u64,
    /// (sender, per-sender seq, text) of every message delivered here.
    got: Vec<(MemberId, u64, String)>,
}

impl Island {
    fn new(i: usize) -> Island {
        let store = Store::in_memory().expect("store");
        let (p, _) =
            Participant::open(testkit::identity(i), store, testkit::config(), 1_000).expect("open");
        Island {
            p,
            now: 1_000,
            got: vec![],
        }
    }

    fn absorb(&mut self, outs: Vec<Output>) {
        let mut acks = vec![];
        for o in outs {
            match o {
                Output::Event(Event::Message(d)) => self.got.push((
                    d.sender,
                    d.seq,
                    String::from_utf8_lossy(&d.body).to_string(),
                )),
                Output::Publish(pb) => acks.extend(pb.outbox_id),
                _ => {}
            }
        }
        self.p.ack_published(&acks);
    }

    fn tick(&mut self) {
        self.now += 1_000;
        let outs = self.p.tick(self.now);
        self.absorb(outs);
    }

    fn import(&mut self, file: &[u8]) -> Result<ImportReport, BundleError> {
        let (r, outs) = bundle::import(&mut self.p, file)?;
        self.absorb(outs);
        self.tick();
        Ok(r)
    }

    fn export(&self, uid: &Id32, since: Option<&MemberId>) -> Vec<u8> {
        bundle::export(&self.p, uid, since)
            .expect("export")
            .0
            .encode()
    }

    fn texts_from(&self, m: &MemberId) -> Vec<String> {
        self.got
            .iter()
            .filter(|(s, _, _)| s == m)
            .map(|(_, _, t)| t.clone())
            .collect()
    }
}

/// Carries a full bundle each way, `rounds` times.
fn exchange(a: &mut Island, b: &mut Island, uid: &Id32, rounds: usize) {
    for _ in 0..rounds {
        let f = a.export(uid, None);
        b.import(&f).expect("a -> b");
        let f = b.export(uid, None);
        a.import(&f).expect("b -> a");
    }
}

/// Two islands meet only through files: introduction, universe, Welcomes.
fn islands() -> (Island, Island, Id32) {
    let mut a = Island::new(0);
    let mut b = Island::new(1);
    let intro = bundle::introduce(&b.p).encode();
    let r = a.import(&intro).expect("introduction");
    assert!(r.key_package_ok);
    assert_eq!((r.accepted, r.rejected), (0, 0));
    let members = [a.p.me().clone(), b.p.me().clone()];
    let (uid, outs) =
        a.p.create_universe("island", &members, &[], Profile::default())
            .expect("create with the KeyPackage that came by file");
    a.absorb(outs);
    exchange(&mut a, &mut b, &uid, 2);
    (a, b, uid)
}

fn fingerprints(i: &mut Island, uid: &Id32, owners: &[MemberId]) -> Vec<(u64, Vec<u8>)> {
    owners
        .iter()
        .map(|o| {
            let g = i.p.group_of(uid, o).expect("group known");
            i.p.epoch_fingerprint(&g).expect("fingerprint")
        })
        .collect()
}

fn assert_converged(a: &mut Island, b: &mut Island, uid: &Id32) {
    let owners = [a.p.me().clone(), b.p.me().clone()];
    let fa = fingerprints(a, uid, &owners);
    let fb = fingerprints(b, uid, &owners);
    assert_eq!(fa, fb, "the send groups disagree");
    let (sa, sb) = (a.p.status(uid).unwrap(), b.p.status(uid).unwrap());
    for st in [&sa, &sb] {
        assert_eq!(st.groups.len(), 2);
        for g in &st.groups {
            assert!(!g.stale && !g.blocked && g.buffered == 0, "{g:?}");
        }
    }
    let heads = |s: &mmls_core::UniverseStatus| {
        s.groups
            .iter()
            .map(|g| (g.group, g.epoch, g.next_seq, g.auth.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(heads(&sa), heads(&sb));
}

#[test]
fn two_islands_converge_by_files_alone() {
    let (mut a, mut b, uid) = islands();
    let (ma, mb) = (a.p.me().clone(), b.p.me().clone());
    assert!(b.p.universes().contains(&uid), "b joined through the file");
    assert!(a.p.group_of(&uid, &mb).is_some(), "a joined b's send group");

    for i in 0..3 {
        let (_, o) = a.p.send(&uid, format!("a{i}").as_bytes()).unwrap();
        a.absorb(o);
        let (_, o) = b.p.send(&uid, format!("b{i}").as_bytes()).unwrap();
        b.absorb(o);
    }
    // Fresh keys on both sides travel by file too (commits and PSK imports).
    let o = a.p.update(&uid).unwrap();
    a.absorb(o);
    exchange(&mut a, &mut b, &uid, 2);
    let o = b.p.update(&uid).unwrap();
    b.absorb(o);
    let (_, o) = a.p.send(&uid, b"after the updates").unwrap();
    a.absorb(o);
    exchange(&mut a, &mut b, &uid, 3);

    assert_eq!(b.texts_from(&ma), ["a0", "a1", "a2", "after the updates"]);
    assert_eq!(a.texts_from(&mb), ["b0", "b1", "b2"]);
    // Exactly once: the engine's durable delivered log agrees with the events.
    assert_eq!(testkit::logged_texts(&b.p, &uid).len(), 4);
    assert_eq!(testkit::logged_texts(&a.p, &uid).len(), 3);
    assert_converged(&mut a, &mut b, &uid);
    assert!(
        b.p.status(&uid).unwrap().groups.iter().all(|g| g.epoch > 1),
        "both updates were applied"
    );
}

#[test]
fn reimporting_a_bundle_changes_nothing() {
    let (mut a, mut b, uid) = islands();
    let (_, o) = a.p.send(&uid, b"once").unwrap();
    a.absorb(o);
    let f = a.export(&uid, None);
    let first = b.import(&f).unwrap();
    assert!(first.accepted >= 1 && first.rejected == 0, "{first:?}");
    let before: View = view(&mut b.p, &uid);
    let got = b.got.len();
    let again = b.import(&f).unwrap();
    let entries = Bundle::decode(&f).unwrap().entries();
    assert_eq!((again.accepted, again.rejected), (0, 0), "{again:?}");
    assert_eq!(again.duplicate, entries);
    assert_eq!(view(&mut b.p, &uid), before);
    assert_eq!(b.got.len(), got, "nothing delivered twice");
    assert_eq!(testkit::logged_texts(&b.p, &uid), ["once"]);
}

/// A bundle written before envelope version 2 holds version-1 envelopes:
/// it still imports, and the same entries in version 2 afterwards (another
/// export of the same streams) are duplicates, delivered once.
#[test]
fn a_bundle_of_version_1_envelopes_imports_and_dedupes_against_version_2() {
    let (mut a, mut b, uid) = islands();
    for t in ["old 1", "old 2"] {
        let (_, o) = a.p.send(&uid, t.as_bytes()).unwrap();
        a.absorb(o);
    }
    let v2_file = a.export(&uid, None);
    let mut old = Bundle::decode(&v2_file).unwrap();
    let to_v1 = |raw: &[u8]| {
        let e = mmls_core::Envelope::decode(raw).expect("exported entries decode");
        let v1 = e.encode_v1();
        assert!(v1.len() > raw.len(), "version 1 is the larger encoding");
        serde_bytes::ByteBuf::from(v1)
    };
    old.key_package = to_v1(&old.key_package);
    for run in &mut old.groups {
        for entry in &mut run.entries {
            *entry = to_v1(entry);
        }
    }
    let v1_file = old.encode();
    assert_ne!(v1_file, v2_file);
    let r = b.import(&v1_file).expect("a version-1 bundle imports");
    assert!(r.key_package_ok, "{r:?}");
    assert!(r.accepted >= 2 && r.rejected == 0, "{r:?}");
    assert_eq!(b.texts_from(a.p.me()), ["old 1", "old 2"]);
    let before: View = view(&mut b.p, &uid);
    let again = b.import(&v2_file).unwrap();
    assert_eq!((again.accepted, again.rejected), (0, 0), "{again:?}");
    assert_eq!(again.duplicate, old.entries());
    assert_eq!(view(&mut b.p, &uid), before);
    assert_eq!(testkit::logged_texts(&b.p, &uid), ["old 1", "old 2"]);
}

#[test]
fn damaged_and_foreign_bundles_are_typed_errors_that_change_nothing() {
    let (mut a, mut b, uid) = islands();
    let (_, o) = a.p.send(&uid, b"not yet").unwrap();
    a.absorb(o);
    let good = a.export(&uid, None);

    // A universe b is not in, made by two other islands.
    let mut c = Island::new(2);
    let d = Island::new(3);
    c.import(&bundle::introduce(&d.p).encode()).unwrap();
    let (u2, o) =
        c.p.create_universe("elsewhere", &[d.p.me().clone()], &[], Profile::default())
            .unwrap();
    c.absorb(o);
    let foreign = c.export(&u2, None);

    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let mut garbage = vec![0u8; 4096];
    for (i, x) in garbage.iter_mut().enumerate() {
        *x = (i * 7919 % 251) as u8;
    }

    let before = view(&mut b.p, &uid);
    let owners = [a.p.me().clone(), b.p.me().clone()];
    let fp_before = fingerprints(&mut b, &uid, &owners);
    let rejected_before = b.p.rejected_inputs();
    let universes_before = b.p.universes();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() - 100].to_vec()),
        ("bit flip", flipped),
        ("garbage", garbage),
        ("empty", vec![]),
        ("foreign universe", foreign),
    ];
    for (what, file) in cases {
        let err = bundle::import(&mut b.p, &file).expect_err(what);
        match what {
            "truncated" | "bit flip" => assert!(matches!(err, BundleError::Corrupt(_)), "{err}"),
            "garbage" | "empty" => assert_eq!(err, BundleError::NotABundle),
            _ => assert_eq!(err, BundleError::ForeignUniverse(u2)),
        }
        b.tick();
        assert_eq!(view(&mut b.p, &uid), before, "{what} changed the state");
        assert_eq!(b.p.rejected_inputs(), rejected_before, "{what}");
        assert_eq!(b.p.universes(), universes_before, "{what}");
        assert_eq!(fingerprints(&mut b, &uid, &owners), fp_before);
    }
    // The good one still works afterwards.
    b.import(&good).unwrap();
    assert_eq!(testkit::logged_texts(&b.p, &uid), ["not yet"]);
}

#[test]
fn since_peer_exports_only_what_the_member_lacks() {
    let (mut a, mut b, uid) = islands();
    let mb = b.p.me().clone();
    // b commits after a's update: its frontier tells a where b stands.
    let o = a.p.update(&uid).unwrap();
    a.absorb(o);
    exchange(&mut a, &mut b, &uid, 2);
    assert_converged(&mut a, &mut b, &uid);
    for i in 0..5 {
        let (_, o) = a.p.send(&uid, format!("late {i}").as_bytes()).unwrap();
        a.absorb(o);
    }
    let (full, _) = bundle::export(&a.p, &uid, None).unwrap();
    let (delta, rep) = bundle::export(&a.p, &uid, Some(&mb)).unwrap();
    assert!(rep.known_groups >= 1, "{rep:?}");
    assert!(
        delta.entries() >= 5 && delta.entries() < full.entries(),
        "delta {} of {}",
        delta.entries(),
        full.entries()
    );
    let r = b.import(&delta.encode()).unwrap();
    assert_eq!((r.rejected, r.waiting), (0, 0), "{r:?}");
    let late: Vec<String> = (0..5).map(|i| format!("late {i}")).collect();
    assert!(b.texts_from(a.p.me()).ends_with(&late));
    // Nothing known about a member: everything.
    let stranger = testkit::identity(9).member_id();
    let (all, rep) = bundle::export(&a.p, &uid, Some(&stranger)).unwrap();
    assert_eq!((all.entries(), rep.known_groups), (full.entries(), 0));
}

/// Hostile bundles that pass the checksum (anyone can write one): mutated
/// bodies with the checksum recomputed. Never a panic; a refusal is typed
/// and changes nothing; what is accepted went through the engine's checks,
/// and the universe still works afterwards.
#[test]
fn mutated_bundles_with_a_valid_checksum_never_panic_and_refusals_change_nothing() {
    let cases: usize = testkit::env_or("MMLS_FUZZ_CASES", 300);
    let (mut a, mut b, uid) = islands();
    let (_, o) = a.p.send(&uid, b"seed").unwrap();
    a.absorb(o);
    let good = a.export(&uid, None);
    let body = &good[41..];
    let mut rng = ChaCha8Rng::seed_from_u64(testkit::env_or("MMLS_FUZZ_SEED", 0xb0d1e));
    let (mut refused, mut taken) = (0, 0);
    for _ in 0..cases {
        let mut m = body.to_vec();
        for _ in 0..rng.gen_range(1..4) {
            match rng.gen_range(0..4) {
                0 => {
                    let i = rng.gen_range(0..m.len());
                    m[i] ^= 1 << rng.gen_range(0..8);
                }
                1 => {
                    let i = rng.gen_range(0..m.len());
                    m[i] = rng.gen();
                }
                2 => m.truncate(rng.gen_range(0..m.len())),
                _ => {
                    let i = rng.gen_range(0..m.len());
                    let n = rng.gen_range(1..64);
                    let junk: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                    m.splice(i..i, junk);
                }
            }
            if m.is_empty() {
                m.push(0);
            }
        }
        let mut file = good[..9].to_vec();
        file.extend_from_slice(&Sha256::digest(&m));
        file.extend_from_slice(&m);
        let before = view(&mut b.p, &uid);
        let rejected = b.p.rejected_inputs();
        match bundle::import(&mut b.p, &file) {
            Err(e) => {
                refused += 1;
                assert!(e.to_string().len() < 400, "{e}");
                assert_eq!(view(&mut b.p, &uid), before, "{e}");
                assert_eq!(b.p.rejected_inputs(), rejected, "{e}");
            }
            Ok((_, outs)) => {
                taken += 1;
                b.absorb(outs);
            }
        }
    }
    assert!(refused > 0, "the mutations never produced a refused bundle");
    eprintln!("mutated bundles: {refused} refused whole, {taken} fed to the engine");
    exchange(&mut a, &mut b, &uid, 2);
    assert_eq!(testkit::logged_texts(&b.p, &uid), ["seed"]);
    assert_converged(&mut a, &mut b, &uid);
}
