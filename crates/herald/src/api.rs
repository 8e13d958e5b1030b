//! The HTTP API: `POST /api/publish`, `/healthz`, `/readyz`, `/metrics`, and `ApiError`,
//! the JSON error body every failure answers with.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use herald_core::{GroupName, KeyedItem, Layer, Payload, Position};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::time::Duration;
use tracing::Instrument;

use crate::metrics::{self, Family, Metrics};
use crate::server::AppState;

/// An API failure: status plus `{"error": code, "message": text}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Answer with `Connection: close` (the request was not read to its end).
    close: bool,
}

impl ApiError {
    /// An error with a machine-readable `code` and a human `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            close: false,
        }
    }

    /// The same answer, closing the connection after it.
    pub(crate) fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response();
        if self.close {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// `GET /healthz`: the process is alive.
pub(crate) async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: the layer is connected, so publishing works, and so is the Django bridge
/// when enabled (its Redis answers and memberships are written).
pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let django_ready = state.django.as_ref().is_none_or(|bridge| bridge.is_ready());
    if state.layer.is_ready() && django_ready && !state.shutdown.is_cancelled() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the layer (or the Django bridge's Redis) is not connected, or the server is draining",
        )
        .into_response()
    }
}

/// `GET /metrics`: Prometheus text.
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let django_published = state.django.as_ref().map_or(0, |b| b.stats().published);
    let mut families = state.metrics.families(django_published);
    families.extend(
        extra_metrics(&state)
            .into_iter()
            .map(|(name, help, v)| Family::single(name, help, metrics::value(v))),
    );
    families.extend(key_metrics(&state));
    families.extend(state.layer.shard_families());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(families, &state.metrics.histograms()),
    )
        .into_response()
}

/// Counters of the layer and of the Django bridge: (name, help, value).
fn extra_metrics(state: &AppState) -> Vec<(&'static str, &'static str, u64)> {
    let mut extra = state.layer.stats();
    if let Some(bridge) = &state.django {
        let s = bridge.stats();
        extra.extend([
            (
                "herald_django_received_total",
                "Messages taken from Django (channels_redis).",
                s.received,
            ),
            (
                "herald_django_published_total",
                "Django messages published into herald.",
                s.published,
            ),
            (
                "herald_django_dropped_no_payload_total",
                "Django messages with neither text nor bytes (not delivered).",
                s.dropped_no_payload,
            ),
            (
                "herald_django_decode_errors_total",
                "Django messages that could not be decoded.",
                s.decode_errors,
            ),
            (
                "herald_django_publish_failures_total",
                "Django messages herald's layer refused.",
                s.publish_failures,
            ),
            (
                "herald_django_sent_total",
                "Messages sent from herald to Django groups.",
                s.sent,
            ),
            (
                "herald_django_send_capacity_drops_total",
                "Sends to Django dropped at a full channel (capacity).",
                s.send_capacity_drops,
            ),
            (
                "herald_django_backlog",
                "Messages waiting in herald's channels_redis queue (gauge).",
                s.backlog,
            ),
            (
                "herald_django_backlog_capacity",
                "Capacity of that queue; near it channels_redis drops silently (gauge).",
                s.backlog_capacity,
            ),
            (
                "herald_django_dropped_oversized_total",
                "Django messages over limits.max_publish_bytes (dropped, not delivered).",
                s.dropped_oversized,
            ),
            (
                "herald_django_dropped_unrenderable_total",
                "Django messages payload = \"event\" cannot render as JSON (dropped).",
                s.dropped_unrenderable,
            ),
            (
                "herald_django_encrypt_failures_total",
                "Sends to Django not made: the OS random generator failed.",
                s.encrypt_failures,
            ),
            (
                "herald_django_membership_repairs_total",
                "Refreshes that found herald's channels group membership gone and re-added it.",
                s.membership_repairs,
            ),
            (
                "herald_django_membership_ttl_repairs_total",
                "Refreshes that found a group key's TTL cut short and re-armed it.",
                s.membership_ttl_repairs,
            ),
            (
                "herald_django_capacity_reached_total",
                "Times herald's queue reached django_capacity (Django drops silently while full).",
                s.capacity_reached,
            ),
            (
                "herald_django_queue_depth",
                "Messages in herald's channels_redis queue before the last pop (gauge).",
                s.queue_depth,
            ),
        ]);
    }
    extra
}

