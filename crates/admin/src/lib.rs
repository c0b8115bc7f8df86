//! The admin HTTP API and the Prometheus exposition (see `docs/admin.md` and
//! `docs/admin-api.yaml`).
//!
//! Owns the routes, token authentication, and turning the proxy's state into JSON.
//! It reads and changes the proxy only through [`Shared`]: the session registry
//! (list, kick), the ban list, the counters, and [`Shared::reload_from_file`] (the
//! same path as SIGHUP). It must never sit on the relay path: nothing here is
//! called per stanza.
#![forbid(unsafe_code)]

pub mod listener;
pub mod metrics;
pub mod talkers;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Json, Router};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tracing::{info, warn};
use xmppwall_policy::bans::{jid_domain, Ban, BanTarget};
use xmppwall_policy::rules::config::ListInfo;
use xmppwall_policy::stanza::bare_jid;
use xmppwall_proxy::config::{Admin, Front};
use xmppwall_proxy::server::{ReloadError, Shared};
use xmppwall_proxy::sessions::LiveSession;
use xmppwall_proxy::stats::Stats;
use xmppwall_proxy::stream_error::{StreamCondition, StreamError};

use crate::talkers::{GroupBy, Talkers};

/// Every route of the API: the router is built from this table, and
/// [`route_list`] (which the OpenAPI test compares with `docs/admin-api.yaml`)
/// reads it too, so the two cannot drift.
fn routes() -> Vec<(&'static str, &'static str, MethodRouter<AppState>)> {
    vec![
        ("get", "/metrics", get(metrics_text)),
        ("get", "/v1/stats", get(stats)),
        ("get", "/v1/sessions", get(sessions)),
        ("post", "/v1/sessions/kick", post(kick_matching)),
        ("post", "/v1/sessions/{id}/kick", post(kick_one)),
        ("get", "/v1/bans", get(list_bans)),
        ("post", "/v1/bans", post(add_ban)),
        ("delete", "/v1/bans", delete(remove_ban)),
        ("post", "/v1/reload", post(reload)),
        ("get", "/v1/verdicts", get(verdicts)),
        ("get", "/v1/talkers", get(talkers)),
        ("get", "/v1/reports", get(reports)),
        ("get", "/v1/reputation", get(reputation)),
        ("get", "/v1/lists", get(lists)),
        ("get", "/v1/lists/{name}", get(list_entries)),
    ]
}

/// Every route as (lower-case method, path).
pub fn route_list() -> Vec<(&'static str, &'static str)> {
    routes().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// Binds the admin listener; fails before anything is served if it cannot.
pub async fn bind(admin: &Admin) -> std::io::Result<TcpListener> {
    TcpListener::bind(admin.listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {} for the admin API: {e}", admin.listen),
        )
    })
}

struct AdminState {
    shared: Arc<Shared>,
    talkers: Talkers,
    started: SystemTime,
}

type AppState = Arc<AdminState>;

/// Serves the admin API on `listener` until the proxy shuts down.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let state = Arc::new(AdminState {
        shared: shared.clone(),
        talkers: Talkers::default(),
        started: SystemTime::now(),
    });
    let sampler = state.clone();
    let mut stop = shared.shutdown_signal();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(talkers::SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => sampler.talkers.sample(&sampler.shared.sessions),
                _ = stop.changed() => break,
            }
        }
    });
    if let Ok(address) = listener.local_addr() {
        info!(%address, "admin API listening");
    }
    let mut stop = shared.shutdown_signal();
    let app = router(state);
    let served = axum::serve(listener::Limited::new(listener), app)
        .with_graceful_shutdown(async move {
            let _ = stop.changed().await;
        })
        .await;
    if let Err(e) = served {
        warn!(error = %e, "the admin API stopped");
    }
}

fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for (_, path, method_router) in routes() {
        // Routes on one path merge their methods.
        router = router.route(path, method_router);
    }
    router
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; see docs/admin-api.yaml",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

