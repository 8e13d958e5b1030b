//! The core backend (`RedisChannelLayer`) against real redis-server and real Django.

mod support;

use std::time::Duration;

use herald_core::memory::MemoryLayerConfig;
use herald_core::{Layer, MemoryLayer, Payload};
use herald_django::{DjangoBridge, GroupMapRule};
use herald_testkit::redis::RedisProcess;
use support::*;
use tokio_util::sync::CancellationToken;

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn zcard(url: &str, key: &str) -> u64 {
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut redis_conn(url).await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_group_send_reaches_the_layer_once_in_the_right_group() {
    let redis = RedisProcess::start();
    let django = DjangoSide::core(vec![redis.url()]);
    let (layer, mut incoming) = MemoryLayer::new(MemoryLayerConfig::default());
    for g in ["user.42", "user.43"] {
        layer.subscribe(&group(g)).await.unwrap();
    }
    let shutdown = CancellationToken::new();
    let bridge = DjangoBridge::start(django.herald_config(), layer, 1 << 20, shutdown.clone())
        .await
        .unwrap();
    bridge.group_active(&group("user.42")).await.unwrap();
    bridge.group_active(&group("user.43")).await.unwrap();

    // The seed's call, unchanged: a text notification to group "user.42".
    django
        .group_send("user.42", r#"{"title": "hi", "n": 1}"#, 1)
        .await;
    let message = within(DEADLINE, incoming.recv(), "the text message")
        .await
        .unwrap();
    assert_eq!(message.group.as_str(), "user.42");
    assert_eq!(message.payload, Payload::text(r#"{"title": "hi", "n": 1}"#));

    // bytes -> a binary payload.
    django.run(&["send", "user.42", "raw", "1", "bytes"]).await;
    let message = within(DEADLINE, incoming.recv(), "the binary message")
        .await
        .unwrap();
    assert_eq!(message.group.as_str(), "user.42");
    assert_eq!(message.payload, Payload::binary(&b"raw"[..]));

    // Neither text nor bytes: counted, not delivered.
    django
        .run(&["send", "user.42", "-", "2", "none", "odd.type"])
        .await;

    // A marker to the other group: it must be the very next message, so nothing else
    // (no duplicate, nothing for user.43 before) was published in between.
    django.group_send("user.43", "marker", 1).await;
    let message = within(DEADLINE, incoming.recv(), "the marker")
        .await
        .unwrap();
    assert_eq!(message.group.as_str(), "user.43");
    assert_eq!(message.payload, Payload::text("marker"));
    assert!(incoming.try_recv().is_err());

    let stats = bridge.stats();
    assert_eq!(stats.received, 5);
    assert_eq!(stats.published, 3);
    assert_eq!(stats.dropped_no_payload, 2);
    assert_eq!(stats.decode_errors, 0);
    assert_eq!(stats.active_groups, 2);
    assert_eq!(zcard(&redis.url(), "asgispecific.herald!").await, 0);
    stop(shutdown, vec![bridge]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_django_message_enters_herald_once_with_two_and_three_nodes() {
    for nodes in [2, 3] {
        let redis = RedisProcess::start();
        let django = DjangoSide::core(vec![redis.url()]);
        let sink = CountingLayer::default();
        let shutdown = CancellationToken::new();
        let bridges = start_nodes(
            nodes,
            &django.herald_config(),
            &sink,
            &["user.42"],
            &shutdown,
        )
        .await;
        // One membership for all nodes: they share the channel name.
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg("asgi:group:user.42")
            .arg(0)
            .arg(-1)
            .query_async(&mut redis_conn(&redis.url()).await)
            .await
            .unwrap();
        assert_eq!(members, ["specific.herald!user.42"]);

        // Identical texts on purpose: the random prefix keeps them apart in Redis.
        const N: usize = 30;
        django.group_send("user.42", "same", N).await;
        eventually(DEADLINE, "every message to be published", || async {
            sink.count() >= N
        })
        .await;
        // Once every node's pops are accounted for and the queue is empty, nothing else
        // can arrive: the count is final.
        let url = redis.url();
        eventually(DEADLINE, "the queue to be drained", || {
            let url = url.clone();
            let bridges = &bridges;
            async move {
                total(bridges, |s| s.received) == N as u64
                    && zcard(&url, "asgispecific.herald!").await == 0
            }
        })
        .await;
        assert_eq!(sink.count(), N, "{nodes} nodes");
        assert!(
            sink.published()
                .iter()
                .all(|(g, p)| g.as_str() == "user.42" && *p == Payload::text("same"))
        );
        assert_eq!(total(&bridges, |s| s.published), N as u64);
        stop(shutdown, bridges).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_messages_flow_both_ways() {
    let redis = RedisProcess::start();
    let mut django = DjangoSide::core(vec![redis.url()]);
    django.keys = vec!["s3cret".into(), "previous-key".into()];
    let sink = CountingLayer::default();
    let shutdown = CancellationToken::new();
    let nodes = start_nodes(1, &django.herald_config(), &sink, &["user.42"], &shutdown).await;

    django.group_send("user.42", "secret hello", 1).await;
    eventually(DEADLINE, "the encrypted message", || async {
        sink.count() == 1
    })
    .await;
    assert_eq!(sink.published()[0].1, Payload::text("secret hello"));

    // herald -> Django: a Python process in the same group gets herald's message; herald's
    // own member is skipped, so nothing comes back into herald.
    let mut listener = django.spawn(&["recv", "user.42", "1", "20"]);
    listener.next().await; // ready: joined the group
    let report = nodes[0]
        .group_send(&group("user.42"), &Payload::text("from herald"))
        .await
        .unwrap();
    assert_eq!((report.members, report.queued, report.full), (1, 1, 0));
    let line = listener.next().await;
    assert_eq!(line["message"]["type"], "herald.message");
    assert_eq!(line["message"]["text"], "from herald");
    listener.finish().await;
    assert_eq!(sink.count(), 1);
    assert_eq!(nodes[0].stats().sent, 1);

    // A node with the wrong key cannot read Django's messages: counted, not delivered.
    let mut wrong = django.herald_config();
    wrong.symmetric_encryption_keys = vec!["wrong".into()];
    let stranger = CountingLayer::default();
    let wrong_nodes = start_nodes(1, &wrong, &stranger, &[], &shutdown).await;
    nodes[0].shutdown().await;
    django.group_send("user.42", "unreadable", 1).await;
    eventually(DEADLINE, "the decode error", || async {
        wrong_nodes[0].stats().decode_errors == 1
    })
    .await;
    assert_eq!(stranger.count(), 0);
    stop(shutdown, wrong_nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_are_sharded_like_channels_redis() {
    let shard0 = RedisProcess::start();
    let shard1 = RedisProcess::start();
    let urls = vec![shard0.url(), shard1.url()];
    let django = DjangoSide::core(urls.clone());
    let sink = CountingLayer::default();
    let shutdown = CancellationToken::new();
    // Chosen so that both shards hold some (user.8, user.9 and user.alice hash to 1).
    let groups = [
        "user.1",
        "user.2",
        "user.8",
        "user.9",
        "user.alice",
        "user.bob",
    ];
    let nodes = start_nodes(2, &django.herald_config(), &sink, &groups, &shutdown).await;

    // Each membership is on the shard channels_redis reads it from.
    let mut used = [false; 2];
    for g in groups {
        let shard = herald_django::keys::consistent_hash(g, 2);
        used[shard] = true;
        let key = format!("asgi:group:{g}");
        assert_eq!(zcard(&urls[shard], &key).await, 1, "{g} on shard {shard}");
        assert_eq!(
            zcard(&urls[1 - shard], &key).await,
            0,
            "{g} not on {}",
            1 - shard
        );
    }
    assert_eq!(used, [true, true], "the groups should cover both shards");

    for g in groups {
        django.group_send(g, &format!("to {g}"), 1).await;
    }
    // Django's send() to one of herald's channels hashes the full name: pick one that
    // lands on the other shard than the queue's, which herald drains too.
    let queue_shard = herald_django::keys::consistent_hash("specific.herald!", 2);
    let direct = groups
        .iter()
        .find(|g| {
            herald_django::keys::consistent_hash(&format!("specific.herald!{g}"), 2) != queue_shard
        })
        .expect("some group hashes to the other shard");
    django
        .run(&[
            "send_channel",
            &format!("specific.herald!{direct}"),
            "direct",
        ])
        .await;

    // Settled once both nodes popped every message and both queues are empty.
    let expected = groups.len() as u64 + 1;
    eventually(DEADLINE, "all messages", || {
        let (urls, nodes) = (&urls, &nodes);
        async move {
            total(nodes, |s| s.received) == expected
                && zcard(&urls[0], "asgispecific.herald!").await == 0
                && zcard(&urls[1], "asgispecific.herald!").await == 0
        }
    })
    .await;
    let published = sink.published();
    for g in groups {
        let got: Vec<_> = published
            .iter()
            .filter(|(pg, _)| pg.as_str() == g)
            .collect();
        let expected = if g == *direct { 2 } else { 1 };
        assert_eq!(got.len(), expected, "{g}");
        assert!(
            got.iter()
                .any(|(_, p)| *p == Payload::text(format!("to {g}")))
        );
    }
    assert!(
        published
            .iter()
            .any(|(g, p)| g.as_str() == *direct && *p == Payload::text("direct"))
    );
    assert_eq!(published.len(), groups.len() + 1);
    stop(shutdown, nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_default_prefix_and_group_map() {
    let redis = RedisProcess::start();
    let mut django = DjangoSide::core(vec![redis.url()]);
    django.prefix = "myapp".into();
    let mut config = django.herald_config();
    config.channel_prefix = "hrld".into();
    config.group_map = vec![GroupMapRule {
        herald: "user.{id}".into(),
        channels: "user_{id}".into(),
    }];
    let sink = CountingLayer::default();
    let shutdown = CancellationToken::new();
    let nodes = start_nodes(1, &config, &sink, &["user.42"], &shutdown).await;
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg("myapp:group:user_42")
        .arg(0)
        .arg(-1)
        .query_async(&mut redis_conn(&redis.url()).await)
        .await
        .unwrap();
    assert_eq!(members, ["specific.hrld!user.42"]);

    django.group_send("user_42", "mapped", 1).await;
    eventually(DEADLINE, "the mapped message", || async {
        sink.count() == 1
    })
    .await;
    assert_eq!(sink.published()[0].0.as_str(), "user.42");
    assert_eq!(sink.published()[0].1, Payload::text("mapped"));
    stop(shutdown, nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_outlives_group_expiry_then_lapses_when_inactive() {
    let redis = RedisProcess::start();
    let mut django = DjangoSide::core(vec![redis.url()]);
    django.group_expiry = 3;
    let mut config = django.herald_config();
    config.membership_lease = 2;
    config.membership_refresh = Some(1);
    let sink = CountingLayer::default();
    let shutdown = CancellationToken::new();
    let nodes = start_nodes(1, &config, &sink, &["user.42", "user.43"], &shutdown).await;

    // The condition here is time itself: the membership must survive longer than
    // group_expiry, which Django would otherwise prune at its next group_send.
    tokio::time::sleep(Duration::from_secs(5)).await;
    django.group_send("user.42", "still here", 1).await;
    eventually(DEADLINE, "the message after group_expiry", || async {
        sink.count() == 1
    })
    .await;

    // No local member any more: the membership lapses after the lease.
    nodes[0].group_inactive(&group("user.42")).await.unwrap();
    let url = redis.url();
    eventually(DEADLINE, "the membership to lapse", || {
        let url = url.clone();
        async move {
            let mut conn = redis_conn(&url).await;
            let score: Option<f64> = redis::cmd("ZSCORE")
                .arg("asgi:group:user.42")
                .arg("specific.herald!user.42")
                .query_async(&mut conn)
                .await
                .unwrap();
            let (now, _): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
            // Django prunes scores <= int(now) - group_expiry.
            score.is_none_or(|s| s <= (now - 3) as f64)
        }
    })
    .await;
    django.group_send("user.42", "gone", 1).await;
    django.group_send("user.43", "marker", 1).await;
    eventually(DEADLINE, "the marker", || async { sink.count() == 2 }).await;
    assert_eq!(sink.published()[1].1, Payload::text("marker"));
    assert_eq!(zcard(&redis.url(), "asgi:group:user.42").await, 0);
    assert_eq!(nodes[0].stats().received, 2);
    stop(shutdown, nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_redis_restart() {
    let mut redis = RedisProcess::start();
    let django = DjangoSide::core(vec![redis.url()]);
    let mut config = django.herald_config();
    config.membership_lease = 2;
    config.membership_refresh = Some(1);
    let sink = CountingLayer::default();
    let shutdown = CancellationToken::new();
    let nodes = start_nodes(1, &config, &sink, &["user.42"], &shutdown).await;

    // A restart without persistence loses herald's membership too; the next refresh
    // writes it again, and the drain loop reconnects on its own.
    redis.restart();
    let url = redis.url();
    eventually(DEADLINE, "the membership to be written again", || {
        let url = url.clone();
        async move {
            match redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
            {
                Ok(mut conn) => redis::cmd("ZCARD")
                    .arg("asgi:group:user.42")
                    .query_async::<u64>(&mut conn)
                    .await
                    .is_ok_and(|n| n == 1),
                Err(_) => false,
            }
        }
    })
    .await;
    django.group_send("user.42", "after restart", 1).await;
    eventually(DEADLINE, "the message after the restart", || async {
        sink.count() == 1
    })
    .await;
    assert_eq!(sink.published()[0].1, Payload::text("after restart"));
    stop(shutdown, nodes).await;
}
