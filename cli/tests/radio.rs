//! Radio-speed links with real processes: eight `mmls run` hosts in two
//! squads of four, each squad on its own bridge, the two bridges joined by
//! one link shaped each way with `tc ... tbf rate R burst 16kbit latency
//! 800ms` (the only link between the squads, as a radio hop between two
//! field teams). mDNS only, no `--peer`. A universe of the eight forms,
//! everyone sends, the squads lose each other for 90 s while they keep
//! sending, and the link comes back: every text must arrive at every host
//! exactly once within the goal after the link's return (15 s at
//! 256 kbit/s, 60 s at 64 kbit/s).
//!
//! Each case prints how long the universe took to form, its convergence
//! time after the split, and the bytes that crossed the shaped link (per
//! text sent during the split, and in all).
//!
//! The test makes its own namespaces (two bridges, eight hosts, named
//! after its pid and rate), addresses 10.232.0.0/24 only inside them, and
//! removes them at the end (a `Drop` guard, and the watchdog if it must
//! abort). Where namespaces or `tc` are impossible (not root, no `ip`, no
//! CAP_NET_ADMIN, no tbf) it prints `skipped: REASON` and passes.
//! The two cases run one after the other (a lock): sixteen nodes at once
//! on a 2-core CI machine would measure the CPU, not the link.
//!
//! `MMLS_RADIO_SPLIT_S` sets the split (default 90 s) for manual runs.
//!
//! Not yet in CI: it runs only with `MMLS_RADIO=1`. The goals are the
//! open issue's ("Radio-speed links"), and the code misses them
//! (BENCHMARKS.md, "Thin links": at 256 kbit/s every text arrives exactly
//! once, but 31.6 s after the link's return, not 15 s; at 64 kbit/s the
//! universe does not form in 300 s; measured before the PSK-gap change of
//! `participant/psk_gap.rs`, not re-measured since). It is kept as the
//! measurement harness that shows the gap, not as a test that passes.

mod common;

use common::*;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const HOSTS: usize = 8;
const SQUAD: usize = 4;

/// One case at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The namespaces of one case; removed on drop.
struct Radio {
    bridges: [String; 2],
    hosts: Vec<String>,
    made: Vec<String>,
}

