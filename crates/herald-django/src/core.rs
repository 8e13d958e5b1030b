//! The `RedisChannelLayer` (sorted-set) backend: herald's shared queue, its membership in
//! channels groups, and `group_send` into Django consumers' queues.
//!
//! # Receiving, exactly once across nodes
//!
//! Every herald node uses the same process-specific channel prefix, so a herald group
//! `g` (mapped to channels group `c`) is one member `specific.<cp>!g` of `asgi:group:c`,
//! however many nodes hold `g`. Django's `group_send` therefore writes **one** copy of each
//! message into herald's one queue `asgispecific.<cp>!`, and every node drains that queue
//! with `BZPOPMIN`: Redis hands each member to exactly one popper, and that node publishes
//! it into herald's layer, which fans it out to all nodes. Django's `send()` to one of
//! herald's channels may land on another shard (channels_redis hashes the full name
//! there), so each node drains the queue on every shard.
//!
//! A node that dies between the pop and the publish loses that message (at most once):
//! channels_redis' `$inflight` backup is per process and is not used here.
//!
//! # Membership lease
//!
//! channels_redis prunes members whose score is at most `now - group_expiry`. A node that
//! has local members of `g` writes `ZADD GT` with score `now - group_expiry + lease`, every
//! `membership_refresh` seconds, so the membership stays while any node refreshes it and
//! lapses `lease` seconds after the last refresh by any node. Nodes never `ZREM` on a
//! local leave: another node may still have members. `GT` keeps a slow node's write from
//! moving the score back.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use herald_core::{GroupName, Layer, Payload, PayloadKind};
use redis::aio::{ConnectionManager, MultiplexedConnection};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::bridge::{SendReport, Shared};
use crate::codec::{Body, ChannelsMessage, Targets, unix_now_f64};
use crate::error::DjangoError;
use crate::ingest::{Ingest, payload_of};
use crate::keys::consistent_hash;
use crate::stats::bump;

/// How long one `BZPOPMIN` blocks. It bounds how long a drain loop takes to notice
/// shutdown: the loop never abandons a pop in flight, because a member Redis already
/// removed would then be lost.
const POP_BLOCK_SECS: f64 = 1.0;
/// Response timeout of the dedicated drain connection: longer than the block, or every
/// idle pop would end in a client-side timeout (the redis-py 8 bug, CHANNELS_REDIS.md §11).
const POP_RESPONSE_TIMEOUT: Duration = Duration::from_secs(11);

/// A `BZPOPMIN` reply: nil on timeout, else the key, the member and its score.
type Popped = Option<(Vec<u8>, Vec<u8>, String)>;

/// The `group_send` insert, one call per shard. KEYS: the destination queues. ARGV: one
/// message per key, one capacity per key, the score (sender's clock), then `expiry`.
/// Per key: drop expired messages, then add the message unless the queue is full, and
/// re-arm the key's TTL. Returns 1 for each key that was full (Django drops those too).
const SEND_SCRIPT: &str = r#"
local n = #KEYS
local score = ARGV[2 * n + 1]
local expiry = tonumber(ARGV[2 * n + 2])
local cutoff = math.floor(tonumber(score)) - expiry
local full = {}
for i = 1, n do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, cutoff)
    if redis.call('ZCARD', KEYS[i]) < tonumber(ARGV[n + i]) then
        redis.call('ZADD', KEYS[i], score, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
        full[i] = 0
    else
        full[i] = 1
    end
end
return full
"#;

/// The send script, hashed once.
static SEND: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SEND_SCRIPT));

fn redis_error(shard: usize) -> impl FnOnce(redis::RedisError) -> DjangoError {
    move |source| DjangoError::Redis { shard, source }
}

/// Writes (or refreshes) herald's membership for `groups`, one pipeline per shard.
pub(crate) async fn write_memberships(
    shared: &Shared,
    groups: &[GroupName],
) -> Result<(), DjangoError> {
    let config = &shared.config;
    // Integer arithmetic in f64 is exact here; the score only has to compare correctly
    // with int(now) - group_expiry on the Django side.
    let score = unix_now_f64() - config.group_expiry as f64 + config.membership_lease as f64;
    // The key must outlive the member, whichever of the two is longer.
    let ttl = config.group_expiry.max(config.membership_lease);
    let mut per_shard: HashMap<usize, redis::Pipeline> = HashMap::new();
    for group in groups {
        let Some(channels_group) = shared.map.to_channels(group) else {
            return Err(DjangoError::Unmappable(group.clone()));
        };
        let shard = consistent_hash(&channels_group, shared.shards.len());
        let key = shared.keys.group_key(&channels_group);
        per_shard
            .entry(shard)
            .or_default()
            .cmd("ZADD")
            .arg(&key)
            .arg("GT")
            .arg(score)
            .arg(shared.keys.herald_member(group.as_str()))
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(ttl)
            .ignore();
    }
    for (shard, pipe) in per_shard {
        let mut conn = shared.shards[shard].conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(redis_error(shard))?;
    }
    Ok(())
}

