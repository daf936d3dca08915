//! Criterion benchmarks of the MMLS engine against plain openmls.
//!
//! Run: `cargo bench -p mmls-core --bench engine` (results in BENCHMARKS.md).
//!
//! 1. `protect`: PROTECT + UNPROTECT of one application message
//!    (`Participant::send` + `handle_incoming` on the peer, 2-member universe)
//!    with the in-memory and the durable (fsync per step) store, against an
//!    openmls `MlsGroup` of 2 (`create_message` + `process_message`).
//! 2. `update_round`: one member's MMLS update until the universe is quiet
//!    (N = 4, 16, 64), against one openmls self-update commit processed by
//!    the N-1 others.
//! 3. `psk_import_commit`: the owner's commit importing k PSKs (k = 1, 8, 32)
//!    against an openmls commit with k external PSK proposals.
//!
//! Under `cargo test --all-targets` (criterion's test mode: no `--bench`
//! argument) every benchmark runs once, at its smallest size only, so the
//! test suite stays fast. `MMLS_BENCH_MAX_N` caps the sizes of 2 and 3.

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use mmls_core::testkit::{self, Net};
use mmls_core::{
    Envelope, Event, Id32, Kind, Output, Participant, Profile, Store, DEFAULT_CIPHERSUITE as CS,
};
use openmls::prelude as mls;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{OpenMlsProvider as _, OpenMlsRand as _};
use openmls::schedule::{ExternalPsk, PreSharedKeyId, Psk};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::storage::StorageProvider as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

const SIZES: [usize; 2] = [100, 1024];
const ROUND_NS: [usize; 3] = [4, 16, 64];
const PSK_KS: [usize; 3] = [1, 8, 32];

/// Criterion's test mode (`cargo test --benches`): no `--bench` argument.
fn test_mode() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// The sizes to run: all of them when benchmarking (capped by
/// `MMLS_BENCH_MAX_N`), only the smallest in test mode.
fn sizes(all: &[usize]) -> Vec<usize> {
    if test_mode() {
        return all[..1].to_vec();
    }
    let cap = std::env::var("MMLS_BENCH_MAX_N")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    all.iter().copied().filter(|n| *n <= cap).collect()
}

// ------------------------------------------------------- MMLS driver --

/// What the engine produced (for counting commits and envelopes).
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    envelopes: usize,
    commits: usize,
    path_commits: usize,
    imports: usize,
    messages: usize,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            envelopes: self.envelopes - o.envelopes,
            commits: self.commits - o.commits,
            path_commits: self.path_commits - o.path_commits,
            imports: self.imports - o.imports,
            messages: self.messages - o.messages,
        }
    }
}

/// The engine's test network ([`testkit::Net`]: every node runs the sync
/// agent, as the node and the simulator do), with in-memory or file
/// stores, and what a benchmark reads from it.
struct Bench {
    net: Net,
    /// Keeps the durable stores' files alive.
    _dir: Option<tempfile::TempDir>,
}

impl Bench {
    fn new(n: usize, durable: bool) -> Bench {
        let dir = durable.then(|| tempfile::tempdir().expect("tempdir"));
        let stores = (0..n)
            .map(|i| match &dir {
                Some(d) => {
                    Store::open(&d.path().join(format!("node{i}.redb"))).expect("open store")
                }
                None => Store::in_memory().expect("store"),
            })
            .collect();
        let ids = (0..n).map(testkit::identity).collect();
        let net = Net::with_stores(ids, vec![testkit::config(); n], stores, 1_000);
        Bench { net, _dir: dir }
    }

    fn node(&mut self, i: usize) -> &mut Participant {
        self.net.node(i)
    }

    /// Everything published and committed so far, over all nodes.
    fn counts(&self) -> Counts {
        let mut c = Counts {
            envelopes: self.net.all_bytes.len(),
            ..Counts::default()
        };
        for e in self.net.events.iter().flatten() {
            match e {
                Event::Committed { imports, path, .. } => {
                    c.commits += 1;
                    c.path_commits += usize::from(*path);
                    c.imports += imports;
                }
                Event::Message(_) => c.messages += 1,
                _ => {}
            }
        }
        c
    }

