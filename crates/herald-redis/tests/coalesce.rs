//! Publish coalescing against a real redis-server: batch bounds, per-publisher answers,
//! failures confined to their own publishers, per-group order, idempotency inside a batch.
//!
//! To make batches deterministic, a test holds the first script call in Redis with
//! `CLIENT PAUSE WRITE` (scripts wait, pub/sub keeps going), queues publishes behind it
//! (visible in `RedisStats::publish_queued`), then lets Redis go on: the queued publishes
//! go out in batches whose sizes the bounds alone decide.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_core::{GroupName, KeyedItem, Layer, LayerError, Payload, Position};
use herald_redis::{RedisLayer, RedisLayerConfig};
use herald_testkit::redis::{RedisProcess, unique_prefix};
use support::{group, ready, recv_within, wait_until, within};
use tokio::task::JoinHandle;

const LIMIT: Duration = Duration::from_secs(10);

/// A layer whose calls carry at most `max` messages and `max_bytes` payload bytes.
async fn layer(redis: &RedisProcess, prefix: &str, max: usize, max_bytes: usize) -> RedisLayer {
    let mut config = RedisLayerConfig::new(redis.url())
        .with_prefix(prefix)
        .with_incoming_capacity(4096)
        .with_publish_coalescing(max, max_bytes, 1);
    // Long enough for a held call never to time out while a test fills the queue.
    config.command_timeout = Duration::from_secs(8);
    let (layer, incoming) = RedisLayer::new(config).expect("valid config");
    // Nothing subscribes in these tests; dropping `Incoming` is fine.
    drop(incoming);
    ready(&layer).await;
    layer
}

/// Holds script calls in Redis until [`release`].
async fn hold(redis: &RedisProcess) {
    redis.cmd(&["CLIENT", "PAUSE", "8000", "WRITE"]).await;
}

async fn release(redis: &RedisProcess) {
    redis.cmd(&["CLIENT", "UNPAUSE"]).await;
}

/// Publishes `first` and waits until its call is in flight (held by [`hold`]).
async fn first_call_in_flight(layer: &RedisLayer) -> JoinHandle<Result<Position, LayerError>> {
    let first = spawn_publish(layer, &group("first"), "first");
    wait_until("first call in flight", LIMIT, || {
        layer.stats().publish_calls == 1
    })
    .await;
    first
}

fn spawn_publish(
    layer: &RedisLayer,
    g: &GroupName,
    text: &str,
) -> JoinHandle<Result<Position, LayerError>> {
    let (layer, g, payload) = (layer.clone(), g.clone(), Payload::text(text.to_owned()));
    tokio::spawn(async move { layer.publish(&g, payload).await })
}

async fn queued(layer: &RedisLayer, n: u64) {
    wait_until("publishes queued", LIMIT, || {
        layer.stats().publish_queued == n
    })
    .await;
}

async fn join<T>(handle: JoinHandle<T>) -> T {
    within("publisher", LIMIT, handle).await.expect("task")
}

/// The texts of `g`'s history, in offset order, with their offsets.
async fn history(layer: &RedisLayer, g: &GroupName) -> Vec<(u64, String)> {
    let now = layer.history(g, None).await.expect("history");
    let since = Position {
        offset: 0,
        epoch: now.current.epoch,
    };
    let history = layer.history(g, Some(&since)).await.expect("history");
    history
        .messages
        .into_iter()
        .map(|m| {
            let text = String::from_utf8_lossy(m.payload.data()).into_owned();
            (m.offset, text)
        })
        .collect()
}

#[tokio::test]
async fn more_publishes_than_the_batch_bound_go_in_several_calls_each_with_its_own_position() {
    let redis = RedisProcess::start();
    let layer = layer(&redis, &unique_prefix(), 4, 1 << 20).await;
    let g = group("g");
    hold(&redis).await;
    let first = first_call_in_flight(&layer).await;
    let mut publishers = Vec::new();
    for i in 0..10 {
        publishers.push((i, spawn_publish(&layer, &g, &format!("m{i}"))));
    }
    queued(&layer, 10).await;
    release(&redis).await;
    join(first).await.expect("first");
    let mut offsets = Vec::new();
    let mut mine = Vec::new();
    for (i, p) in publishers {
        let position = join(p).await.expect("publish");
        offsets.push(position.offset);
        mine.push((position.offset, format!("m{i}")));
    }
    let stats = layer.stats();
    // The held call, then 10 queued messages in calls of at most 4: 4 + 4 + 2.
    assert_eq!(stats.publish_calls, 4, "{stats:?}");
    assert_eq!(stats.publish_largest_call, 4, "{stats:?}");
    offsets.sort_unstable();
    assert_eq!(
        offsets,
        (1..=10).collect::<Vec<u64>>(),
        "contiguous, one each"
    );
    // Each publisher's position holds its own message.
    mine.sort();
    assert_eq!(history(&layer, &g).await, mine);
}

