//! The gateway: matches a WebSocket upgrade request to a route, checks it (limits,
//! origin, token), joins the connection to its groups and hands the upgraded socket to its
//! connection task.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_ws::{Limits, check_upgrade, offers_protocol};
use hyper_util::rt::TokioIo;

use crate::api::ApiError;
use crate::client_ip;
use crate::close;
use crate::config::AuthMode;
use crate::connection::{Connection, HookSession, PendingAuth};
use crate::metrics::Metrics;
use crate::outbox::Mode;
use crate::protocol::SUBPROTOCOL;
use crate::server::{AppState, DirectSocket, PeerAddr};
use herald_core::GroupName;
use tokio::time::Instant;

/// Handles every request no other route took: WebSocket upgrades on configured routes
/// (and, with `Accept: text/event-stream`, SSE streams: `sse.rs`), 404 for everything
/// else.
pub(crate) async fn gateway(State(state): State<Arc<AppState>>, mut req: Request) -> Response {
    let path = req.uri().path().to_string();
    let found = state
        .routes
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.matches(&path).map(|m| (i, m)));
    let Some((route_index, matched)) = found else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no route matches this path",
        )
        .into_response();
    };
    if req.method() != Method::GET {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "WebSocket and SSE routes accept GET only",
        )
        .into_response();
    }
    let groups = match matched.route.groups_for(&matched.values) {
        Ok(groups) => groups,
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_group",
                format!("this path yields an invalid group name: {e}"),
            )
            .into_response();
        }
    };
    if crate::sse::wants_event_stream(req.headers()) {
        return crate::sse::open(state.clone(), req, path, route_index, matched, groups).await;
    }
    if req.version() != axum::http::Version::HTTP_11 {
        // RFC 6455 §4.1: the opening handshake is HTTP/1.1. An HTTP/1.0 client (or proxy)
        // could not keep the connection open after a 101.
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_upgrade",
            "WebSocket upgrades need HTTP/1.1",
        )
        .closing()
        .into_response();
    }
    let accept = match check_upgrade(req.headers()) {
        Ok(accept) => accept,
        Err(e) => {
            let mut response =
                ApiError::new(e.status(), "bad_upgrade", e.message()).into_response();
            if e.status() == StatusCode::UPGRADE_REQUIRED {
                response
                    .headers_mut()
                    .insert("sec-websocket-version", HeaderValue::from_static("13"));
            }
            return response;
        }
    };
    let mode = if offers_protocol(req.headers(), SUBPROTOCOL) {
        Mode::V1
    } else {
        Mode::Plain
    };
    let client = req.extensions().get::<PeerAddr>().map(|peer| {
        client_ip::resolve(
            peer.0.ip(),
            req.headers(),
            &state.config.limits.trusted_proxies,
        )
    });
    let url_token = req.uri().query().and_then(query_token);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let limits = Limits {
        max_frame: state.config.limits.max_message_bytes,
        max_message: state.config.limits.max_message_bytes,
    };

    // Refusals after route matching accept the upgrade and then close with a code: a
    // browser shows an HTTP error as a bare 1006 and would retry forever. A refused
    // connection keeps its slot until its close handshake ends, so refusals count
    // against the limits too.
    let (slot, verdict) = admit(
        &state,
        Admit {
            headers: req.headers(),
            path: &path,
            route_index,
            matched: &matched,
            groups,
            client,
            // herald.v1 authorizes after the hello, which may carry the token.
            token: (mode == Mode::Plain).then_some(url_token.as_deref()),
            transport: Transport::WebSocket,
        },
    )
    .await;
    let task = match verdict {
        Verdict::Refuse(code, reason) => Upgrade::Refuse(code, reason),
        Verdict::Admit(admitted) => {
            let auth = matched.route.auth;
            let mut connection = Connection::new(state.clone(), admitted.groups, mode);
            tracing::debug!(conn_id = connection.id, client = ?client, route = matched.route.pattern(), ?mode, "websocket accepted");
            connection.expires = admitted.expires;
            connection.hook = admitted.hook;
            connection.sub = admitted.sub;
            connection.watches = matched.route.presence && mode == Mode::V1;
            if mode == Mode::Plain {
                connection.direct = req.extensions().get::<DirectSocket>().map(|s| s.0.clone());
                // Join before answering 101: once the client sees the upgrade, every
                // message published to its groups reaches it.
                connection.join().await;
            } else if auth == AuthMode::Token {
                connection.pending_auth = Some(Box::new(PendingAuth {
                    url_token,
                    route: route_index,
                    values: matched.values,
                }));
            }
            Upgrade::Serve(connection)
        }
    };
    let tracker = state.tracker.clone();
    let connection_task = async move {
        // Held for the connection's whole life, so the limit counts it from now on.
        let _slot = slot;
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                match task {
                    Upgrade::Serve(connection) => connection.serve(io).await,
                    Upgrade::Refuse(code, reason) => {
                        Connection::refuse(io, code, reason, limits).await
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                if let Upgrade::Serve(connection) = task {
                    connection.abandon().await;
                }
            }
        }
    };
    tracker.spawn(connection_task);
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    if mode == Mode::V1 {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    response
}