    fn assert_no_rejections(&self) {
        let all: Vec<&String> = self.net.rejections.iter().flatten().collect();
        assert!(all.is_empty(), "rejections: {all:?}");
    }

    /// Advances time on every node, then runs the network. Returns whether
    /// anything was published.
    fn tick(&mut self, ms: u64) -> bool {
        let before = self.net.all_bytes.len();
        self.net.tick(ms);
        self.net.all_bytes.len() != before
    }

    /// Node 0 creates a universe with everyone; returns once it is quiet
    /// and every node agrees on every send group.
    fn universe(&mut self) -> Id32 {
        let uid = self.net.universe(Profile::Mmls00);
        self.assert_healthy(&uid);
        uid
    }

    fn assert_healthy(&mut self, uid: &Id32) {
        self.assert_no_rejections();
        self.net.assert_consistent(uid);
    }

    /// PROTECT on `from`: the one envelope it publishes.
    fn protect(&mut self, from: usize, uid: &Id32, body: &[u8]) -> Vec<u8> {
        let (_, outs) = self.node(from).send(uid, body).expect("send");
        let mut bytes = None;
        let mut acks = vec![];
        for o in outs {
            if let Output::Publish(p) = o {
                assert!(bytes.is_none(), "send published more than one envelope");
                acks.extend(p.outbox_id);
                bytes = Some(p.bytes);
            }
        }
        self.node(from).ack_published(&acks);
        bytes.expect("send published nothing")
    }

    /// UNPROTECT on `to`: must deliver exactly one message.
    fn unprotect(&mut self, to: usize, bytes: &[u8]) {
        let outs = self.node(to).handle_incoming(bytes).expect("unprotect");
        let delivered = outs
            .iter()
            .filter(|o| matches!(o, Output::Event(Event::Message(_))))
            .count();
        assert_eq!(delivered, 1, "expected one delivered message");
        black_box(outs);
    }

    /// One full update round started by `who`: its update, delivered to
    /// everyone, every owner commits its imports (ticks, commit delay 0),
    /// every commit delivered to everyone, until a tick publishes nothing.
    /// The time excludes that final quiet tick.
    fn update_round(&mut self, uid: &Id32, who: usize) -> (Duration, Counts) {
        let c0 = self.counts();
        let t = Instant::now();
        self.net.update(who, uid);
        self.net.run();
        let mut elapsed = t.elapsed();
        let mut waves = 0;
        while self.tick(1) {
            elapsed = t.elapsed();
            waves += 1;
            assert!(waves < 100, "update round does not settle");
        }
        self.assert_no_rejections();
        (elapsed, self.counts() - c0)
    }
}

// --------------------------------------------------- openmls baseline --

struct Member {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    cwk: mls::CredentialWithKey,
}

impl Member {
    fn new(i: usize) -> Member {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(CS.signature_algorithm()).expect("signer");
        signer.store(provider.storage()).expect("store signer");
        let credential = mls::BasicCredential::new(format!("member {i}").into_bytes());
        let cwk = mls::CredentialWithKey {
            credential: credential.into(),
            signature_key: signer.public().into(),
        };
        Member {
            provider,
            signer,
            cwk,
        }
    }

    fn key_package(&self) -> mls::KeyPackage {
        mls::KeyPackage::builder()
            .build(CS, &self.provider, &self.signer, self.cwk.clone())
            .expect("key package")
            .key_package()
            .clone()
    }
}