#[tokio::test]
async fn the_byte_bound_limits_what_one_call_carries() {
    let redis = RedisProcess::start();
    let layer = layer(&redis, &unique_prefix(), 256, 250).await;
    let g = group("g");
    hold(&redis).await;
    let first = first_call_in_flight(&layer).await;
    let publishers: Vec<_> = (0..6)
        .map(|i| spawn_publish(&layer, &g, &format!("{i}{}", "x".repeat(99))))
        .collect();
    queued(&layer, 6).await;
    release(&redis).await;
    join(first).await.expect("first");
    for p in publishers {
        join(p).await.expect("publish");
    }
    let stats = layer.stats();
    // 100-byte payloads, 250 bytes per call: two per call.
    assert_eq!(stats.publish_calls, 4, "{stats:?}");
    assert_eq!(stats.publish_largest_call, 2, "{stats:?}");
    assert_eq!(history(&layer, &g).await.len(), 6);
}

#[tokio::test]
async fn a_message_redis_refuses_fails_only_its_own_publisher() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let layer = layer(&redis, &prefix, 256, 1 << 20).await;
    let (good, other, bad) = (group("good"), group("other"), group("bad"));
    // A meta key of the wrong type: every script command on it fails with WRONGTYPE.
    redis
        .cmd(&["SET", &format!("{prefix}:{{bad}}:meta"), "not a hash"])
        .await;
    hold(&redis).await;
    let first = first_call_in_flight(&layer).await;
    let before = spawn_publish(&layer, &good, "before");
    queued(&layer, 1).await;
    let refused = spawn_publish(&layer, &bad, "refused");
    queued(&layer, 2).await;
    let batch = {
        let layer = layer.clone();
        let items = vec![
            (other.clone(), Payload::text("a")),
            (bad.clone(), Payload::text("b")),
            (other.clone(), Payload::text("c")),
        ];
        tokio::spawn(async move { layer.publish_batch(items).await })
    };
    queued(&layer, 5).await;
    let after = spawn_publish(&layer, &good, "after");
    queued(&layer, 6).await;
    release(&redis).await;
    join(first).await.expect("first");
    assert_eq!(join(before).await.expect("before").offset, 1);
    match join(refused).await {
        Err(LayerError::Unavailable(why)) => assert!(why.contains("WRONGTYPE"), "{why}"),
        other => panic!("{other:?}"),
    }
    match join(batch).await {
        Err((1, LayerError::Unavailable(why))) => assert!(why.contains("WRONGTYPE"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(join(after).await.expect("after").offset, 2);
    // All of it was one call, behind the held one.
    assert_eq!(layer.stats().publish_calls, 2);
    // The batch stopped at its failure: "c" was not published.
    assert_eq!(history(&layer, &other).await, vec![(1, "a".to_owned())]);
    assert_eq!(
        history(&layer, &good).await,
        vec![(1, "before".to_owned()), (2, "after".to_owned())]
    );
}

#[tokio::test]
async fn an_idempotency_key_used_twice_in_one_call_publishes_once() {
    let redis = RedisProcess::start();
    let layer = layer(&redis, &unique_prefix(), 256, 1 << 20).await;
    let g = group("g");
    let window = Duration::from_secs(60);
    hold(&redis).await;
    let first = first_call_in_flight(&layer).await;
    let once = |text: &'static str| {
        let (layer, g) = (layer.clone(), g.clone());
        tokio::spawn(async move {
            layer
                .publish_once(&g, Payload::text(text), "k1", window)
                .await
        })
    };
    let a = once("a");
    queued(&layer, 1).await;
    let b = once("b");
    queued(&layer, 2).await;
    let both = {
        let item = |text: &'static str| KeyedItem {
            group: g.clone(),
            payload: Payload::text(text),
            key: Some(Arc::from("k2")),
        };
        let (layer, items) = (layer.clone(), vec![item("c"), item("d")]);
        tokio::spawn(async move { layer.publish_idempotent(items, window).await })
    };
    queued(&layer, 4).await;
    release(&redis).await;
    join(first).await.expect("first");
    let a = join(a).await.expect("a");
    let b = join(b).await.expect("b");
    assert_eq!(a.map(|p| p.offset), Some(1));
    assert_eq!(
        b, None,
        "the same key again in the same call is a duplicate"
    );
    let both = join(both).await.expect("c, d");
    assert_eq!(
        both.iter()
            .map(|p| (p.position.offset, p.duplicate))
            .collect::<Vec<_>>(),
        vec![(2, false), (2, true)]
    );
    assert_eq!(
        layer.stats().publish_calls,
        2,
        "one call behind the held one"
    );
    assert_eq!(
        history(&layer, &g).await,
        vec![(1, "a".to_owned()), (2, "c".to_owned())]
    );
}

