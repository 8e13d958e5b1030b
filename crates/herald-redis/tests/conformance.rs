//! `RedisLayer` against the shared layer conformance suite, on a real redis-server.

mod support;

use herald_testkit::redis::{RedisProcess, unique_prefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_layer_conforms() {
    let redis = RedisProcess::start();
    herald_testkit::conformance::run_all(|history| {
        // A fresh prefix per case: no case can see another's keys.
        let (layer, rx) = support::layer_with(&redis, &unique_prefix(), history);
        async move {
            support::ready(&layer).await;
            (layer, rx)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_layer_conforms() {
    let cluster = tokio::task::spawn_blocking(herald_testkit::cluster::RedisCluster::start)
        .await
        .expect("cluster start");
    let url = cluster.url();
    herald_testkit::conformance::run_all(|history| {
        let config = herald_redis::RedisLayerConfig::new(url.clone())
            .with_prefix(unique_prefix())
            .with_history(history)
            .with_incoming_capacity(1024);
        let (layer, rx) = herald_redis::RedisLayer::new(config).expect("valid config");
        async move {
            support::wait_until(
                "cluster layer ready",
                std::time::Duration::from_secs(15),
                || herald_core::Layer::is_ready(&layer),
            )
            .await;
            (layer, rx)
        }
    })
    .await;
    drop(cluster);
}
