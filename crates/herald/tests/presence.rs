//! Presence (DESIGN.md §12): `GET /api/presence/{group}` across nodes on a real
//! redis-server, exact after joins and leaves, and a killed node's share gone within the
//! stated bound (`2 × presence.refresh`).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use herald::Config;
use herald::auth::mint;
use herald::config::AuthMode;
use herald_testkit::redis::{RedisProcess, unique_prefix};
use herald_testkit::ws::{V1Client, V1Event};
use serde_json::{Value, json};
use support::{TestServer, WsClient, http, redis_config};

const SECRET: &str = "test-secret-test-secret-test-secret!";
const API_KEY: &str = "presence-test-key";
/// Short, so the bounds are quick to observe.
const REFRESH: Duration = Duration::from_millis(200);

/// The seed route behind tokens, an API key, and a short presence refresh.
fn with_tokens(mut config: Config) -> Config {
    config.routes[0].auth = AuthMode::Token;
    config.auth.secret = Some(SECRET.into());
    config.api.key = Some(API_KEY.into());
    config.presence.refresh = REFRESH;
    config
}

fn token_for(sub: &str) -> String {
    mint(SECRET.as_bytes(), sub, None, Duration::from_secs(3600)).expect("mint")
}

async fn connect(server: &TestServer, user: &str) -> WsClient {
    let url = server.ws_url(&format!(
        "/message/{user}/stream/?token={}",
        token_for(user)
    ));
    WsClient::connect(&url).await.expect("connect")
}

/// `GET /api/presence/{group}` with the key: (status, body).
async fn presence(server: &TestServer, group: &str) -> (u16, Value) {
    let auth = format!("Bearer {API_KEY}");
    let (status, body) = http(
        server.addr,
        "GET",
        &format!("/api/presence/{group}"),
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// Polls until every group's presence on every node is `expected[group]`, failing with
/// the differences after `deadline`.
async fn until_exact(
    nodes: &[&TestServer],
    expected: &BTreeMap<String, Value>,
    deadline: Duration,
) {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let mut wrong = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            for (group, want) in expected {
                let (status, got) = presence(node, group).await;
                if status != 200 || &got != want {
                    wrong.push(format!("node {n} {group}: {status} {got} != {want}"));
                }
            }
        }
        if wrong.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "presence not exact within {deadline:?}: {} wrong, first {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(3)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_api_takes_the_key_and_a_valid_group() {
    let server = TestServer::with_config(with_tokens(Config::default())).await;
    let (status, _) = http(server.addr, "GET", "/api/presence/user.1", &[], b"").await;
    assert_eq!(status, 401, "no key");
    let (status, body) = presence(&server, "bad%20name").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = presence(&server, "user.1").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"group": "user.1", "connections": 0, "subs": [], "nodes": 0})
    );
    server.stop().await;
}

