//! `idempotency_key` on publish (DESIGN.md §6): a retry answers the first offset and
//! delivers nothing twice — through one node, and through three nodes on one real
//! redis-server.

mod support;

use std::time::Duration;

use herald::Config;
use herald_testkit::redis::{RedisProcess, unique_prefix};
use serde_json::json;
use support::{TestServer, WsClient, redis_config};

const DEADLINE: Duration = Duration::from_secs(5);

async fn publish_keyed(node: &TestServer, text: &str, key: &str) -> serde_json::Value {
    let body = json!({"group": "user.42", "text": text, "idempotency_key": key}).to_string();
    let (status, answer) = node.publish(&body).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// The next text `ws` receives must be `text` (nothing else before it).
async fn assert_next(ws: &mut WsClient, text: &str) {
    let got = tokio::time::timeout(DEADLINE, ws.recv_text())
        .await
        .expect("a message within the deadline")
        .expect("a text message");
    assert_eq!(got, text);
}

#[tokio::test]
async fn retry_through_each_of_three_redis_nodes_publishes_once() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let mut config = redis_config(&redis.url(), &prefix);
        config.publish.idempotency_window = Duration::from_millis(800);
        nodes.push(TestServer::with_config(config).await);
    }
    let mut members = Vec::new();
    for node in &nodes {
        members.push(node.connect_user("42").await);
    }
    let first = publish_keyed(&nodes[0], "order 17 shipped", "order-17-shipped").await;
    for node in &nodes[1..] {
        let retry = publish_keyed(node, "order 17 shipped", "order-17-shipped").await;
        assert_eq!(retry["offset"], first["offset"]);
        assert_eq!(retry["epoch"], first["epoch"]);
    }
    // One delivery per member: the marker is the very next message everywhere.
    let (status, _) = nodes[2]
        .publish(r#"{"group":"user.42","text":"marker"}"#)
        .await;
    assert_eq!(status, 200);
    for ws in &mut members {
        assert_next(ws, "order 17 shipped").await;
        assert_next(ws, "marker").await;
    }
    let metrics = support::http(nodes[1].addr, "GET", "/metrics", &[], b"")
        .await
        .1;
    assert!(
        metrics.contains("herald_publish_duplicates_total 1"),
        "{metrics}"
    );
    // After the window the same key publishes again (wait for it, with a deadline).
    let until = tokio::time::Instant::now() + DEADLINE;
    let again = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let answer = publish_keyed(&nodes[1], "order 17 shipped", "order-17-shipped").await;
        if answer["offset"] != first["offset"] {
            break answer;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the window never ended"
        );
    };
    assert_eq!(again["offset"], 3);
    for ws in &mut members {
        assert_next(ws, "order 17 shipped").await;
    }
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn retry_on_the_memory_layer_publishes_once() {
    let server = TestServer::with_config(Config::default()).await;
    let mut ws = server.connect_user("42").await;
    let first = publish_keyed(&server, "a", "k1").await;
    let retry = publish_keyed(&server, "a", "k1").await;
    assert_eq!(first["offset"], retry["offset"]);
    let other = publish_keyed(&server, "b", "k2").await;
    assert_eq!(other["offset"], 2);
    assert_next(&mut ws, "a").await;
    assert_next(&mut ws, "b").await;
}

#[tokio::test]
async fn invalid_idempotency_keys_are_refused() {
    let server = TestServer::with_config(Config::default()).await;
    for key in [
        json!(""),
        json!("has space"),
        json!("x".repeat(257)),
        json!(7),
    ] {
        let body = json!({"group": "user.42", "text": "a", "idempotency_key": key}).to_string();
        let (status, answer) = server.publish(&body).await;
        assert_eq!(status, 400, "{key}: {answer}");
    }
    let batch = json!({"messages": [{"group": "g", "text": "a"}], "idempotency_key": "k"});
    let (status, _) = server.publish(&batch.to_string()).await;
    assert_eq!(status, 400);
}
