//! Helpers for the node's integration tests: real swarms on 127.0.0.1,
//! static dialling only (no mDNS), every wait bounded.
#![allow(dead_code)]

use node::mmls_core::{Delivered, Id32, MemberId, Profile, UniverseStatus};
use node::{Config, DataDir, Multiaddr, Node, NodeHandle};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Data dirs on tmpfs when there is one: the store fsyncs every step, and
/// the tests are about the network, not the disk.
pub fn root() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub struct TestNode {
    pub name: String,
    pub dir: PathBuf,
    pub h: NodeHandle,
    /// TCP listen address with /p2p/<id>.
    pub addr: Multiaddr,
}

impl TestNode {
    pub fn member(&self) -> MemberId {
        self.h.member_id()
    }
}

/// Test timing: sync every second so catch-up is quick.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::new(dir);
    c.api_addr = None;
    c.timing.sync_interval = Duration::from_secs(1);
    c.timing.redial_interval = Duration::from_secs(1);
    c
}

pub async fn start(root: &Path, name: &str) -> TestNode {
    start_with(root, name, |_| {}).await
}

pub async fn start_with(root: &Path, name: &str, tweak: impl FnOnce(&mut Config)) -> TestNode {
    let dir = root.join(name);
    if !dir.join("identity.key").exists() {
        DataDir::init(&dir, name).expect("init data dir");
    }
    let mut cfg = test_config(&dir);
    tweak(&mut cfg);
    let h = Node::start(cfg).await.expect("start node");
    let addrs = h.listen_addrs().await.expect("listen addrs");
    let tcp = addrs
        .iter()
        .find(|a| a.to_string().contains("/tcp/"))
        .cloned()
        .expect("a TCP listen address");
    let addr = tcp.with_p2p(h.peer_id()).expect("add /p2p");
    TestNode {
        name: name.to_string(),
        dir,
        h,
        addr,
    }
}

/// Polls `f` every 100 ms until it returns true or `limit` passes.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn peer_count(n: &TestNode) -> usize {
    n.h.peers().await.map(|p| p.len()).unwrap_or(0)
}

pub async fn connected(a: &TestNode, b: &TestNode) -> bool {
    a.h.peers()
        .await
        .map(|ps| ps.iter().any(|p| p.peer_id == b.h.peer_id()))
        .unwrap_or(false)
}

/// Dials b from a and waits until both see the connection.
pub async fn link(a: &TestNode, b: &TestNode) {
    a.h.dial(b.addr.clone()).await.expect("dial");
    wait_for(
        &format!("{} <-> {}", a.name, b.name),
        Duration::from_secs(15),
        || async { connected(a, b).await && connected(b, a).await },
    )
    .await;
}

/// Every node knows the universe, has its own send group, and is in one
/// group per member.
pub async fn universe_ready(nodes: &[&TestNode], u: Id32) -> bool {
    for n in nodes {
        match n.h.universe_status(u).await {
            Ok(s) => {
                if s.own_group.is_none() || s.groups.len() != nodes.len() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

pub async fn create_and_wait(creator: &TestNode, others: &[&TestNode], limit: Duration) -> Id32 {
    let members: Vec<MemberId> = others.iter().map(|n| n.member()).collect();
    let u = creator
        .h
        .create_universe("test", &members, Profile::Mmls00)
        .await
        .expect("create universe");
    let mut all = vec![creator];
    all.extend_from_slice(others);
    wait_for("universe ready everywhere", limit, || {
        let all = all.clone();
        async move { universe_ready(&all, u).await }
    })
    .await;
    u
}

/// Every delivered message of a universe on a node, in delivery order.
pub async fn all_messages(n: &TestNode, u: Id32) -> Vec<Delivered> {
    let mut out = vec![];
    let mut after = None;
    loop {
        let page = n.h.messages(u, after, 1000).await.expect("messages");
        if page.is_empty() {
            return out;
        }
        after = page.last().map(|d| d.cursor);
        out.extend(page);
    }
}

/// Checks exactly-once and per-sender order; returns (sender -> seqs).
pub fn check_order(node: &str, msgs: &[Delivered]) -> BTreeMap<MemberId, Vec<u64>> {
    let mut per: BTreeMap<MemberId, Vec<u64>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for d in msgs {
        assert!(
            seen.insert((d.sender.clone(), d.seq)),
            "{node}: message {} from {} delivered twice",
            d.seq,
            d.sender
        );
        let v = per.entry(d.sender.clone()).or_default();
        if let Some(last) = v.last() {
            assert!(
                d.seq > *last,
                "{node}: seq {} from {} after {}",
                d.seq,
                d.sender,
                last
            );
        }
        v.push(d.seq);
    }
    per
}

pub async fn count_from(n: &TestNode, u: Id32, sender: &MemberId) -> usize {
    all_messages(n, u)
        .await
        .iter()
        .filter(|d| d.sender == *sender)
        .count()
}

/// (group -> (epoch, auth)) as one node sees it.
pub fn group_view(s: &UniverseStatus) -> BTreeMap<Id32, (u64, String)> {
    s.groups
        .iter()
        .map(|g| (g.group, (g.epoch, g.auth.clone())))
        .collect()
}

/// Every node sees every group at the same epoch with the same epoch
/// authenticator hash, and nobody has imports left to commit.
pub async fn converged(nodes: &[&TestNode], u: Id32) -> bool {
    let mut views = vec![];
    for n in nodes {
        let Ok(s) = n.h.universe_status(u).await else {
            return false;
        };
        if s.pending_imports != 0
            || s.groups
                .iter()
                .any(|g| g.stale || g.blocked || g.buffered > 0)
        {
            return false;
        }
        views.push(group_view(&s));
    }
    views.windows(2).all(|w| w[0] == w[1]) && views[0].len() == nodes.len()
}

pub async fn shutdown_all(nodes: &[&TestNode]) {
    for n in nodes {
        n.h.shutdown().await;
    }
}