/// Django's `group_send`, done by herald: prune the group, bucket its members by queue
/// key, and insert one message per key with the capacity check. Herald's own members are
/// skipped: herald's subscribers already get the message from herald's layer.
pub(crate) async fn group_send(
    shared: &Shared,
    group: &GroupName,
    payload: &Payload,
) -> Result<SendReport, DjangoError> {
    let config = &shared.config;
    let channels_group = shared
        .map
        .to_channels(group)
        .ok_or_else(|| DjangoError::Unmappable(group.clone()))?;
    let group_shard = consistent_hash(&channels_group, shared.shards.len());
    let group_key = shared.keys.group_key(&channels_group);
    let now = unix_now_f64();
    let cutoff = (now as u64).saturating_sub(config.group_expiry);
    let mut conn = shared.shards[group_shard].conn.clone();
    let (members,): (Vec<Vec<u8>>,) = redis::pipe()
        .cmd("ZREMRANGEBYSCORE")
        .arg(&group_key)
        .arg(0)
        .arg(cutoff)
        .ignore()
        .cmd("ZRANGE")
        .arg(&group_key)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .map_err(redis_error(group_shard))?;

    // Bucket by queue key, in first-seen order (the order Django builds them in).
    struct Bucket {
        shard: usize,
        key: String,
        capacity: u64,
        channels: Vec<String>,
    }
    let mut buckets: Vec<Bucket> = Vec::new();
    let mut index_of: HashMap<String, usize> = HashMap::new();
    let mut report = SendReport::default();
    for member in members {
        // Members are channel names, which Django only ever writes as ASCII.
        let Ok(channel) = String::from_utf8(member) else {
            continue;
        };
        if shared.keys.herald_group_of(&channel).is_some() {
            continue;
        }
        report.members += 1;
        let key = shared.keys.queue_key_of(&channel);
        match index_of.get(&key) {
            Some(&i) => buckets[i].channels.push(channel),
            None => {
                index_of.insert(key.clone(), buckets.len());
                buckets.push(Bucket {
                    shard: consistent_hash(
                        crate::keys::non_local_name(&channel),
                        shared.shards.len(),
                    ),
                    key,
                    capacity: config.capacity_of(&channel),
                    channels: vec![channel],
                });
            }
        }
    }
    if buckets.is_empty() {
        return Ok(report);
    }

    let body = match payload.kind() {
        PayloadKind::Text => Body::Text(String::from_utf8_lossy(payload.data()).into_owned()),
        PayloadKind::Binary => Body::Bytes(payload.data().clone()),
    };
    let mut per_shard: HashMap<usize, Vec<Bucket>> = HashMap::new();
    for bucket in buckets {
        per_shard.entry(bucket.shard).or_default().push(bucket);
    }
    for (shard, buckets) in per_shard {
        let mut invocation = SEND.prepare_invoke();
        for bucket in &buckets {
            invocation.key(&bucket.key);
        }
        for bucket in &buckets {
            let message = ChannelsMessage {
                msg_type: Some(config.message_type.clone()),
                body: Some(body.clone()),
                // Always an array, even for one channel, as Django's group_send does.
                targets: Targets::Many(bucket.channels.clone()),
            };
            invocation.arg(shared.codec.encode(&message));
        }
        for bucket in &buckets {
            invocation.arg(bucket.capacity);
        }
        // Display of f64 is the shortest text that round-trips, like Python's repr.
        invocation.arg(now.to_string()).arg(config.expiry);
        let mut conn = shared.shards[shard].conn.clone();
        let full: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error(shard))?;
        for (bucket, was_full) in buckets.iter().zip(full) {
            if was_full == 1 {
                report.full += 1;
                bump(&shared.counters.send_capacity_drops);
                tracing::warn!(
                    key = %bucket.key,
                    capacity = bucket.capacity,
                    "django queue full: message for {} consumer(s) dropped",
                    bucket.channels.len()
                );
            } else {
                report.queued += 1;
                bump(&shared.counters.sent);
            }
        }
    }
    Ok(report)
}

