//! What the API fuzzer in `tests/fuzz.rs` (seeded, stable) checks: two
//! real nodes in one universe, node A serving the HTTP API, and one checker
//! per request that panics when a property is violated:
//!
//! * the server answers (a handler panic shows up as a dropped
//!   connection); only a body over the size limit may be refused by closing
//!   the connection;
//! * never a 500: hostile input is the caller's fault (4xx), or a 503 that
//!   says what to wait for;
//! * every answer is JSON; errors are `{"error":{"code","message"}}` with
//!   both non-empty; `GET .../messages?after=c` returns only cursors after
//!   `c`, at most `limit` (clamped) of them;
//! * a refused request (4xx, 503) changes nothing (`snapshot`, checked by
//!   the caller);
//! * the node stays up and the universe keeps working (`check_alive`).

#![allow(dead_code)]

use node::mmls_core::{Id32, Identity, MemberId, Profile};
use node::{Config, DataDir, Node, NodeHandle};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// A request the fuzzers send.
#[derive(Debug, Clone)]
pub enum Call {
    CreateUniverse(Vec<u8>),
    AddMember(String, Vec<u8>),
    Send(String, Vec<u8>),
    RemoveMember(String, String),
    Universe(String),
    Messages(String, String),
    Update(String),
    Rejoin(String),
}

pub struct Pair {
    pub a: NodeHandle,
    pub b: NodeHandle,
    pub api: ApiFuzz,
    pub root: tempfile::TempDir,
}

pub struct ApiFuzz {
    pub addr: SocketAddr,
    pub token: String,
    /// The universe A and B share.
    pub uid: Id32,
    pub a: MemberId,
    pub b: MemberId,
    pub max_body: usize,
    agent: ureq::Agent,
}

fn root() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts A (with the API) and B, links them and makes a universe in which
/// B has sent A one message.
pub async fn start_pair() -> Pair {
    let root = root();
    let mut handles = vec![];
    for name in ["a", "b"] {
        let dir = root.path().join(name);
        DataDir::init(&dir, name).expect("init data dir");
        let mut c = Config::new(&dir);
        if name == "b" {
            c.api_addr = None;
        }
        c.timing.sync_interval = Duration::from_secs(1);
        c.timing.redial_interval = Duration::from_secs(1);
        // Fuzzed member ids that parse but nobody owns: do not wait long.
        c.timing.key_package_wait = Duration::from_millis(200);
        handles.push(Node::start(c).await.expect("start node"));
    }
    let b = handles.pop().expect("b");
    let a = handles.pop().expect("a");
    let b_addr = b
        .listen_addrs()
        .await
        .expect("listen addrs")
        .into_iter()
        .find(|x| x.to_string().contains("/tcp/"))
        .expect("a TCP address")
        .with_p2p(b.peer_id())
        .expect("p2p");
    a.dial(b_addr).await.expect("dial");
    let bm = b.member_id();
    let start = Instant::now();
    let uid = loop {
        match a
            .create_universe("fuzz", std::slice::from_ref(&bm), Profile::Mmls00)
            .await
        {
            Ok(u) => break u,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "no universe: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait_for(
        "universe ready on both",
        Duration::from_secs(60),
        || async {
            for h in [&a, &b] {
                match h.universe_status(uid).await {
                    Ok(s) if s.own_group.is_some() && s.groups.len() == 2 => {}
                    _ => return false,
                }
            }
            true
        },
    )
    .await;
    b.send(uid, "hello a").await.expect("send");
    wait_for("a reads b", Duration::from_secs(30), || async {
        a.messages(uid, None, 10).await.is_ok_and(|m| !m.is_empty())
    })
    .await;
    let dd = DataDir::open(&root.path().join("a")).expect("data dir");
    let api = ApiFuzz {
        addr: a.api_addr().expect("api addr"),
        token: dd.api_token().expect("token"),
        uid,
        a: a.member_id(),
        b: bm,
        max_body: Config::new(root.path()).limits.max_api_body,
        agent: ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(20))
            .build(),
    };
    Pair { a, b, api, root }
}

/// Percent-encodes everything but unreserved characters, so any string can
/// be a path segment or a query.
pub fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string as fuzzers write it: `=` and `&` stay, the rest is
/// percent-encoded.
pub fn pct_query(s: &str) -> String {
    s.split('&')
        .map(|kv| kv.split('=').map(pct).collect::<Vec<_>>().join("="))
        .collect::<Vec<_>>()
        .join("&")
}