/// On one thread, answers wake their publishers in the order they are given, so the
/// completion order seen by the publishers is the order of the answers.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_publishers_see_each_groups_offsets_in_order_and_delivery_follows() {
    let redis = RedisProcess::start();
    let mut config = RedisLayerConfig::new(redis.url())
        .with_prefix(unique_prefix())
        .with_incoming_capacity(4096)
        .with_publish_coalescing(16, 1 << 20, 1);
    config.command_timeout = Duration::from_secs(8);
    let (layer, mut incoming) = RedisLayer::new(config).expect("valid config");
    ready(&layer).await;
    let groups: Vec<GroupName> = ["a", "b", "c"].into_iter().map(group).collect();
    for g in &groups {
        layer.subscribe(g).await.expect("subscribe");
    }
    const PUBLISHERS: u64 = 8;
    const EACH: u64 = 40;
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let (layer, groups, done) = (layer.clone(), groups.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..EACH {
                let g = &groups[usize::try_from((p + i) % 3).expect("small")];
                let position = layer
                    .publish(g, Payload::text(format!("{p}.{i}")))
                    .await
                    .expect("publish");
                // The order in which publishers saw their answers.
                seen.push((
                    done.fetch_add(1, Ordering::SeqCst),
                    g.clone(),
                    position.offset,
                ));
            }
            seen
        }));
    }
    let mut completions = Vec::new();
    for t in tasks {
        completions.extend(join(t).await);
    }
    completions.sort_by_key(|c| c.0);
    for g in &groups {
        let offsets: Vec<u64> = completions
            .iter()
            .filter(|c| &c.1 == g)
            .map(|c| c.2)
            .collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "{g}: offsets out of completion order: {offsets:?}"
        );
    }
    assert!(
        layer.stats().publish_calls < PUBLISHERS * EACH,
        "some publishes shared a call: {:?}",
        layer.stats()
    );
    // Delivery: every message once, per group in offset order.
    let mut delivered: Vec<Vec<u64>> = vec![Vec::new(); groups.len()];
    for _ in 0..PUBLISHERS * EACH {
        let m = recv_within(&mut incoming, LIMIT).await;
        let i = groups
            .iter()
            .position(|g| g == &m.group)
            .expect("known group");
        delivered[i].push(m.offset);
    }
    for (g, offsets) in groups.iter().zip(&delivered) {
        let n = u64::try_from(offsets.len()).expect("small");
        assert_eq!(offsets, &(1..=n).collect::<Vec<u64>>(), "{g}");
    }
}

#[tokio::test]
async fn keys_always_carry_a_ttl_refreshed_at_most_once_a_minute() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let history_config = herald_core::HistoryConfig {
        max_bytes: 1000,
        ..herald_core::HistoryConfig::default()
    };
    let mut config = RedisLayerConfig::new(redis.url())
        .with_prefix(&prefix)
        .with_history(history_config);
    config.command_timeout = Duration::from_secs(8);
    let (layer, _incoming) = RedisLayer::new(config).expect("valid config");
    ready(&layer).await;
    let g = group("g");
    let (meta, stream) = (
        format!("{prefix}:{{g}}:meta"),
        format!("{prefix}:{{g}}:stream"),
    );
    let pttl = |key: String| {
        let redis = &redis;
        async move {
            match redis.cmd(&["PTTL", &key]).await {
                redis::Value::Int(n) => n,
                other => panic!("PTTL answered {other:?}"),
            }
        }
    };
    // The refresh interval with the default day-long history: one minute.
    let max = i64::try_from(history_config.max_age.as_millis()).expect("fits") + 60_000;
    layer
        .publish(&g, Payload::text("one"))
        .await
        .expect("publish");
    for key in [&meta, &stream] {
        let ttl = pttl(key.clone()).await;
        assert!((1..=max).contains(&ttl), "{key}: {ttl}");
    }
    let x = redis.cmd(&["HGET", &meta, "x"]).await;
    assert!(
        matches!(x, redis::Value::BulkString(_)),
        "refresh time kept: {x:?}"
    );
    // Too large to keep: the stream goes; the next message creates it anew, within the
    // minute since the last refresh, and it still gets a TTL at once.
    layer
        .publish(&g, Payload::text("y".repeat(2000)))
        .await
        .expect("publish");
    layer
        .publish(&g, Payload::text("two"))
        .await
        .expect("publish");
    let ttl = pttl(stream.clone()).await;
    assert!((1..=max).contains(&ttl), "recreated stream: {ttl}");
    let now = layer.history(&g, None).await.expect("history");
    let after_the_large_one = Position {
        offset: 2,
        epoch: now.current.epoch,
    };
    let rest = layer
        .history(&g, Some(&after_the_large_one))
        .await
        .expect("history");
    assert!(rest.recovered);
    assert_eq!(
        rest.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![3]
    );
}

