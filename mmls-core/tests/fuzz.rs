//! Fuzzing on stable Rust: proptest drives hostile input into every entry
//! point that takes bytes from the network, with a fixed seed so CI is
//! deterministic. The properties live in `fuzzkit` and are the same ones the
//! cargo-fuzz targets in `fuzz/` check (see FUZZING.md).
//!
//! Inputs: (i) random bytes; (ii) mutations (bit flips, byte sets,
//! truncations, deletions, insertions, repeats, splices, CBOR headers with
//! huge lengths) of the valid envelopes and sync messages a real universe
//! published; (iii) structurally valid CBOR: envelope maps with fields
//! removed, duplicated, retyped or set to extreme values, wrong versions,
//! unknown fields, arbitrary CBOR trees, deep nesting and length bombs.
//!
//! `MMLS_FUZZ_CASES=n` sets the number of cases of every test (the CI
//! default is small); `MMLS_FUZZ_SEED=n` changes the seed.

use mmls_core::testkit as common;
mod fuzzkit;

use ciborium::value::{Integer, Value};
use fuzzkit::*;
use mmls_core::envelope::{EnvelopeError, MAX_ENVELOPE_BYTES};
use mmls_core::sync::SyncMessage;
use mmls_core::{FetchRequest, Id32};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as PtConfig, RngSeed, TestRunner};
use std::path::PathBuf;

const DEFAULT_SEED: u64 = 0x6d6d_6c73_0f22;

/// Cases per test: `MMLS_FUZZ_CASES`, else the CI default given.
fn cases(ci_default: u32) -> u32 {
    common::env_or("MMLS_FUZZ_CASES", ci_default)
}

fn seed() -> u64 {
    common::env_or("MMLS_FUZZ_SEED", DEFAULT_SEED)
}

fn pt_config(ci_default: u32) -> PtConfig {
    PtConfig {
        cases: cases(ci_default),
        rng_seed: RngSeed::Fixed(seed()),
        // Failing inputs become files under tests/regressions by hand.
        failure_persistence: None,
        max_shrink_iters: 512,
        ..PtConfig::default()
    }
}

/// Runs one check; if it panics, the input is saved (as
/// `<target tmp>/fuzz-failures/<name>.bin`, the last failing input, which
/// after proptest's shrinking is the minimal one) so it can be committed
/// under tests/regressions, and the panic goes on.
fn guard<T>(name: &str, input: &[u8], f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
            let path = dir.join(format!("{name}.bin"));
            if std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::write(&path, input))
                .is_ok()
            {
                eprintln!(
                    "failing input ({} bytes) saved to {}",
                    input.len(),
                    path.display()
                );
            }
            std::panic::resume_unwind(p)
        }
    }
}

// ------------------------------------------------------------- mutations --

/// One edit of a byte string. Positions are taken modulo the length.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    Delete(usize, usize),
    Insert(usize, Vec<u8>),
    Repeat(usize, usize, u8),
    /// Insert a slice of another seed.
    Splice(usize, usize, usize, usize),
    /// Write a CBOR head at a position: (major type, argument) with an
    /// extreme argument (lengths near u64::MAX, indefinite, ...).
    CborHead(usize, u8, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let extreme = prop_oneof![
        Just(0u64),
        Just(1),
        Just(23),
        Just(24),
        Just(32),
        Just(255),
        Just(4096),
        Just(4097),
        Just(MAX_ENVELOPE_BYTES as u64 + 1),
        Just(u32::MAX as u64),
        Just(i64::MAX as u64),
        Just(u64::MAX),
        any::<u64>(),
    ];
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(a, b)| Mutation::FlipBit(a, b)),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::SetByte(a, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        2 => (any::<usize>(), 1usize..64).prop_map(|(a, n)| Mutation::Delete(a, n)),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(a, b)| Mutation::Insert(a, b)),
        1 => (any::<usize>(), 1usize..32, 1u8..64).prop_map(|(a, n, k)| Mutation::Repeat(a, n, k)),
        2 => (any::<usize>(), any::<usize>(), 1usize..256, any::<usize>())
            .prop_map(|(o, f, n, a)| Mutation::Splice(o, f, n, a)),
        2 => (any::<usize>(), 0u8..8, extreme).prop_map(|(a, m, v)| Mutation::CborHead(a, m, v)),
    ]
}

