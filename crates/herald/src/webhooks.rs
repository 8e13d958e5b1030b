//! `group.occupied` / `group.vacated` webhooks: a bounded queue, signed POSTs, retries
//! with jittered backoff, and a counted give-up.
//!
//! Which node sends an event is decided by the layer ([`herald_core::Layer::occupy`] and
//! [`herald_core::Layer::vacate`] answer `true` to one caller per transition); this module
//! only delivers. Each request carries `X-Herald-Signature: t=<unix>,v1=<hex>` where the
//! hex is the HMAC-SHA256 (key: `webhooks.secret`) of `"<t>.<body>"`; `t` is taken anew
//! for each attempt, so a receiver can refuse old timestamps (replays).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{Request, header};
use bytes::Bytes;
use herald_core::GroupName;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::burst_log::BurstLog;
use crate::config::WebhooksConfig;
use crate::hook::Endpoint;
use crate::metrics::Metrics;

/// Events waiting to be sent; past it a new event is given up at once (counted).
const QUEUE: usize = 10_000;
/// Events being sent (or waiting between attempts) at once.
const IN_FLIGHT: usize = 32;
/// First delay between attempts; it doubles up to [`MAX_DELAY`], each drawn uniformly
/// from the upper half of its step.
const MIN_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(10);

/// What happened to a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    /// The first connection anywhere.
    Occupied,
    /// No connection anywhere for `webhooks.vacated_delay`.
    Vacated,
}

impl Transition {
    fn name(self) -> &'static str {
        match self {
            Self::Occupied => "group.occupied",
            Self::Vacated => "group.vacated",
        }
    }
}

#[derive(Debug)]
struct Event {
    transition: Transition,
    group: GroupName,
    subs: Vec<String>,
}

/// Webhook counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Events the receiver took (2xx).
    pub delivered: std::sync::atomic::AtomicU64,
    /// Attempts that failed (and were retried or led to a give-up).
    pub failed_attempts: std::sync::atomic::AtomicU64,
    /// Events given up: `max_attempts` failed, or the queue was full.
    pub given_up: std::sync::atomic::AtomicU64,
}

/// Handle to the sender task.
#[derive(Clone, Debug)]
pub(crate) struct Webhooks {
    tx: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
    full_log: Arc<BurstLog>,
    /// How long a group stays empty before it is vacated.
    pub(crate) vacated_delay: Duration,
}

impl Webhooks {
    /// Starts the sender when `[webhooks] url` is set; it stops when `cancel` fires
    /// (events still queued or retrying are dropped then, and counted as given up).
    pub(crate) fn spawn(
        config: &WebhooksConfig,
        node: String,
        metrics: Arc<Metrics>,
        tracker: &tokio_util::task::TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Option<Self>, String> {
        let (Some(url), Some(secret)) = (&config.url, &config.secret) else {
            return Ok(None);
        };
        let endpoint = Endpoint::parse(url)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let sender = Sender {
            endpoint,
            secret: secret.as_bytes().to_vec(),
            node,
            timeout: config.timeout,
            max_attempts: config.max_attempts.max(1),
            metrics: metrics.clone(),
            give_up_log: BurstLog::default(),
        };
        tracker.spawn(run(Arc::new(sender), rx, cancel));
        Ok(Some(Self {
            tx,
            metrics,
            full_log: Arc::new(BurstLog::default()),
            vacated_delay: config.vacated_delay,
        }))
    }

    /// Queues an event without waiting; a full queue gives it up (counted, logged).
    pub(crate) fn send(&self, transition: Transition, group: GroupName, subs: Vec<String>) {
        let event = Event {
            transition,
            group,
            subs,
        };
        if let Err(e) = self.tx.try_send(event) {
            Metrics::add(&self.metrics.webhooks.given_up, 1);
            if let Some(n) = self.full_log.hit() {
                let event = match &e {
                    mpsc::error::TrySendError::Full(ev) | mpsc::error::TrySendError::Closed(ev) => {
                        ev
                    }
                };
                tracing::warn!(given_up = n, group = %event.group, event = event.transition.name(), "webhook queue full: event given up");
            }
        }
    }
}

struct Sender {
    endpoint: Endpoint,
    secret: Vec<u8>,
    node: String,
    timeout: Duration,
    max_attempts: u32,
    metrics: Arc<Metrics>,
    give_up_log: BurstLog,
}

async fn run(sender: Arc<Sender>, mut rx: mpsc::Receiver<Event>, cancel: CancellationToken) {
    // Owned here: dropping the set (on cancel) aborts the deliveries in flight.
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            event = rx.recv(), if in_flight.len() < IN_FLIGHT => {
                let Some(event) = event else { break };
                let sender = sender.clone();
                in_flight.spawn(async move { sender.deliver(event).await });
            }
        }
    }
    let dropped = in_flight.len() + rx.len();
    if dropped > 0 {
        Metrics::add(&sender.metrics.webhooks.given_up, dropped as u64);
        tracing::warn!(
            given_up = dropped,
            "shutting down: webhook events not yet delivered are given up"
        );
    }
}

