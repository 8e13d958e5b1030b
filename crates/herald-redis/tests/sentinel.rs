//! `RedisLayer` on `redis+sentinel://` against a real Sentinel set (1 master, 2 replicas,
//! 3 sentinels): the conformance suite, following a failover, and lost acknowledged
//! writes turned into a new epoch.

mod support;

use std::time::Duration;

use herald_core::{Epoch, HistoryConfig, Incoming, Layer, LayerError, Payload, Position};
use herald_redis::{RedisLayer, RedisLayerConfig};
use herald_testkit::redis::unique_prefix;
use herald_testkit::sentinel::SentinelSet;
use support::{group, recv_within, wait_until};
use tokio::time::Instant;

fn layer(set: &SentinelSet, prefix: &str, history: HistoryConfig) -> (RedisLayer, Incoming) {
    let config = RedisLayerConfig::new(set.url())
        .with_prefix(prefix)
        .with_history(history)
        .with_probe_interval(Duration::from_millis(250))
        .with_incoming_capacity(1024);
    RedisLayer::new(config).expect("valid config")
}

async fn ready(layer: &RedisLayer, limit: Duration) {
    wait_until("layer ready", limit, || layer.is_ready()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_layer_conforms() {
    let set = SentinelSet::start().await;
    herald_testkit::conformance::run_all(|history| {
        let (layer, rx) = layer(&set, &unique_prefix(), history);
        async move {
            ready(&layer, Duration::from_secs(10)).await;
            (layer, rx)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_publishes_fail_fast_in_the_gap_then_deliver() {
    let mut set = SentinelSet::start().await;
    let (layer, mut rx) = layer(&set, &unique_prefix(), HistoryConfig::default());
    ready(&layer, Duration::from_secs(10)).await;
    let g = group("failover");
    layer.subscribe(&g).await.unwrap();
    let first = layer.publish(&g, Payload::text("before")).await.unwrap();
    assert_eq!(recv_within(&mut rx, Duration::from_secs(5)).await.offset, 1);
    let old = set.master_port().await.expect("a master");
    assert!(set.replicas_in_sync(old, 2).await, "replicas caught up");

    set.kill_server(old);
    // Until the new master is found, publishes fail at once (503 at the API), never hang.
    wait_until("not ready after the kill", Duration::from_secs(10), || {
        !layer.is_ready()
    })
    .await;
    let started = Instant::now();
    match layer.publish(&g, Payload::text("in the gap")).await {
        Err(LayerError::Unavailable(_)) => {}
        other => panic!("a publish in the gap: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3), "failed fast");

    let (new, promoted) = set.wait_new_master(old, Duration::from_secs(30)).await;
    assert_ne!(new, old);
    // Delivery resumes within 10 s of the promotion, through the new master.
    let deadline = promoted + Duration::from_secs(10);
    let position = loop {
        match layer.publish(&g, Payload::text("after")).await {
            Ok(position) => break position,
            Err(LayerError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("publish after the promotion: {other:?}"),
        }
    };
    let message = recv_within(&mut rx, deadline.saturating_duration_since(Instant::now())).await;
    assert_eq!(message.offset, position.offset);
    assert_eq!(
        position.epoch, first.epoch,
        "nothing was lost: same history"
    );
    assert_eq!(position.offset, 2);
    assert!(layer.is_ready());
    assert!(layer.stats().reconnects >= 1);
    assert_eq!(layer.stats().lost_writes, 0);
    layer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_lost_in_a_failover_give_the_group_a_new_epoch() {
    let mut set = SentinelSet::start().await;
    let prefix = unique_prefix();
    let (layer, mut rx) = layer(&set, &prefix, HistoryConfig::default());
    // A second node that only listens: it must be told too, whichever node resets.
    let (other, mut other_rx) = self::layer(&set, &prefix, HistoryConfig::default());
    ready(&layer, Duration::from_secs(10)).await;
    ready(&other, Duration::from_secs(10)).await;
    let g = group("lost");
    layer.subscribe(&g).await.unwrap();
    other.subscribe(&g).await.unwrap();
    for i in 1..=3u64 {
        let p = layer
            .publish(&g, Payload::text(format!("{i}")))
            .await
            .unwrap();
        assert_eq!(p.offset, i);
    }
    let old = set.master_port().await.expect("a master");
    assert!(set.replicas_in_sync(old, 2).await);
    let epoch = layer.history(&g, None).await.unwrap().current.epoch;

    set.cut_replication(old).await;
    // Acknowledged by the master only: lost with it.
    for i in 4..=5u64 {
        let p = layer
            .publish(&g, Payload::text(format!("{i}")))
            .await
            .unwrap();
        assert_eq!(p.offset, i);
    }
    for i in 1..=5u64 {
        assert_eq!(recv_within(&mut rx, Duration::from_secs(5)).await.offset, i);
        assert_eq!(
            recv_within(&mut other_rx, Duration::from_secs(5))
                .await
                .offset,
            i
        );
    }
    set.kill_server(old);
    let (new, _) = set.wait_new_master(old, Duration::from_secs(40)).await;
    ready(&layer, Duration::from_secs(20)).await;

    // The layer told its node: a reset notice (offset 0) under a new epoch.
    let notice = recv_within(&mut rx, Duration::from_secs(10)).await;
    assert_eq!(notice.offset, 0, "a reset notice");
    assert_ne!(notice.epoch, epoch, "under a new epoch");
    let other_notice = recv_within(&mut other_rx, Duration::from_secs(10)).await;
    assert_eq!(
        (other_notice.offset, &other_notice.epoch),
        (0, &notice.epoch)
    );
    assert_eq!(
        layer.stats().lost_writes + other.stats().lost_writes,
        1,
        "one node found the loss and reset the group"
    );
    // A client resuming from what it saw is told the history cannot cover it.
    let resumed = layer
        .history(
            &g,
            Some(&Position {
                offset: 5,
                epoch: epoch.clone(),
            }),
        )
        .await
        .unwrap();
    assert!(!resumed.recovered, "never a silent resume: {resumed:?}");
    assert_eq!(resumed.current.epoch, notice.epoch);
    // New publishes continue under the new epoch, after the offsets the master kept.
    let next = layer.publish(&g, Payload::text("6")).await.unwrap();
    assert_eq!(next.epoch, notice.epoch);
    let live = recv_within(&mut rx, Duration::from_secs(5)).await;
    assert_eq!((live.offset, live.epoch), (next.offset, next.epoch));
    assert_eq!(set.role(new).await.as_deref(), Some("master"));
    layer.close().await;
    other.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_since_a_future_offset_of_the_same_epoch_is_not_recovered() {
    let set = SentinelSet::start().await;
    let (layer, _rx) = layer(&set, &unique_prefix(), HistoryConfig::default());
    ready(&layer, Duration::from_secs(10)).await;
    let g = group("future");
    let p = layer.publish(&g, Payload::text("1")).await.unwrap();
    let ahead = Position {
        offset: p.offset + 3,
        epoch: p.epoch.clone(),
    };
    let h = layer.history(&g, Some(&ahead)).await.unwrap();
    assert!(
        !h.recovered,
        "a position past the current one is not covered"
    );
    assert_eq!(h.current, p);
    let other = Position {
        offset: 1,
        epoch: Epoch::new("other"),
    };
    assert!(!layer.history(&g, Some(&other)).await.unwrap().recovered);
    layer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_sentinel_is_skipped_at_connect_and_in_a_failover() {
    let mut set = SentinelSet::start().await;
    let first = set.sentinel_ports()[0];
    set.kill_sentinel(first);
    let (layer, mut rx) = layer(&set, &unique_prefix(), HistoryConfig::default());
    ready(&layer, Duration::from_secs(10)).await;
    let g = group("g");
    layer.subscribe(&g).await.unwrap();
    layer.publish(&g, Payload::text("1")).await.unwrap();
    assert_eq!(recv_within(&mut rx, Duration::from_secs(5)).await.offset, 1);
    let old = set.master_port().await.expect("a master");
    assert!(set.replicas_in_sync(old, 2).await);
    // Two sentinels left: still a quorum and a majority for the failover.
    set.kill_server(old);
    let (_, promoted) = set.wait_new_master(old, Duration::from_secs(40)).await;
    let deadline = promoted + Duration::from_secs(10);
    let position = loop {
        match layer.publish(&g, Payload::text("2")).await {
            Ok(p) => break p,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no publish within 10 s of the promotion: {e}"),
        }
    };
    assert_eq!(position.offset, 2);
    assert_eq!(recv_within(&mut rx, Duration::from_secs(5)).await.offset, 2);
    layer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_first_sentinel_does_not_keep_the_layer_from_its_master() {
    let set = SentinelSet::start().await;
    let first = set.sentinel_ports()[0];
    // Frozen: the connection is accepted, nothing is answered.
    set.pause_sentinel(first);
    let (layer, mut rx) = layer(&set, &unique_prefix(), HistoryConfig::default());
    ready(&layer, Duration::from_secs(20)).await;
    let g = group("g");
    layer.subscribe(&g).await.unwrap();
    layer.publish(&g, Payload::text("1")).await.unwrap();
    assert_eq!(recv_within(&mut rx, Duration::from_secs(5)).await.offset, 1);
    layer.close().await;
}