fn cbor_head(major: u8, v: u64) -> Vec<u8> {
    let m = major << 5;
    match v {
        0..=23 => vec![m | v as u8],
        24..=0xff => vec![m | 24, v as u8],
        0x100..=0xffff => [&[m | 25][..], &(v as u16).to_be_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[m | 26][..], &(v as u32).to_be_bytes()].concat(),
        _ => [&[m | 27][..], &v.to_be_bytes()].concat(),
    }
}

fn apply(m: &Mutation, b: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let at = |x: usize, len: usize| if len == 0 { 0 } else { x % (len + 1) };
    match m {
        Mutation::FlipBit(a, bit) => {
            if !b.is_empty() {
                let i = a % b.len();
                b[i] ^= 1 << bit;
            }
        }
        Mutation::SetByte(a, v) => {
            if !b.is_empty() {
                let i = a % b.len();
                b[i] = *v;
            }
        }
        Mutation::Truncate(a) => {
            let i = at(*a, b.len());
            b.truncate(i);
        }
        Mutation::Delete(a, n) => {
            let i = at(*a, b.len());
            let j = (i + n).min(b.len());
            b.drain(i..j);
        }
        Mutation::Insert(a, bytes) => {
            let i = at(*a, b.len());
            b.splice(i..i, bytes.iter().copied());
        }
        Mutation::Repeat(a, n, k) => {
            let i = at(*a, b.len());
            let j = (i + n).min(b.len());
            let chunk = b[i..j].to_vec();
            for _ in 0..*k {
                b.splice(j..j, chunk.iter().copied());
            }
        }
        Mutation::Splice(o, f, n, a) => {
            let other = &seeds[o % seeds.len()];
            let from = at(*f, other.len());
            let to = (from + n).min(other.len());
            let i = at(*a, b.len());
            b.splice(i..i, other[from..to].iter().copied());
        }
        Mutation::CborHead(a, major, v) => {
            let i = at(*a, b.len());
            let head = cbor_head(*major, *v);
            let end = (i + head.len()).min(b.len());
            b.splice(i..end, head);
        }
    }
}

fn mutated(seeds: &'static [Vec<u8>]) -> impl Strategy<Value = Vec<u8>> {
    (0..seeds.len(), prop::collection::vec(mutation(), 1..6)).prop_map(move |(i, ms)| {
        let mut b = seeds[i].clone();
        for m in &ms {
            apply(m, &mut b, seeds);
        }
        b
    })
}

// -------------------------------------------------------- structured CBOR --

fn extreme_int() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Integer(0u64.into())),
        Just(Value::Integer(1u64.into())),
        Just(Value::Integer(2u64.into())),
        Just(Value::Integer(255u64.into())),
        Just(Value::Integer(256u64.into())),
        Just(Value::Integer(u64::MAX.into())),
        Just(Value::Integer((-1i64).into())),
        Just(Value::Integer(i64::MIN.into())),
        Just(Value::Integer(
            Integer::try_from(-(1i128 << 64)).unwrap_or(Integer::from(0u8))
        )),
        any::<u64>().prop_map(|v| Value::Integer(v.into())),
        any::<i64>().prop_map(|v| Value::Integer(v.into())),
    ]
}

const KINDS: &[&str] = &[
    "key_package",
    "key_package_request",
    "welcome",
    "commit",
    "application",
    "rejoin",
    "proposal",
    "Commit",
    "",
];

const FIELDS: &[&str] = &[
    "v",
    "kind",
    "universe",
    "group",
    "epoch",
    "seq",
    "sender",
    "to",
    "deps",
    "proposals",
    "sig",
    "body",
    "extra",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        extreme_int(),
        prop::sample::select(vec![0usize, 1, 31, 32, 33, 64])
            .prop_flat_map(|n| prop::collection::vec(any::<u8>(), n..=n))
            .prop_map(Value::Bytes),
        prop::sample::select(KINDS).prop_map(|k| Value::Text(k.to_string())),
        ".{0,40}".prop_map(Value::Text),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        any::<f64>().prop_map(Value::Float),
    ]
}

/// Arbitrary CBOR trees, nested deeper than any decoder here accepts.
fn cbor_tree() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(40, 256, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((inner.clone(), inner.clone()), 0..4).prop_map(Value::Map),
            (any::<u64>(), inner).prop_map(|(t, v)| Value::Tag(t, Box::new(v))),
        ]
    })
}