/// The engine's group settings, so the comparison is like for like.
fn create_config() -> mls::MlsGroupCreateConfig {
    mls::MlsGroupCreateConfig::builder()
        .ciphersuite(CS)
        .use_ratchet_tree_extension(true)
        .wire_format_policy(mls::PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(0)
        .sender_ratchet_configuration(mls::SenderRatchetConfiguration::new(64, 10_000))
        .build()
}

fn join_config() -> mls::MlsGroupJoinConfig {
    mls::MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(mls::PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(0)
        .sender_ratchet_configuration(mls::SenderRatchetConfiguration::new(64, 10_000))
        .build()
}

fn to_wire(m: &mls::MlsMessageOut) -> Vec<u8> {
    m.tls_serialize_detached().expect("tls encode")
}

fn protocol_message(bytes: &[u8]) -> mls::ProtocolMessage {
    mls::MlsMessageIn::tls_deserialize_exact(bytes)
        .expect("tls decode")
        .try_into_protocol_message()
        .expect("protocol message")
}

/// A plain openmls group of `n`; with `joined` every member holds its
/// `MlsGroup`, otherwise only the creator (the others are leaves only).
struct Baseline {
    members: Vec<Member>,
    groups: Vec<mls::MlsGroup>,
}

impl Baseline {
    fn new(n: usize, joined: bool) -> Baseline {
        let members: Vec<Member> = (0..n).map(Member::new).collect();
        let m0 = &members[0];
        let mut g0 = mls::MlsGroup::new(&m0.provider, &m0.signer, &create_config(), m0.cwk.clone())
            .expect("new group");
        let kps: Vec<mls::KeyPackage> = members[1..].iter().map(Member::key_package).collect();
        let (_, welcome, _) = g0
            .add_members(&m0.provider, &m0.signer, &kps)
            .expect("add members");
        g0.merge_pending_commit(&m0.provider).expect("merge");
        let mut groups = vec![g0];
        if joined {
            let wire = to_wire(&welcome);
            for m in &members[1..] {
                let msg =
                    mls::MlsMessageIn::tls_deserialize_exact(wire.as_slice()).expect("decode");
                let mls::MlsMessageBodyIn::Welcome(w) = msg.extract() else {
                    panic!("not a welcome");
                };
                let g = mls::StagedWelcome::new_from_welcome(&m.provider, &join_config(), w, None)
                    .expect("stage welcome")
                    .into_group(&m.provider)
                    .expect("join");
                groups.push(g);
            }
        }
        Baseline { members, groups }
    }

    fn protect(&mut self, from: usize, body: &[u8]) -> Vec<u8> {
        let m = &self.members[from];
        let msg = self.groups[from]
            .create_message(&m.provider, &m.signer, body)
            .expect("create message");
        to_wire(&msg)
    }

    fn unprotect(&mut self, to: usize, bytes: &[u8]) {
        let m = &self.members[to];
        let processed = self.groups[to]
            .process_message(&m.provider, protocol_message(bytes))
            .expect("process message");
        let mls::ProcessedMessageContent::ApplicationMessage(app) = processed.into_content() else {
            panic!("not an application message");
        };
        black_box(app.into_bytes());
    }

    /// `who` commits a self-update; every other member processes it.
    fn update_round(&mut self, who: usize) {
        let m = &self.members[who];
        let bundle = self.groups[who]
            .self_update(&m.provider, &m.signer, mls::LeafNodeParameters::default())
            .expect("self update");
        self.groups[who]
            .merge_pending_commit(&m.provider)
            .expect("merge");
        let wire = to_wire(bundle.commit());
        for j in 0..self.groups.len() {
            if j == who {
                continue;
            }
            let m = &self.members[j];
            let processed = self.groups[j]
                .process_message(&m.provider, protocol_message(&wire))
                .expect("process commit");
            let mls::ProcessedMessageContent::StagedCommitMessage(staged) =
                processed.into_content()
            else {
                panic!("not a commit");
            };
            self.groups[j]
                .merge_staged_commit(&m.provider, *staged)
                .expect("merge staged");
        }
    }

    /// Stores `k` fresh external PSKs (as an importer would after peers'
    /// updates); returns their ids.
    fn store_psks(&mut self, k: usize, round: u64) -> Vec<Vec<u8>> {
        let p = &self.members[0].provider;
        (0..k)
            .map(|j| {
                // Like the engine's ids: epoch_be_u64 || group id (32 bytes).
                let mut id = round.to_be_bytes().to_vec();
                id.extend_from_slice(&[j as u8; 32]);
                let secret = p.rand().random_vec(32).expect("random");
                PreSharedKeyId::external(id.clone(), vec![0; CS.hash_length()])
                    .store(p, &secret)
                    .expect("store psk");
                id
            })
            .collect()
    }

    /// The owner's commit with one external PSK proposal per id (fresh
    /// nonces), staged, merged and encoded.
    fn psk_commit(&mut self, ids: &[Vec<u8>]) -> Vec<u8> {
        let m = &self.members[0];
        let p = &m.provider;
        let proposals: Vec<mls::Proposal> = ids
            .iter()
            .map(|id| {
                let nonce = p.rand().random_vec(CS.hash_length()).expect("nonce");
                let psk = PreSharedKeyId::external(id.clone(), nonce);
                mls::Proposal::PreSharedKey(Box::new(mls::PreSharedKeyProposal::new(psk)))
            })
            .collect();
        let g = &mut self.groups[0];
        let bundle = g
            .commit_builder()
            .add_proposals(proposals)
            .load_psks(p.storage())
            .expect("load psks")
            .build(p.rand(), p.crypto(), &m.signer, |_| true)
            .expect("build commit")
            .stage_commit(p)
            .expect("stage commit");
        g.merge_pending_commit(p).expect("merge");
        to_wire(bundle.commit())
    }

    fn delete_psks(&mut self, ids: Vec<Vec<u8>>) {
        let p = &self.members[0].provider;
        for id in ids {
            p.storage()
                .delete_psk(&Psk::External(ExternalPsk::new(id)))
                .expect("delete psk");
        }
    }
}

// ------------------------------------------------------- benchmarks --

/// Criterion's benchmark filter (the first positional argument), to skip
/// the setup of benchmarks that will not run.
fn filter() -> Option<String> {
    const WITH_VALUE: [&str; 19] = [
        "-s",
        "--save-baseline",
        "-b",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--profile-time",
        "--plotting-backend",
        "--output-format",
        "-c",
        "--color",
        "--format",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if WITH_VALUE.contains(&a.as_str()) {
            args.next();
        } else if !a.starts_with('-') {
            return Some(a);
        }
    }
    None
}

/// Whether criterion will run the benchmark `id` (substring match, which
/// is what a plain-name filter amounts to).
fn wanted(id: &str) -> bool {
    filter().is_none_or(|f| id.contains(&f))
}

/// Rounds measured by hand (outside criterion's 10+1 samples) for sizes
/// whose single round takes longer than `SLOW_ROUND`.
fn slow_rounds() -> usize {
    std::env::var("MMLS_BENCH_SLOW_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}
const SLOW_ROUND: Duration = Duration::from_secs(5);

/// Size of a node's engine state rows (a step writes only those it touched).
fn state_bytes(net: &mut Bench, i: usize) -> usize {
    net.node(i).state_size()
}

fn universe_of(n: usize, durable: bool) -> (Bench, Id32) {
    let t = Instant::now();
    let mut net = Bench::new(n, durable);
    let uid = net.universe();
    println!(
        "setup: universe of {n}{} in {:.1} s; engine state {} B per node",
        if durable { " (durable)" } else { "" },
        t.elapsed().as_secs_f64(),
        state_bytes(&mut net, 0)
    );
    (net, uid)
}

/// 1. PROTECT + UNPROTECT, and each half alone.
fn bench_protect(c: &mut Criterion) {
    let mut g = c.benchmark_group("protect");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));

    for durable in [false, true] {
        let name = if durable { "mmls_durable" } else { "mmls_mem" };
        // Set up on first use: a filtered-out benchmark costs nothing.
        let mut lazy: Option<(Bench, Id32)> = None;
        for &size in &sizes(&SIZES) {
            let body = vec![0x5a; size];
            g.bench_function(BenchmarkId::new(format!("{name}/roundtrip"), size), |b| {
                let (net, uid) = lazy.get_or_insert_with(|| universe_of(2, durable));
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        let bytes = net.protect(1, uid, &body);
                        net.unprotect(0, &bytes);
                    }
                    t.elapsed()
                })
            });
            g.bench_function(BenchmarkId::new(format!("{name}/protect"), size), |b| {
                let (net, uid) = lazy.get_or_insert_with(|| universe_of(2, durable));
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    let sent: Vec<Vec<u8>> =
                        (0..iters).map(|_| net.protect(1, uid, &body)).collect();
                    let elapsed = t.elapsed();
                    for bytes in &sent {
                        net.unprotect(0, bytes);
                    }
                    elapsed
                })
            });
            g.bench_function(BenchmarkId::new(format!("{name}/unprotect"), size), |b| {
                let (net, uid) = lazy.get_or_insert_with(|| universe_of(2, durable));
                b.iter_custom(|iters| {
                    let sent: Vec<Vec<u8>> =
                        (0..iters).map(|_| net.protect(1, uid, &body)).collect();
                    let t = Instant::now();
                    for bytes in &sent {
                        net.unprotect(0, bytes);
                    }
                    t.elapsed()
                })
            });
            if let Some((net, uid)) = lazy.as_mut().filter(|_| !durable) {
                let bytes = net.protect(1, uid, &body);
                net.unprotect(0, &bytes);
                let env = Envelope::decode(&bytes).expect("decode");
                println!(
                    "wire: MMLS envelope for a {size} B message: {} B (MLS message inside {} B)",
                    bytes.len(),
                    env.body.len()
                );
            }
        }
        if let Some((mut net, uid)) = lazy {
            net.assert_healthy(&uid);
        }
    }

    let mut lazy: Option<Baseline> = None;
    for &size in &sizes(&SIZES) {
        let body = vec![0x5a; size];
        g.bench_function(BenchmarkId::new("openmls/roundtrip", size), |b| {
            let base = lazy.get_or_insert_with(|| Baseline::new(2, true));
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    let bytes = base.protect(1, &body);
                    base.unprotect(0, &bytes);
                }
                t.elapsed()
            })
        });
        g.bench_function(BenchmarkId::new("openmls/protect", size), |b| {
            let base = lazy.get_or_insert_with(|| Baseline::new(2, true));
            b.iter_custom(|iters| {
                let t = Instant::now();
                let sent: Vec<Vec<u8>> = (0..iters).map(|_| base.protect(1, &body)).collect();
                let elapsed = t.elapsed();
                for bytes in &sent {
                    base.unprotect(0, bytes);
                }
                elapsed
            })
        });
        g.bench_function(BenchmarkId::new("openmls/unprotect", size), |b| {
            let base = lazy.get_or_insert_with(|| Baseline::new(2, true));
            b.iter_custom(|iters| {
                let sent: Vec<Vec<u8>> = (0..iters).map(|_| base.protect(1, &body)).collect();
                let t = Instant::now();
                for bytes in &sent {
                    base.unprotect(0, bytes);
                }
                t.elapsed()
            })
        });
        if let Some(base) = lazy.as_mut() {
            let bytes = base.protect(1, &body);
            base.unprotect(0, &bytes);
            println!(
                "wire: openmls message for a {size} B message: {} B",
                bytes.len()
            );
        }
    }
    g.finish();
}

