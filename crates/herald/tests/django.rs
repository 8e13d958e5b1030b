//! The Django bridge inside `herald serve`: unchanged Django Channels code
//! (`async_to_sync(channel_layer.group_send)(...)`, run by real Django + channels +
//! channels_redis from the venv) reaches the WebSocket clients of several herald nodes,
//! each message exactly once per client; and `herald publish --django` reaches a consumer
//! running under daphne.

mod support;

#[allow(unused_imports)]
#[path = "../../herald-django/tests/support/mod.rs"]
mod djsupport;

use std::time::Duration;

use djsupport::DjangoSide;
use herald_django::GroupMapRule;
use herald_testkit::redis::{RedisProcess, unique_prefix};
use support::{Received, TestServer, WsClient, redis_config};

fn mapped(side: &DjangoSide) -> herald_django::DjangoConfig {
    let mut config = side.herald_config();
    config.group_map = vec![GroupMapRule {
        herald: "user.{id}".into(),
        channels: "user_{id}".into(),
    }];
    config
}

/// Starts `n` herald nodes on the Redis layer with the bridge configured like `side`.
async fn nodes(n: usize, redis: &RedisProcess, side: &DjangoSide) -> Vec<TestServer> {
    let prefix = unique_prefix();
    let mut nodes = Vec::new();
    for _ in 0..n {
        let mut config = redis_config(&redis.url(), &prefix);
        config.django = mapped(side);
        nodes.push(TestServer::with_config(config).await);
    }
    nodes
}

/// Reads `count` text frames from each client (within the deadline each).
async fn texts(client: &mut WsClient, count: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..count {
        out.push(client.recv_text().await.unwrap());
    }
    out
}

async fn exactly_once_on_every_node(side: DjangoSide, redis: &RedisProcess, node_count: usize) {
    let nodes = nodes(node_count, redis, &side).await;
    let mut members = Vec::new();
    for node in &nodes {
        members.push(node.connect_user("42").await);
    }
    members.push(nodes[0].connect_user("42").await);
    let mut other = nodes[node_count - 1].connect_user("43").await;

    // Django code, unchanged: group_send to the channels group of user 42.
    let count = 12;
    // The same text `count` times: identical messages must not be merged either. (Each
    // round uses its own text: see herald-django's pubsub docs on nodes that all just
    // started.)
    let text = format!("from django to {node_count} nodes");
    side.group_send("user_42", &text, count).await;
    for member in &mut members {
        let got = texts(member, count).await;
        assert!(got.iter().all(|t| *t == text), "{got:?}");
    }
    // Exactly once: the next frame each member sees is a fresh marker, and user 43 got
    // none of Django's messages.
    nodes[0]
        .publish(r#"{"group":"user.42","text":"marker"}"#)
        .await;
    nodes[0]
        .publish(r#"{"group":"user.43","text":"for 43"}"#)
        .await;
    for member in &mut members {
        assert_eq!(
            member.recv().await.unwrap(),
            Received::Text("marker".into())
        );
    }
    assert_eq!(other.recv().await.unwrap(), Received::Text("for 43".into()));
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_backend_two_and_three_nodes_encrypted_custom_prefix() {
    let redis = RedisProcess::start();
    let mut side = DjangoSide::core(vec![redis.url()]);
    side.keys = vec!["s3cret".into()];
    side.prefix = "myapp".into();
    exactly_once_on_every_node(side.clone(), &redis, 2).await;
    exactly_once_on_every_node(side, &redis, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_backend_sharded_over_two_redis_hosts() {
    let redis = RedisProcess::start();
    let second = RedisProcess::start();
    let side = DjangoSide::core(vec![redis.url(), second.url()]);
    exactly_once_on_every_node(side, &redis, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_backend_two_and_three_nodes() {
    let redis = RedisProcess::start();
    let side = DjangoSide::pubsub(vec![redis.url()]);
    exactly_once_on_every_node(side.clone(), &redis, 2).await;
    exactly_once_on_every_node(side, &redis, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_publish_reaches_a_daphne_consumer() {
    let redis = RedisProcess::start();
    let side = DjangoSide::core(vec![redis.url()]);
    let (_daphne, port) = side.daphne().await;
    let nodes = nodes(1, &redis, &side).await;
    let url = format!("ws://127.0.0.1:{port}/message/alice/stream/");
    let mut ws = side.spawn(&["ws", &url, "1", "20"]);
    ws.next().await; // connected; the consumer joined user_alice
    let out = tokio::process::Command::new(support::herald_bin())
        .args([
            "publish",
            "--server",
            &nodes[0].http_url(""),
            "--django",
            "user.alice",
            "hello daphne",
        ])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ws.next().await["text"], "hello daphne");
    ws.finish().await;
    // Without the bridge, asking for Django is a clear 400.
    let plain = TestServer::start().await;
    let (status, body) = plain
        .publish(r#"{"group":"user.1","text":"x","django":true}"#)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("django_disabled"))
    );
    plain.stop().await;
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_older_than_group_expiry_still_receives() {
    let redis = RedisProcess::start();
    let mut side = DjangoSide::core(vec![redis.url()]);
    side.group_expiry = 2;
    let nodes = nodes(1, &redis, &side).await;
    let mut client = nodes[0].connect_user("42").await;
    // Outlive group_expiry (channels_redis prunes members older than it at group_send).
    tokio::time::sleep(Duration::from_secs(4)).await;
    side.group_send("user_42", "late", 1).await;
    assert_eq!(client.recv_text().await.unwrap(), "late");
    for node in nodes {
        node.stop().await;
    }
}