/// One publish request, or one element of a batch.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    group: Option<String>,
    groups: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    text: Option<String>,
    bytes: Option<String>,
    messages: Option<Vec<PublishBody>>,
    /// Also send the message into the Django Channels group (the Django bridge).
    #[serde(default)]
    django: bool,
    /// A retry with the same key (per group, within `publish.idempotency_window`)
    /// publishes nothing new and answers the first offset again (DESIGN.md §6).
    idempotency_key: Option<String>,
}

/// Keeps `"data": null` apart from a missing `data` (`Option<RawValue>` alone would read
/// `null` as absent, yet publishing the JSON `null` is legitimate).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// A validated single message: where it goes and what it carries.
struct Item {
    groups: Vec<GroupName>,
    payload: Payload,
    /// Whether the request named `groups` (answer with `results`) or one `group`.
    many: bool,
    /// Whether to send it to Django consumers too.
    django: bool,
    /// The idempotency key, validated.
    key: Option<Arc<str>>,
}

/// The longest idempotency key accepted, in bytes.
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// `POST /api/publish`.
pub(crate) async fn publish(
    State(state): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let key = authorize(&state, req.headers())?;
    if key.is_none() {
        check_browser_origin(&state, req.headers())?;
    }
    // Every log line of this request names the key that authorized it ("-": open API).
    let span = tracing::info_span!("publish", key = key.unwrap_or("-"));
    let answer = publish_authorized(state.clone(), req)
        .instrument(span)
        .await;
    state
        .metrics
        .publish_seconds
        .0
        .observe_duration(started.elapsed());
    answer
}

async fn publish_authorized(state: Arc<AppState>, req: Request) -> Result<Response, ApiError> {
    let limit = state.config.limits.max_publish_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {limit} bytes (limits.max_publish_bytes)"),
        )
    };
    if let Some(length) = req.headers().get(header::CONTENT_LENGTH) {
        let length = length.to_str().ok().and_then(|l| l.parse::<usize>().ok());
        if length.is_some_and(|l| l > limit) {
            return Err(too_large());
        }
    }
    let limits = &state.config.limits;
    let bytes = match read_body(
        req.into_body(),
        limit,
        limits.body_timeout,
        limits.body_min_rate,
    )
    .await
    {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => return Err(too_large()),
        Err(BodyError::Broken) => {
            return Err(ApiError::bad("bad_body", "could not read the request body"));
        }
        Err(BodyError::TooSlow) => {
            Metrics::add(&state.metrics.body_timeouts, 1);
            if let Some(n) = state.body_timeout_log.hit() {
                tracing::warn!(
                    requests = n,
                    "request bodies too slow (limits.body_timeout, limits.body_min_rate): answered 408 and closed"
                );
            }
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} (limits.body_timeout) or at {} bytes/s (limits.body_min_rate)",
                    humantime::format_duration(limits.body_timeout),
                    limits.body_min_rate
                ),
            )
            .closing());
        }
    };
    let body: PublishBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad(
            "malformed_json",
            format!("request body is not a valid publish request: {e}"),
        )
    })?;
    match body.messages {
        Some(messages) => {
            if body.group.is_some()
                || body.groups.is_some()
                || body.data.is_some()
                || body.text.is_some()
                || body.bytes.is_some()
                || body.idempotency_key.is_some()
            {
                return Err(ApiError::bad(
                    "invalid_request",
                    "a batch has only \"messages\"",
                ));
            }
            if messages.is_empty() {
                return Err(ApiError::bad("invalid_request", "\"messages\" is empty"));
            }
            if messages.len() > limits.max_batch {
                return Err(ApiError::bad(
                    "too_many_messages",
                    format!(
                        "a batch holds at most {} messages (limits.max_batch)",
                        limits.max_batch
                    ),
                ));
            }
            let items = messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| {
                    if m.messages.is_some() {
                        return Err(ApiError::bad(
                            "invalid_request",
                            format!("messages[{i}]: batches do not nest"),
                        ));
                    }
                    item(m, limits.max_publish_groups).map_err(|e| ApiError {
                        message: format!("messages[{i}]: {}", e.message),
                        ..e
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            check_django(&state, &items)?;
            let results = publish_items(&state, &items).await?;
            let mut answers: Vec<Value> = items
                .iter()
                .zip(results)
                .map(|(item, positions)| answer(item, &positions))
                .collect();
            for (item, answer) in items.iter().zip(answers.iter_mut()) {
                send_to_django(&state, item, answer).await?;
            }
            Ok(Json(json!({"results": answers})).into_response())
        }
        None => {
            let item = item(body, limits.max_publish_groups)?;
            check_django(&state, std::slice::from_ref(&item))?;
            let mut results = publish_items(&state, std::slice::from_ref(&item)).await?;
            let positions = results.pop().unwrap_or_default();
            if let (false, false, [(_, position)]) = (item.many, item.django, &positions[..]) {
                // The common answer, written as it is (no JSON tree per request).
                return Ok(position_answer(position));
            }
            let mut answer = answer(&item, &positions);
            send_to_django(&state, &item, &mut answer).await?;
            Ok(Json(answer).into_response())
        }
    }
}

/// Refuses `"django": true` when the bridge is off, before anything is published.
fn check_django(state: &AppState, items: &[Item]) -> Result<(), ApiError> {
    if state.django.is_none() && items.iter().any(|i| i.django) {
        return Err(ApiError::bad(
            "django_disabled",
            "\"django\": true needs the Django bridge ([django] enabled = true)",
        ));
    }
    Ok(())
}

/// Sends an item to the Django Channels groups of its groups (after herald published it),
/// adding `"django": {"members", "queued", "full"}` to its answer. `full` counts Django
/// processes whose queue was at capacity: channels_redis drops there, herald reports it.
async fn send_to_django(state: &AppState, item: &Item, answer: &mut Value) -> Result<(), ApiError> {
    let (true, Some(bridge)) = (item.django, &state.django) else {
        return Ok(());
    };
    let (mut members, mut queued, mut full) = (0, 0, 0);
    for group in &item.groups {
        match bridge.group_send(group, &item.payload).await {
            Ok(report) => {
                members += report.members;
                queued += report.queued;
                full += report.full;
            }
            Err(e) => {
                tracing::warn!(group = %group, error = %e, "send to django failed");
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "django_unavailable",
                    format!("published to herald, but sending to Django failed for {group}: {e}"),
                ));
            }
        }
    }
    if let Value::Object(map) = answer {
        map.insert(
            "django".into(),
            json!({"members": members, "queued": queued, "full": full}),
        );
    }
    Ok(())
}

