//! Scenario files: what is simulated (TOML, parsed with serde, validated
//! with errors that name the offending field).
//!
//! Times in a scenario are in seconds of *virtual* time (fractions allowed),
//! except the engine knobs, which keep the core's milliseconds.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// The longest run (workload plus quiet period): per-node caches keep
/// virtual time in 32-bit milliseconds (about 49 days).
pub const MAX_VIRTUAL_S: f64 = 40.0 * 86_400.0;

/// A whole scenario file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name (defaults to the file stem).
    #[serde(default)]
    pub name: String,
    /// One line saying what the scenario models.
    #[serde(default)]
    pub description: String,
    /// Members of the universe at the start (member 0 creates it and is its
    /// admin). Nodes named by `[[join]]` events come on top of these.
    pub members: usize,
    /// Virtual seconds of workload; a quiet period (`sim.quiet_s`) follows.
    pub duration_s: f64,
    /// Seed of the simulator's one RNG (`--seed` overrides it).
    #[serde(default = "one")]
    pub seed: u64,
    /// Universe profile: "mmls-00" (default) or "dmls".
    #[serde(default = "default_profile")]
    pub profile: String,
    #[serde(default)]
    pub network: NetworkSpec,
    #[serde(default)]
    pub workload: Workload,
    #[serde(default)]
    pub engine: EngineSpec,
    #[serde(default)]
    pub sim: SimSpec,
    #[serde(default)]
    pub gossip: GossipSpec,
    #[serde(default, rename = "partition")]
    pub partitions: Vec<Partition>,
    #[serde(default, rename = "offline")]
    pub offline: Vec<Offline>,
    #[serde(default, rename = "compromise")]
    pub compromises: Vec<Compromise>,
    #[serde(default, rename = "join")]
    pub joins: Vec<Join>,
    #[serde(default, rename = "remove")]
    pub removes: Vec<Remove>,
}

fn one() -> u64 {
    1
}
fn default_profile() -> String {
    "mmls-00".into()
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TopologyKind {
    /// Every node linked to every other.
    Mesh,
    /// Node i linked to i+1.
    Line,
    /// Node 0 is the hub, linked to everyone.
    Star,
    /// `clusters` groups of consecutive nodes, a full mesh inside each; the
    /// first node of each cluster is its gateway, gateways form a full mesh
    /// over slower links.
    Clusters,
    /// Mesh radio: nodes placed uniformly in the unit square, linked when
    /// closer than `radius` (components are then bridged by their closest
    /// pair so the network is connected).
    Geometric,
    /// A random connected overlay where every node has about `degree`
    /// neighbours: the shape of a gossipsub mesh (D = 6) on a LAN or the
    /// internet. Flooding cost is O(N * degree) instead of O(N^2).
    Random,
}

impl fmt::Display for TopologyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            TopologyKind::Mesh => "mesh",
            TopologyKind::Line => "line",
            TopologyKind::Star => "star",
            TopologyKind::Clusters => "clusters",
            TopologyKind::Geometric => "geometric",
            TopologyKind::Random => "random",
        };
        f.write_str(s)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// One-way latency of every link (ms).
    #[serde(default = "d_latency")]
    pub latency_ms: f64,
    /// Uniform extra delay in [0, jitter_ms) per transmission.
    #[serde(default)]
    pub jitter_ms: f64,
    /// Probability that one transmission over one link is lost.
    #[serde(default)]
    pub loss: f64,
    #[serde(default = "d_topology")]
    pub topology: TopologyKind,
    /// Link bandwidth in kbit/s per direction (serialization delay and
    /// queueing); absent = unlimited.
    #[serde(default)]
    pub bandwidth_kbps: Option<f64>,
    /// With a bandwidth: the longest a frame waits in a link's send queue
    /// (ms); a frame that would wait longer is dropped (tail drop), as a
    /// radio's or a router's bounded buffer does. Unbounded queues are not
    /// only unrealistic: once delays exceed the gossip cache, copies of one
    /// message come back after it was forgotten and circulate again.
    #[serde(default = "d_max_queue")]
    pub max_queue_ms: f64,
    /// `clusters`: how many clusters.
    #[serde(default = "d_clusters")]
    pub clusters: usize,
    /// `clusters`: latency of the links between cluster gateways (ms);
    /// defaults to 4 x latency_ms.
    #[serde(default)]
    pub inter_cluster_latency_ms: Option<f64>,
    /// `geometric`: link radius in the unit square.
    #[serde(default = "d_radius")]
    pub radius: f64,
    /// `random`: neighbours per node.
    #[serde(default = "d_degree")]
    pub degree: usize,
    /// How long a node remembers a gossip message id and drops repeats
    /// (seconds; the node's gossipsub `duplicate_cache_time` is 10 s).
    #[serde(default = "d_gossip_cache")]
    pub gossip_cache_s: f64,
}

