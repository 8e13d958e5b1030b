//! `/admin/`: the operator's live view of the whole cluster, off unless `[admin] key` is
//! set.
//!
//! Every node publishes a report of itself (connections per route, groups, counters, the
//! health of its layer and bridge, its busiest groups) once per `admin.report_interval`
//! into the reserved group [`ADMIN_GROUP`] through its layer, so the reports of all nodes
//! reach every node the way any message does. The page (served from the binary) asks for
//! the key, keeps it in memory, trades it for a short-lived session, and listens on
//! `/admin/stream/` — an ordinary herald WebSocket joined to that group: the dashboard is
//! fed by herald's own push. `/admin/api/cluster` answers the latest reports from the
//! group's history, for the first paint.
//!
//! Data endpoints answer 401 without the key (or a session); the key is compared in
//! constant time.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use herald_core::{GroupName, Layer, Message, Payload, Position};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::{ApiError, constant_time_eq};
use crate::metrics::Metrics;
use crate::server::AppState;

/// The group every node's reports are published to.
pub const ADMIN_GROUP: &str = "herald.admin";

/// The path of the dashboard's WebSocket.
pub const STREAM_PATH: &str = "/admin/stream/";

/// How long a session opened with the key stays valid.
const SESSION_TTL: Duration = Duration::from_secs(600);

/// Sessions kept at once; the oldest goes first.
const MAX_SESSIONS: usize = 64;

/// Groups counted per report interval for the busiest list; past it new groups are not
/// counted until the next interval (the busiest are usually among the first seen).
const MAX_COUNTED_GROUPS: usize = 10_000;

/// A node whose latest report is older than this is left out of the cluster view.
const STALE_AFTER: Duration = Duration::from_secs(5);

/// The dashboard page.
const PAGE: &str = include_str!("../assets/admin.html");

/// The admin side of a node.
#[derive(Debug)]
pub(crate) struct Admin {
    key: String,
    /// This node's name in the reports.
    pub(crate) node: String,
    started_ms: u64,
    /// Open sessions: token and expiry, oldest first. A std mutex: one short operation.
    sessions: Mutex<VecDeque<(String, Instant)>>,
    /// Messages per group since the last report (bounded by [`MAX_COUNTED_GROUPS`]).
    counts: Mutex<HashMap<GroupName, u64>>,
}

impl Admin {
    pub(crate) fn new(key: String, node: String) -> Self {
        Self {
            key,
            node,
            started_ms: unix_ms(),
            sessions: Mutex::new(VecDeque::new()),
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::api::bearer)
            .is_some_and(|key| constant_time_eq(key.as_bytes(), self.key.as_bytes()))
    }

    fn open_session(&self) -> String {
        let token: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(32)
            .collect();
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|(_, until)| *until > now);
        while sessions.len() >= MAX_SESSIONS {
            sessions.pop_front();
        }
        sessions.push_back((token.clone(), now + SESSION_TTL));
        token
    }

    fn has_session(&self, token: &str) -> bool {
        let now = Instant::now();
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        // Compared in constant time each, and all of them, so timing reveals nothing.
        sessions.iter().fold(false, |found, (t, until)| {
            found | (constant_time_eq(t.as_bytes(), token.as_bytes()) && *until > now)
        })
    }

    /// Counts the messages the pump delivers, per group (the busiest list).
    pub(crate) fn count(&self, messages: &[Message]) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for run in messages.chunk_by(|a, b| a.group == b.group) {
            let group = &run[0].group;
            if group.as_str() == ADMIN_GROUP {
                continue;
            }
            let full = counts.len() >= MAX_COUNTED_GROUPS;
            match counts.get_mut(group) {
                Some(n) => *n += run.len() as u64,
                None if !full => {
                    counts.insert(group.clone(), run.len() as u64);
                }
                None => {}
            }
        }
    }

    fn take_counts(&self) -> HashMap<GroupName, u64> {
        std::mem::take(&mut *self.counts.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the admin key is required (Authorization: Bearer <admin key>)",
    )
}

/// The admin side, when the request carries the admin key; else 404 (off) or 401.
fn authorized<'s>(state: &'s AppState, headers: &HeaderMap) -> Result<&'s Admin, ApiError> {
    let admin = enabled(state)?;
    if admin.authorized(headers) {
        Ok(admin)
    } else {
        Err(unauthorized())
    }
}

fn enabled(state: &AppState) -> Result<&Admin, ApiError> {
    state.admin.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the admin page is off (set [admin] key)",
        )
    })
}

