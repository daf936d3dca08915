//! Ciphersuite choice end to end: real `mmls` processes on 127.0.0.1, a
//! universe accepting 0x0001 and 0x0003 (`--suites 1,3`), nodes preferring
//! different suites (`mmls run --suites`), texts both ways, and `universe
//! show` naming the accepted suites and each member's.

mod common;

use common::*;
use node::types;
use std::time::Duration;

#[test]
fn a_universe_of_suites_1_and_3_with_nodes_preferring_each() {
    let _wd = Watchdog::arm(
        "a_universe_of_suites_1_and_3_with_nodes_preferring_each",
        Duration::from_secs(150),
    );
    let root = root();
    let mut alice = NodeProc::init(root.path(), "alice");
    let mut bob = NodeProc::init(root.path(), "bob");
    let mut cathy = NodeProc::init(root.path(), "cathy");
    let run = |peers: &[String], suites: &str| -> Vec<String> {
        let mut a: Vec<String> = [
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--api",
            "127.0.0.1:0",
            "--suites",
            suites,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for p in peers {
            a.extend(["--peer".to_string(), p.clone()]);
        }
        a
    };
    let start = |n: &mut NodeProc, args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        n.start_with(&a);
    };
    // Alice and Cathy prefer 0x0001, Bob 0x0003.
    start(&mut alice, run(&[], "1,3"));
    let a = alice.addr.clone().expect("addr");
    start(&mut bob, run(std::slice::from_ref(&a), "3,1"));
    start(&mut cathy, run(&[a, bob.addr.clone().expect("addr")], "1"));
    wait_mesh(&[&alice, &bob, &cathy], Duration::from_secs(30));

    // A suite the node does not implement: refused before the node is
    // asked (a usage error naming it), no universe made.
    let out = alice.cmd(&[
        "universe",
        "create",
        "bad",
        "--member",
        &bob.member,
        "--suites",
        "1,7",
    ]);
    assert!(
        !out.success() && out.stderr.contains("0x0007 is not implemented"),
        "{out:?}"
    );
    let list: Vec<types::Universe> = alice.cmd(&["universe", "list", "--json"]).ok().typed();
    assert!(list.is_empty(), "{list:?}");

    let u = alice
        .cmd(&[
            "universe",
            "create",
            "mixed",
            "--member",
            &bob.member,
            "--member",
            &cathy.member,
            "--suites",
            "1,3",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    assert_eq!(u.len(), 64, "{u}");
    let nodes = [&alice, &bob, &cathy];
    wait_for("the universe ready", Duration::from_secs(40), || {
        ready(&nodes, &u)
    });

    // Texts both ways between a 0x0001 and a 0x0003 send group.
    bob.cmd(&["send", "mixed", "from bob, in 0x0003"]).ok();
    alice.cmd(&["send", "mixed", "from alice, in 0x0001"]).ok();
    wait_for("texts both ways", Duration::from_secs(30), || {
        let at_alice = alice.read(&u);
        let at_bob = bob.read(&u);
        let at_cathy = cathy.read(&u);
        let has = |v: &[types::Message], t: &str| v.iter().any(|m| m.text == t);
        if has(&at_alice, "from bob, in 0x0003")
            && has(&at_bob, "from alice, in 0x0001")
            && has(&at_cathy, "from bob, in 0x0003")
            && has(&at_cathy, "from alice, in 0x0001")
        {
            Ok(())
        } else {
            Err(format!("{at_alice:?} / {at_bob:?} / {at_cathy:?}"))
        }
    });

    // Every node shows the accepted suites and each member's.
    let want = |m: &str| {
        if m == bob.member {
            3
        } else {
            1
        }
    };
    for n in nodes {
        let show: types::Universe = n.cmd(&["universe", "show", "mixed", "--json"]).ok().typed();
        assert_eq!(show.ciphersuites, [1, 3], "{}", n.name);
        assert_eq!(show.groups.len(), 3, "{}: {show:?}", n.name);
        for g in &show.groups {
            assert_eq!(g.ciphersuite, want(&g.owner), "{}: {g:?}", n.name);
        }
        let text = n.cmd(&["universe", "show", "mixed"]).ok().stdout;
        for want in [
            "suites     0x0001 (X25519/AES128GCM/Ed25519), 0x0003 (X25519/ChaCha20Poly1305/Ed25519)",
            "suite of",
            "SUITE",
        ] {
            assert!(text.contains(want), "{}: {want:?} not in\n{text}", n.name);
        }
        assert!(
            text.lines()
                .any(|l| l.contains(&bob.member) && l.contains("0x0003 (X25519/ChaCha20")),
            "{}: bob's suite not shown\n{text}",
            n.name
        );
    }
}