/// Drains herald's queue on one shard until shutdown, reconnecting with backoff.
pub(crate) async fn drain_shard<L: Layer>(
    shared: Arc<Shared>,
    ingest: Arc<Ingest<L>>,
    shard: usize,
    shutdown: CancellationToken,
) {
    let key = shared.keys.herald_queue_key();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut conn: Option<MultiplexedConnection> = None;
    let mut failing = false;
    while !shutdown.is_cancelled() {
        let mut c = match conn.take() {
            Some(c) => c,
            None => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(5)))
                    .set_response_timeout(Some(POP_RESPONSE_TIMEOUT));
                let client = &shared.shards[shard].client;
                // Cancelling a connect loses nothing, so it may race the shutdown.
                let connected = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    c = client.get_multiplexed_async_connection_with_config(&config) => c,
                };
                match connected {
                    Ok(c) => c,
                    Err(error) => {
                        if !failing {
                            tracing::warn!(shard, %error, "django bridge cannot reach redis; retrying");
                            failing = true;
                        }
                        if !backoff.wait(&shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            }
        };
        let popped: redis::RedisResult<Popped> = redis::cmd("BZPOPMIN")
            .arg(&key)
            .arg(POP_BLOCK_SECS)
            .query_async(&mut c)
            .await;
        match popped {
            Ok(popped) => {
                if failing {
                    tracing::info!(shard, "django bridge reconnected to redis");
                    failing = false;
                }
                backoff.reset();
                conn = Some(c);
                if let Some((_, member, _)) = popped {
                    handle_member(&shared, &ingest, &member).await;
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(shard, %error, "django bridge lost redis; reconnecting");
                    failing = true;
                }
                if !backoff.wait(&shutdown).await {
                    break;
                }
            }
        }
    }
}

/// One member popped from herald's queue: decode, map targets to herald groups, publish.
async fn handle_member<L: Layer>(shared: &Shared, ingest: &Ingest<L>, member: &[u8]) {
    bump(&shared.counters.received);
    let message = match shared.codec.decode(member) {
        Ok(message) => message,
        Err(error) => {
            shared.counters.decode_error(&error);
            return;
        }
    };
    let mut groups: Vec<GroupName> = Vec::new();
    for channel in message.targets.iter() {
        let group = shared
            .keys
            .herald_group_of(channel)
            .and_then(|g| GroupName::new(g).ok());
        match group {
            Some(group) if !groups.contains(&group) => groups.push(group),
            Some(_) => {}
            None => shared
                .counters
                .decode_error(&format_args!("target {channel:?} is not a herald channel")),
        }
    }
    if matches!(message.targets, Targets::None) {
        shared
            .counters
            .decode_error(&"message in herald's queue has no __asgi_channel__");
        return;
    }
    if groups.is_empty() {
        return;
    }
    let Some(payload) = payload_of(message, &shared.counters) else {
        return;
    };
    ingest.publish(&groups, &payload).await;
}

/// Refreshes this node's memberships every `membership_refresh` seconds until shutdown.
pub(crate) async fn refresh_memberships(
    shared: Arc<Shared>,
    active: Arc<crate::bridge::ActiveGroups>,
    shutdown: CancellationToken,
) {
    let period = Duration::from_secs(shared.config.membership_refresh);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    // After a stall, one refresh is enough; a burst would only repeat the same writes.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let groups = active.snapshot().await;
        if groups.is_empty() {
            continue;
        }
        if let Err(error) = write_memberships(&shared, &groups).await {
            tracing::warn!(%error, groups = groups.len(), "cannot refresh django group memberships; retrying next period");
        }
    }
}

/// Samples the backlog of herald's queue (ZCARD on every shard) into the stats, and warns
/// when it nears the capacity Django applies to it: past that, Django's `group_send` drops
/// herald-bound messages silently.
pub(crate) async fn watch_backlog(shared: Arc<Shared>, shutdown: CancellationToken) {
    let key = shared.keys.herald_queue_key();
    // Django looks up the capacity by a member's full name; any herald member name
    // matches the same `channel_capacity` globs as long as they are written for the
    // `specific.<cp>!` prefix, which is what the crate docs recommend.
    let capacity = shared
        .config
        .capacity_of(&format!("{}probe", shared.keys.herald_non_local()));
    shared
        .counters
        .backlog_capacity
        .store(capacity, std::sync::atomic::Ordering::Relaxed);
    let period = Duration::from_secs(shared.config.backlog_check);
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let mut worst = 0u64;
        for (index, shard) in shared.shards.iter().enumerate() {
            let mut conn: ConnectionManager = shard.conn.clone();
            match redis::cmd("ZCARD")
                .arg(&key)
                .query_async::<u64>(&mut conn)
                .await
            {
                Ok(n) => worst = worst.max(n),
                Err(error) => tracing::debug!(shard = index, %error, "cannot read django backlog"),
            }
        }
        shared
            .counters
            .backlog
            .store(worst, std::sync::atomic::Ordering::Relaxed);
        // Warn once when crossing 80 %, again only after it fell below 50 %.
        if !warned && worst * 5 >= capacity * 4 {
            warned = true;
            tracing::warn!(
                backlog = worst,
                capacity,
                key = %key,
                "herald's django queue is nearly full; Django drops group_send messages \
                 silently at capacity (raise channel_capacity for it on the Django side)"
            );
        } else if warned && worst * 2 < capacity {
            warned = false;
        }
    }
}