fn d_gossip_cache() -> f64 {
    10.0
}
fn d_max_queue() -> f64 {
    2000.0
}

fn d_latency() -> f64 {
    20.0
}
fn d_topology() -> TopologyKind {
    TopologyKind::Mesh
}
fn d_clusters() -> usize {
    2
}
fn d_radius() -> f64 {
    0.35
}
fn d_degree() -> usize {
    6
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            latency_ms: d_latency(),
            jitter_ms: 0.0,
            loss: 0.0,
            topology: d_topology(),
            bandwidth_kbps: None,
            max_queue_ms: d_max_queue(),
            clusters: d_clusters(),
            inter_cluster_latency_ms: None,
            radius: d_radius(),
            degree: d_degree(),
            gossip_cache_s: d_gossip_cache(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Every member sends one message this often (0 = no messages); each
    /// member starts at its own random phase.
    #[serde(default = "d_msg_interval")]
    pub message_interval_s: f64,
    /// Application payload size in bytes (at least 8: the simulator's
    /// message id).
    #[serde(default = "d_msg_bytes")]
    pub message_bytes: usize,
    /// Every member makes an MMLS update (`Participant::update`) this often,
    /// at its own random phase (0 = never).
    #[serde(default)]
    pub update_interval_s: f64,
    /// On-send policy: a member also updates after every this many
    /// messages it sends (1 = after each; 0 = off). Combines with the
    /// interval.
    #[serde(default)]
    pub update_every_sends: u32,
    /// Workload starts here (the universe is set up before).
    #[serde(default = "d_start")]
    pub start_s: f64,
}

fn d_msg_interval() -> f64 {
    10.0
}
fn d_msg_bytes() -> usize {
    200
}
fn d_start() -> f64 {
    5.0
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            message_interval_s: d_msg_interval(),
            message_bytes: d_msg_bytes(),
            update_interval_s: 0.0,
            update_every_sends: 0,
            start_s: d_start(),
        }
    }
}

/// Knobs of `mmls_core::Config` (the core's own milliseconds).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineSpec {
    #[serde(default = "d_commit_delay")]
    pub commit_delay_ms: u64,
    /// PSK imports alone wait up to this long and not for a send: one
    /// commit covers every update heard meanwhile (`Config::import_window_ms`;
    /// absent: the draft's import before every send).
    #[serde(default)]
    pub import_window_ms: Option<u64>,
    /// Forward-secrecy bound on exported PSKs (hours of virtual time); they
    /// are otherwise kept while a member may still import them.
    #[serde(default = "d_psk_max_age_h")]
    pub psk_max_age_h: f64,
    #[serde(default = "d_log_retention")]
    pub log_retention: u64,
    #[serde(default = "d_fetch_retry")]
    pub fetch_retry_ms: u64,
    #[serde(default = "d_rejoin_after")]
    pub rejoin_after_ms: u64,
    #[serde(default = "d_kp_retry")]
    pub kp_retry_ms: u64,
    /// Leaf rotation (an update also rotates the member's leaf in every
    /// other send group; about 2 commits per member per update). Off, an
    /// update costs one PSK-only commit per other member: cheaper, for
    /// studying the PSK mechanism alone at scale, with weaker PCS.
    #[serde(default = "d_true")]
    pub rotate_leaves: bool,
    /// Decoded send groups each node keeps in memory between steps
    /// (`Config::group_cache`; absent: all). What lets 256 members fit:
    /// a node's memory is then its store's share, not N decoded groups.
    #[serde(default)]
    pub group_cache: Option<usize>,
}

