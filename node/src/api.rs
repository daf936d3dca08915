//! The local HTTP API (axum, JSON). Loopback only unless configured
//! otherwise; every request carries `Authorization: Bearer <api.token>`,
//! compared in constant time, or the web app's session cookie (`web/`,
//! which also serves the app's pages on this port). Errors are JSON
//! `{"error":{"code":"...","message":"..."}}` with a fitting status; request
//! bodies are parsed by hand so that garbage gets a JSON 400, never a panic.

use crate::error::NodeError;
use crate::handle::NodeHandle;
use crate::types::{self, event_universe, StreamEvent};
use crate::web::{self, auth as webauth, WebAuth};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures::StreamExt;
use mmls_core::bundle::MAX_BUNDLE_BYTES;
use mmls_core::{Id32, MemberId, Profile};
use serde::de::DeserializeOwned;
use std::convert::Infallible;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::sync::{broadcast, watch};

/// The OpenAPI 3 description of this API.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Most messages one `GET .../messages` returns.
pub const MAX_PAGE: usize = 1000;

#[derive(Clone)]
pub(crate) struct ApiState {
    node: NodeHandle,
    token: Arc<String>,
    stop: watch::Receiver<bool>,
    max_body: usize,
    web: Arc<WebAuth>,
}

impl ApiState {
    pub(crate) fn new(
        node: NodeHandle,
        token: String,
        stop: watch::Receiver<bool>,
        max_body: usize,
    ) -> ApiState {
        ApiState {
            web: node.web_auth(),
            node,
            token: Arc::new(token),
            stop,
            max_body,
        }
    }
}

/// An API error: status plus the JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
}

