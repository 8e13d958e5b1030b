//! `Metrics`: the server's counters and gauges, rendered as Prometheus text at `/metrics`.
//!
//! Written by hand rather than through a global `metrics` recorder: the set is fixed at
//! compile time, the hot path needs one relaxed atomic add per message, and each server
//! instance must report only its own figures (tests run several servers in one process,
//! which a process-global recorder would mix).

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

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
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Renders every metric in the Prometheus text exposition format. `django_published`
    /// is the Django bridge's count of messages it published (0 without the bridge).
    pub fn render(&self, extra: &[(&str, &str, u64)], django_published: u64) -> String {
        let mut out = String::with_capacity(2048);
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
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
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
        ];
        for (name, help, value) in counters {
            let value = value.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let api = self.messages_published.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP herald_messages_published_total Messages published through this node, by \
             source: the publish API, or Django through the bridge.\n\
             # TYPE herald_messages_published_total counter\n\
             herald_messages_published_total{{source=\"api\"}} {api}\n\
             herald_messages_published_total{{source=\"django\"}} {django_published}"
        );
        for (name, help, value) in extra {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}