/// 2. One full update round, N = 4, 16, 64.
fn bench_update_round(c: &mut Criterion) {
    let mut g = c.benchmark_group("update_round");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));

    for &n in &sizes(&ROUND_NS) {
        let id = format!("update_round/mmls/{n}");
        if wanted(&id) {
            let (mut net, uid) = universe_of(n, false);
            // One round outside the measurement, to print what a round costs.
            let (d, c) = net.update_round(&uid, 1 % n);
            let processed = c.commits * (n - 1);
            println!(
                "update round N={n}: {:.1} ms; {} commits ({} with path, {} PSK imports), \
                 {} envelopes ({} leaf-update proposals); {} commit processings, \
                 {:.2} ms each; engine state now {} B per node",
                d.as_secs_f64() * 1e3,
                c.commits,
                c.path_commits,
                c.imports,
                c.envelopes,
                c.envelopes - c.commits,
                processed,
                d.as_secs_f64() * 1e3 / processed as f64,
                state_bytes(&mut net, 0)
            );
            let mut who = 2;
            if d > SLOW_ROUND && !test_mode() {
                // Criterion would need 11 rounds at least: measure by hand.
                let rounds = slow_rounds();
                let mut times = vec![d];
                for _ in 1..rounds {
                    times.push(net.update_round(&uid, who % n).0);
                    who += 1;
                }
                let mean = times.iter().sum::<Duration>() / times.len() as u32;
                println!(
                    "{id:<24}time:   [{:.3} s] (measured by hand: mean of {} round(s), \
                     each > {} s; set MMLS_BENCH_SLOW_ROUNDS for more)",
                    mean.as_secs_f64(),
                    times.len(),
                    SLOW_ROUND.as_secs()
                );
            } else {
                g.bench_function(BenchmarkId::new("mmls", n), |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let (d, c) = net.update_round(&uid, who % n);
                            assert_eq!(c.commits, n, "commits per update round: one per owner");
                            total += d;
                            who += 1;
                        }
                        total
                    })
                });
            }
            net.assert_healthy(&uid);
        }

        let mut lazy: Option<Baseline> = None;
        let mut who = 0;
        g.bench_function(BenchmarkId::new("openmls", n), |b| {
            let base = lazy.get_or_insert_with(|| Baseline::new(n, true));
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    base.update_round(who % n);
                    who += 1;
                }
                t.elapsed()
            })
        });
    }
    g.finish();
}

