//! Sneakernet: sync by file. A *bundle* carries the stream entries of a
//! universe's send groups (exactly what a fetch answer would carry) plus the
//! exporter's KeyPackage, so two nodes that never share a network converge
//! by carrying files (USB stick, mail, a radio file transfer).
//!
//! Bundles need no new trust: every entry is fed to the engine through
//! [`Participant::handle_incoming`], the same checks as a fetch answer, and
//! MLS authenticates the content. The checksum in the header is *not*
//! authentication (anyone can recompute it); it only lets a damaged file be
//! refused as a whole before anything is fed, so a bit flip cannot leave a
//! stream waiting for an entry that was destroyed in transit.
//!
//! The engine side uses the `Participant`'s public API only.
//!
//! File layout: `MMLSBNDL` (8 bytes), format version (1 byte), SHA-256 of
//! the rest (32 bytes), then the CBOR body ([`Bundle`]).

use crate::envelope::{Envelope, Kind};
use crate::error::MmlsError;
use crate::id::Id32;
use crate::identity::MemberId;
use crate::participant::{Output, Participant};
use crate::sync::FetchRequest;
use crate::universe::{from_cbor, to_cbor, Aad};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{KeyPackageIn, MlsMessageBodyIn, MlsMessageIn, ProtocolVersion};
use openmls_traits::OpenMlsProvider as _;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// The first bytes of every bundle file.
pub const BUNDLE_MAGIC: &[u8; 8] = b"MMLSBNDL";
/// The bundle format this node writes and reads.
pub const BUNDLE_VERSION: u8 = 1;
/// Largest bundle we write or read. Export stops adding entries before this
/// (the bundle says so: `truncated`), so an importer never has to hold more.
pub const MAX_BUNDLE_BYTES: usize = 64 << 20;
/// Most stream entries in one bundle (an envelope is at least ~60 bytes, so
/// this is above what `MAX_BUNDLE_BYTES` can hold anyway).
pub const MAX_BUNDLE_ENTRIES: usize = 1 << 20;
/// Most send groups in one bundle.
pub const MAX_BUNDLE_GROUPS: usize = 1 << 16;
/// CBOR items a bundle body may hold: one per entry, and the few a send
/// group's run and head take. Checked on the headers before decoding, so
/// the decoder never builds more than this many elements (about 24 bytes
/// each): a file of empty entries is refused, not decoded.
pub const MAX_BUNDLE_ITEMS: usize = MAX_BUNDLE_ENTRIES + 12 * MAX_BUNDLE_GROUPS + 64;
const HEADER_LEN: usize = 8 + 1 + 32;
/// Passes an import makes over entries of groups it did not know yet
/// (each pass follows one more Welcome that waited for PSKs).
const MAX_IMPORT_PASSES: usize = 8;
/// CBOR nesting a bundle body needs (map, array of maps, array of bytes).
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("not an mmls bundle (the file does not start with the bundle magic)")]
    NotABundle,
    #[error(
        "bundle format version {0} is not supported (this node reads version {BUNDLE_VERSION})"
    )]
    UnsupportedVersion(u8),
    #[error("bundle of {0} bytes exceeds the limit of {MAX_BUNDLE_BYTES}")]
    TooLarge(usize),
    #[error("bundle is damaged or truncated: {0}")]
    Corrupt(String),
    #[error(
        "bundle is for universe {0}, which this node is not in and which holds no Welcome for it"
    )]
    ForeignUniverse(Id32),
    #[error("this node is not in universe {0}")]
    NotInUniverse(Id32),
    #[error("bundle refused before decoding: {0}")]
    OverLimit(String),
}

/// The stream entries of one send group, contiguous from `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRun {
    pub group: Id32,
    pub from: u64,
    pub entries: Vec<ByteBuf>,
}