/// `INFO commandstats` as (command, calls), for the commands a publish script runs.
async fn command_calls(redis: &RedisProcess) -> Vec<(String, u64)> {
    let text = match redis.cmd(&["INFO", "commandstats"]).await {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("INFO answered {other:?}"),
    };
    let mut out: Vec<(String, u64)> = text
        .lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields.split(',').find_map(|f| f.strip_prefix("calls="))?;
            let wanted = [
                "hmget", "hset", "xlen", "xadd", "pexpire", "del", "get", "set",
            ];
            wanted
                .contains(&name)
                .then(|| (name.to_owned(), calls.parse().expect("a count")))
        })
        .collect();
    out.sort();
    out
}

/// A lone publish runs the one-message script: its refresh time goes in the same `HSET`
/// as the offset (the batch script writes it separately), the TTLs are set when the
/// group is new and not again within the refresh interval.
#[tokio::test]
async fn a_lone_publish_runs_the_one_message_script() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let layer = layer(&redis, &prefix, 256, 1 << 20).await;
    let g = group("g");
    let meta = format!("{prefix}:{{g}}:meta");
    let stream = format!("{prefix}:{{g}}:stream");
    redis.cmd(&["CONFIG", "RESETSTAT"]).await;
    let first = layer.publish(&g, Payload::text("one")).await.expect("one");
    assert_eq!(first.offset, 1);
    let calls = |list: &[(&str, u64)]| {
        list.iter()
            .map(|(n, c)| ((*n).to_owned(), *c))
            .collect::<Vec<_>>()
    };
    // A new group: a new epoch (DEL of a stream left over), one HSET of `e o b x`,
    // both TTLs set.
    assert_eq!(
        command_calls(&redis).await,
        calls(&[
            ("del", 1),
            ("hmget", 1),
            ("hset", 1),
            ("pexpire", 2),
            ("xadd", 1)
        ])
    );
    for key in [&meta, &stream] {
        match redis.cmd(&["PTTL", key]).await {
            redis::Value::Int(ttl) => assert!(ttl > 0, "{key}: {ttl}"),
            other => panic!("PTTL answered {other:?}"),
        }
    }
    redis.cmd(&["CONFIG", "RESETSTAT"]).await;
    let second = layer.publish(&g, Payload::text("two")).await.expect("two");
    assert_eq!(second.offset, 2);
    assert_eq!(second.epoch, first.epoch);
    // Within the refresh interval: no TTL refresh, one HSET of `o b`.
    assert_eq!(
        command_calls(&redis).await,
        calls(&[("hmget", 1), ("hset", 1), ("xadd", 1), ("xlen", 1)])
    );
    assert_eq!(layer.stats().publish_calls, 2);
    assert_eq!(
        history(&layer, &g).await,
        vec![(1, "one".to_owned()), (2, "two".to_owned())]
    );
}

