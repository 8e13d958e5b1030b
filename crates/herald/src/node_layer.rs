//! `NodeLayer`: the layer chosen by configuration, as one concrete type.
//!
//! An enum rather than `dyn Layer` (the trait's async methods are not object-safe) or a
//! generic server (which would thread a type parameter through every module).

use herald_core::memory::MemoryLayerConfig;
use herald_core::{
    GroupName, History, HistoryConfig, Incoming, KeyedItem, Layer, LayerError, LocalPresence,
    MemoryLayer, Payload, Position, Presence, Published,
};
use herald_redis::{RedisLayer, RedisLayerConfig};

use crate::config::{Config, LayerKind};

/// The layer this node runs on.
#[derive(Clone, Debug)]
pub enum NodeLayer {
    /// One process.
    Memory(MemoryLayer),
    /// Several nodes sharing groups through Redis.
    Redis(RedisLayer),
}

impl NodeLayer {
    /// Builds the layer `config` asks for.
    pub fn from_config(config: &Config) -> Result<(Self, Incoming), String> {
        let history = HistoryConfig {
            max_len: config.history.size,
            max_age: config.history.ttl,
            max_bytes: config.history.max_bytes,
        };
        match config.layer.kind {
            LayerKind::Memory => {
                let (layer, incoming) = MemoryLayer::new(MemoryLayerConfig {
                    history,
                    max_total_bytes: config.history.max_total_bytes,
                    max_groups: config.history.max_groups,
                    ..MemoryLayerConfig::default()
                });
                Ok((Self::Memory(layer), incoming))
            }
            LayerKind::Redis => {
                let url = config.layer.url.clone().unwrap_or_default();
                let redis = RedisLayerConfig::new(url)
                    .with_prefix(config.layer.prefix.clone())
                    .with_probe_interval(config.layer.probe_interval)
                    .with_history(history);
                let redis = RedisLayerConfig {
                    publish_in_flight: config.layer.publish_in_flight,
                    ..redis
                };
                let (layer, incoming) = RedisLayer::new(redis).map_err(|e| e.to_string())?;
                Ok((Self::Redis(layer), incoming))
            }
        }
    }
}

impl Layer for NodeLayer {
    async fn publish(&self, group: &GroupName, payload: Payload) -> Result<Position, LayerError> {
        match self {
            Self::Memory(l) => l.publish(group, payload).await,
            Self::Redis(l) => l.publish(group, payload).await,
        }
    }

    async fn publish_once(
        &self,
        group: &GroupName,
        payload: Payload,
        id: &str,
        window: std::time::Duration,
    ) -> Result<Option<Position>, LayerError> {
        match self {
            Self::Memory(l) => l.publish_once(group, payload, id, window).await,
            Self::Redis(l) => l.publish_once(group, payload, id, window).await,
        }
    }

    async fn publish_batch(
        &self,
        items: Vec<(GroupName, Payload)>,
    ) -> Result<Vec<Position>, (usize, LayerError)> {
        match self {
            Self::Memory(l) => l.publish_batch(items).await,
            Self::Redis(l) => l.publish_batch(items).await,
        }
    }

    async fn publish_idempotent(
        &self,
        items: Vec<KeyedItem>,
        window: std::time::Duration,
    ) -> Result<Vec<Published>, (usize, LayerError)> {
        match self {
            Self::Memory(l) => l.publish_idempotent(items, window).await,
            Self::Redis(l) => l.publish_idempotent(items, window).await,
        }
    }

    async fn subscribe(&self, group: &GroupName) -> Result<(), LayerError> {
        match self {
            Self::Memory(l) => l.subscribe(group).await,
            Self::Redis(l) => l.subscribe(group).await,
        }
    }

    async fn unsubscribe(&self, group: &GroupName) -> Result<(), LayerError> {
        match self {
            Self::Memory(l) => l.unsubscribe(group).await,
            Self::Redis(l) => l.unsubscribe(group).await,
        }
    }

