//! Several herald nodes on one real redis-server: cross-node delivery, exactly once per
//! member, Redis outages, and subscription hygiene under join/leave churn.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use herald_testkit::redis::{RedisProcess, unique_prefix};
use support::{Received, TestServer, WsClient, get_status, redis_config};

#[tokio::test]
async fn clients_on_node_b_receive_in_order_what_node_a_publishes() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let a = TestServer::with_config(redis_config(&redis.url(), &prefix)).await;
    let b = TestServer::with_config(redis_config(&redis.url(), &prefix)).await;
    let mut on_b = b.connect_user("42").await;
    let mut on_a = a.connect_user("42").await;
    for i in 0..200 {
        let (status, body) = a
            .publish(&format!(r#"{{"group":"user.42","text":"{i}"}}"#))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["offset"], i + 1);
    }
    for i in 0..200 {
        assert_eq!(on_b.recv_text().await.unwrap(), i.to_string());
        assert_eq!(on_a.recv_text().await.unwrap(), i.to_string());
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn three_nodes_mixed_groups_every_member_gets_each_message_once() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(TestServer::with_config(redis_config(&redis.url(), &prefix)).await);
    }
    // Members of four groups spread over the nodes, several per group and node.
    let mut members: Vec<(usize, WsClient)> = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for user in 0..4usize {
            for _ in 0..(1 + (i + user) % 2) {
                members.push((user, node.connect_user(&user.to_string()).await));
            }
        }
    }
    // Publish through every node in turn; each message names its group.
    let per_group = 40;
    for n in 0..per_group {
        for user in 0..4usize {
            let node = &nodes[(n + user) % 3];
            let (status, _) = node
                .publish(&format!(r#"{{"group":"user.{user}","text":"{user}:{n}"}}"#))
                .await;
            assert_eq!(status, 200);
        }
    }
    for (user, client) in &mut members {
        for n in 0..per_group {
            assert_eq!(client.recv_text().await.unwrap(), format!("{user}:{n}"));
        }
        // Nothing extra (no duplicate from another node): the next frame is a marker.
    }
    for user in 0..4 {
        nodes[0]
            .publish(&format!(r#"{{"group":"user.{user}","text":"end"}}"#))
            .await;
    }
    for (_, client) in &mut members {
        assert_eq!(client.recv_text().await.unwrap(), "end");
    }
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn redis_outage_publish_503_readyz_503_clients_stay_then_recover() {
    let mut redis = RedisProcess::start();
    let prefix = unique_prefix();
    let a = TestServer::with_config(redis_config(&redis.url(), &prefix)).await;
    let b = TestServer::with_config(redis_config(&redis.url(), &prefix)).await;
    let mut client = b.connect_user("7").await;
    assert_eq!(get_status(a.addr, "/readyz").await, 200);

    redis.stop();
    // Publishing fails loudly, never silently.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, body) = a
            .publish(r#"{"group":"user.7","text":"during outage"}"#)
            .await;
        if status != 200 || tokio::time::Instant::now() > until {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "layer_unavailable");
    let mut ready_a = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < until {
        ready_a = get_status(a.addr, "/readyz").await;
        if ready_a == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready_a, 503);
    assert_eq!(get_status(a.addr, "/healthz").await, 200);

    redis.restart();
    // Within 5 s of Redis being back, publishing through A reaches the client on B,
    // over the connection it had all along.
    let started = tokio::time::Instant::now();
    let mut delivered = false;
    while started.elapsed() < Duration::from_secs(5) {
        let (status, _) = a.publish(r#"{"group":"user.7","text":"back"}"#).await;
        if status == 200 {
            match client.recv_within(Duration::from_secs(1)).await.unwrap() {
                Some(Received::Text(t)) if t == "back" => {
                    delivered = true;
                    break;
                }
                Some(other) => panic!("unexpected {other:?}"),
                None => continue,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        delivered,
        "delivery works again within 5 s of Redis restarting"
    );
    assert_eq!(get_status(a.addr, "/readyz").await, 200);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn join_leave_churn_leaves_no_stale_subscription_or_key() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let a = TestServer::with_config(redis_config(&redis.url(), &prefix)).await;
    let b = TestServer::with_config(redis_config(&redis.url(), &prefix)).await;
    // Long-lived members of user.0 on A: that subscription must survive the churn.
    let mut keeper = a.connect_user("0").await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let addr = if t % 2 == 0 { a.addr } else { b.addr };
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let user = (t + i) % 5;
                let c = WsClient::connect(&format!("ws://{addr}/message/{user}/stream/"))
                    .await
                    .unwrap();
                if i % 3 == 0 {
                    c.drop_abruptly();
                } else {
                    c.close().await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let expected_channel = format!("{prefix}:{{user.0}}:ch");
    // Only user.0's channel stays subscribed, by exactly one node.
    let mut last = Vec::new();
    let settled = async {
        loop {
            let channels = redis
                .cmd_strings(&["PUBSUB", "CHANNELS", &format!("{prefix}:{{*")])
                .await;
            if channels == vec![expected_channel.clone()] {
                return;
            }
            last = channels;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), settled)
        .await
        .is_err()
    {
        panic!("stale subscriptions remain: {last:?}");
    }
    let numsub: BTreeSet<String> = redis
        .cmd_strings(&["PUBSUB", "NUMSUB", &expected_channel])
        .await
        .into_iter()
        .collect();
    assert_eq!(
        numsub,
        BTreeSet::from([expected_channel.clone(), "1".to_string()]),
        "one subscriber"
    );
    // Connections that only joined and left leave no keys: only the keeper's group has
    // its presence entry.
    let presence_only = BTreeSet::from([format!("{prefix}:{{user.0}}:presence")]);
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let keys: BTreeSet<String> = redis
            .cmd_strings(&["KEYS", &format!("{prefix}:*")])
            .await
            .into_iter()
            .collect();
        if keys == presence_only {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "leaked keys: {keys:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.publish(r#"{"group":"user.0","text":"kept"}"#).await;
    assert_eq!(keeper.recv_text().await.unwrap(), "kept");
    let keys: BTreeSet<String> = redis
        .cmd_strings(&["KEYS", &format!("{prefix}:*")])
        .await
        .into_iter()
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            format!("{prefix}:{{user.0}}:meta"),
            format!("{prefix}:{{user.0}}:stream"),
            format!("{prefix}:{{user.0}}:presence"),
        ])
    );
    a.stop().await;
    b.stop().await;
}

/// `herald_groups` (groups with members on this node) from `/metrics`.
async fn groups_on(addr: std::net::SocketAddr) -> u64 {
    let (status, text) = support::http(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|line| line.strip_prefix("herald_groups "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no herald_groups in /metrics:\n{text}"))
}

/// Waits (≤ 10 s) until the node has `want` groups with members.
async fn wait_groups(addr: std::net::SocketAddr, want: u64) {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let groups = groups_on(addr).await;
        if groups == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "herald_groups stayed {groups}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (≤ 10 s) until the channels of `prefix` subscribed in Redis are exactly `want`.
async fn wait_channels(redis: &RedisProcess, prefix: &str, want: &[String]) {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let channels = redis
            .cmd_strings(&["PUBSUB", "CHANNELS", &format!("{prefix}:{{*")])
            .await;
        if channels == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "subscribed channels stayed {channels:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn unsubscribe_redis_does_not_confirm_then_a_later_joiner_gets_every_message() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let a = TestServer::with_config(redis_config(&redis.url(), &prefix)).await;
    let channel = format!("{prefix}:{{user.5}}:ch");
    let first = a.connect_user("5").await;
    wait_channels(&redis, &prefix, std::slice::from_ref(&channel)).await;

    // Redis hangs while the last member leaves: the UNSUBSCRIBE is written but not
    // confirmed within the command timeout.
    redis.pause();
    first.close().await.unwrap();
    wait_groups(a.addr, 0).await;
    // A new member joins; the plain route answers 101 only once the subscriptions task
    // handled its check, which comes after the unconfirmed unsubscribe.
    let mut second = a.connect_user("5").await;
    redis.resume();
    // The layer may have given up on its connection while Redis hung: wait until it is
    // ready again before publishing (a publish meanwhile is answered 503, by design).
    assert!(
        readyz_becomes(a.addr, 200, Duration::from_secs(10))
            .await
            .is_some(),
        "ready again after Redis resumed"
    );

    // The group is wanted again, so Redis ends up subscribed to it ...
    wait_channels(&redis, &prefix, std::slice::from_ref(&channel)).await;
    // ... and the new member gets every message published from now on.
    for i in 0..20 {
        let (status, body) = a
            .publish(&format!(r#"{{"group":"user.5","text":"{i}"}}"#))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for i in 0..20 {
        assert_eq!(second.recv_text().await.unwrap(), i.to_string());
    }
    a.stop().await;
}

#[tokio::test]
async fn subscribe_redis_does_not_confirm_then_the_group_nobody_wants_is_unsubscribed() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let a = TestServer::with_config(redis_config(&redis.url(), &prefix)).await;

    // Redis hangs while the first member joins: the SUBSCRIBE is written but not
    // confirmed within the command timeout (the join completes anyway).
    redis.pause();
    let first = a.connect_user("6").await;
    first.close().await.unwrap();
    wait_groups(a.addr, 0).await;
    redis.resume();
    // The layer may have given up on its connection while Redis hung: wait until it is
    // ready again before publishing (a publish meanwhile is answered 503, by design).
    assert!(
        readyz_becomes(a.addr, 200, Duration::from_secs(10))
            .await
            .is_some(),
        "ready again after Redis resumed"
    );

    // A member of another group, joined after: its SUBSCRIBE follows every earlier command
    // on the subscriber connection, so once it is delivered to, Redis has seen them all.
    let mut probe = a.connect_user("7").await;
    let (status, body) = a.publish(r#"{"group":"user.7","text":"probe"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(probe.recv_text().await.unwrap(), "probe");
    // Nobody on this node wants user.6 any more: only user.7 stays subscribed.
    wait_channels(&redis, &prefix, &[format!("{prefix}:{{user.7}}:ch")]).await;
    let numsub = redis
        .cmd_strings(&["PUBSUB", "NUMSUB", &format!("{prefix}:{{user.6}}:ch")])
        .await;
    assert_eq!(
        numsub,
        vec!["0".to_string(), format!("{prefix}:{{user.6}}:ch")]
    );

    // And a later joiner of user.6 gets every message.
    let mut later = a.connect_user("6").await;
    for i in 0..20 {
        let (status, body) = a
            .publish(&format!(r#"{{"group":"user.6","text":"{i}"}}"#))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for i in 0..20 {
        assert_eq!(later.recv_text().await.unwrap(), i.to_string());
    }
    probe.close().await.unwrap();
    later.close().await.unwrap();
    a.stop().await;
}

/// The value of an unlabelled sample in `/metrics`.
async fn metric(addr: std::net::SocketAddr, name: &str) -> u64 {
    let (_, text) = support::http(addr, "GET", "/metrics", &[], b"").await;
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Polls `/readyz` every 20 ms until it answers `want`; the time that took, or `None`
/// after `deadline`.
async fn readyz_becomes(
    addr: std::net::SocketAddr,
    want: u16,
    deadline: Duration,
) -> Option<Duration> {
    let started = tokio::time::Instant::now();
    while started.elapsed() < deadline {
        if get_status(addr, "/readyz").await == want {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test]
async fn readyz_503_within_two_probe_intervals_of_a_hung_redis_then_200() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let interval = Duration::from_millis(500);
    let mut config = redis_config(&redis.url(), &prefix);
    config.layer.probe_interval = interval;
    let a = TestServer::with_config(config).await;
    // A probe answered: the round trip gauge is set, nothing failed.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(a.addr, "herald_redis_probe_round_trip_microseconds").await == 0 {
        assert!(tokio::time::Instant::now() < until, "no probe answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get_status(a.addr, "/readyz").await, 200);
    assert_eq!(metric(a.addr, "herald_redis_probe_failures_total").await, 0);
    // A publish is one script call, counted.
    assert_eq!(metric(a.addr, "herald_redis_publish_calls_total").await, 0);
    let (status, _) = a.publish(r#"{"group":"user.1","text":"hi"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(metric(a.addr, "herald_redis_publish_calls_total").await, 1);

    // The sockets stay open but nothing comes back.
    redis.pause();
    let took = readyz_becomes(a.addr, 503, Duration::from_secs(10))
        .await
        .expect("/readyz stays 200 while redis hangs");
    redis.resume();
    // Two intervals, plus one poll and its HTTP round trip (on a loaded machine).
    assert!(
        took <= interval * 2 + Duration::from_millis(250),
        "/readyz took {took:?} to answer 503 (probe interval {interval:?})"
    );
    readyz_becomes(a.addr, 200, Duration::from_secs(10))
        .await
        .expect("/readyz 200 again once redis answers");
    assert!(metric(a.addr, "herald_redis_probe_failures_total").await >= 1);
    assert_eq!(get_status(a.addr, "/healthz").await, 200);
    a.stop().await;
}

/// Calls of `cmd` since Redis started, from `INFO commandstats`.
async fn command_calls(redis: &RedisProcess, cmd: &str) -> u64 {
    let info = match redis.cmd(&["INFO", "commandstats"]).await {
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("INFO commandstats answered {other:?}"),
    };
    let prefix = format!("cmdstat_{cmd}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn connect_storm_of_2000_first_joins_is_subscribed_in_few_commands() {
    const CLIENTS: usize = 2000;
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let mut config = redis_config(&redis.url(), &prefix);
    // All from 127.0.0.1.
    config.limits.max_connections_per_ip = CLIENTS;
    config.limits.max_http_connections_per_ip = CLIENTS;
    let a = TestServer::with_config(config).await;
    let before = command_calls(&redis, "subscribe").await;

    // 2,000 clients of 2,000 distinct groups connect at once (500 in flight at a time).
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(500));
    let mut connecting = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let url = a.ws_url(&format!("/message/{i}/stream/"));
        let permits = permits.clone();
        connecting.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            (i, WsClient::connect(&url).await.expect("connect"))
        });
    }
    let mut clients = Vec::with_capacity(CLIENTS);
    while let Some(joined) = connecting.join_next().await {
        clients.push(joined.expect("connect task"));
    }
    clients.sort_by_key(|(i, _)| *i);

    // Every group is subscribed (the plain route answers 101 only once it is) ...
    let expected: Vec<String> = {
        let mut names: Vec<String> = (0..CLIENTS)
            .map(|i| format!("{prefix}:{{user.{i}}}:ch"))
            .collect();
        names.sort();
        names
    };
    let channels = redis
        .cmd_strings(&["PUBSUB", "CHANNELS", &format!("{prefix}:{{*")])
        .await;
    assert_eq!(channels.len(), CLIENTS);
    assert_eq!(channels, expected);
    // ... by a few SUBSCRIBE commands naming many channels each, not one per group.
    let subscribes = command_calls(&redis, "subscribe").await - before;
    eprintln!("{subscribes} SUBSCRIBE commands for {CLIENTS} first joins");
    assert!(
        subscribes * 4 <= CLIENTS as u64,
        "{subscribes} SUBSCRIBE commands for {CLIENTS} first joins"
    );
    // And delivery works for them (a sample, spread over the groups).
    for (i, client) in clients.iter_mut().step_by(97) {
        let (status, body) = a
            .publish(&format!(r#"{{"group":"user.{i}","text":"to {i}"}}"#))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(client.recv_text().await.unwrap(), format!("to {i}"));
    }
    drop(clients);
    a.stop().await;
}