/// Whether the request's Host (if any) names `localhost` or a loopback address.
fn host_is_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    // "name:port", "[v6]:port", or either without the port.
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(inside, _)| inside),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Bearer-token check (RFC 6750 §2.1), compared in constant time. `/metrics` is
/// open when `metrics_public` is set.
async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let config = state.shared.config.load();
    let Some(admin) = config.admin.as_ref() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the admin API is not configured",
        );
    };
    // A browser adds Origin to what a web page sends elsewhere (and to every POST):
    // the API sets no CORS headers and is never meant for pages, so a page the
    // operator has open cannot drive it, even where no token is needed.
    if request.headers().contains_key(header::ORIGIN) {
        return error(
            StatusCode::FORBIDDEN,
            "requests from web pages are refused; use xmppwall ctl, curl or a metrics scraper",
        );
    }
    // Without a token the API is on loopback; a name other than a loopback one in
    // Host is a page that had a name of its own point at 127.0.0.1 (DNS rebinding).
    if admin.token.is_none() && !host_is_loopback(request.headers()) {
        return error(
            StatusCode::FORBIDDEN,
            "without a token, the admin API answers only requests addressed to localhost or a loopback address",
        );
    }
    if request.uri().path() == "/metrics" && admin.metrics_public {
        return next.run(request).await;
    }
    if let Some(token) = &admin.token {
        let offered = bearer(request.headers());
        let ok = offered.is_some_and(|o| bool::from(o.as_bytes().ct_eq(token.as_bytes())));
        if !ok {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token; send Authorization: Bearer <token> (the token of [admin] token_file)",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    next.run(request).await
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics::render(&state.shared),
    )
        .into_response()
}

fn rfc3339(t: SystemTime) -> String {
    xmppwall_policy::clock::rfc3339(t)
}

async fn stats(State(state): State<AppState>) -> Json<Value> {
    let shared = &state.shared;
    let s = &shared.stats;
    let n = Stats::get;
    let limits = shared.limiter.load().state.snapshot();
    let config = shared.config.load();
    let rules: Vec<Value> = shared
        .policy
        .load()
        .rule_hits()
        .into_iter()
        .map(|(chain, rule, hits, shadow)| {
            json!({ "chain": chain, "rule": rule, "hits": hits, "shadow_hits": shadow })
        })
        .collect();
    let limit_hits: serde_json::Map<String, Value> = limits
        .hits
        .iter()
        .map(|(k, v)| (k.name().to_owned(), json!(v)))
        .collect();
    let (sum, count, _) = s.processing.read();
    Json(json!({
        "started": rfc3339(state.started),
        "uptime_seconds": state.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
        "config": config.source.display().to_string(),
        "connections": {
            "accepted": s.accepted_total(),
            "open": s.open_connections(),
            "sessions": shared.sessions.len(),
            "by_front": Front::ALL.iter().map(|f| (f.name().to_owned(), json!({
                "accepted": n(&s.connections_accepted[f.index()]),
                "open": s.open_on(*f),
                "sessions": shared.sessions.count_front(f.name()),
            }))).collect::<serde_json::Map<String, Value>>(),
        },
        "sasl": { "successes": n(&s.sasl_successes), "failures": n(&s.sasl_failures) },
        "stanzas": {
            "to_server": n(&s.stanzas_to_server),
            "to_client": n(&s.stanzas_to_client),
            "bounced": n(&s.stanzas_bounced),
            "dropped_to_server": n(&s.to_server_dropped),
            "dropped_to_client": n(&s.to_client_dropped),
        },
        "bytes": { "from_clients": n(&s.bytes_from_client), "from_server": n(&s.bytes_from_server) },
        "streams_closed_by_error": n(&s.streams_closed_by_error),
        "upstream_connect_failures": n(&s.upstream_connect_failures),
        "streams_answered_before_connect": n(&s.streams_answered_before_connect),
        "tls_handshake_failures": n(&s.tls_handshake_failures),
        "tables": {
            "addresses": { "entries": limits.addresses, "cap": limits.address_cap, "evictions": limits.address_evictions },
            "accounts": { "entries": limits.accounts, "cap": limits.account_cap, "evictions": limits.account_evictions },
            "peer_domains": { "entries": limits.peer_domains.0, "cap": limits.peer_domains.1, "evictions": limits.peer_domains.2 },
            "peer_senders": { "entries": limits.peer_senders.0, "cap": limits.peer_senders.1, "evictions": limits.peer_senders.2 },
        },
        "limit_hits": limit_hits,
        "rules": rules,
        "processing": { "sampled": count, "mean_seconds": if count > 0 { sum / count as f64 } else { 0.0 } },
    }))
}

