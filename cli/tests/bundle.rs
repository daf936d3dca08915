//! Sneakernet end to end: two real `mmls` nodes with no network between
//! them (loopback listeners, no peers, no mDNS) converge by `mmls bundle`
//! files alone, through the running node's API and on a stopped node's data
//! dir; bad files are one-line errors that change nothing.

mod common;

use common::*;
use node::types;
use std::time::Duration;

/// One round trip of full bundles, a -> b then b -> a.
fn round(a: &NodeProc, b: &NodeProc, u: &str, dir: &std::path::Path) {
    let fa = dir.join("a.bundle");
    let fb = dir.join("b.bundle");
    let fa = fa.to_str().unwrap();
    let fb = fb.to_str().unwrap();
    a.cmd(&["bundle", "export", u, fa]).ok();
    b.cmd(&["bundle", "import", fa, "--json"]).ok();
    b.cmd(&["bundle", "export", u, fb]).ok();
    a.cmd(&["bundle", "import", fb, "--json"]).ok();
    // Commits the imports set off (after the commit delay) go in the next round.
    std::thread::sleep(Duration::from_millis(1200));
}

fn read(n: &NodeProc, u: &str) -> Vec<types::Message> {
    n.cmd(&["read", u, "--json", "--delivered"])
        .ok()
        .json_lines()
        .into_iter()
        .map(|v| serde_json::from_value(v).expect("message"))
        .collect()
}

#[test]
fn two_nodes_without_a_network_converge_by_files() {
    let _wd = Watchdog::arm(
        "two_nodes_without_a_network_converge_by_files",
        Duration::from_secs(240),
    );
    let root = root();
    let files = root.path().join("usb-stick");
    std::fs::create_dir_all(&files).unwrap();
    let f = |name: &str| files.join(name).to_str().unwrap().to_string();
    let mut a = NodeProc::init(root.path(), "alice");
    let mut b = NodeProc::init(root.path(), "bob");

    // Bob introduces himself by file, before his node ever ran (the data
    // dir is opened directly).
    let intro = f("bob.intro");
    let v = b
        .cmd(&["bundle", "introduce", &intro, "--json"])
        .ok()
        .json();
    assert_eq!(v["member"], b.member.as_str());

    a.start(&[]);
    b.start(&[]);
    let r: types::BundleImported = a.cmd(&["bundle", "import", &intro, "--json"]).ok().typed();
    assert!(r.key_package_ok && r.universe.is_none(), "{r:?}");
    let u = a
        .cmd(&["universe", "create", "island", "--member", &b.member])
        .ok()
        .stdout
        .trim()
        .to_string();

    let nodes = [&a, &b];
    let mut last = String::new();
    for i in 0.. {
        round(&a, &b, if i % 2 == 0 { "island" } else { &u }, &files);
        match converged(&nodes, &u) {
            Ok(_) => {
                eprintln!("converged by files after {} round trips", i + 1);
                break;
            }
            Err(why) if i < 12 => last = why,
            Err(why) => panic!("no convergence by files after {i} rounds: {why} ({last})"),
        }
    }
    for n in nodes {
        let peers: Vec<types::Peer> = n.cmd(&["peers", "--json"]).ok().typed();
        assert!(
            peers.is_empty(),
            "{}: a network link exists: {peers:?}",
            n.name
        );
    }

    a.cmd(&["send", "island", "hello from alice"]).ok();
    b.cmd(&["send", "island", "hello from bob"]).ok();
    a.cmd(&["send", "island", "and again"]).ok();
    for _ in 0..2 {
        round(&a, &b, &u, &files);
    }
    wait_for("convergence after messages", Duration::from_secs(5), || {
        converged(&nodes, &u).map(|_| ())
    });
    let at_b = by_sender("bob", &read(&b, &u));
    let at_a = by_sender("alice", &read(&a, &u));
    let texts = |m: &std::collections::BTreeMap<String, Vec<(u64, String)>>, who: &str| {
        m.get(who)
            .map(|v| v.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(texts(&at_b, &a.member), ["hello from alice", "and again"]);
    assert_eq!(texts(&at_a, &b.member), ["hello from bob"]);

    // Re-importing the same file: only duplicates.
    let again: types::BundleImported = b
        .cmd(&["bundle", "import", &f("a.bundle"), "--json"])
        .ok()
        .typed();
    assert_eq!((again.accepted, again.rejected), (0, 0), "{again:?}");
    assert!(again.duplicate > 0, "{again:?}");

    // Bad files: one line, exit 1, nothing changed.
    let before = universe_of(&b.status(), &u).map(|x| view(&x));
    let garbage = f("garbage.bundle");
    std::fs::write(&garbage, b"this is not a bundle at all, just text\n").unwrap();
    let cut = f("cut.bundle");
    let full = std::fs::read(f("a.bundle")).unwrap();
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    for (file, says) in [(&garbage, "not an mmls bundle"), (&cut, "damaged")] {
        let line = b.cmd(&["bundle", "import", file]).one_line_error();
        assert!(line.contains(says), "{line}");
    }
    let line = b
        .cmd(&["bundle", "import", &f("does-not-exist")])
        .one_line_error();
    assert!(line.contains("does-not-exist"), "{line}");
    let line = a
        .cmd(&["bundle", "export", "no-such-universe", &f("x")])
        .one_line_error();
    assert!(line.contains("no universe matches"), "{line}");
    // The API refuses them too (the CLI checks before it sends; others may not).
    let api = node::Client::from_data_dir(&b.dir).expect("bob's API");
    for (body, code) in [
        (&b"garbage"[..], "not_a_bundle"),
        (&full[..full.len() - 1], "corrupt_bundle"),
    ] {
        match api.bundle_import(body) {
            Err(node::ClientError::Api {
                status, code: c, ..
            }) => {
                assert_eq!((status, c.as_str()), (400, code))
            }
            other => panic!("{code}: {other:?}"),
        }
    }
    match api.bundle_export(Some(&"0".repeat(64)), None) {
        Err(node::ClientError::Api { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (404, "not_in_universe"))
        }
        other => panic!("unknown universe: {other:?}"),
    }
    assert_eq!(universe_of(&b.status(), &u).map(|x| view(&x)), before);

    // Bob's node is off: alice exports what bob is known to lack, bob
    // imports it into his data dir directly, and his node delivers it
    // when it runs again.
    b.stop(Duration::from_secs(20)).expect("bob stops");
    a.cmd(&["send", "island", "while bob was off"]).ok();
    let delta = f("delta.bundle");
    let v = a
        .cmd(&[
            "bundle",
            "export",
            &u[..12],
            &delta,
            "--since-peer",
            &b.member,
            "--json",
        ])
        .ok()
        .json();
    let full = a
        .cmd(&["bundle", "export", &u, &f("full.bundle"), "--json"])
        .ok()
        .json();
    assert!(
        v["known_groups"].as_u64() >= Some(1) && v["entries"].as_u64() < full["entries"].as_u64(),
        "since-peer {v} vs full {full}"
    );
    let r: types::BundleImported = b.cmd(&["bundle", "import", &delta, "--json"]).ok().typed();
    assert!(r.accepted >= 1 && r.rejected == 0, "{r:?}");
    b.start(&[]);
    let at_b = by_sender("bob", &read(&b, &u));
    assert_eq!(
        texts(&at_b, &a.member),
        ["hello from alice", "and again", "while bob was off"]
    );
}
