//! End to end: the real `mmls` binary, one OS process per node and per
//! command, on 127.0.0.1 only (TCP on ephemeral ports, API on 127.0.0.1:0,
//! no mDNS), each node with its own data dir.

mod common;

use common::*;
use node::types;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `--help` works on every subcommand (exit 0, a usage line, the command's
/// own options), without a data dir or a node.
#[test]
fn help_on_every_subcommand() {
    let _wd = Watchdog::arm("help_on_every_subcommand", Duration::from_secs(60));
    let cases: &[(&[&str], &[&str])] = &[
        (
            &[],
            &["init", "run", "universe", "send", "read", "status", "wipe"],
        ),
        (&["wipe"], &["--yes"]),
        (&["init"], &["--name", "--x509-cert", "--x509-key"]),
        (&["id"], &["--json"]),
        (
            &["run"],
            &[
                "--listen",
                "--peer",
                "--no-mdns",
                "--api",
                "--ping-timeout-ms",
            ],
        ),
        (
            &["universe"],
            &[
                "create", "list", "show", "add", "remove", "anchor", "leave", "forget",
            ],
        ),
        (
            &["universe", "create"],
            &["--member", "--user", "--profile", "--anchor", "--json"],
        ),
        (&["device"], &["link", "list", "unlink"]),
        (&["device", "link"], &["--key", "--export-key", "--json"]),
        (&["device", "list"], &["--user", "--json"]),
        (&["device", "unlink"], &["<DEVICE>", "--json"]),
        (&["universe", "anchor"], &["<UNIVERSE>", "DOMAIN=CA.pem"]),
        (&["universe", "list"], &["--json"]),
        (&["universe", "show"], &["--json"]),
        (&["universe", "add"], &["<UNIVERSE>", "<ID>"]),
        (&["universe", "remove"], &["<UNIVERSE>", "<ID>"]),
        (&["universe", "leave"], &["<UNIVERSE>"]),
        (&["universe", "forget"], &["<UNIVERSE>"]),
        (&["send"], &["<UNIVERSE>", "stdin", "--json"]),
        (&["read"], &["--after", "--limit", "--json"]),
        (&["tail"], &["--json"]),
        (&["update"], &["<UNIVERSE>"]),
        (&["status"], &["--json"]),
        (&["peers"], &["--json"]),
        (&["rejoin"], &["<UNIVERSE>"]),
        (&["bundle"], &["export", "import", "introduce"]),
        (
            &["bundle", "export"],
            &[
                "<UNIVERSE>",
                "<FILE>",
                "--since-peer",
                "known to lack",
                "--json",
            ],
        ),
        (&["bundle", "import"], &["<FILE>", "--json"]),
        (&["bundle", "introduce"], &["<FILE>", "--json"]),
        (&["demo"], &["--nodes", "--timeout"]),
    ];
    for (sub, expect) in cases {
        let mut args: Vec<&str> = sub.to_vec();
        args.push("--help");
        let out = mmls(&args).ok();
        assert!(
            out.stdout.contains("Usage: mmls"),
            "{args:?}: no usage line: {}",
            out.stdout
        );
        for e in *expect {
            assert!(
                out.stdout.contains(e),
                "{args:?}: {e} missing:\n{}",
                out.stdout
            );
        }
        // `help SUB` says the same.
        let mut h = vec!["help"];
        h.extend_from_slice(sub);
        assert_eq!(mmls(&h).ok().stdout, out.stdout, "`mmls help {sub:?}`");
    }
    // No arguments: the help, on stderr, and a usage error.
    let out = mmls(&[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("Usage: mmls"), "{out:?}");
    let v = mmls(&["--version"]).ok();
    assert!(v.stdout.starts_with("mmls "), "{v:?}");
    // A usage error is an error too (clap's own, exit 2).
    let out = mmls(&["send"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("required"), "{out:?}");
}

/// The whole life of three nodes through the CLI: init, run, id, peers,
/// universe create/list/show, send (args, id prefix, stdin), read --json on
/// every node, update, status; then `kill -9` one node while the others
/// send, restart it from its data dir, and it catches up exactly once and in
/// order, and everyone converges. Finally a clean stop (SIGTERM).
#[test]
fn three_nodes_send_read_update_crash_and_catch_up() {
    let _wd = Watchdog::arm(
        "three_nodes_send_read_update_crash_and_catch_up",
        Duration::from_secs(170),
    );
    let t0 = now_ms();
    let root = root();
    let mut a = NodeProc::init(root.path(), "alice");
    let mut b = NodeProc::init(root.path(), "bob");
    let mut c = NodeProc::init(root.path(), "carol");

    // `id` works before the node runs.
    let v = a.cmd(&["id", "--json"]).ok().json();
    assert_eq!(v["member"], a.member.as_str());
    assert_eq!(v["name"], "alice");
    assert_eq!(v["running"], false);
    assert_eq!(v["listen_addrs"], serde_json::json!([]));

    a.start(&[]);
    b.start(&[a.addr.clone().unwrap()]);
    c.start(&[a.addr.clone().unwrap(), b.addr.clone().unwrap()]);

    for n in [&a, &b, &c] {
        let v = n.cmd(&["id", "--json"]).ok().json();
        assert_eq!(v["member"], n.member.as_str(), "{}", n.name);
        assert_eq!(v["peer_id"], n.member.as_str(), "{}", n.name);
        assert_eq!(v["running"], true, "{}", n.name);
        let addrs: Vec<String> = serde_json::from_value(v["listen_addrs"].clone()).unwrap();
        let mine = n.addr.as_ref().unwrap();
        assert!(
            addrs.iter().any(|x| mine.starts_with(x.as_str())),
            "{}: {addrs:?} vs {mine}",
            n.name
        );
        assert!(
            addrs.iter().all(|x| x.starts_with("/ip4/127.0.0.1/")),
            "{}: listening beyond loopback: {addrs:?}",
            n.name
        );
        // The human form names the running node too.
        let human = n.cmd(&["id"]).ok().stdout;
        assert!(
            human.contains("running") && human.contains(mine.as_str()),
            "{human}"
        );
    }
    wait_mesh(&[&a, &b, &c], Duration::from_secs(30));
    let peers: Vec<types::Peer> = a.cmd(&["peers", "--json"]).ok().typed();
    let ids: BTreeSet<&str> = peers.iter().map(|p| p.peer_id.as_str()).collect();
    assert_eq!(ids, BTreeSet::from([b.member.as_str(), c.member.as_str()]));
    assert!(peers
        .iter()
        .all(|p| p.addrs.iter().all(|x| x.starts_with("/ip4/127.0.0.1/"))));

    // Create: prints exactly the id.
    let out = a
        .cmd(&[
            "universe", "create", "team", "--member", &b.member, "--member", &c.member,
        ])
        .ok();
    let u = out.stdout.trim().to_string();
    assert!(is_hex64(&u), "create printed {:?}", out.stdout);
    assert_eq!(out.stdout, format!("{u}\n"));
    let nodes = [&a, &b, &c];
    wait_for(
        "the universe ready on every node",
        Duration::from_secs(40),
        || ready(&nodes, &u),
    );

    let members: BTreeSet<&str> = nodes.iter().map(|n| n.member.as_str()).collect();
    for n in nodes {
        let list: Vec<types::Universe> = n.cmd(&["universe", "list", "--json"]).ok().typed();
        assert_eq!(list.len(), 1, "{}", n.name);
        assert_eq!(list[0].id, u);
        let show: types::Universe = n.cmd(&["universe", "show", "team", "--json"]).ok().typed();
        assert_eq!(show.id, u);
        assert_eq!(show.name.as_deref(), Some("team"));
        assert_eq!(show.profile.as_deref(), Some("mmls-00"));
        assert_eq!(show.creator.as_deref(), Some(a.member.as_str()));
        assert!(show.admins.contains(&a.member), "{show:?}");
        let roster: BTreeSet<&str> = show.roster.iter().map(String::as_str).collect();
        assert_eq!(roster, members, "{}", n.name);
        let owners: BTreeSet<&str> = show.groups.iter().map(|g| g.owner.as_str()).collect();
        assert_eq!(owners, members, "{}: one send group per member", n.name);
        // The human forms work and name the universe.
        let human = n.cmd(&["universe", "list"]).ok().stdout;
        assert!(
            human.contains("team") && human.contains(&u[..16]),
            "{human}"
        );
        let human = n.cmd(&["universe", "show", &u[..10]]).ok().stdout;
        assert!(human.contains(&u) && human.contains("(me)"), "{human}");
    }

    // Send by name, by id prefix (--json), and from stdin.
    let out = a.cmd(&["send", "team", "hello", "from", "alice"]).ok();
    assert!(
        out.stdout.starts_with("sent message #1 to universe"),
        "{out:?}"
    );
    let out = b.cmd(&["send", &u[..12], "hi from bob", "--json"]).ok();
    assert_eq!(out.json(), serde_json::json!({"universe": u, "seq": 1}));
    c.cmd_limit(
        &["send", &u, "-"],
        Some("carol's line one\nline two\n"),
        CMD_LIMIT,
    )
    .ok();
    let expect = |n: &NodeProc| -> Vec<(String, u64, String)> {
        let mut v = vec![
            (a.member.clone(), 1, "hello from alice".to_string()),
            (b.member.clone(), 1, "hi from bob".to_string()),
            (
                c.member.clone(),
                1,
                "carol's line one\nline two".to_string(),
            ),
        ];
        v.retain(|(s, _, _)| *s != n.member);
        v
    };
    for n in nodes {
        wait_for(
            &format!("{} reads the two others' messages", n.name),
            Duration::from_secs(30),
            || {
                let got = n.read(&u).len();
                if got >= 2 {
                    Ok(())
                } else {
                    Err(format!("{got} messages"))
                }
            },
        );
        // Raw `read --json`: one object per line with the documented fields.
        let out = n.cmd(&["read", "team", "--json", "--delivered"]).ok();
        let lines = out.json_lines();
        assert_eq!(lines.len(), 2, "{}: {}", n.name, out.stdout);
        let mut got = vec![];
        for l in &lines {
            let o = l.as_object().expect("an object per line");
            for k in ["sender", "universe", "seq", "text", "received_at", "cursor"] {
                assert!(o.contains_key(k), "{}: no {k} in {l}", n.name);
            }
            assert_eq!(l["universe"], u.as_str());
            let at = l["received_at"].as_u64().expect("received_at in ms");
            assert!(
                at >= t0 && at <= now_ms(),
                "received_at {at} outside the test"
            );
            got.push((
                l["sender"].as_str().unwrap().to_string(),
                l["seq"].as_u64().unwrap(),
                l["text"].as_str().unwrap().to_string(),
            ));
        }
        got.sort();
        let mut want = expect(n);
        want.sort();
        assert_eq!(got, want, "{}", n.name);
        // Paging: --limit and --after a cursor.
        let first = n
            .cmd(&["read", &u, "--json", "--delivered", "--limit", "1"])
            .ok()
            .json_lines();
        assert_eq!(first.len(), 1);
        let cur = first[0]["cursor"].as_u64().unwrap().to_string();
        let rest = n
            .cmd(&["read", &u, "--json", "--after", &cur])
            .ok()
            .json_lines();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0], lines[1]);
        // The conversation: one row per text, our own included (FROM
        // `you`), multi-line text on one line.
        let human = n.cmd(&["read", "team"]).ok().stdout;
        assert_eq!(human.lines().count(), 4, "{human}");
        assert_eq!(
            human.lines().filter(|l| l.contains("  you  ")).count(),
            1,
            "{human}"
        );
        // Others show by the name they announced, not a PeerId suffix.
        for o in nodes.iter().filter(|o| o.member != n.member) {
            assert!(human.contains(&o.name), "{} missing in {human}", o.name);
        }
        let conv = n.cmd(&["read", "team", "--json"]).ok().json_lines();
        assert_eq!(conv.len(), 3, "{}", n.name);
        assert_eq!(conv.iter().filter(|l| l["mine"] == true).count(), 1);
    }

    // An MMLS update through the CLI.
    let show: types::Universe = b.cmd(&["universe", "show", &u, "--json"]).ok().typed();
    let own = show.own_group.clone().unwrap();
    let before = show.groups.iter().find(|g| g.group == own).unwrap().epoch;
    let out = b.cmd(&["update", "team"]).ok();
    let after: u64 = out
        .stdout
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("update output: {out:?}"));
    assert!(after > before, "update: epoch {before} -> {after}");
    let view = {
        let mut last = None;
        wait_for(
            "convergence after the update",
            Duration::from_secs(40),
            || {
                last = Some(converged(&nodes, &u)?);
                Ok(())
            },
        );
        last.unwrap()
    };
    assert!(view[&own].0 >= after, "{view:?}");
    let st: types::Status = b.cmd(&["status", "--json"]).ok().typed();
    assert_eq!(st.member, b.member);
    assert_eq!(st.name, "bob");
    assert_eq!(st.peers.len(), 2);
    assert_eq!(st.universes.len(), 1);
    let human = b.cmd(&["status"]).ok().stdout;
    assert!(
        human.contains("2 connected") && human.contains("(me)"),
        "{human}"
    );

    // kill -9 carol while alice and bob send (through `mmls send`).
    let sent = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = [(&a, "a"), (&b, "b")]
        .into_iter()
        .map(|(n, tag)| {
            let dir = n.dir_str().to_string();
            let u = u.clone();
            let sent = sent.clone();
            std::thread::spawn(move || {
                let mut seqs = vec![];
                for i in 0..12 {
                    let text = format!("{tag} during the crash {i}");
                    let out = mmls(&["--data-dir", &dir, "send", &u, &text, "--json"]).ok();
                    seqs.push((out.json()["seq"].as_u64().unwrap(), text));
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                seqs
            })
        })
        .collect();
    wait_for(
        "some traffic before the kill",
        Duration::from_secs(30),
        || {
            if sent.load(Ordering::SeqCst) >= 6 {
                Ok(())
            } else {
                Err("waiting".into())
            }
        },
    );
    c.kill9();
    let crash_sends: Vec<Vec<(u64, String)>> =
        senders.into_iter().map(|t| t.join().unwrap()).collect();
    // The stale api.addr (no clean shutdown) does not fool the CLI.
    assert!(c.dir.join("api.addr").exists());
    let e = c.cmd(&["read", "team"]).one_line_error();
    assert!(e.contains("not running"), "{e}");
    let e = c.cmd(&["send", &u, "x"]).one_line_error();
    assert!(e.contains("not running"), "{e}");
    // More traffic while carol is down, and an update.
    a.cmd(&["send", &u, "a while carol is down"]).ok();
    a.cmd(&["update", &u]).ok();

    c.start(&[a.addr.clone().unwrap(), b.addr.clone().unwrap()]);
    let mut want_a: Vec<(u64, String)> = vec![(1, "hello from alice".into())];
    want_a.extend(crash_sends[0].iter().cloned());
    want_a.push((want_a.len() as u64 + 1, "a while carol is down".into()));
    let mut want_b: Vec<(u64, String)> = vec![(1, "hi from bob".into())];
    want_b.extend(crash_sends[1].iter().cloned());
    for (i, (s, _)) in want_a.iter().enumerate() {
        assert_eq!(*s, i as u64 + 1, "alice's seqs are 1, 2, ...: {want_a:?}");
    }
    for (i, (s, _)) in want_b.iter().enumerate() {
        assert_eq!(*s, i as u64 + 1, "bob's seqs are 1, 2, ...: {want_b:?}");
    }
    wait_for("carol catches up", Duration::from_secs(40), || {
        let per = by_sender("carol", &c.read(&u));
        let ga = per.get(&a.member).cloned().unwrap_or_default();
        let gb = per.get(&b.member).cloned().unwrap_or_default();
        if ga.len() < want_a.len() || gb.len() < want_b.len() {
            return Err(format!(
                "carol has {}/{} + {}/{}",
                ga.len(),
                want_a.len(),
                gb.len(),
                want_b.len()
            ));
        }
        assert_eq!(ga, want_a, "carol: alice's messages");
        assert_eq!(gb, want_b, "carol: bob's messages");
        Ok(())
    });
    // Carol talks again: her numbering continues, everyone reads her.
    let out = c.cmd(&["send", &u, "carol is back", "--json"]).ok();
    assert_eq!(out.json()["seq"], 2);
    for n in [&a, &b] {
        wait_for(
            &format!("{} reads carol", n.name),
            Duration::from_secs(30),
            || {
                let per = by_sender(&n.name, &n.read(&u));
                let got = per.get(&c.member).cloned().unwrap_or_default();
                if got.len() < 2 {
                    return Err(format!("{got:?}"));
                }
                assert_eq!(
                    got,
                    vec![
                        (1, "carol's line one\nline two".to_string()),
                        (2, "carol is back".to_string())
                    ]
                );
                Ok(())
            },
        );
    }
    let nodes = [&a, &b, &c];
    wait_for(
        "convergence after the restart",
        Duration::from_secs(40),
        || converged(&nodes, &u).map(|_| ()),
    );
    // Nobody got a message twice or out of order, and nobody reads itself.
    for n in nodes {
        let per = by_sender(&n.name, &n.read(&u));
        assert!(
            !per.contains_key(&n.member),
            "{} reads its own messages",
            n.name
        );
        assert_eq!(per.len(), 2, "{}", n.name);
    }

    // `tail --json` streams what arrives, one JSON object per line, and
    // ends by itself (exit 1, one line) when its node stops.
    let (tout, terr) = (root.path().join("tail.out"), root.path().join("tail.err"));
    let tail_b = spawn_mmls(
        &["--data-dir", b.dir_str(), "tail", "team", "--json"],
        &tout,
        &terr,
    );
    let (aout, aerr) = (
        root.path().join("tail_a.out"),
        root.path().join("tail_a.err"),
    );
    let tail_a = spawn_mmls(
        &["--data-dir", a.dir_str(), "tail", &u, "--json"],
        &aout,
        &aerr,
    );
    // The stream is subscribed once the API answered it; there is no
    // "ready" line in --json mode, so send until the first one shows up.
    let mut n = 0;
    wait_for("tail shows a live message", Duration::from_secs(30), || {
        n += 1;
        let text = format!("tail me {n}");
        c.cmd(&["send", &u, &text]).ok();
        std::thread::sleep(Duration::from_millis(300));
        let got = std::fs::read_to_string(&tout).unwrap_or_default();
        for l in got.lines() {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("tail line {l:?}: {e}"));
            if v["type"] == "message"
                && v["sender"] == c.member.as_str()
                && v["text"].as_str().is_some_and(|t| t.starts_with("tail me"))
            {
                return Ok(());
            }
        }
        Err(format!("tail printed {got:?}"))
    });
    assert!(tail_b.try_wait().is_none(), "tail exited early");
    drop(tail_b);

    // Carol leaves: everyone removes her; a member cannot forget the
    // universe, she can, and then it is gone from her node.
    let e = a.cmd(&["universe", "forget", &u]).one_line_error();
    assert!(e.contains("still a member"), "{e}");
    c.cmd(&["universe", "leave", &u]).ok();
    for n in [&a, &b] {
        wait_for(
            &format!("{} removes the leaver", n.name),
            Duration::from_secs(30),
            || {
                let show: types::Universe = n.cmd(&["universe", "show", &u, "--json"]).ok().typed();
                if show.roster.contains(&c.member)
                    || show.groups.iter().any(|g| g.owner == c.member)
                {
                    Err(format!("{show:?}"))
                } else {
                    Ok(())
                }
            },
        );
    }
    c.cmd(&["universe", "forget", &u]).ok();
    let list: Vec<types::Universe> = c.cmd(&["universe", "list", "--json"]).ok().typed();
    assert!(list.is_empty(), "{list:?}");

    // A clean stop: SIGTERM, exit 0, api.addr removed, then "not running".
    let st = a.stop(Duration::from_secs(20));
    assert!(st.is_some_and(|s| s.success()), "alice's exit: {st:?}");
    assert!(
        !a.dir.join("api.addr").exists(),
        "api.addr left after a clean stop"
    );
    let st = tail_a.wait_timeout(Duration::from_secs(20));
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(1),
        "tail on a stopped node: {st:?}"
    );
    let e = std::fs::read_to_string(&aerr).unwrap();
    assert_eq!(e.lines().count(), 1, "{e:?}");
    assert!(e.starts_with("error: the node stopped"), "{e:?}");
    let e = a.cmd(&["status"]).one_line_error();
    assert!(e.contains("not running"), "{e}");
}

