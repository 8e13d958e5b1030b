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
