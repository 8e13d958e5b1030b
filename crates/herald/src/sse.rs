//! Server-Sent Events (DESIGN.md §14): the same routes, answered as an event stream when a
//! `GET` asks for `Accept: text/event-stream` instead of a WebSocket upgrade.
//!
//! A stream goes through the gateway's admission (`ws::admit`: limits, origin, connect
//! hook, `?token=`), joins its groups, then resumes through [`Connection::resume`], the
//! same path as a `herald.v1` hello: subscribe first, read history after the client's
//! position, replay, then release the live frames that queued meanwhile, skipping what
//! the replay held. The live frames come from the same bounded outbox as a WebSocket's.
//!
//! # Events
//!
//! ```text
//! retry: 3000                      on connect: the browser's reconnect delay
//! id: user.42:17:Xy3abcde          on connect: the position to resume from (no event)
//!
//! event: resync                    the history did not cover Last-Event-ID
//! id: user.42:23:Xy3abcde
//! data: {"groups":["user.42"]}
//!
//! id: user.42:18:Xy3abcde          one event per message; several data: lines for a
//! data: line one                   multi-line payload, `event: binary` and base64 data
//! data: line two                   for a binary one
//!
//! :                                heartbeat comment, every heartbeat.interval when idle
//!
//! event: close                     before the server ends a stream: why (the WebSocket
//! data: {"code":1012,"reason":"server restart"}   close code), with a `retry:` spread
//! retry: 8234                      over shutdown.goaway_window on a graceful shutdown
//! ```
//!
//! # The id
//!
//! Every event's `id:` holds the stream position of **every** group of the connection,
//! so whatever event the browser saw last, its `Last-Event-ID` resumes all of them:
//! `group:offset:epoch` per group, joined by `,` (e.g. `user.42:18:Xy3abcde,room.7:4:Qw9`).
//! Group names are `[A-Za-z0-9._-]` and epochs the same alphabet, so the id needs no
//! escaping in a header and survives a query string (`?last_event_id=`, percent-decoded).
//! A `Last-Event-ID` that does not parse (too long, garbage, an offset over `u64`) is
//! treated as a first visit and logged once per burst; a parseable one the history does
//! not cover (trimmed, a future offset, another epoch) gets `event: resync`. Groups the
//! id does not name start from now.
//!
//! Live events are checked exactly like a `herald.v1` WebSocket's frames
//! (`connection::classify`): a gap, offsets going backwards or another epoch end the
//! stream with `event: close` and code 4400, and the browser's reconnect resumes from the
//! last id, getting the missing events replayed or `event: resync`.
//!
//! # Refusals
//!
//! SSE has no close codes: refusals are HTTP statuses with the JSON error body, mapped
//! from the WebSocket close codes (DESIGN.md §5): 1013 (limits, hook unavailable) → 503,
//! 4501 (missing or invalid token) → 401, 4003 (expired token) → 401, 4503 (origin,
//! token or hook forbids) → 403. A native `EventSource` does not retry after a non-200
//! answer; the herald client does, with its own backoff.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::{Epoch, GroupName, Position};
use hyper::body::Frame;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant, timeout};

use crate::api::ApiError;
use crate::client_ip;
use crate::close;
use crate::connection::{Connection, LiveFrame, next_tick, refresh_until_refused};
use crate::metrics::Metrics;
use crate::outbox::Mode;
use crate::protocol::encode_sse;
use crate::route::RouteMatch;
use crate::server::{AppState, PeerAddr};
use crate::ws::{self, Admit, ConnectionSlot, Transport, Verdict};

