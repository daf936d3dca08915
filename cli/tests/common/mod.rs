//! Helpers for the end-to-end tests: the real `mmls` binary as separate OS
//! processes on 127.0.0.1 only, each node with its own data dir and ports,
//! mDNS off, every wait bounded.
//!
//! No process outlives a test: every child sits in a guard whose `Drop`
//! kills it with SIGKILL and reaps it, and a per-test [`Watchdog`] kills
//! every child of the test binary and aborts it if a test overruns its hard
//! limit (a stuck test must fail, never hang CI).
#![allow(dead_code)]

use node::types;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The binary under test.
pub const MMLS: &str = env!("CARGO_BIN_EXE_mmls");

/// Default bound of one short `mmls` command. `universe create` may wait
/// up to 10 s for KeyPackages inside the node, so this is well above it.
pub const CMD_LIMIT: Duration = Duration::from_secs(60);

// ------------------------------------------------------------ children --

type Shared = Arc<Mutex<Child>>;

/// Every child process this test binary started and has not reaped yet
/// (for the watchdog).
static LIVE: Mutex<Vec<Weak<Mutex<Child>>>> = Mutex::new(Vec::new());

/// Commands the watchdog runs after killing the children, before it aborts
/// (an abort skips every `Drop`): removing the network namespaces a test
/// made.
static AT_ABORT: Mutex<Vec<Vec<String>>> = Mutex::new(Vec::new());

/// Registers a command (program and arguments) for the watchdog to run if
/// it has to abort the test binary.
pub fn at_abort(cmd: &[&str]) {
    lock(&AT_ABORT).push(cmd.iter().map(|s| s.to_string()).collect());
}

/// The command that runs `mmls`: in network namespace `netns` (through
/// `ip netns exec`, which execs, so the child's pid is mmls's), or here.
pub fn mmls_command(netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, MMLS]);
            c
        }
        None => Command::new(MMLS),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Owns one child process: SIGKILL and reap on drop.
pub struct ChildGuard {
    child: Shared,
}

impl ChildGuard {
    fn spawn(cmd: &mut Command) -> ChildGuard {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {MMLS}: {e}"));
        let child = Arc::new(Mutex::new(child));
        let mut live = lock(&LIVE);
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&child));
        ChildGuard { child }
    }

    pub fn pid(&self) -> u32 {
        lock(&self.child).id()
    }

    pub fn try_wait(&self) -> Option<ExitStatus> {
        lock(&self.child).try_wait().ok().flatten()
    }

    /// SIGKILL (on Unix `Child::kill` is `kill -9`) and reap.
    pub fn kill9(&self) {
        let mut c = lock(&self.child);
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Waits up to `limit` for the child to exit by itself.
    pub fn wait_timeout(&self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn take_stdin(&self) -> Option<std::process::ChildStdin> {
        lock(&self.child).stdin.take()
    }
    fn take_stdout(&self) -> Option<std::process::ChildStdout> {
        lock(&self.child).stdout.take()
    }
    fn take_stderr(&self) -> Option<std::process::ChildStderr> {
        lock(&self.child).stderr.take()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Kills a test with a message, every child first, if it runs past its
/// hard limit. Disarmed on drop (the test finished, passed or panicked).
pub struct Watchdog {
    done: Option<mpsc::Sender<()>>,
}

impl Watchdog {
    pub fn arm(test: &str, limit: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let test = test.to_string();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!(
                    "WATCHDOG: test {test} exceeded its hard limit of {limit:?}: \
                     killing every child process and aborting"
                );
                for w in lock(&LIVE).iter() {
                    if let Some(c) = w.upgrade() {
                        if let Ok(mut c) = c.try_lock() {
                            let _ = c.kill();
                            let _ = c.wait();
                        }
                    }
                }
                for cmd in lock(&AT_ABORT).iter() {
                    if let Some((prog, args)) = cmd.split_first() {
                        let _ = std::process::Command::new(prog).args(args).status();
                    }
                }
                std::process::abort();
            }
        });
        Watchdog { done: Some(tx) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(());
        }
    }
}

// ------------------------------------------------------ short commands --

/// What one `mmls` invocation did.
#[derive(Debug, Clone)]
pub struct Out {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics (with everything the command printed) unless it succeeded.
    pub fn ok(self) -> Out {
        assert!(
            self.success(),
            "`mmls {}` failed: {self:?}",
            self.args.join(" ")
        );
        self
    }

