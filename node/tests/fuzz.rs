//! Fuzzing the node's parsers of untrusted bytes on stable Rust, with a
//! fixed seed (deterministic in CI): the request-response sync codec (what a
//! peer's stream goes through before the engine sees it) and the local HTTP
//! API (bodies, path parameters, query strings). The engine's own entry
//! points are fuzzed in `mmls-core/tests/fuzz.rs`; FUZZING.md has the map.
//!
//! `MMLS_FUZZ_CASES=n` sets the number of cases of each test (CI default:
//! 5,000 sync streams, 1,000 API requests); `MMLS_FUZZ_SEED=n` the seed.

mod fuzzapi;

use futures::executor::block_on;
use futures::io::{AsyncRead, Cursor};
use fuzzapi::{snapshot, start_pair, ApiFuzz, Call};
use libp2p::request_response::Codec;
use libp2p::StreamProtocol;
use node::mmls_core::sync::{
    FetchRequest, FetchResponse, SyncMessage, SyncSummary, MAX_FRAME_BYTES,
};
use node::mmls_core::testkit::env_or;
use node::mmls_core::{Envelope, Id32, Identity, Kind};
use node::swarm::{SyncCodec, SYNC_PROTOCOL};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_bytes::ByteBuf;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

const DEFAULT_SEED: u64 = 0x6d6d_6c73_0f23;

fn cases(ci_default: usize) -> usize {
    env_or("MMLS_FUZZ_CASES", ci_default)
}

fn rng() -> StdRng {
    let seed = env_or("MMLS_FUZZ_SEED", DEFAULT_SEED);
    eprintln!("fuzz seed {seed} (MMLS_FUZZ_SEED)");
    StdRng::seed_from_u64(seed)
}

/// Runs one case; if it panics, says which case and input (the seed and the
/// case number reproduce it), and the panic goes on.
fn case<T>(what: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            eprintln!("failing case: {}", what());
            std::panic::resume_unwind(p)
        }
    }
}

fn hex_clip(b: &[u8]) -> String {
    let h = hex::encode(&b[..b.len().min(512)]);
    if b.len() > 512 {
        format!("{h}... ({} bytes)", b.len())
    } else {
        h
    }
}

// ------------------------------------------------------------- mutations --

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

const EXTREME: &[u64] = &[
    0,
    1,
    23,
    24,
    255,
    256,
    4096,
    1 << 20,
    u32::MAX as u64,
    i64::MAX as u64,
    u64::MAX - 1,
    u64::MAX,
];