/// `GET /admin/`: the page (it holds no data; it asks for the key).
pub(crate) async fn page(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    enabled(&state)?;
    let mut response = Html(PAGE).into_response();
    let headers = response.headers_mut();
    // The page runs only its own inline code and talks only to this server.
    if let Ok(csp) = axum::http::HeaderValue::from_str(
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:; img-src data:; frame-ancestors 'none'",
    ) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// `POST /admin/api/session`: trades the key for a session token the page's WebSocket
/// can carry in its URL (browsers cannot set headers on a WebSocket).
pub(crate) async fn session(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let admin = authorized(&state, &headers)?;
    Ok(Json(json!({
        "session": admin.open_session(),
        "expires_in": SESSION_TTL.as_secs(),
        "stream": STREAM_PATH,
        "node": admin.node,
    }))
    .into_response())
}

/// `GET /admin/stream/?session=…`: the dashboard's WebSocket (joined to [`ADMIN_GROUP`]);
/// 401 before any upgrade without a valid session.
pub(crate) async fn stream(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let admin = match enabled(&state) {
        Ok(admin) => admin,
        Err(e) => return e.into_response(),
    };
    let token = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("session=")))
        .unwrap_or("");
    if token.is_empty() || !admin.has_session(token) {
        return unauthorized().into_response();
    }
    crate::ws::gateway(State(state), req).await
}

/// `GET /admin/api/cluster`: the latest report of every node heard from lately.
pub(crate) async fn cluster(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let admin = authorized(&state, &headers)?;
    let nodes = latest_reports(&state).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "layer_unavailable",
            format!("cannot read the nodes' reports: {e}"),
        )
    })?;
    Ok(Json(json!({"nodes": nodes, "now": unix_ms(), "node": admin.node})).into_response())
}

/// The newest report per node from [`ADMIN_GROUP`]'s history, fresh ones only.
async fn latest_reports(state: &AppState) -> Result<Vec<Value>, herald_core::LayerError> {
    let Ok(group) = GroupName::new(ADMIN_GROUP) else {
        return Ok(Vec::new());
    };
    let current = state.layer.history(&group, None).await?.current;
    let since = Position {
        offset: current.offset.saturating_sub(200),
        epoch: current.epoch,
    };
    let history = state.layer.history(&group, Some(&since)).await?;
    let oldest = unix_ms().saturating_sub(u64::try_from(STALE_AFTER.as_millis()).unwrap_or(0));
    let mut latest: HashMap<String, Value> = HashMap::new();
    for message in history.messages {
        let Ok(report) = serde_json::from_slice::<Value>(message.payload.data()) else {
            continue;
        };
        let (Some(node), Some(at)) = (report["node"].as_str(), report["at"].as_u64()) else {
            continue;
        };
        if at >= oldest {
            latest.insert(node.to_string(), report);
        }
    }
    let mut nodes: Vec<Value> = latest.into_values().collect();
    nodes.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
    Ok(nodes)
}

/// A test message from the page.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestMessage {
    group: String,
    text: String,
}

/// `POST /admin/api/publish`: the page's "publish a test message" form.
pub(crate) async fn publish(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorized(&state, &headers)?;
    let message: TestMessage = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("expected {{\"group\": ..., \"text\": ...}}: {e}"),
        )
    })?;
    let group = GroupName::new(&message.group)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_group", e.to_string()))?;
    if message.text.len() > state.config.limits.max_publish_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the test message is larger than limits.max_publish_bytes",
        ));
    }
    let position = state
        .layer
        .publish(&group, Payload::text(message.text))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "layer_unavailable",
                e.to_string(),
            )
        })?;
    Metrics::add(&state.metrics.messages_published, 1);
    tracing::info!(group = %group, offset = position.offset, "test message published from /admin/");
    Ok(Json(json!({"offset": position.offset, "epoch": position.epoch.as_str()})).into_response())
}

/// Publishes this node's report every `interval` until `stop`.
pub(crate) async fn report_loop(state: Arc<AppState>, interval: Duration, stop: CancellationToken) {
    let Some(admin) = state.admin.as_ref() else {
        return;
    };
    let Ok(group) = GroupName::new(ADMIN_GROUP) else {
        return;
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let report = report(&state, admin);
        match state
            .layer
            .publish(&group, Payload::text(report.to_string()))
            .await
        {
            Ok(_) => failed = false,
            Err(e) => {
                // Logged once per outage, not once per interval.
                if !failed {
                    tracing::warn!(error = %e, "cannot publish this node's admin report");
                }
                failed = true;
            }
        }
    }
}

