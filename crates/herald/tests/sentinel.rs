//! herald on Redis Sentinel, with real processes: `herald serve` nodes on a
//! `redis+sentinel://` URL, a real master, two replicas and three sentinels.
//!
//! - a failover under load: every publish is answered 200 or 503, every `herald.v1`
//!   client ends with every acknowledged message once and in order or with an explicit
//!   reset, delivery resumes within 10 s of the promotion, `/readyz` is 503 in the gap;
//! - acknowledged writes lost in a failover reset the affected streams (4400, then
//!   `recovered: false`; SSE: `event: close` 4400, then `event: resync`), never silently;
//! - an invalid Sentinel URL stops `herald serve` at start-up with the reason.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_testkit::redis::unique_prefix;
use herald_testkit::sentinel::SentinelSet;
use herald_testkit::ws::{StreamPos, V1Event};
use support::{V1Client, get_status, herald_bin, http, spawn_serve};
use tokio::time::Instant;

/// Groups published to; each has one client per node (route `/message/{id}/stream/`).
const GROUPS: usize = 4;
/// Messages published in the failover test, over all groups and nodes.
const TOTAL: u64 = 5000;

/// A `herald serve` process, killed on drop.
struct Node {
    addr: SocketAddr,
    child: Child,
}

impl Node {
    fn start(url: &str, prefix: &str) -> Self {
        let mut cmd = Command::new(herald_bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .env("HERALD_LAYER_KIND", "redis")
            .env("HERALD_LAYER_URL", url)
            .env("HERALD_LAYER_PREFIX", prefix)
            .env("HERALD_LAYER_PROBE_INTERVAL", "250ms")
            .env("HERALD_HISTORY_SIZE", "10000")
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit());
        let (child, addr) = spawn_serve(cmd);
        Self {
            addr: addr.parse().expect("a socket address"),
            child,
        }
    }

