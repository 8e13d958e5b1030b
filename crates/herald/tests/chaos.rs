//! Chaos: while 5,000 messages are published to one group, 20 `herald.v1` clients are cut
//! off at random moments — by their own side (dropped TCP connections) and by the server
//! side (their node restarts under them) — and resume from their positions. Every client
//! must end with every offset exactly once, in order.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_testkit::redis::{RedisProcess, unique_prefix};
use herald_testkit::ws::{StreamPos, V1Event};
use support::{TestServer, V1Client, redis_config};

const TOTAL: u64 = 5000;
const CLIENTS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_cut_at_random_end_with_every_offset_once_in_order() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let config = || {
        let mut c = redis_config(&redis.url(), &prefix);
        c.history.size = 10_000;
        c.shutdown.goaway_window = Duration::from_millis(50);
        c.shutdown.drain_timeout = Duration::from_secs(5);
        c
    };
    // Clients live on A and B, which restart under them; C only publishes.
    let publisher = TestServer::with_config(config()).await;
    let a = TestServer::with_config(config()).await;
    let b = TestServer::with_config(config()).await;
    let live: Arc<Mutex<Vec<SocketAddr>>> = Arc::new(Mutex::new(vec![a.addr, b.addr]));
    let drops = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let server_cuts = Arc::new(std::sync::atomic::AtomicU64::new(0));

    // Everyone connects once before the first publish, so "every offset" starts at 1.
    let ready = Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let ready = ready.clone();
        let live = live.clone();
        let drops = drops.clone();
        let server_cuts = server_cuts.clone();
        clients.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(i as u64 + 1);
            let mut positions: BTreeMap<String, StreamPos> = BTreeMap::new();
            let mut seen: Vec<u64> = Vec::with_capacity(TOTAL as usize);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            'connect: loop {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "client {i} did not finish: {} seen",
                    seen.len()
                );
                let nodes = live.lock().unwrap().clone();
                let Some(addr) = rng.choice(nodes.iter()).copied() else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let url = format!("ws://{addr}/message/9/stream/");
                let mut client = match V1Client::connect(&url, positions.clone()).await {
                    Ok(c) => c,
                    Err(_) => {
                        // The node is restarting: try again, maybe elsewhere.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let w = &client.welcome["user.9"];
                assert!(w.recovered, "client {i}: history covers every reconnect");
                if seen.is_empty() && positions.is_empty() {
                    ready.wait().await;
                }
                loop {
                    match client.next_within(Duration::from_secs(10)).await {
                        Ok(Some(V1Event::Message(m))) => {
                            seen.push(m.offset);
                            if m.offset == TOTAL {
                                return seen;
                            }
                            // Now and then, cut the connection from this side.
                            if rng.u32(..250) == 0 {
                                drops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                positions = client.disconnect();
                                continue 'connect;
                            }
                        }
                        Ok(Some(V1Event::Ping | V1Event::Goaway(..) | V1Event::Presence(..))) => {}
                        Ok(Some(V1Event::Closed(_))) | Err(_) => {
                            server_cuts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            positions = client.disconnect();
                            continue 'connect;
                        }
                        Ok(None) => panic!("client {i}: stalled at {:?}", seen.last()),
                    }
                }
            }
        }));
    }

    tokio::time::timeout(Duration::from_secs(30), ready.wait())
        .await
        .expect("all clients connect");
    // Publish in small batches through C while restarting A and B under their clients.
    let publishing = {
        let addr = publisher.addr;
        tokio::spawn(async move {
            let mut next = 1;
            while next <= TOTAL {
                let end = (next + 9).min(TOTAL);
                let messages: Vec<String> = (next..=end)
                    .map(|n| format!(r#"{{"group":"user.9","text":"{n}"}}"#))
                    .collect();
                let body = format!(r#"{{"messages":[{}]}}"#, messages.join(","));
                let (status, text) =
                    support::http(addr, "POST", "/api/publish", &[], body.as_bytes()).await;
                assert_eq!(status, 200, "{text}");
                next = end + 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut nodes = [Some(a), Some(b)];
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let slot = round % 2;
        if let Some(node) = nodes[slot].take() {
            live.lock().unwrap().retain(|addr| *addr != node.addr);
            node.stop().await;
        }
        let fresh = TestServer::with_config(config()).await;
        live.lock().unwrap().push(fresh.addr);
        nodes[slot] = Some(fresh);
    }
    publishing.await.unwrap();
    for (i, client) in clients.into_iter().enumerate() {
        let seen = client.await.unwrap();
        let expected: Vec<u64> = (1..=TOTAL).collect();
        assert!(
            seen == expected,
            "client {i}: {} offsets, first difference at {:?}",
            seen.len(),
            seen.iter().zip(&expected).position(|(a, b)| a != b)
        );
    }
    let drops = drops.load(std::sync::atomic::Ordering::Relaxed);
    let cuts = server_cuts.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        drops > 0 && cuts > 0,
        "both kinds of cut happened (client drops {drops}, server cuts {cuts})"
    );
    for node in nodes.into_iter().flatten() {
        node.stop().await;
    }
    publisher.stop().await;
}
