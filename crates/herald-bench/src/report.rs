//! The figures of a run: printed as a few readable lines, then as one JSON line.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{BenchConfig, Mode, Transport};

/// Percentiles of a histogram, scaled into the report's unit.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// Reads `h`, dividing every value by `scale` (e.g. 1000 to turn µs into ms).
    pub fn from_histogram(h: &Histogram<u64>, scale: f64) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let at = |q: f64| h.value_at_quantile(q) as f64 / scale;
        Self {
            count: h.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: h.max() as f64 / scale,
            mean: h.mean() / scale,
        }
    }
}

/// `(percentile, latency µs)` points for a latency-distribution chart.
pub fn spectrum(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    [
        0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
    ]
    .iter()
    .map(|&p| (p, h.value_at_percentile(p)))
    .collect()
}

/// What the server processes cost, from `/proc`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServerCost {
    /// The processes read.
    pub pids: Vec<u32>,
    /// Summed RSS before the first connect, KiB.
    pub rss_before_kb: u64,
    /// Summed RSS once every client connected, KiB.
    pub rss_connected_kb: u64,
    /// Summed RSS at the end of delivery, KiB.
    pub rss_after_kb: Option<u64>,
    /// RSS growth from connecting, per connection, bytes.
    pub rss_per_conn_bytes: f64,
    /// CPU seconds from the first publish to the end of delivery.
    pub cpu_secs: Option<f64>,
    /// `cpu_secs` per million deliveries.
    pub cpu_secs_per_million: Option<f64>,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The system under test.
    pub label: String,
    /// What the run did.
    pub mode: Mode,
    /// How the clients received.
    pub transport: Transport,
    /// `k/n` when sharded.
    pub shard: String,
    /// Connection attempts by this process.
    pub clients: u64,
    /// Successful upgrades.
    pub connected: u64,
    /// Failed attempts.
    pub connect_failures: u64,
    /// Failed attempts by kind.
    pub connect_failure_kinds: BTreeMap<String, u64>,
    /// Time to finish every connection attempt.
    pub connect_secs: f64,
    /// Successful connects per second.
    pub connects_per_sec: f64,
    /// TCP connect + upgrade time, ms.
    pub connect_latency_ms: Percentiles,
    /// Messages acknowledged by the publish endpoint.
    pub published: u64,
    /// Messages whose request failed or was refused.
    pub publish_errors: u64,
    /// The first publish failure, if any.
    pub publish_first_error: Option<String>,
    /// HTTP requests sent.
    pub publish_requests: u64,
    /// Time spent publishing.
    pub publish_secs: f64,
    /// Acknowledged messages per second.
    pub publish_rate: f64,
    /// Deliveries that acknowledged publishes imply.
    pub expected: u64,
    /// Data frames received.
    pub received: u64,
    /// `expected - received` (never negative).
    pub lost: u64,
    /// `lost` as a percentage of `expected`.
    pub loss_pct: f64,
    /// Data frames without a readable timestamp.
    pub unstamped: u64,
    /// From the first publish to the last delivery.
    pub delivery_secs: f64,
    /// `received / delivery_secs`.
    pub deliveries_per_sec: f64,
    /// Publish → deliver latency, µs.
    pub latency_us: Percentiles,
    /// `(percentile, µs)` points of the latency distribution.
    pub latency_spectrum: Vec<(f64, u64)>,
    /// Connections that ended during the run.
    pub disconnects: u64,
    /// How they ended: close code, `lost` or `protocol-error`.
    pub close_codes: BTreeMap<String, u64>,
    /// Server cost, when pids were given.
    pub server: Option<ServerCost>,
    /// CPU seconds this generator used.
    pub generator_cpu_secs: f64,
    /// Wall time of the run.
    pub elapsed_secs: f64,
    /// Whether the hard deadline cut the run short.
    pub timed_out: bool,
}

impl Report {
    pub(crate) fn new(config: &BenchConfig, clients: u64) -> Self {
        Self {
            label: config.label.clone(),
            mode: config.mode,
            transport: config.transport,
            shard: format!("{}/{}", config.shard.index, config.shard.count),
            clients,
            connected: 0,
            connect_failures: 0,
            connect_failure_kinds: BTreeMap::new(),
            connect_secs: 0.0,
            connects_per_sec: 0.0,
            connect_latency_ms: Percentiles::default(),
            published: 0,
            publish_errors: 0,
            publish_first_error: None,
            publish_requests: 0,
            publish_secs: 0.0,
            publish_rate: 0.0,
            expected: 0,
            received: 0,
            lost: 0,
            loss_pct: 0.0,
            unstamped: 0,
            delivery_secs: 0.0,
            deliveries_per_sec: 0.0,
            latency_us: Percentiles::default(),
            latency_spectrum: Vec::new(),
            disconnects: 0,
            close_codes: BTreeMap::new(),
            server: None,
            generator_cpu_secs: 0.0,
            elapsed_secs: 0.0,
            timed_out: false,
        }
    }

    /// The report as one JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} {:?} {:?} shard {}: {}/{} connected in {:.2}s ({:.0}/s, {} failed {:?}), connect p50 {:.1} ms p99 {:.1} ms",
            self.label,
            self.mode,
            self.transport,
            self.shard,
            self.connected,
            self.clients,
            self.connect_secs,
            self.connects_per_sec,
            self.connect_failures,
            self.connect_failure_kinds,
            self.connect_latency_ms.p50,
            self.connect_latency_ms.p99,
        )?;
        if matches!(self.mode, Mode::Broadcast | Mode::PerUser) {
            writeln!(
                f,
                "published {} in {} requests over {:.2}s ({:.0} msg/s, {} failed{})",
                self.published,
                self.publish_requests,
                self.publish_secs,
                self.publish_rate,
                self.publish_errors,
                self.publish_first_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default(),
            )?;
            writeln!(
                f,
                "delivered {}/{} (lost {} = {:.3}%) in {:.3}s: {:.0} deliveries/s",
                self.received,
                self.expected,
                self.lost,
                self.loss_pct,
                self.delivery_secs,
                self.deliveries_per_sec,
            )?;
            let l = &self.latency_us;
            writeln!(
                f,
                "latency ms: p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
                l.p50 / 1000.0,
                l.p90 / 1000.0,
                l.p99 / 1000.0,
                l.p999 / 1000.0,
                l.max / 1000.0,
            )?;
        }
        if let Some(s) = &self.server {
            write!(
                f,
                "server rss {} KiB -> {} KiB ({:.0} B/conn)",
                s.rss_before_kb, s.rss_connected_kb, s.rss_per_conn_bytes
            )?;
            if let (Some(cpu), Some(per)) = (s.cpu_secs, s.cpu_secs_per_million) {
                write!(f, ", cpu {cpu:.2}s = {per:.2} s per million deliveries")?;
            }
            writeln!(f)?;
        }
        write!(
            f,
            "disconnects {} {:?}; generator cpu {:.2}s; elapsed {:.2}s{}",
            self.disconnects,
            self.close_codes,
            self.generator_cpu_secs,
            self.elapsed_secs,
            if self.timed_out {
                " (DEADLINE HIT)"
            } else {
                ""
            }
        )
    }
}
