//! `/admin/`: off without a key; every data endpoint answers 401 without it; with two
//! nodes on one Redis, each node's view shows both, with their connections, the busiest
//! groups, and live reports over the admin stream.

mod support;

use std::time::Duration;

use herald_testkit::redis::RedisProcess;
use serde_json::Value;
use support::raw::{RawWs, upgrade_request};
use support::{TestServer, http};

const KEY: &str = "admin-key-admin-key-0001";

fn with_admin(mut config: herald::Config) -> herald::Config {
    config.admin.key = Some(KEY.into());
    config.admin.report_interval = Duration::from_millis(200);
    config
}

async fn get_json(addr: std::net::SocketAddr, path: &str, key: Option<&str>) -> (u16, Value) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let (status, body) = http(addr, "GET", path, &headers, b"").await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn post_json(
    addr: std::net::SocketAddr,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let (status, body) = http(addr, "POST", path, &headers, body.as_bytes()).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The status of a WebSocket upgrade on `path`.
async fn upgrade_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut ws = RawWs::new(stream);
    ws.request(upgrade_request(&addr.to_string(), path, &[]).as_bytes())
        .await
        .0
}

#[tokio::test]
async fn the_admin_page_is_off_without_a_key() {
    let server = TestServer::start().await;
    assert_eq!(support::get_status(server.addr, "/admin/").await, 404);
    assert_eq!(
        get_json(server.addr, "/admin/api/cluster", Some(KEY))
            .await
            .0,
        404
    );
    assert_eq!(
        upgrade_status(server.addr, "/admin/stream/?session=x").await,
        404
    );
    server.stop().await;
}

#[tokio::test]
async fn without_the_key_every_data_endpoint_answers_401() {
    let server = TestServer::with_config(with_admin(herald::Config::default())).await;
    let addr = server.addr;
    // The page itself holds no data: it asks for the key.
    let (status, page) = http(addr, "GET", "/admin/", &[], b"").await;
    assert_eq!(status, 200);
    assert!(page.contains("Admin key"));
    for key in [None, Some("wrong-key"), Some("")] {
        let (status, body) = get_json(addr, "/admin/api/cluster", key).await;
        assert_eq!(status, 401, "cluster with {key:?}");
        assert_eq!(body["error"], "unauthorized");
        assert_eq!(post_json(addr, "/admin/api/session", key, "").await.0, 401);
        let publish = r#"{"group":"user.1","text":"x"}"#;
        assert_eq!(
            post_json(addr, "/admin/api/publish", key, publish).await.0,
            401
        );
    }
    for path in [
        "/admin/stream/",
        "/admin/stream/?session=",
        "/admin/stream/?session=guess",
    ] {
        assert_eq!(upgrade_status(addr, path).await, 401, "{path}");
    }
    // The key opens them.
    let (status, session) = post_json(addr, "/admin/api/session", Some(KEY), "").await;
    assert_eq!(status, 200);
    let token = session["session"].as_str().expect("a session");
    assert_eq!(
        upgrade_status(addr, &format!("/admin/stream/?session={token}")).await,
        101
    );
    server.stop().await;
}

#[tokio::test]
async fn two_nodes_show_up_in_each_others_view_with_their_connections() {
    let redis = RedisProcess::start();
    let prefix = format!("adm{}", fastrand::u32(..));
    let a = TestServer::with_config(with_admin(support::redis_config(&redis.url(), &prefix))).await;
    let b = TestServer::with_config(with_admin(support::redis_config(&redis.url(), &prefix))).await;
    let mut on_a = Vec::new();
    for user in ["1", "2", "3"] {
        on_a.push(a.connect_user(user).await);
    }
    let mut on_b = Vec::new();
    for user in ["4", "5"] {
        on_b.push(b.connect_user(user).await);
    }
    for i in 0..20 {
        let body = format!(r#"{{"group":"user.3","text":"m{i}"}}"#);
        assert_eq!(a.publish(&body).await.0, 200);
    }
    // Both nodes' reports reach node B's view, with their connection counts.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let nodes = loop {
        let (status, view) = get_json(b.addr, "/admin/api/cluster", Some(KEY)).await;
        assert_eq!(status, 200);
        let nodes = view["nodes"].as_array().cloned().unwrap_or_default();
        let mut counts: Vec<i64> = nodes
            .iter()
            .filter_map(|n| n["connections"].as_i64())
            .collect();
        counts.sort_unstable();
        if counts == [2, 3] {
            break nodes;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "both nodes with 3 and 2 connections: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let a_report = nodes
        .iter()
        .find(|n| n["connections"] == 3)
        .expect("node A");
    assert_eq!(a_report["layer"]["kind"], "redis");
    assert_eq!(a_report["layer"]["ready"], true);
    // Health of what is off here is reported as off (null), not left out.
    for part in ["django", "hook", "webhooks"] {
        assert!(
            a_report.get(part).is_some_and(Value::is_null),
            "{part}: {a_report}"
        );
    }
    let seed_route = a_report["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .find(|r| r["path"] == "/message/{user_id}/stream/")
        .expect("the seed route");
    assert_eq!(seed_route["connections"]["websocket"], 3);
    // The busiest groups come from the messages the nodes delivered.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen_busiest = false;
    while !seen_busiest {
        for i in 0..5 {
            let body = format!(r#"{{"group":"user.3","text":"b{i}"}}"#);
            a.publish(&body).await;
        }
        let (_, view) = get_json(a.addr, "/admin/api/cluster", Some(KEY)).await;
        seen_busiest = view["nodes"].as_array().into_iter().flatten().any(|n| {
            n["busiest"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|g| g["group"] == "user.3" && g["members"] == 1)
        });
        assert!(
            tokio::time::Instant::now() < until,
            "user.3 among the busiest: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The admin stream on A receives live reports from both nodes.
    let (_, session) = post_json(a.addr, "/admin/api/session", Some(KEY), "").await;
    let token = session["session"].as_str().expect("session");
    let mut stream =
        support::WsClient::connect(&a.ws_url(&format!("/admin/stream/?session={token}")))
            .await
            .expect("admin stream");
    let mut seen = std::collections::BTreeSet::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let text = tokio::time::timeout(left, stream.recv_text())
            .await
            .expect("reports from both nodes within 10 s")
            .expect("text");
        let report: Value = serde_json::from_str(&text).expect("a JSON report");
        seen.insert(report["node"].as_str().expect("node").to_string());
    }
    // And the test-message form publishes.
    let mut user42 = a.connect_user("42").await;
    let (status, answer) = post_json(
        b.addr,
        "/admin/api/publish",
        Some(KEY),
        r#"{"group":"user.42","text":"from the dashboard"}"#,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let text = tokio::time::timeout(Duration::from_secs(5), user42.recv_text())
        .await
        .expect("delivered")
        .expect("text");
    assert_eq!(text, "from the dashboard");
    a.stop().await;
    b.stop().await;
}