/// Which transport a connection uses, for the limits' per-transport gauges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A WebSocket (plain or `herald.v1`).
    WebSocket,
    /// A Server-Sent Events stream (`sse.rs`).
    Sse,
}

/// What [`admit`] looks at.
pub(crate) struct Admit<'a> {
    pub(crate) headers: &'a axum::http::HeaderMap,
    pub(crate) path: &'a str,
    pub(crate) route_index: usize,
    pub(crate) matched: &'a crate::route::RouteMatch<'a>,
    /// The route's groups (the hook may replace them).
    pub(crate) groups: Vec<GroupName>,
    pub(crate) client: Option<IpAddr>,
    /// `Some(token)`: check this token now (token routes); `None`: the caller checks it
    /// later (a `herald.v1` hello may carry it).
    pub(crate) token: Option<Option<&'a str>>,
    pub(crate) transport: Transport,
}

/// An admitted connection's groups and session.
pub(crate) struct Admitted {
    pub(crate) groups: Vec<GroupName>,
    /// When its token stops being valid, if a token was checked.
    pub(crate) expires: Option<Instant>,
    /// Its connect hook session, on `auth = "hook"` routes.
    pub(crate) hook: Option<Box<HookSession>>,
    /// The user it speaks for (the token's `sub` or the hook answer's), for presence.
    pub(crate) sub: Option<Arc<str>>,
}