    /// The command must fail with a non-zero exit and exactly one line on
    /// stderr, `error: ...`, and print nothing on stdout. Returns the line.
    pub fn one_line_error(&self) -> String {
        assert!(
            !self.success(),
            "`mmls {}` should have failed: {self:?}",
            self.args.join(" ")
        );
        assert_eq!(
            self.status.code(),
            Some(1),
            "`mmls {}`: exit code: {self:?}",
            self.args.join(" ")
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "`mmls {}`: stderr should be one line: {:?}",
            self.args.join(" "),
            self.stderr
        );
        assert!(
            lines[0].starts_with("error: ") && lines[0].len() > "error: ".len() + 10,
            "`mmls {}`: not a clear error line: {:?}",
            self.args.join(" "),
            lines[0]
        );
        assert!(
            self.stdout.is_empty(),
            "`mmls {}` failed but printed on stdout: {:?}",
            self.args.join(" "),
            self.stdout
        );
        lines[0].to_string()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`mmls {}`: stdout is not JSON ({e}): {:?}",
                self.args.join(" "),
                self.stdout
            )
        })
    }

    pub fn typed<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`mmls {}`: stdout does not match the API type ({e}): {:?}",
                self.args.join(" "),
                self.stdout
            )
        })
    }

    /// One JSON object per line.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!(
                        "`mmls {}`: line is not JSON ({e}): {l:?}",
                        self.args.join(" ")
                    )
                })
            })
            .collect()
    }
}

/// Runs `mmls ARGS` to completion (stdin: the given text, else empty),
/// killing it and panicking if it takes longer than `limit`.
pub fn mmls_limit(args: &[&str], stdin: Option<&str>, limit: Duration) -> Out {
    mmls_env(args, &[], stdin, limit)
}

/// [`mmls_limit`] with extra environment variables (`MMLS_DATA_DIR` is
/// removed from the inherited environment unless given here).
pub fn mmls_env(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>, limit: Duration) -> Out {
    mmls_in(None, args, env, stdin, limit)
}

/// [`mmls_env`] in network namespace `netns` (if given).
pub fn mmls_in(
    netns: Option<&str>,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
    limit: Duration,
) -> Out {
    let mut cmd = mmls_command(netns);
    cmd.args(args)
        .env_remove("MMLS_DATA_DIR")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let g = ChildGuard::spawn(&mut cmd);
    let feeder = g.take_stdin().map(|mut w| {
        let text = stdin.unwrap_or("").to_string();
        std::thread::spawn(move || {
            let _ = w.write_all(text.as_bytes());
        })
    });
    let reader = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = reader(
        g.take_stdout()
            .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
    );
    let err = reader(
        g.take_stderr()
            .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
    );
    let status = g.wait_timeout(limit);
    let Some(status) = status else {
        g.kill9();
        panic!("`mmls {}` did not finish within {limit:?}", args.join(" "));
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    Out {
        args: args.iter().map(|s| s.to_string()).collect(),
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Starts `mmls ARGS` in the background (for `tail`), stdout and stderr to
/// files so a full pipe never blocks it. Killed when the guard drops.
pub fn spawn_mmls(args: &[&str], stdout: &Path, stderr: &Path) -> ChildGuard {
    let mut cmd = Command::new(MMLS);
    cmd.args(args)
        .env_remove("MMLS_DATA_DIR")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(stdout).expect("stdout file"))
        .stderr(std::fs::File::create(stderr).expect("stderr file"));
    ChildGuard::spawn(&mut cmd)
}

/// `mmls ARGS` with the default bound.
pub fn mmls(args: &[&str]) -> Out {
    mmls_limit(args, None, CMD_LIMIT)
}

// ---------------------------------------------------------------- dirs --

/// A temp root for data dirs and logs, on tmpfs when there is one (the
/// tests are about processes and the network; a SIGKILL loses nothing the
/// page cache holds, so tmpfs is as good as a disk for crash safety).
/// Removed at the end, except after a failure with `MMLS_TEST_KEEP=1` (the
/// path is printed). Declare it before the nodes: they are dropped (killed)
/// first.
pub struct Root {
    dir: Option<tempfile::TempDir>,
}

impl Root {
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("root").path()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("MMLS_TEST_KEEP").is_some() {
            if let Some(d) = self.dir.take() {
                eprintln!(
                    "MMLS_TEST_KEEP: data dirs and logs kept in {}",
                    d.keep().display()
                );
            }
        }
    }
}

pub fn root() -> Root {
    let shm = Path::new("/dev/shm");
    let b = || {
        let mut b = tempfile::Builder::new();
        b.prefix("mmls-cli-");
        b
    };
    let dir = if shm.is_dir() {
        b().tempdir_in(shm).or_else(|_| b().tempdir())
    } else {
        b().tempdir()
    };
    Root {
        dir: Some(dir.expect("tempdir")),
    }
}

/// Every file of a dir (recursively) with its contents.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(d) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    walk(dir, &mut out);
    out
}

