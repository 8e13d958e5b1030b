//! herald-bench: a load generator for WebSocket push servers (herald, and the systems it
//! is compared with).
//!
//! It opens N WebSocket clients against a URL template, spread over the source addresses
//! `127.0.0.2, 127.0.0.3, ...` so that N can exceed one address's ephemeral ports; it
//! publishes messages over HTTP whose payloads carry their send time; every receiver reads
//! that time back and the run reports connect rate, deliveries per second, loss, latency
//! percentiles and — read from `/proc/<pid>` — the server's memory per connection and CPU
//! seconds per million deliveries.
//!
//! Every run is bounded: by the number of clients and messages, and by a hard deadline.
//! Only loopback targets (`127.0.0.0/8`) are accepted.
//!
//! # Layout
//!
//! - [`target`]: URL templates and the loopback check.
//! - [`client`]: the WebSocket client (handshake, server-frame parser, receive loop), and
//!   the SSE client (`--transport sse`) over [`sse`]'s chunked decoder and event parser.
//! - [`publish`]: HTTP publishers.
//! - [`procfs`]: server RSS and CPU from `/proc`.
//! - [`report`]: the figures a run produces, as text and as one JSON line.

pub mod client;
pub mod procfs;
pub mod publish;
pub mod report;
pub mod sse;
pub mod target;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use report::Report;

use client::{Tally, new_histogram};
use publish::{PublishPlan, PublishTally};
use report::{Percentiles, ServerCost};
use target::{Target, TargetError, fill, source_addresses};

/// Wall-clock time in Unix nanoseconds: comparable between the publisher, receivers and
/// other generator processes on the same machine.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// How the clients receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// A WebSocket upgrade; data frames are deliveries.
    #[default]
    WebSocket,
    /// `GET` with `Accept: text/event-stream`; message events are deliveries.
    Sse,
}

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Every client in one group (`{g}` = 0); each message reaches all of them.
    Broadcast,
    /// Client `i` in group `i`; each message goes to one random client's group.
    PerUser,
    /// Connect every client and hold the connections; measures memory per connection.
    Idle,
    /// Connect and close as fast as possible; measures the connect rate.
    ConnectStorm,
}

/// This process's part of a run spread over several generator processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based index of this process.
    pub index: u64,
    /// Number of processes.
    pub count: u64,
}

impl Default for Shard {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

/// Everything a run needs. [`BenchConfig::new`] gives sensible defaults.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// A name for the system under test, echoed in the report.
    pub label: String,
    /// How clients receive: WebSocket or Server-Sent Events.
    pub transport: Transport,
    /// What to do.
    pub mode: Mode,
    /// WebSocket URL template with `{i}` (client index) and `{g}` (group index).
    pub ws_url: String,
    /// Clients over all shards; this process opens its shard's share.
    pub clients: u64,
    /// Which share this process opens.
    pub shard: Shard,
    /// How many source addresses (from 127.0.0.2) to spread client sockets over.
    pub sources: usize,
    /// Connection attempts in flight at once.
    pub connect_concurrency: usize,
    /// Time allowed for one TCP connect + upgrade.
    pub connect_timeout: Duration,
    /// Publish URL template (`{g}` allowed); `None` = this process does not publish.
    pub publish_url: Option<String>,
    /// One message's body template (`{g}`, `{payload}`).
    pub publish_body: String,
    /// Batch wrapper with `{items}`; `None` sends one message per request.
    pub batch_body: Option<String>,
    /// Messages per request (needs `batch_body` when above 1).
    pub batch: usize,
    /// `Content-Type` of publish requests.
    pub content_type: String,
    /// Extra publish request headers.
    pub publish_headers: Vec<(String, String)>,
    /// Messages to publish.
    pub messages: u64,
    /// Messages per second; 0 = as fast as the server answers.
    pub rate: f64,
    /// Concurrent publisher connections.
    pub publishers: usize,
    /// Payload bytes per message.
    pub payload_size: usize,
    /// When this process does not publish: messages each client should receive.
    pub expect_messages: u64,
    /// Pause between "all connected" and the first publish.
    pub warmup: Duration,
    /// How long to wait for stragglers after the last publish.
    pub drain_timeout: Duration,
    /// How long idle mode holds the connections.
    pub hold: Duration,
    /// Hard limit on the whole run.
    pub duration: Duration,
    /// Server processes whose RSS and CPU are read.
    pub server_pids: Vec<u32>,
}