/// 1 to 5 random edits: bit flips, byte sets, truncation, deletion,
/// insertion, repeats, splices from another seed, CBOR heads with extreme
/// arguments (lengths that promise more than is there).
fn mutate(rng: &mut StdRng, b: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..rng.gen_range(1..=5) {
        let at = rng.gen_range(0..=b.len());
        match rng.gen_range(0..8) {
            0 if !b.is_empty() => {
                let i = rng.gen_range(0..b.len());
                b[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if !b.is_empty() => {
                let i = rng.gen_range(0..b.len());
                b[i] = rng.gen();
            }
            2 => b.truncate(at),
            3 => {
                let end = (at + rng.gen_range(1..64)).min(b.len());
                b.drain(at..end);
            }
            4 => {
                let n = rng.gen_range(1..16);
                let ins: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                b.splice(at..at, ins);
            }
            5 => {
                let end = (at + rng.gen_range(1..32)).min(b.len());
                let chunk = b[at..end].to_vec();
                for _ in 0..rng.gen_range(1..32) {
                    b.splice(end..end, chunk.iter().copied());
                }
            }
            6 => {
                let o = &seeds[rng.gen_range(0..seeds.len())];
                let from = rng.gen_range(0..=o.len());
                let to = (from + rng.gen_range(1..256)).min(o.len());
                b.splice(at..at, o[from..to].iter().copied());
            }
            _ => {
                let v = EXTREME[rng.gen_range(0..EXTREME.len())];
                let head = cbor_head(rng.gen_range(0..8), v);
                let end = (at + head.len()).min(b.len());
                b.splice(at..end, head);
            }
        }
    }
}

// -------------------------------------------------------------- sync codec --

fn id(rng: &mut StdRng) -> Id32 {
    Id32(rng.gen())
}

/// Valid sync messages of every variant, with plausible contents.
fn sync_seeds(rng: &mut StdRng) -> Vec<Vec<u8>> {
    let mut out = vec![];
    for _ in 0..8 {
        let summaries: Vec<SyncSummary> = (0..rng.gen_range(0..3))
            .map(|_| SyncSummary {
                universe: id(rng),
                heads: (0..rng.gen_range(0..4))
                    .map(|_| (id(rng), rng.gen_range(0..100)))
                    .collect(),
            })
            .collect();
        out.push(SyncMessage::Summary(summaries.clone()).encode());
        out.push(SyncMessage::Summaries(summaries).encode());
        out.push(
            SyncMessage::Fetch(FetchRequest::Range {
                universe: id(rng),
                group: id(rng),
                from: rng.gen_range(0..100),
            })
            .encode(),
        );
        out.push(
            SyncMessage::Fetch(FetchRequest::Welcomes {
                universe: id(rng),
                member: Identity::from_seed(rng.gen()).member_id(),
                groups: (0..rng.gen_range(0..4)).map(|_| id(rng)).collect(),
            })
            .encode(),
        );
        let envelopes = (0..rng.gen_range(0..4))
            .map(|i| {
                let mut e = Envelope::new(Kind::Application, vec![i as u8; rng.gen_range(0..64)]);
                e.universe = Some(id(rng));
                e.group = Some(id(rng));
                e.seq = i;
                ByteBuf::from(e.encode())
            })
            .collect();
        out.push(
            SyncMessage::Fetched(FetchResponse {
                envelopes,
                oldest: rng.gen_bool(0.5).then(|| rng.gen_range(0..10)),
                more: rng.gen(),
                pruned: rng.gen(),
            })
            .encode(),
        );
    }
    out
}

fn sync_input(rng: &mut StdRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    match rng.gen_range(0..10) {
        0 => (0..rng.gen_range(0..600)).map(|_| rng.gen()).collect(),
        1 => {
            // nesting past the recursion limit
            let unit: &[u8] = [&[0x81u8][..], &[0xa1, 0x00], &[0xc6], &[0x9f]][rng.gen_range(0..4)];
            let mut b = vec![0xa1, 0x67];
            b.extend_from_slice(b"Summary");
            for _ in 0..rng.gen_range(30..5000) {
                b.extend_from_slice(unit);
            }
            b
        }
        2 => seeds[rng.gen_range(0..seeds.len())].clone(),
        _ => {
            let mut b = seeds[rng.gen_range(0..seeds.len())].clone();
            mutate(rng, &mut b, seeds);
            b
        }
    }
}

/// A peer's stream: hands out at most `chunk` bytes per read, every other
/// read is `Pending` first, and it may break after `fail_at` bytes.
struct Stream {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
    fail_at: Option<usize>,
    pending: bool,
}

impl Stream {
    fn new(data: Vec<u8>, chunk: usize, fail_at: Option<usize>) -> Stream {
        Stream {
            data,
            pos: 0,
            chunk,
            fail_at,
            pending: false,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if !self.pending {
            self.pending = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.pending = false;
        if self.fail_at.is_some_and(|f| self.pos >= f) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "peer went away",
            )));
        }
        let mut n = buf.len().min(self.chunk).min(self.data.len() - self.pos);
        if let Some(f) = self.fail_at {
            n = n.min(f - self.pos);
        }
        let start = self.pos;
        buf[..n].copy_from_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(n))
    }
}