fn d_true() -> bool {
    true
}

fn d_commit_delay() -> u64 {
    500
}
fn d_psk_max_age_h() -> f64 {
    24.0
}
fn d_log_retention() -> u64 {
    100_000
}
fn d_fetch_retry() -> u64 {
    1_000
}
fn d_rejoin_after() -> u64 {
    30_000
}
fn d_kp_retry() -> u64 {
    2_000
}

impl Default for EngineSpec {
    fn default() -> Self {
        EngineSpec {
            commit_delay_ms: d_commit_delay(),
            import_window_ms: None,
            psk_max_age_h: d_psk_max_age_h(),
            log_retention: d_log_retention(),
            fetch_retry_ms: d_fetch_retry(),
            rejoin_after_ms: d_rejoin_after(),
            kp_retry_ms: d_kp_retry(),
            rotate_leaves: true,
            group_cache: None,
        }
    }
}

/// How gossip travels: gossipsub's mesh (the node's) or a flood.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GossipMode {
    /// gossipsub 1.2: eager push to a mesh of about `d` neighbours per
    /// topic, IHAVE/IWANT to a few others, IDONTWANT.
    Mesh,
    /// Every message to every reachable neighbour (the simulator before
    /// it modelled gossipsub; for comparison).
    Flood,
}

/// The gossip overlay (`overlay::Overlay`): gossipsub's parameters, with
/// its defaults, except the heartbeat (the node's 700 ms,
/// `node/src/swarm.rs`) and `flood_publish` (off: eager push to the mesh
/// only).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GossipSpec {
    #[serde(default = "d_gossip_mode")]
    pub mode: GossipMode,
    /// Mesh degree per topic: the target, and the bounds a heartbeat
    /// repairs to.
    #[serde(default = "d_mesh_d")]
    pub d: usize,
    #[serde(default = "d_mesh_d_lo")]
    pub d_lo: usize,
    #[serde(default = "d_mesh_d_hi")]
    pub d_hi: usize,
    /// Non-mesh neighbours a node sends IHAVE to per heartbeat (at least;
    /// a quarter of them if that is more).
    #[serde(default = "d_lazy")]
    pub d_lazy: usize,
    #[serde(default = "d_heartbeat")]
    pub heartbeat_ms: u64,
    /// Heartbeats of message ids an IHAVE announces.
    #[serde(default = "d_history_gossip")]
    pub history_gossip: usize,
    /// Heartbeats a message stays servable to an IWANT.
    #[serde(default = "d_history_length")]
    pub history_length: usize,
    /// A node's own publish goes to every reachable neighbour, not only
    /// its mesh. The node sets it today (rust-libp2p's default); off, an
    /// 8-member LAN puts 36x the published bytes on the wire instead of
    /// 42x (every neighbour that got it from the publisher forwards it to
    /// its mesh at once, before any IDONTWANT can arrive).
    #[serde(default)]
    pub flood_publish: bool,
}

fn d_gossip_mode() -> GossipMode {
    GossipMode::Mesh
}
fn d_mesh_d() -> usize {
    6
}
fn d_mesh_d_lo() -> usize {
    5
}
fn d_mesh_d_hi() -> usize {
    12
}
fn d_lazy() -> usize {
    6
}
fn d_heartbeat() -> u64 {
    700
}
fn d_history_gossip() -> usize {
    3
}
fn d_history_length() -> usize {
    5
}