impl BenchConfig {
    /// A broadcast run of `clients` clients at the seed route of a herald at `addr`.
    pub fn new(addr: &str, clients: u64) -> Self {
        Self {
            label: "herald".into(),
            mode: Mode::Broadcast,
            transport: Transport::WebSocket,
            ws_url: format!("ws://{addr}/message/{{g}}/stream/"),
            clients,
            shard: Shard::default(),
            sources: 8,
            connect_concurrency: 256,
            connect_timeout: Duration::from_secs(10),
            publish_url: Some(format!("http://{addr}/api/publish")),
            publish_body: r#"{"group":"user.{g}","text":"{payload}"}"#.into(),
            batch_body: Some(r#"{"messages":[{items}]}"#.into()),
            batch: 1,
            content_type: "application/json".into(),
            publish_headers: Vec::new(),
            messages: 100,
            rate: 0.0,
            publishers: 1,
            payload_size: 100,
            expect_messages: 0,
            warmup: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(5),
            hold: Duration::from_secs(5),
            duration: Duration::from_secs(60),
            server_pids: Vec::new(),
        }
    }

    /// The global client indices this process opens.
    pub fn local_clients(&self) -> std::ops::Range<u64> {
        let count = self.shard.count.max(1);
        let index = self.shard.index.min(count - 1);
        (self.clients * index / count)..(self.clients * (index + 1) / count)
    }

    fn group_of(&self, i: u64) -> u64 {
        match self.mode {
            Mode::Broadcast => 0,
            Mode::PerUser | Mode::Idle | Mode::ConnectStorm => i,
        }
    }
}

/// A run could not start.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A URL is unusable or not loopback.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The settings contradict each other.
    #[error("invalid settings: {0}")]
    Invalid(String),
}

/// Connection attempts and their outcome.
#[derive(Debug)]
struct ConnectTally {
    connected: AtomicU64,
    finished: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    latency: Mutex<hdrhistogram::Histogram<u64>>,
    closes: Mutex<BTreeMap<String, u64>>,
}