    async fn update_subscriptions(
        &self,
        subscribe: &[GroupName],
        unsubscribe: &[GroupName],
    ) -> Result<(), LayerError> {
        match self {
            Self::Memory(l) => l.update_subscriptions(subscribe, unsubscribe).await,
            Self::Redis(l) => l.update_subscriptions(subscribe, unsubscribe).await,
        }
    }

    async fn history(
        &self,
        group: &GroupName,
        since: Option<&Position>,
    ) -> Result<History, LayerError> {
        match self {
            Self::Memory(l) => l.history(group, since).await,
            Self::Redis(l) => l.history(group, since).await,
        }
    }

    async fn presence_update(
        &self,
        group: &GroupName,
        local: &LocalPresence,
        ttl: std::time::Duration,
    ) -> Result<(), LayerError> {
        match self {
            Self::Memory(l) => l.presence_update(group, local, ttl).await,
            Self::Redis(l) => l.presence_update(group, local, ttl).await,
        }
    }

    async fn presence(&self, group: &GroupName) -> Result<Presence, LayerError> {
        match self {
            Self::Memory(l) => l.presence(group).await,
            Self::Redis(l) => l.presence(group).await,
        }
    }

    async fn occupy(&self, group: &GroupName) -> Result<bool, LayerError> {
        match self {
            Self::Memory(l) => l.occupy(group).await,
            Self::Redis(l) => l.occupy(group).await,
        }
    }

    async fn vacate(
        &self,
        group: &GroupName,
        delay: std::time::Duration,
    ) -> Result<bool, LayerError> {
        match self {
            Self::Memory(l) => l.vacate(group, delay).await,
            Self::Redis(l) => l.vacate(group, delay).await,
        }
    }

    async fn occupied(&self, limit: usize) -> Result<Vec<GroupName>, LayerError> {
        match self {
            Self::Memory(l) => l.occupied(limit).await,
            Self::Redis(l) => l.occupied(limit).await,
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Self::Memory(l) => l.is_ready(),
            Self::Redis(l) => l.is_ready(),
        }
    }
}

impl NodeLayer {
    /// Whether this node wants `group`'s messages: the layer's own record of the last
    /// `subscribe`/`unsubscribe`, whether or not the backend confirmed it yet. The
    /// subscriptions task keeps no copy of it, so the two can never disagree.
    pub fn is_subscribed(&self, group: &GroupName) -> bool {
        match self {
            Self::Memory(l) => l.is_subscribed(group),
            Self::Redis(l) => l.is_subscribed(group),
        }
    }