/// A bundle's content (the CBOR body after the header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// None: an introduction (the exporter's KeyPackage only), so that
    /// someone who never met the exporter can create a universe with it.
    pub universe: Option<Id32>,
    pub exporter: MemberId,
    /// The exporter's KeyPackage envelope, as it announces it on the lobby.
    pub key_package: ByteBuf,
    /// The exporter's position in every send group at export time
    /// (informational: what the importer will hold after importing).
    pub heads: Vec<(Id32, u64)>,
    pub groups: Vec<GroupRun>,
    /// Export stopped at [`MAX_BUNDLE_BYTES`]: export again after importing.
    pub truncated: bool,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportReport {
    pub universe: Option<Id32>,
    pub groups: usize,
    pub entries: usize,
    pub bytes: usize,
    pub truncated: bool,
    /// With `since_peer`: the groups where what that member holds was known
    /// (only the rest of those streams was exported).
    pub known_groups: usize,
}

/// What an import did, entry by entry, as for a fetch answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ImportReport {
    pub universe: Option<Id32>,
    pub exporter: Option<MemberId>,
    /// Stream entries the engine took (processed, or buffered in order).
    pub accepted: usize,
    /// Entries this node already had.
    pub duplicate: usize,
    /// Entries the engine's checks refused (the reasons are logged).
    pub rejected: usize,
    /// Whether the exporter's KeyPackage passed the checks.
    pub key_package_ok: bool,
    /// Entries still buffered in the universe after the import (they wait
    /// for an earlier entry or a PSK another bundle or peer must bring).
    pub waiting: usize,
    /// The bundle said it was cut at the size limit.
    pub truncated: bool,
    /// Entries of send groups this node does not know (no Welcome for it
    /// came, in the file or before): not kept beyond a small budget, and
    /// not taken (`participant::held`).
    #[serde(default)]
    pub held: usize,
}

impl Bundle {
    pub fn entries(&self) -> usize {
        self.groups.iter().map(|g| g.entries.len()).sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        let body = to_cbor(self);
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(BUNDLE_MAGIC);
        out.push(BUNDLE_VERSION);
        out.extend_from_slice(&Sha256::digest(&body));
        out.extend_from_slice(&body);
        out
    }

