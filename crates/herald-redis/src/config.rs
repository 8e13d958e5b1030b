//! `RedisLayerConfig`: the settings of a Redis layer, with their defaults.

use std::time::Duration;

use herald_core::HistoryConfig;

use crate::RedisLayerError;

/// Longest history age accepted: Redis key TTLs beyond this are almost surely a mistake.
const MAX_HISTORY_AGE: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Settings of a [`RedisLayer`](crate::RedisLayer).
#[derive(Clone, Debug)]
pub struct RedisLayerConfig {
    /// The Redis server, `redis://[user:password@]host[:port][/db]`, or a Redis Cluster,
    /// `redis+cluster://[user:password@]host:port,host:port` (seed nodes; see the crate
    /// doc). Default `redis://127.0.0.1:6379/0`. The database number applies to the history keys only:
    /// pub/sub channels are server-wide in Redis, so deployments sharing one Redis must
    /// use distinct prefixes, not just distinct databases.
    pub url: String,
    /// Prefix of every key and channel name (see the crate doc). Default `herald`. Nodes
    /// share groups only when they use the same prefix on the same Redis.
    pub prefix: String,
    /// History bounds per group: `max_len` messages (default 1000) and `max_age`
    /// (default 24 h), which is also the TTL of an idle group's keys.
    pub history: HistoryConfig,
    /// Capacity of the `Incoming` channel, in messages. Default 4096. When it is full the
    /// subscriber stops reading from Redis until there is room; Redis holds the backlog
    /// (and drops a subscriber that exceeds its `client-output-buffer-limit pubsub`, after
    /// which the layer reconnects and clients recover the gap from history).
    pub incoming_capacity: usize,
    /// Longest a publish, history read or subscription confirmation waits for Redis
    /// before failing with `LayerError::Unavailable`. Default 1 s.
    pub command_timeout: Duration,
    /// Longest one connection attempt may take. Default 1 s.
    pub connect_timeout: Duration,
    /// First delay between reconnection attempts; it doubles, with jitter, up to
    /// `reconnect_max_delay`. Default 50 ms.
    pub reconnect_min_delay: Duration,
    /// Longest delay between reconnection attempts. Default 2 s.
    pub reconnect_max_delay: Duration,
    /// How often an idle subscriber connection is checked with `PING`; it is declared
    /// lost after two intervals without any answer. Default 5 s.
    pub health_check_interval: Duration,
    /// How often the pub/sub path is proven: a probe message is published on this node's
    /// private channel and must come back through the subscriber connection. A probe
    /// unanswered for one interval makes the layer not ready (`/readyz` 503), so a stalled
    /// subscriber is reported within two intervals. Default 1 s.
    pub probe_interval: Duration,
    /// Most messages in one publish script call: concurrent publishes are coalesced into
    /// one call up to this many messages (a larger `publish_batch` chunk goes alone).
    /// Default 256. Bounds how long one call keeps Redis busy.
    pub publish_batch_max: usize,
    /// Most payload bytes in one publish script call (a larger request goes alone).
    /// Default 1 MiB.
    pub publish_batch_max_bytes: usize,
    /// Publish script calls outstanding at once on the command connection; while they
    /// are, new publishes queue and go out together when one returns. Default 4: with few
    /// concurrent publishers, 1 hands every batch through the flusher task for little
    /// Redis CPU saved; with many, batches form either way (see bench/PROFILE.md). On a Redis
    /// Cluster at least 16, so that calls to different shards overlap.
    pub publish_in_flight: usize,
    /// Messages queued or in flight for publishing; publishers beyond it wait up to
    /// `command_timeout` for room, then fail with `Unavailable`. Default 4096.
    pub publish_queue: usize,
}

impl Default for RedisLayerConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".to_owned(),
            prefix: "herald".to_owned(),
            history: HistoryConfig::default(),
            incoming_capacity: 4096,
            command_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            reconnect_min_delay: Duration::from_millis(50),
            reconnect_max_delay: Duration::from_secs(2),
            health_check_interval: Duration::from_secs(5),
            probe_interval: Duration::from_secs(1),
            publish_batch_max: 256,
            publish_batch_max_bytes: 1 << 20,
            publish_in_flight: 4,
            publish_queue: 4096,
        }
    }
}

impl RedisLayerConfig {
    /// The defaults, with `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Sets the key and channel prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the history bounds.
    pub fn with_history(mut self, history: HistoryConfig) -> Self {
        self.history = history;
        self
    }

    /// Sets how often the pub/sub path is probed.
    pub fn with_probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// Sets the capacity of the `Incoming` channel.
    pub fn with_incoming_capacity(mut self, capacity: usize) -> Self {
        self.incoming_capacity = capacity;
        self
    }

    /// Sets the bounds of publish coalescing: messages and payload bytes per script call,
    /// and calls in flight at once.
    pub fn with_publish_coalescing(
        mut self,
        batch_max: usize,
        batch_max_bytes: usize,
        in_flight: usize,
    ) -> Self {
        self.publish_batch_max = batch_max;
        self.publish_batch_max_bytes = batch_max_bytes;
        self.publish_in_flight = in_flight;
        self
    }

    /// Checks the settings that the URL parser does not.
    pub(crate) fn validate(&self) -> Result<(), RedisLayerError> {
        let fail = |why| Err(RedisLayerError::InvalidConfig(why));
        if self.prefix.is_empty() {
            return fail("prefix must not be empty");
        }
        if self
            .prefix
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return fail("prefix must not contain whitespace or control characters");
        }
        if self.incoming_capacity == 0 {
            return fail("incoming_capacity must be at least 1");
        }
        if self.history.max_age.is_zero() || self.history.max_age > MAX_HISTORY_AGE {
            return fail("history.max_age must be between 1 ms and 10 years");
        }
        if self.command_timeout.is_zero() || self.connect_timeout.is_zero() {
            return fail("command_timeout and connect_timeout must be positive");
        }
        if self.reconnect_min_delay.is_zero() || self.reconnect_min_delay > self.reconnect_max_delay
        {
            return fail("reconnect delays must be positive, min <= max");
        }
        if self.health_check_interval.is_zero() {
            return fail("health_check_interval must be positive");
        }
        if self.publish_batch_max == 0
            || self.publish_batch_max_bytes == 0
            || self.publish_in_flight == 0
            || self.publish_queue == 0
        {
            return fail(
                "publish_batch_max, publish_batch_max_bytes, publish_in_flight and publish_queue must be at least 1",
            );
        }
        if self.probe_interval < Duration::from_millis(10) {
            return fail("probe_interval must be at least 10 ms");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        RedisLayerConfig::default().validate().unwrap();
    }

    #[test]
    fn rejects_out_of_range() {
        let bad = [
            RedisLayerConfig::default().with_prefix(""),
            RedisLayerConfig::default().with_prefix("a b"),
            RedisLayerConfig::default().with_incoming_capacity(0),
            RedisLayerConfig::default().with_probe_interval(Duration::ZERO),
            RedisLayerConfig::default().with_publish_coalescing(0, 1, 1),
            RedisLayerConfig::default().with_publish_coalescing(1, 1, 0),
            RedisLayerConfig::default().with_history(HistoryConfig {
                max_len: 1,
                max_age: Duration::ZERO,
                ..HistoryConfig::default()
            }),
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