/// `?ip=ADDRESS|PREFIX&jid=JID&domain=DOMAIN`: every given filter must hold.
#[derive(Debug, Default, Deserialize)]
struct SessionFilter {
    ip: Option<String>,
    jid: Option<String>,
    domain: Option<String>,
}

struct Matcher {
    net: Option<IpNet>,
    jid: Option<String>,
    domain: Option<String>,
}

impl SessionFilter {
    fn matcher(&self) -> Result<Matcher, String> {
        let net = match self.ip.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(text) => match BanTarget::parse("address", text) {
                Ok(BanTarget::Address(net)) => Some(net),
                Ok(_) | Err(_) => return Err(format!("ip: {text:?} is not an address or prefix")),
            },
        };
        Ok(Matcher {
            net,
            jid: self
                .jid
                .as_deref()
                .map(|j| j.trim().to_ascii_lowercase())
                .filter(|j| !j.is_empty()),
            domain: self
                .domain
                .as_deref()
                .map(|d| d.trim().to_ascii_lowercase())
                .filter(|d| !d.is_empty()),
        })
    }

    fn is_empty(&self) -> bool {
        self.ip.is_none() && self.jid.is_none() && self.domain.is_none()
    }
}

impl Matcher {
    /// On server-to-server and component streams the peer domains stand for the
    /// JID (a domain is a JID, RFC 7622 §3.2): `jid` and `domain` match one of them.
    fn matches(&self, s: &LiveSession) -> bool {
        let domains = s.domains();
        let jid = s.jid().map(|j| j.to_ascii_lowercase());
        if let Some(net) = &self.net {
            if !net.contains(&s.peer.ip().to_canonical()) {
                return false;
            }
        }
        if let Some(wanted) = &self.jid {
            if domains.iter().any(|d| d.eq_ignore_ascii_case(wanted)) {
                return self.domain_matches(s, jid.as_deref(), &domains);
            }
            let Some(jid) = &jid else { return false };
            // A bare JID matches every resource of the account.
            let same = if wanted.contains('/') {
                jid == wanted
            } else {
                bare_jid(jid) == *wanted
            };
            if !same {
                return false;
            }
        }
        self.domain_matches(s, jid.as_deref(), &domains)
    }

