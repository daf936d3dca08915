//! `mmls demo`: N nodes in this process on 127.0.0.1 (temporary data dirs,
//! no mDNS, dialled to each other explicitly) play out the life of a
//! universe: create, chat, partition, chat on both sides, heal, converge,
//! and a post-compromise-security update round. Every step ends in checks;
//! every wait is bounded; the exit code is 0 only if every check held.

use crate::args::DemoArgs;
use crate::output::{short_hex, Table};
use anyhow::{anyhow, bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use mmls_core::{Delivered, Event, Id32, MemberId, Profile, UniverseStatus};
use node::{Multiaddr, Node, NodeHandle, PeerId};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

const STEPS: usize = 7;
const POLL: Duration = Duration::from_millis(150);

macro_rules! say {
    () => { writeln!(std::io::stdout().lock())? };
    ($($arg:tt)*) => { writeln!(std::io::stdout().lock(), $($arg)*)? };
}

pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    if std::env::var_os("RUST_LOG").is_some() {
        crate::run::init_tracing("warn");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let n = args.nodes as usize;
    let timeout = Duration::from_secs(args.timeout.max(1));
    rt.block_on(async move {
        let mut demo = Demo::new(n, timeout);
        let result = demo.play().await;
        let ok = match result {
            Ok(()) => true,
            Err(e) => {
                if e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
                {
                    demo.stop_all().await;
                    return Ok(ExitCode::SUCCESS);
                }
                println!();
                println!("✗ FAILED: {e:#}");
                if let Err(d) = demo.diagnostics().await {
                    println!("  (no diagnostics: {d:#})");
                }
                false
            }
        };
        demo.stop_all().await;
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

struct DemoNode {
    name: String,
    handle: NodeHandle,
    member: MemberId,
    peer: PeerId,
    addr: Multiaddr,
    // Kept until the node has stopped, then deleted.
    _dir: tempfile::TempDir,
}

/// Which messages a node should have: everything sent by the others, except
/// what the other side of the partition sent while it lasted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    Everyone,
    Side(usize),
}

struct SentMsg {
    from: usize,
    seq: u64,
    reach: Reach,
}

/// One node's view of the universe, polled.
struct View {
    st: Option<UniverseStatus>,
    msgs: Vec<Delivered>,
}

enum Probe {
    Done,
    Waiting(String),
}

struct Demo {
    n: usize,
    timeout: Duration,
    nodes: Vec<DemoNode>,
    universe: Option<Id32>,
    sent: Vec<SentMsg>,
    /// side[i] = 0 or 1 while partitioned.
    side: Vec<usize>,
    partitioned: bool,
    checks: Vec<String>,
    converge_time: Option<Duration>,
    pcs_time: Option<Duration>,
    started: Instant,
}

impl Demo {
    fn new(n: usize, timeout: Duration) -> Demo {
        let half = n.div_ceil(2);
        Demo {
            n,
            timeout,
            nodes: vec![],
            universe: None,
            sent: vec![],
            side: (0..n).map(|i| usize::from(i >= half)).collect(),
            partitioned: false,
            checks: vec![],
            converge_time: None,
            pcs_time: None,
            started: Instant::now(),
        }
    }

    fn uid(&self) -> anyhow::Result<Id32> {
        self.universe.ok_or_else(|| anyhow!("no universe yet"))
    }

    fn name_of(&self, m: &MemberId) -> String {
        self.nodes
            .iter()
            .find(|n| &n.member == m)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| m.short().to_string())
    }

    fn side_names(&self, s: usize) -> String {
        (0..self.n)
            .filter(|&i| self.side[i] == s)
            .map(|i| self.nodes[i].name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn pass(&mut self, what: impl Into<String>, took: Option<Duration>) -> anyhow::Result<()> {
        let what = what.into();
        match took {
            Some(d) => say!("      ✓ {what} ({})", secs(d)),
            None => say!("      ✓ {what}"),
        }
        self.checks.push(what);
        Ok(())
    }

    fn step(&self, k: usize, title: &str) -> anyhow::Result<()> {
        say!();
        say!(
            "[{k}/{STEPS}] {title}  (t = {})",
            secs(self.started.elapsed())
        );
        Ok(())
    }

    /// Polls `probe` until it reports `Done` on `stable` consecutive polls,
    /// with a spinner; fails after the timeout with the last reason.
    async fn wait_for<F>(&self, what: &str, stable: usize, mut probe: F) -> anyhow::Result<Duration>
    where
        F: AsyncFnMut() -> anyhow::Result<Probe>,
    {
        let t0 = Instant::now();
        let spinner = ProgressBar::new_spinner();
        spinner.set_style(
            ProgressStyle::with_template("      {spinner} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        spinner.set_message(what.to_string());
        spinner.enable_steady_tick(Duration::from_millis(100));
        let mut streak = 0;
        let mut last = String::from("no answer yet");
        let r = loop {
            match probe().await {
                Err(e) => break Err(e.context(what.to_string())),
                Ok(Probe::Done) => {
                    streak += 1;
                    if streak >= stable {
                        break Ok(t0.elapsed());
                    }
                }
                Ok(Probe::Waiting(why)) => {
                    streak = 0;
                    spinner.set_message(format!("{what}: {why}"));
                    last = why;
                }
            }
            if t0.elapsed() > self.timeout {
                break Err(anyhow!(
                    "{what}: not reached within {} s (last: {last})",
                    self.timeout.as_secs()
                ));
            }
            tokio::time::sleep(POLL).await;
        };
        spinner.finish_and_clear();
        r
    }

    async fn views(&self) -> anyhow::Result<Vec<View>> {
        let u = self.uid()?;
        let mut out = vec![];
        for n in &self.nodes {
            let st = n.handle.universe_status(u).await.ok();
            let msgs = if st.is_some() {
                n.handle.messages(u, None, 1_000_000).await?
            } else {
                vec![]
            };
            out.push(View { st, msgs });
        }
        Ok(out)
    }

    /// The (sender, seq) pairs node `i` should have delivered: while the
    /// network is split, only its own side's; once healed, everything.
    fn expected(&self, i: usize) -> BTreeSet<(MemberId, u64)> {
        self.sent
            .iter()
            .filter(|s| s.from != i)
            .filter(|s| match s.reach {
                Reach::Everyone => true,
                Reach::Side(x) => !self.partitioned || self.side[i] == x,
            })
            .map(|s| (self.nodes[s.from].member.clone(), s.seq))
            .collect()
    }

    /// Ok(None): node i has exactly the expected messages, each once.
    /// Ok(Some(missing)): some still missing. Err: a duplicate or a message
    /// it must not have (a broken check, not a wait).
    fn message_check(&self, i: usize, v: &View) -> anyhow::Result<Option<usize>> {
        let want = self.expected(i);
        let mut seen = BTreeSet::new();
        for d in &v.msgs {
            let key = (d.sender.clone(), d.seq);
            if !seen.insert(key.clone()) {
                bail!(
                    "{} delivered message #{} of {} twice",
                    self.nodes[i].name,
                    d.seq,
                    self.name_of(&d.sender)
                );
            }
            if !want.contains(&key) {
                bail!(
                    "{} delivered message #{} of {}, which it should not have (across the partition?)",
                    self.nodes[i].name,
                    d.seq,
                    self.name_of(&d.sender)
                );
            }
        }
        let missing = want.len() - seen.len();
        Ok((missing > 0).then_some(missing))
    }

    /// Every node has exactly its expected messages.
    fn messages_probe(&self, vs: &[View]) -> anyhow::Result<Probe> {
        let mut lagging = vec![];
        for (i, v) in vs.iter().enumerate() {
            if let Some(missing) = self.message_check(i, v)? {
                lagging.push(format!("{} misses {missing}", self.nodes[i].name));
            }
        }
        Ok(if lagging.is_empty() {
            Probe::Done
        } else {
            Probe::Waiting(lagging.join(", "))
        })
    }

    /// Every node (among `who`) sees every send group at the same epoch with
    /// the same epoch authenticator, nothing buffered, blocked or pending.
    fn epochs_probe(&self, vs: &[View], who: &[usize]) -> Probe {
        // (node, per group: epoch and authenticator hash)
        type GroupView = BTreeMap<Id32, (u64, String)>;
        let mut reference: Option<(usize, GroupView)> = None;
        for &i in who {
            let Some(st) = &vs[i].st else {
                return Probe::Waiting(format!("{} has not joined", self.nodes[i].name));
            };
            if st.pending_imports > 0 {
                return Probe::Waiting(format!(
                    "{} has {} import(s) to commit",
                    self.nodes[i].name, st.pending_imports
                ));
            }
            if let Some(g) = st.groups.iter().find(|g| g.blocked || g.buffered > 0) {
                return Probe::Waiting(format!(
                    "{} is catching up in {}'s group{}",
                    self.nodes[i].name,
                    self.name_of(&g.owner),
                    g.waiting_for
                        .as_ref()
                        .map(|w| format!(" (waiting for {w})"))
                        .unwrap_or_default()
                ));
            }
            let map: BTreeMap<Id32, (u64, String)> = st
                .groups
                .iter()
                .map(|g| (g.group, (g.epoch, g.auth.clone())))
                .collect();
            match &reference {
                None => reference = Some((i, map)),
                Some((r, rmap)) => {
                    if let Some((g, (e, _))) = rmap.iter().find(|(g, v)| map.get(g) != Some(v)) {
                        let owner = self.group_owner(st, g);
                        let theirs = map
                            .get(g)
                            .map(|(e, _)| format!("epoch {e}"))
                            .unwrap_or_else(|| "nothing".into());
                        return Probe::Waiting(format!(
                            "{owner}'s group: {} at epoch {e}, {} at {theirs}",
                            self.nodes[*r].name, self.nodes[i].name
                        ));
                    }
                    if map.len() != rmap.len() {
                        return Probe::Waiting(format!(
                            "{} knows {} groups, {} knows {}",
                            self.nodes[*r].name,
                            rmap.len(),
                            self.nodes[i].name,
                            map.len()
                        ));
                    }
                }
            }
        }
        Probe::Done
    }

    fn group_owner(&self, st: &UniverseStatus, g: &Id32) -> String {
        st.groups
            .iter()
            .find(|x| &x.group == g)
            .map(|x| self.name_of(&x.owner))
            .unwrap_or_else(|| g.short())
    }

    /// Own-group epoch of node i as node i sees it.
    fn own_epoch(v: &View) -> Option<u64> {
        let st = v.st.as_ref()?;
        let g = st.own_group?;
        st.groups.iter().find(|x| x.group == g).map(|x| x.epoch)
    }

    async fn send(&mut self, i: usize, text: String, reach: Reach) -> anyhow::Result<()> {
        let u = self.uid()?;
        let seq = self.nodes[i]
            .handle
            .send(u, text.as_bytes())
            .await
            .with_context(|| format!("{} could not send", self.nodes[i].name))?;
        self.sent.push(SentMsg {
            from: i,
            seq,
            reach,
        });
        Ok(())
    }

    /// Connected peers of each node.
    async fn peer_sets(&self) -> anyhow::Result<Vec<BTreeSet<PeerId>>> {
        let mut out = vec![];
        for n in &self.nodes {
            let ps = n.handle.peers().await?;
            out.push(ps.into_iter().map(|p| p.peer_id).collect());
        }
        Ok(out)
    }

    /// Every node is connected to exactly the peers it should reach.
    async fn connectivity_probe(&self) -> anyhow::Result<Probe> {
        let sets = self.peer_sets().await?;
        for (i, have) in sets.iter().enumerate() {
            let want: BTreeSet<PeerId> = (0..self.n)
                .filter(|&j| j != i && (!self.partitioned || self.side[j] == self.side[i]))
                .map(|j| self.nodes[j].peer)
                .collect();
            if !want.is_subset(have) {
                return Ok(Probe::Waiting(format!(
                    "{} sees {} of {} peers",
                    self.nodes[i].name,
                    want.intersection(have).count(),
                    want.len()
                )));
            }
            if let Some(p) = have.difference(&want).next() {
                return Ok(Probe::Waiting(format!(
                    "{} still connected to {}",
                    self.nodes[i].name,
                    self.nodes
                        .iter()
                        .find(|n| &n.peer == p)
                        .map(|n| n.name.clone())
                        .unwrap_or_else(|| p.to_string())
                )));
            }
        }
        Ok(Probe::Done)
    }

    // --------------------------------------------------------- the story --

    async fn play(&mut self) -> anyhow::Result<()> {
        let n = self.n;
        say!("MMLS demo: {n} nodes in this process, on 127.0.0.1 (temporary data dirs, mDNS off).");
        say!("Each node owns one MLS send group; the universe is the set of all of them.");

        self.start_nodes().await?;
        self.create_universe().await?;
        self.hello_round().await?;
        self.partition().await?;
        self.heal().await?;
        self.pcs_round().await?;
        self.summary().await
    }

    async fn start_nodes(&mut self) -> anyhow::Result<()> {
        let n = self.n;
        self.step(1, &format!("Start {n} nodes"))?;
        let t0 = Instant::now();
        for i in 0..n {
            let name = format!("node{}", i + 1);
            let dir = tempfile::Builder::new()
                .prefix("mmls-demo-")
                .tempdir()
                .context("creating a temporary data dir")?;
            node::DataDir::init(dir.path(), &name)?;
            let mut cfg = node::Config::new(dir.path());
            cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
            cfg.mdns = false;
            cfg.api_addr = None;
            // Local links are fast: exchange sync summaries and re-dial
            // more often than on a real network.
            cfg.timing.sync_interval = Duration::from_secs(1);
            cfg.timing.redial_interval = Duration::from_millis(500);
            cfg.timing.republish_interval = Duration::from_millis(300);
            cfg.timing.tick = Duration::from_millis(100);
            let handle = Node::start(cfg)
                .await
                .with_context(|| format!("starting {name}"))?;
            let addr = handle
                .listen_addrs()
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| anyhow!("{name} has no listen address"))?;
            let peer = handle.peer_id();
            let addr: Multiaddr = format!("{addr}/p2p/{peer}").parse()?;
            self.nodes.push(DemoNode {
                name,
                member: handle.member_id(),
                handle,
                peer,
                addr,
                _dir: dir,
            });
        }
        let mut t = Table::new(&["NODE", "MEMBER ID", "ADDRESS"]).indent(6);
        for nd in &self.nodes {
            t.row(vec![
                nd.name.clone(),
                format!("…{}", nd.member.short()),
                nd.addr.to_string(),
            ]);
        }
        say!("{}", t.render().trim_end());
        // A full mesh of explicit dials (node i dials every node before it).
        for i in 0..n {
            for j in 0..i {
                let a = self.nodes[j].addr.clone();
                self.nodes[i].handle.dial(a).await?;
            }
        }
        self.wait_for("connecting", 1, async || self.connectivity_probe().await)
            .await?;
        self.pass(
            format!(
                "{n} nodes up and every one connected to the {} others",
                n - 1
            ),
            Some(t0.elapsed()),
        )
    }

    async fn create_universe(&mut self) -> anyhow::Result<()> {
        let n = self.n;
        self.step(2, "node1 creates a universe with everyone")?;
        let t0 = Instant::now();
        let members: Vec<MemberId> = self.nodes.iter().map(|x| x.member.clone()).collect();
        let u = self.nodes[0]
            .handle
            .create_universe("demo", &members, Profile::default())
            .await
            .context("node1 could not create the universe")?;
        self.universe = Some(u);
        say!(
            "      universe {} \"demo\" (profile {}), {n} members",
            short_hex(&u.hex(), 16),
            Profile::default()
        );
        let took = self
            .wait_for("joining", 1, async || {
                let vs = self.views().await?;
                let mut behind = vec![];
                for (i, v) in vs.iter().enumerate() {
                    let joined = v.st.as_ref().map_or(0, |st| {
                        st.groups
                            .iter()
                            .filter(|g| !g.stale && g.members == n)
                            .count()
                    });
                    let own = v.st.as_ref().is_some_and(|st| st.own_group.is_some());
                    if joined < n || !own {
                        behind.push(format!("{} in {joined}/{n}", self.nodes[i].name));
                    }
                }
                Ok(if behind.is_empty() {
                    Probe::Done
                } else {
                    Probe::Waiting(behind.join(", "))
                })
            })
            .await?;
        let _ = t0;
        self.pass(
            format!("all {n} nodes joined all {n} send groups ({n}x{n} memberships)"),
            Some(took),
        )
    }

    async fn hello_round(&mut self) -> anyhow::Result<()> {
        let n = self.n;
        self.step(3, "Everyone says hello")?;
        for i in 0..n {
            let text = format!("hello from {}", self.nodes[i].name);
            self.send(i, text, Reach::Everyone).await?;
        }
        let took = self
            .wait_for("delivering", 1, async || {
                let vs = self.views().await?;
                self.messages_probe(&vs)
            })
            .await?;
        let vs = self.views().await?;
        let line = vs[0]
            .msgs
            .iter()
            .map(|d| {
                format!(
                    "{}: \"{}\"",
                    self.name_of(&d.sender),
                    String::from_utf8_lossy(&d.body)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        say!("      node1 reads  {line}");
        self.pass(
            format!(
                "every node has the {} others' messages ({} deliveries)",
                n - 1,
                n * (n - 1)
            ),
            Some(took),
        )
    }

    async fn partition(&mut self) -> anyhow::Result<()> {
        let n = self.n;
        self.step(4, "Partition the network into two halves")?;
        let t0 = Instant::now();
        say!(
            "      side A: {}   |   side B: {}",
            self.side_names(0),
            self.side_names(1)
        );
        let mut links = vec![];
        for i in 0..n {
            for j in 0..n {
                if self.side[i] != self.side[j] {
                    let p = self.nodes[j].peer;
                    self.nodes[i].handle.block_peer(p).await?;
                    if i < j {
                        links.push(format!("{}-{}", self.nodes[i].name, self.nodes[j].name));
                    }
                }
            }
        }
        self.partitioned = true;
        say!("      cut links: {}", links.join(", "));
        self.wait_for("cutting", 1, async || self.connectivity_probe().await)
            .await?;
        self.pass("no node reaches the other side", Some(t0.elapsed()))?;

        // Both sides keep talking; the first node of each side also makes an
        // MMLS update (fresh keys) mid-conversation.
        let t1 = Instant::now();
        let label = ["A", "B"];
        let updaters: Vec<usize> = (0..2)
            .filter_map(|s| (0..n).find(|&i| self.side[i] == s))
            .collect();
        for round in 1..=2 {
            for i in 0..n {
                let s = self.side[i];
                let text = format!("side {}: {} says #{round}", label[s], self.nodes[i].name);
                self.send(i, text, Reach::Side(s)).await?;
            }
            if round == 1 {
                let u = self.uid()?;
                for &i in &updaters {
                    self.nodes[i]
                        .handle
                        .update(u)
                        .await
                        .with_context(|| format!("{} could not update", self.nodes[i].name))?;
                }
                say!(
                    "      {} each sent a message; {} made an MMLS update; everyone sent another",
                    "every node",
                    updaters
                        .iter()
                        .map(|&i| format!("{} (side {})", self.nodes[i].name, label[self.side[i]]))
                        .collect::<Vec<_>>()
                        .join(" and ")
                );
            }
        }
        let took = self
            .wait_for("chatting in halves", 1, async || {
                let vs = self.views().await?;
                self.messages_probe(&vs)
            })
            .await?;
        let _ = t1;
        let vs = self.views().await?;
        let hello = n - 1;
        for (s, side_label) in label.iter().enumerate() {
            let Some(i) = (0..n).find(|&i| self.side[i] == s) else {
                continue;
            };
            let new: Vec<&Delivered> = vs[i].msgs.iter().skip(hello).collect();
            let from: BTreeSet<String> = new.iter().map(|d| self.name_of(&d.sender)).collect();
            say!(
                "      {} (side {}) reads {} new message(s){}",
                self.nodes[i].name,
                side_label,
                new.len(),
                if from.is_empty() {
                    " (nobody else on its side)".to_string()
                } else {
                    format!(", from {}", from.into_iter().collect::<Vec<_>>().join(", "))
                }
            );
        }
        // The two sides' views of side A's updater's group now differ.
        if let (Some(&a), Some(&b)) = (updaters.first(), updaters.get(1)) {
            let g = vs[a].st.as_ref().and_then(|s| s.own_group);
            let epoch_at = |v: &View| {
                v.st.as_ref()
                    .and_then(|s| s.groups.iter().find(|x| Some(x.group) == g))
                    .map(|x| x.epoch)
            };
            if let (Some(ea), Some(eb)) = (epoch_at(&vs[a]), epoch_at(&vs[b])) {
                say!(
                    "      {}'s send group: epoch {ea} on side A, still epoch {eb} on side B",
                    self.nodes[a].name
                );
            }
        }
        self.pass(
            "each side reads its own side's messages and none from the other",
            Some(took),
        )
    }

    async fn heal(&mut self) -> anyhow::Result<()> {
        let n = self.n;
        self.step(5, "Heal the partition")?;
        let t0 = Instant::now();
        for nd in &self.nodes {
            nd.handle.unblock_all().await?;
        }
        self.partitioned = false;
        for i in 0..n {
            for j in 0..i {
                if self.side[i] != self.side[j] {
                    // Already dialling is fine; a failure shows as a wait.
                    let _ = self.nodes[i].handle.dial(self.nodes[j].addr.clone()).await;
                }
            }
        }
        self.wait_for("reconnecting", 1, async || self.connectivity_probe().await)
            .await?;
        say!("      links restored after {}", secs(t0.elapsed()));
        let everyone: Vec<usize> = (0..n).collect();
        self.wait_for("converging", 3, async || {
            let vs = self.views().await?;
            match self.messages_probe(&vs)? {
                Probe::Done => Ok(self.epochs_probe(&vs, &everyone)),
                w => Ok(w),
            }
        })
        .await?;
        let took = t0.elapsed();
        self.converge_time = Some(took);
        let total: usize = (0..n).map(|i| self.expected(i).len()).sum();
        self.pass(
            format!("every node has every message exactly once ({total} deliveries)"),
            None,
        )?;
        self.pass(
            format!(
                "all {n} send groups at identical epochs and epoch authenticators on every node"
            ),
            None,
        )?;
        say!("      converged {} after healing", secs(took));
        Ok(())
    }

    async fn pcs_round(&mut self) -> anyhow::Result<()> {
        let n = self.n;
        let updater = 1.min(n - 1);
        let uname = self.nodes[updater].name.clone();
        self.step(
            6,
            &format!("Post-compromise security: {uname} updates its keys"),
        )?;
        let u = self.uid()?;
        let before: Vec<Option<u64>> = self.views().await?.iter().map(Self::own_epoch).collect();
        let mut subs: Vec<broadcast::Receiver<Event>> =
            self.nodes.iter().map(|x| x.handle.subscribe()).collect();
        let t0 = Instant::now();
        self.nodes[updater]
            .handle
            .update(u)
            .await
            .with_context(|| format!("{uname} could not update"))?;
        let everyone: Vec<usize> = (0..n).collect();
        self.wait_for("importing the update", 3, async || {
            let vs = self.views().await?;
            let mut behind = vec![];
            for (i, v) in vs.iter().enumerate() {
                let now = Self::own_epoch(v);
                if now.is_none() || now <= before[i] {
                    behind.push(self.nodes[i].name.clone());
                }
            }
            if !behind.is_empty() {
                return Ok(Probe::Waiting(format!(
                    "{} not yet committed an import",
                    behind.join(", ")
                )));
            }
            Ok(self.epochs_probe(&vs, &everyone))
        })
        .await?;
        let took = t0.elapsed();
        self.pcs_time = Some(took);
        let vs = self.views().await?;
        let moves = (0..n)
            .map(|i| {
                format!(
                    "{} {}→{}",
                    self.nodes[i].name,
                    before[i].unwrap_or(0),
                    Self::own_epoch(&vs[i]).unwrap_or(0)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        say!("      own send-group epochs: {moves}");
        // Commits made in the whole universe for this one update.
        let mut commits = vec![0usize; n];
        for (i, rx) in subs.iter_mut().enumerate() {
            loop {
                match rx.try_recv() {
                    Ok(Event::Committed { universe, .. }) if universe == u => commits[i] += 1,
                    Ok(_) => {}
                    Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
        }
        let total: usize = commits.iter().sum();
        say!(
            "      {total} commits universe-wide for one update ({})",
            (0..n)
                .map(|i| format!("{} {}", self.nodes[i].name, commits[i]))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.pass(
            format!("every other node imported {uname}'s new epoch into its own send group"),
            Some(took),
        )?;
        self.pass("epochs agree again on every node", None)?;
        if let Some((i, c)) = commits.iter().enumerate().find(|(_, c)| **c > 2) {
            bail!(
                "the universe did not settle within the bound: {} made {c} commits for one update (at most 2)",
                self.nodes[i].name
            );
        }
        self.pass("the universe settled: at most 2 commits per member", None)
    }

    async fn summary(&mut self) -> anyhow::Result<()> {
        let n = self.n;
        self.step(7, "Summary")?;
        let vs = self.views().await?;
        // Equivocation and staleness must never have happened.
        for (i, v) in vs.iter().enumerate() {
            let st =
                v.st.as_ref()
                    .ok_or_else(|| anyhow!("{} lost the universe", self.nodes[i].name))?;
            if !st.equivocations.is_empty() {
                bail!("{} reports an equivocation", self.nodes[i].name);
            }
            if let Some(g) = st.groups.iter().find(|g| g.stale) {
                bail!(
                    "{} is stale in {}'s group",
                    self.nodes[i].name,
                    self.name_of(&g.owner)
                );
            }
        }
        self.pass("no equivocation reported, no member stale", None)?;

        // Columns: the send group of each node, in node order.
        let group_of: Vec<Option<Id32>> = vs
            .iter()
            .map(|v| v.st.as_ref().and_then(|s| s.own_group))
            .collect();
        let mut header: Vec<String> = vec!["NODE".into(), "SENT".into(), "DELIVERED".into()];
        header.extend((0..n).map(|i| format!("E({})", self.nodes[i].name)));
        let mut t = Table::new(&header).indent(6);
        for (i, v) in vs.iter().enumerate() {
            let st = v.st.as_ref();
            let mut row = vec![
                self.nodes[i].name.clone(),
                st.map_or(0, |s| s.messages_sent).to_string(),
                v.msgs.len().to_string(),
            ];
            for g in &group_of {
                let e = st
                    .and_then(|s| s.groups.iter().find(|x| Some(x.group) == *g))
                    .map(|x| x.epoch.to_string())
                    .unwrap_or_else(|| "-".into());
                row.push(e);
            }
            t.row(row);
        }
        say!("{}", t.render().trim_end());
        say!("      E(nodeK) = epoch of nodeK's send group as this node sees it");
        say!();
        if let Some(c) = self.converge_time {
            say!(
                "      time to converge after the partition healed: {}",
                secs(c)
            );
        }
        if let Some(p) = self.pcs_time {
            say!(
                "      PCS round (update imported everywhere):      {}",
                secs(p)
            );
        }
        say!(
            "      whole demo:                                  {}",
            secs(self.started.elapsed())
        );
        say!();
        say!("all {} checks passed", self.checks.len());
        Ok(())
    }

    /// On failure: what every node sees.
    async fn diagnostics(&self) -> anyhow::Result<()> {
        if self.nodes.is_empty() || self.universe.is_none() {
            return Ok(());
        }
        let vs = self.views().await?;
        let peers = self.peer_sets().await?;
        println!();
        println!("  what each node sees:");
        let mut t = Table::new(&[
            "NODE",
            "PEERS",
            "DELIVERED",
            "PENDING",
            "GROUPS (owner:epoch[flags])",
        ])
        .indent(2);
        for (i, v) in vs.iter().enumerate() {
            let groups = v.st.as_ref().map_or("(not joined)".to_string(), |st| {
                st.groups
                    .iter()
                    .map(|g| {
                        let mut flags = String::new();
                        if g.stale {
                            flags.push_str(" stale");
                        }
                        if g.blocked {
                            flags.push_str(" blocked");
                        }
                        if g.buffered > 0 {
                            flags.push_str(&format!(" buf={}", g.buffered));
                        }
                        if let Some(w) = &g.waiting_for {
                            flags.push_str(&format!(" wants {w}"));
                        }
                        if flags.is_empty() {
                            format!("{}:{}", self.name_of(&g.owner), g.epoch)
                        } else {
                            format!("{}:{}[{}]", self.name_of(&g.owner), g.epoch, flags.trim())
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            });
            t.row(vec![
                self.nodes[i].name.clone(),
                peers[i].len().to_string(),
                format!("{}/{}", v.msgs.len(), self.expected(i).len()),
                v.st.as_ref().map_or(0, |s| s.pending_imports).to_string(),
                groups,
            ]);
        }
        println!("{t}");
        Ok(())
    }

    async fn stop_all(&mut self) {
        let stops = self.nodes.iter().map(|n| {
            let h = n.handle.clone();
            async move {
                let _ = tokio::time::timeout(Duration::from_secs(10), h.shutdown()).await;
            }
        });
        futures_join_all(stops).await;
        self.nodes.clear();
    }
}

/// Runs the futures concurrently and waits for all (no `futures` dep).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    fs: impl Iterator<Item = F>,
) {
    let tasks: Vec<_> = fs.map(tokio::spawn).collect();
    for t in tasks {
        let _ = t.await;
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