/// The longest `Last-Event-ID` parsed; a longer one is treated as a first visit.
pub const MAX_LAST_EVENT_ID: usize = 8 * 1024;
/// The reconnect delay announced on connect (`retry:`).
const RETRY_MS: u64 = 3_000;
/// Chunks waiting for hyper to take them: the outbox is the real bound, this only
/// decouples the task from the socket by one batch.
const BODY_CHUNKS: usize = 2;
/// Most frames gathered into one chunk.
const MAX_BATCH_FRAMES: usize = 1024;
/// Most bytes gathered into one chunk.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Whether a request asks for an event stream rather than a WebSocket.
pub(crate) fn wants_event_stream(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::UPGRADE) {
        return false;
    }
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// Answers an SSE request on a matched route: a refusal, or `200` and the stream.
pub(crate) async fn open(
    state: Arc<AppState>,
    req: Request,
    path: String,
    route_index: usize,
    matched: RouteMatch<'_>,
    groups: Vec<GroupName>,
) -> Response {
    let (req, _body) = req.into_parts();
    let client = req.extensions.get::<PeerAddr>().map(|peer| {
        client_ip::resolve(
            peer.0.ip(),
            &req.headers,
            &state.config.limits.trusted_proxies,
        )
    });
    let query = req.uri.query().unwrap_or("");
    let url_token = ws::query_param(query, "token");
    let last_event_id = match req.headers.get("last-event-id") {
        Some(value) => Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        None => ws::query_param(query, "last_event_id"),
    };
    let cors = cors_headers(&req, &matched);
    let (slot, verdict) = ws::admit(
        &state,
        Admit {
            headers: &req.headers,
            path: &path,
            route_index,
            matched: &matched,
            groups,
            client,
            token: Some(url_token.as_deref()),
            transport: Transport::Sse,
        },
    )
    .await;
    let (slot, admitted) = match (slot, verdict) {
        (Ok(slot), Verdict::Admit(admitted)) => (slot, admitted),
        (_, Verdict::Refuse(code, reason)) => return with_headers(refusal(code, reason), cors),
        // `admit` refuses whenever it found no slot.
        (Err(reason), Verdict::Admit(_)) => {
            return with_headers(refusal(close::TRY_AGAIN_LATER, reason), cors);
        }
    };
    // A stream is a connection now, counted under the connection limits: its HTTP
    // connection no longer takes a place meant for short requests.
    if let Some(http_slot) = req.extensions.get::<crate::http_limits::SlotRelease>() {
        http_slot.release();
    }
    let mut connection = Connection::new(state.clone(), admitted.groups, Mode::Sse);
    connection.expires = admitted.expires;
    connection.hook = admitted.hook;
    connection.sub = admitted.sub;
    tracing::debug!(conn_id = connection.id, client = ?client, route = matched.route.pattern(), "sse stream accepted");
    connection.join().await;
    let since = match last_event_id.as_deref().map(parse_id) {
        None => None,
        Some(Ok(positions)) => Some(positions),
        Some(Err(why)) => {
            if let Some(n) = state.last_event_id_log.hit() {
                tracing::info!(
                    conn_id = connection.id,
                    why,
                    events = n,
                    "unusable Last-Event-ID: treated as a first visit"
                );
            }
            None
        }
    };
    let lookup = |group: &GroupName| {
        since
            .as_ref()
            .and_then(|s| s.iter().rev().find(|(g, _)| g == group.as_str()))
            .map(|(_, p)| p)
    };
    let resumed = match connection.resume(lookup).await {
        Ok(resumed) => resumed,
        Err(()) => {
            connection.leave().await;
            return with_headers(
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "history_unavailable",
                    "the layer could not read history; try again",
                )
                .into_response(),
                cors,
            );
        }
    };
    // Positions as the client knows them, moved forward by each replayed event.
    let mut positions: Vec<u64> = Vec::with_capacity(connection.groups.len());
    let mut epochs: Vec<Epoch> = Vec::with_capacity(connection.groups.len());
    let mut lost = Vec::new();
    for (group, (current, recovered)) in connection.groups.iter().zip(&resumed.currents) {
        let asked = lookup(group);
        match asked {
            Some(p) if *recovered => positions.push(p.offset),
            Some(_) => {
                lost.push(group.as_str());
                positions.push(current.offset);
            }
            None => positions.push(current.offset),
        }
        epochs.push(current.epoch.clone());
    }
    let mut first = Vec::with_capacity(256);
    let _ = writeln!(first, "retry: {RETRY_MS}");
    if lost.is_empty() {
        put_id(&mut first, &connection.groups, &positions, &epochs);
        first.push(b'\n');
    } else {
        first.extend_from_slice(b"event: resync\n");
        put_id(&mut first, &connection.groups, &positions, &epochs);
        let data = serde_json::json!({ "groups": lost }).to_string();
        let _ = write!(first, "data: {data}\n\n");
    }
    for message in &resumed.replay {
        if let Some(slot) = connection.groups.iter().position(|g| *g == message.group) {
            if let Some(p) = positions.get_mut(slot) {
                *p = message.offset;
            }
            put_id(&mut first, &connection.groups, &positions, &epochs);
            first.extend_from_slice(&encode_sse(message));
            first.push(b'\n');
        }
    }
    // Live frames resume after the current positions (`resume` set them).
    let (tx, rx) = mpsc::channel(BODY_CHUNKS);
    let stream = Stream {
        connection,
        tx,
        positions,
        epochs,
    };
    state.tracker.spawn(stream.run(Bytes::from(first), slot));
    let mut response = Response::new(Body::new(EventBody { rx }));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx buffers responses by default; an event stream must not be.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    with_headers(response, cors)
}