fn read(
    bytes: Vec<u8>,
    chunk: usize,
    fail_at: Option<usize>,
    request: bool,
) -> (io::Result<SyncMessage>, usize) {
    let proto = StreamProtocol::new(SYNC_PROTOCOL);
    let mut codec = SyncCodec;
    let mut s = Stream::new(bytes, chunk, fail_at);
    let r = if request {
        block_on(codec.read_request(&proto, &mut s))
    } else {
        block_on(codec.read_response(&proto, &mut s))
    };
    (r, s.pos)
}

/// The codec accepts exactly what `SyncMessage::decode` accepts within the
/// size limit, however the stream is cut into reads; refusals are
/// `InvalidData`; what it accepts it writes back identically.
fn check_codec(bytes: &[u8], chunk: usize, request: bool) {
    let (r, _) = read(bytes.to_vec(), chunk, None, request);
    let direct = if bytes.len() <= MAX_FRAME_BYTES {
        SyncMessage::decode(bytes)
    } else {
        Err("too large".into())
    };
    match (r, direct) {
        (Ok(m), Ok(d)) => {
            assert_eq!(m.encode(), d.encode());
            let proto = StreamProtocol::new(SYNC_PROTOCOL);
            let mut out = Cursor::new(Vec::new());
            let mut codec = SyncCodec;
            let enc = m.encode();
            if request {
                block_on(codec.write_request(&proto, &mut out, m)).expect("write back");
            } else {
                block_on(codec.write_response(&proto, &mut out, m)).expect("write back");
            }
            assert_eq!(out.get_ref(), &enc);
            let (again, _) = read(out.into_inner(), 7, None, !request);
            assert_eq!(again.expect("read back").encode(), enc);
        }
        (Err(e), Err(_)) => {
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            assert!(e.to_string().chars().count() <= 600);
        }
        (Ok(_), Err(e)) => panic!("codec accepted what decode refuses ({e})"),
        (Err(e), Ok(_)) => panic!("codec refused a valid message: {e}"),
    }
}

#[test]
fn sync_codec_reads_hostile_streams() {
    let mut rng = rng();
    let seeds = sync_seeds(&mut rng);
    let n = cases(5000);
    for i in 0..n {
        let input = sync_input(&mut rng, &seeds);
        let chunk = [1, 7, 64, 4096, usize::MAX][rng.gen_range(0..5)];
        case(
            || format!("sync #{i}, chunk {chunk}: {}", hex_clip(&input)),
            || check_codec(&input, chunk, i % 2 == 0),
        );
    }
    // A stream that never ends within the limit: refused after reading at
    // most one byte more than the limit (the codec does not buffer more).
    for extra in [1, 4096, 1 << 20] {
        let big = vec![0x80u8; MAX_FRAME_BYTES + extra];
        let (r, consumed) = read(big, 1 << 16, None, true);
        assert_eq!(r.expect_err("oversize").kind(), io::ErrorKind::InvalidData);
        assert!(consumed <= MAX_FRAME_BYTES + 1, "read {consumed} bytes");
    }
    // A valid message whose stream breaks part way: the stream's error, and
    // no message.
    for s in seeds.iter().take(10) {
        let cut = rng.gen_range(0..s.len().max(1));
        let (r, _) = read(s.clone(), 5, Some(cut), false);
        assert_eq!(
            r.expect_err("broken stream").kind(),
            io::ErrorKind::ConnectionReset
        );
    }
    eprintln!("sync codec: {n} hostile streams");
}

// --------------------------------------------------------------------- API --

const WEIRD: &[&str] = &[
    "",
    " ",
    "0",
    "-1",
    "18446744073709551615",
    "18446744073709551616",
    "1e309",
    "null",
    "\u{0}",
    "\u{feff}",
    "é",
    "€€€",
    "🦀",
    "..",
    "../../v1/status",
    "%00",
    "\\",
    "\"",
    "12D3KooW",
    "12D3KooWxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
];

