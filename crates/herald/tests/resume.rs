//! `herald.v1`: hello/welcome, replay without gap or duplicate across reconnects, node
//! restarts and node switches, `recovered:false`, heartbeats, goaway, and plain clients
//! sharing the groups.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use herald::Config;
use herald_testkit::redis::{RedisProcess, unique_prefix};
use herald_testkit::ws::{StreamPos, V1Event};
use support::{Received, TestServer, V1Client, WsClient, redis_config};

const WAIT: Duration = Duration::from_secs(5);

async fn publish_n(server: &TestServer, group: &str, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        let (status, body) = server
            .publish(&format!(r#"{{"group":"{group}","text":"m{i}"}}"#))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["offset"], i, "offsets count from 1 per group");
    }
}

async fn expect_messages(client: &mut V1Client, group: &str, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        let m = client.next_message(WAIT).await.unwrap();
        assert_eq!((m.group.as_str(), m.offset), (group, i));
        assert_eq!(&m.payload[..], format!("m{i}").as_bytes());
        assert!(!m.binary);
    }
}

fn url(server: &TestServer, user: &str) -> String {
    server.ws_url(&format!("/message/{user}/stream/"))
}

#[tokio::test]
async fn resume_after_reconnect_gets_exactly_the_missed_messages() {
    let server = TestServer::start().await;
    let mut client = V1Client::connect(&url(&server, "42"), BTreeMap::new())
        .await
        .unwrap();
    let first = &client.welcome["user.42"];
    assert_eq!((first.offset, first.recovered), (0, true));
    assert!(client.ping_ms > 0);
    publish_n(&server, "user.42", 1..=10).await;
    expect_messages(&mut client, "user.42", 1..=10).await;

    let positions = client.disconnect();
    assert_eq!(positions["user.42"].offset, 10);
    publish_n(&server, "user.42", 11..=35).await;

    let mut client = V1Client::connect(&url(&server, "42"), positions)
        .await
        .unwrap();
    let w = &client.welcome["user.42"];
    assert_eq!((w.offset, w.recovered), (35, true));
    expect_messages(&mut client, "user.42", 11..=35).await;
    publish_n(&server, "user.42", 36..=37).await;
    expect_messages(&mut client, "user.42", 36..=37).await;
    server.stop().await;
}

#[tokio::test]
async fn resume_across_a_node_restart_and_a_node_switch_on_redis() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let a = TestServer::with_config(redis_config(&redis.url(), &prefix)).await;
    let mut client = V1Client::connect(&url(&a, "42"), BTreeMap::new())
        .await
        .unwrap();
    publish_n(&a, "user.42", 1..=10).await;
    expect_messages(&mut client, "user.42", 1..=10).await;
    let positions = client.disconnect();
    publish_n(&a, "user.42", 11..=20).await;

    // Restart the node: its memory is gone, Redis keeps the history.
    a.stop().await;
    let a = TestServer::with_config(redis_config(&redis.url(), &prefix)).await;
    publish_n(&a, "user.42", 21..=35).await;
    let mut client = V1Client::connect(&url(&a, "42"), positions).await.unwrap();
    assert!(client.welcome["user.42"].recovered);
    expect_messages(&mut client, "user.42", 11..=35).await;

    // Switch nodes: leave A, resume on B.
    let positions = client.disconnect();
    let b = TestServer::with_config(redis_config(&redis.url(), &prefix)).await;
    publish_n(&a, "user.42", 36..=40).await;
    let mut client = V1Client::connect(&url(&b, "42"), positions).await.unwrap();
    assert!(client.welcome["user.42"].recovered);
    expect_messages(&mut client, "user.42", 36..=40).await;
    publish_n(&a, "user.42", 41..=41).await;
    expect_messages(&mut client, "user.42", 41..=41).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn positions_the_history_no_longer_covers_are_not_recovered() {
    let mut config = Config::default();
    config.history.size = 5;
    let server = TestServer::with_config(config).await;
    publish_n(&server, "user.1", 1..=3).await;
    let probe = V1Client::connect(&url(&server, "1"), BTreeMap::new())
        .await
        .unwrap();
    let epoch = probe.welcome["user.1"].epoch.clone();
    drop(probe);
    publish_n(&server, "user.1", 4..=20).await;
    let mut current = 20;

    // History keeps 16..=20 now (5 messages).
    let cases = [
        (
            "trimmed",
            StreamPos {
                offset: 3,
                epoch: epoch.clone(),
            },
        ),
        (
            "just trimmed",
            StreamPos {
                offset: 14,
                epoch: epoch.clone(),
            },
        ),
        (
            "wrong epoch",
            StreamPos {
                offset: 18,
                epoch: "not-the-epoch".into(),
            },
        ),
        (
            "from the future",
            StreamPos {
                offset: 99,
                epoch: epoch.clone(),
            },
        ),
    ];
    for (what, pos) in cases {
        let positions = BTreeMap::from([("user.1".to_string(), pos)]);
        let mut client = V1Client::connect(&url(&server, "1"), positions)
            .await
            .unwrap();
        let w = client.welcome["user.1"].clone();
        assert!(!w.recovered, "{what}");
        assert_eq!(
            (w.offset, w.epoch.as_str()),
            (current, epoch.as_str()),
            "{what}: current position"
        );
        // Nothing is replayed (never a partial replay presented as whole); live continues.
        publish_n(&server, "user.1", current + 1..=current + 1).await;
        current += 1;
        expect_messages(&mut client, "user.1", current..=current).await;
        // Move the window on so the next case starts from a known state.
        publish_n(&server, "user.1", current + 1..=current + 5).await;
        current += 5;
    }

    // The oldest kept message minus one is still covered: everything is replayed.
    let oldest_missing = current - 5;
    let positions = BTreeMap::from([(
        "user.1".to_string(),
        StreamPos {
            offset: oldest_missing,
            epoch: epoch.clone(),
        },
    )]);
    let mut client = V1Client::connect(&url(&server, "1"), positions)
        .await
        .unwrap();
    assert!(client.welcome["user.1"].recovered);
    expect_messages(&mut client, "user.1", oldest_missing + 1..=current).await;
    server.stop().await;
}

