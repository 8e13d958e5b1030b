//! herald -> Django: a consumer running under daphne receives what the bridge sends.

mod support;

use herald_core::Payload;
use herald_django::GroupMapRule;
use herald_testkit::redis::RedisProcess;
use support::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daphne_consumer_receives_group_send_from_herald() {
    let redis = RedisProcess::start();
    let django = DjangoSide::core(vec![redis.url()]);
    let (_daphne, port) = django.daphne().await;
    let mut config = django.herald_config();
    config.group_map = vec![GroupMapRule {
        herald: "user.{id}".into(),
        channels: "user_{id}".into(),
    }];
    let sink = CountingLayer::default();
    let shutdown = CancellationToken::new();
    // herald also holds the group, as it would with its own browsers connected.
    let nodes = start_nodes(1, &config, &sink, &["user.alice"], &shutdown).await;

    let url = format!("ws://127.0.0.1:{port}/message/alice/stream/");
    let mut ws = django.spawn(&["ws", &url, "2", "20"]);
    ws.next().await; // ready: connected, and the consumer joined user_alice on connect

    let report = nodes[0]
        .group_send(&group("user.alice"), &Payload::text("hello from herald"))
        .await
        .unwrap();
    assert_eq!((report.members, report.queued, report.full), (1, 1, 0));
    assert_eq!(ws.next().await["text"], "hello from herald");

    nodes[0]
        .group_send(&group("user.alice"), &Payload::binary(&[0u8, 1, 255][..]))
        .await
        .unwrap();
    assert_eq!(ws.next().await["bytes_hex"], "0001ff");
    ws.finish().await;

    // Nothing came back into herald.
    assert_eq!(sink.count(), 0);
    assert_eq!(nodes[0].stats().sent, 2);
    stop(shutdown, nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_django_queue_drops_like_channels_redis() {
    let redis = RedisProcess::start();
    let mut django = DjangoSide::core(vec![redis.url()]);
    // Django's consumers get a capacity of 1; a listener that does not read fills it.
    django.capacity_json = Some(r#"{"specific.*": 1}"#.into());
    let mut config = django.herald_config();
    config.channel_capacity = vec![herald_django::CapacityRule {
        pattern: "specific.*".into(),
        capacity: 1,
    }];
    let sink = CountingLayer::default();
    let shutdown = CancellationToken::new();
    let nodes = start_nodes(1, &config, &sink, &[], &shutdown).await;
    // A consumer that joined and never reads: its queue keeps whatever is sent.
    django.run(&["join", "user.7"]).await;
    let first = nodes[0]
        .group_send(&group("user.7"), &Payload::text("one"))
        .await
        .unwrap();
    let second = nodes[0]
        .group_send(&group("user.7"), &Payload::text("two"))
        .await
        .unwrap();
    assert_eq!((first.queued, first.full), (1, 0));
    assert_eq!((second.queued, second.full), (0, 1));
    let stats = nodes[0].stats();
    assert_eq!((stats.sent, stats.send_capacity_drops), (1, 1));
    stop(shutdown, nodes).await;
}