    /// Counters of the backend, for `/metrics`: (name, help, value).
    pub fn stats(&self) -> Vec<(&'static str, &'static str, u64)> {
        match self {
            Self::Memory(l) => {
                let s = l.stats();
                vec![
                    (
                        "herald_history_groups",
                        "Groups whose position and history this node keeps (gauge).",
                        s.groups,
                    ),
                    (
                        "herald_history_bytes",
                        "Bytes of history held: payloads plus a fixed cost per message (gauge).",
                        s.bytes,
                    ),
                    (
                        "herald_history_evicted_total",
                        "Histories dropped whole to stay under history.max_total_bytes or history.max_groups.",
                        s.evicted,
                    ),
                ]
            }
            Self::Redis(l) => {
                let s = l.stats();
                let mut metrics = vec![
                    (
                        "herald_redis_reconnects_total",
                        "Reconnections to Redis.",
                        s.reconnects,
                    ),
                    (
                        "herald_redis_probe_failures_total",
                        "Pub/sub readiness probes unanswered for a whole probe interval.",
                        s.probe_failures,
                    ),
                    (
                        "herald_redis_probe_round_trip_microseconds",
                        "The last pub/sub readiness probe's round trip (gauge).",
                        u64::try_from(s.probe_round_trip.as_micros()).unwrap_or(u64::MAX),
                    ),
                    (
                        "herald_redis_lost_writes_total",
                        "Groups whose acknowledged writes Redis lost (a failover), given a new epoch so their clients reset.",
                        s.lost_writes,
                    ),
                    (
                        "herald_redis_decode_errors_total",
                        "Malformed messages read from Redis and skipped.",
                        s.decode_errors,
                    ),
                ];
                // Redis Cluster: per-shard figures summed (`RedisLayer::shard_stats` has
                // each shard's); all zero on a single Redis.
                let shards = l.shard_stats();
                let sum = |f: fn(&herald_redis::ShardStats) -> u64| {
                    shards.iter().map(f).fold(0, u64::saturating_add)
                };
                metrics.extend([
                    (
                        "herald_redis_cluster_shards",
                        "Redis Cluster shards in the current slot map (gauge; 0 on a single Redis).",
                        u64::try_from(shards.len()).unwrap_or(u64::MAX),
                    ),
                    (
                        "herald_redis_cluster_shards_unhealthy",
                        "Redis Cluster shards whose subscriber is down or whose last probe went unanswered (gauge).",
                        sum(|s| u64::from(!s.healthy)),
                    ),
                    (
                        "herald_redis_cluster_gap_fills_total",
                        "Redis Cluster: delivery gaps (a subscription that moved shards, skipped offsets) repaired from history.",
                        s.gap_fills,
                    ),
                    (
                        "herald_redis_cluster_gap_fill_failures_total",
                        "Redis Cluster: delivery gaps history could not cover (left to the connections' checks).",
                        s.gap_fill_failures,
                    ),
                    (
                        "herald_redis_publish_calls_total",
                        "Publish script calls to Redis; fewer than messages published when concurrent publishes coalesced.",
                        s.publish_calls,
                    ),
                ]);
                metrics
            }
        }
    }

    /// Per-shard metrics of a Redis Cluster layer, labelled `shard="host:port"` (the
    /// shard's master); none on other layers.
    pub fn shard_families(&self) -> Vec<crate::metrics::Family> {
        use crate::metrics::{Family, Kind, value};
        let Self::Redis(l) = self else {
            return Vec::new();
        };
        let shards = l.shard_stats();
        if shards.is_empty() {
            return Vec::new();
        }
        let family = |name, help, kind, f: fn(&herald_redis::ShardStats) -> u64| Family {
            name,
            help,
            kind,
            samples: shards
                .iter()
                .map(|s| {
                    let label = (
                        std::borrow::Cow::Borrowed("shard"),
                        std::borrow::Cow::Owned(s.addr.clone()),
                    );
                    (vec![label], value(f(s)))
                })
                .collect(),
        };
        vec![
            family(
                "herald_redis_shard_healthy",
                "Redis Cluster shard: 1 while its subscriber is up and its last probe answered in time (gauge).",
                Kind::Gauge,
                |s| u64::from(s.healthy),
            ),
            family(
                "herald_redis_shard_probe_failures_total",
                "Redis Cluster shard: probes unanswered for a whole probe interval.",
                Kind::Counter,
                |s| s.probe_failures,
            ),
            family(
                "herald_redis_shard_probe_round_trip_microseconds",
                "Redis Cluster shard: the last probe's round trip (gauge).",
                Kind::Gauge,
                |s| u64::try_from(s.probe_round_trip.as_micros()).unwrap_or(u64::MAX),
            ),
            family(
                "herald_redis_shard_reconnects_total",
                "Redis Cluster shard: subscriber connections re-made after a loss.",
                Kind::Counter,
                |s| s.reconnects,
            ),
        ]
    }

    /// `"memory"` or `"redis"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(_) => "redis",
        }
    }

    /// Stops background work (the Redis connections); the memory layer has none.
    pub async fn close(&self) {
        if let Self::Redis(l) = self {
            l.close().await;
        }
    }
}
