//! `RedisLayer` on a real Redis Cluster: the wanted set stays the one record of what is
//! wanted when the shard of a group hangs (SIGSTOP) during its subscribe or unsubscribe.

mod support;

use std::time::Duration;

use herald_core::{GroupName, Layer, LayerError, Payload};
use herald_redis::{RedisLayer, RedisLayerConfig};
use herald_testkit::cluster::RedisCluster;
use herald_testkit::redis::unique_prefix;
use support::{group, recv_within, wait_until, within};

async fn start_cluster() -> RedisCluster {
    tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster start")
}

/// Two groups whose channels are on the same master, and that master's port.
fn two_groups_on_one_master(cluster: &RedisCluster, prefix: &str) -> (GroupName, GroupName, u16) {
    let master_of =
        |g: &str| cluster.master_of_slot(cluster.slot_of(&format!("{prefix}:{{{g}}}:ch")));
    let first = master_of("g0");
    let second = (1..1000)
        .map(|i| format!("g{i}"))
        .find(|g| master_of(g) == first)
        .expect("another group on the same master");
    (group("g0"), group(&second), first)
}

/// Publishes until the layer accepts (a failover may be under way).
async fn publish_eventually(layer: &RedisLayer, g: &GroupName, text: &str) {
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match layer.publish(g, Payload::text(text)).await {
            Ok(_) => return,
            Err(LayerError::Unavailable(_)) if tokio::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("publish {g}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_shard_during_subscribe_and_unsubscribe_leaves_one_record() {
    let cluster = start_cluster().await;
    let prefix = unique_prefix();
    let config = RedisLayerConfig::new(cluster.url())
        .with_prefix(prefix.clone())
        .with_incoming_capacity(1024);
    let (layer, mut rx) = RedisLayer::new(config).expect("valid config");
    wait_until("cluster layer ready", Duration::from_secs(15), || {
        layer.is_ready()
    })
    .await;
    let (g, marker, master) = two_groups_on_one_master(&cluster, &prefix);

    // Subscribe while the group's shard hangs: no confirmation in time, but the group is
    // wanted, and once the shard answers again its messages arrive.
    cluster.pause(master);
    let subscribed = within(
        "subscribe on a hung shard",
        Duration::from_secs(10),
        layer.subscribe(&g),
    )
    .await;
    cluster.resume(master);
    assert!(
        matches!(subscribed, Err(LayerError::Unavailable(_))),
        "{subscribed:?}"
    );
    assert!(layer.is_subscribed(&g), "the group stays wanted");
    wait_until("layer ready again", Duration::from_secs(30), || {
        layer.is_ready()
    })
    .await;
    publish_eventually(&layer, &g, "after").await;
    let m = recv_within(&mut rx, Duration::from_secs(15)).await;
    assert_eq!(
        (m.group.clone(), m.payload),
        (g.clone(), Payload::text("after"))
    );

    // Unsubscribe while the shard (whoever is its master now) hangs: the group is no
    // longer wanted at once, and nothing more of it is delivered, while a group still
    // wanted on the same shard is.
    within(
        "subscribe the marker",
        Duration::from_secs(10),
        layer.subscribe(&marker),
    )
    .await
    .expect("subscribe the marker");
    let master = cluster.master_of_slot(cluster.slot_of(&format!("{prefix}:{{{g}}}:ch")));
    cluster.pause(master);
    let _ = within(
        "unsubscribe on a hung shard",
        Duration::from_secs(10),
        layer.unsubscribe(&g),
    )
    .await;
    cluster.resume(master);
    assert!(!layer.is_subscribed(&g), "the group is unwanted at once");
    wait_until("layer ready again", Duration::from_secs(30), || {
        layer.is_ready()
    })
    .await;
    publish_eventually(&layer, &g, "unwanted").await;
    publish_eventually(&layer, &marker, "marker").await;
    let m = recv_within(&mut rx, Duration::from_secs(15)).await;
    assert_eq!(
        (m.group.clone(), m.payload),
        (marker.clone(), Payload::text("marker")),
        "nothing of the unwanted group comes first"
    );
    assert!(rx.try_recv().is_err(), "and nothing after");
    layer.close().await;
}