#[tokio::test]
async fn memory_layer_counts_connections_and_subs_and_forgets_them_on_close() {
    let mut config = with_tokens(Config::default());
    // A second, anonymous route into the same group: a connection with no `sub`.
    let mut open = config.routes[0].clone();
    open.path = "/open/{user_id}/".into();
    open.auth = AuthMode::None;
    config.routes.push(open);
    let server = TestServer::with_config(config).await;
    let a = connect(&server, "42").await;
    let b = connect(&server, "42").await;
    let anonymous = WsClient::connect(&server.ws_url("/open/42/"))
        .await
        .expect("connect");
    let mut expected = BTreeMap::new();
    expected.insert(
        "user.42".to_owned(),
        json!({"group": "user.42", "connections": 3, "subs": ["42"], "nodes": 1}),
    );
    until_exact(&[&server], &expected, Duration::from_secs(5)).await;
    a.close().await.expect("close");
    anonymous.close().await.expect("close");
    expected.insert(
        "user.42".to_owned(),
        json!({"group": "user.42", "connections": 1, "subs": ["42"], "nodes": 1}),
    );
    until_exact(&[&server], &expected, Duration::from_secs(5)).await;
    b.close().await.expect("close");
    expected.insert(
        "user.42".to_owned(),
        json!({"group": "user.42", "connections": 0, "subs": [], "nodes": 0}),
    );
    until_exact(&[&server], &expected, Duration::from_secs(5)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_over_two_nodes_exact_on_both_then_after_closing_half() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let a = TestServer::with_config(with_tokens(redis_config(&redis.url(), &prefix))).await;
    let b = TestServer::with_config(with_tokens(redis_config(&redis.url(), &prefix))).await;
    // 100 groups (user.0 … user.99), 5 connections of the group's user on each node.
    let mut on_a: Vec<Vec<WsClient>> = Vec::new();
    let mut on_b: Vec<Vec<WsClient>> = Vec::new();
    for user in 0..100 {
        let name = user.to_string();
        let mut here = Vec::new();
        let mut there = Vec::new();
        for _ in 0..5 {
            here.push(connect(&a, &name).await);
            there.push(connect(&b, &name).await);
        }
        on_a.push(here);
        on_b.push(there);
    }
    let mut expected: BTreeMap<String, Value> = (0..100)
        .map(|u| {
            let group = format!("user.{u}");
            let body =
                json!({"group": group, "connections": 10, "subs": [u.to_string()], "nodes": 2});
            (group, body)
        })
        .collect();
    until_exact(&[&a, &b], &expected, 2 * REFRESH + Duration::from_secs(5)).await;
    // Close half: every connection on B for users 0-49; for users 50-99, two on A and
    // three on B.
    for user in 0..100usize {
        let (from_a, from_b) = if user < 50 { (0, 5) } else { (2, 3) };
        for client in on_a[user].drain(..from_a) {
            client.close().await.expect("close");
        }
        for client in on_b[user].drain(..from_b) {
            client.close().await.expect("close");
        }
        let nodes = if user < 50 { 1 } else { 2 };
        let group = format!("user.{user}");
        expected.insert(
            group.clone(),
            json!({"group": group, "connections": 5, "subs": [user.to_string()], "nodes": nodes}),
        );
    }
    // Leaves are written on their edge; the bound is what a refresh would take at most.
    until_exact(&[&a, &b], &expected, 2 * REFRESH + Duration::from_secs(3)).await;
    drop((on_a, on_b));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_killed_nodes_connections_leave_presence_within_two_refreshes() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let a = TestServer::with_config(with_tokens(redis_config(&redis.url(), &prefix))).await;
    // Node B is a real process, killed with SIGKILL: nothing of it runs to clean up.
    let dir = std::env::temp_dir().join(format!("herald-presence-{}", unique_prefix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config_path = dir.join("herald.toml");
    std::fs::write(
        &config_path,
        format!(
            "[[routes]]\npath = \"/message/{{user_id}}/stream/\"\ngroups = [\"user.{{user_id}}\"]\nauth = \"token\"\n\n\
             [layer]\nkind = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\n\n\
             [auth]\nsecret = \"{SECRET}\"\n\n[presence]\nrefresh = \"200ms\"\n",
            redis.url()
        ),
    )
    .expect("config");
    let mut cmd = std::process::Command::new(support::herald_bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(&config_path)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stderr(std::process::Stdio::null());
    let (mut child, addr) = support::spawn_serve(cmd);
    let url = format!("ws://{addr}/message/42/stream/?token={}", token_for("42"));
    let mut on_b = Vec::new();
    for _ in 0..3 {
        on_b.push(WsClient::connect(&url).await.expect("connect to b"));
    }
    let _on_a = connect(&a, "42").await;
    let mut expected = BTreeMap::new();
    expected.insert(
        "user.42".to_owned(),
        json!({"group": "user.42", "connections": 4, "subs": ["42"], "nodes": 2}),
    );
    until_exact(&[&a], &expected, Duration::from_secs(5)).await;
    child.kill().expect("SIGKILL");
    let killed = tokio::time::Instant::now();
    let _ = child.wait();
    expected.insert(
        "user.42".to_owned(),
        json!({"group": "user.42", "connections": 1, "subs": ["42"], "nodes": 1}),
    );
    // The bound is 2 × refresh from B's last write, which was at most one refresh
    // before the kill; a little slack for the polling.
    until_exact(&[&a], &expected, 2 * REFRESH + Duration::from_millis(300)).await;
    assert!(killed.elapsed() <= 2 * REFRESH + Duration::from_millis(400));
    drop(on_b);
    let _ = std::fs::remove_dir_all(&dir);
    a.stop().await;
}

// ---------------------------------------------------------------------------------------
// join/leave events
// ---------------------------------------------------------------------------------------

/// The server's event tick and per-tick cap (`presence.rs`): at most 200 events per second.
const EVENT_TICK: Duration = Duration::from_millis(250);
const MAX_EVENTS_PER_TICK: usize = 50;

/// Adds `/room/{room}/` → `room.{room}` with tokens and `presence = true`.
fn with_rooms(config: Config) -> Config {
    let mut config = with_tokens(config);
    let mut room = config.routes[0].clone();
    room.path = "/room/{room}/".into();
    room.groups = vec!["room.{room}".into()];
    room.presence = true;
    config.routes.push(room);
    config
}

fn room_url(server: &TestServer, room: &str, sub: &str) -> String {
    let token = mint(
        SECRET.as_bytes(),
        sub,
        Some(vec!["room.*".into()]),
        Duration::from_secs(3600),
    )
    .expect("mint");
    server.ws_url(&format!("/room/{room}/?token={token}"))
}

/// A `herald.v1` watcher of `room` with `sub`, once its node announces changes to it.
async fn watcher(server: &TestServer, room: &str, sub: &str) -> V1Client {
    let client = V1Client::connect(&room_url(server, room, sub), BTreeMap::new())
        .await
        .expect("v1 connect");
    let group = format!("room.{room}");
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while presence(server, &group).await.1["connections"] == 0 {
        assert!(tokio::time::Instant::now() < until, "watcher never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The node's first read of a newly watched group sets what counts as known.
    tokio::time::sleep(2 * EVENT_TICK + Duration::from_millis(100)).await;
    client
}

/// The next join/leave event other than about `except`, skipping pings.
async fn next_presence_event(
    client: &mut V1Client,
    except: &str,
    deadline: Duration,
) -> Option<(bool, String, String)> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match client.next_within(left).await.expect("v1 read")? {
            V1Event::Presence(_, _, sub) if sub == except => {}
            V1Event::Presence(joined, group, sub) => return Some((joined, group, sub)),
            V1Event::Ping => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_v1_watcher_sees_join_and_leave_of_a_client_on_another_node() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let a = TestServer::with_config(with_rooms(redis_config(&redis.url(), &prefix))).await;
    let b = TestServer::with_config(with_rooms(redis_config(&redis.url(), &prefix))).await;
    let mut w = watcher(&a, "lobby", "w").await;
    let x = WsClient::connect(&room_url(&b, "lobby", "x"))
        .await
        .expect("connect x");
    assert_eq!(
        next_presence_event(&mut w, "w", Duration::from_secs(3)).await,
        Some((true, "room.lobby".to_owned(), "x".to_owned()))
    );
    x.close().await.expect("close x");
    assert_eq!(
        next_presence_event(&mut w, "w", Duration::from_secs(3)).await,
        Some((false, "room.lobby".to_owned(), "x".to_owned()))
    );
    // Plain connections, or routes without `presence`, get no such frames: the seed
    // route's clients only ever see messages.
    drop(w);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_connects_in_a_second_send_at_most_fifty_events_per_tick() {
    let server = TestServer::with_config(with_rooms(Config::default())).await;
    let mut w = watcher(&server, "big", "w").await;
    let started = tokio::time::Instant::now();
    // The watcher reads on its own task, so each event is timed as it arrives.
    let reader = tokio::spawn(async move {
        let mut seen = std::collections::BTreeSet::new();
        let mut at = Vec::new();
        while seen.len() < 500 {
            let event = next_presence_event(&mut w, "w", Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("only {} of 500 joins arrived", seen.len()));
            assert!(event.0, "only joins: {event:?}");
            assert!(seen.insert(event.2.clone()), "{} announced twice", event.2);
            at.push(started.elapsed());
        }
        at
    });
    let mut clients = Vec::new();
    for i in 0..500 {
        clients.push(
            WsClient::connect(&room_url(&server, "big", &format!("u{i}")))
                .await
                .expect("connect"),
        );
    }
    let connecting = started.elapsed();
    assert!(
        connecting < Duration::from_secs(2),
        "500 connects took {connecting:?}"
    );
    // Every join arrives, once, and never faster than the cap.
    let at = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the joins arrive within 20 s")
        .expect("reader did not panic");
    // Any one second holds at most 5 ticks (200/s, plus one tick of timing slack).
    let per_second = 5 * MAX_EVENTS_PER_TICK;
    for (i, t) in at.iter().enumerate() {
        let within = at[i..]
            .iter()
            .take_while(|u| **u < *t + Duration::from_secs(1))
            .count();
        assert!(
            within <= per_second,
            "{within} events within 1 s from {t:?} (bound {per_second})"
        );
    }
    // 500 events at 50 per tick take 10 ticks: the last one came no sooner than 9 ticks
    // after the first (less some delivery jitter).
    let span = at[at.len() - 1] - at[0];
    assert!(span >= 8 * EVENT_TICK, "500 events over {span:?}");
    drop(clients);
    server.stop().await;
}