/// Why a request body could not be read.
#[derive(Debug, PartialEq, Eq)]
enum BodyError {
    /// Longer than the limit.
    TooLarge,
    /// Not complete within the body timeout, or arriving below the minimum rate.
    TooSlow,
    /// The connection failed mid-body (or sent a malformed chunked encoding).
    Broken,
}

/// How long a body may trickle at any rate before the minimum rate applies.
const BODY_RATE_GRACE: Duration = Duration::from_secs(2);

/// Reads a whole request body of at most `limit` bytes. It must be complete within
/// `timeout`, and, after [`BODY_RATE_GRACE`], keep up an average of `min_rate` bytes per
/// second (0: no minimum): a client that announces a large body and sends it a byte at a
/// time is cut off in seconds, not left holding a descriptor.
async fn read_body(
    mut body: Body,
    limit: usize,
    timeout: Duration,
    min_rate: u64,
) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt;
    let start = tokio::time::Instant::now();
    let deadline = start + timeout;
    // The first chunk is kept as it is: a body that comes in one (most) is not copied.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    loop {
        let len = first.as_ref().map_or(buf.len(), Bytes::len);
        // The time by which `buf.len()` bytes were due at the minimum rate: the next
        // chunk must come before it (no minimum rate: only the deadline).
        let due = match (len as u64).saturating_mul(1000).checked_div(min_rate) {
            Some(earned) => deadline.min(start + BODY_RATE_GRACE + Duration::from_millis(earned)),
            None => deadline,
        };
        let frame = match tokio::time::timeout_at(due, body.frame()).await {
            Err(_) => return Err(BodyError::TooSlow),
            Ok(None) => return Ok(first.unwrap_or_else(|| buf.freeze())),
            Ok(Some(Err(_))) => return Err(BodyError::Broken),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if len.saturating_add(data.len()) > limit {
                return Err(BodyError::TooLarge);
            }
            if buf.is_empty() && first.is_none() {
                first = Some(data);
            } else {
                if let Some(first) = first.take() {
                    buf.extend_from_slice(&first);
                }
                buf.extend_from_slice(&data);
            }
        }
    }
}