    /// The domain of the JID, the stream's `to`, or a peer domain.
    fn domain_matches(&self, s: &LiveSession, jid: Option<&str>, domains: &[String]) -> bool {
        let Some(domain) = &self.domain else {
            return true;
        };
        let of_jid = jid.map(jid_domain);
        let of_stream = s.to.as_deref().map(str::to_ascii_lowercase);
        of_jid == Some(domain.as_str())
            || of_stream.as_deref() == Some(domain.as_str())
            || domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

fn session_json(s: &LiveSession) -> Value {
    json!({
        "id": s.id,
        "peer": s.peer.to_string(),
        "address": s.peer.ip().to_canonical().to_string(),
        "front": s.front,
        "to": s.to,
        "jid": s.jid(),
        "domains": s.domains(),
        "started": rfc3339(s.started),
        "duration_seconds": s.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
        "bytes_from_client": LiveSession::count(&s.bytes_from_client),
        "bytes_to_client": LiveSession::count(&s.bytes_to_client),
        "stanzas_from_client": LiveSession::count(&s.stanzas_from_client),
        "stanzas_to_client": LiveSession::count(&s.stanzas_to_client),
    })
}

async fn sessions(State(state): State<AppState>, Query(filter): Query<SessionFilter>) -> Response {
    let matcher = match filter.matcher() {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let list: Vec<Value> = state
        .shared
        .sessions
        .list()
        .iter()
        .filter(|s| matcher.matches(s))
        .map(|s| session_json(s))
        .collect();
    Json(json!({ "sessions": list })).into_response()
}

/// The body of a kick: the RFC 6120 §4.9.3 condition (default `policy-violation`)
/// and an optional text for the client.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KickBody {
    condition: Option<String>,
    text: Option<String>,
    /// For `/v1/sessions/kick`: which sessions.
    ip: Option<String>,
    jid: Option<String>,
    domain: Option<String>,
}

fn kick_error(body: &KickBody) -> Result<StreamError, String> {
    let name = body.condition.as_deref().unwrap_or("policy-violation");
    let Some(condition) = StreamCondition::from_name(name) else {
        let known: Vec<&str> = StreamCondition::ALL.iter().map(|c| c.name()).collect();
        return Err(format!(
            "condition: {name:?} is not a stream error condition of RFC 6120 §4.9.3; use one of {}",
            known.join(", ")
        ));
    };
    let mut e = StreamError::new(condition);
    if let Some(text) = body.text.as_deref().filter(|t| !t.is_empty()) {
        e = e.with_text(text);
    }
    Ok(e)
}

fn body_or_default(body: Option<Json<KickBody>>) -> KickBody {
    body.map(|Json(b)| b).unwrap_or_default()
}

async fn kick_one(
    State(state): State<AppState>,
    Path(id): Path<u64>,
    body: Option<Json<KickBody>>,
) -> Response {
    let body = body_or_default(body);
    let stream_error = match kick_error(&body) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Some(session) = state.shared.sessions.get(id) else {
        return error(StatusCode::NOT_FOUND, format!("no live session {id}"));
    };
    info!(
        session = id,
        condition = stream_error.condition.name(),
        "kick requested"
    );
    let condition = stream_error.condition.name();
    session.kick(stream_error);
    Json(json!({ "kicked": [id], "condition": condition })).into_response()
}

async fn kick_matching(State(state): State<AppState>, body: Option<Json<KickBody>>) -> Response {
    let body = body_or_default(body);
    let stream_error = match kick_error(&body) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let filter = SessionFilter {
        ip: body.ip.clone(),
        jid: body.jid.clone(),
        domain: body.domain.clone(),
    };
    if filter.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "give ip, jid or domain: kicking every session needs a filter",
        );
    }
    let matcher = match filter.matcher() {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let kicked = kick_where(&state, &matcher, &stream_error);
    Json(json!({ "kicked": kicked, "condition": stream_error.condition.name() })).into_response()
}

fn kick_where(state: &AdminState, matcher: &Matcher, e: &StreamError) -> Vec<u64> {
    let mut kicked = Vec::new();
    for s in state.shared.sessions.list() {
        if matcher.matches(&s) && s.kick(e.clone()) {
            kicked.push(s.id);
        }
    }
    if !kicked.is_empty() {
        info!(sessions = ?kicked, condition = e.condition.name(), "sessions kicked");
    }
    kicked
}

/// One `[lists.NAME]` of the running policy, without its entries.
fn list_json(list: &ListInfo) -> Value {
    json!({
        "name": list.name,
        "kind": list.kind,
        "size": list.len(),
        "source": if list.file.is_some() { "file" } else { "inline" },
        "file": list.file.as_ref().map(|p| p.display().to_string()),
        "inline_entries": list.inline_entries,
        "loaded": rfc3339(list.loaded),
    })
}

async fn lists(State(state): State<AppState>) -> Json<Value> {
    let policy = state.shared.policy.load();
    let lists: Vec<Value> = policy.lists.iter().map(list_json).collect();
    Json(json!({ "lists": lists }))
}

async fn list_entries(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    let policy = state.shared.policy.load();
    let Some(list) = policy.lists.iter().find(|l| l.name == name) else {
        return error(StatusCode::NOT_FOUND, format!("no list named {name:?}"));
    };
    let mut v = list_json(list);
    v["entries"] = json!(list.entries());
    Json(v).into_response()
}

fn ban_json(ban: &Ban, source: &str) -> Value {
    json!({
        "kind": ban.target.kind(),
        "value": ban.target.value(),
        "until": ban.until.map(rfc3339),
        "reason": ban.reason,
        "created": rfc3339(ban.created),
        "source": source,
    })
}

async fn list_bans(State(state): State<AppState>) -> Json<Value> {
    let mut list: Vec<Value> = state
        .shared
        .bans
        .list()
        .iter()
        .map(|b| ban_json(b, "operator"))
        .collect();
    // The limits' own bans (authentication failures, rules' `ban`), per address group.
    for (ip, until) in state
        .shared
        .limiter
        .load()
        .address_bans(std::time::Instant::now())
    {
        list.push(json!({
            "kind": "address",
            "value": ip.to_string(),
            "until": rfc3339(until),
            "reason": null,
            "created": null,
            "source": "limits",
        }));
    }
    Json(json!({ "bans": list }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BanBody {
    /// `address` (an address or prefix), `account` or `domain`.
    kind: String,
    value: String,
    /// How long, e.g. `1h`, `7d`; absent: until lifted.
    duration: Option<String>,
    reason: Option<String>,
    /// End the live sessions the ban covers (default: yes; not for domains).
    kick: Option<bool>,
}

async fn add_ban(State(state): State<AppState>, Json(body): Json<BanBody>) -> Response {
    let target = match BanTarget::parse(&body.kind, &body.value) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let until = match body.duration.as_deref() {
        None => None,
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if d > xmppwall_policy::clock::MAX_BAN => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("duration: {text:?} is over 100 years; leave duration out for a ban until it is lifted"),
                )
            }
            Ok(d) if !d.is_zero() => Some(SystemTime::now() + d),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("duration: {text:?} is not a positive duration such as \"30m\" or \"7d\""),
                )
            }
        },
    };
    let ban = Ban {
        target: target.clone(),
        until,
        reason: body.reason.clone(),
        created: SystemTime::now(),
    };
    // In force here and on the other instances; the live streams it covers end
    // with the error a new connection or login would get.
    let kicked = match state
        .shared
        .add_operator_ban(ban.clone(), body.kick.unwrap_or(true))
        .await
    {
        Ok(kicked) => kicked,
        Err(e) => return error(StatusCode::INSUFFICIENT_STORAGE, e),
    };
    info!(kind = target.kind(), value = %target.value(), until = ?until.map(rfc3339), "ban added");
    (
        StatusCode::CREATED,
        Json(json!({ "ban": ban_json(&ban, "operator"), "kicked": kicked })),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct BanQuery {
    kind: String,
    value: String,
}

async fn remove_ban(State(state): State<AppState>, Query(q): Query<BanQuery>) -> Response {
    let target = match BanTarget::parse(&q.kind, &q.value) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let mut removed = state.shared.remove_operator_ban(&target).await;
    if let BanTarget::Address(net) = &target {
        // Here, in the store, and on the other instances (shared state).
        match state.shared.unban(*net).await {
            Ok(lifted) => removed |= lifted,
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the ban is lifted in memory, but the store could not record it ({e}); it would come back at the next start: retry"),
                )
            }
        }
    }
    if !removed {
        return error(
            StatusCode::NOT_FOUND,
            format!("no ban on {} {}", target.kind(), target.value()),
        );
    }
    info!(kind = target.kind(), value = %target.value(), "ban lifted");
    Json(json!({ "lifted": { "kind": target.kind(), "value": target.value() } })).into_response()
}

