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

/// Handles every request no other route took: WebSocket upgrades on configured routes,
/// 404 for everything else.
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
            "WebSocket routes accept GET upgrades only",
        )
        .into_response();
    }
    let mut groups = match matched.route.groups_for(&matched.values) {
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
    let origin_allowed = matched
        .route
        .allows_origin(req.headers().get(header::ORIGIN).map(|v| v.as_bytes()));
    let url_token = req.uri().query().and_then(query_token);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let limits = Limits {
        max_frame: state.config.limits.max_message_bytes,
        max_message: state.config.limits.max_message_bytes,
    };

    // Refusals after route matching accept the upgrade and then close with a code: a
    // browser shows an HTTP error as a bare 1006 and would retry forever. Limits come
    // first (cheapest), then the origin, then the token; a refused connection keeps its
    // slot until its close handshake ends, so refusals count against the limits too.
    let slot = ConnectionSlot::take(&state, client, route_index);
    // The connect hook is asked last (after limits and origin), before the 101: the
    // request runs in this connection's own task, under the hook's total deadline.
    let mut admission = None;
    let hook_refusal = match (&state.hook, matched.route.auth) {
        (Some(hook), AuthMode::Hook) if slot.is_ok() && origin_allowed => {
            let ask = hook.ask(
                &path,
                matched.route,
                &matched.values,
                &groups,
                req.headers(),
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
    let task = match (&slot, hook_refusal) {
        (Err(reason), _) => {
            Metrics::add(&state.metrics.connections_rejected, 1);
            tracing::debug!(client = ?client, reason, "connection refused");
            Upgrade::Refuse(close::TRY_AGAIN_LATER, reason)
        }
        (Ok(_), _) if !origin_allowed => {
            Metrics::add(&state.metrics.auth_refusals, 1);
            tracing::debug!(client = ?client, route = matched.route.pattern(), "origin refused");
            Upgrade::Refuse(close::FORBIDDEN, "origin not allowed")
        }
        (Ok(_), Some(refusal)) => {
            if refusal.code == close::TRY_AGAIN_LATER {
                Metrics::add(&state.metrics.connections_rejected, 1);
            } else {
                Metrics::add(&state.metrics.auth_refusals, 1);
            }
            tracing::debug!(client = ?client, route = matched.route.pattern(), code = refusal.code, reason = refusal.reason, "connection refused by the connect hook");
            Upgrade::Refuse(refusal.code, refusal.reason)
        }
        (Ok(_), None) => {
            let refusal = match (matched.route.auth, mode) {
                (AuthMode::Token, Mode::Plain) => {
                    // Plain clients can only bring a token in the URL: check it now, before
                    // joining, so a refused connection never joins anything.
                    match state.auth.authorize(
                        url_token.as_deref(),
                        matched.route,
                        &matched.values,
                        &groups,
                    ) {
                        Ok(grant) => Ok(Some((grant.deadline(), grant.sub))),
                        Err(refusal) => Err(refusal),
                    }
                }
                _ => Ok(None),
            };
            match refusal {
                Err(refusal) => {
                    Metrics::add(&state.metrics.auth_refusals, 1);
                    tracing::debug!(client = ?client, route = matched.route.pattern(), code = refusal.close_code(), %refusal, "connection refused");
                    Upgrade::Refuse(refusal.close_code(), refusal.reason())
                }
                Ok(granted) => {
                    let auth = matched.route.auth;
                    let mut connection = Connection::new(state.clone(), groups, mode);
                    connection.watches = matched.route.presence && mode == Mode::V1;
                    tracing::debug!(conn_id = connection.id, client = ?client, route = matched.route.pattern(), ?mode, "websocket accepted");
                    if let Some((expires, sub)) = granted {
                        connection.expires = Some(expires);
                        connection.sub = Some(Arc::from(sub));
                    }
                    if let Some(admitted) = admission {
                        tracing::debug!(conn_id = connection.id, sub = ?admitted.sub, "admitted by the connect hook");
                        connection.sub = admitted.sub.as_deref().map(Arc::from);
                        connection.hook = Some(Box::new(HookSession {
                            ask: admitted.ask,
                            route: route_index,
                            refresh_at: admitted.refresh_at,
                            sub: admitted.sub,
                        }));
                    }
                    if mode == Mode::Plain {
                        connection.direct =
                            req.extensions().get::<DirectSocket>().map(|s| s.0.clone());
                        // Join before answering 101: once the client sees the upgrade, every
                        // message published to its groups reaches it.
                        connection.join().await;
                    } else if auth == AuthMode::Token {
                        // herald.v1 authorizes after the hello, which may carry the token.
                        connection.pending_auth = Some(Box::new(PendingAuth {
                            url_token,
                            route: route_index,
                            values: matched.values,
                        }));
                    }
                    Upgrade::Serve(connection)
                }
            }
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

/// One place under `limits.max_connections` and `limits.max_connections_per_ip`,
/// released on drop.
struct ConnectionSlot {
    state: Arc<AppState>,
    /// The per-IP key counted, when the client address is known.
    ip: Option<IpAddr>,
    /// The route counted in `AppState::route_connections`.
    route: usize,
}

impl ConnectionSlot {
    /// Takes a place, or says which limit is reached (the close reason).
    fn take(
        state: &Arc<AppState>,
        client: Option<IpAddr>,
        route: usize,
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
        if let Some(n) = state.route_connections.get(route) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Self {
            state: state.clone(),
            ip,
            route,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(n) = self.state.route_connections.get(self.route) {
            n.fetch_sub(1, Ordering::Relaxed);
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
    let raw = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))?;
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
    fn token_from_the_query() {
        assert_eq!(query_token("token=a.b.c").as_deref(), Some("a.b.c"));
        assert_eq!(query_token("x=1&token=a%2Eb&y=2").as_deref(), Some("a.b"));
        assert_eq!(query_token("token=%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(query_token("token=%+1").as_deref(), Some("%+1"));
        assert_eq!(query_token("tokens=x"), None);
        assert_eq!(query_token(""), None);
    }
}