/// 3. The owner's commit importing k PSKs.
fn bench_psk_import(c: &mut Criterion) {
    let mut g = c.benchmark_group("psk_import_commit");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    for &k in &sizes(&PSK_KS) {
        // A universe of k+1; node 0 is the owner. Each iteration, the k
        // peers make an MMLS update and only their commits reach the owner
        // (their leaf-rotation proposals are withheld, so the owner's
        // commit carries exactly k PSK proposals and no path, like the
        // baseline); timed: the owner's tick, which commits the imports.
        let mut lazy: Option<(Bench, Id32)> = None;
        g.bench_function(BenchmarkId::new("mmls", k), |b| {
            let (net, uid) = lazy.get_or_insert_with(|| universe_of(k + 1, false));
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    for j in 1..=k {
                        let outs = net.node(j).update(uid).expect("update");
                        let mut acks = vec![];
                        for o in outs {
                            if let Output::Publish(p) = o {
                                acks.extend(p.outbox_id);
                                let env = Envelope::decode(&p.bytes).expect("decode");
                                if env.kind == Kind::Commit {
                                    net.net.deliver(0, &p.bytes);
                                }
                            }
                        }
                        net.node(j).ack_published(&acks);
                    }
                    net.assert_no_rejections();
                    net.net.now += 1;
                    let now = net.net.now;
                    let t = Instant::now();
                    let outs = net.node(0).tick(now);
                    total += t.elapsed();
                    let commits: Vec<(usize, bool)> = outs
                        .iter()
                        .filter_map(|o| match o {
                            Output::Event(Event::Committed { imports, path, .. }) => {
                                Some((*imports, *path))
                            }
                            _ => None,
                        })
                        .collect();
                    assert_eq!(commits, vec![(k, false)], "owner's import commit");
                    let acks: Vec<u64> = outs
                        .iter()
                        .filter_map(|o| match o {
                            Output::Publish(p) => p.outbox_id,
                            _ => None,
                        })
                        .collect();
                    net.node(0).ack_published(&acks);
                }
                total
            })
        });
        drop(lazy);

        let mut lazy: Option<Baseline> = None;
        let mut round = 0u64;
        g.bench_function(BenchmarkId::new("openmls", k), |b| {
            let base = lazy.get_or_insert_with(|| Baseline::new(k + 1, false));
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    let ids = base.store_psks(k, round);
                    let t = Instant::now();
                    black_box(base.psk_commit(&ids));
                    total += t.elapsed();
                    base.delete_psks(ids);
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_protect, bench_update_round, bench_psk_import);
criterion_main!(benches);