impl Sender {
    async fn deliver(&self, event: Event) {
        let body = serde_json::json!({
            "id": event_id(),
            "event": event.transition.name(),
            "group": event.group.as_str(),
            "subs": event.subs,
            "node": self.node,
            "time": unix_millis() as f64 / 1000.0,
        })
        .to_string();
        let body = Bytes::from(body);
        let mut step = MIN_DELAY;
        for attempt in 1..=self.max_attempts {
            match tokio::time::timeout(self.timeout, self.post(&body)).await {
                Ok(Ok(())) => {
                    Metrics::add(&self.metrics.webhooks.delivered, 1);
                    return;
                }
                Ok(Err(reason)) => self.failed(attempt, &event, reason),
                Err(_) => self.failed(attempt, &event, "timeout".to_owned()),
            }
            if attempt < self.max_attempts {
                let half = step / 2;
                tokio::time::sleep(half + half.mul_f64(fastrand::f64())).await;
                step = (step * 2).min(MAX_DELAY);
            }
        }
        Metrics::add(&self.metrics.webhooks.given_up, 1);
        if let Some(n) = self.give_up_log.hit() {
            tracing::warn!(
                given_up = n,
                group = %event.group,
                event = event.transition.name(),
                attempts = self.max_attempts,
                "webhook event given up after max_attempts"
            );
        }
    }

    fn failed(&self, attempt: u32, event: &Event, reason: String) {
        Metrics::add(&self.metrics.webhooks.failed_attempts, 1);
        tracing::debug!(attempt, group = %event.group, event = event.transition.name(), reason, "webhook attempt failed");
    }

    /// One signed POST; `Ok` on a 2xx answer.
    async fn post(&self, body: &Bytes) -> Result<(), String> {
        let t = unix_millis() / 1000;
        let signature = format!("t={t},v1={}", sign(&self.secret, t, body));
        let stream = TcpStream::connect(&self.endpoint.address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let request = Request::post(self.endpoint.target.clone())
            .header(header::HOST, self.endpoint.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "herald-webhooks")
            .header(header::CONNECTION, "close")
            .header("X-Herald-Signature", signature)
            .body(Full::new(body.clone()))
            .map_err(|e| format!("request: {e}"))?;
        let exchange = async move {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("send: {e}"))?;
            let status = response.status();
            // The answer's body is read (bounded by the timeout) and ignored.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        };
        let connection = async move {
            let _ = connection.await;
        };
        tokio::pin!(exchange, connection);
        tokio::select! {
            biased;
            outcome = &mut exchange => outcome,
            _ = &mut connection => exchange.await,
        }
    }
}

/// Hex HMAC-SHA256 of `"<t>.<body>"` under `secret`.
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this never fails.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// 128 random bits, hex: unique per event, the same on every retry of it.
fn event_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_the_hmac_of_t_dot_body() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        mac.update(b"1700000000.{\"a\":1}");
        let whole: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sign(b"key", 1_700_000_000, br#"{"a":1}"#), whole);
        assert_ne!(sign(b"key", 1_700_000_001, br#"{"a":1}"#), whole);
        assert_ne!(sign(b"other", 1_700_000_000, br#"{"a":1}"#), whole);
    }
}
