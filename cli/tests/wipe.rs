//! `mmls wipe`, the panic button: refused without `--yes`, and with it the
//! running node is stopped and its data dir destroyed; a directory that is
//! no data dir is refused untouched.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn wipe_stops_the_node_and_destroys_its_data_dir() {
    let _wd = Watchdog::arm("wipe_stops_the_node", Duration::from_secs(120));
    let root = root();
    let mut n = NodeProc::init(root.path(), "field");
    n.start(&[]);
    let files: Vec<_> = snapshot(&n.dir).into_keys().collect();

    let out = n.cmd(&["wipe"]);
    assert!(!out.success(), "wipe without --yes: {out:?}");
    assert!(out.one_line_error().contains("--yes"), "{out:?}");
    assert!(n.running(), "the node kept running");
    let still: Vec<_> = snapshot(&n.dir).into_keys().collect();
    assert_eq!(still, files, "nothing touched without --yes");

    let out = n.cmd(&["wipe", "--yes"]).ok();
    assert!(out.stdout.contains("stopped the node"), "{out:?}");
    assert!(!n.dir.exists(), "{} is still there", n.dir.display());
    let t0 = Instant::now();
    while n.running() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!n.running(), "the node process did not exit");

    let notes = root.path().join("notes");
    std::fs::create_dir_all(&notes).unwrap();
    std::fs::write(notes.join("todo.txt"), b"mine").unwrap();
    let out = mmls_limit(
        &["--data-dir", notes.to_str().unwrap(), "wipe", "--yes"],
        None,
        Duration::from_secs(30),
    );
    assert!(!out.success(), "{out:?}");
    assert!(
        out.one_line_error().contains("not an mmls data dir"),
        "{out:?}"
    );
    assert_eq!(std::fs::read(notes.join("todo.txt")).unwrap(), b"mine");
}
