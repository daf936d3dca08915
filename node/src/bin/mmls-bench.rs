//! End-to-end benchmark of in-process nodes on loopback:
//!
//! * latency: send -> `Message` event at every other node (p50, p99);
//! * throughput: every node sends 1 KB messages as fast as it can; messages
//!   per second until all are delivered everywhere;
//! * partition heal: the nodes split in two halves, each half sends
//!   `--partition-msgs` messages, then the halves reconnect; time until
//!   every node has every message and all send groups agree.
//!
//! `cargo run --release -p node --bin mmls-bench -- [--nodes 3,8]
//!  [--latency-msgs 200] [--throughput-msgs 100] [--partition-msgs 1000]
//!  [--disk]` (default: data dirs on /dev/shm when present; `--disk` puts
//! them on the real disk, where every batch of engine steps is an fsync).

use node::mmls_core::{Event, Id32, MemberId, Profile};
use node::{Config, DataDir, Node, NodeHandle};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Sends each node's client keeps in flight in the throughput phase.
const SENDS_IN_FLIGHT: usize = 32;

struct Opts {
    nodes: Vec<usize>,
    latency_msgs: usize,
    throughput_msgs: usize,
    partition_msgs: usize,
    disk: bool,
}

fn opts() -> Result<Opts, String> {
    let mut o = Opts {
        nodes: vec![3, 8],
        latency_msgs: 200,
        throughput_msgs: 100,
        partition_msgs: 1000,
        disk: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--nodes" => {
                o.nodes = val("--nodes")?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>().map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--latency-msgs" => o.latency_msgs = val(&a)?.parse().map_err(|e| format!("{e}"))?,
            "--throughput-msgs" => {
                o.throughput_msgs = val(&a)?.parse().map_err(|e| format!("{e}"))?
            }
            "--partition-msgs" => {
                o.partition_msgs = val(&a)?.parse().map_err(|e| format!("{e}"))?
            }
            "--disk" => o.disk = true,
            "-h" | "--help" => {
                return Err("usage: mmls-bench [--nodes 3,8] [--latency-msgs N] [--throughput-msgs N] [--partition-msgs N] [--disk]".into())
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if o.nodes.iter().any(|n| *n < 2) {
        return Err("every --nodes value must be at least 2".into());
    }
    Ok(o)
}

type Err = Box<dyn std::error::Error + Send + Sync>;

/// Arrival times of (receiver, sender, seq).
type Arrivals = Arc<Mutex<HashMap<(usize, MemberId, u64), Instant>>>;

struct Cluster {
    nodes: Vec<NodeHandle>,
    addrs: Vec<node::Multiaddr>,
    arrivals: Arrivals,
    _dir: tempfile::TempDir,
}

async fn start_cluster(n: usize, disk: bool) -> Result<Cluster, Err> {
    let dir = if !disk && Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")?
    } else {
        tempfile::tempdir()?
    };
    let arrivals: Arrivals = Arc::default();
    let mut nodes = vec![];
    let mut addrs = vec![];
    for i in 0..n {
        let d = dir.path().join(format!("n{i}"));
        DataDir::init(&d, &format!("n{i}"))?;
        let mut cfg = Config::new(&d);
        cfg.api_addr = None;
        cfg.listen.truncate(1); // TCP only: one connection per pair
        cfg.limits.event_buffer = 1 << 17;
        let h = Node::start(cfg).await?;
        let a = h
            .listen_addrs()
            .await?
            .into_iter()
            .next()
            .ok_or("no listen address")?
            .with_p2p(h.peer_id())
            .map_err(|_| "bad address")?;
        let mut rx = h.subscribe();
        let arr = arrivals.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(Event::Message(d)) => {
                        let now = Instant::now();
                        if let Ok(mut m) = arr.lock() {
                            m.insert((i, d.sender, d.seq), now);
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                        eprintln!("warning: bench receiver {i} lagged by {k} events")
                    }
                    Err(_) => break,
                }
            }
        });
        nodes.push(h);
        addrs.push(a);
    }
    for (i, h) in nodes.iter().enumerate() {
        for a in &addrs[i + 1..] {
            h.dial(a.clone()).await?;
        }
    }
    wait("full mesh", Duration::from_secs(30), || async {
        for h in &nodes {
            if h.peers().await.map(|p| p.len()).unwrap_or(0) < n - 1 {
                return false;
            }
        }
        true
    })
    .await?;
    Ok(Cluster {
        nodes,
        addrs,
        arrivals,
        _dir: dir,
    })
}

