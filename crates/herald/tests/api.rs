//! The publish API's error paths and the service endpoints: every failure answers with
//! its status and a JSON body, and nothing malformed ever reaches a client.

mod support;

use std::time::Duration;

use herald::Config;
use support::{Received, TestServer, http, raw_http};

/// Asserts `(status, body)` is an error with `code`.
fn assert_error(result: &(u16, serde_json::Value), status: u16, code: &str) {
    assert_eq!(result.0, status, "{}", result.1);
    assert_eq!(result.1["error"], code, "{}", result.1);
    assert!(
        result.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        result.1
    );
}

#[tokio::test]
async fn every_error_path_answers_with_json_and_nothing_reaches_clients() {
    let mut config = Config::default();
    config.limits.max_publish_bytes = 4096;
    config.limits.max_batch = 3;
    let server = TestServer::with_config(config).await;
    let mut client = server.connect_user("42").await;
    let mut deep_client = server.connect_user("43").await;

    let cases: &[(&str, &str)] = &[
        ("not json", "malformed_json"),
        ("", "malformed_json"),
        ("[]", "malformed_json"),
        (r#"{"group":"user.42"}"#, "invalid_request"),
        (r#"{"text":"x"}"#, "invalid_request"),
        (
            r#"{"group":"user.42","text":"x","data":1}"#,
            "invalid_request",
        ),
        (
            r#"{"group":"user.42","groups":["user.42"],"text":"x"}"#,
            "invalid_request",
        ),
        (r#"{"groups":[],"text":"x"}"#, "invalid_request"),
        (r#"{"group":"user 42","text":"x"}"#, "invalid_group"),
        (r#"{"group":"","text":"x"}"#, "invalid_group"),
        (
            r#"{"groups":["user.42","bad/name"],"text":"x"}"#,
            "invalid_group",
        ),
        (r#"{"group":"user.42","bytes":"***"}"#, "invalid_base64"),
        (r#"{"group":"user.42","text":5}"#, "malformed_json"),
        (
            r#"{"group":"user.42","text":"x","extra":1}"#,
            "malformed_json",
        ),
        (r#"{"messages":[]}"#, "invalid_request"),
        (
            r#"{"messages":[{"group":"user.42","text":"a"},{"group":"user.42","text":"b"},{"group":"user.42","text":"c"},{"group":"user.42","text":"d"}]}"#,
            "too_many_messages",
        ),
        // One bad element rejects the whole batch before anything is published.
        (
            r#"{"messages":[{"group":"user.42","text":"ok"},{"group":"no such!","text":"x"}]}"#,
            "invalid_group",
        ),
        (r#"{"messages":[{"messages":[]}]}"#, "invalid_request"),
        (
            r#"{"messages":[{"group":"user.42","text":"a"}],"group":"user.42"}"#,
            "invalid_request",
        ),
    ];
    for (body, code) in cases {
        let result = server.publish(body).await;
        assert_eq!(result.0, 400, "{body} → {}", result.1);
        assert_error(&result, 400, code);
    }

    // Deeply nested JSON is refused by the parser's depth limit, not by a stack overflow.
    let nested = format!(
        r#"{{"group":"user.42","data":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let mut config_body = nested.into_bytes();
    config_body.truncate(4000);
    assert_error(
        &server
            .publish(std::str::from_utf8(&config_body).unwrap())
            .await,
        400,
        "malformed_json",
    );
    // `data` is held to the body's own depth limit (128): serde_json skips it as a raw
    // value without counting, and receivers (JSON.parse, Python's json) may not cope.
    let nest = |depth: usize| {
        let data = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        format!(r#"{{"group":"user.43","data":{data}}}"#)
    };
    assert_eq!(server.publish(&nest(128)).await.0, 200);
    assert_error(&server.publish(&nest(2000)).await, 400, "malformed_json");

    // Too large: by Content-Length, and by a chunked body that never states its length.
    let big = format!(r#"{{"group":"user.42","text":"{}"}}"#, "x".repeat(5000));
    assert_error(&server.publish(&big).await, 413, "payload_too_large");
    let mut chunked = format!("POST /api/publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", big.len()).into_bytes();
    chunked.extend_from_slice(big.as_bytes());
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, body) = raw_http(server.addr, &chunked).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("payload_too_large"), "{body}");

    // Wrong method, unknown path.
    let (status, body) = http(server.addr, "GET", "/api/publish", &[], b"").await;
    assert_eq!(status, 405, "{body}");
    let (status, body) = http(server.addr, "GET", "/nope", &[], b"").await;
    assert_eq!(status, 404);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
        "not_found"
    );

    // None of the above reached the client: the first frame it gets is this one.
    server
        .publish(r#"{"group":"user.42","text":"first valid"}"#)
        .await;
    assert_eq!(
        client.recv().await.unwrap(),
        Received::Text("first valid".into())
    );
    // The 128-deep message arrived whole; the refused 2000-deep one did not.
    let deep_data = format!("{}1{}", "[".repeat(128), "]".repeat(128));
    assert_eq!(deep_client.recv().await.unwrap(), Received::Text(deep_data));
    server.stop().await;
}

#[tokio::test]
async fn api_key_is_required_when_configured() {
    let mut config = Config::default();
    config.api.key = Some("s3cr3t".into());
    config.api.keys.insert("backend".into(), "other-key".into());
    let server = TestServer::with_config(config).await;
    let body = br#"{"group":"user.1","text":"x"}"#;
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", "s3cr3t")],
        vec![("Authorization", "Bearer s3cr3")],
    ] {
        let (status, text) = http(server.addr, "POST", "/api/publish", &headers, body).await;
        assert_eq!(status, 401, "{headers:?}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["error"],
            "unauthorized"
        );
    }
    for key in ["Bearer s3cr3t", "Bearer other-key"] {
        let (status, text) = http(
            server.addr,
            "POST",
            "/api/publish",
            &[("Authorization", key)],
            body,
        )
        .await;
        assert_eq!(status, 200, "{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = TestServer::start().await;
    let (status, body) = http(server.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!((status, body.contains("ok")), (200, true));
    let (status, _) = http(server.addr, "GET", "/readyz", &[], b"").await;
    assert_eq!(status, 200);
    let mut c = server.connect_user("3").await;
    server.publish(r#"{"group":"user.3","text":"m"}"#).await;
    c.recv_text().await.unwrap();
    let (status, metrics) = http(server.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    for line in [
        "herald_connections 1",
        "herald_groups 1",
        "herald_messages_published_total{source=\"api\"} 1",
        "herald_messages_published_total{source=\"django\"} 0",
        "herald_frames_delivered_total 1",
        "herald_frames_dropped_total 0",
        "herald_outbox_overflows_total 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn upgrade_checks_happen_before_the_upgrade() {
    let server = TestServer::start().await;
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let upgrade = |path: &str, version: &str, key: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\nSec-WebSocket-Version: {version}\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        )
    };
    // Unknown path → 404 before any upgrade.
    let (status, _) = raw_http(
        server.addr,
        upgrade("/message/42/other/", "13", key).as_bytes(),
    )
    .await;
    assert_eq!(status, 404);
    // Percent-encoding tricks do not match a {name} segment.
    let (status, _) = raw_http(
        server.addr,
        upgrade("/message/4%2F2/stream/", "13", key).as_bytes(),
    )
    .await;
    assert_eq!(status, 404);
    // A name that makes the group too long → 400.
    let long = "x".repeat(120);
    let (status, body) = raw_http(
        server.addr,
        upgrade(&format!("/message/{long}/stream/"), "13", key).as_bytes(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // Bad version → 426, bad key → 400, not an upgrade → 400.
    let (status, _) = raw_http(
        server.addr,
        upgrade("/message/42/stream/", "8", key).as_bytes(),
    )
    .await;
    assert_eq!(status, 426);
    let (status, _) = raw_http(
        server.addr,
        upgrade("/message/42/stream/", "13", "short").as_bytes(),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = http(server.addr, "GET", "/message/42/stream/", &[], b"").await;
    assert_eq!(status, 400);
    server.stop().await;
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_the_heartbeat_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = Config::default();
    config.heartbeat.interval = Duration::from_millis(200);
    config.heartbeat.timeout = Duration::from_millis(300);
    let server = TestServer::with_config(config).await;
    // A raw client that completes the handshake, then never answers a ping.
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /message/1/stream/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    // A well-behaved client on the same server reads all along (its library answers
    // pings as it reads) and stays.
    let mut good = server.connect_user("1").await;
    let good_reader = tokio::spawn(async move {
        let mut texts = Vec::new();
        loop {
            match good.recv_within(Duration::from_secs(20)).await.unwrap() {
                Some(Received::Text(t)) if t == "done" => return texts,
                Some(Received::Text(t)) => texts.push(t),
                other => panic!("good client got {other:?}"),
            }
        }
    });
    let mut seen = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .expect("the silent peer is dropped");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    // It was pinged (0x89 = FIN + ping) before being dropped.
    assert!(seen.windows(2).any(|w| w == [0x89, 0x00]), "no ping seen");
    // The good client outlived it and still receives.
    for text in ["0", "1", "done"] {
        server
            .publish(&format!(r#"{{"group":"user.1","text":"{text}"}}"#))
            .await;
    }
    let texts = tokio::time::timeout(Duration::from_secs(10), good_reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(texts, ["0", "1"]);
    let metrics = http(server.addr, "GET", "/metrics", &[], b"").await.1;
    assert!(
        metrics.contains("herald_heartbeat_timeouts_total 1"),
        "{metrics}"
    );
    server.stop().await;
}
