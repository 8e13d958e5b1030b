//! `Metrics`: the server's counters and gauges, and the one place that turns them (and the
//! layer's, the Django bridge's and the API keys' figures) into `/metrics` text.
//!
//! The hot path adds to plain relaxed atomics owned by each server instance (tests run
//! several servers in one process, which a process-global recorder would mix). A scrape
//! reads them into [`Family`] values, and prometheus-client's encoder writes the text.

use std::borrow::Cow;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// A label pair of a sample.
pub type Label = (Cow<'static, str>, Cow<'static, str>);

/// One metric and its samples, as read at a scrape.
#[derive(Clone, Debug)]
pub struct Family {
    /// The metric's name; a counter's ends with `_total`.
    pub name: &'static str,
    /// Its `# HELP` text.
    pub help: &'static str,
    /// Counter (monotonic) or gauge.
    pub kind: Kind,
    /// (labels, value) per sample; one unlabelled sample for plain metrics.
    pub samples: Vec<(Vec<Label>, i64)>,
}

/// The type of a [`Family`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Family {
    /// A metric with one unlabelled sample; the kind follows the name (`_total`: counter).
    pub fn single(name: &'static str, help: &'static str, value: i64) -> Self {
        let kind = if name.ends_with("_total") {
            Kind::Counter
        } else {
            Kind::Gauge
        };
        Self {
            name,
            help,
            kind,
            samples: vec![(Vec::new(), value)],
        }
    }
}