// --------------------------------------------------------------- nodes --

/// One node: a data dir, and while it runs, an `mmls run` process.
pub struct NodeProc {
    pub name: String,
    pub dir: PathBuf,
    pub member: String,
    logs: PathBuf,
    runs: u32,
    child: Option<ChildGuard>,
    /// `127.0.0.1:PORT` of the running node's API.
    pub api: Option<String>,
    /// `/ip4/127.0.0.1/tcp/PORT/p2p/ID` of the running node.
    pub addr: Option<String>,
    /// The network namespace it runs in (and its commands run in).
    pub netns: Option<String>,
}

impl NodeProc {
    /// `mmls init --name NAME` in `root/NAME` (logs go to `root/logs`).
    pub fn init(root: &Path, name: &str) -> NodeProc {
        Self::init_in(root, name, None)
    }

    /// [`NodeProc::init`] for a node that runs in network namespace
    /// `netns` (if given).
    pub fn init_in(root: &Path, name: &str, netns: Option<&str>) -> NodeProc {
        Self::init_with(root, name, netns, &[])
    }

    /// [`NodeProc::init_in`] with more `init` arguments (`--x509-cert`, ...).
    pub fn init_with(root: &Path, name: &str, netns: Option<&str>, extra: &[&str]) -> NodeProc {
        let dir = root.join(name);
        let d = dir.to_str().expect("utf-8 path");
        let mut args = vec!["--data-dir", d, "init", "--name", name];
        args.extend_from_slice(extra);
        let out = mmls(&args).ok();
        let member = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("member id"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| panic!("init printed no member id: {out:?}"));
        let logs = root.join("logs");
        std::fs::create_dir_all(&logs).expect("logs dir");
        NodeProc {
            name: name.to_string(),
            dir,
            member,
            logs,
            runs: 0,
            child: None,
            api: None,
            addr: None,
            netns: netns.map(str::to_string),
        }
    }

    pub fn dir_str(&self) -> &str {
        self.dir.to_str().expect("utf-8 path")
    }

    /// `mmls --data-dir DIR ARGS`.
    pub fn cmd(&self, args: &[&str]) -> Out {
        self.cmd_limit(args, None, CMD_LIMIT)
    }

    pub fn cmd_limit(&self, args: &[&str], stdin: Option<&str>, limit: Duration) -> Out {
        let mut all = vec!["--data-dir", self.dir_str()];
        all.extend_from_slice(args);
        mmls_in(self.netns.as_deref(), &all, &[], stdin, limit)
    }

    fn log_paths(&self, run: u32) -> (PathBuf, PathBuf) {
        (
            self.logs.join(format!("{}.{run}.stdout", self.name)),
            self.logs.join(format!("{}.{run}.stderr", self.name)),
        )
    }