/// The HTTP answer for a refusal (see the module docs for the mapping).
fn refusal(code: u16, reason: &'static str) -> Response {
    let (status, error) = match code {
        close::TRY_AGAIN_LATER => (StatusCode::SERVICE_UNAVAILABLE, "try_again_later"),
        close::UNAUTHORIZED => (StatusCode::UNAUTHORIZED, "unauthorized"),
        close::TOKEN_EXPIRED => (StatusCode::UNAUTHORIZED, "token_expired"),
        _ => (StatusCode::FORBIDDEN, "forbidden"),
    };
    let mut response = ApiError::new(status, error, reason).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

/// CORS for `new EventSource(url, {withCredentials: true})` from another origin: the
/// allowed `Origin` echoed, with credentials. Only when the route lists its `origins`
/// and this one is among them; a route open to every origin answers without CORS
/// headers (a credentialed cross-origin stream must be allowed explicitly).
fn cors_headers(req: &Parts, matched: &RouteMatch<'_>) -> Option<HeaderValue> {
    let origin = req.headers.get(header::ORIGIN)?;
    if matched.route.origins().is_empty() || !matched.route.allows_origin(Some(origin.as_bytes())) {
        return None;
    }
    Some(origin.clone())
}

fn with_headers(mut response: Response, cors: Option<HeaderValue>) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = cors {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    response
}

/// Appends `id: <positions>\n` (see the module docs).
fn put_id(out: &mut Vec<u8>, groups: &[GroupName], positions: &[u64], epochs: &[Epoch]) {
    out.extend_from_slice(b"id: ");
    for (i, ((group, offset), epoch)) in groups.iter().zip(positions).zip(epochs).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(out, "{group}:{offset}:{epoch}");
    }
    out.push(b'\n');
}

/// Parses a `Last-Event-ID` into (group, position) pairs, or says why it cannot.
pub fn parse_id(id: &str) -> Result<Vec<(String, Position)>, &'static str> {
    if id.len() > MAX_LAST_EVENT_ID {
        return Err("too long");
    }
    let id = id.trim();
    if id.is_empty() {
        return Err("empty");
    }
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    id.split(',')
        .map(|entry| {
            let mut parts = entry.splitn(3, ':');
            let (Some(group), Some(offset), Some(epoch)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err("an entry is not group:offset:epoch");
            };
            if !valid(group) || !valid(epoch) {
                return Err("a group or epoch has characters outside [A-Za-z0-9._-]");
            }
            if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
                return Err("an offset is not a number");
            }
            let offset: u64 = offset.parse().map_err(|_| "an offset is over u64")?;
            Ok((
                group.to_string(),
                Position {
                    offset,
                    epoch: Epoch::new(epoch),
                },
            ))
        })
        .collect()
}

