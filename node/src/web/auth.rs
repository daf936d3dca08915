//! Web app login: a one-time link (`/login?token=...`, from `mmls open` or
//! the line `mmls run` prints) is exchanged for a session cookie, HttpOnly
//! and SameSite=Strict, named after the API port (cookies are not
//! port-scoped, and two nodes on one machine must not share one).
//!
//! Requests with the session cookie are also checked against DNS rebinding
//! (the Host must be the address we serve) and, when they change state,
//! against cross-site forgery: they must carry `X-Mmls-Request: 1` (a
//! header a page of another origin cannot send without a CORS preflight,
//! which we never grant) and, if the browser sends `Origin`, our own origin.
//! SameSite=Strict already keeps the cookie off cross-site requests; the
//! header check holds even where it does not.

use axum::http::{header, HeaderMap, Method};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// A login link is valid this long, once.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// A session lasts this long (sessions are in memory: a node restart ends
/// them all).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Unused login links and sessions kept at most (the oldest go first).
const MAX_TOKENS: usize = 64;
/// The header state-changing requests of the web app carry.
pub const CSRF_HEADER: &str = "x-mmls-request";

#[derive(Default)]
struct Tokens {
    logins: Vec<(String, Instant)>,
    sessions: Vec<(String, Instant)>,
}

/// Login links and sessions of one node's web app.
#[derive(Default)]
pub struct WebAuth {
    inner: Mutex<Tokens>,
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

/// Removes expired entries and, over the bound, the oldest.
fn tidy(v: &mut Vec<(String, Instant)>) {
    let now = Instant::now();
    v.retain(|(_, exp)| *exp > now);
    while v.len() >= MAX_TOKENS {
        v.remove(0);
    }
}

/// Finds `t` in constant time per entry; removes it if `take`.
fn find(v: &mut Vec<(String, Instant)>, t: &str, take: bool) -> bool {
    let now = Instant::now();
    let mut hit = None;
    for (i, (s, exp)) in v.iter().enumerate() {
        let eq: bool = s.as_bytes().ct_eq(t.as_bytes()).into();
        if eq && *exp > now {
            hit = Some(i);
        }
    }
    match hit {
        Some(i) => {
            if take {
                v.remove(i);
            }
            true
        }
        None => false,
    }
}

impl WebAuth {
    pub fn new() -> WebAuth {
        WebAuth::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tokens> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh one-time login token.
    pub fn new_login(&self) -> String {
        let t = random_token();
        let mut g = self.lock();
        tidy(&mut g.logins);
        g.logins.push((t.clone(), Instant::now() + LOGIN_TTL));
        t
    }

    /// A one-time login URL for the web app served at `addr`.
    pub fn login_url(&self, addr: SocketAddr) -> String {
        format!("http://{addr}/login?token={}", self.new_login())
    }

    /// Exchanges a login token (once) for a new session id.
    pub fn redeem(&self, token: &str) -> Option<String> {
        let mut g = self.lock();
        if token.is_empty() || !find(&mut g.logins, token, true) {
            return None;
        }
        let s = random_token();
        tidy(&mut g.sessions);
        g.sessions.push((s.clone(), Instant::now() + SESSION_TTL));
        Some(s)
    }

    pub fn session_ok(&self, session: &str) -> bool {
        !session.is_empty() && find(&mut self.lock().sessions, session, false)
    }

    pub fn end_session(&self, session: &str) {
        find(&mut self.lock().sessions, session, true);
    }
}

/// The session cookie's name for the API on `port`.
pub fn cookie_name(port: u16) -> String {
    format!("mmls_session_{port}")
}

/// The `Set-Cookie` value that starts a session.
pub fn set_cookie(port: u16, session: &str) -> String {
    format!(
        "{}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        cookie_name(port),
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that ends it.
pub fn clear_cookie(port: u16) -> String {
    format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        cookie_name(port)
    )
}

/// The session id in the request's cookies, if any.
pub fn session_of(headers: &HeaderMap, port: u16) -> Option<String> {
    let name = cookie_name(port);
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for c in v.split(';') {
            if let Some((k, val)) = c.trim().split_once('=') {
                if k == name {
                    return Some(val.to_string());
                }
            }
        }
    }
    None
}

/// Whether the Host header names the address we serve (DNS rebinding).
pub fn host_ok(headers: &HeaderMap, addr: SocketAddr) -> bool {
    let Some(h) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let port = addr.port();
    h == addr.to_string() || h == format!("localhost:{port}")
}

/// Whether a session request may change state (see the module doc).
pub fn csrf_ok(method: &Method, headers: &HeaderMap, addr: SocketAddr) -> bool {
    if matches!(*method, Method::GET | Method::HEAD) {
        return true;
    }
    if headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) != Some("1") {
        return false;
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(o) => {
            o == format!("http://{addr}") || o == format!("http://localhost:{}", addr.port())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn login_tokens_are_one_time_and_sessions_check() {
        let w = WebAuth::new();
        let t = w.new_login();
        assert_eq!(w.redeem("nope"), None);
        assert_eq!(w.redeem(""), None);
        let s = w.redeem(&t).expect("first use");
        assert_eq!(w.redeem(&t), None, "second use");
        assert!(w.session_ok(&s));
        assert!(!w.session_ok(&t));
        assert!(!w.session_ok(""));
        w.end_session(&s);
        assert!(!w.session_ok(&s));
    }

    #[test]
    fn cookies_hosts_and_csrf() {
        let addr: SocketAddr = "127.0.0.1:4321".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; mmls_session_4321=xyz; c=d"),
        );
        assert_eq!(session_of(&h, 4321).as_deref(), Some("xyz"));
        assert_eq!(session_of(&h, 1), None);
        assert!(!host_ok(&h, addr));
        h.insert(header::HOST, HeaderValue::from_static("evil.example:4321"));
        assert!(!host_ok(&h, addr));
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:4321"));
        assert!(host_ok(&h, addr));
        assert!(csrf_ok(&Method::GET, &h, addr));
        assert!(!csrf_ok(&Method::POST, &h, addr));
        h.insert(CSRF_HEADER, HeaderValue::from_static("1"));
        assert!(csrf_ok(&Method::POST, &h, addr));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!csrf_ok(&Method::DELETE, &h, addr));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:4321"),
        );
        assert!(csrf_ok(&Method::DELETE, &h, addr));
        assert!(set_cookie(4321, "s").contains("HttpOnly; SameSite=Strict"));
    }
}