/// A field value an envelope may be sent with, valid or not.
fn field_value() -> impl Strategy<Value = Value> {
    let id = || prop::collection::vec(any::<u8>(), 32..=32).prop_map(Value::Bytes);
    prop_oneof![
        4 => leaf(),
        2 => cbor_tree(),
        // deps-shaped lists, up to well past the limit of 4096
        1 => (id(), any::<u64>(), prop::sample::select(vec![0usize, 1, 2, 4096, 4097, 6000]))
            .prop_map(|(g, e, n)| Value::Array(vec![
                Value::Array(vec![g, Value::Integer(e.into())]);
                n
            ])),
        // proposals-shaped lists of byte strings
        1 => (prop::collection::vec(any::<u8>(), 0..8), prop::sample::select(vec![0usize, 1, 4097]))
            .prop_map(|(b, n)| Value::Array(vec![Value::Bytes(b); n])),
    ]
}

#[derive(Debug, Clone)]
enum FieldEdit {
    Remove(usize),
    Set(&'static str, Value),
    Duplicate(usize),
    Swap(usize, usize),
}

fn field_edit() -> impl Strategy<Value = FieldEdit> {
    prop_oneof![
        2 => any::<usize>().prop_map(FieldEdit::Remove),
        5 => (prop::sample::select(FIELDS), field_value()).prop_map(|(k, v)| FieldEdit::Set(k, v)),
        1 => any::<usize>().prop_map(FieldEdit::Duplicate),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| FieldEdit::Swap(a, b)),
    ]
}

fn encode(v: &Value) -> Vec<u8> {
    let mut out = vec![];
    ciborium::into_writer(v, &mut out).expect("encoding a value into a Vec");
    out
}

/// Sets field `name` of an envelope map of either version: by its text key
/// in a version-1 map, by its number (its place in `FIELDS`) in a
/// version-2 one, where a new key goes in key order so that the edit is
/// all that is wrong with it.
fn set_field(m: &mut Vec<(Value, Value)>, name: &str, val: Value) {
    let v2 = m.iter().any(|(k, _)| *k == Value::Integer(0.into()));
    if !v2 {
        match m.iter_mut().find(|(key, _)| key.as_text() == Some(name)) {
            Some((_, slot)) => *slot = val,
            None => m.push((Value::Text(name.to_string()), val)),
        }
        return;
    }
    let code = FIELDS
        .iter()
        .position(|f| *f == name)
        .unwrap_or(FIELDS.len()) as u64;
    let key = Value::Integer(code.into());
    if let Some((_, slot)) = m.iter_mut().find(|(k, _)| *k == key) {
        *slot = val;
        return;
    }
    let at = m
        .iter()
        .position(|(k, _)| k.as_integer().and_then(|i| u64::try_from(i).ok()) > Some(code))
        .unwrap_or(m.len());
    m.insert(at, (key, val));
}

/// A seed envelope, decoded as a CBOR map and edited field by field.
fn structured_envelope(seeds: &'static [Vec<u8>]) -> impl Strategy<Value = Vec<u8>> {
    (0..seeds.len(), prop::collection::vec(field_edit(), 1..4)).prop_map(move |(i, edits)| {
        let v: Value = ciborium::from_reader(seeds[i].as_slice()).expect("seed is CBOR");
        let Value::Map(mut m) = v else {
            panic!("seed envelope is not a map")
        };
        for e in edits {
            match e {
                FieldEdit::Remove(i) if !m.is_empty() => {
                    let n = m.len();
                    m.remove(i % n);
                }
                FieldEdit::Set(k, val) => set_field(&mut m, k, val),
                FieldEdit::Duplicate(i) if !m.is_empty() => {
                    let n = m.len();
                    let kv = m[i % n].clone();
                    m.push(kv);
                }
                FieldEdit::Swap(a, b) if !m.is_empty() => {
                    let n = m.len();
                    m.swap(a % n, b % n);
                }
                _ => {}
            }
        }
        encode(&Value::Map(m))
    })
}

