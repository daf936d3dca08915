//! What people see, without a browser: announced names and nicknames, own
//! texts in the conversation (in send order, marked as ours), receipts
//! "received by k of M", the members view, and the web session rules (one
//! time login link, cookie, no data without it, CSRF header, Host check).

mod common;

use common::*;
use node::types::{ConversationEntry, MemberView};
use node::{Config, DataDir};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::timeout;

fn people(c: &mut Config) {
    c.api_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    c.announce_name = true;
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
    let mut r = ureq::request(method, url);
    for (k, v) in headers {
        r = r.set(k, v);
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
    let headers = resp
        .headers_names()
        .into_iter()
        .filter_map(|n| resp.header(&n).map(|v| (n.clone(), v.to_string())))
        .collect();
    Resp {
        status: resp.status(),
        headers,
        body: resp.into_string().unwrap_or_default(),
    }
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_own_texts_receipts_and_web_session() {
    init_tracing();
    timeout(Duration::from_secs(120), async {
        let root = root();
        let a = start_with(root.path(), "alice", people).await;
        let b = start_with(root.path(), "bob", people).await;
        link(&a, &b).await;
        let u = create_and_wait(&a, &[&b], Duration::from_secs(30)).await;

        // Texts from both sides; the engine numbers the name announcement
        // too, so what matters is order and marking.
        a.h.send(u, "one from alice").await.unwrap();
        a.h.send(u, "two from alice").await.unwrap();
        wait_for("bob has alice's texts", Duration::from_secs(20), || async {
            all_messages(&b, u).await.len() == 2
        })
        .await;
        b.h.send(u, "reply from bob").await.unwrap();

        // The announcement is not a message anyone sees.
        for m in all_messages(&b, u).await {
            assert!(!m.body.starts_with(b"\0"), "control text delivered: {m:?}");
        }

        // Alice's conversation: her two texts in send order, marked as hers,
        // then bob's, with names; both of hers reach "1 of 1".
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let conv: Vec<ConversationEntry> = loop {
            let conv = a.h.conversation(u, 100).await.unwrap();
            let done = conv.len() == 3
                && conv.iter().filter(|e| e.mine).all(|e| {
                    e.receipt
                        .as_ref()
                        .is_some_and(|r| r.received_by == 1 && r.of == 1)
                });
            if done {
                break conv;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no receipts 1 of 1 on alice: {conv:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let texts: Vec<(bool, &str)> = conv.iter().map(|e| (e.mine, e.text.as_str())).collect();
        assert_eq!(
            texts,
            vec![
                (true, "one from alice"),
                (true, "two from alice"),
                (false, "reply from bob")
            ]
        );
        assert!(conv[0].seq < conv[1].seq);
        assert_eq!(conv[2].sender_name.as_deref(), Some("bob"));
        assert_eq!(conv[2].sender, b.member().to_string());

        // Bob sees alice by name; his own text is his.
        wait_for(
            "bob knows alice's name",
            Duration::from_secs(20),
            || async { b.h.display_name(&a.member()).as_deref() == Some("alice") },
        )
        .await;
        let bconv = b.h.conversation(u, 100).await.unwrap();
        assert_eq!(bconv.iter().filter(|e| e.mine).count(), 1);
        assert!(bconv
            .iter()
            .filter(|e| !e.mine)
            .all(|e| e.sender_name.as_deref() == Some("alice")));

        // A nickname overrides, persists in the data dir, never the id.
        a.h.set_nickname(&b.member(), Some("Bobby")).unwrap();
        let ms: Vec<MemberView> = a.h.members(u).await.unwrap();
        let bob = ms
            .iter()
            .find(|m| m.member == b.member().to_string())
            .unwrap();
        assert_eq!(bob.name.as_deref(), Some("Bobby"));
        assert_eq!(bob.announced.as_deref(), Some("bob"));
        assert!(bob.connected && !bob.me && !bob.stale);
        assert!(bob.last_seen.is_some());
        assert!(ms.iter().any(|m| m.me && m.admin));
        let contacts = std::fs::read_to_string(a.dir.join("contacts.json")).unwrap();
        assert!(contacts.contains("Bobby"));

        // The web session, over HTTP.
        let addr = a.h.api_addr().unwrap();
        let base = format!("http://{addr}");
        let token = DataDir::open(&a.dir).unwrap().api_token().unwrap();
        let login = a.h.web_login_url().unwrap();
        let uid = u.hex();
        blocking(move || {
            // Nothing without a session or the token.
            for p in ["/", "/assets/app.js", "/v1/id", "/v1/universes"] {
                let r = http("GET", &format!("{base}{p}"), &[], None);
                assert_eq!(r.status, 401, "{p}");
                assert!(!r.body.contains("12D3KooW"), "{p} leaks: {}", r.body);
            }
            // The link, once.
            let r = http("GET", &login, &[], None);
            assert_eq!(r.status, 200, "{}", r.body);
            let set = r.header("set-cookie").expect("a cookie").to_string();
            assert!(
                set.contains("HttpOnly") && set.contains("SameSite=Strict"),
                "{set}"
            );
            assert!(r
                .header("content-security-policy")
                .is_some_and(|c| c.contains("script-src 'self'") && !c.contains("unsafe-inline")));
            assert_eq!(http("GET", &login, &[], None).status, 401, "second use");
            let cookie = set.split(';').next().unwrap().to_string();
            let ck: &[(&str, &str)] = &[("Cookie", &cookie)];
            // The page and data with the cookie.
            let r = http("GET", &format!("{base}/"), ck, None);
            assert_eq!(r.status, 200);
            assert!(r.body.contains("/assets/app.js"));
            let r = http(
                "GET",
                &format!("{base}/v1/universes/{uid}/conversation"),
                ck,
                None,
            );
            assert_eq!(r.status, 200, "{}", r.body);
            assert!(r.body.contains("received by") || r.body.contains("received_by"));
            // State changes need the app's header; foreign origins and hosts
            // are refused; garbage is a typed 4xx.
            let url = format!("{base}/v1/universes/{uid}/messages");
            let r = http("POST", &url, ck, Some(r#"{"text":"forged"}"#));
            assert_eq!(r.status, 403, "{}", r.body);
            let with = [("Cookie", cookie.as_str()), ("X-Mmls-Request", "1")];
            let evil = [
                ("Cookie", cookie.as_str()),
                ("X-Mmls-Request", "1"),
                ("Origin", "http://evil.example"),
            ];
            assert_eq!(
                http("POST", &url, &evil, Some(r#"{"text":"x"}"#)).status,
                403
            );
            let host = [("Cookie", cookie.as_str()), ("Host", "evil.example")];
            assert_eq!(
                http("GET", &format!("{base}/v1/id"), &host, None).status,
                403
            );
            assert_eq!(http("POST", &url, &with, Some("{garbage")).status, 400);
            let r = http(
                "POST",
                &url,
                &with,
                Some(r#"{"text":"\u0000mmls-name\u0000x"}"#),
            );
            assert_eq!(r.status, 400, "control texts are the node's: {}", r.body);
            let r = http("POST", &url, &with, Some(r#"{"text":"from the page"}"#));
            assert_eq!(r.status, 200, "{}", r.body);
            // A session cannot mint login links; the bearer token can.
            let r = http("POST", &format!("{base}/v1/web/login"), &with, Some("{}"));
            assert_eq!(r.status, 403);
            let bearer = format!("Bearer {token}");
            let r = http(
                "POST",
                &format!("{base}/v1/web/login"),
                &[("Authorization", &bearer)],
                Some("{}"),
            );
            assert_eq!(r.status, 200);
            assert!(r.body.contains("/login?token="));
            // Log out ends it.
            assert_eq!(
                http("POST", &format!("{base}/logout"), &with, None).status,
                204
            );
            assert_eq!(http("GET", &format!("{base}/v1/id"), ck, None).status, 401);
        })
        .await;
        let last = a.h.conversation(u, 1).await.unwrap();
        assert_eq!(last.len(), 1);
        assert!(last[0].mine && last[0].text == "from the page");

        shutdown_all(&[&a, &b]).await;
    })
    .await
    .expect("test timed out");
}