impl ApiFuzz {
    /// A call from bytes (a compact format: the first byte picks the
    /// endpoint and the ids, the rest is the body, or the path segment /
    /// query as UTF-8).
    pub fn call_from_bytes(&self, data: &[u8]) -> Call {
        let (sel, rest) = data.split_first().unwrap_or((&0, &[]));
        let text = String::from_utf8_lossy(rest).into_owned();
        let id = if sel & 0x80 == 0 {
            self.uid.hex()
        } else {
            text.clone()
        };
        match sel % 8 {
            0 => Call::CreateUniverse(rest.to_vec()),
            1 => Call::AddMember(id, rest.to_vec()),
            2 => Call::Send(id, rest.to_vec()),
            3 => Call::RemoveMember(self.uid.hex(), text),
            4 => Call::Universe(text),
            5 => Call::Messages(id, text),
            6 => Call::Update(text),
            _ => Call::Rejoin(text),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn request(&self, method: &str, path: &str, body: Option<&[u8]>) -> Option<(u16, String)> {
        let r = self
            .agent
            .request(method, &self.url(path))
            .set("Authorization", &format!("Bearer {}", self.token));
        let res = match body {
            Some(b) => r.set("Content-Type", "application/json").send_bytes(b),
            None => r.call(),
        };
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                // A connection closed under the request's body is allowed
                // when the server may answer before reading it: a body over
                // the limit, or a path with a `.`/`..` segment (the client
                // resolves it, as the URL standard says, so the request
                // reaches no route and gets a 404 at once). Anything else
                // is a handler that died.
                let dots = path.split(['/', '?']).any(|seg| seg == "." || seg == "..");
                assert!(
                    body.is_some_and(|b| b.len() > self.max_body || (dots && !b.is_empty())),
                    "{method} {path}: no answer ({t}): did a handler panic?"
                );
                // And the server is still there.
                let alive = self
                    .agent
                    .get(&self.url("/v1/status"))
                    .set("Authorization", &format!("Bearer {}", self.token))
                    .call()
                    .map(|r| r.status());
                assert!(
                    matches!(alive, Ok(200)),
                    "{method} {path}: no answer ({t}), and then no status: {alive:?}"
                );
                return None;
            }
        };
        let status = resp.status();
        let text = resp.into_string().expect("a readable body");
        Some((status, text))
    }

