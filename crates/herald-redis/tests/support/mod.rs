//! Helpers shared by the Redis layer's integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use herald_core::{GroupName, HistoryConfig, Incoming, Message};
use herald_redis::{RedisLayer, RedisLayerConfig};
use herald_testkit::redis::RedisProcess;
use tokio::time::Instant;

/// A layer on `redis` with `prefix` and fast-failing timeouts for tests.
pub fn layer(redis: &RedisProcess, prefix: &str) -> (RedisLayer, Incoming) {
    layer_with(redis, prefix, HistoryConfig::default())
}

pub fn layer_with(
    redis: &RedisProcess,
    prefix: &str,
    history: HistoryConfig,
) -> (RedisLayer, Incoming) {
    let config = RedisLayerConfig::new(redis.url())
        .with_prefix(prefix)
        .with_history(history)
        .with_incoming_capacity(1024);
    RedisLayer::new(config).expect("valid config")
}

/// Polls `condition` every 10 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for a fresh layer to be connected and subscribed.
pub async fn ready(layer: &RedisLayer) {
    use herald_core::Layer;
    wait_until("layer ready", Duration::from_secs(5), || layer.is_ready()).await;
}

/// The next message, or a panic after `limit`.
pub async fn recv_within(rx: &mut Incoming, limit: Duration) -> Message {
    match tokio::time::timeout(limit, rx.recv()).await {
        Ok(Some(message)) => message,
        Ok(None) => panic!("Incoming closed"),
        Err(_) => panic!("no message within {limit:?}"),
    }
}

/// `fut` with a deadline; panics naming `what`.
pub async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {limit:?}"))
}

pub fn group(name: &str) -> GroupName {
    GroupName::new(name).expect("valid test group name")
}
