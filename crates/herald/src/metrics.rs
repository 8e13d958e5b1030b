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

/// A histogram on plain atomics: observing is a bucket search and three relaxed adds, no
/// lock (prometheus-client's own histogram takes a lock per observation, and these are
/// observed on the delivery path).
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, ascending; a last, implicit bucket is `+Inf`.
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative), one more than `bounds`.
    counts: Vec<AtomicU64>,
    /// Sum of the observations, in millionths of the unit.
    sum_micros: AtomicU64,
}

/// Buckets for latencies, in seconds: 100 µs to 2.5 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Buckets for queue depths, in frames.
pub const DEPTH_BUCKETS: &[f64] = &[0.0, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0];

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation (negative or NaN values count as 0).
    pub fn observe(&self, value: f64) {
        let value = if value.is_finite() && value > 0.0 {
            value
        } else {
            0.0
        };
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        if let Some(count) = self.counts.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        // `as` saturates: an absurd value cannot wrap the sum.
        self.sum_micros
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, elapsed: std::time::Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        // Empty buckets are listed too: dashboards expect a stable set of `le` labels.
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }
}

/// The families of one scrape, encoded by prometheus-client.
#[derive(Debug)]
struct Scrape {
    families: Vec<Family>,
    histograms: Vec<(&'static str, &'static str, HistogramSnapshot)>,
}

/// A histogram read at a scrape: sum, count, and (upper bound, count) per bucket.
type HistogramSnapshot = (f64, u64, Vec<(f64, u64)>);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, (sum, count, buckets)) in &self.histograms {
            let mut metric = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Histogram,
            )?;
            metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                *sum, *count, buckets, None,
            )?;
        }
        for family in &self.families {
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

/// Renders `families` and `histograms` in the Prometheus text exposition format (0.0.4).
pub fn render(
    families: Vec<Family>,
    histograms: &[(&'static str, &'static str, &Histogram)],
) -> String {
    let mut registry = Registry::default();
    let histograms = histograms
        .iter()
        .map(|(name, help, h)| (*name, *help, h.snapshot()))
        .collect();
    registry.register_collector(Box::new(Scrape {
        families,
        histograms,
    }));
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
    /// Open connections, every transport (WebSockets and SSE streams).
    pub connections: AtomicI64,
    /// Open SSE streams (also counted in `connections`).
    pub sse_connections: AtomicI64,
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
    /// `herald.v1`/SSE streams closed with 4400 because a live offset skipped ahead (a
    /// gap: the node missed messages, e.g. while its Redis subscriber reconnected).
    pub stream_gaps: AtomicU64,
    /// The same, because a live offset went backwards under the same epoch (lost writes).
    pub stream_regressions: AtomicU64,
    /// The same, because the group's epoch changed (history lost or reset).
    pub stream_epoch_changes: AtomicU64,
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
    /// Seconds from a message reaching this node (its publish here, or its arrival from
    /// Redis) to its frames being with every local member (outbox or socket).
    pub delivery_seconds: LatencyHistogram,
    /// Seconds a publish request took, from its head to its answer.
    pub publish_seconds: LatencyHistogram,
    /// Frames queued per connection, sampled at each heartbeat tick.
    pub outbox_depth: DepthHistogram,
    /// Keyed publishes that were retries: nothing published, first offset answered.
    pub publish_duplicates: AtomicU64,
    /// The connect hook's requests, cache and refreshes.
    pub hook: crate::hook::HookStats,
    /// Presence entries the layer did not take (rewritten at the next refresh), and
    /// presence reads for `join`/`leave` events that failed (read again next tick).
    pub presence_failures: AtomicU64,
    /// Webhook deliveries, failed attempts and give-ups.
    pub webhooks: crate::webhooks::WebhookStats,
}

/// A [`Histogram`] over [`LATENCY_BUCKETS`].
#[derive(Debug)]
pub struct LatencyHistogram(pub Histogram);

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self(Histogram::new(LATENCY_BUCKETS))
    }
}

/// A [`Histogram`] over [`DEPTH_BUCKETS`].
#[derive(Debug)]
pub struct DepthHistogram(pub Histogram);

impl Default for DepthHistogram {
    fn default() -> Self {
        Self(Histogram::new(DEPTH_BUCKETS))
    }
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// This server's histograms: (name, help, histogram).
    pub fn histograms(&self) -> [(&'static str, &'static str, &Histogram); 4] {
        [
            (
                "herald_delivery_seconds",
                "Time from a message reaching this node to its frames being with every local member.",
                &self.delivery_seconds.0,
            ),
            (
                "herald_publish_seconds",
                "Time a publish request took, from its head to its answer.",
                &self.publish_seconds.0,
            ),
            (
                "herald_outbox_depth",
                "Frames queued per connection, sampled at each heartbeat tick.",
                &self.outbox_depth.0,
            ),
            (
                "herald_hook_seconds",
                "Time each connect hook request took.",
                &self.hook.seconds.0,
            ),
        ]
    }

