//! The web app: plain HTML, CSS and JavaScript embedded in the binary and
//! served on the local API's port (no CDN, no build step). The page talks
//! to the same `/v1` API as the CLI, authenticated by a session cookie
//! instead of the bearer token (`auth.rs`), and follows a universe live
//! over its event stream.
//!
//! Every response carries a strict Content-Security-Policy (scripts and
//! styles from this origin only, no inline script, no framing, connections
//! to this origin only); the script builds the page with `textContent`
//! and `createElement`, never HTML from data.

pub mod auth;

pub use auth::WebAuth;

use axum::extract::{RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

/// The Content-Security-Policy of every response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; \
frame-ancestors 'none'";

/// The paths served without any authentication (the login itself).
pub fn is_public(path: &str) -> bool {
    path == "/login"
}

/// The web routes (merged into the API router, behind its auth layer).
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(auth: AuthState) -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/app.css", get(app_css))
        .route("/assets/icon.svg", get(icon))
        .route("/login", get(login))
        .route("/logout", post(logout))
        .with_state(auth)
}

/// What the login handlers need.
#[derive(Clone)]
pub(crate) struct AuthState {
    pub web: std::sync::Arc<WebAuth>,
    pub port: u16,
}

/// Adds the security headers to every response.
pub(crate) async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

fn asset(ct: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, ct)], body).into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

async fn icon() -> Response {
    asset("image/svg+xml", ICON_SVG)
}

/// The page a browser gets without a session.
pub(crate) fn unauthorized_page() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><meta charset=utf-8><title>mmls: log in</title>\
         <p>Not logged in. Run <code>mmls open</code> and open the link it prints \
         (each link works once, for 10 minutes).</p>",
    )
        .into_response()
}

async fn login(State(a): State<AuthState>, RawQuery(q): RawQuery) -> Response {
    let token = q
        .as_deref()
        .unwrap_or("")
        .split('&')
        .find_map(|p| p.strip_prefix("token="))
        .unwrap_or("");
    match a.web.redeem(token) {
        // A page that moves on by itself rather than a redirect: the
        // follow-up request then starts on our own site, so the Strict
        // cookie goes with it even when the link was opened from elsewhere.
        Some(session) => (
            StatusCode::OK,
            [
                (header::SET_COOKIE, auth::set_cookie(a.port, &session)),
                (header::CONTENT_TYPE, "text/html; charset=utf-8".to_string()),
            ],
            "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=\"0;url=/\">\
             <title>mmls</title><p>Logged in. <a href=\"/\">Continue</a>.</p>",
        )
            .into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<!doctype html><meta charset=utf-8><title>mmls: link expired</title>\
             <p>This login link was already used or has expired. Run <code>mmls open</code> \
             for a new one.</p>",
        )
            .into_response(),
    }
}

async fn logout(State(a): State<AuthState>, req: Request) -> Response {
    if let Some(s) = auth::session_of(req.headers(), a.port) {
        a.web.end_session(&s);
    }
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, auth::clear_cookie(a.port))],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_have_no_inline_script_and_no_remote_urls() {
        assert!(INDEX_HTML.contains("<script src=\"/assets/app.js\""));
        let inline = INDEX_HTML.matches("<script").count();
        assert_eq!(inline, INDEX_HTML.matches("<script src=").count());
        for a in [INDEX_HTML, APP_JS, APP_CSS] {
            assert!(!a.contains("http://") && !a.contains("https://"));
            assert!(!a.contains(" onclick=") && !a.contains(" onload="));
        }
        assert!(!APP_JS.contains("innerHTML"));
        assert!(!APP_JS.contains("eval("));
    }
}