/// The response body: chunks from the stream's task. Dropped by hyper when the client
/// goes away, which the task notices (`Sender::closed`).
struct EventBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// One open event stream: its connection (groups, outbox) and where its client is.
struct Stream {
    connection: Connection,
    tx: mpsc::Sender<Bytes>,
    /// Per group: the last offset the client was sent (mirrors `connection.sent`).
    positions: Vec<u64>,
    /// Per group: the epoch of those offsets, written into every id.
    epochs: Vec<Epoch>,
}

/// Why a stream ends.
enum End {
    /// Tell the client why (an `event: close` with this code), then end the body.
    Close(u16, &'static str),
    /// The client is gone or stuck: just end.
    Drop,
}

impl Stream {
    /// Runs the stream until it ends; `slot` holds its place under the limits meanwhile.
    async fn run(mut self, first: Bytes, slot: ConnectionSlot) {
        let _slot = slot;
        let end = self.serve(first).await;
        let state = self.connection.state.clone();
        self.connection.leave().await;
        let pending = self.connection.rx.len() as u64;
        Metrics::add(&state.metrics.frames_dropped, pending);
        self.connection.rx.close();
        if let End::Close(code, reason) = end {
            let mut last =
                format!("event: close\ndata: {{\"code\":{code},\"reason\":\"{reason}\"}}\n\n");
            if code == close::RESTART {
                // The SSE goaway: spread the reconnects over the window.
                let window = state.config.shutdown.goaway_window.as_millis() as u64;
                let _ = write!(last, "retry: {}\n\n", fastrand::u64(0..=window));
            }
            // Best effort, never blocking: a client that is not reading misses it.
            let _ = self.tx.try_send(Bytes::from(last));
        }
        tracing::debug!(conn_id = self.connection.id, "sse stream ended");
    }

    fn stall_timeout(&self) -> Duration {
        let hb = &self.connection.state.config.heartbeat;
        hb.interval + hb.timeout
    }