/// `{"epoch": …, "offset": …}`, byte for byte what [`answer`] gives for one group
/// (keys sorted), without building a `Value`.
fn position_answer(position: &Position) -> Response {
    let epoch = position.epoch.as_str();
    let mut body = Vec::with_capacity(32 + epoch.len());
    body.extend_from_slice(b"{\"epoch\":");
    // Into a `Vec` a string and a number always serialize; the escaping is serde_json's.
    let written = serde_json::to_writer(&mut body, epoch).and_then(|()| {
        body.extend_from_slice(b",\"offset\":");
        serde_json::to_writer(&mut body, &position.offset)
    });
    if written.is_err() {
        return Json(json!({"offset": position.offset, "epoch": epoch})).into_response();
    }
    body.push(b'}');
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn answer(item: &Item, positions: &[(GroupName, Position)]) -> Value {
    if item.many {
        let results: Vec<Value> = positions
            .iter()
            .map(|(g, p)| json!({"group": g.as_str(), "offset": p.offset, "epoch": p.epoch.as_str()}))
            .collect();
        json!({"results": results})
    } else {
        match positions.first() {
            Some((_, p)) => json!({"offset": p.offset, "epoch": p.epoch.as_str()}),
            None => json!({}),
        }
    }
}

/// Publishes every (group, payload) pair of `items` in one layer batch, in order.
async fn publish_items(
    state: &AppState,
    items: &[Item],
) -> Result<Vec<Vec<(GroupName, Position)>>, ApiError> {
    if items.iter().any(|item| item.key.is_some()) {
        return publish_keyed(state, items).await;
    }
    let flat: Vec<(GroupName, Payload)> = items
        .iter()
        .flat_map(|item| {
            item.groups
                .iter()
                .map(|g| (g.clone(), item.payload.clone()))
        })
        .collect();
    let total = flat.len();
    match state.layer.publish_batch(flat).await {
        Ok(positions) => {
            Metrics::add(&state.metrics.messages_published, total as u64);
            let mut positions = positions.into_iter();
            Ok(items
                .iter()
                .map(|item| {
                    item.groups
                        .iter()
                        .filter_map(|g| positions.next().map(|p| (g.clone(), p)))
                        .collect()
                })
                .collect())
        }
        Err((published, e)) => {
            Metrics::add(&state.metrics.messages_published, published as u64);
            Metrics::add(&state.metrics.publish_failures, 1);
            tracing::warn!(error = %e, published, total, "publish failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "layer_unavailable",
                format!(
                    "the layer is unavailable ({e}); {published} of {total} messages were published"
                ),
            ))
        }
    }
}

/// Like [`publish_items`] for items with idempotency keys: a retried key answers the
/// first position and publishes nothing (counted in `herald_publish_duplicates_total`).
async fn publish_keyed(
    state: &AppState,
    items: &[Item],
) -> Result<Vec<Vec<(GroupName, Position)>>, ApiError> {
    let flat: Vec<KeyedItem> = items
        .iter()
        .flat_map(|item| {
            item.groups.iter().map(|g| KeyedItem {
                group: g.clone(),
                payload: item.payload.clone(),
                key: item.key.clone(),
            })
        })
        .collect();
    let total = flat.len();
    let window = state.config.publish.idempotency_window;
    match state.layer.publish_idempotent(flat, window).await {
        Ok(published) => {
            let duplicates = published.iter().filter(|p| p.duplicate).count() as u64;
            Metrics::add(&state.metrics.publish_duplicates, duplicates);
            Metrics::add(&state.metrics.messages_published, total as u64 - duplicates);
            let mut published = published.into_iter();
            Ok(items
                .iter()
                .map(|item| {
                    item.groups
                        .iter()
                        .filter_map(|g| published.next().map(|p| (g.clone(), p.position)))
                        .collect()
                })
                .collect())
        }
        Err((done, e)) => {
            Metrics::add(&state.metrics.publish_failures, 1);
            tracing::warn!(error = %e, published = done, total, "publish failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "layer_unavailable",
                format!(
                    "the layer is unavailable ({e}); {done} of {total} messages were published (retry with the same idempotency keys)"
                ),
            ))
        }
    }
}

