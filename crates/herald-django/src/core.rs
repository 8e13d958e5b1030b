//! The `RedisChannelLayer` (sorted-set) backend: herald's shared queue, its membership in
//! channels groups, and `group_send` into Django consumers' queues.
//!
//! # Receiving, exactly once and in order across nodes
//!
//! Every herald node uses the same process-specific channel prefix, so a herald group
//! `g` (mapped to channels group `c`) is one member `specific.<cp>!g` of `asgi:group:c`,
//! however many nodes hold `g`. Django's `group_send` therefore writes **one** copy of each
//! message into herald's one queue `asgispecific.<cp>!`; one node at a time drains it,
//! under a lease (see "Order" below), and publishes into herald's layer, which fans it
//! out to all nodes. Django's `send()` to one of herald's channels may land on another
//! shard (channels_redis hashes the full name there), so each shard has its own lease.
//!
//! # Order: one drainer per shard under a lease
//!
//! All nodes run the drain loop, but only the node holding the shard's lease (a Redis key
//! with a 1.5 s TTL, renewed by every step) pops. Each step atomically acknowledges the
//! previous message, pops the next (lowest score = earliest `group_send`) and records it
//! as in flight; the holder then publishes it into herald's layer before the next step.
//! Messages are therefore published one at a time in queue order. A holder that stops or
//! dies is replaced about 1.5–1.7 s later; the new holder first publishes the message
//! left in flight, so a killed node loses nothing. A holder whose lease may have lapsed
//! (by its own clock) does not publish what it holds: its next step, not acknowledging,
//! hands the message back if the lease is still its own; otherwise it drops it and the
//! new holder publishes it.
//!
//! Every publish carries the message's id (hash of its score and member), through
//! `Layer::publish_once`: the Redis layer sets a marker key atomically with the publish,
//! so the same message is never published twice, even by a holder that wakes up after a
//! stall longer than the lease and publishes what it held (the marker lives as long as
//! the in-flight record, `expiry + 10` s). Idle, the holder looks at the queue every
//! 10 ms and the others try to take the lease every 150 ms: about 100 small script calls
//! per second per shard for the holder, 7 for each other node.
//!
//! # Membership lease
//!
//! channels_redis prunes members whose score is at most `now - group_expiry`. A node that
//! has local members of `g` writes `ZADD GT` with score `now + membership_lease` every
//! `membership_refresh`, so Django never prunes it while any node refreshes it, whatever
//! `group_expiry` Django uses; it lapses `membership_lease + group_expiry` after the last
//! refresh by any node. Each refresh also re-arms the key's TTL, which a Django consumer's
//! `group_add` cuts to `group_expiry` (hence the refresh period below it), and counts a
//! member found gone or a TTL found cut. Nodes never `ZREM` on a local leave: another node
//! may still have members. `GT` keeps a slow node's write from moving the score back.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use herald_core::{GroupName, Layer, Payload, PayloadKind};
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::bridge::{SendReport, Shared};
use crate::codec::{Body, ChannelsMessage, Event, Targets, unix_now_f64};
use crate::error::DjangoError;
use crate::ingest::{Ingest, payload_for};
use crate::keys::consistent_hash;
use crate::stats::bump;
use herald_core::Backoff;

/// Response timeout of the dedicated drain connection.
const COMMAND_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Whether a membership write is the first one for its groups on this node or a refresh
/// (on a refresh, a member that had to be added again had vanished: that is a repair).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Write {
    First,
    Refresh,
}