    async fn serve(&mut self, first: Bytes) -> End {
        let state = self.connection.state.clone();
        let shared = self.connection.outbox.shared().clone();
        let kicked = shared.kicked();
        tokio::pin!(kicked);
        let stall = self.stall_timeout();
        if let Err(end) = send(&self.tx, first, stall, kicked.as_mut()).await {
            return end;
        }
        let hb = state.config.heartbeat;
        let tick = next_tick(state.ticker.clone());
        tokio::pin!(tick);
        let mut ticking = true;
        let mut last_out = Instant::now();
        let mut expiry = self
            .connection
            .expires
            .map(|at| Box::pin(tokio::time::sleep_until(at)));
        let mut refresh = self.connection.hook.take().map(|session| {
            Box::pin(refresh_until_refused(
                state.clone(),
                *session,
                self.connection.groups.clone(),
            ))
        });
        let shutdown = state.shutdown.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let tx = self.tx.clone();
        let gone = tx.closed();
        tokio::pin!(gone);
        loop {
            if shared.close_code().is_some() {
                return End::Drop;
            }
            tokio::select! {
                biased;
                _ = async { if let Some(sleep) = expiry.as_mut() { sleep.await } }, if expiry.is_some() => {
                    Metrics::add(&state.metrics.tokens_expired, 1);
                    return End::Close(close::TOKEN_EXPIRED, "token expired");
                }
                reason = async { match refresh.as_mut() { Some(f) => f.await, None => std::future::pending().await } }, if refresh.is_some() => {
                    tracing::debug!(conn_id = self.connection.id, reason, "connect hook refused on refresh");
                    return End::Close(close::TOKEN_EXPIRED, reason);
                }
                _ = &mut cancelled => return End::Close(close::RESTART, "server restart"),
                _ = &mut kicked => return End::Drop,
                _ = &mut gone => return End::Drop,
                first = self.connection.rx.recv() => {
                    let Some(first) = first else { return End::Drop };
                    let mut chunk = Vec::new();
                    let (mut taken, mut taken_bytes, mut frames) = (0, 0, 0);
                    let mut next = Some(first);
                    while let Some(frame) = next {
                        taken += 1;
                        taken_bytes += frame.frame.len();
                        let slot = frame.slot as usize;
                        // The same exact check as a `herald.v1` WebSocket (`classify`).
                        match self.connection.check_live(slot, frame.offset, frame.epoch) {
                            LiveFrame::Send => {}
                            LiveFrame::Replayed => { next = self.connection.rx.try_recv().ok(); continue; }
                            reset => {
                                self.connection.rx.release(taken, taken_bytes);
                                return End::Close(close::STREAM_RESET, reset.reason());
                            }
                        }
                        if let Some(p) = self.positions.get_mut(slot) {
                            *p = frame.offset;
                        }
                        put_id(&mut chunk, &self.connection.groups, &self.positions, &self.epochs);
                        chunk.extend_from_slice(&frame.frame);
                        chunk.push(b'\n');
                        frames += 1;
                        next = if frames < MAX_BATCH_FRAMES && chunk.len() < MAX_BATCH_BYTES {
                            self.connection.rx.try_recv().ok()
                        } else {
                            None
                        };
                    }
                    self.connection.rx.release(taken, taken_bytes);
                    if chunk.is_empty() {
                        continue;
                    }
                    if let Err(end) = send(&self.tx, Bytes::from(chunk), stall, kicked.as_mut()).await {
                        return end;
                    }
                    last_out = Instant::now();
                }
                ticked = &mut tick, if ticking => {
                    let Some(receiver) = ticked else {
                        ticking = false;
                        continue;
                    };
                    tick.set(next_tick(receiver));
                    state.metrics.outbox_depth.0.observe(shared.queued() as f64);
                    // Ticks come every half interval: a comment about once per interval.
                    let now = Instant::now();
                    if now.saturating_duration_since(last_out) >= hb.interval - hb.interval / 4 {
                        if let Err(end) = send(&self.tx, Bytes::from_static(b":\n\n"), stall, kicked.as_mut()).await {
                            return end;
                        }
                        last_out = now;
                    }
                }
            }
        }
    }
}

/// Sends one chunk to the body; `Err` when the client went away or read nothing for
/// `stall`, or the hub kicked the stream (outbox overflow) meanwhile.
async fn send(
    tx: &mpsc::Sender<Bytes>,
    chunk: Bytes,
    stall: Duration,
    kicked: Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<(), End> {
    tokio::select! {
        sent = timeout(stall, tx.send(chunk)) => match sent {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Drop),
        },
        () = kicked => Err(End::Drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let groups = vec![
            GroupName::new("user.42").unwrap(),
            GroupName::new("room_7-x").unwrap(),
        ];
        let mut out = Vec::new();
        put_id(
            &mut out,
            &groups,
            &[18, 0],
            &[Epoch::new("Xy3"), Epoch::new("Qw")],
        );
        assert_eq!(out, b"id: user.42:18:Xy3,room_7-x:0:Qw\n");
        let parsed = parse_id("user.42:18:Xy3,room_7-x:0:Qw").unwrap();
        assert_eq!(parsed[0].0, "user.42");
        assert_eq!(parsed[0].1.offset, 18);
        assert_eq!(parsed[1].1.epoch.as_str(), "Qw");
    }

    #[test]
    fn bad_ids_are_refused() {
        for bad in [
            "",
            "garbage",
            "g:1",
            "g:x:e",
            "g:-1:e",
            "g:99999999999999999999999:e",
            "g:1:e\u{0}",
            "g:1:e:f",
            "g h:1:e",
            "g:1:e,",
        ] {
            assert!(parse_id(bad).is_err(), "{bad:?}");
        }
        assert!(parse_id(&"g:1:e,".repeat(MAX_LAST_EVENT_ID)).is_err());
    }

    #[test]
    fn event_stream_requests() {
        let mut h = HeaderMap::new();
        assert!(!wants_event_stream(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html, text/event-stream;q=0.9"),
        );
        assert!(wants_event_stream(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!wants_event_stream(&h));
    }
}
