//! Plain-mode delivery through the seed's route: who receives what, in what order, and
//! what happens to a client that stops reading.

mod support;

use std::time::Duration;

use base64::Engine;
use herald::Config;
use support::{Received, TestServer};

#[tokio::test]
async fn publish_reaches_every_member_and_only_them() {
    let server = TestServer::start().await;
    let mut a = server.connect_user("42").await;
    let mut b = server.connect_user("42").await;
    let mut other = server.connect_user("43").await;

    let (status, body) = server
        .publish(r#"{"group":"user.42","data":{"msg":"hi"}}"#)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["offset"], 1);
    assert!(body["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(
        a.recv().await.unwrap(),
        Received::Text(r#"{"msg":"hi"}"#.into())
    );
    assert_eq!(
        b.recv().await.unwrap(),
        Received::Text(r#"{"msg":"hi"}"#.into())
    );

    // `text` arrives verbatim, whitespace and all.
    let text = "  {\"a\": 1}  ünïcode ";
    let (status, _) = server
        .publish(&serde_json::json!({"group": "user.42", "text": text}).to_string())
        .await;
    assert_eq!(status, 200);
    assert_eq!(a.recv().await.unwrap(), Received::Text(text.into()));
    assert_eq!(b.recv().await.unwrap(), Received::Text(text.into()));

    // `bytes` arrives as a binary frame, every byte value intact.
    let all: Vec<u8> = (0..=255).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&all);
    let (status, _) = server
        .publish(&format!(r#"{{"group":"user.42","bytes":"{b64}"}}"#))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        a.recv().await.unwrap(),
        Received::Binary(all.clone().into())
    );
    assert_eq!(b.recv().await.unwrap(), Received::Binary(all.into()));

    // User 43 got none of it: the first thing it sees is its own message.
    server
        .publish(r#"{"group":"user.43","text":"for 43"}"#)
        .await;
    assert_eq!(other.recv().await.unwrap(), Received::Text("for 43".into()));
    server.stop().await;
}

#[tokio::test]
async fn several_groups_and_batches() {
    let server = TestServer::start().await;
    let mut a = server.connect_user("1").await;
    let mut b = server.connect_user("2").await;
    let (status, body) = server
        .publish(r#"{"groups":["user.1","user.2"],"text":"both"}"#)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["group"], "user.1");
    assert_eq!(body["results"][1]["group"], "user.2");
    assert_eq!(a.recv_text().await.unwrap(), "both");
    assert_eq!(b.recv_text().await.unwrap(), "both");

    let (status, body) = server
        .publish(r#"{"messages":[{"group":"user.1","text":"one"},{"group":"user.2","data":[1,2]},{"groups":["user.1"],"text":"three"}]}"#)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["offset"], 2);
    assert_eq!(body["results"][1]["offset"], 2);
    assert_eq!(body["results"][2]["results"][0]["offset"], 3);
    assert_eq!(a.recv_text().await.unwrap(), "one");
    assert_eq!(a.recv_text().await.unwrap(), "three");
    assert_eq!(b.recv_text().await.unwrap(), "[1,2]");
    server.stop().await;
}

#[tokio::test]
async fn a_burst_of_1000_arrives_in_order_once() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(server.connect_user("7").await);
    }
    let publisher = {
        let addr = server.addr;
        tokio::spawn(async move {
            for i in 0..1000 {
                let body = format!(r#"{{"group":"user.7","text":"{i}"}}"#);
                let (status, _) =
                    support::http(addr, "POST", "/api/publish", &[], body.as_bytes()).await;
                assert_eq!(status, 200);
            }
        })
    };
    for client in &mut clients {
        for i in 0..1000 {
            assert_eq!(client.recv_text().await.unwrap(), i.to_string());
        }
    }
    publisher.await.unwrap();
    // Nothing more: the next frame is a fresh marker, not a duplicate.
    server.publish(r#"{"group":"user.7","text":"end"}"#).await;
    for client in &mut clients {
        assert_eq!(client.recv_text().await.unwrap(), "end");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_4001_and_others_get_everything() {
    let mut config = Config::default();
    config.limits.outbox_messages = 8;
    let server = TestServer::with_config(config).await;
    let mut stalled = server.connect_user("9").await;
    let mut healthy = server.connect_user("9").await;
    let payload = "x".repeat(32 * 1024);
    let total = 400; // 12.8 MB: far more than socket buffers plus 8 queued frames hold.
    let reader = tokio::spawn(async move {
        for i in 0..total {
            let text = healthy.recv_text().await.unwrap();
            assert!(text.starts_with(&format!("{i}:")), "message {i} in order");
        }
        healthy
    });
    for i in 0..total {
        let body =
            serde_json::json!({"group": "user.9", "text": format!("{i}:{payload}")}).to_string();
        let (status, _) = server.publish(&body).await;
        assert_eq!(status, 200);
    }
    let mut healthy = reader.await.unwrap();
    // The stalled client now reads: whatever was buffered, then the 4001 close.
    let code = stalled
        .closed_within(Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(code, 4001);
    let metrics = support::http(server.addr, "GET", "/metrics", &[], b"")
        .await
        .1;
    assert!(
        metrics.contains("herald_outbox_overflows_total 1"),
        "{metrics}"
    );
    // The healthy member is still connected and receiving.
    server
        .publish(r#"{"group":"user.9","text":"still here"}"#)
        .await;
    assert_eq!(healthy.recv_text().await.unwrap(), "still here");
    server.stop().await;
}

#[tokio::test]
async fn client_frames_are_ignored_in_plain_mode() {
    let server = TestServer::start().await;
    let mut c = server.connect_user("5").await;
    c.send_text("hello?").await.unwrap();
    c.send_binary(&[1, 2, 3]).await.unwrap();
    server
        .publish(r#"{"group":"user.5","text":"pushed"}"#)
        .await;
    assert_eq!(c.recv().await.unwrap(), Received::Text("pushed".into()));
    server.stop().await;
}

#[tokio::test]
async fn a_busy_reading_client_is_pinged_and_kept() {
    let mut config = Config::default();
    config.heartbeat.interval = Duration::from_millis(200);
    config.heartbeat.timeout = Duration::from_millis(300);
    let server = TestServer::with_config(config).await;
    let mut client = server.connect_user("11").await;
    // Steady traffic for 2 s: the server is never idle, yet the client (whose library
    // answers pings while it reads) must be asked for pongs and stay connected.
    let addr = server.addr;
    let publisher = tokio::spawn(async move {
        for i in 0..40 {
            let body = format!(r#"{{"group":"user.11","text":"{i}"}}"#);
            assert_eq!(
                support::http(addr, "POST", "/api/publish", &[], body.as_bytes())
                    .await
                    .0,
                200
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    for i in 0..40 {
        assert_eq!(client.recv().await.unwrap(), Received::Text(i.to_string()));
    }
    publisher.await.unwrap();
    let metrics = support::http(server.addr, "GET", "/metrics", &[], b"")
        .await
        .1;
    assert!(
        metrics.contains("herald_heartbeat_timeouts_total 0"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_client_message_gets_a_readable_1009() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("12").await;
    client.send_binary(&vec![7u8; 200 * 1024]).await.unwrap();
    assert_eq!(
        client.closed_within(Duration::from_secs(5)).await.unwrap(),
        1009
    );
    server.stop().await;
}