fn pick<'a>(rng: &mut StdRng, xs: &'a [&'a str]) -> &'a str {
    xs[rng.gen_range(0..xs.len())]
}

fn universe_param(rng: &mut StdRng, api: &ApiFuzz) -> String {
    let real = api.uid.hex();
    match rng.gen_range(0..8) {
        0..=2 => real,
        3 => real.to_uppercase(),
        4 => real[..rng.gen_range(0..64)].to_string(),
        5 => format!("{real}{}", "0".repeat(rng.gen_range(1..3))),
        6 => hex::encode(rng.gen::<[u8; 32]>()),
        _ => pick(rng, WEIRD).repeat(rng.gen_range(1..4)),
    }
}

fn member_param(rng: &mut StdRng, api: &ApiFuzz) -> String {
    match rng.gen_range(0..7) {
        0 => api.a.to_string(),
        1 => api.b.to_string(),
        2 => ApiFuzz::stranger(rng.gen()).to_string(),
        3 => {
            let mut m = api.b.to_string().into_bytes();
            let i = rng.gen_range(0..m.len());
            m[i] = b"0OIl+/x"[rng.gen_range(0..7)];
            String::from_utf8_lossy(&m).into_owned()
        }
        _ => pick(rng, WEIRD).to_string(),
    }
}

fn json_value(rng: &mut StdRng, api: &ApiFuzz, depth: usize) -> serde_json::Value {
    use serde_json::Value as J;
    match rng.gen_range(0..if depth > 3 { 7 } else { 10 }) {
        0 => J::Null,
        1 => J::Bool(rng.gen()),
        2 => J::from(rng.gen::<i64>()),
        3 => J::from(rng.gen::<f64>() * 1e300),
        4 => J::String(pick(rng, WEIRD).to_string()),
        5 => J::String(member_param(rng, api)),
        6 => J::String("x".repeat([0, 1, 256, 257, 100_000][rng.gen_range(0..5)])),
        7 => J::Array(
            (0..rng.gen_range(0..4))
                .map(|_| json_value(rng, api, depth + 1))
                .collect(),
        ),
        8 => J::Array(vec![
            J::String(member_param(rng, api));
            [0, 1, 4096, 4097][rng.gen_range(0..4)]
        ]),
        _ => J::Object(
            (0..rng.gen_range(0..4))
                .map(|_| {
                    (
                        pick(rng, &["name", "members", "text", "member", "x"]).to_string(),
                        json_value(rng, api, depth + 1),
                    )
                })
                .collect(),
        ),
    }
}

/// A request body: a valid one for the endpoint, edited (fields removed,
/// retyped, extreme values), byte-mutated, or a JSON bomb.
fn body(rng: &mut StdRng, api: &ApiFuzz, fields: &[&str]) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    for f in fields {
        let v = match *f {
            "members" | "admins" => {
                serde_json::json!([ApiFuzz::stranger(rng.gen_range(200..=255)).to_string()])
            }
            "member" => serde_json::json!(member_param(rng, api)),
            "profile" => serde_json::json!(pick(rng, &["mmls-00", "dmls", "x", ""])),
            _ => serde_json::json!("fuzz"),
        };
        obj.insert(f.to_string(), v);
    }
    let keys = [
        "name", "members", "admins", "profile", "member", "text", "extra",
    ];
    let valid = serde_json::Value::Object(obj.clone())
        .to_string()
        .into_bytes();
    match rng.gen_range(0..12) {
        0 => (0..rng.gen_range(0..300)).map(|_| rng.gen()).collect(),
        1 => valid,
        2..=5 => {
            for _ in 0..rng.gen_range(1..4) {
                let k = pick(rng, &keys).to_string();
                if rng.gen_bool(0.3) {
                    obj.remove(&k);
                } else {
                    obj.insert(k, json_value(rng, api, 0));
                }
            }
            serde_json::Value::Object(obj).to_string().into_bytes()
        }
        6..=8 => {
            let mut b = valid;
            mutate(
                rng,
                &mut b,
                &[b"{\"\\ud800\": [1e999, -0, \"\\u0000\"]}".to_vec()],
            );
            b
        }
        9 => {
            let n = [127, 128, 129, 10_000][rng.gen_range(0..4)];
            let (open, close) = [("[", "]"), ("{\"a\":", "}")][rng.gen_range(0..2)];
            format!("{}1{}", open.repeat(n), close.repeat(n)).into_bytes()
        }
        10 => {
            // duplicate keys, a BOM, trailing bytes
            let v = String::from_utf8_lossy(&valid).into_owned();
            let dup = v.replacen('{', "{\"text\":1,\"name\":[],", 1);
            pick(
                rng,
                &[
                    dup.as_str(),
                    &format!("\u{feff}{v}"),
                    &format!("{v}{{}}"),
                    &format!("{v} x"),
                ],
            )
            .as_bytes()
            .to_vec()
        }
        _ => format!(
            "{{\"text\":\"{}\"}}",
            "\\u00e9".repeat(rng.gen_range(0..200_000))
        )
        .into_bytes(),
    }
}