/// Runs one benchmark and returns its report. It never outlives `config.duration` by
/// more than the time needed to stop its tasks.
pub async fn run(config: BenchConfig) -> Result<Report, BenchError> {
    let started = Instant::now();
    let deadline = started + config.duration;
    let local = config.local_clients();
    let ws = if local.is_empty() {
        None
    } else {
        Some(Arc::new(Target::parse(
            &config.ws_url,
            &[("ws://", 80), ("http://", 80)],
        )?))
    };
    let publishes = matches!(config.mode, Mode::Broadcast | Mode::PerUser);
    let plan = match (&config.publish_url, publishes) {
        (Some(url), true) => {
            if config.batch > 1 && config.batch_body.is_none() {
                return Err(BenchError::Invalid(
                    "--batch above 1 needs a batch body template".into(),
                ));
            }
            let groups = match config.mode {
                Mode::Broadcast => 0..1,
                _ if local.is_empty() => {
                    return Err(BenchError::Invalid(
                        "per-user publishing needs local clients".into(),
                    ));
                }
                _ => local.clone(),
            };
            Some(Arc::new(PublishPlan {
                target: Target::parse(url, &[("http://", 80)])?,
                body: config.publish_body.clone(),
                batch_body: (config.batch > 1)
                    .then(|| config.batch_body.clone())
                    .flatten(),
                batch: config.batch.max(1),
                content_type: config.content_type.clone(),
                headers: config.publish_headers.clone(),
                messages: config.messages,
                rate: config.rate,
                publishers: config.publishers,
                payload_size: config.payload_size,
                groups,
                request_timeout: Duration::from_secs(10),
            }))
        }
        _ => None,
    };
    let sources = source_addresses(config.sources);
    let (server_before, _) = procfs::sample(&config.server_pids);
    let own_before = procfs::own();

    // Connect.
    let tally = Arc::new(Tally::new());
    let connects = Arc::new(ConnectTally {
        connected: AtomicU64::new(0),
        finished: AtomicU64::new(0),
        failures: Mutex::new(BTreeMap::new()),
        latency: Mutex::new(new_histogram()),
        closes: Mutex::new(BTreeMap::new()),
    });
    let limit = Arc::new(Semaphore::new(config.connect_concurrency.max(1)));
    let mut clients = JoinSet::new();
    if let Some(ws) = &ws {
        for i in local.clone() {
            let path = fill(&ws.path, i, config.group_of(i), "");
            let source = sources[(i as usize) % sources.len()];
            clients.spawn(client_task(
                ws.clone(),
                path,
                source,
                config.mode,
                config.transport,
                config.connect_timeout,
                limit.clone(),
                connects.clone(),
                tally.clone(),
            ));
        }
    }
    let attempts = local.end - local.start;
    wait_until(deadline, || {
        connects.finished.load(Ordering::Acquire) >= attempts
    })
    .await;
    let connect_secs = started.elapsed().as_secs_f64();
    let connected = connects.connected.load(Ordering::Acquire);
    let mut timed_out = Instant::now() >= deadline;
    let mut report = Report::new(&config, attempts);
    report.connected = connected;
    report.connect_secs = connect_secs;
    report.connects_per_sec = if connect_secs > 0.0 {
        connected as f64 / connect_secs
    } else {
        0.0
    };
    report.connect_failures = attempts.saturating_sub(connected);
    report.connect_failure_kinds = lock(&connects.failures).clone();
    report.connect_latency_ms = Percentiles::from_histogram(&lock(&connects.latency), 1000.0);

    match config.mode {
        Mode::ConnectStorm => {}
        Mode::Idle => {
            sleep_bounded(Duration::from_secs(1), deadline).await;
            let (held, _) = procfs::sample(&config.server_pids);
            sleep_bounded(config.hold.saturating_sub(Duration::from_secs(1)), deadline).await;
            report.server = server_cost(&config, server_before, held, None, connected, 0);
            report.disconnects = tally.disconnects.load(Ordering::Relaxed);
        }
        Mode::Broadcast | Mode::PerUser => {
            sleep_bounded(config.warmup, deadline).await;
            let (server_connected, _) = procfs::sample(&config.server_pids);
            let publish_start_ns = unix_nanos();
            let publish_started = Instant::now();
            let publish_tally = Arc::new(PublishTally::default());
            if let Some(plan) = &plan {
                publish::run(plan.clone(), publish_tally.clone(), deadline).await;
            }
            report.publish_secs = publish_started.elapsed().as_secs_f64();
            let acked = publish_tally.acked.load(Ordering::Relaxed);
            report.published = acked;
            report.publish_errors = publish_tally.failed.load(Ordering::Relaxed);
            report.publish_requests = publish_tally.requests.load(Ordering::Relaxed);
            report.publish_first_error = lock(&publish_tally.first_error).clone();
            report.publish_rate = if report.publish_secs > 0.0 {
                acked as f64 / report.publish_secs
            } else {
                0.0
            };
            let expected = match (config.mode, plan.is_some()) {
                (Mode::Broadcast, true) => acked * connected,
                (Mode::Broadcast, false) => config.expect_messages * connected,
                (_, true) => acked,
                (_, false) => config.expect_messages,
            };
            let drain_deadline = (Instant::now() + config.drain_timeout).min(deadline);
            wait_until(drain_deadline, || {
                tally.received.load(Ordering::Relaxed) >= expected
            })
            .await;
            timed_out |= Instant::now() >= deadline;
            let (server_after, _) = procfs::sample(&config.server_pids);
            let received = tally.received.load(Ordering::Relaxed);
            let last_rx = tally.last_rx_ns.load(Ordering::Relaxed);
            let window = last_rx.saturating_sub(publish_start_ns) as f64 / 1e9;
            report.expected = expected;
            report.received = received;
            report.lost = expected.saturating_sub(received);
            report.loss_pct = if expected > 0 {
                100.0 * report.lost as f64 / expected as f64
            } else {
                0.0
            };
            report.unstamped = tally.unstamped.load(Ordering::Relaxed);
            report.delivery_secs = window;
            report.deliveries_per_sec = if window > 0.0 {
                received as f64 / window
            } else {
                0.0
            };
            report.latency_us = Percentiles::from_histogram(&lock(&tally.latency), 1.0);
            report.latency_spectrum = report::spectrum(&lock(&tally.latency));
            report.server = server_cost(
                &config,
                server_before,
                server_connected,
                Some(server_after),
                connected,
                received,
            );
            report.disconnects = tally.disconnects.load(Ordering::Relaxed);
        }
    }
    report.close_codes = lock(&connects.closes).clone();
    let own_after = procfs::own();
    report.generator_cpu_secs = own_after.cpu_secs - own_before.cpu_secs;
    report.elapsed_secs = started.elapsed().as_secs_f64();
    report.timed_out = timed_out;
    clients.abort_all();
    // Aborted tasks end at their next poll; wait for them, but never past a moment.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while clients.join_next().await.is_some() {}
    })
    .await;
    Ok(report)
}