/// Bad input: each a clear one-line error on stderr, a non-zero exit, and
/// nothing written (no data dir created, the store and the node's state
/// unchanged); garbage sent straight to the API is refused with a JSON error
/// and the node carries on.
#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let _wd = Watchdog::arm(
        "bad_input_is_refused_and_changes_nothing",
        Duration::from_secs(150),
    );
    let root = root();

    // Missing data dir: every command that needs one says `mmls init`, and
    // none creates it.
    let missing = root.path().join("missing");
    let m = missing.to_str().unwrap();
    for args in [
        vec!["status"],
        vec!["id"],
        vec!["peers", "--json"],
        vec!["send", "x", "hi"],
        vec!["read", "x"],
        vec!["universe", "list"],
        vec![
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--api",
            "127.0.0.1:0",
        ],
    ] {
        let mut all = vec!["--data-dir", m];
        all.extend_from_slice(&args);
        let e = mmls(&all).one_line_error();
        assert!(e.contains("mmls init"), "{args:?}: {e}");
        assert!(!missing.exists(), "{args:?} created the data dir");
    }
    // MMLS_DATA_DIR is honoured the same way.
    let out = mmls_env(&["status"], &[("MMLS_DATA_DIR", m)], None, CMD_LIMIT);
    assert!(out.one_line_error().contains("mmls init"));
    assert!(!missing.exists());

    let mut a = NodeProc::init(root.path(), "a");
    let mut b = NodeProc::init(root.path(), "b");
    // A third identity whose node never runs: an unknown member.
    let ghost = NodeProc::init(root.path(), "ghost");

    // init again: refused, the identity untouched.
    let before = snapshot(&a.dir);
    let e = a.cmd(&["init", "--name", "again"]).one_line_error();
    assert!(e.contains("already holds an identity"), "{e}");
    let e = a.cmd(&["init", "--name", "  "]).one_line_error();
    assert!(e.contains("name"), "{e}");
    assert_eq!(
        snapshot(&a.dir),
        before,
        "a refused init wrote to the data dir"
    );

    // Node not running (never started): one line, nothing written.
    for args in [
        vec!["status"],
        vec!["send", "x", "hi"],
        vec!["read", "x"],
        vec!["universe", "create", "u", "--member", &b.member],
        vec!["update", "x"],
    ] {
        let e = a.cmd(&args).one_line_error();
        assert!(
            e.contains("not running") && e.contains("mmls run"),
            "{args:?}: {e}"
        );
    }
    assert_eq!(snapshot(&a.dir), before, "commands without a node wrote");

    a.start(&[]);
    b.start(&[a.addr.clone().unwrap()]);
    wait_mesh(&[&a, &b], Duration::from_secs(30));
    let u = a
        .cmd(&["universe", "create", "club", "--member", &b.member])
        .ok()
        .stdout
        .trim()
        .to_string();
    wait_for("the universe ready", Duration::from_secs(40), || {
        ready(&[&a, &b], &u)
    });
    a.cmd(&["send", &u, "the only message"]).ok();
    wait_for("b reads it", Duration::from_secs(30), || {
        if b.read(&u).len() == 1 {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    wait_for("converged", Duration::from_secs(30), || {
        converged(&[&a, &b], &u).map(|_| ())
    });
    // What "nothing changed" means below: a's universes (epochs, auth
    // hashes, stream positions, messages sent) and b's delivered messages.
    let state = |a: &NodeProc, b: &NodeProc| {
        let list: Vec<types::Universe> = a.cmd(&["universe", "list", "--json"]).ok().typed();
        (list, b.read(&u))
    };
    let st0 = state(&a, &b);

    // Unknown universe: by name, by prefix, by a well-formed unknown id.
    let unknown = "ab".repeat(32);
    for args in [
        vec!["send", "nosuch", "hi"],
        vec!["send", "abababab", "hi"],
        vec!["send", &unknown, "hi"],
        vec!["read", &unknown],
        vec!["read", "nosuch", "--json"],
        vec!["update", &unknown],
        vec!["universe", "show", &unknown],
        vec!["universe", "add", "nosuch", &ghost.member],
        vec!["rejoin", "nosuch"],
    ] {
        let e = a.cmd(&args).one_line_error();
        assert!(
            e.contains("no universe matches") || e.contains("unknown universe"),
            "{args:?}: {e}"
        );
    }
    // Too short a prefix gets a hint.
    let e = a.cmd(&["send", &u[..4], "hi"]).one_line_error();
    assert!(e.contains("at least 8 hex"), "{e}");
    // Invalid and unknown members.
    for bad in ["bogus", "12D3KooW", &unknown] {
        let e = a
            .cmd(&["universe", "create", "x", "--member", bad])
            .one_line_error();
        assert!(e.contains("invalid member id"), "{bad}: {e}");
        let e = a.cmd(&["universe", "add", &u, bad]).one_line_error();
        assert!(e.contains("invalid member id"), "{bad}: {e}");
    }
    // A well-formed id whose node is not around: the node waits for its
    // KeyPackage, then gives up with a hint.
    let e = a
        .cmd(&["universe", "create", "x", "--member", &ghost.member])
        .one_line_error();
    assert!(
        e.contains("KeyPackage") && e.contains(&ghost.member),
        "unknown member: {e}"
    );
    // A universe with only oneself.
    let e = a
        .cmd(&["universe", "create", "x", "--member", &a.member])
        .one_line_error();
    assert!(e.contains("member"), "{e}");
    // Empty messages (args and stdin) and an empty name.
    let e = a.cmd(&["send", &u, ""]).one_line_error();
    assert!(e.contains("empty"), "{e}");
    let e = a
        .cmd_limit(&["send", &u, "-"], Some(""), CMD_LIMIT)
        .one_line_error();
    assert!(e.contains("empty"), "{e}");
    let e = a
        .cmd(&["universe", "create", " ", "--member", &b.member])
        .one_line_error();
    assert!(e.contains("empty"), "{e}");
    // Adding a member twice.
    let e = a.cmd(&["universe", "add", &u, &b.member]).one_line_error();
    assert!(e.contains("already"), "{e}");
    // b is not an admin: it cannot add members.
    let e = b
        .cmd(&["universe", "add", &u, &ghost.member])
        .one_line_error();
    assert!(e.contains("admin"), "{e}");
    assert_eq!(state(&a, &b), st0, "refused commands changed the state");

    // Raw HTTP garbage straight at the API.
    let api = a.api.clone().unwrap();
    let token = std::fs::read_to_string(a.dir.join("api.token")).unwrap();
    let token = token.trim();
    let send_path = format!("/v1/universes/{u}/messages");
    let cases: Vec<(String, u16, &str)> = vec![
        (
            http("GET", "/v1/status", Some("wrong"), None),
            401,
            "unauthorized",
        ),
        (http("GET", "/v1/status", None, None), 401, "unauthorized"),
        (
            http(
                "POST",
                &send_path,
                Some("wrong"),
                Some("{\"text\":\"forged\"}"),
            ),
            401,
            "unauthorized",
        ),
        (
            http("POST", &send_path, Some(token), Some("{\"text\":")),
            400,
            "bad_json",
        ),
        (
            http("POST", &send_path, Some(token), Some("\u{0}\u{1}garbage")),
            400,
            "bad_json",
        ),
        (
            http("POST", &send_path, Some(token), Some("{\"txt\":\"x\"}")),
            400,
            "bad_json",
        ),
        (
            http(
                "POST",
                "/v1/universes/zz/messages",
                Some(token),
                Some("{\"text\":\"x\"}"),
            ),
            400,
            "bad_universe_id",
        ),
        (
            http(
                "POST",
                "/v1/universes",
                Some(token),
                Some("{\"name\":\"x\",\"members\":[\"not-a-peer\"]}"),
            ),
            400,
            "invalid_member",
        ),
        (
            http("POST", "/v1/universes", Some(token), Some("[1,2,3]")),
            400,
            "bad_json",
        ),
        (
            http("GET", &format!("{send_path}?after=-1"), Some(token), None),
            400,
            "bad_query",
        ),
        (
            http("GET", "/v1/nothing", Some(token), None),
            404,
            "not_found",
        ),
        (
            http("DELETE", "/v1/status", Some(token), None),
            405,
            "method_not_allowed",
        ),
    ];
    for (req, status, code) in &cases {
        let (got, body) = raw_http(&api, req.as_bytes(), false);
        assert_eq!(got, Some(*status), "{req:?} -> {body}");
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{req:?}: {e}: {body}"));
        assert_eq!(v["error"]["code"], *code, "{req:?}: {body}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    // Not HTTP at all: refused (a 400 or a closed connection), no crash.
    for junk in [
        &b"\x00\xff\xfe garbage \r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /v1/shutdown HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
    ] {
        let (st, _) = raw_http(&api, junk, true);
        assert!(
            st.is_none() || st.is_some_and(|s| s >= 400),
            "{junk:?}: {st:?}"
        );
    }
    // A wrong token in the data dir: the CLI explains, one line.
    let tok_file = a.dir.join("api.token");
    let saved = std::fs::read(&tok_file).unwrap();
    std::fs::write(&tok_file, "0".repeat(64)).unwrap();
    let e = a.cmd(&["send", &u, "with a wrong token"]).one_line_error();
    assert!(e.contains("does not prove it knows"), "{e}");
    std::fs::write(&tok_file, &saved).unwrap();
    // The node is alive and nothing changed.
    assert!(a.running(), "the node died of garbage input");
    assert_eq!(state(&a, &b), st0, "garbage input changed the state");
    // And it still works.
    let out = a.cmd(&["send", &u, "still here", "--json"]).ok();
    assert_eq!(out.json()["seq"], 2);

    // kill -9: the stale api.addr points nowhere, the CLI says "not running".
    a.kill9();
    assert!(a.dir.join("api.addr").exists());
    let dead = snapshot(&a.dir);
    for args in [vec!["status"], vec!["send", &u, "x"], vec!["read", &u]] {
        let e = a.cmd(&args).one_line_error();
        assert!(e.contains("not running"), "{args:?}: {e}");
    }
    assert_eq!(snapshot(&a.dir), dead, "commands against a dead node wrote");
    // `id` still answers from the data dir.
    let v = a.cmd(&["id", "--json"]).ok().json();
    assert_eq!(v["running"], false);
    assert_eq!(v["member"], a.member.as_str());
    // A second node on the same data dir is refused while one runs.
    a.start(&[b.addr.clone().unwrap()]);
    let out = a.cmd_limit(
        &[
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--api",
            "127.0.0.1:0",
        ],
        None,
        Duration::from_secs(30),
    );
    let e = out.one_line_error();
    assert!(e.contains("in use"), "{e}");
    assert!(a.running());
    // ... and did not take over the running node's api.addr.
    let st = a.status();
    assert_eq!(st.member, a.member);
    drop(b);
}

/// One HTTP/1.1 request as bytes.
fn http(method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(t) = token {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ));
    } else {
        r.push_str("\r\n");
    }
    r
}

/// Sends raw bytes to the API, returns the status and body (None: the
/// server closed the connection without an answer). `half_close`: shut our
/// side down after the bytes (for junk the server may wait on forever).
fn raw_http(api: &str, req: &[u8], half_close: bool) -> (Option<u16>, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(api).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(req);
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut buf = vec![];
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok());
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