fn query(rng: &mut StdRng) -> String {
    let nums = [
        "0",
        "1",
        "2",
        "999",
        "1000",
        "1001",
        "18446744073709551614",
        "18446744073709551615",
        "18446744073709551616",
        "-1",
        "",
        "1e3",
        "0x10",
        " 1",
        "+1",
        "99999999999999999999999",
        "١",
    ];
    let mut parts = vec![];
    for _ in 0..rng.gen_range(0..4) {
        let k = pick(rng, &["after", "limit", "after", "limit", "x", "", "AFTER"]);
        let v = pick(rng, &nums);
        parts.push(match rng.gen_range(0..6) {
            0 => k.to_string(),
            1 => format!("{k}={v}={v}"),
            _ => format!("{k}={v}"),
        });
    }
    if rng.gen_bool(0.1) {
        parts.push(pick(rng, WEIRD).to_string());
    }
    parts.join("&")
}

fn call(rng: &mut StdRng, api: &ApiFuzz) -> Call {
    match rng.gen_range(0..10) {
        0 => {
            let n = rng.gen_range(0..=2);
            Call::CreateUniverse(body(rng, api, &["name", "members"][..n]))
        }
        1 => Call::AddMember(universe_param(rng, api), body(rng, api, &["member"])),
        2 | 3 => Call::Send(universe_param(rng, api), body(rng, api, &["text"])),
        4 => Call::RemoveMember(universe_param(rng, api), member_param(rng, api)),
        5 => Call::Universe(universe_param(rng, api)),
        6..=8 => Call::Messages(universe_param(rng, api), query(rng)),
        _ => {
            let u = universe_param(rng, api);
            if rng.gen() {
                Call::Update(u)
            } else {
                Call::Rejoin(u)
            }
        }
    }
}