impl Radio {
    /// Two bridge namespaces (`br0` in each) joined by the veth pair
    /// `x0`/`x1`, each end shaped to `kbit`; hosts 0-3 on the first
    /// bridge, 4-7 on the second, each with `eth0` at 10.232.0.(i+1)/24.
    fn make(kbit: u32) -> Result<Radio, String> {
        let pid = std::process::id();
        let mut net = Radio {
            bridges: [format!("mm{pid}r{kbit}b0"), format!("mm{pid}r{kbit}b1")],
            hosts: (0..HOSTS).map(|i| format!("mm{pid}r{kbit}h{i}")).collect(),
            made: vec![],
        };
        let all: Vec<String> = net.bridges.iter().chain(&net.hosts).cloned().collect();
        for ns in &all {
            ip(&["netns", "add", ns])?;
            at_abort(&["ip", "netns", "del", ns]);
            net.made.push(ns.clone());
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        for b in &net.bridges {
            ip(&["-n", b, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", b, "link", "set", "br0", "up"])?;
        }
        let [b0, b1] = net.bridges.clone();
        ip(&[
            "-n", &b0, "link", "add", "x0", "type", "veth", "peer", "name", "x1", "netns", &b1,
        ])?;
        let rate = format!("{kbit}kbit");
        for (b, x) in [(&b0, "x0"), (&b1, "x1")] {
            ip(&["-n", b, "link", "set", x, "master", "br0"])?;
            ip(&["-n", b, "link", "set", x, "up"])?;
            run_bounded(
                "ip",
                &[
                    "netns", "exec", b, "tc", "qdisc", "add", "dev", x, "root", "tbf", "rate",
                    &rate, "burst", "16kbit", "latency", "800ms",
                ],
            )?;
        }
        for (i, h) in net.hosts.clone().iter().enumerate() {
            let b = &net.bridges[i / SQUAD];
            let port = format!("v{i}");
            let addr = format!("10.232.0.{}/24", i + 1);
            ip(&[
                "-n", b, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", h,
            ])?;
            ip(&["-n", b, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", b, "link", "set", &port, "up"])?;
            ip(&["-n", h, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", h, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    /// The radio link between the squads, up or down.
    fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.bridges[0], "link", "set", "x0", state])
            .unwrap_or_else(|e| panic!("link {state}: {e}"));
    }

    /// Bytes that crossed the shaped link so far (both directions), from
    /// the counters of its first end.
    fn crossed(&self) -> u64 {
        let out = std::process::Command::new("ip")
            .args(["-n", &self.bridges[0], "-s", "-j", "link", "show", "x0"])
            .output()
            .expect("ip -s link");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        let s = &v[0]["stats64"];
        s["rx"]["bytes"].as_u64().unwrap_or(0) + s["tx"]["bytes"].as_u64().unwrap_or(0)
    }
}

impl Drop for Radio {
    fn drop(&mut self) {
        for ns in &self.made {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Every node holds every other node's texts, each exactly once.
fn delivered(nodes: &[NodeProc], u: &str, sent: &[Vec<String>]) -> Result<(), String> {
    for (k, n) in nodes.iter().enumerate() {
        let got = n.read(u);
        for (j, theirs) in sent.iter().enumerate() {
            if j != k {
                has_all(&got, theirs).map_err(|e| format!("{}: from {j}: {e}", n.name))?;
            }
        }
    }
    Ok(())
}

fn split_case(kbit: u32, goal: Duration) {
    if std::env::var("MMLS_RADIO").as_deref() != Ok("1") {
        println!("skipped: radio cases run with MMLS_RADIO=1 (they miss the issue's goals today; see the file's header)");
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let split = Duration::from_secs(
        std::env::var("MMLS_RADIO_SPLIT_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(90),
    );
    let name = format!("radio_{kbit}kbit");
    let _dog = Watchdog::arm(&name, split + Duration::from_secs(600));
    let net = match Radio::make(kbit) {
        Ok(n) => n,
        Err(e) => {
            println!("skipped: network namespaces or tc tbf are not available here: {e}");
            return;
        }
    };
    let root = root();
    let mut nodes: Vec<NodeProc> = (0..HOSTS)
        .map(|i| NodeProc::init_in(root.path(), &format!("n{i}"), Some(&net.hosts[i])))
        .collect();
    for n in &mut nodes {
        n.start_with(&["--api", "127.0.0.1:0"]);
    }
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    let t0 = Instant::now();
    wait_mesh(&refs, Duration::from_secs(120));
    let meshed = t0.elapsed();

    let members: Vec<&str> = nodes[1..].iter().map(|n| n.member.as_str()).collect();
    let mut args = vec!["universe", "create", "radio", "--member"];
    args.extend(members);
    // Over a slow link a member's KeyPackage may not have arrived yet: the
    // command says so and asks for it; a person tries again, as here.
    let mut tries = 0;
    let u = loop {
        let out = nodes[0].cmd_limit(&args, None, Duration::from_secs(120));
        tries += 1;
        if out.success() {
            break out.stdout.trim().to_string();
        }
        assert!(
            tries < 12 && out.one_line_error().contains("KeyPackage"),
            "universe create: {}",
            out.one_line_error()
        );
        std::thread::sleep(Duration::from_secs(5));
    };
    wait_for(
        "every host in the universe",
        Duration::from_secs(300),
        || ready(&refs, &u),
    );
    let formed = t0.elapsed();

    let mut sent: Vec<Vec<String>> = vec![vec![]; HOSTS];
    for (k, n) in nodes.iter().enumerate() {
        let text = format!("{} before", n.name);
        n.cmd(&["send", &u, &text]).ok();
        sent[k].push(text);
    }
    wait_for(
        "delivery before the split",
        Duration::from_secs(180),
        || delivered(&nodes, &u, &sent),
    );
    let before = t0.elapsed();
    println!(
        "{kbit} kbit/s: full mesh after {:.1} s, universe formed after {:.1} s, first texts everywhere after {:.1} s; {} bytes crossed the link so far",
        meshed.as_secs_f64(),
        formed.as_secs_f64(),
        before.as_secs_f64(),
        net.crossed()
    );

    // The split: every host sends a text every 10 s.
    net.link(false);
    let down = Instant::now();
    let mut round = 0;
    while down.elapsed() < split {
        for (k, n) in nodes.iter().enumerate() {
            let text = format!("{} during {round}", n.name);
            n.cmd(&["send", &u, &text]).ok();
            sent[k].push(text);
        }
        round += 1;
        let next = Duration::from_secs(10 * round);
        if let Some(d) = next.checked_sub(down.elapsed()) {
            std::thread::sleep(d.min(split.saturating_sub(down.elapsed())));
        }
    }
    let split_texts = HOSTS as u64 * round;
    let crossed_before = net.crossed();
    net.link(true);
    let up = Instant::now();
    let mut last = String::new();
    let took = loop {
        match delivered(&nodes, &u, &sent) {
            Ok(()) => break up.elapsed(),
            Err(e) if up.elapsed() > goal + Duration::from_secs(120) => {
                panic!(
                    "{kbit} kbit/s: not every text delivered {:?} after the link came back: {e}",
                    up.elapsed()
                )
            }
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let crossed = net.crossed() - crossed_before;
    println!(
        "{kbit} kbit/s: split {} s, {split_texts} texts sent during it; every text everywhere {:.1} s after the link came back (goal {:?}; last wait: {last}); {crossed} bytes crossed the link since (~{} per text sent during the split), {} in all",
        split.as_secs(),
        took.as_secs_f64(),
        goal,
        crossed / split_texts.max(1),
        net.crossed()
    );

    // Exactly once, and nothing but what was sent.
    for (k, n) in nodes.iter().enumerate() {
        let t = texts(&n.read(&u));
        for (text, count) in &t {
            assert_eq!(*count, 1, "{}: {text:?} delivered {count} times", n.name);
        }
        let want: usize = sent
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != k)
            .map(|(_, s)| s.len())
            .sum();
        assert_eq!(t.len(), want, "{}: not exactly the others' texts", n.name);
    }
    let mut closes = 0;
    for n in &nodes {
        closes += n
            .log_tail(1_000_000)
            .lines()
            .filter(|l| l.contains("silent past its allowance"))
            .count();
    }
    println!("{kbit} kbit/s: {closes} connections closed for silence in all (the split included)");
    assert!(
        took <= goal,
        "{kbit} kbit/s: every text delivered only {:.1} s after the link came back (goal: {goal:?})",
        took.as_secs_f64()
    );
    drop(nodes);
    drop(net);
}

#[test]
fn squads_over_a_256_kbit_link_converge_after_a_split() {
    split_case(256, Duration::from_secs(15));
}

#[test]
fn squads_over_a_64_kbit_link_converge_after_a_split() {
    split_case(64, Duration::from_secs(60));
}