/// Writes (or refreshes) herald's membership for `groups`, one pipeline per shard, and
/// re-arms each group key's TTL. On a refresh, notices what someone else did in between:
/// a member that was gone (key expired or pruned: counted in `membership_repairs`, warned
/// once per burst) and a TTL shortened below what herald set (Django's `group_add` sets
/// its own `group_expiry`; counted in `membership_ttl_repairs`).
pub(crate) async fn write_memberships(
    shared: &Shared,
    groups: &[GroupName],
    write: Write,
) -> Result<(), DjangoError> {
    let config = &shared.config;
    // A score in the future: Django prunes members scored at or below
    // int(now) - group_expiry, so this one survives any group_expiry while refreshed.
    let score = unix_now_f64() + config.membership_lease as f64;
    // The key must outlive the member as Django sees it.
    let ttl = config.membership_lease.saturating_add(config.group_expiry);
    // A TTL more than one refresh period (plus slack) below what herald set was cut.
    let shortened_below = ttl
        .saturating_sub(config.effective_refresh().as_secs())
        .saturating_sub(2);
    let mut per_shard: HashMap<usize, (redis::Pipeline, Vec<&GroupName>)> = HashMap::new();
    for group in groups {
        let Some(channels_group) = shared.map.to_channels(group) else {
            return Err(DjangoError::Unmappable(group.clone()));
        };
        let shard = consistent_hash(&channels_group, shared.shards.len());
        let key = shared.keys.group_key(&channels_group);
        let (pipe, names) = per_shard.entry(shard).or_default();
        names.push(group);
        pipe.cmd("TTL")
            .arg(&key)
            .cmd("ZADD")
            .arg(&key)
            .arg("GT")
            .arg(score)
            .arg(shared.keys.herald_member(group.as_str()))
            .cmd("EXPIRE")
            .arg(&key)
            .arg(ttl)
            .ignore();
    }
    for (shard, (pipe, names)) in per_shard {
        let mut conn = shared.conn(shard)?;
        let replies: Vec<i64> = pipe
            .query_async(&mut conn)
            .await
            .map_err(redis_error(shard))?;
        if write == Write::First {
            continue;
        }
        for (group, reply) in names.iter().zip(replies.chunks(2)) {
            let [key_ttl, added] = reply else { continue };
            if *added == 1 {
                let n = bump(&shared.counters.membership_repairs);
                if n.is_power_of_two() {
                    tracing::warn!(
                        %group,
                        repairs = n,
                        "herald's django group membership had vanished (group key expired or \
                         pruned); re-added. Django messages sent meanwhile were not received: \
                         keep membership_refresh below Django's group_expiry"
                    );
                }
            } else if (0..shortened_below as i64).contains(key_ttl) {
                let n = bump(&shared.counters.membership_ttl_repairs);
                tracing::debug!(%group, ttl = key_ttl, repairs = n, "group key TTL was shortened; re-armed");
            }
        }
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
    let mut conn = shared.conn(group_shard)?;
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
                event: Event::default(),
            };
            invocation.arg(
                shared
                    .codec
                    .encode(&message)
                    .inspect_err(|_| shared.counters.encrypt_failure())?,
            );
        }
        for bucket in &buckets {
            invocation.arg(bucket.capacity);
        }
        // Display of f64 is the shortest text that round-trips, like Python's repr.
        invocation.arg(now.to_string()).arg(config.expiry);
        let mut conn = shared.conn(shard)?;
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

/// How long the drain lease lives without a renewal. A stopped or dead holder is
/// replaced this long (plus [`TAKEOVER_POLL`]) after its last step.
const LEASE: Duration = Duration::from_millis(1500);
/// The holder publishes a message only while its lease, by its own clock, has at least
/// this much left; otherwise it asks Redis again first.
const LEASE_MARGIN: Duration = Duration::from_millis(700);
/// How often a node that does not hold the lease tries to take it.
const TAKEOVER_POLL: Duration = Duration::from_millis(150);
/// How long the holder waits before looking again at an empty queue.
const IDLE_POLL: Duration = Duration::from_millis(10);