async fn wait<F, Fut>(what: &str, limit: Duration, mut f: F) -> Result<(), Err>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !f().await {
        if t.elapsed() > limit {
            return Err(format!("timed out after {limit:?}: {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn converged(nodes: &[NodeHandle], u: Id32) -> bool {
    let mut views = vec![];
    for h in nodes {
        let Ok(s) = h.universe_status(u).await else {
            return false;
        };
        if s.pending_imports != 0 || s.groups.iter().any(|g| g.stale || g.blocked) {
            return false;
        }
        let v: BTreeMap<Id32, (u64, String)> = s
            .groups
            .iter()
            .map(|g| (g.group, (g.epoch, g.auth.clone())))
            .collect();
        views.push(v);
    }
    views[0].len() == nodes.len() && views.windows(2).all(|w| w[0] == w[1])
}

fn delivered(c: &Cluster) -> usize {
    c.arrivals.lock().map(|m| m.len()).unwrap_or(0)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Row {
    n: usize,
    p50: Duration,
    p99: Duration,
    tput: f64,
    deliveries_per_s: f64,
    side_msgs: usize,
    heal: Duration,
}

async fn bench(n: usize, o: &Opts) -> Result<Row, Err> {
    let c = start_cluster(n, o.disk).await?;
    let members: Vec<MemberId> = c.nodes.iter().map(|h| h.member_id()).collect();
    let u = c.nodes[0]
        .create_universe("bench", &members[1..], Profile::Mmls00)
        .await?;
    wait("universe ready", Duration::from_secs(60), || async {
        for h in &c.nodes {
            match h.universe_status(u).await {
                Ok(s) if s.own_group.is_some() && s.groups.len() == n => {}
                _ => return false,
            }
        }
        true
    })
    .await?;
    wait("settled", Duration::from_secs(60), || {
        converged(&c.nodes, u)
    })
    .await?;

    // Latency: one message at a time, rotating senders.
    let mut sent: Vec<(usize, MemberId, u64, Instant)> = vec![];
    for k in 0..o.latency_msgs {
        let s = k % n;
        let t = Instant::now();
        let seq = c.nodes[s].send(u, format!("latency {k}")).await?;
        sent.push((s, members[s].clone(), seq, t));
        let want = (k + 1) * (n - 1);
        wait("latency delivery", Duration::from_secs(30), || async {
            delivered(&c) >= want
        })
        .await?;
    }
    let mut lats = vec![];
    {
        let m = c.arrivals.lock().map_err(|_| "poisoned")?;
        for (s, member, seq, t) in &sent {
            for r in 0..n {
                if r == *s {
                    continue;
                }
                let at = m
                    .get(&(r, member.clone(), *seq))
                    .ok_or("a latency message was not delivered")?;
                lats.push(at.duration_since(*t));
            }
        }
    }
    lats.sort();
    let (p50, p99) = (pct(&lats, 0.50), pct(&lats, 0.99));

    // Throughput: everyone sends 1 KB messages flat out.
    let base = delivered(&c);
    let body = vec![b'x'; 1024];
    let t = Instant::now();
    let mut tasks = vec![];
    for h in &c.nodes {
        let h = h.clone();
        let body = body.clone();
        let m = o.throughput_msgs;
        tasks.push(tokio::spawn(async move {
            // A client with sends in flight, as a busy app or script is:
            // each is acknowledged only once durable, and the node makes
            // those that arrive together durable with one flush.
            use futures::StreamExt;
            let mut acks = futures::stream::iter(0..m)
                .map(|_| h.send(u, &body))
                .buffer_unordered(SENDS_IN_FLIGHT);
            while let Some(r) = acks.next().await {
                r?;
            }
            Ok::<_, node::NodeError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let want = base + n * (n - 1) * o.throughput_msgs;
    wait("throughput delivery", Duration::from_secs(300), || async {
        delivered(&c) >= want
    })
    .await?;
    let el = t.elapsed().as_secs_f64();
    let tput = (n * o.throughput_msgs) as f64 / el;
    let deliveries_per_s = (n * (n - 1) * o.throughput_msgs) as f64 / el;
    wait("settled", Duration::from_secs(60), || {
        converged(&c.nodes, u)
    })
    .await?;

    // Partition and heal.
    let half = n / 2;
    for i in 0..half {
        for j in half..n {
            c.nodes[i].block_peer(c.nodes[j].peer_id()).await?;
            c.nodes[j].block_peer(c.nodes[i].peer_id()).await?;
        }
    }
    wait("partitioned", Duration::from_secs(30), || async {
        for h in &c.nodes[..half] {
            let ps = h.peers().await.unwrap_or_default();
            if ps
                .iter()
                .any(|p| c.nodes[half..].iter().any(|x| x.peer_id() == p.peer_id))
            {
                return false;
            }
        }
        true
    })
    .await?;
    let base = delivered(&c);
    let per_side = o.partition_msgs;
    let mut tasks = vec![];
    for (side, range) in [(0, 0..half), (1, half..n)] {
        let senders: Vec<NodeHandle> = c.nodes[range].to_vec();
        let k = senders.len();
        for (i, h) in senders.into_iter().enumerate() {
            let count = per_side / k + usize::from(i < per_side % k);
            tasks.push(tokio::spawn(async move {
                for j in 0..count {
                    h.send(u, format!("side {side} msg {j}")).await?;
                }
                Ok::<_, node::NodeError>(())
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    // Inside each side: (side size - 1) deliveries per message.
    let inside = per_side * (half - 1) + per_side * (n - half - 1);
    wait(
        "delivery inside the halves",
        Duration::from_secs(300),
        || async { delivered(&c) >= base + inside },
    )
    .await?;
    let t = Instant::now();
    for h in &c.nodes {
        h.unblock_all().await?;
    }
    for (i, h) in c.nodes.iter().enumerate() {
        for a in &c.addrs[i + 1..] {
            let _ = h.dial(a.clone()).await;
        }
    }
    let all = base + 2 * per_side * (n - 1);
    wait(
        "heal: every message everywhere",
        Duration::from_secs(600),
        || async { delivered(&c) >= all },
    )
    .await?;
    eprintln!(
        "  N = {n}: every message delivered {:.2} s after the heal",
        t.elapsed().as_secs_f64()
    );
    wait("heal: groups converged", Duration::from_secs(300), || {
        converged(&c.nodes, u)
    })
    .await?;
    let heal = t.elapsed();
    if delivered(&c) != all {
        return Err(format!("{} deliveries, expected {all} (duplicates?)", delivered(&c)).into());
    }
    for h in &c.nodes {
        h.shutdown().await;
    }
    Ok(Row {
        n,
        p50,
        p99,
        tput,
        deliveries_per_s,
        side_msgs: per_side,
        heal,
    })
}

#[tokio::main]
async fn main() {
    // Logs only when asked for (RUST_LOG=node=debug ...): they cost time.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let o = match opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    println!(
        "mmls-bench: {} nodes in-process on 127.0.0.1 (TCP), store on {}, {} latency msgs, {} x 1 KB msgs per node, {} msgs per side across the partition",
        o.nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" and "),
        if o.disk { "disk" } else { "tmpfs" },
        o.latency_msgs,
        o.throughput_msgs,
        o.partition_msgs
    );
    let mut rows = vec![];
    for &n in &o.nodes {
        eprintln!("running N = {n} ...");
        match bench(n, &o).await {
            Ok(r) => rows.push(r),
            Err(e) => {
                eprintln!("N = {n} failed: {e}");
                std::process::exit(1);
            }
        }
    }
    println!();
    println!(
        "| nodes | latency p50 | latency p99 | throughput (1 KB msg/s sent) | deliveries/s | heal: msgs per side | convergence after heal |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.1} ms | {:.1} ms | {:.0} | {:.0} | {} | {:.2} s |",
            r.n,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.tput,
            r.deliveries_per_s,
            r.side_msgs,
            r.heal.as_secs_f64()
        );
    }
}