impl Default for GossipSpec {
    fn default() -> Self {
        GossipSpec {
            mode: d_gossip_mode(),
            d: d_mesh_d(),
            d_lo: d_mesh_d_lo(),
            d_hi: d_mesh_d_hi(),
            d_lazy: d_lazy(),
            heartbeat_ms: d_heartbeat(),
            history_gossip: d_history_gossip(),
            history_length: d_history_length(),
            flood_publish: false,
        }
    }
}

/// How the simulator drives the engines.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimSpec {
    /// Every member's `tick(now)` runs this often (virtual ms).
    #[serde(default = "d_tick")]
    pub tick_ms: u64,
    /// Every member exchanges sync summaries with each reachable neighbour
    /// this often (virtual s).
    #[serde(default = "d_sync")]
    pub sync_interval_s: f64,
    /// After `duration_s`: no workload, no loss, partitions healed, then
    /// this long to settle before convergence is checked.
    #[serde(default = "d_quiet")]
    pub quiet_s: f64,
    /// Time-series sampling interval (0 = about 300 samples per run).
    #[serde(default)]
    pub sample_s: f64,
    /// When member 0 creates the universe.
    #[serde(default = "d_create")]
    pub create_s: f64,
    /// A sync request without an answer for this long has failed (the sync
    /// agent then asks another peer); modelled links lose requests.
    #[serde(default = "d_request_timeout")]
    pub request_timeout_s: f64,
}

fn d_tick() -> u64 {
    250
}
fn d_sync() -> f64 {
    5.0
}
fn d_quiet() -> f64 {
    120.0
}
fn d_request_timeout() -> f64 {
    5.0
}
fn d_create() -> f64 {
    1.0
}

impl Default for SimSpec {
    fn default() -> Self {
        SimSpec {
            tick_ms: d_tick(),
            sync_interval_s: d_sync(),
            quiet_s: d_quiet(),
            sample_s: 0.0,
            create_s: d_create(),
            request_timeout_s: d_request_timeout(),
        }
    }
}

/// Links between different groups are down from `at_s` to `heal_s`.
/// Members listed in no group form one more group together.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub at_s: f64,
    /// Absent: heals only when the quiet period starts.
    #[serde(default)]
    pub heal_s: Option<f64>,
    pub groups: Vec<Vec<usize>>,
}

/// A node goes offline (all its links down) and maybe comes back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Offline {
    pub member: usize,
    pub at_s: f64,
    /// Absent: never comes back.
    #[serde(default)]
    pub back_s: Option<f64>,
    /// Comes back with an empty store (same identity) and calls
    /// `recover_universe`.
    #[serde(default)]
    pub lose_state: bool,
}

/// The attacker copies the member's whole store at `at_s`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Compromise {
    pub member: usize,
    pub at_s: f64,
}

/// The admin (member 0) adds node `member` (an index >= `members`) to the
/// universe. The node runs from the start (announcing its KeyPackage).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Join {
    pub member: usize,
    pub at_s: f64,
}

/// The admin (member 0) removes `member` from the universe.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Remove {
    pub member: usize,
    pub at_s: f64,
}

/// A scenario that cannot be run, with the field at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioError {
    pub source: String,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.message)
    }
}

impl std::error::Error for ScenarioError {}

/// The scenarios shipped in `simulations/scenarios/`, embedded.
pub const BUILTIN: &[(&str, &str)] = &[
    ("lan-team", include_str!("../scenarios/lan-team.toml")),
    (
        "mesh-radio-lossy",
        include_str!("../scenarios/mesh-radio-lossy.toml"),
    ),
    (
        "long-partition",
        include_str!("../scenarios/long-partition.toml"),
    ),
    ("churn", include_str!("../scenarios/churn.toml")),
    ("compromise", include_str!("../scenarios/compromise.toml")),
    ("scale-64", include_str!("../scenarios/scale-64.toml")),
    (
        "split-offline",
        include_str!("../scenarios/split-offline.toml"),
    ),
    ("radio-mesh", include_str!("../scenarios/radio-mesh.toml")),
];

