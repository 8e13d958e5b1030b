//! The gateway: matches a WebSocket upgrade request to a route, checks it, joins the
//! connection to its groups and hands the upgraded socket to its connection task.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_ws::{Limits, check_upgrade, offers_protocol};
use hyper_util::rt::TokioIo;

use crate::api::ApiError;
use crate::close;
use crate::connection::Connection;
use crate::hub::Mode;
use crate::metrics::Metrics;
use crate::protocol::SUBPROTOCOL;
use crate::route;
use crate::server::AppState;

/// Handles every request no other route took: WebSocket upgrades on configured routes,
/// 404 for everything else.
pub(crate) async fn gateway(State(state): State<Arc<AppState>>, mut req: Request) -> Response {
    let path = req.uri().path().to_string();
    let Some(matched) = route::find(&state.routes, &path) else {
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
    let on_upgrade = hyper::upgrade::on(&mut req);
    let limits = Limits {
        max_frame: state.config.limits.max_message_bytes,
        max_message: state.config.limits.max_message_bytes,
    };

    // Refusals after route matching accept the upgrade and then close with a code: a
    // browser shows an HTTP error as a bare 1006 and would retry forever.
    let slot = ConnectionSlot::take(&state);
    let task = if slot.is_none() {
        Metrics::add(&state.metrics.connections_rejected, 1);
        Upgrade::Refuse(close::TRY_AGAIN_LATER, "connection limit reached")
    } else {
        let mut connection = Connection::new(state.clone(), groups, mode);
        if mode == Mode::Plain {
            // Join before answering 101: once the client sees the upgrade, every message
            // published to its groups reaches it.
            connection.join().await;
        }
        Upgrade::Serve(connection)
    };
    let tracker = state.tracker.clone();
    tracker.spawn(async move {
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
    });
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

/// One place under `limits.max_connections`, released on drop.
struct ConnectionSlot(Arc<AppState>);

impl ConnectionSlot {
    fn take(state: &Arc<AppState>) -> Option<Self> {
        let max = state.config.limits.max_connections as i64;
        let before = state.metrics.connections.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            state.metrics.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Metrics::add(&state.metrics.connections_total, 1);
        Some(Self(state.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.metrics.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Upgrade {
    Serve(Connection),
    Refuse(u16, &'static str),
}
