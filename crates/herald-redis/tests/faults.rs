//! The Redis layer when Redis goes away, comes back empty, or is not there at start.

mod support;

use std::time::Duration;

use herald_core::{Layer, LayerError, Payload};
use herald_testkit::redis::{RedisProcess, unique_prefix};
use tokio::time::Instant;

use support::{group, layer, ready, recv_within, wait_until, within};

/// How fast a call must fail while Redis is down.
const FAIL_FAST: Duration = Duration::from_secs(2);

#[tokio::test]
async fn stopped_redis_makes_calls_fail_fast() {
    let mut redis = RedisProcess::start();
    let (layer, _rx) = layer(&redis, &unique_prefix());
    ready(&layer).await;
    let g = group("g");
    within("publish", FAIL_FAST, layer.publish(&g, Payload::text("up")))
        .await
        .expect("publish while up");

    redis.stop();
    // The very first call after the stop may be the one that discovers it: it must fail
    // fast as well, not hang.
    let first = within(
        "publish after stop",
        FAIL_FAST,
        layer.publish(&g, Payload::text("x")),
    )
    .await;
    assert!(
        matches!(first, Err(LayerError::Unavailable(_))),
        "{first:?}"
    );

    wait_until("not ready after stop", FAIL_FAST, || !layer.is_ready()).await;
    let publish = within(
        "publish while down",
        FAIL_FAST,
        layer.publish(&g, Payload::text("x")),
    )
    .await;
    assert!(
        matches!(publish, Err(LayerError::Unavailable(_))),
        "{publish:?}"
    );
    let history = within("history while down", FAIL_FAST, layer.history(&g, None)).await;
    assert!(
        matches!(history, Err(LayerError::Unavailable(_))),
        "{history:?}"
    );
    let batch = within(
        "batch while down",
        FAIL_FAST,
        layer.publish_batch(vec![(g.clone(), Payload::text("x"))]),
    )
    .await;
    assert!(
        matches!(batch, Err((0, LayerError::Unavailable(_)))),
        "{batch:?}"
    );
    assert!(layer.stats().unavailable >= 4);
}

