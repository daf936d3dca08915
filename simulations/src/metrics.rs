//! What a run measures: the metrics object (JSON) and the time series
//! (CSV). Everything here is computed from virtual time and the event
//! trace, except the wall-clock and memory fields of [`RunCost`] and
//! `wall_seconds` / `peak_rss_mb` (informational, left out of determinism
//! checks by [`Metrics::deterministic_json`]).

use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// Percentiles (nearest rank) of virtual latencies in ms.
    pub fn of(sorted: &[u32]) -> Latency {
        if sorted.is_empty() {
            return Latency::default();
        }
        let pick = |q: f64| -> f64 {
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            sorted[rank - 1] as f64
        };
        let sum: u64 = sorted.iter().map(|v| *v as u64).sum();
        Latency {
            p50: pick(0.50),
            p90: pick(0.90),
            p99: pick(0.99),
            max: *sorted.last().unwrap_or(&0) as f64,
            mean: (sum as f64 / sorted.len() as f64 * 10.0).round() / 10.0,
        }
    }
}

/// PCS healing in one send group after one compromise.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PcsGroup {
    /// Owner (member index) of the send group.
    pub owner: usize,
    /// Short id of the group (an owner that lost its state has a new one).
    pub group: String,
    /// Application messages the owner sent in this group after the
    /// compromise, and how many of them the attacker's copy decrypted.
    pub sent_after: usize,
    pub read: usize,
    /// Send time (s after the compromise) of the last message it read.
    pub last_read_s: Option<f64>,
    /// Healed: some message sent after the last one it read was not
    /// readable. `heal_seconds` = send time of the first such message minus
    /// the compromise time.
    pub healed: bool,
    pub heal_seconds: Option<f64>,
    /// False if the attacker read a message sent after one it could not
    /// read (healing was not monotone: worth a look).
    pub monotone: bool,
}

/// Envelopes of one kind published by the participants.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Published {
    pub count: u64,
    pub bytes: u64,
    pub max_bytes: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Pcs {
    pub member: usize,
    pub at_s: f64,
    /// Every measured group healed within the run.
    pub healed: bool,
    /// Time until the last measured group healed (None if one never did).
    pub heal_seconds: Option<f64>,
    /// Median over groups of their healing time (healed groups only).
    pub median_group_heal_seconds: Option<f64>,
    /// The victim's first MMLS update (commit with path) after the
    /// compromise, seconds after it.
    pub victim_first_update_s: Option<f64>,
    /// Messages sent after the compromise in the groups of other members,
    /// and how many the attacker read.
    pub sent_after: usize,
    pub read: usize,
    /// The victim's own send group is not measured: openmls never decrypts
    /// messages from the member's own leaf, so a copy of the victim cannot
    /// stand in for an attacker reading the victim's own traffic.
    pub own_group_measured: bool,
    pub groups: Vec<PcsGroup>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Convergence {
    /// Expected deliveries that never happened.
    pub missing_deliveries: u64,
    /// (member, owner) pairs whose view of owner's send group differs from
    /// the others' (epoch and exported fingerprint), or is missing.
    pub epoch_mismatches: u64,
    /// Members checked (online, in the universe, at the end).
    pub members_checked: usize,
    /// A few human-readable problems, if any.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Metrics {
    pub scenario: String,
    pub seed: u64,
    pub members: usize,
    pub nodes: usize,
    pub topology: String,
    pub links: usize,
    pub virtual_seconds: f64,
    pub messages_sent: u64,
    pub deliveries_expected: u64,
    pub deliveries: u64,
    /// A member got the same message twice (must be 0).
    pub duplicates: u64,
    /// Deliveries to members outside a message's audience: removed members
    /// after their removal was committed, or members not yet welcomed
    /// (must be 0).
    pub unexpected_deliveries: u64,
    /// Deliveries that were allowed but not required (state-loss windows,
    /// removed members before the removal committed, members offline at
    /// the end).
    pub optional_deliveries: u64,
    /// Messages lost with their sender's state before anyone got them.
    pub lost_with_sender_state: u64,
    /// Deliveries a member that lost its state cannot get back, because the
    /// sender lost its own state too (nobody else can re-send them).
    #[serde(default)]
    pub deliveries_lost_with_sender_state: u64,
    pub latency_ms: Latency,
    pub converged: bool,
    pub convergence: Convergence,
    pub bytes_on_wire: u64,
    /// Gossip frames, payload and control.
    pub bytes_gossip: u64,
    /// The gossip control messages' part (IHAVE, IWANT, IDONTWANT, GRAFT,
    /// PRUNE).
    pub bytes_gossip_control: u64,
    pub bytes_sync: u64,
    /// Every envelope published, once (the sum of `published`).
    pub bytes_published: u64,
    /// bytes_on_wire / bytes_published: what gossip and sync carry per
    /// byte published. Each envelope crossing each link once costs about
    /// `links`; the flood this simulator modelled first cost twice the
    /// links (both ends send) and more with re-sends.
    pub wire_per_published: Option<f64>,
    /// bytes_gossip / bytes_published.
    pub gossip_per_published: Option<f64>,
    /// Gossip frames that arrived at a node that had already seen them.
    pub gossip_redundant: u64,
    /// Publishes a node's gossip layer refused because the same bytes were
    /// still in its duplicate cache (gossipsub's `Duplicate` error).
    pub republish_refused: u64,
    pub frames_lost: u64,
    /// Frames dropped at a full link queue (`network.max_queue_ms`).
    pub queue_drops: u64,
    pub commits: u64,
    pub commits_with_path: u64,
    pub updates: u64,
    /// commits / updates (every update should cost about one commit per
    /// other member, bounded by two).
    pub commits_per_update: Option<f64>,
    pub sync_exchanges: u64,
    pub fetch_requests: u64,
    pub fetched_envelopes: u64,
    /// Inputs the engines rejected, by error kind (duplicates excluded).
    pub input_errors: BTreeMap<String, u64>,
    /// `Event::Rejected`: stream entries accepted then dropped.
    pub rejected_entries: u64,
    /// Those rejections by reason (numbers and ids masked as `#`).
    pub rejections: BTreeMap<String, u64>,
    /// Rejections and input errors naming a PSK (openmls's `PskError`): a
    /// commit imported an exported PSK this member no longer (or never)
    /// held. Must be 0 when no member lost its state.
    pub psk_errors: u64,
    /// What the participants published (each envelope once, before
    /// flooding), by envelope kind: what an update or a message costs.
    pub published: BTreeMap<String, Published>,
    pub stale_events: u64,
    pub rejoins: u64,
    pub equivocations: u64,
    /// Workload actions the engine refused (e.g. universe not joined yet).
    pub sends_refused: u64,
    pub updates_refused: u64,
    /// Events of the engine API the driver could not carry out.
    pub driver_errors: Vec<String>,
    pub pcs: Vec<Pcs>,
    /// The crypto the run performed and what it would cost in plain
    /// openmls, against what the run cost.
    pub cost: RunCost,
    pub wall_seconds: f64,
    pub peak_rss_mb: f64,
}

/// The openmls baseline prices (criterion medians of
/// `cargo bench -p mmls-core --bench engine`, BENCHMARKS.md, 2026-12-02):
/// `protect/openmls/unprotect/100` and `update_round/openmls/N` (one
/// self-update commit created and processed by the N-1 others) at N = 4,
/// 16, 64.
pub const OPENMLS_DECRYPT_US: f64 = 71.8;
pub const OPENMLS_UPDATE_ROUND_US: [(f64, f64); 3] =
    [(4.0, 3_456.6), (16.0, 12_688.1), (64.0, 83_379.9)];

/// The openmls price (µs) of one commit, created or processed, in a group
/// of `n`: an update round over its N commit handlings, interpolated
/// linearly in N between the measured sizes (and beyond them along the
/// nearest segment).
pub fn openmls_commit_us(n: usize) -> f64 {
    let per = |(k, us): (f64, f64)| (k, us / k);
    let pts = OPENMLS_UPDATE_ROUND_US.map(per);
    let x = n.max(2) as f64;
    let (a, b) = if x <= pts[1].0 {
        (pts[0], pts[1])
    } else {
        (pts[1], pts[2])
    };
    (a.1 + (b.1 - a.1) * (x - a.0) / (b.0 - a.0)).max(0.0)
}

/// What a run cost against the crypto it did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RunCost {
    /// Commits handled: `commits` x the universe's members (each commit
    /// made by one member and processed by the others).
    pub commit_handlings: u64,
    /// Application messages decrypted (every `Message` event).
    pub decryptions: u64,
    /// Their price in plain openmls, seconds (deterministic).
    pub openmls_seconds: f64,
    /// Worker threads (informational).
    pub threads: usize,
    /// wall_seconds / openmls_seconds (informational): the simulator's
    /// and the engine's overhead over the bare crypto it drives.
    pub overhead: Option<f64>,
    /// Peak RSS per simulated node, bytes (informational).
    pub bytes_per_member: u64,
    /// Key + value bytes in a node's store at the end (openmls's state and
    /// the engine's tables), mean over nodes (informational).
    pub store_bytes_per_member: u64,
    /// Send groups decoded from the store per node, mean (the first use of
    /// each, then every miss of a bounded `engine.group_cache`).
    #[serde(default)]
    pub group_decodes_per_member: u64,
}