/// The families of one scrape, encoded by prometheus-client.
#[derive(Debug)]
struct Scrape(Vec<Family>);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.0 {
            let (name, metric_type) = match family.kind {
                // The encoder appends `_total` to counters itself.
                Kind::Counter => (
                    family.name.strip_suffix("_total").unwrap_or(family.name),
                    prometheus_client::metrics::MetricType::Counter,
                ),
                Kind::Gauge => (family.name, prometheus_client::metrics::MetricType::Gauge),
            };
            let mut metric = encoder.encode_descriptor(name, family.help, None, metric_type)?;
            for (labels, value) in &family.samples {
                let sample = metric.encode_family(labels)?;
                match family.kind {
                    Kind::Counter => {
                        ConstCounter::new(u64::try_from(*value).unwrap_or(0)).encode(sample)?
                    }
                    Kind::Gauge => ConstGauge::new(*value).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

/// Renders `families` in the Prometheus text exposition format (0.0.4).
pub fn render(families: Vec<Family>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(families)));
    let mut out = String::with_capacity(4096);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// Converts a counter or gauge value for a [`Family`] (saturating).
pub fn value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Counters are monotonic; gauges go up and down. All use `Relaxed` ordering: each value
/// is read on its own, nothing is synchronised through them.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open WebSocket connections.
    pub connections: AtomicI64,
    /// Groups with at least one member on this node.
    pub groups: AtomicI64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections refused or closed for a limit (1013).
    pub connections_rejected: AtomicU64,
    /// Messages published through this node's API.
    pub messages_published: AtomicU64,
    /// Publish requests that failed because the layer was unavailable (503).
    pub publish_failures: AtomicU64,
    /// Messages this node received from its layer for local delivery.
    pub messages_received: AtomicU64,
    /// Frames queued to connections.
    pub frames_delivered: AtomicU64,
    /// Frames not queued because a connection's outbox was full or it was closing.
    pub frames_dropped: AtomicU64,
    /// Connections closed with 4001 because their outbox overflowed.
    pub outbox_overflows: AtomicU64,
    /// Connections closed for a protocol error (1002/1007/1009/4500).
    pub protocol_errors: AtomicU64,
    /// Connections dropped for missing heartbeats.
    pub heartbeat_timeouts: AtomicU64,
    /// Connections refused at connect for a token or origin (4501, 4003, 4503).
    pub auth_refusals: AtomicU64,
    /// Connections closed with 4003 because their token expired while open.
    pub tokens_expired: AtomicU64,
    /// HTTP connections open that are not WebSockets (yet).
    pub http_connections: AtomicI64,
    /// HTTP connections refused at accept: over `limits.max_http_connections`.
    pub http_refused_total: AtomicU64,
    /// The same, over `limits.max_http_connections_per_ip`.
    pub http_refused_per_ip: AtomicU64,
    /// Connections accepted only to be closed because no descriptor was left (EMFILE).
    pub accept_no_descriptors: AtomicU64,
    /// Request bodies cut off by `limits.body_timeout` / `limits.body_min_rate` (408).
    pub body_timeouts: AtomicU64,
    /// Publish requests from a browser page refused on an open API (403).
    pub publish_origin_refused: AtomicU64,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// This server's own metrics, read now.
    pub fn families(&self) -> Vec<Family> {
        let gauges = [
            (
                "herald_connections",
                "Open WebSocket connections.",
                self.connections.load(Ordering::Relaxed),
            ),
            (
                "herald_groups",
                "Groups with at least one member on this node.",
                self.groups.load(Ordering::Relaxed),
            ),
            (
                "herald_http_connections",
                "Open HTTP connections that are not WebSockets (yet).",
                self.http_connections.load(Ordering::Relaxed),
            ),
        ];
        let counters = [
            (
                "herald_connections_total",
                "WebSocket connections accepted.",
                &self.connections_total,
            ),
            (
                "herald_connections_rejected_total",
                "Connections refused for a limit (close 1013).",
                &self.connections_rejected,
            ),
            (
                "herald_messages_published_total",
                "Messages published through this node.",
                &self.messages_published,
            ),
            (
                "herald_publish_failures_total",
                "Publishes refused because the layer was unavailable.",
                &self.publish_failures,
            ),
            (
                "herald_messages_received_total",
                "Messages received from the layer for local delivery.",
                &self.messages_received,
            ),
            (
                "herald_frames_delivered_total",
                "Frames queued to connections.",
                &self.frames_delivered,
            ),
            (
                "herald_frames_dropped_total",
                "Frames dropped: outbox full or connection closing.",
                &self.frames_dropped,
            ),
            (
                "herald_outbox_overflows_total",
                "Connections closed with 4001 (slow consumer).",
                &self.outbox_overflows,
            ),
            (
                "herald_protocol_errors_total",
                "Connections closed for a protocol error.",
                &self.protocol_errors,
            ),
            (
                "herald_heartbeat_timeouts_total",
                "Connections dropped for missing heartbeats.",
                &self.heartbeat_timeouts,
            ),
            (
                "herald_auth_refusals_total",
                "Connections refused for a token or origin (close 4501/4003/4503).",
                &self.auth_refusals,
            ),
            (
                "herald_tokens_expired_total",
                "Connections closed with 4003 when their token expired.",
                &self.tokens_expired,
            ),
            (
                "herald_http_refused_total",
                "HTTP connections answered 503 and closed: limits.max_http_connections reached.",
                &self.http_refused_total,
            ),
            (
                "herald_http_refused_per_ip_total",
                "HTTP connections answered 429 and closed: limits.max_http_connections_per_ip reached.",
                &self.http_refused_per_ip,
            ),
            (
                "herald_accept_no_descriptors_total",
                "Connections closed at accept because the process had no descriptor left.",
                &self.accept_no_descriptors,
            ),
            (
                "herald_body_timeouts_total",
                "Request bodies cut off by limits.body_timeout or limits.body_min_rate (408).",
                &self.body_timeouts,
            ),
            (
                "herald_publish_origin_refused_total",
                "Browser publishes refused on an API without a key (403).",
                &self.publish_origin_refused,
            ),
        ];
        let mut families: Vec<Family> = gauges
            .into_iter()
            .map(|(name, help, value)| Family::single(name, help, value))
            .collect();
        families.extend(counters.into_iter().map(|(name, help, counter)| {
            Family::single(name, help, value(counter.load(Ordering::Relaxed)))
        }));
        families
    }
}