fn server_cost(
    config: &BenchConfig,
    before: procfs::Sample,
    connected: procfs::Sample,
    after: Option<procfs::Sample>,
    connections: u64,
    deliveries: u64,
) -> Option<ServerCost> {
    if config.server_pids.is_empty() {
        return None;
    }
    let grown = connected.rss_kb.saturating_sub(before.rss_kb) * 1024;
    let cpu = after.map(|a| a.cpu_secs - connected.cpu_secs);
    Some(ServerCost {
        pids: config.server_pids.clone(),
        rss_before_kb: before.rss_kb,
        rss_connected_kb: connected.rss_kb,
        rss_after_kb: after.map(|a| a.rss_kb),
        rss_per_conn_bytes: if connections > 0 {
            grown as f64 / connections as f64
        } else {
            0.0
        },
        cpu_secs: cpu,
        cpu_secs_per_million: match cpu {
            Some(cpu) if deliveries > 0 => Some(cpu / (deliveries as f64 / 1e6)),
            _ => None,
        },
    })
}

#[allow(clippy::too_many_arguments)]
async fn client_task(
    target: Arc<Target>,
    path: String,
    source: Ipv4Addr,
    mode: Mode,
    transport: Transport,
    timeout: Duration,
    limit: Arc<Semaphore>,
    connects: Arc<ConnectTally>,
    tally: Arc<Tally>,
) {
    let attempt = {
        // The semaphore is never closed, so acquiring only fails if it were.
        let _permit = limit.acquire().await;
        let begun = Instant::now();
        let attempt = client::connect(&target, &path, source, timeout, transport).await;
        if attempt.is_ok() {
            let us = begun.elapsed().as_micros() as u64;
            lock(&connects.latency).saturating_record(us.max(1));
        }
        attempt
    };
    let conn = match attempt {
        Ok(conn) => {
            connects.connected.fetch_add(1, Ordering::AcqRel);
            connects.finished.fetch_add(1, Ordering::AcqRel);
            conn
        }
        Err(e) => {
            *lock(&connects.failures).entry(e.kind()).or_default() += 1;
            connects.finished.fetch_add(1, Ordering::AcqRel);
            return;
        }
    };
    if mode == Mode::ConnectStorm {
        conn.close().await;
        return;
    }
    let end = conn.receive(&tally).await;
    tally.disconnects.fetch_add(1, Ordering::Relaxed);
    let label = match end {
        client::End::Closed(code) => code.to_string(),
        client::End::Lost => "lost".into(),
        client::End::Protocol => "protocol-error".into(),
    };
    *lock(&connects.closes).entry(label).or_default() += 1;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn sleep_bounded(d: Duration, deadline: Instant) {
    tokio::time::sleep_until((Instant::now() + d).min(deadline)).await;
}

/// Polls `done` every 5 ms until it holds or `deadline` passes.
async fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) {
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5).min(deadline - Instant::now())).await;
    }
}
