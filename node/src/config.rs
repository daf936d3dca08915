//! Node configuration: where the data lives, what to listen on and dial,
//! the local API, the engine's policy, and the driver's timers and limits.

use libp2p::Multiaddr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    /// The data dir (must be initialised: see [`crate::DataDir::init`]).
    pub data_dir: PathBuf,
    /// libp2p listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Static peers / bootstrap addresses: dialled at start and re-dialled
    /// whenever they are not connected.
    pub peers: Vec<Multiaddr>,
    /// Local peer discovery by mDNS (multicast on the LAN).
    pub mdns: bool,
    /// Where the local API listens (`None`: no API).
    pub api_addr: Option<SocketAddr>,
    /// Serve the API on a non-loopback address. Off unless set explicitly:
    /// the token is the only protection, and it travels in clear HTTP.
    pub allow_remote_api: bool,
    /// The engine's policy.
    pub engine: mmls_core::Config,
    /// The driver's timers.
    pub timing: Timing,
    /// The driver's bounds against floods.
    pub limits: Limits,
    /// Announce the name of `node.json` to the members of our universes
    /// (an in-band text in our send group, hidden from conversations; see
    /// `names.rs`). On for `mmls run`, off by default so that embedders and
    /// tests count only their own texts.
    pub announce_name: bool,
}

#[derive(Debug, Clone)]
pub struct Timing {
    /// Engine tick (commit delays, fetch retries, rejoins).
    pub tick: Duration,
    /// Catch-up sync: summaries are exchanged with every peer this often
    /// (and on every new connection).
    pub sync_interval: Duration,
    /// Known peers (static, or found by mDNS) that are not connected are
    /// re-dialled this often: a link that comes back is used within this
    /// delay. One dial per absent peer per interval is cheap next to a
    /// partition that lasts seconds longer than it has to.
    pub redial_interval: Duration,
    /// A peer found by mDNS is re-dialled until it has been out of reach
    /// this long (mDNS itself forgets it after its record's TTL, 6 min, and
    /// finds it again only at a later query).
    pub forget_after: Duration,
    /// Every connection is pinged this often (a pong is also a round-trip
    /// sample for the link policy) ...
    pub ping_interval: Duration,
    /// ... and closed after `ping_interval + ping_timeout` of silence at
    /// least: the link policy (`mmls_core::link`) waits longer where the
    /// measured round trip or what we queued explain the silence, so a
    /// slow radio is told from a dead link. A TCP connection over a dead
    /// link otherwise stays open for minutes while the kernel backs off
    /// its retransmissions.
    pub ping_timeout: Duration,
    /// A dial (connect plus handshakes) that has not finished by then is
    /// given up.
    pub dial_timeout: Duration,
    /// Queued gossip publishes are retried this often (and whenever a peer
    /// subscribes).
    pub republish_interval: Duration,
    /// How long `create_universe` / `add_member` wait for a member's
    /// KeyPackage to arrive.
    pub key_package_wait: Duration,
    /// Timeout of one sync request.
    pub request_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            tick: Duration::from_millis(200),
            sync_interval: Duration::from_secs(5),
            redial_interval: Duration::from_millis(500),
            forget_after: Duration::from_secs(3600),
            ping_interval: Duration::from_secs(2),
            ping_timeout: Duration::from_secs(1),
            // Connect, Noise and Yamux take several round trips, each up to
            // seconds on a loaded radio link.
            dial_timeout: Duration::from_secs(20),
            republish_interval: Duration::from_secs(1),
            key_package_wait: Duration::from_secs(10),
            request_timeout: Duration::from_secs(20),
        }
    }
}

impl Timing {
    /// The link policy these timings set.
    pub fn link_config(&self) -> mmls_core::link::LinkConfig {
        let ms = |d: Duration| d.as_millis() as u64;
        mmls_core::link::LinkConfig {
            ping_interval_ms: ms(self.ping_interval),
            min_silence_ms: ms(self.ping_interval + self.ping_timeout),
            ..mmls_core::link::LinkConfig::default()
        }
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Inbound sync requests per peer: sustained rate (per second) and burst.
    pub sync_rate: f64,
    pub sync_burst: f64,
    /// Inbound gossip messages per propagating peer: rate and burst.
    pub gossip_rate: f64,
    pub gossip_burst: f64,
    /// Gossip publishes kept for retry while no peer is subscribed.
    pub max_queued_publishes: usize,
    pub max_queued_bytes: usize,
    /// API command queue (requests beyond it wait).
    pub command_queue: usize,
    /// Events buffered per API subscriber before it lags.
    pub event_buffer: usize,
    /// Connections in total and per peer.
    pub max_connections: u32,
    pub max_connections_per_peer: u32,
    /// Largest HTTP request body the API accepts.
    pub max_api_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sync_rate: 50.0,
            sync_burst: 200.0,
            gossip_rate: 2_000.0,
            gossip_burst: 10_000.0,
            max_queued_publishes: 10_000,
            max_queued_bytes: 64 << 20,
            command_queue: 256,
            event_buffer: 16_384,
            max_connections: 256,
            max_connections_per_peer: 4,
            max_api_body: 2 << 20,
        }
    }
}

impl Config {
    /// Defaults for tests and in-process use: loopback only (TCP and QUIC on
    /// ephemeral ports), no mDNS, the API on `127.0.0.1:0`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            listen: vec![
                "/ip4/127.0.0.1/tcp/0".parse().expect("static multiaddr"),
                "/ip4/127.0.0.1/udp/0/quic-v1"
                    .parse()
                    .expect("static multiaddr"),
            ],
            peers: vec![],
            mdns: false,
            api_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            allow_remote_api: false,
            engine: mmls_core::Config::default(),
            timing: Timing::default(),
            limits: Limits::default(),
            announce_name: false,
        }
    }

    /// Defaults for a daemon on a LAN: all interfaces, fixed-free ports,
    /// mDNS on (the CLI's `mmls run`).
    pub fn daemon(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".parse().expect("static multiaddr"),
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("static multiaddr"),
            ],
            mdns: true,
            announce_name: true,
            ..Config::new(data_dir)
        }
    }
}