async fn reload(State(state): State<AppState>) -> Response {
    // Reading and compiling the files is blocking work: off the async workers.
    let shared = state.shared.clone();
    let result = match tokio::task::spawn_blocking(move || shared.reload_from_file()).await {
        Ok(result) => result,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the reload failed: {e}"),
            )
        }
    };
    match result {
        Ok(path) => {
            info!(config = %path.display(), "configuration reloaded (admin API)");
            Json(json!({ "reloaded": path.display().to_string() })).into_response()
        }
        Err(ReloadError::Invalid(e)) => {
            for problem in &e.problems {
                tracing::error!(%problem, "reload refused; the running configuration stays");
            }
            let problems: Vec<Value> = e
                .problems
                .iter()
                .map(|p| {
                    json!({
                        "file": p.file.display().to_string(),
                        "line": p.line,
                        "column": p.column,
                        "message": p.message,
                    })
                })
                .collect();
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({
                    "error": format!("reload refused; the running configuration stays:\n{e}"),
                    "problems": problems,
                })),
            )
                .into_response()
        }
        Err(e) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reload refused; the running configuration stays: {e}"),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct VerdictsQuery {
    limit: Option<usize>,
    /// `store` (default: the durable audit trail, with rule and limit names) or
    /// `memory` (the last refusals as the peers got them, bans and kicks included).
    source: Option<String>,
}