/// Inputs aimed at the parser's limits: nesting far past any recursion
/// limit, length heads promising more than is there, unterminated
/// indefinite-length items, oversize envelopes.
fn cbor_bombs() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // nesting: arrays, maps (key 0), tags, indefinite arrays
        (
            prop::sample::select(vec![
                vec![0x81u8],
                vec![0xa1, 0x00],
                vec![0xc6],
                vec![0x9f],
                vec![0xbf, 0x61, 0x76],
            ]),
            prop::sample::select(vec![15usize, 16, 17, 33, 1000, 100_000]),
        )
            .prop_map(|(unit, n)| {
                // under a version-1 key ("v") or a version-2 one (0)
                let mut b = if n % 2 == 0 {
                    vec![0xa1, 0x61, b'v']
                } else {
                    vec![0xa1, 0x00]
                };
                for _ in 0..n {
                    b.extend_from_slice(&unit);
                }
                b.push(0x01);
                b
            }),
        // a length head with a little data behind it
        (
            0u8..8,
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..16)
        )
            .prop_map(|(major, len, tail)| {
                let mut b = cbor_head(major, len);
                b.extend(tail);
                b
            }),
        (
            0u8..8,
            prop::sample::select(vec![u64::MAX, i64::MAX as u64, 1 << 32, 1 << 20]),
            prop::collection::vec(any::<u8>(), 0..16)
        )
            .prop_map(|(major, len, tail)| {
                let mut b = cbor_head(5, 1);
                b.extend(encode(&Value::Text("v".into())));
                b.extend(cbor_head(major, len));
                b.extend(tail);
                b
            }),
        // indefinite-length strings and containers, never closed
        prop::sample::select(vec![0x5fu8, 0x7f, 0x9f, 0xbf]).prop_map(|h| vec![h; 64]),
        // just over the size limit
        Just(vec![0u8; MAX_ENVELOPE_BYTES + 1]),
    ]
}

/// Every kind of input, weighted towards the ones that get past decoding.
fn envelope_input(seeds: &'static [Vec<u8>]) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..600),
        6 => mutated(seeds),
        4 => structured_envelope(seeds),
        1 => cbor_tree().prop_map(|v| encode(&v)),
        1 => cbor_bombs(),
        1 => prop::sample::select(seeds.to_vec()),
    ]
    .boxed()
}

/// What the universe published (version 2), and the same envelopes in
/// version 1, as old logs and older peers hold them.
fn envelope_seeds() -> &'static [Vec<u8>] {
    static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        let corpus = &fixture().corpus;
        let v1 = corpus
            .iter()
            .filter_map(|b| mmls_core::Envelope::decode(b).ok())
            .map(|e| e.encode_v1());
        corpus.iter().cloned().chain(v1).collect()
    })
}

fn sync_seeds() -> &'static [Vec<u8>] {
    &fixture().sync
}

/// Sync messages: random, mutated, structured (a seed with one of its CBOR
/// values swapped anywhere in the tree), bombs.
fn sync_input() -> BoxedStrategy<Vec<u8>> {
    let seeds = sync_seeds();
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..600),
        6 => mutated(seeds),
        3 => (0..seeds.len(), any::<usize>(), field_value()).prop_map(move |(i, at, v)| {
            let mut tree: Value = ciborium::from_reader(seeds[i].as_slice()).expect("seed is CBOR");
            replace_nth(&mut tree, at, v);
            encode(&tree)
        }),
        1 => cbor_tree().prop_map(|v| encode(&v)),
        1 => cbor_bombs(),
        1 => prop::sample::select(seeds.to_vec()),
    ]
    .boxed()
}

/// Replaces the `n % count`-th node of a CBOR tree (pre-order) by `v`.
fn replace_nth(tree: &mut Value, n: usize, v: Value) {
    fn count(t: &Value) -> usize {
        1 + match t {
            Value::Array(a) => a.iter().map(count).sum(),
            Value::Map(m) => m.iter().map(|(k, v)| count(k) + count(v)).sum(),
            Value::Tag(_, b) => count(b),
            _ => 0,
        }
    }
    fn walk(t: &mut Value, n: &mut usize, v: &mut Option<Value>) {
        if *n == 0 {
            if let Some(x) = v.take() {
                *t = x;
            }
            return;
        }
        *n -= 1;
        match t {
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, n, v)),
            Value::Map(m) => m.iter_mut().for_each(|(k, x)| {
                walk(k, n, v);
                walk(x, n, v);
            }),
            Value::Tag(_, b) => walk(b, n, v),
            _ => {}
        }
    }
    let mut k = n % count(tree);
    walk(tree, &mut k, &mut Some(v));
}