/// [`admit`]'s answer.
pub(crate) enum Verdict {
    /// Refused: a close code (DESIGN.md §5) and a short reason.
    Refuse(u16, &'static str),
    Admit(Admitted),
}

/// The admission every transport goes through, in order: limits (cheapest), origin, the
/// connect hook, the token. Returns the connection's slot (held even by a refused
/// WebSocket until its close handshake ends) and the verdict; refusals are counted and
/// logged here.
pub(crate) async fn admit(
    state: &Arc<AppState>,
    ask: Admit<'_>,
) -> (Result<ConnectionSlot, &'static str>, Verdict) {
    let Admit {
        headers,
        path,
        route_index,
        matched,
        mut groups,
        client,
        token,
        transport,
    } = ask;
    let origin_allowed = matched
        .route
        .allows_origin(headers.get(header::ORIGIN).map(|v| v.as_bytes()));
    let slot = ConnectionSlot::take(state, client, route_index, transport);
    // The connect hook is asked last (after limits and origin): the request runs in this
    // connection's own task, under the hook's total deadline.
    let mut admission = None;
    let hook_refusal = match (&state.hook, matched.route.auth) {
        (Some(hook), AuthMode::Hook) if slot.is_ok() && origin_allowed => {
            let ask = hook.ask(
                path,
                matched.route,
                &matched.values,
                &groups,
                headers,
                client,
            );
            let max_groups = state.config.limits.max_groups_per_connection;
            match hook.admit(ask, matched.route, &groups, max_groups).await {
                Ok(admitted) => {
                    groups = admitted.groups.clone();
                    admission = Some(admitted);
                    None
                }
                Err(refusal) => Some(refusal),
            }
        }
        // Validation demands `[hook] url` for hook routes; refuse rather than fail open.
        (None, AuthMode::Hook) => Some(crate::hook::HookRefusal {
            code: close::TRY_AGAIN_LATER,
            reason: "connect hook not configured",
        }),
        _ => None,
    };
    let verdict = match (&slot, hook_refusal) {
        (Err(reason), _) => {
            Metrics::add(&state.metrics.connections_rejected, 1);
            tracing::debug!(client = ?client, reason, ?transport, "connection refused");
            Verdict::Refuse(close::TRY_AGAIN_LATER, reason)
        }
        (Ok(_), _) if !origin_allowed => {
            Metrics::add(&state.metrics.auth_refusals, 1);
            tracing::debug!(client = ?client, route = matched.route.pattern(), ?transport, "origin refused");
            Verdict::Refuse(close::FORBIDDEN, "origin not allowed")
        }
        (Ok(_), Some(refusal)) => {
            if refusal.code == close::TRY_AGAIN_LATER {
                Metrics::add(&state.metrics.connections_rejected, 1);
            } else {
                Metrics::add(&state.metrics.auth_refusals, 1);
            }
            tracing::debug!(client = ?client, route = matched.route.pattern(), code = refusal.code, reason = refusal.reason, ?transport, "connection refused by the connect hook");
            Verdict::Refuse(refusal.code, refusal.reason)
        }
        (Ok(_), None) => {
            let checked = match (matched.route.auth, token) {
                // Check the token now, before joining, so a refused connection never
                // joins anything.
                (AuthMode::Token, Some(token)) => state
                    .auth
                    .authorize(token, matched.route, &matched.values, &groups)
                    .map(|grant| Some((grant.deadline(), grant.sub))),
                _ => Ok(None),
            };
            match checked {
                Err(refusal) => {
                    Metrics::add(&state.metrics.auth_refusals, 1);
                    tracing::debug!(client = ?client, route = matched.route.pattern(), code = refusal.close_code(), %refusal, ?transport, "connection refused");
                    Verdict::Refuse(refusal.close_code(), refusal.reason())
                }
                Ok(granted) => Verdict::Admit(Admitted {
                    groups,
                    expires: granted.as_ref().map(|(expires, _)| *expires),
                    sub: match (&granted, &admission) {
                        (Some((_, sub)), _) => Some(Arc::from(sub.as_str())),
                        (None, Some(admitted)) => admitted.sub.as_deref().map(Arc::from),
                        (None, None) => None,
                    },
                    hook: admission.map(|admitted| {
                        tracing::debug!(sub = ?admitted.sub, ?transport, "admitted by the connect hook");
                        Box::new(HookSession {
                            ask: admitted.ask,
                            route: route_index,
                            refresh_at: admitted.refresh_at,
                            sub: admitted.sub,
                        })
                    }),
                }),
            }
        }
    };
    (slot, verdict)
}

/// One place under `limits.max_connections` and `limits.max_connections_per_ip`,
/// released on drop.
pub(crate) struct ConnectionSlot {
    state: Arc<AppState>,
    /// The per-IP key counted, when the client address is known.
    ip: Option<IpAddr>,
    /// The route counted in `AppState::route_connections`.
    route: usize,
    transport: Transport,
}

impl ConnectionSlot {
    /// Takes a place, or says which limit is reached (the close reason).
    fn take(
        state: &Arc<AppState>,
        client: Option<IpAddr>,
        route: usize,
        transport: Transport,
    ) -> Result<Self, &'static str> {
        let max = state.config.limits.max_connections as i64;
        let before = state.metrics.connections.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            state.metrics.connections.fetch_sub(1, Ordering::AcqRel);
            return Err("connection limit reached");
        }
        let ip = client.map(client_ip::limit_key);
        if let Some(ip) = ip {
            let max_per_ip = state.config.limits.max_connections_per_ip;
            // A panic elsewhere cannot leave the map half-updated: every critical section
            // is one map operation, so a poisoned lock is still consistent.
            let mut per_ip = state
                .per_ip
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let count = per_ip.entry(ip).or_insert(0);
            if *count as usize >= max_per_ip {
                drop(per_ip);
                state.metrics.connections.fetch_sub(1, Ordering::AcqRel);
                return Err("connection limit per client address reached");
            }
            *count += 1;
        }
        Metrics::add(&state.metrics.connections_total, 1);
        if let Some(n) = state.route_connections(transport).get(route) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        if transport == Transport::Sse {
            state
                .metrics
                .sse_connections
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(Self {
            state: state.clone(),
            ip,
            route,
            transport,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(n) = self.state.route_connections(self.transport).get(self.route) {
            n.fetch_sub(1, Ordering::Relaxed);
        }
        if self.transport == Transport::Sse {
            self.state
                .metrics
                .sse_connections
                .fetch_sub(1, Ordering::Relaxed);
        }
        self.state
            .metrics
            .connections
            .fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut per_ip = self
                .state
                .per_ip
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    // Removed at zero: the map holds only addresses with open connections.
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// The `token` parameter of a query string, percent-decoded. JWTs need no encoding, but
/// a client may encode one anyway.
fn query_token(query: &str) -> Option<String> {
    query_param(query, "token")
}

/// The first `name` parameter of a query string, percent-decoded (`+` is kept as is).
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    let raw = query.split('&').find_map(|pair| {
        pair.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
    })?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = bytes
            .get(i + 1..i + 3)
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (b, escaped) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

enum Upgrade {
    Serve(Connection),
    Refuse(u16, &'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_from_the_query() {
        assert_eq!(
            query_param("a=1&last_event_id=g%3A1%3Ae%2Cb%3A2%3Ae", "last_event_id").as_deref(),
            Some("g:1:e,b:2:e")
        );
        assert_eq!(query_param("last_event_id_x=1", "last_event_id"), None);
    }

    #[test]
    fn token_from_the_query() {
        assert_eq!(query_token("token=a.b.c").as_deref(), Some("a.b.c"));
        assert_eq!(query_token("x=1&token=a%2Eb&y=2").as_deref(), Some("a.b"));
        assert_eq!(query_token("token=%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(query_token("token=%+1").as_deref(), Some("%+1"));
        assert_eq!(query_token("tokens=x"), None);
        assert_eq!(query_token(""), None);
    }
}