    pub fn running(&self) -> bool {
        self.child.as_ref().is_some_and(|c| c.try_wait().is_none())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    /// `mmls run` on 127.0.0.1 (TCP, ephemeral port), API on 127.0.0.1:0,
    /// mDNS off, dialling `peers`. Returns once the process printed its
    /// listen and API addresses (stdout and stderr go to log files, so a
    /// full pipe can never block it).
    pub fn start(&mut self, peers: &[String]) {
        let mut args = vec![
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--api",
            "127.0.0.1:0",
        ];
        for p in peers {
            args.extend(["--peer", p.as_str()]);
        }
        self.start_with(&args);
    }

    /// `mmls run RUN_ARGS` (in the node's namespace, if any); returns once
    /// it printed its API address and a listen address on 127.0.0.1.
    pub fn start_with(&mut self, run_args: &[&str]) {
        assert!(!self.running(), "{} is already running", self.name);
        self.runs += 1;
        let (out_path, err_path) = self.log_paths(self.runs);
        let out = std::fs::File::create(&out_path).expect("stdout log");
        let err = std::fs::File::create(&err_path).expect("stderr log");
        let mut cmd = mmls_command(self.netns.as_deref());
        cmd.args(["--data-dir", self.dir_str(), "run"]);
        cmd.args(run_args);
        cmd.env_remove("MMLS_DATA_DIR")
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("MMLS_TEST_LOG")
                    .unwrap_or_else(|_| "info,libp2p_gossipsub=error".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = ChildGuard::spawn(&mut cmd);
        let start = Instant::now();
        let (api, addr) = loop {
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            let api = text.lines().find_map(|l| {
                l.strip_prefix("local API on http://")
                    .and_then(|r| r.split_whitespace().next())
                    .map(str::to_string)
            });
            let addr = text.lines().find_map(|l| {
                l.strip_prefix("listening on ")
                    .filter(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))
                    .map(|a| a.trim().to_string())
            });
            if let (Some(api), Some(addr)) = (api, addr) {
                break (api, addr);
            }
            if let Some(st) = child.try_wait() {
                panic!(
                    "{}: `mmls run` exited ({st}) before it was up:\n{}\n{}",
                    self.name,
                    text,
                    tail(&err_path, 40)
                );
            }
            if start.elapsed() > Duration::from_secs(30) {
                child.kill9();
                panic!(
                    "{}: `mmls run` not up within 30 s:\n{}\n{}",
                    self.name,
                    text,
                    tail(&err_path, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            addr.ends_with(&format!("/p2p/{}", self.member)),
            "{}: listen address {addr} does not name the member {}",
            self.name,
            self.member
        );
        assert!(api.starts_with("127.0.0.1:"), "API not on loopback: {api}");
        // The data dir tells clients where the API is while the node runs.
        let file = std::fs::read_to_string(self.dir.join("api.addr")).unwrap_or_default();
        assert_eq!(
            file.trim(),
            api,
            "{}: api.addr vs printed address",
            self.name
        );
        self.child = Some(child);
        self.api = Some(api);
        self.addr = Some(addr);
    }

    /// `kill -9`, then reap.
    pub fn kill9(&mut self) {
        if let Some(c) = self.child.take() {
            c.kill9();
        }
    }

    /// SIGTERM (a clean stop), waiting up to `limit` for the exit.
    pub fn stop(&mut self, limit: Duration) -> Option<ExitStatus> {
        let c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.pid().to_string()])
            .status();
        let st = c.wait_timeout(limit);
        c.kill9();
        st
    }

    /// A blocking API client (what the CLI itself uses), for traffic loops.
    pub fn client(&self) -> node::Client {
        node::Client::from_data_dir(&self.dir).expect("client")
    }

    /// The last lines of this node's logs (for failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        let mut s = String::new();
        for run in 1..=self.runs {
            let (o, e) = self.log_paths(run);
            s.push_str(&format!(
                "--- {} run {run} stdout\n{}",
                self.name,
                tail(&o, n)
            ));
            s.push_str(&format!(
                "--- {} run {run} stderr\n{}",
                self.name,
                tail(&e, n)
            ));
        }
        s
    }

    pub fn status(&self) -> types::Status {
        self.cmd(&["status", "--json"]).ok().typed()
    }

    pub fn peer_ids(&self) -> Vec<String> {
        let ps: Vec<types::Peer> = self.cmd(&["peers", "--json"]).ok().typed();
        ps.into_iter().map(|p| p.peer_id).collect()
    }

    /// Every message of a universe as `read --json` prints it.
    pub fn read(&self, universe: &str) -> Vec<types::Message> {
        let out = self.cmd(&["read", universe, "--json", "--delivered"]).ok();
        out.json_lines()
            .into_iter()
            .map(|v| serde_json::from_value(v).expect("message line"))
            .collect()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if std::thread::panicking() && self.runs > 0 {
            eprintln!("{}", self.log_tail(30));
        }
        self.kill9();
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    let mut s = lines[from..].join("\n");
    s.push('\n');
    s
}

// --------------------------------------------------------------- waits --

/// Polls `f` every 200 ms until it returns `Ok`, panicking with the last
/// reason after `limit`.
pub fn wait_for<F: FnMut() -> Result<(), String>>(what: &str, limit: Duration, mut f: F) {
    let start = Instant::now();
    loop {
        let r = f();
        match r {
            Ok(()) => return,
            Err(why) if start.elapsed() > limit => {
                panic!("timed out after {limit:?} waiting for {what}: {why}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Waits until every node is connected to every other one.
pub fn wait_mesh(nodes: &[&NodeProc], limit: Duration) {
    wait_for("a full mesh", limit, || {
        for n in nodes {
            let ids = n.peer_ids();
            for m in nodes {
                if m.member != n.member && !ids.contains(&m.member) {
                    return Err(format!("{} does not see {}", n.name, m.name));
                }
            }
        }
        Ok(())
    });
}

/// The universe as one node's status shows it.
pub fn universe_of(st: &types::Status, u: &str) -> Option<types::Universe> {
    st.universes.iter().find(|x| x.id == u).cloned()
}

/// Every node knows the universe by name, has its own send group and one
/// group per member.
pub fn ready(nodes: &[&NodeProc], u: &str) -> Result<(), String> {
    for n in nodes {
        let list: Vec<types::Universe> = n.cmd(&["universe", "list", "--json"]).ok().typed();
        let Some(x) = list.iter().find(|x| x.id == u) else {
            return Err(format!("{} does not know the universe", n.name));
        };
        if x.name.is_none() || x.own_group.is_none() || x.groups.len() != nodes.len() {
            return Err(format!("{} not ready: {x:?}", n.name));
        }
    }
    Ok(())
}

/// (group -> (epoch, epoch authenticator hash, next seq)) of one node.
pub type View = BTreeMap<String, (u64, String, u64)>;

/// Per send group: epoch, auth hash and stream position.
pub fn view(u: &types::Universe) -> View {
    u.groups
        .iter()
        .map(|g| (g.group.clone(), (g.epoch, g.auth.clone(), g.next_seq)))
        .collect()
}

/// Every node (by `status --json`) sees every send group of the universe at
/// the same epoch with the same epoch-authenticator hash and the same
/// stream position, nothing stale, blocked, buffered or left to commit, and
/// no equivocation. Returns the common view.
pub fn converged(nodes: &[&NodeProc], u: &str) -> Result<View, String> {
    let mut views: Vec<(String, View)> = vec![];
    for n in nodes {
        let st = n.status();
        let Some(x) = universe_of(&st, u) else {
            return Err(format!("{}: universe missing", n.name));
        };
        if !x.equivocations.is_empty() {
            panic!("{}: equivocation recorded: {:?}", n.name, x.equivocations);
        }
        if x.removed {
            return Err(format!("{}: removed", n.name));
        }
        if x.pending_imports != 0 {
            return Err(format!("{}: {} pending imports", n.name, x.pending_imports));
        }
        if let Some(g) = x
            .groups
            .iter()
            .find(|g| g.stale || g.blocked || g.buffered > 0)
        {
            return Err(format!("{}: group not settled: {g:?}", n.name));
        }
        if x.groups.len() != nodes.len() {
            return Err(format!("{}: {} groups", n.name, x.groups.len()));
        }
        views.push((n.name.clone(), view(&x)));
    }
    for w in views.windows(2) {
        if w[0].1 != w[1].1 {
            return Err(format!(
                "views differ: {} {:?} vs {} {:?}",
                w[0].0, w[0].1, w[1].0, w[1].1
            ));
        }
    }
    Ok(views.remove(0).1)
}

/// Per sender: the `(seq, text)` of every message a node delivered, checking
/// exactly-once and per-sender order on the way.
pub fn by_sender(node: &str, msgs: &[types::Message]) -> BTreeMap<String, Vec<(u64, String)>> {
    let mut per: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for m in msgs {
        let v = per.entry(m.sender.clone()).or_default();
        if let Some((last, _)) = v.last() {
            assert!(
                m.seq > *last,
                "{node}: message {} from {} delivered after {last} (duplicate or out of order)",
                m.seq,
                m.sender
            );
        }
        v.push((m.seq, m.text.clone()));
    }
    per
}

/// A small deterministic RNG (splitmix64): the tests print their seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// `ip ARGS`, bounded; `Err` with what it printed.
#[allow(dead_code)]
pub fn ip(args: &[&str]) -> Result<(), String> {
    run_bounded("ip", args)
}

/// `PROGRAM ARGS` (network set-up: `ip`, `tc`), bounded to 10 s; `Err`
/// with what it printed.
#[allow(dead_code)]
pub fn run_bounded(program: &str, args: &[&str]) -> Result<(), String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(format!(
                    "`{program} {}`: {st}: {}",
                    args.join(" "),
                    err.trim()
                ));
            }
            Ok(None) if start.elapsed() > Duration::from_secs(10) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{program} {}` did not finish in 10 s",
                    args.join(" ")
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("`{program} {}`: {e}", args.join(" "))),
        }
    }
}

/// How often each text appears in what one node read.
#[allow(dead_code)]
pub fn texts(msgs: &[types::Message]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for x in msgs {
        *m.entry(x.text.clone()).or_insert(0) += 1;
    }
    m
}

/// Every text of `want` is in `got` (what one node read).
#[allow(dead_code)]
pub fn has_all(got: &[types::Message], want: &[String]) -> Result<(), String> {
    let t = texts(got);
    let missing: Vec<&String> = want.iter().filter(|w| !t.contains_key(*w)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("{} missing, first {:?}", missing.len(), missing[0]))
    }
}