fn item(body: PublishBody, max_groups: usize) -> Result<Item, ApiError> {
    let (names, many) = match (body.group, body.groups) {
        (Some(g), None) => (vec![g], false),
        (None, Some(gs)) => {
            if gs.is_empty() {
                return Err(ApiError::bad("invalid_request", "\"groups\" is empty"));
            }
            (gs, true)
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                "invalid_request",
                "give \"group\" or \"groups\", not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::bad(
                "invalid_request",
                "\"group\" or \"groups\" is required",
            ));
        }
    };
    if names.len() > max_groups {
        return Err(ApiError::bad(
            "too_many_groups",
            format!("at most {max_groups} groups per message (limits.max_publish_groups)"),
        ));
    }
    let mut groups: Vec<GroupName> = Vec::with_capacity(names.len());
    for name in &names {
        let group = GroupName::new(name)
            .map_err(|e| ApiError::bad("invalid_group", format!("group {name:?}: {e}")))?;
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    let payload = match (body.data, body.text, body.bytes) {
        (Some(data), None, None) => {
            // serde_json skips over `data` as a raw value without its recursion limit;
            // hold it to the same depth as the rest of the body.
            if json_depth(data.get()) > MAX_DATA_DEPTH {
                return Err(ApiError::bad(
                    "malformed_json",
                    format!("\"data\" is nested deeper than {MAX_DATA_DEPTH} levels"),
                ));
            }
            Payload::text(minify_json(data.get()))
        }
        (None, Some(text), None) => Payload::text(text),
        (None, None, Some(b64)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| {
                    ApiError::bad(
                        "invalid_base64",
                        format!("\"bytes\" is not valid base64: {e}"),
                    )
                })?;
            Payload::binary(bytes)
        }
        (None, None, None) => {
            return Err(ApiError::bad(
                "invalid_request",
                "one of \"data\", \"text\" or \"bytes\" is required",
            ));
        }
        _ => {
            return Err(ApiError::bad(
                "invalid_request",
                "give only one of \"data\", \"text\" or \"bytes\"",
            ));
        }
    };
    let key = match body.idempotency_key {
        None => None,
        Some(key)
            if !key.is_empty()
                && key.len() <= MAX_IDEMPOTENCY_KEY_BYTES
                && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Some(Arc::from(key))
        }
        Some(_) => {
            return Err(ApiError::bad(
                "invalid_idempotency_key",
                format!(
                    "\"idempotency_key\" must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters"
                ),
            ));
        }
    };
    Ok(Item {
        groups,
        payload,
        many,
        django: body.django,
        key,
    })
}

/// The deepest nesting `data` may have: serde_json's own limit for the rest of the body.
const MAX_DATA_DEPTH: usize = 128;

/// How deeply arrays and objects nest in valid JSON `raw` (0 for a scalar).
pub fn json_depth(raw: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut in_string = false;
    let mut escaped = false;
    for b in raw.bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Removes insignificant whitespace from valid JSON, keeping everything else (key order,
/// number spelling, escapes) byte for byte — re-serialising through `serde_json::Value`
/// would reorder keys and respell numbers.
pub fn minify_json(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in raw.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// One configured publish key and how many requests it authorized.
pub(crate) struct ApiKey {
    name: String,
    key: String,
    requests: AtomicU64,
}

impl ApiKey {
    pub(crate) fn new(name: &str, key: &str) -> Self {
        Self {
            name: name.to_string(),
            key: key.to_string(),
            requests: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for ApiKey {
    // The key itself never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey").field("name", &self.name).finish()
    }
}

/// `GET /api/presence/{group}`: the group's connections, distinct `sub`s and nodes across
/// the cluster, as the layer holds them (each node's share at most `2 × presence.refresh`
/// old). Authorized like a publish.
pub(crate) async fn presence(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = authorize(&state, &headers)?;
    if key.is_none() {
        check_browser_origin(&state, &headers)?;
    }
    let group = GroupName::new(&name)
        .map_err(|e| ApiError::bad("invalid_group", format!("group {name:?}: {e}")))?;
    match state.layer.presence(&group).await {
        Ok(presence) => Ok(Json(json!({
            "group": group.as_str(),
            "connections": presence.connections,
            "subs": presence.subs,
            "nodes": presence.nodes,
        }))
        .into_response()),
        Err(e) => {
            tracing::debug!(group = %group, error = %e, "presence unavailable");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "layer_unavailable",
                format!("the layer is unavailable ({e})"),
            ))
        }
    }
}

/// Checks the bearer key when one is configured, in constant time, and counts the
/// request under the key's name. Returns that name (`None`: open API).
fn authorize<'s>(state: &'s AppState, headers: &HeaderMap) -> Result<Option<&'s str>, ApiError> {
    if state.api_keys.is_empty() {
        state.open_publish_requests.fetch_add(1, Ordering::Relaxed);
        return Ok(None);
    }
    let unauthorized = || {
        state.unauthorized_publishes.fetch_add(1, Ordering::Relaxed);
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer <key>)",
        )
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .ok_or_else(unauthorized)?;
    // Compare against every key without stopping early, so timing reveals nothing.
    let mut matched: Option<&ApiKey> = None;
    for key in &state.api_keys {
        if constant_time_eq(given.as_bytes(), key.key.as_bytes()) {
            matched = Some(key);
        }
    }
    match matched {
        Some(key) => {
            // Relaxed: a counter read on its own.
            key.requests.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(key = key.name, "publish authorized");
            Ok(Some(&key.name))
        }
        None => Err(unauthorized()),
    }
}