/// This node, now.
fn report(state: &AppState, admin: &Admin) -> Value {
    let m = &state.metrics;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let routes: Vec<Value> = state
        .routes
        .iter()
        .zip(state.route_connections.iter())
        .zip(state.route_sse_connections.iter())
        .map(|((route, n), sse)| {
            json!({
                "path": route.pattern(),
                "connections": {
                    "websocket": n.load(Ordering::Relaxed).max(0),
                    "sse": sse.load(Ordering::Relaxed).max(0),
                },
            })
        })
        .collect();
    let mut busiest: Vec<(GroupName, u64)> = admin.take_counts().into_iter().collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.as_str().cmp(b.0.as_str())));
    busiest.truncate(10);
    let busiest: Vec<Value> = busiest
        .into_iter()
        .map(|(group, messages)| {
            json!({
                "group": group.as_str(),
                "messages": messages,
                "members": state.hub.member_count(&group),
            })
        })
        .collect();
    let django = state.django.as_ref().map(|bridge| {
        let s = bridge.stats();
        json!({
            "received_total": s.received,
            "published_total": s.published,
            "decode_errors_total": s.decode_errors,
            "publish_failures_total": s.publish_failures,
            "backlog": s.backlog,
            "backlog_capacity": s.backlog_capacity,
        })
    });
    let hook = state.hook.as_ref().map(|_| {
        let mut allowed = 0;
        let mut refused = 0;
        let mut failed = 0;
        for metric in m.hook.metrics() {
            if metric.name != "herald_hook_requests_total" {
                continue;
            }
            for (result, n) in metric.samples {
                match result {
                    Some("allow") => allowed += n,
                    Some("forbidden" | "unauthorized") => refused += n,
                    _ => failed += n,
                }
            }
        }
        json!({"allowed_total": allowed, "refused_total": refused, "failed_total": failed})
    });
    let webhooks = state.config.webhooks.url.as_ref().map(|_| {
        json!({
            "delivered_total": load(&m.webhooks.delivered),
            "failed_attempts_total": load(&m.webhooks.failed_attempts),
            "given_up_total": load(&m.webhooks.given_up),
        })
    });
    json!({
        "node": admin.node,
        "at": unix_ms(),
        "started": admin.started_ms,
        "version": env!("CARGO_PKG_VERSION"),
        "connections": m.connections.load(Ordering::Relaxed).max(0),
        "http_connections": m.http_connections.load(Ordering::Relaxed).max(0),
        "routes": routes,
        "groups": m.groups.load(Ordering::Relaxed).max(0),
        "published_total": load(&m.messages_published),
        "received_total": load(&m.messages_received),
        "delivered_total": load(&m.frames_delivered),
        "dropped_total": load(&m.frames_dropped),
        "outbox_overflows_total": load(&m.outbox_overflows),
        "rejected_total": load(&m.connections_rejected),
        "auth_refusals_total": load(&m.auth_refusals),
        "publish_failures_total": load(&m.publish_failures),
        "layer": {"kind": state.layer.kind(), "ready": state.layer.is_ready()},
        "django": django,
        "hook": hook,
        "webhooks": webhooks,
        "busiest": busiest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_are_bounded_and_need_the_exact_token() {
        let admin = Admin::new("k".into(), "n".into());
        let first = admin.open_session();
        assert!(admin.has_session(&first));
        assert!(!admin.has_session(&first[..31]));
        assert!(!admin.has_session(""));
        for _ in 0..MAX_SESSIONS {
            admin.open_session();
        }
        assert!(!admin.has_session(&first), "the oldest went first");
        assert_eq!(admin.sessions.lock().unwrap().len(), MAX_SESSIONS);
        let mut headers = HeaderMap::new();
        assert!(!admin.authorized(&headers));
        headers.insert(header::AUTHORIZATION, "Bearer k".parse().unwrap());
        assert!(admin.authorized(&headers));
        headers.insert(header::AUTHORIZATION, "Bearer kk".parse().unwrap());
        assert!(!admin.authorized(&headers));
    }

    #[test]
    fn counts_are_per_group_bounded_and_skip_the_admin_group() {
        let admin = Admin::new("k".into(), "n".into());
        let message = |g: &str| Message {
            group: GroupName::new(g).unwrap(),
            offset: 1,
            epoch: herald_core::Epoch::new("e"),
            payload: Payload::text("x"),
            received_at: None,
        };
        admin.count(&[
            message("a"),
            message("a"),
            message("b"),
            message(ADMIN_GROUP),
        ]);
        let counts = admin.take_counts();
        assert_eq!(counts.len(), 2);
        assert_eq!(counts[&GroupName::new("a").unwrap()], 2);
        assert!(
            admin.take_counts().is_empty(),
            "taken: the next interval starts at 0"
        );
        let many: Vec<Message> = (0..MAX_COUNTED_GROUPS + 10)
            .map(|i| message(&format!("g{i}")))
            .collect();
        admin.count(&many);
        assert_eq!(admin.take_counts().len(), MAX_COUNTED_GROUPS);
    }
}