/// One step of the drain lease, atomic in Redis. KEYS: the lease, the in-flight record
/// (a hash: member `m`, score `s`), the queue. ARGV: this node's token, the lease in ms,
/// the in-flight record's TTL in s, and `1` if the caller published the message in
/// flight (acknowledging it) or `0` if not.
///
/// Takes the lease when nobody holds it. Returns `{0}` when another node holds it. For
/// the holder: `{2, member, score}` when a message is in flight that must be published
/// first (left by a previous holder, or not published by this one); else acknowledges
/// the message in flight, pops the next one into the record and returns
/// `{1, member, score}`, or `{3}` when the queue is empty.
const STEP_SCRIPT: &str = r#"
local holder = redis.call('GET', KEYS[1])
local taken = false
if not holder then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    taken = true
elseif holder ~= ARGV[1] then
    return {0}
else
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local pending = redis.call('HMGET', KEYS[2], 'm', 's')
if pending[1] and (taken or ARGV[4] == '0') then
    return {2, pending[1], pending[2]}
end
redis.call('DEL', KEYS[2])
local popped = redis.call('ZPOPMIN', KEYS[3], 1)
if popped[1] then
    redis.call('HSET', KEYS[2], 'm', popped[1], 's', popped[2])
    redis.call('EXPIRE', KEYS[2], ARGV[3])
    return {1, popped[1], popped[2]}
end
return {3}
"#;

static STEP: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(STEP_SCRIPT));

/// What a lease step answered.
enum Step {
    /// Another node holds the lease.
    NotHolder,
    /// A message to publish (popped now, or still in flight), with its publish id.
    Message(Vec<u8>, String),
    /// The queue is empty.
    Empty,
}

fn parse_step(reply: redis::Value) -> Option<Step> {
    let redis::Value::Array(items) = reply else {
        return None;
    };
    let code = match items.first() {
        Some(redis::Value::Int(code)) => *code,
        _ => return None,
    };
    let bulk = |i: usize| match items.get(i) {
        Some(redis::Value::BulkString(bytes)) => Some(bytes.clone()),
        _ => None,
    };
    match (code, bulk(1), bulk(2)) {
        (0, _, _) => Some(Step::NotHolder),
        (1 | 2, Some(member), Some(score)) => {
            let id = message_id(&member, &score);
            Some(Step::Message(member, id))
        }
        (3, _, _) => Some(Step::Empty),
        _ => None,
    }
}

/// The id a queued message is published under (hex SHA-256 of its score and member):
/// every node computes the same one, and channels_redis' random prefix keeps two equal
/// messages apart.
fn message_id(member: &[u8], score: &[u8]) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(score);
    hash.update(b"\n");
    hash.update(member);
    hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Drains herald's queue on one shard until shutdown, reconnecting with backoff.