#[test]
fn api_requests_with_hostile_bodies_paths_and_queries() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pair = rt.block_on(start_pair());
    let api = &pair.api;
    // A deterministic sweep first: every selector of the compact byte
    // format (`call_from_bytes`) with an empty object, so every endpoint
    // sees at least one request.
    let mut seen = std::collections::BTreeSet::new();
    for sel in 0..=255u8 {
        let c = api.call_from_bytes(&[sel, b'{', b'}']);
        seen.insert(format!("{:?}", std::mem::discriminant(&c)));
        api.check(&c);
    }
    assert_eq!(seen.len(), 8, "every endpoint is reachable from bytes");
    let mut rng = rng();
    let n = cases(1000);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut before = snapshot(&rt, &pair);
    for i in 0..n {
        let c = call(&mut rng, api);
        let status = case(
            || format!("api #{i}: {:.2000}", format!("{c:?}")),
            || {
                let status = api.check(&c);
                let after = snapshot(&rt, &pair);
                if status.is_some_and(|s| s >= 400) {
                    assert_eq!(
                        after, before,
                        "refused with {status:?}, yet the state changed"
                    );
                }
                before = after;
                status
            },
        );
        if let Some(s) = status {
            *statuses.entry(s).or_default() += 1;
        }
        if i % 100 == 99 {
            case(
                || {
                    let n = |h: &node::NodeHandle| rt.block_on(h.universes()).map(|u| u.len());
                    format!(
                        "liveness after api #{i} (universes: a {:?}, b {:?}; statuses so far {statuses:?})",
                        n(&pair.a),
                        n(&pair.b)
                    )
                },
                || api.check_alive(&rt, &pair, &i.to_string()),
            );
            before = snapshot(&rt, &pair);
        }
    }
    eprintln!("api statuses: {statuses:?}");
    // Not vacuous: the generator reaches both accepted and refused calls.
    let ok: usize = statuses.range(200..300).map(|(_, n)| n).sum();
    let refused: usize = statuses.range(400..500).map(|(_, n)| n).sum();
    assert!(ok > 0 && refused > 0, "statuses too uniform: {statuses:?}");
    // Regression (found by this test): `?after=18446744073709551615` made
    // the engine compute `after + 1`, which wrapped to 0 in release builds
    // (every message came back, breaking the paging contract) and would
    // panic the node's driver with overflow checks on. Nothing comes after
    // the last cursor.
    for after in [u64::MAX, u64::MAX - 1] {
        let q = format!("after={after}");
        api.check(&Call::Messages(api.uid.hex(), q.clone()));
        let got = rt
            .block_on(pair.a.messages(api.uid, Some(after), 1000))
            .expect("messages after the last cursor");
        assert!(got.is_empty(), "{q}: {} messages", got.len());
    }
    // Over the body limit: refused (413, or the connection is closed).
    api.check(&Call::Send(api.uid.hex(), vec![b' '; api.max_body + 1]));
    api.check_alive(&rt, &pair, "end");
    eprintln!("api: {n} hostile requests");
    rt.block_on(async {
        pair.a.shutdown().await;
        pair.b.shutdown().await;
    });
}

// ------------------------------------------------------ cargo-fuzz seeds --

/// The cargo-fuzz seeds committed under `fuzz/seeds` are valid inputs of
/// their targets (they decode), so a wire format change cannot leave the
/// nightly fuzzers starting from garbage. After such a change, rewrite them
/// from this harness's generators with `MMLS_WRITE_FUZZ_SEEDS=1 cargo test
/// --release -p node --test fuzz cargo_fuzz_seeds`: one of each sync
/// variant (`sync_decode`) and the envelopes inside `Fetched` ones
/// (`envelope_decode`).
#[test]
fn cargo_fuzz_seeds_are_valid_inputs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    if std::env::var_os("MMLS_WRITE_FUZZ_SEEDS").is_some() {
        let mut rng = StdRng::seed_from_u64(DEFAULT_SEED);
        let seeds = sync_seeds(&mut rng);
        let (mut sync, mut env) = (vec![], vec![]);
        for (i, s) in seeds.iter().enumerate() {
            if i < 5 {
                // one of each variant
                sync.push(s.clone());
            }
            if let Ok(SyncMessage::Fetched(r)) = SyncMessage::decode(s) {
                env.extend(r.envelopes.into_iter().map(|e| e.into_vec()));
            }
        }
        for (target, inputs) in [("sync_decode", sync), ("envelope_decode", env)] {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).expect("seed dir");
            for (i, b) in inputs.iter().take(6).enumerate() {
                std::fs::write(dir.join(format!("seed-{i}.cbor")), b).expect("write seed");
            }
        }
    }
    for target in ["sync_decode", "envelope_decode"] {
        let dir = root.join(target);
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        assert!(!files.is_empty(), "no seeds in {}", dir.display());
        for f in files {
            let b = std::fs::read(&f).expect("read seed");
            let ok = match target {
                "sync_decode" => SyncMessage::decode(&b).is_ok(),
                _ => Envelope::decode(&b).is_ok(),
            };
            assert!(ok, "{} does not decode", f.display());
        }
    }
}