impl Metrics {
    /// The metrics as JSON without the informational wall-clock fields:
    /// equal for equal scenario and seed.
    pub fn deterministic_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.remove("wall_seconds");
            o.remove("peak_rss_mb");
            if let Some(c) = o.get_mut("cost").and_then(|c| c.as_object_mut()) {
                c.remove("threads");
                c.remove("overhead");
                c.remove("bytes_per_member");
                c.remove("store_bytes_per_member");
            }
        }
        v
    }
}

/// Samples taken every `sample_s` of virtual time.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// (t_s, deliveries in the interval, cumulative deliveries, messages
    /// sent so far, commits so far)
    pub deliveries: Vec<(f64, u64, u64, u64, u64)>,
    /// (t_s, owner, owner's epoch, min epoch over online members, max)
    pub epochs: Vec<(f64, usize, u64, u64, u64)>,
    /// (t_s, node, bytes sent so far, bytes received so far)
    pub bytes: Vec<(f64, usize, u64, u64)>,
}

/// The peak resident set of this process (VmHWM), in MiB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| (kb / 1024.0 * 10.0).round() / 10.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        let l = Latency::of(&v);
        assert_eq!(l.p50, 50.0);
        assert_eq!(l.p99, 99.0);
        assert_eq!(l.max, 100.0);
        assert_eq!(Latency::of(&[]), Latency::default());
    }

    #[test]
    fn commit_prices_follow_the_baseline_points() {
        assert!((openmls_commit_us(16) - 12_688.1 / 16.0).abs() < 1e-6);
        assert!((openmls_commit_us(64) - 83_379.9 / 64.0).abs() < 1e-6);
        let mid = openmls_commit_us(40);
        assert!(mid > openmls_commit_us(16) && mid < openmls_commit_us(64));
        // Beyond 64: along the 16..64 segment.
        assert!(openmls_commit_us(128) > openmls_commit_us(64));
    }
}