///
/// See the module docs, "Order".
pub(crate) async fn drain_shard<L: Layer>(
    shared: Arc<Shared>,
    ingest: Arc<Ingest<L>>,
    shard: usize,
    shutdown: CancellationToken,
) {
    let queue = shared.keys.herald_queue_key();
    let lease_key = format!("{queue}:herald-lease");
    let inflight_key = format!("{queue}:herald-inflight");
    let token = format!("{}-{shard}", shared.node_id);
    let lease_ms = LEASE.as_millis() as u64;
    // The in-flight record must outlive any takeover, and need not outlive the message.
    let inflight_ttl = shared.config.expiry.saturating_add(10);
    let capacity = shared.config.django_capacity;
    // At most 2 s apart: a Redis that comes back is drained within a couple of seconds.
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut conn: Option<MultiplexedConnection> = None;
    let draining = &shared.shards[shard].draining;
    let mut failing = false;
    let mut at_capacity = false;
    let mut holding = false;
    // Whether the message in flight (if any) was published by this node: the next step
    // acknowledges it only then. Starts true: nothing is in hand.
    let mut published = true;
    // How long another node may publish a message this node published already (or the
    // reverse) and have it ignored: the in-flight record's lifetime.
    let once_window = Duration::from_secs(inflight_ttl);
    let mut last_published: Option<String> = None;
    while !shutdown.is_cancelled() {
        let mut c = match conn.take() {
            Some(c) => c,
            None => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(5)))
                    .set_response_timeout(Some(COMMAND_RESPONSE_TIMEOUT));
                let client = &shared.shards[shard].client;
                // Cancelling a connect loses nothing, so it may race the shutdown.
                let connected = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    c = client.get_multiplexed_async_connection_with_config(&config) => c,
                };
                // The step script is loaded on every new connection (a restarted or
                // flushed Redis forgot it; a NOSCRIPT error reconnects and loads again).
                let connected = match connected {
                    Ok(mut c) => STEP.load_async(&mut c).await.map(|_| c),
                    Err(error) => Err(error),
                };
                match connected {
                    Ok(c) => c,
                    Err(error) => {
                        if !failing {
                            tracing::warn!(shard, %error, "django bridge cannot reach redis; retrying");
                            failing = true;
                        }
                        if !crate::wait_backoff(&mut backoff, &shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            }
        };
        let asked = tokio::time::Instant::now();
        // The queue's depth is read in the same round trip, before the pop: the way
        // channels_redis counts it to decide whether to drop.
        let mut pipe = redis::pipe();
        pipe.cmd("ZCOUNT").arg(&queue).arg("-inf").arg("+inf");
        pipe.cmd("EVALSHA")
            .arg(STEP.get_hash())
            .arg(3)
            .arg(&lease_key)
            .arg(&inflight_key)
            .arg(&queue)
            .arg(&token)
            .arg(lease_ms)
            .arg(inflight_ttl)
            .arg(if published { "1" } else { "0" });
        let replied: redis::RedisResult<(u64, redis::Value)> = pipe.query_async(&mut c).await;
        match replied {
            Ok((depth, reply)) => {
                draining.store(true, std::sync::atomic::Ordering::Relaxed);
                if failing {
                    tracing::info!(shard, "django bridge reconnected to redis");
                    failing = false;
                }
                backoff.reset();
                conn = Some(c);
                watch_depth(&shared, depth, capacity, &mut at_capacity);
                match parse_step(reply) {
                    Some(Step::Message(member, id)) => {
                        holding = true;
                        // Publish only with a lease that, by this node's clock, still
                        // has time left; else the next step (not acknowledging) tells
                        // whether it is still ours, and hands the message back if so.
                        published = asked.elapsed() + LEASE_MARGIN < LEASE;
                        if last_published.as_deref() == Some(id.as_str()) {
                            // Handed back after a stall of this very node, which had
                            // published it (any layer, even one without publish_once).
                            bump(&shared.counters.duplicates_skipped);
                            published = true;
                        } else if published {
                            handle_member(&shared, &ingest, &member, &id, once_window).await;
                            last_published = Some(id);
                        } else {
                            tracing::debug!(
                                shard,
                                "django drain lease may have lapsed; asking again before publishing"
                            );
                        }
                    }
                    Some(Step::Empty) => {
                        holding = true;
                        sleep_or_stop(IDLE_POLL, &shutdown).await;
                    }
                    Some(Step::NotHolder) => {
                        // Whatever was in hand is the new holder's to publish now.
                        published = true;
                        if holding {
                            tracing::info!(shard, "django drain lease taken over by another node");
                            holding = false;
                        }
                        sleep_or_stop(TAKEOVER_POLL, &shutdown).await;
                    }
                    None => {
                        shared
                            .counters
                            .decode_error(&"unexpected reply from the drain script");
                        sleep_or_stop(TAKEOVER_POLL, &shutdown).await;
                    }
                }
            }
            Err(error) => {
                draining.store(false, std::sync::atomic::Ordering::Relaxed);
                if !failing {
                    tracing::warn!(shard, %error, "django bridge lost redis; reconnecting");
                    failing = true;
                }
                if !crate::wait_backoff(&mut backoff, &shutdown).await {
                    break;
                }
            }
        }
    }
}