impl ApiError {
    fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: code.to_string(),
            message: message.into(),
        }
    }
    fn bad(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(400, code, message)
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        ApiError::new(e.http_status(), e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = types::ErrorBody {
            error: types::ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

pub(crate) async fn serve(listener: tokio::net::TcpListener, state: ApiState) {
    let stop = state.stop.clone();
    let app = router(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped(stop))
        .await
    {
        tracing::error!(error = %e, "API server failed");
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn router(state: ApiState) -> Router {
    let max_body = state.max_body;
    let web_state = web::AuthState {
        web: state.web.clone(),
        port: state.node.api_addr().map(|a| a.port()).unwrap_or(0),
    };
    Router::new()
        .merge(web::routes(web_state))
        .route("/v1/id", get(id))
        .route("/v1/identity/certificate", post(renew_certificate))
        .route("/v1/universes", get(universes).post(create_universe))
        .route("/v1/universes/{id}", get(universe))
        .route(
            "/v1/universes/{id}/members",
            get(members_view).post(add_member),
        )
        .route("/v1/universes/{id}/conversation", get(conversation))
        .route("/v1/contacts", get(contacts))
        .route("/v1/devices", get(devices))
        .route("/v1/devices/link", post(link_device))
        .route("/v1/devices/unlink", post(unlink_device))
        .route(
            "/v1/contacts/{member}",
            axum::routing::put(set_contact).delete(clear_contact),
        )
        .route("/v1/web/login", post(web_login))
        .route("/v1/universes/{id}/members/{member}", delete(remove_member))
        .route("/v1/universes/{id}/messages", get(messages).post(send))
        .route("/v1/universes/{id}/stream", get(stream))
        .route("/v1/universes/{id}/update", post(update))
        .route("/v1/universes/{id}/anchors", post(set_anchor))
        .route("/v1/universes/{id}/rejoin", post(rejoin))
        .route("/v1/universes/{id}/leave", post(leave))
        .route("/v1/universes/{id}/forget", post(forget))
        .route("/v1/universes/{id}/bundle", get(bundle_export))
        .route("/v1/bundles/introduction", get(bundle_introduction))
        .route(
            "/v1/bundles",
            post(bundle_import).layer(DefaultBodyLimit::max(MAX_BUNDLE_BYTES)),
        )
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/shutdown", post(shutdown))
        .route(PROVE_PATH, post(prove))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn(web::security_headers))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// The one API route without the token: the client asks it before it
/// sends the token (`crate::api_proof`).
pub const PROVE_PATH: &str = "/v1/prove";

async fn prove(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<types::ProveOut> {
    let p: types::ProveIn = body_json(body)?;
    let nonce = hex::decode(&p.nonce)
        .ok()
        .filter(|n| !n.is_empty() && n.len() <= crate::api_proof::MAX_NONCE)
        .ok_or_else(|| ApiError::new(400, "bad_request", "nonce: 1 to 64 bytes as hex"))?;
    let port = s.node.api_addr().map_or(0, |a| a.port());
    let proof = crate::api_proof::proof(&s.token, port, &nonce);
    Ok(Json(types::ProveOut {
        proof: hex::encode(proof),
    }))
}

async fn auth(State(s): State<ApiState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if web::is_public(&path) || path == PROVE_PATH {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    let ok: bool = presented.as_bytes().ct_eq(s.token.as_bytes()).into();
    if ok {
        req.extensions_mut().insert(Caller::Bearer);
        return next.run(req).await;
    }
    // The web app's session.
    if let Some(addr) = s.node.api_addr() {
        let session = webauth::session_of(req.headers(), addr.port()).unwrap_or_default();
        if s.web.session_ok(&session) {
            if !webauth::host_ok(req.headers(), addr) {
                return ApiError::new(403, "bad_host", "the Host header is not this node's API")
                    .into_response();
            }
            if !webauth::csrf_ok(req.method(), req.headers(), addr) {
                return ApiError::new(
                    403,
                    "csrf",
                    "a state-changing request from the web app needs X-Mmls-Request: 1 \
                     and this origin",
                )
                .into_response();
            }
            req.extensions_mut().insert(Caller::Session);
            return next.run(req).await;
        }
    }
    if !path.starts_with("/v1/") {
        return web::unauthorized_page();
    }
    ApiError::new(
        401,
        "unauthorized",
        "missing or wrong bearer token (it is in api.token in the node's data dir)",
    )
    .into_response()
}

/// How a request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Bearer,
    Session,
}

async fn not_found() -> ApiError {
    ApiError::new(404, "not_found", "no such endpoint (see /v1/openapi.json)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        405,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

fn body_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status().as_u16(), "bad_body", e.body_text()))?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad("bad_json", format!("invalid JSON body: {e}")))
}

fn universe_id(s: &str) -> Result<Id32, ApiError> {
    Id32::parse_hex(s)
        .ok_or_else(|| ApiError::bad("bad_universe_id", "a universe id is 64 hex characters"))
}

fn member_id(s: &str) -> Result<MemberId, ApiError> {
    MemberId::parse(s).map_err(|e| ApiError::bad("invalid_member", e.to_string()))
}

async fn id(State(s): State<ApiState>) -> ApiResult<types::IdInfo> {
    let addrs = s.node.listen_addrs().await?;
    Ok(Json(types::IdInfo {
        member: s.node.member_id().to_string(),
        peer_id: s.node.peer_id().to_string(),
        name: s.node.name().to_string(),
        listen_addrs: addrs.iter().map(|a| a.to_string()).collect(),
    }))
}

async fn universes(State(s): State<ApiState>) -> ApiResult<Vec<types::Universe>> {
    let us = s.node.universes().await?;
    Ok(Json(us.iter().map(types::Universe::from).collect()))
}

async fn create_universe(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<types::Created>), ApiError> {
    let req: types::CreateUniverse = body_json(body)?;
    let name = req.name.trim();
    if name.is_empty() || name.len() > 256 {
        return Err(ApiError::bad("bad_name", "name must be 1 to 256 bytes"));
    }
    if (req.members.is_empty() && req.users.is_empty()) || req.members.len() > 4096 {
        return Err(ApiError::bad(
            "no_members",
            "members must list 1 to 4096 member ids (or users name at least one user)",
        ));
    }
    if req.users.len() > 1024 {
        return Err(ApiError::bad(
            "too_many_users",
            "users must list at most 1024 users",
        ));
    }
    let mut members = req
        .members
        .iter()
        .map(|m| member_id(m))
        .collect::<Result<Vec<_>, _>>()?;
    if !req.users.is_empty() {
        let me = s.node.member_id();
        for m in s.node.devices_of_users(req.users.clone()).await? {
            if m != me && !members.contains(&m) {
                members.push(m);
            }
        }
    }
    let admins = req
        .admins
        .unwrap_or_default()
        .iter()
        .map(|m| member_id(m))
        .collect::<Result<Vec<_>, _>>()?;
    let profile: Profile = match req.profile.as_deref() {
        None => Profile::default(),
        Some(p) => p
            .parse()
            .map_err(|e: String| ApiError::bad("bad_profile", e))?,
    };
    let anchors = req
        .anchors
        .iter()
        .map(anchor_in)
        .collect::<Result<Vec<_>, _>>()?;
    let suites = req
        .ciphersuites
        .unwrap_or_else(|| mmls_core::ciphersuites::DEFAULT_ACCEPTED.to_vec());
    let id = s
        .node
        .create_universe_with(name, &members, &admins, profile, anchors, &suites)
        .await?;
    Ok((StatusCode::CREATED, Json(types::Created { id: id.hex() })))
}

/// A domain and its PEM anchor, as the engine takes it (one DER
/// certificate).
fn anchor_in(a: &types::AnchorIn) -> Result<mmls_core::federation::DomainAnchor, ApiError> {
    let chain = mmls_core::federation::chain_from_pem(a.pem.as_bytes())
        .map_err(|e| ApiError::bad("bad_anchor", format!("anchor of {}: {e}", a.domain)))?;
    let [cert] = <[Vec<u8>; 1]>::try_from(chain).map_err(|_| {
        ApiError::bad(
            "bad_anchor",
            format!("anchor of {}: give exactly one certificate", a.domain),
        )
    })?;
    Ok(mmls_core::federation::DomainAnchor {
        domain: mmls_core::federation::DomainAnchor::normalise_domain(&a.domain),
        cert,
    })
}

async fn devices(State(s): State<ApiState>) -> ApiResult<types::Devices> {
    Ok(Json(s.node.devices().await?))
}

async fn link_device(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<types::Devices> {
    let req: types::LinkDevice = body_json(body)?;
    let key = req
        .user_key
        .as_deref()
        .map(crate::datadir::parse_user_key)
        .transpose()
        .map_err(|e| ApiError::bad("bad_user_key", format!("user_key: {e}")))?;
    Ok(Json(s.node.link_device(key).await?))
}

async fn unlink_device(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<types::Devices> {
    let req: types::UnlinkDevice = body_json(body)?;
    let device = member_id(&req.device)?;
    Ok(Json(s.node.unlink_device(device).await?))
}

async fn renew_certificate(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<types::Ok> {
    let req: types::RenewCertificate = body_json(body)?;
    s.node.renew_certificate(req.pem.into_bytes()).await?;
    Ok(Json(types::Ok { ok: true }))
}

async fn set_anchor(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<types::Ok> {
    let u = universe_id(&id)?;
    let req: types::AnchorIn = body_json(body)?;
    let a = anchor_in(&req)?;
    s.node.set_anchor(u, a.domain, a.cert).await?;
    Ok(Json(types::Ok { ok: true }))
}

async fn universe(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<types::Universe> {
    let u = universe_id(&id)?;
    let st = s.node.universe_status(u).await?;
    Ok(Json(types::Universe::from(&st)))
}

async fn add_member(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<types::Ok> {
    let u = universe_id(&id)?;
    let req: types::AddMember = body_json(body)?;
    let m = member_id(&req.member)?;
    s.node.add_member(u, &m).await?;
    Ok(Json(types::Ok { ok: true }))
}

async fn remove_member(
    State(s): State<ApiState>,
    Path((id, member)): Path<(String, String)>,
) -> ApiResult<types::Ok> {
    let u = universe_id(&id)?;
    let m = member_id(&member)?;
    s.node.remove_member(u, &m).await?;
    Ok(Json(types::Ok { ok: true }))
}

async fn send(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<types::Sent> {
    let u = universe_id(&id)?;
    let req: types::SendText = body_json(body)?;
    if crate::names::is_control(req.text.as_bytes()) {
        return Err(ApiError::bad(
            "bad_text",
            "a text may not start with a NUL character (reserved for the node)",
        ));
    }
    let seq = s.node.send(u, req.text.as_bytes()).await?;
    Ok(Json(types::Sent { seq }))
}

/// `after` and `limit` from the query string (parsed by hand for JSON
/// errors).
fn page(q: Option<String>) -> Result<(Option<u64>, usize), ApiError> {
    let mut after = None;
    let mut limit = 100usize;
    for pair in q
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "after" => {
                after = Some(v.parse::<u64>().map_err(|_| {
                    ApiError::bad("bad_query", "after must be a cursor (an unsigned integer)")
                })?)
            }
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .map_err(|_| ApiError::bad("bad_query", "limit must be an unsigned integer"))?
            }
            _ => {}
        }
    }
    Ok((after, limit.clamp(1, MAX_PAGE)))
}

async fn messages(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Vec<types::Message>> {
    let u = universe_id(&id)?;
    let (after, limit) = page(q)?;
    let ms = s.node.messages(u, after, limit).await?;
    Ok(Json(
        ms.iter()
            .filter(|d| !crate::names::is_control(&d.body))
            .map(|d| named(&s.node, d))
            .collect(),
    ))
}

async fn stream(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let u = universe_id(&id)?;
    // Subscribe before checking, so nothing between the two is lost.
    let rx = s.node.subscribe();
    let sent = s.node.subscribe_sent();
    s.node.universe_status(u).await?;
    let node = s.node.clone();
    let events = futures::stream::unfold((rx, sent), move |(mut rx, mut sent)| {
        let node = node.clone();
        async move {
            loop {
                let se = tokio::select! {
                    r = rx.recv() => match r {
                        Ok(ev) if event_universe(&ev) == u => match &ev {
                            mmls_core::Event::Message(d) if crate::names::is_control(&d.body) => continue,
                            mmls_core::Event::Message(d) => StreamEvent::Message(named(&node, d)),
                            _ => StreamEvent::from(&ev),
                        },
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(n)) => StreamEvent::Lagged { missed: n },
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    r = sent.recv() => match r {
                        Ok(t) if t.universe == u => StreamEvent::Sent(t.entry),
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(n)) => StreamEvent::Lagged { missed: n },
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                };
                return Some((Ok::<_, Infallible>(sse_event(&se)), (rx, sent)));
            }
        }
    })
    .take_until(stopped(s.stop.clone()));
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A delivered message with the sender's display name.
fn named(node: &NodeHandle, d: &mmls_core::Delivered) -> types::Message {
    let mut m = types::Message::from(d);
    m.sender_name = node.display_name(&d.sender);
    m
}

/// `limit` from the query string (default 200).
fn limit_of(q: Option<String>) -> Result<usize, ApiError> {
    let mut limit = 200usize;
    for pair in q
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "limit" {
            limit = v
                .parse::<usize>()
                .map_err(|_| ApiError::bad("bad_query", "limit must be an unsigned integer"))?;
        }
    }
    Ok(limit.clamp(1, crate::views::MAX_CONVERSATION))
}

async fn conversation(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Vec<types::ConversationEntry>> {
    let u = universe_id(&id)?;
    let limit = limit_of(q)?;
    Ok(Json(s.node.conversation(u, limit).await?))
}

async fn members_view(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Vec<types::MemberView>> {
    let u = universe_id(&id)?;
    Ok(Json(s.node.members(u).await?))
}

async fn contacts(State(s): State<ApiState>) -> ApiResult<Vec<types::Contact>> {
    Ok(Json(s.node.contacts()))
}

async fn set_contact(
    State(s): State<ApiState>,
    Path(member): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<types::Ok> {
    let m = member_id(&member)?;
    let req: types::SetNickname = body_json(body)?;
    s.node.set_nickname(&m, req.name.as_deref())?;
    Ok(Json(types::Ok { ok: true }))
}

async fn clear_contact(
    State(s): State<ApiState>,
    Path(member): Path<String>,
) -> ApiResult<types::Ok> {
    let m = member_id(&member)?;
    s.node.set_nickname(&m, None)?;
    Ok(Json(types::Ok { ok: true }))
}

/// A one-time login link for the web app; with the bearer token only (a
/// session cannot mint more sessions).
async fn web_login(
    State(s): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<types::LoginLink> {
    if caller != Caller::Bearer {
        return Err(ApiError::new(
            403,
            "bearer_only",
            "login links are made with the API token (mmls open)",
        ));
    }
    let url = s
        .node
        .web_login_url()
        .ok_or_else(|| ApiError::new(503, "no_api", "the API is off"))?;
    Ok(Json(types::LoginLink {
        url,
        expires_in: webauth::LOGIN_TTL.as_secs(),
    }))
}

fn sse_event(e: &StreamEvent) -> SseEvent {
    SseEvent::default()
        .event(e.name())
        .data(serde_json::to_string(e).unwrap_or_else(|_| "{}".into()))
}

async fn update(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<types::Ok> {
    let u = universe_id(&id)?;
    s.node.update(u).await?;
    Ok(Json(types::Ok { ok: true }))
}

async fn rejoin(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<types::Ok> {
    let u = universe_id(&id)?;
    s.node.rejoin(u).await?;
    Ok(Json(types::Ok { ok: true }))
}

async fn leave(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<types::Ok> {
    let u = universe_id(&id)?;
    s.node.leave(u).await?;
    Ok(Json(types::Ok { ok: true }))
}

async fn forget(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<types::Ok> {
    let u = universe_id(&id)?;
    s.node.forget(u).await?;
    Ok(Json(types::Ok { ok: true }))
}

/// The `X-Mmls-*` headers of a bundle download: what `--json` reports.
pub const KNOWN_GROUPS_HEADER: &str = "x-mmls-known-groups";

fn bundle_response(bytes: Vec<u8>, known_groups: usize) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::HeaderName::from_static(KNOWN_GROUPS_HEADER),
                known_groups.to_string(),
            ),
        ],
        bytes,
    )
        .into_response()
}

async fn bundle_export(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let u = universe_id(&id)?;
    let mut since = None;
    for pair in q.as_deref().unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("since_peer=") {
            since = Some(member_id(v)?);
        }
    }
    let (bytes, r) = s.node.bundle_export(Some(u), since).await?;
    Ok(bundle_response(bytes, r.known_groups))
}

async fn bundle_introduction(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let (bytes, _) = s.node.bundle_export(None, None).await?;
    Ok(bundle_response(bytes, 0))
}

async fn bundle_import(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<types::BundleImported> {
    let body = body.map_err(|e| ApiError::new(e.status().as_u16(), "bad_body", e.body_text()))?;
    let r = s.node.bundle_import(body.to_vec()).await?;
    Ok(Json(types::BundleImported::from(&r)))
}

async fn status(State(s): State<ApiState>) -> ApiResult<types::Status> {
    let st = s.node.status().await?;
    Ok(Json(types::Status {
        member: st.member.to_string(),
        peer_id: st.peer_id.to_string(),
        name: st.name,
        listen_addrs: st.listen_addrs.iter().map(|a| a.to_string()).collect(),
        peers: st.peers.iter().map(peer_dto).collect(),
        universes: st.universes.iter().map(types::Universe::from).collect(),
        store_bytes: st.store_bytes,
        rejected_inputs: st.rejected_inputs,
        queued_publishes: st.queued_publishes,
        links: st
            .links
            .iter()
            .map(|(p, l)| types::Link {
                peer_id: p.to_string(),
                status: l.clone(),
            })
            .collect(),
    }))
}

fn peer_dto(p: &crate::driver::PeerInfo) -> types::Peer {
    types::Peer {
        peer_id: p.peer_id.to_string(),
        addrs: p.addrs.iter().map(|a| a.to_string()).collect(),
    }
}

async fn peers(State(s): State<ApiState>) -> ApiResult<Vec<types::Peer>> {
    let ps = s.node.peers().await?;
    Ok(Json(ps.iter().map(peer_dto).collect()))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

async fn shutdown(State(s): State<ApiState>) -> ApiResult<types::Ok> {
    s.node.request_stop().await;
    Ok(Json(types::Ok { ok: true }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_is_valid_json_and_lists_every_route() {
        let v: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        assert!(v["openapi"].as_str().unwrap().starts_with("3."));
        for p in [
            "/v1/id",
            "/v1/identity/certificate",
            "/v1/universes",
            "/v1/universes/{id}",
            "/v1/universes/{id}/members",
            "/v1/universes/{id}/members/{member}",
            "/v1/universes/{id}/messages",
            "/v1/universes/{id}/stream",
            "/v1/universes/{id}/update",
            "/v1/universes/{id}/anchors",
            "/v1/universes/{id}/rejoin",
            "/v1/universes/{id}/bundle",
            "/v1/bundles",
            "/v1/bundles/introduction",
            "/v1/status",
            "/v1/peers",
            "/v1/openapi.json",
            "/v1/shutdown",
            "/v1/prove",
            "/v1/universes/{id}/conversation",
            "/v1/contacts",
            "/v1/contacts/{member}",
            "/v1/web/login",
            "/v1/devices",
            "/v1/devices/link",
            "/v1/devices/unlink",
        ] {
            assert!(v["paths"].get(p).is_some(), "{p} missing");
        }
    }

    #[test]
    fn page_parsing() {
        assert_eq!(page(None).unwrap(), (None, 100));
        assert_eq!(page(Some("after=5&limit=7".into())).unwrap(), (Some(5), 7));
        assert_eq!(page(Some("limit=999999".into())).unwrap().1, MAX_PAGE);
        assert!(page(Some("after=x".into())).is_err());
    }
}
