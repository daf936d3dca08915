//! The local API end to end: auth, JSON errors, loopback-only binding, and
//! the blocking client against two real nodes (create, send, read, stream).

mod common;

use common::*;
use node::types::StreamEvent;
use node::{Client, ClientError, Config, DataDir, Node, NodeError};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::timeout;

fn raw(
    method: &str,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut r = ureq::request(method, &format!("http://{addr}{path}"));
    if let Some(t) = token {
        r = r.set("Authorization", &format!("Bearer {t}"));
    }
    let res = match body {
        Some(b) => r.set("Content-Type", "application/json").send_string(b),
        None => r.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

fn api_node(c: &mut Config) {
    c.api_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_errors_and_bind_policy() {
    init_tracing();
    timeout(Duration::from_secs(60), async {
        let root = root();
        let n = start_with(root.path(), "a", api_node).await;
        let addr = n.h.api_addr().expect("api addr");
        let dd = DataDir::open(&n.dir).unwrap();
        assert_eq!(dd.read_api_addr(), Some(addr), "api.addr written");
        let token = dd.api_token().unwrap();

        let t = token.clone();
        blocking(move || {
            // No token, wrong token.
            let (s, b) = raw("GET", addr, "/v1/status", None, None);
            assert_eq!(s, 401);
            assert_eq!(b["error"]["code"], "unauthorized");
            let (s, _) = raw("GET", addr, "/v1/status", Some(&"0".repeat(64)), None);
            assert_eq!(s, 401);
            let (s, _) = raw("GET", addr, "/v1/openapi.json", Some("short"), None);
            assert_eq!(s, 401);
            // With the token.
            let (s, b) = raw("GET", addr, "/v1/status", Some(&t), None);
            assert_eq!(s, 200, "{b}");
            assert!(b["member"].as_str().unwrap().starts_with("12D3KooW"));
            let (s, b) = raw("GET", addr, "/v1/openapi.json", Some(&t), None);
            assert_eq!(s, 200);
            assert!(b["openapi"].as_str().unwrap().starts_with("3."));
            // Garbage bodies: 400 with a JSON error.
            for body in ["{not json", "", "[1,2,3]", "{\"name\": 5}", "\u{0}\u{1}"] {
                let (s, b) = raw("POST", addr, "/v1/universes", Some(&t), Some(body));
                assert_eq!(s, 400, "body {body:?}: {b}");
                assert_eq!(b["error"]["code"], "bad_json", "{b}");
                assert!(!b["error"]["message"].as_str().unwrap().is_empty());
            }
            let (s, b) = raw(
                "POST",
                addr,
                "/v1/universes",
                Some(&t),
                Some(r#"{"name":"x","members":["nope"]}"#),
            );
            assert_eq!(s, 400);
            assert_eq!(b["error"]["code"], "invalid_member");
            let (s, b) = raw(
                "POST",
                addr,
                "/v1/universes",
                Some(&t),
                Some(r#"{"name":"x","members":[]}"#),
            );
            assert_eq!(s, 400, "{b}");
            // Unknown and malformed universes.
            let zero = "0".repeat(64);
            for path in [
                format!("/v1/universes/{zero}"),
                format!("/v1/universes/{zero}/messages"),
                format!("/v1/universes/{zero}/stream"),
            ] {
                let (s, b) = raw("GET", addr, &path, Some(&t), None);
                assert_eq!(s, 404, "{path}: {b}");
                assert_eq!(b["error"]["code"], "unknown_universe", "{path}");
            }
            let (s, b) = raw(
                "POST",
                addr,
                &format!("/v1/universes/{zero}/messages"),
                Some(&t),
                Some(r#"{"text":"hi"}"#),
            );
            assert_eq!(s, 404, "{b}");
            let (s, b) = raw("GET", addr, "/v1/universes/xyz", Some(&t), None);
            assert_eq!(s, 400);
            assert_eq!(b["error"]["code"], "bad_universe_id");
            let (s, b) = raw(
                "GET",
                addr,
                &format!("/v1/universes/{zero}/messages?after=abc"),
                Some(&t),
                None,
            );
            assert_eq!(s, 400, "{b}");
            let (s, b) = raw("GET", addr, "/v1/nothing", Some(&t), None);
            assert_eq!(s, 404);
            assert_eq!(b["error"]["code"], "not_found");
            let (s, _) = raw("DELETE", addr, "/v1/status", Some(&t), None);
            assert_eq!(s, 405);
            // Oversized body.
            let big = format!("{{\"text\":\"{}\"}}", "x".repeat(3 << 20));
            // The server answers 413 from the Content-Length alone and closes
            // without reading 3 MiB, so the client may instead see the
            // connection closed under its write (EPIPE/ECONNRESET): both are a
            // refusal. What must hold: never accepted, and the node serves on.
            let url = format!("http://{addr}/v1/universes/{zero}/messages");
            let res = ureq::post(&url)
                .set("Authorization", &format!("Bearer {t}"))
                .set("Content-Type", "application/json")
                .send_string(&big);
            match res {
                Err(ureq::Error::Status(413, r)) => {
                    let b: serde_json::Value =
                        serde_json::from_str(&r.into_string().unwrap_or_default())
                            .unwrap_or_default();
                    assert_eq!(b["error"]["code"], "bad_body", "{b}");
                }
                Err(ureq::Error::Transport(e)) => {
                    let io = std::error::Error::source(&e)
                        .and_then(|s| s.downcast_ref::<std::io::Error>())
                        .map(|io| io.kind());
                    assert!(
                        matches!(
                            io,
                            Some(
                                std::io::ErrorKind::BrokenPipe
                                    | std::io::ErrorKind::ConnectionReset
                            )
                        ),
                        "oversized body: unexpected transport error {e}"
                    );
                }
                other => panic!("oversized body was not refused: {other:?}"),
            }
            let (s, _) = raw("GET", addr, "/v1/status", Some(&t), None);
            assert_eq!(s, 200, "the node still serves after an oversized body");
            // The client reports the server's code.
            let c = Client::new(&addr.to_string(), &t);
            match c.universe(&zero) {
                Err(ClientError::Api {
                    status: 404, code, ..
                }) => assert_eq!(code, "unknown_universe"),
                other => panic!("expected a 404, got {other:?}"),
            }
            let bad = Client::new(&addr.to_string(), "wrong");
            assert_eq!(bad.status().unwrap_err().code(), Some("unauthorized"));
        })
        .await;

        // Non-loopback API refused unless explicitly allowed.
        let dir2 = root.path().join("b");
        DataDir::init(&dir2, "b").unwrap();
        let mut cfg = test_config(&dir2);
        cfg.api_addr = Some("0.0.0.0:0".parse().unwrap());
        match Node::start(cfg).await {
            Err(NodeError::RemoteApiRefused(a)) => assert_eq!(a.port(), 0),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a non-loopback API bind was accepted"),
        }
        // A missing data dir is a typed error.
        let e = Node::start(test_config(&root.path().join("none")))
            .await
            .unwrap_err();
        assert!(matches!(e, NodeError::NoIdentity(_)), "{e}");

        n.h.shutdown().await;
        assert_eq!(dd.read_api_addr(), None, "api.addr removed at shutdown");
        let e = Client::from_data_dir(&n.dir).unwrap_err();
        assert!(matches!(e, ClientError::NotRunning(_)), "{e}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_drives_two_nodes() {
    init_tracing();
    timeout(Duration::from_secs(90), async {
        let root = root();
        let a = start_with(root.path(), "a", api_node).await;
        let b = start_with(root.path(), "b", api_node).await;
        link(&a, &b).await;
        let (da, db) = (a.dir.clone(), b.dir.clone());
        let (ma, mb) = (a.member().to_string(), b.member().to_string());
        let addr_b = b.addr.to_string();
        blocking(move || {
            let ca = Client::from_data_dir(&da).unwrap();
            let cb = Client::from_data_dir(&db).unwrap();
            let id = ca.id().unwrap();
            assert_eq!(id.member, ma);
            assert_eq!(id.peer_id, ma);
            assert_eq!(id.name, "a");
            assert!(!id.listen_addrs.is_empty());
            let peers = ca.peers().unwrap();
            assert!(peers.iter().any(|p| p.peer_id == mb), "{peers:?}");
            assert!(peers.iter().any(|p| p
                .addrs
                .iter()
                .any(|x| addr_b.starts_with(x.as_str()) || x.contains("127.0.0.1"))));

            let u = ca
                .create_universe("chat", std::slice::from_ref(&mb), Some("dmls"), None)
                .unwrap();
            assert_eq!(u.len(), 64);
            // B joins through the Welcome.
            let start = std::time::Instant::now();
            let ub = loop {
                match cb.universe(&u) {
                    Ok(s) if s.own_group.is_some() && s.groups.len() == 2 => break s,
                    _ if start.elapsed() > Duration::from_secs(30) => panic!("B never joined"),
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            };
            assert_eq!(ub.profile.as_deref(), Some("dmls"));
            assert_eq!(ub.name.as_deref(), Some("chat"));
            let stream = cb.stream(&u).unwrap();
            let reader = std::thread::spawn(move || {
                for ev in stream {
                    if let Ok(StreamEvent::Message(m)) = ev {
                        return Some(m);
                    }
                }
                None
            });
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(ca.send(&u, "hello, b").unwrap(), 1);
            assert_eq!(ca.send(&u, "second").unwrap(), 2);
            let got = reader.join().unwrap().expect("a streamed message");
            assert_eq!(got.text, "hello, b");
            assert_eq!(got.sender, ma);
            assert_eq!(got.seq, 1);
            let start = std::time::Instant::now();
            let msgs = loop {
                let m = cb.messages(&u, None, Some(10)).unwrap();
                if m.len() == 2 || start.elapsed() > Duration::from_secs(20) {
                    break m;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            assert_eq!(
                msgs.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
                ["hello, b", "second"]
            );
            let after = cb.messages(&u, Some(msgs[0].cursor), None).unwrap();
            assert_eq!(after.len(), 1);
            assert_eq!(after[0].text, "second");
            ca.update(&u).unwrap();
            let st = ca.status().unwrap();
            assert_eq!(st.universes.len(), 1);
            assert_eq!(st.peers.len(), 1);
            // Only admins add; B is not one.
            let e = cb.add_member(&u, &ma).unwrap_err();
            assert_eq!(e.code(), Some("not_admin"), "{e}");
            // Shut B down through the API.
            cb.shutdown().unwrap();
        })
        .await;
        timeout(Duration::from_secs(10), b.h.wait())
            .await
            .expect("B stops after /v1/shutdown");
        assert!(!b.dir.join("api.addr").exists());
        a.h.shutdown().await;
    })
    .await
    .expect("test timed out");
}

/// The device routes refuse garbage with a typed JSON error and change
/// nothing: no user key appears, the directory stays empty; then a real
/// link works once, and the device belongs to one user only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_routes_refuse_garbage_and_change_nothing() {
    init_tracing();
    timeout(Duration::from_secs(60), async {
        let root = root();
        let n = start_with(root.path(), "a", api_node).await;
        let addr = n.h.api_addr().expect("api addr");
        let dd = DataDir::open(&n.dir).unwrap();
        let token = dd.api_token().unwrap();
        let key_file = dd.file(node::datadir::USER_KEY_FILE);
        let t = token.clone();
        let codes = blocking(move || {
            let post = |path: &str, body: &str| raw("POST", addr, path, Some(&t), Some(body));
            let mut got = vec![];
            for (path, body) in [
                ("/v1/devices/link", "not json"),
                ("/v1/devices/link", "{\"user_key\": 7}"),
                ("/v1/devices/link", "{\"user_key\": \"zz\"}"),
                ("/v1/devices/link", "{\"user_key\": \"00ff\"}"),
                (
                    "/v1/devices/link",
                    &format!("{{\"user_key\": \"{}\"}}", "ab".repeat(33)),
                ),
                ("/v1/devices/unlink", "{}"),
                ("/v1/devices/unlink", "{\"device\": \"12D3KooW\"}"),
                // A well-formed unlink, but this device holds no user key.
                (
                    "/v1/devices/unlink",
                    "{\"device\": \"12D3KooWxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}",
                ),
            ] {
                let (status, v) = post(path, body);
                got.push((
                    status,
                    v["error"]["code"].as_str().unwrap_or("").to_string(),
                ));
            }
            let (status, v) = raw("GET", addr, "/v1/devices", Some(&t), None);
            (got, status, v)
        })
        .await;
        let (got, status, v) = codes;
        for (s, code) in &got[..7] {
            assert_eq!(*s, 400, "{got:?}");
            assert!(!code.is_empty(), "{got:?}");
        }
        assert!(
            got[2].1 == "bad_user_key" && got[4].1 == "bad_user_key",
            "{got:?}"
        );
        assert_eq!(got[7].0, 400, "{got:?}");
        assert!(
            got[7].1 == "no_user_key" || got[7].1 == "invalid_member",
            "{got:?}"
        );
        assert!(!key_file.exists(), "garbage made a user key");
        assert_eq!(status, 200);
        assert_eq!(v["devices"], serde_json::json!([]), "{v}");
        assert!(v.get("user").is_none(), "{v}");

        // A real link: this device's first user key.
        let t = token.clone();
        let (first, again, other) = blocking(move || {
            let post = |body: &str| raw("POST", addr, "/v1/devices/link", Some(&t), Some(body));
            let first = post("{}");
            let again = post("{}");
            let other = post(&format!("{{\"user_key\": \"{}\"}}", "11".repeat(32)));
            (first, again, other)
        })
        .await;
        assert_eq!(first.0, 200, "{first:?}");
        let user = first.1["user"].as_str().expect("a user").to_string();
        assert!(user.starts_with("u:"));
        assert!(key_file.exists());
        // Linking again re-states the same user (a newer statement).
        assert_eq!(again.0, 200, "{again:?}");
        assert_eq!(again.1["user"], user.as_str());
        // Another user's key: refused, the device keeps its user.
        assert_eq!(other.0, 409, "{other:?}");
        assert_eq!(other.1["error"]["code"], "other_user");
        let d = n.h.devices().await.unwrap();
        assert_eq!(d.user.as_deref(), Some(user.as_str()));
        assert_eq!(d.devices.len(), 1);
    })
    .await
    .expect("test timed out");
}