// ------------------------------------------------------------------ tests --

proptest! {
    #![proptest_config(pt_config(400))]

    /// `Envelope::decode` never panics; errors are typed and short; accepted
    /// envelopes obey the rules and round-trip.
    #[test]
    fn envelope_decode(input in envelope_input(envelope_seeds())) {
        guard("envelope_decode", &input, || check_envelope(&input).is_ok());
    }

    /// `SyncMessage::decode` (what the request-response codec runs on every
    /// message) and what a node then does with an accepted request:
    /// `serve_fetch` and `plan_fetches` on a member's real state.
    #[test]
    fn sync_decode_serve_and_plan(input in sync_input()) {
        let fx = fixture();
        let server = fx.restore(0);
        guard("sync_decode", &input, || check_sync(&input, fx, &server, None));
    }
}

proptest! {
    #![proptest_config(pt_config(120))]

    /// One hostile envelope into a member of a live universe: rejected
    /// inputs change nothing and are counted, and the universe still
    /// delivers the messages the member missed and agrees on every group.
    #[test]
    fn handle_incoming_on_a_member(input in envelope_input(envelope_seeds())) {
        let fx = fixture();
        let mut p = fx.member();
        guard("handle_incoming", &input, || {
            check_incoming(&mut p, &fx.uid, &input);
            fx.check_liveness(&mut p);
        });
    }

    /// Fetch answers a peer made up: garbage and mutated envelopes, any
    /// `oldest`, `more`, `pruned`, for a real or a foreign group.
    #[test]
    fn handle_fetch_response_with_garbage(
        envs in prop::collection::vec(envelope_input(envelope_seeds()), 0..4),
        oldest in prop::option::of(prop_oneof![Just(0u64), Just(1), Just(u64::MAX), any::<u64>()]),
        more in any::<bool>(),
        pruned in any::<bool>(),
        from in prop_oneof![Just(0u64), Just(1), Just(u64::MAX), any::<u64>()],
        which in any::<usize>(),
        foreign in prop::bool::weighted(0.2),
    ) {
        let fx = fixture();
        let mut p = fx.member();
        let groups = fx.groups();
        let req = if foreign {
            FetchRequest::Range { universe: Id32([0xee; 32]), group: Id32([0xef; 32]), from }
        } else if which % 5 == 0 {
            FetchRequest::Welcomes { universe: fx.uid, member: p.me().clone(), groups: groups.clone() }
        } else {
            FetchRequest::Range { universe: fx.uid, group: groups[which % groups.len()], from }
        };
        let live = check_fetch_response(fx, &mut p, &req, fake_response(envs, oldest, more, pruned));
        if live {
            fx.check_liveness(&mut p);
        }
    }

    /// Fetch requests a peer made up, served from a member's real log.
    #[test]
    fn serve_fetch_with_garbage_requests(
        from in prop_oneof![Just(0u64), Just(1), Just(u64::MAX), Just(u64::MAX - 1), any::<u64>()],
        which in any::<usize>(),
        universe in prop_oneof![Just(None), any::<[u8; 32]>().prop_map(Some)],
        group in prop_oneof![Just(None), any::<[u8; 32]>().prop_map(Some)],
        member in any::<u8>(),
    ) {
        let fx = fixture();
        let groups = fx.groups();
        let universe = universe.map(Id32).unwrap_or(fx.uid);
        let server = fx.restore(0);
        let req = if which % 4 == 0 {
            FetchRequest::Welcomes { universe, member: common::identity(member as usize).member_id(), groups: groups.clone() }
        } else {
            let group = group.map(Id32).unwrap_or(groups[which % groups.len()]);
            FetchRequest::Range { universe, group, from }
        };
        check_serve(&server, &req);
    }
}