    async fn wait_ready(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while get_status(self.addr, "/readyz").await != 200 {
            assert!(
                Instant::now() < until,
                "{} not ready within {limit:?}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A counter from `/metrics` (0 when absent).
    async fn metric(&self, name: &str) -> u64 {
        let (_, text) = http(self.addr, "GET", "/metrics", &[], b"").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The process may have exited; reap it either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The acknowledged publishes of one group: (epoch, offset) → text.
type Acked = HashMap<(String, u64), String>;

/// What one client saw, in order.
#[derive(Debug, Clone)]
enum Seen {
    /// A message under the epoch the client was on.
    Message {
        epoch: String,
        offset: u64,
        text: String,
        at: Instant,
    },
    /// A resume the history could not cover (`recovered: false`): the client restarts at
    /// this position.
    Reset { epoch: String, offset: u64 },
}

/// A `herald.v1` client of `group` on `addr` that reconnects after every close (with
/// its positions), until it receives a message whose text is `end`. Returns what it saw
/// and the close codes it got.
async fn run_client(addr: SocketAddr, user: usize, limit: Duration) -> (Vec<Seen>, Vec<u16>) {
    let group = format!("user.{user}");
    let url = format!("ws://{addr}/message/{user}/stream/");
    let deadline = Instant::now() + limit;
    let mut positions: BTreeMap<String, StreamPos> = BTreeMap::new();
    let mut seen = Vec::new();
    let mut closes = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "client of {group} on {addr} did not finish"
        );
        let mut client = match V1Client::connect(&url, positions.clone()).await {
            Ok(c) => c,
            Err(_) => {
                // During the gap a resume may be refused (history unavailable: 1013).
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let w = client.welcome[&group].clone();
        if positions.is_empty() {
            // The first visit: the client starts at the current position.
            seen.push(Seen::Reset {
                epoch: w.epoch.clone(),
                offset: w.offset,
            });
        } else if !w.recovered {
            seen.push(Seen::Reset {
                epoch: w.epoch.clone(),
                offset: w.offset,
            });
        }
        loop {
            match client.next_within(Duration::from_secs(1)).await {
                Ok(Some(V1Event::Message(m))) => {
                    let epoch = client.positions[&group].epoch.clone();
                    let text = String::from_utf8_lossy(&m.payload).into_owned();
                    let end = text == "end";
                    seen.push(Seen::Message {
                        epoch,
                        offset: m.offset,
                        text,
                        at: Instant::now(),
                    });
                    if end {
                        return (seen, closes);
                    }
                }
                Ok(Some(V1Event::Closed(code))) => {
                    closes.push(code);
                    positions = client.disconnect();
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    assert!(Instant::now() < deadline, "client of {group} stalled");
                }
                Err(_) => {
                    positions = client.disconnect();
                    break;
                }
            }
        }
    }
}

/// Checks one client's record against the acknowledged publishes of its group
/// (`acked`: (epoch, offset) → text). Returns the number of explicit resets after the
/// first visit.
fn check_client(name: &str, seen: &[Seen], acked: &Acked) -> usize {
    let mut at: Option<(String, u64)> = None;
    let mut resets = 0;
    let mut received: Vec<(String, u64)> = Vec::new();
    for (i, event) in seen.iter().enumerate() {
        match event {
            Seen::Reset { epoch, offset } => {
                if i > 0 {
                    resets += 1;
                }
                at = Some((epoch.clone(), *offset));
            }
            Seen::Message {
                epoch,
                offset,
                text,
                ..
            } => {
                let Some((e, o)) = &at else {
                    panic!("{name}: a message before the welcome")
                };
                assert!(
                    e == epoch && *offset == o + 1,
                    "{name}: silent gap or duplicate: after {e}:{o} came {epoch}:{offset}"
                );
                if let Some(published) = acked.get(&(epoch.clone(), *offset)) {
                    assert_eq!(
                        published, text,
                        "{name}: {epoch}:{offset} is not the message acknowledged at that position"
                    );
                }
                received.push((epoch.clone(), *offset));
                at = Some((epoch.clone(), *offset));
            }
        }
    }
    // Since the last (re)start, every acknowledged message of that epoch arrived.
    let start = seen.iter().rposition(|e| matches!(e, Seen::Reset { .. }));
    if let Some(Seen::Reset { epoch, offset }) = start.map(|i| &seen[i]) {
        let last = received
            .iter()
            .filter(|(e, _)| e == epoch)
            .map(|(_, o)| *o)
            .max()
            .unwrap_or(*offset);
        for (e, o) in acked.keys() {
            if e == epoch && *o > *offset && *o <= last {
                assert!(
                    received.contains(&(e.clone(), *o)),
                    "{name}: acknowledged {e}:{o} never arrived and no reset said so"
                );
            }
        }
        if resets == 0 {
            // No reset at all: the client holds every acknowledged message of the group.
            for (e, o) in acked.keys() {
                assert!(
                    received.contains(&(e.clone(), *o)),
                    "{name}: acknowledged {e}:{o} missing without a reset"
                );
            }
        }
    }
    resets
}

/// A raw SSE stream (HTTP/1.1, chunked): enough to find events and ids in its bytes.
struct RawSse {
    stream: tokio::net::TcpStream,
    text: String,
}

impl RawSse {
    async fn open(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> Self {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        if let Some(id) = last_event_id {
            request.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        Self {
            stream,
            text: String::new(),
        }
    }

    /// Reads until the bytes received contain `needle`; panics after `limit`.
    async fn read_until(&mut self, needle: &str, limit: Duration) {
        use tokio::io::AsyncReadExt;
        let until = Instant::now() + limit;
        let mut buf = vec![0u8; 4096];
        while !self.text.contains(needle) {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.text.push_str(&String::from_utf8_lossy(&buf[..n])),
                Ok(_) => panic!("stream ended without {needle:?}: {}", self.text),
                Err(_) => panic!("no {needle:?} within {limit:?}: {}", self.text),
            }
        }
    }

    /// The last `id:` received.
    fn last_id(&self) -> Option<String> {
        self.text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("id: "))
            .map(str::to_owned)
    }
}

/// Publishes `text` to `user.{user}` through `addr`; (status, position if 200).
async fn publish(addr: SocketAddr, user: usize, text: &str) -> (u16, Option<(String, u64)>) {
    let body = format!(r#"{{"group":"user.{user}","text":"{text}"}}"#);
    let (status, answer) = http(addr, "POST", "/api/publish", &[], body.as_bytes()).await;
    let position = (status == 200).then(|| {
        let v: serde_json::Value = serde_json::from_str(&answer).expect("a JSON answer");
        (
            v["epoch"].as_str().expect("an epoch").to_owned(),
            v["offset"].as_u64().expect("an offset"),
        )
    });
    (status, position)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_load_every_client_ends_exact_or_reset_and_delivery_resumes() {
    let mut set = SentinelSet::start().await;
    let prefix = unique_prefix();
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&set.url(), &prefix)).collect();
    for node in &nodes {
        node.wait_ready(Duration::from_secs(20)).await;
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();

    // One client per group on every node, all connected before the first publish.
    let mut clients = Vec::new();
    for (n, &addr) in addrs.iter().enumerate() {
        for user in 0..GROUPS {
            let name = format!("node {n} user.{user}");
            let task = tokio::spawn(run_client(addr, user, Duration::from_secs(180)));
            clients.push((name, user, task));
        }
    }
    for &addr in &addrs {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, text) = http(addr, "GET", "/metrics", &[], b"").await;
            let open = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("herald_connections ")?
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0);
            if open >= GROUPS as u64 {
                break;
            }
            assert!(Instant::now() < until, "clients on {addr} did not connect");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Readiness, sampled on every node from before the kill to the end.
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<(usize, Instant, u16)>>> = Arc::default();
    let sampler = {
        let (stop, samples, addrs) = (stop_sampling.clone(), samples.clone(), addrs.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for (i, &addr) in addrs.iter().enumerate() {
                    let status = get_status(addr, "/readyz").await;
                    samples.lock().unwrap().push((i, Instant::now(), status));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // One publisher per group, through every node in turn; each records its answers.
    let attempts = Arc::new(AtomicU64::new(0));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::new(Mutex::new(vec![HashMap::new(); GROUPS]));
    let statuses: Arc<Mutex<BTreeMap<u16, u64>>> = Arc::default();
    let mut publishers = Vec::new();
    for user in 0..GROUPS {
        let (attempts, acked, statuses, addrs) = (
            attempts.clone(),
            acked.clone(),
            statuses.clone(),
            addrs.clone(),
        );
        publishers.push(tokio::spawn(async move {
            for i in 0..TOTAL / GROUPS as u64 {
                attempts.fetch_add(1, Ordering::Relaxed);
                let addr = addrs[(i as usize + user) % addrs.len()];
                let text = format!("{user}:{i}");
                let (status, position) = publish(addr, user, &text).await;
                *statuses.lock().unwrap().entry(status).or_default() += 1;
                match position {
                    Some(p) => {
                        acked.lock().unwrap()[user].insert(p, text);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    // In the gap: fail fast, and do not burn the whole run on it.
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }));
    }

    // A fifth of the way in, kill the master; a replica is promoted.
    let until = Instant::now() + Duration::from_secs(60);
    while attempts.load(Ordering::Relaxed) < TOTAL / 5 {
        assert!(Instant::now() < until, "publishing stalled before the kill");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let old = set.master_port().await.expect("a master");
    let killed = Instant::now();
    set.kill_server(old);
    let (new, promoted) = set.wait_new_master(old, Duration::from_secs(60)).await;
    assert_ne!(new, old);

    for p in publishers {
        p.await.expect("publisher");
    }
    let statuses = statuses.lock().unwrap().clone();
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 503),
        "every publish is answered 200 or 503: {statuses:?}"
    );
    assert!(
        statuses.get(&200).copied().unwrap_or(0) > TOTAL / 2,
        "{statuses:?}"
    );

    // End markers, repeated until every client saw one (a reset client may miss one).
    let done = Arc::new(AtomicBool::new(false));
    let ender = {
        let (done, acked, addr) = (done.clone(), acked.clone(), addrs[0]);
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                for user in 0..GROUPS {
                    if let (200, Some(p)) = publish(addr, user, "end").await {
                        acked.lock().unwrap()[user].insert(p, "end".to_owned());
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let mut results = Vec::new();
    for (name, user, task) in clients {
        let (seen, closes) = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .unwrap_or_else(|_| panic!("{name} did not finish"))
            .expect("client task");
        results.push((name, user, seen, closes));
    }
    done.store(true, Ordering::Relaxed);
    ender.await.expect("ender");
    stop_sampling.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");

    let acked = acked.lock().unwrap().clone();
    let mut resumed_after = Duration::ZERO;
    let mut total_resets = 0;
    let mut total_closes: BTreeMap<u16, usize> = BTreeMap::new();
    for (name, user, seen, closes) in &results {
        total_resets += check_client(name, seen, &acked[*user]);
        for code in closes {
            *total_closes.entry(*code).or_default() += 1;
        }
        assert!(
            closes.iter().all(|c| [4400, 1013, 1012].contains(c)),
            "{name}: unexpected close codes {closes:?}"
        );
        // Delivery resumed: the first message this client got after the promotion.
        let first = seen.iter().find_map(|e| match e {
            Seen::Message { at, .. } if *at > promoted => Some(*at),
            _ => None,
        });
        let first = first.unwrap_or_else(|| panic!("{name}: nothing after the promotion"));
        resumed_after = resumed_after.max(first.saturating_duration_since(promoted));
    }
    let mut lost_writes = 0;
    for node in &nodes {
        lost_writes += node.metric("herald_redis_lost_writes_total").await;
    }
    eprintln!(
        "failover: master killed, promotion seen {:?} later; delivery resumed on every client within {resumed_after:?} of it; publishes {statuses:?}; closes {total_closes:?}; explicit resets {total_resets}; groups with lost writes {lost_writes}",
        promoted.saturating_duration_since(killed)
    );
    assert!(
        total_resets == 0 || lost_writes > 0,
        "a reset without a detected lost write"
    );
    assert!(
        resumed_after <= Duration::from_secs(10),
        "delivery resumed {resumed_after:?} after the promotion"
    );

    // /readyz: 503 on every node in the gap, 200 on every node at the end.
    let samples = samples.lock().unwrap().clone();
    for (i, &addr) in addrs.iter().enumerate() {
        assert!(
            samples
                .iter()
                .any(|(n, at, s)| *n == i && *s == 503 && *at >= killed),
            "node {i}: /readyz never 503 during the gap"
        );
        assert_eq!(
            get_status(addr, "/readyz").await,
            200,
            "node {i} ready again"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_lost_in_a_failover_reset_every_affected_client_never_silently() {
    let mut set = SentinelSet::start().await;
    let prefix = unique_prefix();
    let a = Node::start(&set.url(), &prefix);
    let b = Node::start(&set.url(), &prefix);
    a.wait_ready(Duration::from_secs(20)).await;
    b.wait_ready(Duration::from_secs(20)).await;
    let mut clients = Vec::new();
    for node in [&a, &b] {
        let url = format!("ws://{}/message/1/stream/", node.addr);
        clients.push(V1Client::connect(&url, BTreeMap::new()).await.unwrap());
    }
    // An SSE stream too, on the node that did not publish.
    let mut sse = RawSse::open(b.addr, "/message/1/stream/", None).await;
    sse.read_until("retry:", Duration::from_secs(5)).await;
    for i in 1..=3 {
        assert_eq!(publish(a.addr, 1, &i.to_string()).await.0, 200);
    }
    let master = set.master_port().await.expect("a master");
    assert!(set.replicas_in_sync(master, 2).await);
    set.cut_replication(master).await;
    // Acknowledged, but only the master has them.
    for i in 4..=5 {
        let (status, position) = publish(a.addr, 1, &i.to_string()).await;
        assert_eq!(status, 200);
        assert_eq!(position.map(|p| p.1), Some(i));
    }
    for client in &mut clients {
        for i in 1..=5 {
            let m = client.next_message(Duration::from_secs(5)).await.unwrap();
            assert_eq!(m.offset, i);
        }
    }
    sse.read_until("data: 5\n", Duration::from_secs(5)).await;
    let epoch = clients[0].positions["user.1"].epoch.clone();
    set.kill_server(master);
    set.wait_new_master(master, Duration::from_secs(60)).await;

    // Without any further publish, each client is told: 4400, then a resume from
    // offset 5 is answered `recovered: false` under a new epoch.
    for (i, mut client) in clients.into_iter().enumerate() {
        let until = Instant::now() + Duration::from_secs(30);
        let code = loop {
            match client.next_within(Duration::from_secs(1)).await {
                Ok(Some(V1Event::Closed(code))) => break code,
                Ok(Some(V1Event::Message(m))) => panic!("client {i}: unexpected message {m:?}"),
                Ok(_) => assert!(Instant::now() < until, "client {i}: never reset"),
                Err(e) => panic!("client {i}: {e}"),
            }
        };
        assert_eq!(code, 4400, "client {i}");
        let positions = client.disconnect();
        assert_eq!(positions["user.1"].offset, 5);
        let addr = if i == 0 { a.addr } else { b.addr };
        let url = format!("ws://{addr}/message/1/stream/");
        let until = Instant::now() + Duration::from_secs(20);
        let resumed = loop {
            match V1Client::connect(&url, positions.clone()).await {
                Ok(c) => break c,
                Err(_) => {
                    assert!(Instant::now() < until, "client {i}: cannot resume");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let w = &resumed.welcome["user.1"];
        assert!(
            !w.recovered,
            "client {i}: the lost writes are not silently resumed"
        );
        assert_ne!(w.epoch, epoch, "client {i}: a new epoch");
    }
    // The SSE stream ends with the same code; its resume from the last id is a resync.
    sse.read_until(
        "event: close\ndata: {\"code\":4400",
        Duration::from_secs(30),
    )
    .await;
    let id = sse.last_id().expect("an id");
    assert!(id.starts_with("user.1:5:"), "{id}");
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let mut resumed = RawSse::open(b.addr, "/message/1/stream/", Some(&id)).await;
        resumed.read_until("\r\n\r\n", Duration::from_secs(5)).await;
        if resumed.text.starts_with("HTTP/1.1 200") {
            resumed
                .read_until("event: resync", Duration::from_secs(5))
                .await;
            break;
        }
        assert!(
            Instant::now() < until,
            "SSE resume refused: {}",
            resumed.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        a.metric("herald_redis_lost_writes_total").await
            + b.metric("herald_redis_lost_writes_total").await,
        1,
        "one node found the loss"
    );
}

#[tokio::test]
async fn an_invalid_sentinel_url_stops_serve_with_the_reason() {
    let output = Command::new(herald_bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("HERALD_LAYER_KIND", "redis")
        .env("HERALD_LAYER_URL", "redis+sentinel://127.0.0.1:26379")
        .output()
        .expect("run herald");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("layer.url") && stderr.contains("master name"),
        "{stderr}"
    );
}