impl Scenario {
    /// Parses and validates TOML text; `source` names it in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Scenario, ScenarioError> {
        let mut sc: Scenario = toml::from_str(text).map_err(|e| ScenarioError {
            source: source.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        if sc.name.is_empty() {
            sc.name = Path::new(source)
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| source.to_string());
        }
        sc.validate().map_err(|message| ScenarioError {
            source: source.to_string(),
            message,
        })?;
        Ok(sc)
    }

    /// A shipped scenario by name (`lan-team`, ...), or a file path.
    pub fn load(name_or_path: &str) -> Result<Scenario, ScenarioError> {
        let stem = name_or_path.strip_suffix(".toml").unwrap_or(name_or_path);
        let path = Path::new(name_or_path);
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
                source: name_or_path.to_string(),
                message: format!("cannot read: {e}"),
            })?;
            return Scenario::from_toml(&text, name_or_path);
        }
        if let Some((n, text)) = BUILTIN.iter().find(|(n, _)| *n == stem) {
            return Scenario::from_toml(text, &format!("{n}.toml"));
        }
        let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
        Err(ScenarioError {
            source: name_or_path.to_string(),
            message: format!(
                "no such file, and not a shipped scenario (shipped: {})",
                names.join(", ")
            ),
        })
    }

    /// Every node: the initial members plus the joiners.
    pub fn nodes(&self) -> usize {
        self.members + self.joins.len()
    }

    /// Virtual end of the run (workload plus quiet period), seconds.
    pub fn end_s(&self) -> f64 {
        self.duration_s + self.sim.quiet_s
    }

    pub fn validate(&self) -> Result<(), String> {
        let finite = |v: f64, what: &str| -> Result<(), String> {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{what} must be a finite number >= 0 (got {v})"));
            }
            Ok(())
        };
        if self.members < 2 {
            return Err(format!("members must be at least 2 (got {})", self.members));
        }
        if self.members > 1024 {
            return Err(format!(
                "members must be at most 1024 (got {})",
                self.members
            ));
        }
        finite(self.duration_s, "duration_s")?;
        if self.duration_s <= 0.0 {
            return Err("duration_s must be > 0".into());
        }
        if self.profile != "mmls-00" && self.profile != "dmls" {
            return Err(format!(
                "profile must be \"mmls-00\" or \"dmls\" (got {:?})",
                self.profile
            ));
        }
        let n = &self.network;
        finite(n.latency_ms, "network.latency_ms")?;
        finite(n.jitter_ms, "network.jitter_ms")?;
        finite(n.max_queue_ms, "network.max_queue_ms")?;
        if !(0.0..1.0).contains(&n.loss) {
            return Err(format!("network.loss must be in [0, 1) (got {})", n.loss));
        }
        if let Some(b) = n.bandwidth_kbps {
            if !b.is_finite() || b <= 0.0 {
                return Err(format!("network.bandwidth_kbps must be > 0 (got {b})"));
            }
        }
        finite(n.gossip_cache_s, "network.gossip_cache_s")?;
        if n.gossip_cache_s <= 0.0 {
            return Err("network.gossip_cache_s must be > 0".into());
        }
        if let Some(l) = n.inter_cluster_latency_ms {
            finite(l, "network.inter_cluster_latency_ms")?;
        }
        if n.topology == TopologyKind::Clusters && (n.clusters < 1 || n.clusters > self.nodes()) {
            return Err(format!(
                "network.clusters must be in 1..={} (got {})",
                self.nodes(),
                n.clusters
            ));
        }
        if n.topology == TopologyKind::Geometric && !(n.radius > 0.0 && n.radius <= 1.5) {
            return Err(format!(
                "network.radius must be in (0, 1.5] (got {})",
                n.radius
            ));
        }
        if n.topology == TopologyKind::Random && n.degree < 2 {
            return Err(format!(
                "network.degree must be at least 2 (got {})",
                n.degree
            ));
        }
        let w = &self.workload;
        finite(w.message_interval_s, "workload.message_interval_s")?;
        finite(w.update_interval_s, "workload.update_interval_s")?;
        finite(w.start_s, "workload.start_s")?;
        if w.message_interval_s > 0.0 && w.message_interval_s < 0.01 {
            return Err("workload.message_interval_s must be 0 or at least 0.01".into());
        }
        if w.update_interval_s > 0.0 && w.update_interval_s < 0.1 {
            return Err("workload.update_interval_s must be 0 or at least 0.1".into());
        }
        if w.message_bytes < 8 || w.message_bytes > 256 * 1024 {
            return Err(format!(
                "workload.message_bytes must be in 8..=262144 (got {})",
                w.message_bytes
            ));
        }
        let s = &self.sim;
        if s.tick_ms < 10 || s.tick_ms > 60_000 {
            return Err(format!(
                "sim.tick_ms must be in 10..=60000 (got {})",
                s.tick_ms
            ));
        }
        finite(s.sync_interval_s, "sim.sync_interval_s")?;
        if s.sync_interval_s < 0.1 {
            return Err("sim.sync_interval_s must be at least 0.1".into());
        }
        let g = &self.gossip;
        if !(1 <= g.d_lo && g.d_lo <= g.d && g.d <= g.d_hi) {
            return Err(format!(
                "gossip: need 1 <= d_lo <= d <= d_hi (got d_lo {}, d {}, d_hi {})",
                g.d_lo, g.d, g.d_hi
            ));
        }
        if g.heartbeat_ms < 10 || g.heartbeat_ms > 60_000 {
            return Err(format!(
                "gossip.heartbeat_ms must be in 10..=60000 (got {})",
                g.heartbeat_ms
            ));
        }
        if g.history_gossip < 1 || g.history_length < g.history_gossip {
            return Err(format!(
                "gossip: need 1 <= history_gossip <= history_length (got {} and {})",
                g.history_gossip, g.history_length
            ));
        }
        finite(s.quiet_s, "sim.quiet_s")?;
        finite(s.sample_s, "sim.sample_s")?;
        finite(s.create_s, "sim.create_s")?;
        if self.end_s() > MAX_VIRTUAL_S {
            return Err(format!(
                "duration_s + sim.quiet_s must be at most {MAX_VIRTUAL_S} s (got {})",
                self.end_s()
            ));
        }
        if s.create_s >= self.duration_s {
            return Err("sim.create_s must be before duration_s".into());
        }
        if self.engine.log_retention < 1 {
            return Err("engine.log_retention must be at least 1".into());
        }
        if !(self.engine.psk_max_age_h.is_finite() && self.engine.psk_max_age_h > 0.0) {
            return Err("engine.psk_max_age_h must be a positive number of hours".into());
        }
        let nodes = self.nodes();
        let in_range = |m: usize, what: &str| -> Result<(), String> {
            if m >= nodes {
                return Err(format!(
                    "{what}: member {m} is out of range (nodes are 0..{nodes}: {} members + {} joiners)",
                    self.members,
                    self.joins.len()
                ));
            }
            Ok(())
        };
        let in_run = |t: f64, what: &str| -> Result<(), String> {
            finite(t, what)?;
            if t > self.duration_s {
                return Err(format!(
                    "{what} = {t} is after duration_s = {}",
                    self.duration_s
                ));
            }
            Ok(())
        };
        for (i, p) in self.partitions.iter().enumerate() {
            let w = format!("partition[{i}]");
            in_run(p.at_s, &format!("{w}.at_s"))?;
            if let Some(h) = p.heal_s {
                in_run(h, &format!("{w}.heal_s"))?;
                if h <= p.at_s {
                    return Err(format!("{w}.heal_s ({h}) must be after at_s ({})", p.at_s));
                }
            }
            if p.groups.is_empty() {
                return Err(format!("{w}.groups must name at least one group"));
            }
            let mut seen = vec![false; nodes];
            for g in &p.groups {
                for &m in g {
                    in_range(m, &format!("{w}.groups"))?;
                    if seen[m] {
                        return Err(format!("{w}.groups: member {m} is in two groups"));
                    }
                    seen[m] = true;
                }
            }
        }
        for (i, o) in self.offline.iter().enumerate() {
            let w = format!("offline[{i}]");
            in_range(o.member, &format!("{w}.member"))?;
            in_run(o.at_s, &format!("{w}.at_s"))?;
            if let Some(b) = o.back_s {
                in_run(b, &format!("{w}.back_s"))?;
                if b <= o.at_s {
                    return Err(format!("{w}.back_s ({b}) must be after at_s ({})", o.at_s));
                }
            }
            if o.at_s < s.create_s {
                return Err(format!(
                    "{w}.at_s must be after sim.create_s ({})",
                    s.create_s
                ));
            }
        }
        // Offline periods of one member must not overlap.
        for (i, a) in self.offline.iter().enumerate() {
            for (j, b) in self.offline.iter().enumerate().skip(i + 1) {
                if a.member == b.member {
                    let a_end = a.back_s.unwrap_or(f64::INFINITY);
                    let b_end = b.back_s.unwrap_or(f64::INFINITY);
                    if a.at_s < b_end && b.at_s < a_end {
                        return Err(format!(
                            "offline[{i}] and offline[{j}] overlap for member {}",
                            a.member
                        ));
                    }
                }
            }
        }
        for (i, c) in self.compromises.iter().enumerate() {
            let w = format!("compromise[{i}]");
            in_range(c.member, &format!("{w}.member"))?;
            in_run(c.at_s, &format!("{w}.at_s"))?;
            if c.at_s < s.create_s {
                return Err(format!(
                    "{w}.at_s must be after sim.create_s ({})",
                    s.create_s
                ));
            }
        }
        let mut joiners = vec![];
        for (i, j) in self.joins.iter().enumerate() {
            let w = format!("join[{i}]");
            if j.member < self.members {
                return Err(format!(
                    "{w}.member: {} is already an initial member (joiners are numbered from members = {})",
                    j.member, self.members
                ));
            }
            in_range(j.member, &format!("{w}.member"))?;
            in_run(j.at_s, &format!("{w}.at_s"))?;
            if joiners.contains(&j.member) {
                return Err(format!("{w}.member: {} joins twice", j.member));
            }
            joiners.push(j.member);
        }
        joiners.sort_unstable();
        for (k, m) in joiners.iter().enumerate() {
            if *m != self.members + k {
                return Err(format!(
                    "join: joiners must be numbered {}..{} without gaps (missing {})",
                    self.members,
                    nodes,
                    self.members + k
                ));
            }
        }
        for (i, r) in self.removes.iter().enumerate() {
            let w = format!("remove[{i}]");
            in_range(r.member, &format!("{w}.member"))?;
            in_run(r.at_s, &format!("{w}.at_s"))?;
            if r.member == 0 {
                return Err(format!(
                    "{w}.member: member 0 is the admin and cannot be removed"
                ));
            }
            if let Some(j) = self.joins.iter().find(|j| j.member == r.member) {
                if r.at_s <= j.at_s {
                    return Err(format!(
                        "{w}: member {} is removed before it joins",
                        r.member
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_parse() {
        for (name, text) in BUILTIN {
            let sc = Scenario::from_toml(text, &format!("{name}.toml")).unwrap();
            assert_eq!(&sc.name, name);
            assert!(!sc.description.is_empty(), "{name} needs a description");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = Scenario::from_toml(
            "members = 4\nduration_s = 10\n[[partition]]\nat_s = 1\ngroups = [[0, 9]]\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(e.message.contains("partition[0].groups"), "{e}");
        let e =
            Scenario::from_toml("members = 4\nduration_s = 10\nbogus = 1\n", "x.toml").unwrap_err();
        assert!(e.message.contains("bogus"), "{e}");
        let e = Scenario::from_toml(
            "members = 4\nduration_s = 10\n[network]\nloss = 1.5\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(e.message.contains("network.loss"), "{e}");
        let e = Scenario::from_toml(
            "members = 4\nduration_s = 10\n[network]\ntopology = \"ring\"\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(e.message.contains("ring"), "{e}");
    }
}