async fn sleep_or_stop(delay: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

/// Records the queue depth seen before a pop; at or over `django_capacity`, Django's
/// `group_send` drops herald's messages silently, so that is counted once per burst (a
/// burst ends when the depth falls below half the capacity) and logged.
fn watch_depth(shared: &Shared, depth: u64, capacity: u64, at_capacity: &mut bool) {
    use std::sync::atomic::Ordering::Relaxed;
    shared.counters.queue_depth.store(depth, Relaxed);
    if !*at_capacity && depth >= capacity {
        *at_capacity = true;
        let n = bump(&shared.counters.capacity_reached);
        tracing::warn!(
            depth,
            django_capacity = capacity,
            times = n,
            "herald's django queue reached django_capacity: Django's group_send drops \
             messages for herald silently while it is full (raise channel_capacity for \
             specific.<channel_prefix>!* on the Django side and mirror it in django_capacity)"
        );
    } else if *at_capacity && depth.saturating_mul(2) < capacity {
        *at_capacity = false;
    }
}

/// One member popped from herald's queue: decode, map targets to herald groups, publish.
///
/// `id` and `window` make the publish idempotent across nodes (see
/// [`Layer::publish_once`]): a message a stalled holder published is not published again
/// by the node that took over, nor the reverse.
async fn handle_member<L: Layer>(
    shared: &Shared,
    ingest: &Ingest<L>,
    member: &[u8],
    id: &str,
    window: Duration,
) {
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
    for group in &groups {
        if let Some(payload) = payload_for(&message, group, shared) {
            ingest.publish(group, &payload, Some((id, window))).await;
        }
    }
}

/// Refreshes this node's memberships every `membership_refresh` until shutdown. After a
/// failed write (Redis down, e.g. at startup) it retries with a short backoff instead of
/// waiting a whole period, so memberships are back within a second or two of Redis.
pub(crate) async fn refresh_memberships(
    shared: Arc<Shared>,
    active: Arc<crate::bridge::ActiveGroups>,
    shutdown: CancellationToken,
) {
    let period = shared.config.effective_refresh();
    let mut backoff = Backoff::new(
        Duration::from_millis(100),
        period.min(Duration::from_secs(2)),
    );
    let mut next = tokio::time::Instant::now() + period;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
            _ = active.pending.notified() => {}
        }
        let groups = active.snapshot().await;
        let result = if groups.is_empty() {
            Ok(())
        } else {
            write_memberships(&shared, &groups, Write::Refresh).await
        };
        match result {
            Ok(()) => {
                active.set_written(true);
                backoff.reset();
                next = tokio::time::Instant::now() + period;
            }
            Err(error) => {
                if active.set_written(false) {
                    tracing::warn!(%error, groups = groups.len(), "cannot write django group memberships; retrying");
                }
                next = tokio::time::Instant::now() + backoff.next_delay();
            }
        }
    }
}

/// Samples the backlog of herald's queue (ZCARD on every shard) into the stats, and warns
/// when it nears the capacity Django applies to it: past that, Django's `group_send` drops
/// herald-bound messages silently.
pub(crate) async fn watch_backlog(shared: Arc<Shared>, shutdown: CancellationToken) {
    let key = shared.keys.herald_queue_key();
    // The capacity Django applies to herald's queue, as configured (one setting for this
    // early warning and for the drain loop's capacity count).
    let capacity = shared.config.django_capacity;
    for gauge in [
        &shared.counters.backlog_capacity,
        &shared.counters.django_capacity,
    ] {
        gauge.store(capacity, std::sync::atomic::Ordering::Relaxed);
    }
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
            let Some(mut conn) = shard.conn.get().cloned() else {
                continue;
            };
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
        if !warned && worst.saturating_mul(5) >= capacity.saturating_mul(4) {
            warned = true;
            tracing::warn!(
                backlog = worst,
                capacity,
                key = %key,
                "herald's django queue is nearly full; Django drops group_send messages \
                 silently at capacity (raise channel_capacity for specific.<channel_prefix>!* \
                 on the Django side, and django_capacity here)"
            );
        } else if warned && worst.saturating_mul(2) < capacity {
            warned = false;
        }
    }
}