async fn verdicts(State(state): State<AppState>, Query(q): Query<VerdictsQuery>) -> Response {
    let limit = q.limit.unwrap_or(100).min(10_000);
    match q.source.as_deref().unwrap_or("store") {
        "store" => match state.shared.store.recent_verdicts(limit).await {
            Ok(records) => {
                let list: Vec<Value> = records
                    .iter()
                    .map(|v| {
                        json!({
                            "at": rfc3339(v.at),
                            "address": v.address.to_canonical().to_string(),
                            "jid": v.jid,
                            "hook": v.hook,
                            "kind": v.stanza.kind,
                            "type": v.stanza.stanza_type,
                            "from": v.stanza.from,
                            "to": v.stanza.to,
                            "by": v.source.as_str(),
                            "name": v.name,
                            "verdict": v.action,
                        })
                    })
                    .collect();
                Json(json!({ "verdicts": list, "source": "store" })).into_response()
            }
            Err(e) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the store: {e}"),
            ),
        },
        "memory" => {
            let list: Vec<Value> = state
                .shared
                .stats
                .recent
                .latest(limit)
                .iter()
                .map(|v| {
                    json!({
                        "at": rfc3339(v.at),
                        "session": v.session,
                        "address": v.peer.to_canonical().to_string(),
                        "jid": v.jid,
                        "direction": v.direction,
                        "verdict": v.verdict,
                        "condition": v.condition,
                    })
                })
                .collect();
            Json(json!({ "verdicts": list, "source": "memory" })).into_response()
        }
        other => error(
            StatusCode::BAD_REQUEST,
            format!("source: {other:?}; use store or memory"),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct TalkersQuery {
    seconds: Option<u64>,
    by: Option<String>,
    limit: Option<usize>,
}

async fn talkers(State(state): State<AppState>, Query(q): Query<TalkersQuery>) -> Response {
    let seconds = q.seconds.unwrap_or(60);
    let longest = talkers::SAMPLE_EVERY.as_secs() * (talkers::SAMPLES as u64 - 1);
    if seconds == 0 || seconds > longest {
        return error(
            StatusCode::BAD_REQUEST,
            format!("seconds: give 1 to {longest}"),
        );
    }
    let Some(by) = GroupBy::parse(q.by.as_deref().unwrap_or("connection")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "by: one of connection, account, address",
        );
    };
    let (covered, list) = state.talkers.top(
        &state.shared.sessions,
        Duration::from_secs(seconds),
        by,
        q.limit.unwrap_or(10).min(1000),
    );
    Json(json!({
        "window_seconds": covered.as_secs(),
        "by": q.by.as_deref().unwrap_or("connection"),
        "talkers": list,
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct SubjectQuery {
    /// A JID or an address; absent: every subject.
    subject: Option<String>,
    limit: Option<usize>,
}

async fn reports(State(state): State<AppState>, Query(q): Query<SubjectQuery>) -> Response {
    let subject = q.subject.filter(|s| !s.trim().is_empty());
    match state
        .shared
        .store
        .reports(subject, q.limit.unwrap_or(100).min(10_000))
        .await
    {
        Ok(reports) => {
            let list: Vec<Value> = reports
                .iter()
                .map(|r| {
                    json!({
                        "id": r.id,
                        "at": rfc3339(r.at),
                        "reporter": r.reporter,
                        "subject": r.subject,
                        "reason": r.reason,
                        "text": r.text,
                        "stanza_ids": r.stanza_ids,
                    })
                })
                .collect();
            Json(json!({ "reports": list })).into_response()
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the store: {e}"),
        ),
    }
}

/// The store's key for a subject: `jid:` for a JID, `domain:` for a domain, as
/// written when already prefixed.
fn reputation_subject(subject: &str) -> String {
    if subject.starts_with("jid:") || subject.starts_with("domain:") {
        subject.to_owned()
    } else if subject.contains('@') {
        format!("jid:{}", bare_jid(subject))
    } else {
        format!("domain:{}", subject.to_ascii_lowercase())
    }
}

async fn reputation(State(state): State<AppState>, Query(q): Query<SubjectQuery>) -> Response {
    let store = &state.shared.store;
    let found = match q.subject.filter(|s| !s.trim().is_empty()) {
        Some(subject) => store
            .reputation(reputation_subject(subject.trim()))
            .await
            .map(|r| vec![r]),
        None => store.reputations(q.limit.unwrap_or(100).min(10_000)).await,
    };
    match found {
        Ok(list) => {
            let list: Vec<Value> = list
                .iter()
                .map(|r| {
                    json!({
                        "subject": r.subject,
                        "score": r.score,
                        "updated": r.updated.map(rfc3339),
                    })
                })
                .collect();
            Json(json!({ "reputation": list })).into_response()
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the store: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The `paths` of an OpenAPI document as (method, path): paths at two spaces of
    /// indentation under `paths:`, operations at four.
    fn openapi_operations(yaml: &str) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        let mut in_paths = false;
        let mut path = None;
        for line in yaml.lines() {
            if !line.starts_with(' ') && !line.trim().is_empty() {
                in_paths = line.trim_end() == "paths:";
                continue;
            }
            if !in_paths {
                continue;
            }
            if let Some(p) = line.strip_prefix("  /") {
                path = Some(format!(
                    "/{}",
                    p.trim_end().trim_end_matches(':').trim_matches(['"', '\''])
                ));
            } else if let (Some(p), Some(m)) = (&path, line.strip_prefix("    ")) {
                let m = m.trim_end().trim_end_matches(':');
                if ["get", "post", "put", "delete", "patch"].contains(&m) {
                    out.insert((m.to_owned(), p.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn every_route_is_in_the_openapi_file_and_nothing_else_is() {
        let yaml = include_str!("../../../docs/admin-api.yaml");
        let documented = openapi_operations(yaml);
        let served: BTreeSet<(String, String)> = super::route_list()
            .into_iter()
            .map(|(m, p)| (m.to_owned(), p.to_owned()))
            .collect();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from docs/admin-api.yaml: {undocumented:?}"
        );
        assert!(
            unserved.is_empty(),
            "docs/admin-api.yaml lists routes the router does not serve: {unserved:?}"
        );
    }
}
