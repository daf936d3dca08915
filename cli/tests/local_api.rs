//! The local API's token: rotated at every start of the node, and never
//! sent to a listener that cannot prove it holds it (a stale `api.addr`
//! after `kill -9`, and another program on that port).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn the_token_changes_at_every_start() {
    let _wd = Watchdog::arm("the_token_changes_at_every_start", Duration::from_secs(120));
    let root = root();
    let mut n = NodeProc::init(root.path(), "field");
    let file = n.dir.join("api.token");
    let token = || std::fs::read_to_string(&file).unwrap();
    let at_init = token();
    n.start(&[]);
    let first = token();
    n.cmd(&["status"]).ok();
    assert!(n.stop(Duration::from_secs(20)).is_some(), "clean stop");
    n.start(&[]);
    let second = token();
    assert_ne!(at_init, first);
    assert_ne!(first, second);
    n.cmd(&["status"]).ok();
}

#[test]
fn a_stale_api_addr_never_gets_the_token() {
    let _wd = Watchdog::arm(
        "a_stale_api_addr_never_gets_the_token",
        Duration::from_secs(120),
    );
    let root = root();
    let mut n = NodeProc::init(root.path(), "field");
    n.start(&[]);
    n.kill9();
    // Another program now listens where the dead node's api.addr points:
    // it answers every request with a made-up proof and keeps what it got.
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = squatter.local_addr().unwrap();
    std::fs::write(n.dir.join("api.addr"), addr.to_string()).unwrap();
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in squatter.incoming().take(8) {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 4096];
            let got = c.read(&mut buf).unwrap_or(0);
            log.lock().unwrap().extend_from_slice(&buf[..got]);
            let body = format!("{{\"proof\":\"{}\"}}", "00".repeat(32));
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let token = std::fs::read_to_string(n.dir.join("api.token")).unwrap();
    for args in [vec!["status"], vec!["send", "0123456789abcdef", "x"]] {
        let e = n.cmd(&args).one_line_error();
        assert!(e.contains("does not prove it knows"), "{args:?}: {e}");
    }
    let seen = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
    assert!(
        seen.contains("/v1/prove"),
        "the CLI asked for a proof: {seen}"
    );
    assert!(!seen.contains(token.trim()), "the token leaked: {seen}");
    assert!(
        !seen.to_ascii_lowercase().contains("authorization"),
        "{seen}"
    );
}