#[tokio::test]
async fn plain_clients_on_the_same_group_see_only_payloads() {
    let server = TestServer::start().await;
    let mut v1 = V1Client::connect(&url(&server, "5"), BTreeMap::new())
        .await
        .unwrap();
    let mut plain = server.connect_user("5").await;
    server.publish(r#"{"group":"user.5","data":{"n":1}}"#).await;
    server.publish(r#"{"group":"user.5","bytes":"AAEC"}"#).await;
    assert_eq!(
        plain.recv().await.unwrap(),
        Received::Text(r#"{"n":1}"#.into())
    );
    assert_eq!(
        plain.recv().await.unwrap(),
        Received::Binary(vec![0u8, 1, 2].into())
    );
    let m = v1.next_message(WAIT).await.unwrap();
    assert_eq!(
        (&m.payload[..], m.binary, m.offset),
        (&br#"{"n":1}"#[..], false, 1)
    );
    let m = v1.next_message(WAIT).await.unwrap();
    assert_eq!(
        (&m.payload[..], m.binary, m.offset),
        (&[0u8, 1, 2][..], true, 2)
    );
    server.stop().await;
}

#[tokio::test]
async fn hello_groups_the_route_does_not_grant_are_ignored() {
    let server = TestServer::start().await;
    publish_n(&server, "user.43", 1..=3).await;
    let positions = BTreeMap::from([(
        "user.43".to_string(),
        StreamPos {
            offset: 0,
            epoch: "x".into(),
        },
    )]);
    let mut client = V1Client::connect(&url(&server, "42"), positions)
        .await
        .unwrap();
    assert_eq!(client.welcome.keys().collect::<Vec<_>>(), ["user.42"]);
    server.publish(r#"{"group":"user.42","text":"mine"}"#).await;
    let m = client.next_message(WAIT).await.unwrap();
    assert_eq!(
        (m.group.as_str(), &m.payload[..]),
        ("user.42", &b"mine"[..])
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_hellos_are_closed_with_4500() {
    let mut config = Config::default();
    config.limits.handshake_timeout = Duration::from_millis(500);
    let server = TestServer::with_config(config).await;
    for hello in [
        "not json",
        r#"{"t":"pong"}"#,
        r#"{"t":"hello","v":9}"#,
        r#"{"t":"hello","v":1,"streams":{"user.1":{"o":"x"}}}"#,
    ] {
        let mut ws = WsClient::connect_with(&url(&server, "1"), &["herald.v1"])
            .await
            .unwrap();
        ws.send_text(hello).await.unwrap();
        assert_eq!(ws.closed_within(WAIT).await.unwrap(), 4500, "{hello}");
    }
    let mut ws = WsClient::connect_with(&url(&server, "1"), &["herald.v1"])
        .await
        .unwrap();
    ws.send_binary(b"{}").await.unwrap();
    assert_eq!(ws.closed_within(WAIT).await.unwrap(), 4500, "binary hello");
    // No hello at all within the handshake timeout.
    let mut ws = WsClient::connect_with(&url(&server, "1"), &["herald.v1"])
        .await
        .unwrap();
    assert_eq!(ws.closed_within(WAIT).await.unwrap(), 4500, "silent client");
    server.stop().await;
}

#[tokio::test]
async fn pings_unanswered_close_4002_answered_keep_the_connection() {
    let mut config = Config::default();
    config.heartbeat.interval = Duration::from_millis(200);
    config.heartbeat.timeout = Duration::from_millis(400);
    let server = TestServer::with_config(config).await;
    let mut mute = V1Client::connect(&url(&server, "1"), BTreeMap::new())
        .await
        .unwrap();
    mute.answer_pings = false;
    let mut polite = V1Client::connect(&url(&server, "1"), BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(polite.ping_ms, 200);
    let polite_task = tokio::spawn(async move {
        let mut pings = 0;
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < until {
            match polite
                .next_within(Duration::from_millis(100))
                .await
                .unwrap()
            {
                Some(V1Event::Ping) => pings += 1,
                None => {}
                Some(other) => panic!("polite client got {other:?}"),
            }
        }
        (polite, pings)
    });
    let mut pings = 0;
    let code = loop {
        match mute.next_within(Duration::from_secs(5)).await.unwrap() {
            Some(V1Event::Ping) => pings += 1,
            Some(V1Event::Closed(code)) => break code,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, 4002);
    assert!(pings >= 1, "was pinged before being closed");
    let (mut polite, polite_pings) = polite_task.await.unwrap();
    assert!(
        polite_pings >= 2,
        "an answering client keeps getting pings ({polite_pings})"
    );
    server.publish(r#"{"group":"user.1","text":"alive"}"#).await;
    assert_eq!(
        &polite.next_message(WAIT).await.unwrap().payload[..],
        b"alive"
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_sends_goaway_then_1012() {
    let mut config = Config::default();
    config.shutdown.goaway_window = Duration::from_millis(7000);
    let server = TestServer::with_config(config).await;
    let mut client = V1Client::connect(&url(&server, "1"), BTreeMap::new())
        .await
        .unwrap();
    let mut plain = server.connect_user("1").await;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(
        client.next_within(WAIT).await.unwrap(),
        Some(V1Event::Goaway(0, 7000))
    );
    assert_eq!(
        client.next_within(WAIT).await.unwrap(),
        Some(V1Event::Closed(1012))
    );
    assert_eq!(
        plain.closed_within(WAIT).await.unwrap(),
        1012,
        "plain clients get no goaway frame"
    );
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_history_lost_under_a_connected_client_makes_it_resync() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let server = TestServer::with_config(redis_config(&redis.url(), &prefix)).await;
    let mut client = V1Client::connect(&url(&server, "8"), BTreeMap::new())
        .await
        .unwrap();
    publish_n(&server, "user.8", 1..=3).await;
    expect_messages(&mut client, "user.8", 1..=3).await;
    let old_epoch = client.welcome["user.8"].epoch.clone();
    // Redis loses everything: offsets restart under a new epoch.
    redis.cmd(&["FLUSHALL"]).await;
    publish_n(&server, "user.8", 1..=1).await;
    // The connection is closed with a retryable code instead of skipping "old" offsets.
    assert_eq!(
        client.next_within(WAIT).await.unwrap(),
        Some(V1Event::Closed(4400))
    );
    let positions = client.disconnect();
    let client = V1Client::connect(&url(&server, "8"), positions)
        .await
        .unwrap();
    let w = &client.welcome["user.8"];
    assert!(!w.recovered, "the old position cannot be recovered");
    assert_ne!(w.epoch, old_epoch);
    assert_eq!(w.offset, 1);
    server.stop().await;
}

#[tokio::test]
async fn client_frames_after_hello_are_ignored_when_well_formed() {
    let server = TestServer::start().await;
    let mut client = V1Client::connect(&url(&server, "6"), BTreeMap::new())
        .await
        .unwrap();
    client.send_text("{\"t\":\"m\"}\npage data").await.unwrap();
    let mut framed = 9u32.to_be_bytes().to_vec();
    framed.extend_from_slice(b"{\"t\":\"m\"}");
    framed.extend_from_slice(&[1, 2, 3]);
    client.send_binary(&framed).await.unwrap();
    server
        .publish(r#"{"group":"user.6","text":"still open"}"#)
        .await;
    assert_eq!(
        &client.next_message(WAIT).await.unwrap().payload[..],
        b"still open"
    );
    // A malformed one is a bad request.
    client.send_binary(&[0, 0, 0, 50, b'{']).await.unwrap();
    assert_eq!(
        client.next_within(WAIT).await.unwrap(),
        Some(V1Event::Closed(4500))
    );
    server.stop().await;
}