    /// This server's own metrics, read now. `django_published` is the Django bridge's
    /// count of messages it published (0 without the bridge).
    pub fn families(&self, django_published: u64) -> Vec<Family> {
        let gauges = [
            (
                "herald_connections",
                "Open connections: WebSockets and SSE streams.",
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
                "Connections accepted (WebSockets and SSE streams).",
                &self.connections_total,
            ),
            (
                "herald_connections_rejected_total",
                "Connections refused for a limit (close 1013).",
                &self.connections_rejected,
            ),
            (
                "herald_publish_failures_total",
                "Publishes refused because the layer was unavailable.",
                &self.publish_failures,
            ),
            (
                "herald_publish_duplicates_total",
                "Publishes with an idempotency key already used (nothing published).",
                &self.publish_duplicates,
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
                "herald_stream_gaps_total",
                "herald.v1/SSE streams reset (4400) because live offsets skipped ahead; the client resumes from history.",
                &self.stream_gaps,
            ),
            (
                "herald_stream_regressions_total",
                "herald.v1/SSE streams reset (4400) because live offsets went backwards under one epoch.",
                &self.stream_regressions,
            ),
            (
                "herald_stream_epoch_changes_total",
                "herald.v1/SSE streams reset (4400) because their group's epoch changed.",
                &self.stream_epoch_changes,
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
            (
                "herald_webhooks_delivered_total",
                "Webhook events the receiver answered with 2xx.",
                &self.webhooks.delivered,
            ),
            (
                "herald_webhooks_failed_attempts_total",
                "Webhook requests that failed (retried until webhooks.max_attempts).",
                &self.webhooks.failed_attempts,
            ),
            (
                "herald_webhooks_given_up_total",
                "Webhook events given up: webhooks.max_attempts failed, the queue was full, or shutdown.",
                &self.webhooks.given_up,
            ),
            (
                "herald_presence_failures_total",
                "Presence writes (retried at the next presence.refresh) and reads for join/leave events (retried next tick) the layer failed.",
                &self.presence_failures,
            ),
        ];
        let mut families: Vec<Family> = gauges
            .into_iter()
            .map(|(name, help, value)| Family::single(name, help, value))
            .collect();
        families.extend(counters.into_iter().map(|(name, help, counter)| {
            Family::single(name, help, value(counter.load(Ordering::Relaxed)))
        }));
        let source = |s: &'static str| vec![(Cow::Borrowed("source"), Cow::Borrowed(s))];
        families.push(Family {
            name: "herald_messages_published_total",
            help: "Messages published through this node, by source: the publish API, or Django through the bridge.",
            kind: Kind::Counter,
            samples: vec![
                (
                    source("api"),
                    value(self.messages_published.load(Ordering::Relaxed)),
                ),
                (source("django"), value(django_published)),
            ],
        });
        let sse = self.sse_connections.load(Ordering::Relaxed).max(0);
        let all = self.connections.load(Ordering::Relaxed).max(0);
        families.push(Family {
            name: "herald_transport_connections",
            help: "Open connections per transport.",
            kind: Kind::Gauge,
            samples: [("websocket", all.saturating_sub(sse).max(0)), ("sse", sse)]
                .into_iter()
                .map(|(transport, n)| {
                    (
                        vec![(Cow::Borrowed("transport"), Cow::Borrowed(transport))],
                        n,
                    )
                })
                .collect(),
        });
        families.extend(self.hook.metrics().into_iter().map(|metric| {
            Family {
                name: metric.name,
                help: metric.help,
                kind: Kind::Counter,
                samples: metric
                    .samples
                    .into_iter()
                    .map(|(result, n)| {
                        let labels = result
                            .map(|r| vec![(Cow::Borrowed("result"), Cow::Borrowed(r))])
                            .unwrap_or_default();
                        (labels, value(n))
                    })
                    .collect(),
            }
        }));
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_into_buckets_and_render() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(0.0005);
        h.observe(0.001);
        h.observe(0.005);
        h.observe(7.0);
        h.observe(f64::NAN);
        assert_eq!(h.count(), 5);
        let text = render(Vec::new(), &[("x_seconds", "help", &h)]);
        assert!(text.contains("x_seconds_bucket{le=\"0.001\"} 3"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"0.01\"} 4"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 5"), "{text}");
        assert!(text.contains("x_seconds_count 5"), "{text}");
        assert!(text.contains("x_seconds_sum 7.0065"), "{text}");
    }
}