/// On the one-message path a message Redis refuses fails its publisher with Redis' reason,
/// changes nothing, and leaves the connection to the next publish.
#[tokio::test]
async fn a_lone_publish_redis_refuses_fails_alone_and_changes_nothing() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let layer = layer(&redis, &prefix, 256, 1 << 20).await;
    let (good, bad) = (group("good"), group("bad"));
    layer.publish(&bad, Payload::text("a")).await.expect("a");
    // The stream key of the wrong type: the script's XLEN fails.
    let stream = format!("{prefix}:{{bad}}:stream");
    redis.cmd(&["DEL", &stream]).await;
    redis.cmd(&["SET", &stream, "not a stream"]).await;
    let unavailable = layer.stats().unavailable;
    match layer.publish(&bad, Payload::text("b")).await {
        Err(LayerError::Unavailable(why)) => {
            assert!(why.contains("redis refused the message"), "{why}");
            assert!(why.contains("WRONGTYPE"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(layer.stats().unavailable, unavailable + 1);
    let meta = format!("{prefix}:{{bad}}:meta");
    assert_eq!(
        redis.cmd(&["HGET", &meta, "o"]).await,
        redis::Value::BulkString(b"1".to_vec()),
        "the refused message took no offset"
    );
    assert_eq!(
        layer
            .publish(&good, Payload::text("c"))
            .await
            .expect("c")
            .offset,
        1
    );
    assert!(layer.is_ready());
    assert_eq!(layer.stats().reconnects, 0);
}

/// An idempotency key on the one-message path: the retry publishes nothing and answers
/// the first position; the key lives for the window.
#[tokio::test]
async fn a_lone_publish_with_an_idempotency_key_publishes_once() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let layer = layer(&redis, &prefix, 256, 1 << 20).await;
    let g = group("g");
    let window = Duration::from_secs(60);
    layer
        .publish(&g, Payload::text("before"))
        .await
        .expect("before");
    let first = layer
        .publish_once(&g, Payload::text("a"), "k", window)
        .await
        .expect("a")
        .expect("published");
    assert_eq!(first.offset, 2);
    let again = layer
        .publish_once(&g, Payload::text("a again"), "k", window)
        .await
        .expect("again");
    assert_eq!(again, None, "a retry publishes nothing");
    let keyed = KeyedItem {
        group: g.clone(),
        payload: Payload::text("a once more"),
        key: Some(Arc::from("k")),
    };
    let retried = layer
        .publish_idempotent(vec![keyed], window)
        .await
        .expect("retry");
    assert_eq!(
        retried
            .iter()
            .map(|p| (p.position.clone(), p.duplicate))
            .collect::<Vec<_>>(),
        vec![(first.clone(), true)]
    );
    let once = format!("{prefix}:{{g}}:once:k");
    match redis.cmd(&["PTTL", &once]).await {
        redis::Value::Int(ttl) => assert!((1..=60_000).contains(&ttl), "{ttl}"),
        other => panic!("PTTL answered {other:?}"),
    }
    assert_eq!(
        history(&layer, &g).await,
        vec![(1, "before".to_owned()), (2, "a".to_owned())]
    );
    assert_eq!(layer.stats().publish_calls, 4, "each went alone");
}

/// The TTLs are refreshed once the refresh interval (a tenth of `max_age` here) has
/// passed since the last refresh, and not before.
#[tokio::test]
async fn a_lone_publish_refreshes_the_ttls_once_the_interval_passed() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let history_config = herald_core::HistoryConfig {
        max_age: Duration::from_secs(2),
        ..herald_core::HistoryConfig::default()
    };
    let mut config = RedisLayerConfig::new(redis.url())
        .with_prefix(&prefix)
        .with_history(history_config);
    config.command_timeout = Duration::from_secs(8);
    let (layer, _incoming) = RedisLayer::new(config).expect("valid config");
    ready(&layer).await;
    let g = group("g");
    let pexpires = |calls: Vec<(String, u64)>| {
        calls
            .into_iter()
            .find(|(name, _)| name == "pexpire")
            .map_or(0, |(_, n)| n)
    };
    layer.publish(&g, Payload::text("one")).await.expect("one");
    redis.cmd(&["CONFIG", "RESETSTAT"]).await;
    layer.publish(&g, Payload::text("two")).await.expect("two");
    assert_eq!(pexpires(command_calls(&redis).await), 0, "within 200 ms");
    tokio::time::sleep(Duration::from_millis(250)).await;
    layer
        .publish(&g, Payload::text("three"))
        .await
        .expect("three");
    assert_eq!(pexpires(command_calls(&redis).await), 2, "after 200 ms");
    let meta = format!("{prefix}:{{g}}:meta");
    match redis.cmd(&["PTTL", &meta]).await {
        redis::Value::Int(ttl) => assert!((1_900..=2_200).contains(&ttl), "{ttl}"),
        other => panic!("PTTL answered {other:?}"),
    }
}