#[tokio::test]
async fn restarted_redis_resubscribes_and_starts_a_new_epoch() {
    let mut redis = RedisProcess::start();
    let (layer, mut rx) = layer(&redis, &unique_prefix());
    ready(&layer).await;
    let g = group("live");
    layer.subscribe(&g).await.expect("subscribe");
    let before = layer
        .publish(&g, Payload::text("before"))
        .await
        .expect("publish");
    assert_eq!(
        recv_within(&mut rx, Duration::from_secs(5)).await.offset,
        before.offset
    );

    redis.restart();
    wait_until("reconnected and ready", Duration::from_secs(5), || {
        layer.stats().reconnects >= 1 && layer.is_ready()
    })
    .await;

    // The layer remembered the group's epoch; Redis lost it: its node is told at once,
    // with a reset notice (offset 0, another epoch), so streams reset without waiting
    // for the group's next message.
    let notice = recv_within(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(notice.offset, 0, "a reset notice");
    assert_ne!(notice.epoch, before.epoch);

    // No new subscribe call: the layer re-subscribed on its own.
    let after = within(
        "publish after restart",
        FAIL_FAST,
        layer.publish(&g, Payload::text("after")),
    )
    .await
    .expect("publish after restart");
    assert_eq!(after.offset, 1, "the data was lost, offsets restart");
    assert_ne!(after.epoch, before.epoch, "a lost history gets a new epoch");
    let message = recv_within(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(
        (message.offset, &message.epoch),
        (after.offset, &after.epoch)
    );
    assert_eq!(message.payload, Payload::text("after"));

    // A client resuming from the old epoch is told it cannot be recovered.
    let h = layer.history(&g, Some(&before)).await.expect("history");
    assert!(!h.recovered);
    assert_eq!(h.current, after);
}

#[tokio::test]
async fn subscriptions_made_while_down_apply_on_reconnect() {
    let mut redis = RedisProcess::start();
    redis.stop();
    // Redis is unreachable at start: building the layer still works.
    let (layer, mut rx) = layer(&redis, &unique_prefix());
    let g = group("later");
    within("subscribe while down", FAIL_FAST, layer.subscribe(&g))
        .await
        .expect("subscribe while down is recorded");
    let publish = within(
        "publish while down",
        FAIL_FAST,
        layer.publish(&g, Payload::text("x")),
    )
    .await;
    assert!(
        matches!(publish, Err(LayerError::Unavailable(_))),
        "{publish:?}"
    );
    assert!(!layer.is_ready());
    // Let the background task fail at least once, so the retry path is what recovers.
    wait_until("a failed connection attempt", FAIL_FAST, || {
        layer.stats().connect_failures >= 1
    })
    .await;

    redis.restart();
    ready(&layer).await;
    let position = layer
        .publish(&g, Payload::text("hello"))
        .await
        .expect("publish");
    let message = recv_within(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(
        (message.group.clone(), message.offset),
        (g, position.offset)
    );
}

#[tokio::test]
async fn dropping_the_layer_stops_its_connections() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let (layer, mut rx) = layer(&redis, &prefix);
    ready(&layer).await;
    layer.subscribe(&group("g")).await.expect("subscribe");
    // The group's channel and the layer's probe channel.
    let channel = format!("{prefix}:*");
    assert_eq!(
        redis
            .cmd_strings(&["PUBSUB", "CHANNELS", &channel])
            .await
            .len(),
        2
    );
    let clone = layer.clone();
    drop(layer);
    assert!(
        clone.is_ready(),
        "a remaining clone keeps the layer running"
    );
    drop(clone);
    // The task ends, its connections close, and with them the subscription; Incoming ends.
    within("Incoming closes", Duration::from_secs(5), async {
        while rx.recv().await.is_some() {}
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !redis
        .cmd_strings(&["PUBSUB", "CHANNELS", &channel])
        .await
        .is_empty()
    {
        assert!(Instant::now() < deadline, "subscription outlived the layer");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn close_is_final() {
    let redis = RedisProcess::start();
    let (layer, _rx) = layer(&redis, &unique_prefix());
    ready(&layer).await;
    within("close", Duration::from_secs(5), layer.close()).await;
    within("second close", Duration::from_secs(5), layer.close()).await;
    assert!(!layer.is_ready());
    let g = group("g");
    assert_eq!(
        layer.publish(&g, Payload::text("x")).await,
        Err(LayerError::Closed)
    );
    assert_eq!(layer.subscribe(&g).await, Err(LayerError::Closed));
}

#[tokio::test]
async fn invalid_configs_are_refused() {
    use herald_redis::{RedisLayer, RedisLayerConfig, RedisLayerError};
    for url in ["not a url", "http://127.0.0.1:1/"] {
        let err = RedisLayer::new(RedisLayerConfig::new(url)).expect_err(url);
        assert!(
            matches!(err, RedisLayerError::InvalidUrl(_)),
            "{url}: {err:?}"
        );
    }
    let err =
        RedisLayer::new(RedisLayerConfig::new("redis+unix:///tmp/redis.sock")).expect_err("unix");
    assert!(
        matches!(err, RedisLayerError::UnsupportedAddress(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn frozen_redis_times_out_and_recovers() {
    use herald_redis::{RedisLayer, RedisLayerConfig};
    let redis = RedisProcess::start();
    let mut config = RedisLayerConfig::new(redis.url()).with_prefix(unique_prefix());
    config.command_timeout = Duration::from_millis(300);
    config.health_check_interval = Duration::from_millis(200);
    let (layer, mut rx) = RedisLayer::new(config).expect("valid config");
    ready(&layer).await;
    let g = group("g");
    layer.subscribe(&g).await.expect("subscribe");

    redis.pause();
    // Connections stay open but nothing answers: the command deadline is what fails it.
    let publish = within(
        "publish while frozen",
        FAIL_FAST,
        layer.publish(&g, Payload::text("x")),
    )
    .await;
    assert!(
        matches!(publish, Err(LayerError::Unavailable(_))),
        "{publish:?}"
    );
    // The silent subscriber connection is declared lost by the health check.
    wait_until("not ready while frozen", Duration::from_secs(3), || {
        !layer.is_ready()
    })
    .await;

    redis.resume();
    wait_until("ready after resume", Duration::from_secs(5), || {
        layer.is_ready()
    })
    .await;
    let p = layer
        .publish(&g, Payload::text("back"))
        .await
        .expect("publish after resume");
    // The publish that timed out may or may not have run: skip it if it arrives.
    loop {
        let m = recv_within(&mut rx, Duration::from_secs(5)).await;
        if m.payload == Payload::text("back") {
            assert_eq!(m.offset, p.offset);
            break;
        }
    }
}