/// On an open API (no key), refuses requests a browser sent from a page: they carry an
/// `Origin` header, and any site the user visits could otherwise publish with a
/// `no-cors` form-like POST. Origins in `api.origins` may; servers and `curl` send none.
fn check_browser_origin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let allowed = origin.to_str().is_ok_and(|o| {
        state
            .config
            .api
            .origins
            .iter()
            .any(|a| a.eq_ignore_ascii_case(o))
    });
    if allowed {
        return Ok(());
    }
    Metrics::add(&state.metrics.publish_origin_refused, 1);
    if let Some(n) = state.origin_refused_log.hit() {
        tracing::warn!(
            requests = n,
            origin = ?origin,
            "publish from a browser page refused: the API has no key and this origin is not in api.origins"
        );
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "origin_refused",
        "publishing from a browser needs an API key, or the page's origin in api.origins",
    ))
}

/// The credentials of `Authorization: Bearer <key>`; the scheme is case-insensitive
/// (RFC 9110 §11.1) and may be followed by several spaces.
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start_matches(' '))
        .filter(|key| !key.is_empty())
}

/// `herald_publish_requests_total{key="<name>"}` (no label on an open API) and
/// `herald_publish_unauthorized_total`.
fn key_metrics(state: &AppState) -> [Family; 2] {
    let samples = if state.api_keys.is_empty() {
        let n = state.open_publish_requests.load(Ordering::Relaxed);
        vec![(Vec::new(), metrics::value(n))]
    } else {
        state
            .api_keys
            .iter()
            .map(|key| {
                let n = key.requests.load(Ordering::Relaxed);
                let label = (Cow::Borrowed("key"), Cow::Owned(key.name.clone()));
                (vec![label], metrics::value(n))
            })
            .collect()
    };
    [
        Family {
            name: "herald_publish_requests_total",
            help: "Publish requests authorized, by API key name.",
            kind: metrics::Kind::Counter,
            samples,
        },
        Family::single(
            "herald_publish_unauthorized_total",
            "Publish requests refused with 401.",
            metrics::value(state.unauthorized_publishes.load(Ordering::Relaxed)),
        ),
    ]
}

/// Equality whose duration depends only on the lengths, not on where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // subtle compares every byte of equal-length inputs; a length mismatch returns at
    // once, which reveals only the key's length.
    bool::from(subtle::ConstantTimeEq::ct_eq(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_written_answer_is_the_json_answer_byte_for_byte() {
        use http_body_util::BodyExt;
        for (epoch, offset) in [("DEFQpHBN", 9), ("a\"b\\c\u{1}é", u64::MAX), ("", 0)] {
            let position = Position {
                offset,
                epoch: herald_core::Epoch::new(epoch),
            };
            let item = Item {
                groups: vec![GroupName::new("g").unwrap()],
                payload: Payload::text("x"),
                many: false,
                django: false,
                key: None,
            };
            let expected =
                Json(answer(&item, &[(item.groups[0].clone(), position.clone())])).into_response();
            let written = position_answer(&position);
            assert_eq!(written.status(), expected.status());
            assert_eq!(
                written.headers().get(header::CONTENT_TYPE),
                expected.headers().get(header::CONTENT_TYPE)
            );
            let written = written.into_body().collect().await.unwrap().to_bytes();
            let expected = expected.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(written, expected, "epoch {epoch:?}");
        }
    }

    #[test]
    fn minify_keeps_order_and_strings() {
        assert_eq!(
            minify_json("{ \"b\" : 1,\n \"a\" : [1.0, 2e3] }"),
            r#"{"b":1,"a":[1.0,2e3]}"#
        );
        assert_eq!(
            minify_json(r#"{"s": "a \" b\\", "t": " x "}"#),
            r#"{"s":"a \" b\\","t":" x "}"#
        );
    }

    #[test]
    fn depth_of_json() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#"{"a":[1,{"b":"[[[["}]}"#), 3);
        assert_eq!(json_depth(r#""\"[""#), 0);
        assert_eq!(json_depth(&"[".repeat(500)), 500);
    }

    #[test]
    fn constant_time() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