/// Many hostile inputs into one member, interleaved with the messages it
/// missed, in a random order: state only moves through valid entries, and
/// at the end the member agrees with everyone else.
#[test]
fn handle_incoming_sequence() {
    let fx = fixture();
    let mut runner = TestRunner::new(pt_config(0));
    let strategy = envelope_input(envelope_seeds());
    let fetch = sync_input();
    let steps = cases(200) as usize;
    for round in 0..2 {
        let mut p = fx.member();
        let server = fx.restore(if round == 0 { 0 } else { 2 });
        let mut held = fx.held.iter();
        let mut accepted = 0;
        for i in 0..steps {
            let input = strategy
                .new_tree(&mut runner)
                .expect("generate input")
                .current();
            if guard("handle_incoming_sequence", &input, || {
                check_incoming(&mut p, &fx.uid, &input)
            }) {
                accepted += 1;
            }
            if i % 25 == 0 {
                // Now and then a sync message of any kind, and a held entry.
                let m = fetch.new_tree(&mut runner).expect("generate").current();
                let live = guard("sync_in_sequence", &m, || {
                    check_sync(&m, fx, &server, Some(&mut p))
                });
                assert!(
                    live || SyncMessage::decode(&m).is_ok(),
                    "an undecodable sync message changed liveness"
                );
                if !live {
                    // A made-up "pruned" answer: the member rejoins; start
                    // over rather than model the rejoin here.
                    p = fx.member();
                    held = fx.held.iter();
                    continue;
                }
                if let Some(h) = held.next() {
                    check_incoming(&mut p, &fx.uid, h);
                }
            }
        }
        fx.check_liveness(&mut p);
        eprintln!("handle_incoming_sequence round {round}: {steps} inputs, {accepted} accepted");
    }
}

/// Every input committed under tests/regressions (crashes and property
/// violations found by fuzzing, and hand-made edge cases) goes through
/// every checker.
#[test]
fn regressions_replay() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/regressions");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/regressions exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no regression inputs in {dir:?}");
    let fx = fixture();
    let server = fx.restore(0);
    for f in &files {
        let input = std::fs::read(f).expect("read regression input");
        eprintln!("replaying {}", f.display());
        let _ = check_envelope(&input);
        let mut p = fx.member();
        check_incoming(&mut p, &fx.uid, &input);
        fx.check_liveness(&mut p);
        let mut p = fx.member();
        if check_sync(&input, fx, &server, Some(&mut p)) {
            fx.check_liveness(&mut p);
        }
    }
}

/// The mutation engine itself: a sanity check that it produces inputs of
/// every class (so the properties above are not vacuously true).
#[test]
fn generators_reach_every_outcome() {
    let fx = fixture();
    let mut runner = TestRunner::new(pt_config(0));
    let strategy = envelope_input(envelope_seeds());
    let (mut ok, mut cbor, mut malformed, mut version, mut missing, mut big) = (0, 0, 0, 0, 0, 0);
    // At least 400 draws, and on until every class showed up (the rarest,
    // a missing field, is ~1% of inputs: 400 draws missed it for 2 seeds in
    // 10), at most 4,000.
    for i in 0..4000 {
        if i >= 400
            && [ok, cbor, malformed, version, missing]
                .iter()
                .all(|&n| n > 0)
        {
            break;
        }
        let input = strategy.new_tree(&mut runner).expect("generate").current();
        match check_envelope(&input) {
            Ok(_) => ok += 1,
            Err(EnvelopeError::Cbor(_)) => cbor += 1,
            Err(EnvelopeError::Malformed(_)) => malformed += 1,
            Err(EnvelopeError::UnknownVersion(_)) | Err(EnvelopeError::NoVersion) => version += 1,
            Err(EnvelopeError::MissingField(..)) => missing += 1,
            Err(EnvelopeError::TooLarge(_)) => big += 1,
        }
    }
    eprintln!(
        "ok {ok} cbor {cbor} malformed {malformed} version {version} missing {missing} big {big}"
    );
    for (name, n) in [
        ("decodable", ok),
        ("bad CBOR", cbor),
        ("malformed", malformed),
        ("bad version", version),
        ("missing field", missing),
    ] {
        assert!(n > 0, "no {name} inputs in 4000");
    }
    // And decodable inputs reach the engine's deeper checks (MLS parsing,
    // membership, stream order), not just the decoder.
    let mut p = fx.member();
    let mut kinds = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let input = strategy.new_tree(&mut runner).expect("generate").current();
        if let Err(e) = p.handle_incoming(&input) {
            let s = e.to_string();
            // The error's kind: its text up to the first detail.
            let kind = s.split([':', '(']).next().unwrap_or("").trim();
            kinds.insert(kind.to_string());
        }
    }
    eprintln!("engine rejections seen: {kinds:?}");
    assert!(kinds.len() >= 4, "engine rejections too uniform: {kinds:?}");
}