    /// Decodes and validates the whole file before anything is used: the
    /// header, the checksum, the body's structure and every envelope (size,
    /// depth, kind, universe, group and contiguous seq).
    pub fn decode(bytes: &[u8]) -> Result<Bundle, BundleError> {
        if bytes.len() < BUNDLE_MAGIC.len() || &bytes[..BUNDLE_MAGIC.len()] != BUNDLE_MAGIC {
            return Err(BundleError::NotABundle);
        }
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge(bytes.len()));
        }
        let Some(&v) = bytes.get(8) else {
            return Err(BundleError::Corrupt("no version byte".into()));
        };
        if v != BUNDLE_VERSION {
            return Err(BundleError::UnsupportedVersion(v));
        }
        if bytes.len() < HEADER_LEN {
            return Err(BundleError::Corrupt("header cut short".into()));
        }
        let (sum, body) = (&bytes[9..HEADER_LEN], &bytes[HEADER_LEN..]);
        if Sha256::digest(body).as_slice() != sum {
            return Err(BundleError::Corrupt(
                "checksum mismatch (the file was cut or changed after export)".into(),
            ));
        }
        prescan(body)?;
        let b: Bundle = ciborium::de::from_reader_with_recursion_limit(body, MAX_DEPTH)
            .map_err(|e| BundleError::Corrupt(short(e)))?;
        b.check()?;
        Ok(b)
    }

    fn check(&self) -> Result<(), BundleError> {
        let bad = |s: String| Err(BundleError::Corrupt(s));
        if self.groups.len() > MAX_BUNDLE_GROUPS || self.heads.len() > MAX_BUNDLE_GROUPS {
            return bad("too many send groups".into());
        }
        if self.entries() > MAX_BUNDLE_ENTRIES {
            return bad("too many entries".into());
        }
        let kp = Envelope::decode(&self.key_package)
            .map_err(|e| BundleError::Corrupt(format!("KeyPackage: {e}")))?;
        if kp.kind != Kind::KeyPackage || kp.sender.as_deref() != Some(self.exporter.as_str()) {
            return bad("the KeyPackage entry is not the exporter's KeyPackage".into());
        }
        let mut seen = BTreeSet::new();
        for run in &self.groups {
            if !seen.insert(run.group) {
                return bad(format!("send group {} appears twice", run.group.short()));
            }
            let Some(universe) = self.universe else {
                return bad("an introduction bundle carries no stream entries".into());
            };
            for (i, raw) in run.entries.iter().enumerate() {
                let e = Envelope::decode(raw).map_err(|e| {
                    BundleError::Corrupt(format!("entry {i} of group {}: {e}", run.group.short()))
                })?;
                let seq = run.from.checked_add(i as u64);
                if !matches!(e.kind, Kind::Welcome | Kind::Commit | Kind::Application)
                    || e.universe != Some(universe)
                    || e.group != Some(run.group)
                    || Some(e.seq) != seq
                {
                    return bad(format!(
                        "entry {i} of group {} is not stream entry {} of that group",
                        run.group.short(),
                        run.from.saturating_add(i as u64)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Refuses a body whose CBOR headers announce more than a bundle may hold
/// (`cbor_scan`): what costs memory is refused before it is built.
fn prescan(body: &[u8]) -> Result<(), BundleError> {
    use crate::cbor_scan::{scan, Limits, ScanError};
    let lim = Limits {
        max_items: MAX_BUNDLE_ITEMS,
        max_elements: MAX_BUNDLE_ENTRIES as u64,
        max_depth: MAX_DEPTH,
    };
    match scan(body, &lim) {
        Ok(_) => Ok(()),
        Err(e @ (ScanError::TooManyItems(_) | ScanError::TooManyElements { .. })) => {
            Err(BundleError::OverLimit(e.to_string()))
        }
        Err(e) => Err(BundleError::Corrupt(e.to_string())),
    }
}

fn short(e: impl std::fmt::Display) -> String {
    let mut s = e.to_string();
    crate::error::truncate_at_char(&mut s, 200);
    s
}

fn key_package_envelope(p: &Participant) -> Vec<u8> {
    match p.announcement() {
        Output::Publish(pb) => pb.bytes,
        _ => vec![],
    }
}

/// An introduction: only our KeyPackage, for someone who will create a
/// universe with us (or add us) without ever meeting our node.
pub fn introduce(p: &Participant) -> Bundle {
    Bundle {
        universe: None,
        exporter: p.me().clone(),
        key_package: ByteBuf::from(key_package_envelope(p)),
        heads: vec![],
        groups: vec![],
        truncated: false,
    }
}

/// A bundle file of `universe` ([`export`]), or an introduction
/// ([`introduce`]) when `universe` is None, with its report.
pub fn export_file(
    p: &Participant,
    universe: Option<&Id32>,
    since_peer: Option<&MemberId>,
) -> Result<(Vec<u8>, ExportReport), BundleError> {
    let (b, mut r) = match universe {
        Some(u) => export(p, u, since_peer)?,
        None => (
            introduce(p),
            ExportReport {
                universe: None,
                groups: 0,
                entries: 0,
                bytes: 0,
                truncated: false,
                known_groups: 0,
            },
        ),
    };
    let bytes = b.encode();
    r.bytes = bytes.len();
    Ok((bytes, r))
}

/// Every stream entry of `universe` we hold, or with `since_peer` only what
/// that member is known to lack ([`known_heads`]).
pub fn export(
    p: &Participant,
    universe: &Id32,
    since_peer: Option<&MemberId>,
) -> Result<(Bundle, ExportReport), BundleError> {
    let summary = p
        .summaries()
        .into_iter()
        .find(|s| s.universe == *universe)
        .ok_or(BundleError::NotInUniverse(*universe))?;
    let known = since_peer
        .map(|m| known_heads(p, universe, m))
        .unwrap_or_default();
    let kp = key_package_envelope(p);
    // Room for the header, the KeyPackage and the CBOR framing.
    let budget = MAX_BUNDLE_BYTES - HEADER_LEN - kp.len() - 64 * 1024;
    let mut size = 0usize;
    let mut entries = 0usize;
    let mut truncated = false;
    let mut groups = vec![];
    for (g, head) in &summary.heads {
        let start = known.get(g).copied().unwrap_or(0);
        if start >= *head || truncated {
            continue;
        }
        let (run, full) = read_log(p, universe, g, start, &mut size, &mut entries, budget);
        truncated |= !full;
        if !run.entries.is_empty() {
            groups.push(run);
        }
    }
    let bundle = Bundle {
        universe: Some(*universe),
        exporter: p.me().clone(),
        key_package: ByteBuf::from(kp),
        heads: summary.heads.clone(),
        groups,
        truncated,
    };
    let report = ExportReport {
        universe: Some(*universe),
        groups: bundle.groups.len(),
        entries: bundle.entries(),
        bytes: 0,
        truncated,
        known_groups: known.len(),
    };
    Ok((bundle, report))
}

/// Walks our log of `g` from `from` (or from the oldest entry we still
/// hold, if later), page by page as a fetch would serve it, handing each
/// entry and its seq to `visit` until it returns false or the log ends.
/// Returns whether the log ended (rather than `visit` stopping).
fn scan_log(
    p: &Participant,
    universe: &Id32,
    g: &Id32,
    mut from: u64,
    mut visit: impl FnMut(u64, ByteBuf) -> bool,
) -> bool {
    let mut any = false;
    loop {
        let req = FetchRequest::Range {
            universe: *universe,
            group: *g,
            from,
        };
        let Ok(resp) = p.serve_fetch(&req) else {
            return true;
        };
        if resp.envelopes.is_empty() {
            // Pruned (or never held) below `oldest`: start there instead.
            match resp.oldest {
                Some(o) if o > from && !any => {
                    from = o;
                    continue;
                }
                _ => return true,
            }
        }
        for e in resp.envelopes {
            any = true;
            if !visit(from, e) {
                return false;
            }
            from += 1;
        }
        if !resp.more {
            return true;
        }
    }
}

/// Reads our log of `g` from `from` ([`scan_log`]) until its end or until
/// `budget` bytes are used. Returns the run and whether it is complete.
fn read_log(
    p: &Participant,
    universe: &Id32,
    g: &Id32,
    from: u64,
    size: &mut usize,
    entries: &mut usize,
    budget: usize,
) -> (GroupRun, bool) {
    let mut run = GroupRun {
        group: *g,
        from,
        entries: vec![],
    };
    let full = scan_log(p, universe, g, from, |seq, e| {
        if *size + e.len() + 16 > budget || *entries >= MAX_BUNDLE_ENTRIES {
            return false;
        }
        if run.entries.is_empty() {
            run.from = seq;
        }
        *size += e.len() + 16;
        *entries += 1;
        run.entries.push(e);
        true
    });
    (run, full)
}

/// What `member` is known to hold of each send group of `universe`, as the
/// first stream position it lacks. Based on authenticated data only: the
/// member holds all of its own send group; and each of its own commits in
/// our log names (in its frontier) the epoch it had reached in the other
/// groups, so it holds those streams up to and including the commit that
/// opened that epoch. Groups absent from the map: nothing is known.
pub fn known_heads(p: &Participant, universe: &Id32, member: &MemberId) -> BTreeMap<Id32, u64> {
    let mut out = BTreeMap::new();
    let Some(own) = p.group_of(universe, member) else {
        return out;
    };
    // The latest epoch named per group (frontiers list only what moved).
    let mut named: BTreeMap<Id32, u64> = BTreeMap::new();
    scan_log(p, universe, &own, 0, |_, raw| {
        for f in commit_aad(&raw).map(|a| a.frontier).unwrap_or_default() {
            let e = named.entry(f.group).or_insert(f.epoch);
            *e = (*e).max(f.epoch);
        }
        true
    });
    let heads: BTreeMap<Id32, u64> = p
        .summaries()
        .into_iter()
        .find(|s| s.universe == *universe)
        .map(|s| s.heads.into_iter().collect())
        .unwrap_or_default();
    if let Some(h) = heads.get(&own) {
        out.insert(own, *h);
    }
    for (g, epoch) in named {
        if g == own || !heads.contains_key(&g) {
            continue;
        }
        // The commit made in epoch - 1 opened `epoch`.
        let mut opened = None;
        scan_log(p, universe, &g, 0, |seq, raw| {
            let hit = Envelope::decode(&raw)
                .is_ok_and(|e| e.kind == Kind::Commit && e.epoch + 1 == epoch);
            if hit {
                opened = Some(seq + 1);
            }
            !hit
        });
        if let Some(next) = opened {
            out.insert(g, next);
        }
    }
    out
}

/// The authenticated data of a commit entry from our log (which holds only
/// entries this node processed, so their AAD was authenticated).
fn commit_aad(raw: &[u8]) -> Option<Aad> {
    let e = Envelope::decode(raw).ok()?;
    if e.kind != Kind::Commit {
        return None;
    }
    let msg = MlsMessageIn::tls_deserialize_exact(e.body.as_slice()).ok()?;
    match msg.extract() {
        MlsMessageBodyIn::PrivateMessage(pm) => from_cbor(pm.aad()).ok(),
        _ => None,
    }
}

/// Whether a Welcome entry is encrypted to this node's KeyPackage. A
/// universe this node does not know yet can only be joined through the
/// last-resort KeyPackage it announces (fresh single-use ones are only made
/// for rejoins, which need the universe known), so that is the one to look
/// for.
fn welcome_for(my_kp_ref: &[u8], raw: &[u8]) -> bool {
    let Ok(e) = Envelope::decode(raw) else {
        return false;
    };
    if e.kind != Kind::Welcome {
        return false;
    }
    let Ok(msg) = MlsMessageIn::tls_deserialize_exact(e.body.as_slice()) else {
        return false;
    };
    match msg.extract() {
        MlsMessageBodyIn::Welcome(w) => w
            .secrets()
            .iter()
            .any(|s| s.new_member().as_slice() == my_kp_ref),
        _ => false,
    }
}

fn my_key_package_ref(p: &Participant) -> Option<Vec<u8>> {
    let env = Envelope::decode(&key_package_envelope(p)).ok()?;
    let kpi = KeyPackageIn::tls_deserialize_exact(env.body.as_slice()).ok()?;
    let provider = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let kp = kpi
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .ok()?;
    kp.hash_ref(provider.crypto())
        .ok()
        .map(|r| r.as_slice().to_vec())
}

/// Feeds a bundle file to the engine. The whole file is decoded and checked
/// first: a damaged, foreign or unsupported bundle is an error and changes
/// nothing. Then the KeyPackage and every entry go through
/// [`Participant::handle_incoming`] as a fetch answer's do (Welcomes for us
/// first, as the Welcomes fetch comes before the stream fetches). The
/// outputs are for the driver, as for a fetch answer.
pub fn import(
    p: &mut Participant,
    bytes: &[u8],
) -> Result<(ImportReport, Vec<Output>), BundleError> {
    let b = Bundle::decode(bytes)?;
    let mut report = ImportReport {
        universe: b.universe,
        exporter: Some(b.exporter.clone()),
        truncated: b.truncated,
        ..ImportReport::default()
    };
    let mut welcomes: BTreeSet<(usize, usize)> = BTreeSet::new();
    if let Some(u) = b.universe {
        if !p.universes().contains(&u) {
            let r = my_key_package_ref(p).unwrap_or_default();
            for (gi, run) in b.groups.iter().enumerate() {
                for (i, raw) in run.entries.iter().enumerate() {
                    if welcome_for(&r, raw) {
                        welcomes.insert((gi, i));
                    }
                }
            }
            if welcomes.is_empty() {
                return Err(BundleError::ForeignUniverse(u));
            }
        }
    }
    let mut outs = vec![];
    match p.handle_incoming(&b.key_package) {
        Ok(o) => {
            report.key_package_ok = true;
            outs.extend(o);
        }
        Err(e) => tracing::debug!(error = %e, "bundle KeyPackage rejected"),
    }
    // Entries of groups we do not know yet come back `Held` (bounded, see
    // `participant::held`), so a group whose Welcome waits for PSKs later
    // in the file would lose its stream: they are fed again while a pass
    // makes progress (a file has no peer to fetch the rest from).
    let mut feed = |p: &mut Participant, raw: &[u8], report: &mut ImportReport| -> bool {
        match p.handle_incoming(raw) {
            Ok(o) => {
                report.accepted += 1;
                outs.extend(o);
            }
            Err(e) if e.is_duplicate() => report.duplicate += 1,
            Err(MmlsError::Held(_)) => return true,
            Err(e) => {
                report.rejected += 1;
                tracing::debug!(error = %e, "bundle entry rejected");
            }
        }
        false
    };
    let mut order: Vec<(usize, usize)> = welcomes.iter().copied().collect();
    for (gi, run) in b.groups.iter().enumerate() {
        for i in 0..run.entries.len() {
            if !welcomes.contains(&(gi, i)) {
                order.push((gi, i));
            }
        }
    }
    for _ in 0..MAX_IMPORT_PASSES {
        let before = report.accepted;
        order.retain(|&(gi, i)| feed(p, &b.groups[gi].entries[i], &mut report));
        if order.is_empty() || report.accepted == before {
            break;
        }
    }
    report.held = order.len();
    if let Some(u) = b.universe {
        if let Ok(st) = p.status(&u) {
            report.waiting = st.groups.iter().map(|g| g.buffered).sum();
        }
    }
    Ok((report, outs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn sample() -> Bundle {
        let me = Identity::from_seed([3; 32]).member_id();
        let mut kp = Envelope::new(Kind::KeyPackage, vec![1, 2, 3]);
        kp.sender = Some(me.to_string());
        let u = Id32([1; 32]);
        let g = Id32([2; 32]);
        let entry = |seq: u64| {
            let mut e = Envelope::new(Kind::Application, vec![9; 10]);
            e.universe = Some(u);
            e.group = Some(g);
            e.seq = seq;
            ByteBuf::from(e.encode())
        };
        Bundle {
            universe: Some(u),
            exporter: me,
            key_package: ByteBuf::from(kp.encode()),
            heads: vec![(g, 7)],
            groups: vec![GroupRun {
                group: g,
                from: 5,
                entries: vec![entry(5), entry(6)],
            }],
            truncated: false,
        }
    }

    #[test]
    fn round_trip() {
        let b = sample();
        assert_eq!(Bundle::decode(&b.encode()).unwrap(), b);
    }

    #[test]
    fn every_cut_and_every_bit_flip_is_refused() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(Bundle::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(Bundle::decode(&b).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn typed_errors() {
        assert_eq!(Bundle::decode(b"garbage"), Err(BundleError::NotABundle));
        assert_eq!(Bundle::decode(b""), Err(BundleError::NotABundle));
        let mut b = sample().encode();
        b[8] = 2;
        assert_eq!(Bundle::decode(&b), Err(BundleError::UnsupportedVersion(2)));
        let mut big = BUNDLE_MAGIC.to_vec();
        big.resize(MAX_BUNDLE_BYTES + 1, 0);
        assert_eq!(
            Bundle::decode(&big),
            Err(BundleError::TooLarge(MAX_BUNDLE_BYTES + 1))
        );
    }

    /// A well-formed file (valid checksum) whose entries do not fit the
    /// runs they are in is refused as a whole.
    #[test]
    fn inconsistent_runs_are_refused() {
        let mut b = sample();
        b.groups[0].from = 4;
        assert!(matches!(
            Bundle::decode(&b.encode()),
            Err(BundleError::Corrupt(_))
        ));
        let mut b = sample();
        b.groups.push(b.groups[0].clone());
        assert!(matches!(
            Bundle::decode(&b.encode()),
            Err(BundleError::Corrupt(_))
        ));
        let mut b = sample();
        b.key_package = b.groups[0].entries[0].clone();
        assert!(matches!(
            Bundle::decode(&b.encode()),
            Err(BundleError::Corrupt(_))
        ));
        let mut b = sample();
        b.universe = None;
        assert!(matches!(
            Bundle::decode(&b.encode()),
            Err(BundleError::Corrupt(_))
        ));
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        let mut body = vec![0x81u8; 100_000];
        body.push(0);
        let mut b = BUNDLE_MAGIC.to_vec();
        b.push(BUNDLE_VERSION);
        b.extend_from_slice(&Sha256::digest(&body));
        b.extend_from_slice(&body);
        assert!(matches!(Bundle::decode(&b), Err(BundleError::Corrupt(_))));
    }
}
