//! A hostile bundle costs no memory before it is refused: 60 MB of empty
//! entries (the file: 1.47 GB and 3.4 s to refuse when ciborium
//! built every element) is refused from its CBOR headers, with a typed
//! one-line error, at a peak far under 256 MB.
//!
//! Memory is measured by a counting global allocator (this test binary's
//! own), so the test has one `#[test]`: nothing else allocates meanwhile.

use mmls_core::bundle::{Bundle, BundleError, GroupRun, BUNDLE_MAGIC, BUNDLE_VERSION};
use mmls_core::{Envelope, Id32, Kind};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            let now = NOW.fetch_add(l.size(), SeqCst) + l.size();
            PEAK.fetch_max(now, SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        NOW.fetch_sub(l.size(), SeqCst);
    }
}

#[global_allocator]
static A: Counting = Counting;

const MB: usize = 1 << 20;

/// A bundle whose `runs` send groups each carry `per_run` empty entries
/// (one CBOR byte each), with a valid checksum: what `Bundle::decode`
/// reads up to its CBOR decoding.
fn empty_entries_file(runs: usize, per_run: u32) -> Vec<u8> {
    let me = mmls_core::Identity::from_seed([3; 32]).member_id();
    let mut kp = Envelope::new(Kind::KeyPackage, vec![1, 2, 3]);
    kp.sender = Some(me.to_string());
    let b = Bundle {
        universe: Some(Id32([1; 32])),
        exporter: me,
        key_package: ByteBuf::from(kp.encode()),
        heads: vec![],
        groups: (0..runs)
            .map(|i| GroupRun {
                group: Id32([i as u8; 32]),
                from: 0,
                entries: vec![],
            })
            .collect(),
        truncated: false,
    };
    let file = b.encode();
    let body = &file[8 + 1 + 32..];
    // Each run's `entries: []` becomes an array of `per_run` empty byte
    // strings (0x40).
    let key = b"\x67entries\x80";
    let mut out = Vec::with_capacity(runs * per_run as usize + body.len());
    let mut rest = body;
    while let Some(at) = rest.windows(key.len()).position(|w| w == key) {
        out.extend_from_slice(&rest[..at + key.len() - 1]);
        out.push(0x9a);
        out.extend_from_slice(&per_run.to_be_bytes());
        out.resize(out.len() + per_run as usize, 0x40);
        rest = &rest[at + key.len()..];
    }
    out.extend_from_slice(rest);
    let mut f = BUNDLE_MAGIC.to_vec();
    f.push(BUNDLE_VERSION);
    f.extend_from_slice(&Sha256::digest(&out));
    f.extend_from_slice(&out);
    f
}

/// Decodes `file` and returns the error and the peak allocated (file
/// included) while it ran.
fn decode_peak(file: &[u8]) -> (Result<Bundle, BundleError>, usize) {
    PEAK.store(NOW.load(SeqCst), SeqCst);
    let r = Bundle::decode(file);
    (r, PEAK.load(SeqCst))
}

#[test]
fn a_bundle_of_millions_of_empty_entries_is_refused_before_decoding() {
    let base = NOW.load(SeqCst);
    let mut rows = vec![];
    // One run of 60 million entries, then 60 runs of a million each (each
    // array within the per-array bound, the total not).
    for (runs, per_run) in [(1usize, 60_000_000u32), (60, 1_000_000)] {
        let file = empty_entries_file(runs, per_run);
        assert!(file.len() >= 60_000_000, "{}", file.len());
        let t = std::time::Instant::now();
        let (r, peak) = decode_peak(&file);
        let took = t.elapsed();
        let peak = peak - base;
        println!("{runs} x {per_run}: peak {} MB, {took:?}", peak / MB);
        let e = r.expect_err("refused");
        assert!(matches!(e, BundleError::OverLimit(_)), "{e}");
        let line = e.to_string();
        assert!(!line.contains('\n') && line.len() < 200, "{line}");
        assert!(peak < 256 * MB, "peak {} MB", peak / MB);
        rows.push((runs, per_run, file.len(), peak, took, line));
    }
    println!("| runs x entries | file | peak (file included) | time | error |");
    println!("|---|---|---|---|---|");
    for (runs, per_run, len, peak, took, line) in rows {
        println!(
            "| {runs} x {per_run} | {:.1} MB | {:.1} MB | {:.3} s | {line} |",
            len as f64 / 1e6,
            peak as f64 / 1e6,
            took.as_secs_f64()
        );
    }
    // A valid bundle of the same shape, at a size that is allowed, still
    // decodes (empty entries are refused by the entry checks after it,
    // typed): the pre-scan only refuses what exceeds the bounds.
    let small = empty_entries_file(2, 1_000);
    let r = Bundle::decode(&small);
    assert!(matches!(r, Err(BundleError::Corrupt(_))), "{r:?}");
}