    /// Sends one call and checks the answer; returns its status (`None`
    /// when the call was skipped or the connection closed under an oversize
    /// body).
    pub fn check(&self, call: &Call) -> Option<u16> {
        let (method, path, body): (&str, String, Option<&[u8]>) = match call {
            Call::CreateUniverse(b) => ("POST", "/v1/universes".into(), Some(b)),
            Call::AddMember(id, b) => (
                "POST",
                format!("/v1/universes/{}/members", pct(id)),
                Some(b),
            ),
            Call::Send(id, b) => (
                "POST",
                format!("/v1/universes/{}/messages", pct(id)),
                Some(b),
            ),
            Call::RemoveMember(id, m) => {
                // Removing B for real would end the universe under test
                // (ids parsed as the API parses them: hex in any case,
                // surrounding blanks).
                if Id32::parse_hex(id) == Some(self.uid)
                    && MemberId::parse(m).is_ok_and(|m| m == self.b)
                {
                    return None;
                }
                (
                    "DELETE",
                    format!("/v1/universes/{}/members/{}", pct(id), pct(m)),
                    None,
                )
            }
            Call::Universe(id) => ("GET", format!("/v1/universes/{}", pct(id)), None),
            Call::Messages(id, q) => (
                "GET",
                format!("/v1/universes/{}/messages?{}", pct(id), pct_query(q)),
                None,
            ),
            Call::Update(id) | Call::Rejoin(id) => {
                // Only fuzzed ids: a real update or rejoin is not hostile.
                if Id32::parse_hex(id).is_some_and(|u| u == self.uid) {
                    return None;
                }
                let what = if matches!(call, Call::Update(_)) {
                    "update"
                } else {
                    "rejoin"
                };
                ("POST", format!("/v1/universes/{}/{what}", pct(id)), None)
            }
        };
        let (status, text) = self.request(method, &path, body)?;
        let what = format!("{method} {path} -> {status} {}", clip(&text));
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
        assert!(
            status != 500,
            "{what}: hostile input made an internal error"
        );
        assert!(
            (200..300).contains(&status) || (400..500).contains(&status) || status == 503,
            "{what}: unexpected status"
        );
        if status >= 400 {
            let code = v["error"]["code"].as_str().unwrap_or("");
            let message = v["error"]["message"].as_str().unwrap_or("");
            assert!(
                !code.is_empty() && !message.is_empty(),
                "{what}: error shape"
            );
            if status == 503 {
                assert!(
                    ["missing_key_package", "not_ready", "timeout"].contains(&code),
                    "{what}: 503 for {code}"
                );
            }
            return Some(status);
        }
        if let Call::Messages(_, q) = call {
            let list = v.as_array().unwrap_or_else(|| panic!("{what}: not a list"));
            let (after, limit) = page_of(q);
            if let Some(limit) = limit {
                assert!(list.len() <= limit.clamp(1, 1000), "{what}: over the limit");
            }
            for m in list {
                let c = m["cursor"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{what}: no cursor"));
                if let Some(a) = after {
                    assert!(c > a, "{what}: cursor {c} is not after {a}");
                }
            }
        }
        Some(status)
    }

    /// The node still answers, and the universe still carries messages both
    /// ways (B to A through the engine, A to B through the API). Runs on a
    /// plain thread: `rt` drives the async waits.
    pub fn check_alive(&self, rt: &tokio::runtime::Runtime, pair: &Pair, tag: &str) {
        let text = format!("alive {tag}");
        rt.block_on(async {
            pair.b.send(self.uid, &text).await.expect("b sends");
            wait_for(
                "a reads b after fuzzing",
                Duration::from_secs(30),
                || async { all_texts(&pair.a, self.uid).await.contains(&text) },
            )
            .await;
        });
        let back = format!("{text} back");
        let body = serde_json::json!({ "text": back }).to_string();
        let (status, resp) = self
            .request(
                "POST",
                &format!("/v1/universes/{}/messages", self.uid.hex()),
                Some(body.as_bytes()),
            )
            .expect("an answer");
        assert_eq!(status, 200, "send through the API after fuzzing: {resp}");
        let (status, _) = self.request("GET", "/v1/status", None).expect("an answer");
        assert_eq!(status, 200, "status after fuzzing");
        rt.block_on(wait_for(
            "b reads a after fuzzing",
            Duration::from_secs(30),
            || async { all_texts(&pair.b, self.uid).await.contains(&back) },
        ));
    }

    /// A member id nobody owns (valid syntax).
    pub fn stranger(seed: u8) -> MemberId {
        Identity::from_seed([seed; 32]).member_id()
    }
}

/// What a refused request must not change on node A: every universe's id,
/// name, roster, admins, removal flag and count of own messages, and in the
/// shared universe the epoch and stream position of A's own send group
/// (what A sent). Other owners' groups are left out, and so are the group
/// positions of universes the fuzzer created: they move on their own
/// (B's delayed commit importing an update the fuzzer made A send, and the
/// leaf rotation it carries, lands whenever it lands), whatever request is
/// in flight.
pub fn snapshot(rt: &tokio::runtime::Runtime, pair: &Pair) -> String {
    let us = rt.block_on(pair.a.universes()).expect("universes");
    let mut out: Vec<String> = us
        .iter()
        .map(|u| {
            let groups: Vec<(String, u64, u64)> = u
                .groups
                .iter()
                .filter(|g| u.id == pair.api.uid && u.own_group == Some(g.group))
                .map(|g| (g.group.short(), g.epoch, g.next_seq))
                .collect();
            format!(
                "{} {:?} roster {:?} admins {:?} removed {} sent {} groups {groups:?}",
                u.id.hex(),
                u.name,
                u.roster,
                u.admins,
                u.removed,
                u.messages_sent
            )
        })
        .collect();
    out.sort();
    out.join("\n")
}

/// Every message delivered in `u`, page by page (a long run sends
/// thousands).
async fn all_texts(h: &NodeHandle, u: Id32) -> Vec<String> {
    let mut out = vec![];
    let mut after = None;
    while let Ok(page) = h.messages(u, after, 1000).await {
        let Some(last) = page.last() else { break };
        after = Some(last.cursor);
        out.extend(
            page.iter()
                .map(|d| String::from_utf8_lossy(&d.body).into_owned()),
        );
    }
    out
}

/// `after` and `limit` as the API reads them (the last valid one wins; a
/// query it refuses never gets here).
fn page_of(q: &str) -> (Option<u64>, Option<usize>) {
    let (mut after, mut limit) = (None, None);
    for kv in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "after" => after = v.parse().ok(),
            "limit" => limit = v.parse().ok(),
            _ => {}
        }
    }
    (after, limit)
}

fn clip(s: &str) -> String {
    s.chars().take(300).collect()
}
