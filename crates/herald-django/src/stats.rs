//! Counters of the bridge, and the plain snapshot the server exports as metrics.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the bridge's counters (monotonic since start) and gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DjangoStats {
    /// Messages taken from Redis for herald (core: popped by this node; pubsub: received
    /// by this node, including the ones another node delivers).
    pub received: u64,
    /// Publishes into herald's layer (one per herald group a message named).
    pub published: u64,
    /// Messages with neither `text` (str) nor `bytes` (bin): not deliverable as a frame.
    pub dropped_no_payload: u64,
    /// Messages that could not be decoded (prefix, keys, msgpack, shape, unknown target).
    pub decode_errors: u64,
    /// Publishes into herald's layer that failed after retrying.
    pub publish_failures: u64,
    /// pubsub: messages another node delivered (this node lost the claim), or herald's
    /// own messages heard back.
    pub skipped: u64,
    /// Redis keys written by `group_send` (one per Django process queue or pub/sub publish).
    pub sent: u64,
    /// Keys `group_send` skipped because they were at capacity (Django would drop the same).
    pub send_capacity_drops: u64,
    /// `group_send` calls that failed against Redis.
    pub send_errors: u64,
    /// core: the largest backlog (ZCARD) of herald's queue key over all shards at the last
    /// check.
    pub backlog: u64,
    /// core: the capacity Django applies to herald's queue key (`django_capacity`).
    pub backlog_capacity: u64,
    /// Herald groups this node currently holds active.
    pub active_groups: u64,
    /// Messages from Django larger than the payload limit: dropped, never delivered.
    pub dropped_oversized: u64,
    /// Messages whose `payload = "event"` rendering failed (a `bytes` value or a
    /// non-string key): dropped.
    pub dropped_unrenderable: u64,
    /// Sends not encrypted (and not sent) because the OS random generator failed.
    pub encrypt_failures: u64,
    /// core: refreshes that found herald's membership gone and re-added it.
    pub membership_repairs: u64,
    /// core: refreshes that found the group key's TTL cut short (a Django `group_add`)
    /// and re-armed it.
    pub membership_ttl_repairs: u64,
    /// core: times herald's queue was seen at or over `django_capacity` (each is a burst in
    /// which Django's `group_send` dropped messages for herald silently).
    pub capacity_reached: u64,
    /// core: unexpired messages in herald's queue at the last check (ZCOUNT, the way
    /// channels_redis counts for its capacity check), largest over shards.
    pub queue_depth: u64,
    /// core: `django_capacity`.
    pub django_capacity: u64,
    /// core: messages not published again because a node had published them already (a
    /// queue takeover, or a retried publish that had gone through).
    pub duplicates_skipped: u64,
}

/// The live counters. Relaxed ordering everywhere: each counter is independent and only
/// read for reporting, so no ordering with other memory is needed.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) received: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) dropped_no_payload: AtomicU64,
    pub(crate) decode_errors: AtomicU64,
    pub(crate) publish_failures: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) send_capacity_drops: AtomicU64,
    pub(crate) send_errors: AtomicU64,
    pub(crate) backlog: AtomicU64,
    pub(crate) backlog_capacity: AtomicU64,
    pub(crate) dropped_oversized: AtomicU64,
    pub(crate) dropped_unrenderable: AtomicU64,
    pub(crate) encrypt_failures: AtomicU64,
    pub(crate) membership_repairs: AtomicU64,
    pub(crate) membership_ttl_repairs: AtomicU64,
    pub(crate) capacity_reached: AtomicU64,
    pub(crate) queue_depth: AtomicU64,
    pub(crate) django_capacity: AtomicU64,
    pub(crate) duplicates_skipped: AtomicU64,
    /// `type` values already logged as undeliverable, so each is logged once. Bounded:
    /// past `MAX_LOGGED_TYPES` distinct values, new ones are only counted.
    logged_types: Mutex<HashSet<String>>,
}

const MAX_LOGGED_TYPES: usize = 256;

pub(crate) fn bump(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed) + 1
}

impl Counters {
    pub(crate) fn snapshot(&self, active_groups: u64) -> DjangoStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DjangoStats {
            received: get(&self.received),
            published: get(&self.published),
            dropped_no_payload: get(&self.dropped_no_payload),
            decode_errors: get(&self.decode_errors),
            publish_failures: get(&self.publish_failures),
            skipped: get(&self.skipped),
            sent: get(&self.sent),
            send_capacity_drops: get(&self.send_capacity_drops),
            send_errors: get(&self.send_errors),
            backlog: get(&self.backlog),
            backlog_capacity: get(&self.backlog_capacity),
            active_groups,
            dropped_oversized: get(&self.dropped_oversized),
            dropped_unrenderable: get(&self.dropped_unrenderable),
            encrypt_failures: get(&self.encrypt_failures),
            membership_repairs: get(&self.membership_repairs),
            membership_ttl_repairs: get(&self.membership_ttl_repairs),
            capacity_reached: get(&self.capacity_reached),
            queue_depth: get(&self.queue_depth),
            django_capacity: get(&self.django_capacity),
            duplicates_skipped: get(&self.duplicates_skipped),
        }
    }

    /// Counts an encryption that failed for want of OS randomness; logs the 1st, 2nd,
    /// 4th... (once per burst, yet a lasting failure stays visible).
    pub(crate) fn encrypt_failure(&self) {
        let n = bump(&self.encrypt_failures);
        if n.is_power_of_two() {
            tracing::error!(
                count = n,
                "django send not encrypted: the OS random generator failed; message not sent"
            );
        }
    }

    /// Counts a message over the payload limit; logs the 1st, 2nd, 4th...
    pub(crate) fn oversized(&self, size: usize, limit: usize) {
        let n = bump(&self.dropped_oversized);
        if n.is_power_of_two() {
            tracing::warn!(
                size,
                limit,
                count = n,
                "django message larger than the payload limit (limits.max_publish_bytes): dropped"
            );
        }
    }

    /// Counts a message `payload = "event"` cannot render; logs the 1st, 2nd, 4th...
    pub(crate) fn unrenderable(&self, why: &str) {
        let n = bump(&self.dropped_unrenderable);
        if n.is_power_of_two() {
            tracing::warn!(
                count = n,
                why,
                "django message cannot be rendered as a JSON event: dropped"
            );
        }
    }

    /// Counts a message without `text`/`bytes` and logs the first one of each `type`.
    pub(crate) fn no_payload(&self, msg_type: Option<&str>) {
        bump(&self.dropped_no_payload);
        let msg_type = msg_type.unwrap_or("<no type>");
        let first = {
            // A poisoned lock only means another thread panicked while inserting a
            // string; the set is still usable.
            let mut seen = self
                .logged_types
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            seen.len() < MAX_LOGGED_TYPES && seen.insert(msg_type.to_owned())
        };
        if first {
            tracing::warn!(
                msg_type,
                "django message has neither `text` (str) nor `bytes` (bin); not delivered \
                 (logged once per type, counted in dropped_no_payload)"
            );
        }
    }

    /// Counts a decode error; logs the 1st, 2nd, 4th, 8th... so a flood of bad messages
    /// cannot flood the log, yet a persistent problem stays visible.
    pub(crate) fn decode_error(&self, error: &dyn std::fmt::Display) {
        let n = bump(&self.decode_errors);
        if n.is_power_of_two() {
            tracing::warn!(%error, count = n, "cannot decode a django message");
        }
    }
}