/// Regression (found by `handle_incoming_sequence`, a remote crash): error
/// texts quote hostile input and were cut with `String::truncate` at a
/// fixed byte count, which panics inside a multi-byte character. One hand-
/// made input per place that cut (envelope decoding, the CBOR of sync
/// messages and rejoin requests), with the cut landing at every offset of a
/// 3-byte character.
#[test]
fn regression_error_text_cut_inside_a_character() {
    let fx = fixture();
    let server = fx.restore(0);
    for pad in 0..3 {
        let text = format!("{}{}", "x".repeat(pad), "€".repeat(120));
        // Envelope::decode: a text where bytes belong, in either version.
        let first = mmls_core::Envelope::decode(&fx.corpus[0]).expect("a seed decodes");
        for seed in [fx.corpus[0].clone(), first.encode_v1()] {
            let v: Value = ciborium::from_reader(seed.as_slice()).expect("CBOR");
            let Value::Map(mut m) = v else {
                panic!("an envelope is a map")
            };
            m.retain(|(k, _)| k.as_text() != Some("sig") && *k != Value::Integer(10.into()));
            set_field(&mut m, "sig", Value::Text(text.clone()));
            let bytes = encode(&Value::Map(m));
            assert!(matches!(
                check_envelope(&bytes),
                Err(EnvelopeError::Malformed(_))
            ));
        }
        // SyncMessage::decode: a text where a universe id belongs.
        let sync = encode(&Value::Map(vec![(
            Value::Text("Fetch".into()),
            Value::Map(vec![(
                Value::Text("Range".into()),
                Value::Map(vec![
                    (Value::Text("universe".into()), Value::Text(text.clone())),
                    (Value::Text("group".into()), Value::Bytes(vec![0; 32])),
                    (Value::Text("from".into()), Value::Integer(0u8.into())),
                ]),
            )]),
        )]));
        let err = SyncMessage::decode(&sync).expect_err("a text is not an id");
        assert!(err.len() <= 200, "{err}");
        check_sync(&sync, fx, &server, None);
        // A rejoin request whose signed body is a text.
        let body = encode(&Value::Map(vec![
            (Value::Text("request".into()), Value::Text(text.clone())),
            (Value::Text("signature".into()), Value::Bytes(vec![])),
        ]));
        let mut env = mmls_core::Envelope::new(mmls_core::Kind::Rejoin, body);
        env.universe = Some(fx.uid);
        let mut p = fx.member();
        assert!(!check_incoming(&mut p, &fx.uid, &env.encode()));
        fx.check_liveness(&mut p);
    }
}

/// Regression (found by `handle_incoming_on_a_member` and
/// `handle_fetch_response_with_garbage` in a 100k-case run): a member's own
/// old Welcome, replayed with the envelope's `epoch` hint raised, passed the
/// "newer than what we have" pre-check, and joining it again took the
/// member's view of that send group back to the epoch of the Welcome; the
/// group's next real messages then failed with `WrongEpoch`. Every Welcome
/// the universe published, replayed with a forged epoch (and with a forged
/// position), must be refused and change nothing.
#[test]
fn regression_replayed_welcome_with_forged_epoch() {
    let fx = fixture();
    let mut refused = 0;
    for b in &fx.corpus {
        let Ok(e) = mmls_core::Envelope::decode(b) else {
            continue;
        };
        if e.kind != mmls_core::Kind::Welcome {
            continue;
        }
        for (epoch, seq) in [(e.epoch + 1000, e.seq), (u64::MAX, e.seq), (e.epoch + 1, 0)] {
            let mut forged = e.clone();
            forged.epoch = epoch;
            forged.seq = seq;
            let mut p = fx.member();
            assert!(
                !check_incoming(&mut p, &fx.uid, &forged.encode()),
                "a replayed Welcome (epoch {epoch}, seq {seq}) was accepted"
            );
            fx.check_liveness(&mut p);
            refused += 1;
        }
    }
    assert!(refused >= 6, "the fixture has too few Welcomes ({refused})");
}
