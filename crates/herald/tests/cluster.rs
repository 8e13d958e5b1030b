//! herald on Redis Cluster (`redis+cluster://`), with real `herald serve` processes and a
//! real 3-master, 3-replica cluster: delivery across shards, a master failover, a slot
//! migrated under traffic, and readiness of a frozen shard. One test per case.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_testkit::cluster::RedisCluster;
use herald_testkit::redis::unique_prefix;
use herald_testkit::ws::{V1Client, V1Event};
use tokio::time::Instant;

/// A `herald serve` process on the cluster, its stderr in a file; killed on drop.
struct Herald {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Herald {
    fn start(url: &str, prefix: &str, probe_interval: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("herald-cluster-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = format!(
            "[[routes]]\npath = \"/message/{{user_id}}/stream/\"\n\
             groups = [\"user.{{user_id}}\", \"broadcast\"]\n\
             [layer]\nkind = \"redis\"\nurl = \"{url}\"\nprefix = \"{prefix}\"\n\
             probe_interval = \"{probe_interval}\"\n"
        );
        let config_path = dir.join("herald.toml");
        std::fs::write(&config_path, config).expect("write config");
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("log file");
        let mut cmd = Command::new(support::herald_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .stderr(Stdio::from(stderr))
            .env("RUST_LOG", "herald=info,herald_redis=info,warn");
        let (child, addr) = support::spawn_serve(cmd);
        Self {
            child,
            addr: addr.parse().expect("address"),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    async fn readyz(&self) -> u16 {
        support::get_status(self.addr, "/readyz").await
    }

    async fn wait_ready(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while self.readyz().await != 200 {
            assert!(
                Instant::now() < until,
                "herald not ready within {limit:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn publish(&self, group: &str, text: &str) -> (u16, serde_json::Value) {
        let body = serde_json::json!({"group": group, "text": text}).to_string();
        let (status, text) =
            support::http(self.addr, "POST", "/api/publish", &[], body.as_bytes()).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    async fn client(&self, user: &str) -> V1Client {
        let url = format!("ws://{}/message/{user}/stream/", self.addr);
        V1Client::connect(&url, BTreeMap::new())
            .await
            .expect("herald.v1 connect")
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_cluster() -> RedisCluster {
    tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster start")
}

/// Users whose group `user.{id}` has its channel on each master in turn, `per_master` per
/// master: returns (user, master port).
fn users_on_every_master(
    cluster: &RedisCluster,
    prefix: &str,
    per_master: usize,
) -> Vec<(String, u16)> {
    let masters: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    assert_eq!(masters.len(), 3, "three masters");
    let mut count: BTreeMap<u16, usize> = BTreeMap::new();
    let mut users = Vec::new();
    for i in 0..1000 {
        let user = format!("u{i}");
        let slot = cluster.slot_of(&format!("{prefix}:{{user.{user}}}:ch"));
        let master = cluster.master_of_slot(slot);
        let n = count.entry(master).or_default();
        if *n < per_master {
            *n += 1;
            users.push((user, master));
        }
        if users.len() == per_master * masters.len() {
            break;
        }
    }
    let on: BTreeSet<u16> = users.iter().map(|(_, m)| *m).collect();
    assert_eq!(
        on,
        masters.iter().copied().collect::<BTreeSet<_>>(),
        "the chosen groups' slots are on all three masters"
    );
    users
}

/// What one client received, per group: the payload texts in arrival order.
#[derive(Debug, Default)]
struct Record {
    by_group: BTreeMap<String, Vec<String>>,
    closed: Option<u16>,
    /// When each payload text arrived (the first time), per group.
    arrived: BTreeMap<(String, String), Instant>,
}

/// Reads `client` until it received `end` on every group of `groups`, it is closed, or
/// `limit` passes.
async fn read_until_end(mut client: V1Client, groups: Vec<String>, limit: Duration) -> Record {
    let until = Instant::now() + limit;
    let mut record = Record::default();
    let mut ended: BTreeSet<String> = BTreeSet::new();
    while ended.len() < groups.len() {
        let left = until.saturating_duration_since(Instant::now());
        match client.next_within(left).await {
            Ok(Some(V1Event::Message(m))) => {
                let text = String::from_utf8_lossy(&m.payload).into_owned();
                if text == "end" {
                    ended.insert(m.group.clone());
                }
                record
                    .arrived
                    .entry((m.group.clone(), text.clone()))
                    .or_insert_with(Instant::now);
                record.by_group.entry(m.group).or_default().push(text);
            }
            Ok(Some(V1Event::Closed(code))) => {
                record.closed = Some(code);
                break;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    record
}

/// The sequence numbers of `texts` (`{tag}:{n}`), ignoring `end`.
fn seqs(texts: &[String]) -> Vec<u64> {
    texts
        .iter()
        .filter(|t| *t != "end")
        .map(|t| {
            t.rsplit_once(':')
                .and_then(|(_, n)| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected payload {t:?}"))
        })
        .collect()
}

/// Publishes `end` on `group` through `node`, retrying through a failover.
async fn publish_end(node: &Herald, group: &str) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = node.publish(group, "end").await;
        if status == 200 {
            return;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < until, "end marker on {group} not accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_on_all_shards_reach_every_node_exactly_once_in_order() {
    let cluster = start_cluster().await;
    let prefix = unique_prefix();
    let users = users_on_every_master(&cluster, &prefix, 2);
    let nodes: Vec<Herald> = (0..3)
        .map(|_| Herald::start(&cluster.url(), &prefix, "500ms"))
        .collect();
    for node in &nodes {
        node.wait_ready(Duration::from_secs(20)).await;
    }
    let mut readers = Vec::new();
    for node in &nodes {
        for (user, _) in &users {
            let client = node.client(user).await;
            let groups = vec![format!("user.{user}"), "broadcast".to_owned()];
            readers.push((
                user.clone(),
                tokio::spawn(read_until_end(client, groups, Duration::from_secs(60))),
            ));
        }
    }
    let per_group = 20;
    for n in 0..per_group {
        for (i, (user, _)) in users.iter().enumerate() {
            let node = &nodes[(n + i) % 3];
            let (status, body) = node
                .publish(&format!("user.{user}"), &format!("{user}:{n}"))
                .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["offset"], n + 1, "{body}");
        }
        let (status, body) = nodes[n % 3].publish("broadcast", &format!("b:{n}")).await;
        assert_eq!(status, 200, "{body}");
    }
    for (user, _) in &users {
        publish_end(&nodes[0], &format!("user.{user}")).await;
    }
    publish_end(&nodes[1], "broadcast").await;
    let expected: Vec<u64> = (0..per_group as u64).collect();
    for (user, reader) in readers {
        let record = reader.await.expect("reader");
        assert_eq!(record.closed, None, "{user}: closed");
        for group in [format!("user.{user}"), "broadcast".to_owned()] {
            let texts = record.by_group.get(&group).cloned().unwrap_or_default();
            assert_eq!(
                texts.last().map(String::as_str),
                Some("end"),
                "{user}/{group}: {texts:?}"
            );
            assert_eq!(
                seqs(&texts),
                expected,
                "{user}/{group}: exactly once, in order"
            );
        }
    }
    // Each shard's health is exported, labelled by its master.
    let (status, metrics) = support::http(nodes[2].addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    let healthy: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("herald_redis_shard_healthy{shard=\"127.0.0.1:"))
        .collect();
    assert_eq!(healthy.len(), 3, "{healthy:?}");
    assert!(healthy.iter().all(|l| l.ends_with(" 1")), "{healthy:?}");
    assert!(
        metrics.contains("herald_redis_cluster_shards 3"),
        "{metrics}"
    );
}

/// What the publisher sent on one group: sequence numbers answered 200.
type Acked = Arc<Mutex<BTreeMap<String, Vec<u64>>>>;

/// Publishes `{user}:{n}` on each group in turn through the nodes until `stop`; every
/// answer must be 200 or 503. Returns the counts of both.
async fn publish_until(
    nodes: Arc<Vec<Herald>>,
    groups: Vec<String>,
    acked: Acked,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> (u64, u64) {
    let (mut ok, mut unavailable) = (0, 0);
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        for (i, group) in groups.iter().enumerate() {
            let node = &nodes[(n as usize + i) % nodes.len()];
            let (status, body) = node.publish(group, &format!("{group}:{n}")).await;
            match status {
                200 => {
                    ok += 1;
                    acked
                        .lock()
                        .unwrap()
                        .entry(group.clone())
                        .or_default()
                        .push(n);
                }
                503 => unavailable += 1,
                other => panic!("publish answered {other}: {body}"),
            }
        }
        sent.store(n, Ordering::Relaxed);
        n += 1;
        // Pacing, not waiting: about 50 rounds a second leaves CPU for the cluster.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (ok, unavailable)
}

/// Checks one client's record against what was acknowledged: per group no duplicate, no
/// reordering, and every acknowledged message present unless the client was told to
/// reset (close 4400).
fn check_exactly_once(who: &str, record: &Record, acked: &BTreeMap<String, Vec<u64>>) {
    let reset = record.closed == Some(4400);
    assert!(
        record.closed.is_none() || reset,
        "{who}: closed with {:?}",
        record.closed
    );
    for (group, acked) in acked {
        let got = seqs(record.by_group.get(group).map_or(&[][..], Vec::as_slice));
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "{who}/{group}: duplicate or out of order: {got:?}"
        );
        if !reset {
            let got: BTreeSet<u64> = got.into_iter().collect();
            let missing: Vec<u64> = acked.iter().filter(|n| !got.contains(n)).copied().collect();
            assert!(
                missing.is_empty(),
                "{who}/{group}: acknowledged but never delivered: {missing:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_followed_without_silent_loss_or_duplicates() {
    let mut cluster = start_cluster().await;
    let prefix = unique_prefix();
    let users = users_on_every_master(&cluster, &prefix, 1);
    let nodes: Vec<Herald> = (0..3)
        .map(|_| Herald::start(&cluster.url(), &prefix, "500ms"))
        .collect();
    for node in &nodes {
        node.wait_ready(Duration::from_secs(20)).await;
    }
    let groups: Vec<String> = users.iter().map(|(u, _)| format!("user.{u}")).collect();
    let mut readers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for (user, _) in &users {
            let client = node.client(user).await;
            let groups = vec![format!("user.{user}")];
            readers.push((
                format!("node{n}/{user}"),
                user.clone(),
                tokio::spawn(read_until_end(client, groups, Duration::from_secs(90))),
            ));
        }
    }
    let nodes = Arc::new(nodes);
    let acked: Acked = Arc::default();
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(publish_until(
        nodes.clone(),
        groups.clone(),
        acked.clone(),
        sent.clone(),
        stop.clone(),
    ));
    support::eventually(Duration::from_secs(20), "traffic before the kill", || {
        sent.load(Ordering::Relaxed) >= 20
    })
    .await;

    let (victim_user, victim) = users[0].clone();
    let victim_group = format!("user.{victim_user}");
    cluster.kill(victim);
    let killed_at = Instant::now();
    // /readyz reports the dead shard (polled while the cluster fails over).
    let mut saw_unready = false;
    let cluster = Arc::new(cluster);
    let failover = {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || cluster.wait_failover(victim, Duration::from_secs(30)))
    };
    while !failover.is_finished() {
        saw_unready |= nodes[0].readyz().await == 503;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    failover.await.expect("failover");
    let promoted_at = Instant::now();
    let sent_at_promotion = sent.load(Ordering::Relaxed);
    assert!(saw_unready, "/readyz was 503 while the shard was down");

    // Delivery of the victim shard's group resumes on every node within 10 s of the
    // promotion: a message published after it reaches a client on each node.
    let resumed = async {
        loop {
            let acked_after: Vec<u64> = acked.lock().unwrap()[&victim_group]
                .iter()
                .copied()
                .filter(|n| *n > sent_at_promotion)
                .collect();
            if !acked_after.is_empty() {
                return acked_after[0];
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let first_after = tokio::time::timeout(Duration::from_secs(10), resumed)
        .await
        .expect("a publish on the failed-over shard is acknowledged within 10 s");
    for node in nodes.iter() {
        node.wait_ready(Duration::from_secs(10)).await;
    }
    // Let traffic run on the new master for a while, then stop and mark the end.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, unavailable) = publisher.await.expect("publisher");
    for group in &groups {
        publish_end(&nodes[0], group).await;
    }
    let acked = acked.lock().unwrap().clone();
    let mut resumed_on_time = 0;
    for (who, user, reader) in readers {
        let record = reader.await.expect("reader");
        let mine: BTreeMap<String, Vec<u64>> = acked
            .iter()
            .filter(|(g, _)| **g == format!("user.{user}"))
            .map(|(g, v)| (g.clone(), v.clone()))
            .collect();
        check_exactly_once(&who, &record, &mine);
        if user == victim_user && record.closed.is_none() {
            let key = (
                victim_group.clone(),
                format!("{victim_group}:{first_after}"),
            );
            let arrived = record
                .arrived
                .get(&key)
                .unwrap_or_else(|| panic!("{who}: the first message after the promotion arrived"));
            let after = arrived.saturating_duration_since(promoted_at);
            assert!(
                after <= Duration::from_secs(10),
                "{who}: delivery resumed {after:?} after the promotion"
            );
            resumed_on_time += 1;
        }
    }
    assert!(resumed_on_time > 0, "some client followed the failover");
    eprintln!(
        "failover: {ok} publishes answered 200, {unavailable} answered 503; \
         promotion {:?} after the kill",
        promoted_at - killed_at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrated_under_traffic_loses_and_repeats_nothing() {
    let cluster = start_cluster().await;
    let prefix = unique_prefix();
    let users = users_on_every_master(&cluster, &prefix, 1);
    let nodes: Vec<Herald> = (0..3)
        .map(|_| Herald::start(&cluster.url(), &prefix, "500ms"))
        .collect();
    for node in &nodes {
        node.wait_ready(Duration::from_secs(20)).await;
    }
    let groups: Vec<String> = users.iter().map(|(u, _)| format!("user.{u}")).collect();
    let mut readers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for (user, _) in &users {
            let client = node.client(user).await;
            readers.push((
                format!("node{n}/{user}"),
                user.clone(),
                tokio::spawn(read_until_end(
                    client,
                    vec![format!("user.{user}")],
                    Duration::from_secs(90),
                )),
            ));
        }
    }
    let nodes = Arc::new(nodes);
    let acked: Acked = Arc::default();
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(publish_until(
        nodes.clone(),
        groups.clone(),
        acked.clone(),
        sent.clone(),
        stop.clone(),
    ));
    support::eventually(
        Duration::from_secs(20),
        "traffic before the migration",
        || sent.load(Ordering::Relaxed) >= 20,
    )
    .await;

    let (moved_user, from) = users[0].clone();
    let slot = cluster.slot_of(&format!("{prefix}:{{user.{moved_user}}}:ch"));
    let to = users
        .iter()
        .map(|(_, m)| *m)
        .find(|m| *m != from)
        .expect("another master");
    let cluster = Arc::new(cluster);
    {
        let cluster = cluster.clone();
        // Each step of the migration leaves publishes 200 ms to happen.
        tokio::task::spawn_blocking(move || {
            cluster.migrate_slot(slot, to, || std::thread::sleep(Duration::from_millis(200)));
        })
        .await
        .expect("migration");
    }
    assert_eq!(cluster.master_of_slot(slot), to, "the slot moved");
    let sent_after = sent.load(Ordering::Relaxed);
    support::eventually(
        Duration::from_secs(20),
        "traffic after the migration",
        || sent.load(Ordering::Relaxed) >= sent_after + 50,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (ok, unavailable) = publisher.await.expect("publisher");
    for group in &groups {
        publish_end(&nodes[0], group).await;
    }
    let acked = acked.lock().unwrap().clone();
    for (who, user, reader) in readers {
        let record = reader.await.expect("reader");
        assert_eq!(
            record.closed, None,
            "{who}: no reset is needed for a migration"
        );
        let mine: BTreeMap<String, Vec<u64>> = acked
            .iter()
            .filter(|(g, _)| **g == format!("user.{user}"))
            .map(|(g, v)| (g.clone(), v.clone()))
            .collect();
        check_exactly_once(&who, &record, &mine);
    }
    eprintln!("migration: {ok} publishes answered 200, {unavailable} answered 503");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_shard_makes_readyz_503_within_two_probe_intervals() {
    let cluster = start_cluster().await;
    let prefix = unique_prefix();
    let interval = Duration::from_millis(500);
    let node = Herald::start(&cluster.url(), &prefix, "500ms");
    node.wait_ready(Duration::from_secs(20)).await;
    // Ready stays ready while nothing is wrong.
    for _ in 0..10 {
        assert_eq!(node.readyz().await, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A shard no group of this node lives on: only the per-shard probe can notice it.
    let frozen = cluster.masters()[1].port;
    cluster.pause(frozen);
    let frozen_at = Instant::now();
    let mut status = 200;
    while frozen_at.elapsed() < Duration::from_secs(10) {
        status = node.readyz().await;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = frozen_at.elapsed();
    cluster.resume(frozen);
    assert_eq!(status, 503, "/readyz reports the frozen shard");
    // Two intervals is the bound; the rest is this shared machine's polling and HTTP.
    assert!(
        took <= interval * 2 + Duration::from_millis(300),
        "/readyz was 503 only {took:?} after the freeze"
    );
    node.wait_ready(Duration::from_secs(20)).await;
    eprintln!("frozen shard: /readyz 503 after {took:?}");
}

#[tokio::test]
async fn a_bad_cluster_url_stops_startup_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("herald-cluster-{:016x}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config_path = dir.join("herald.toml");
    std::fs::write(
        &config_path,
        "[layer]\nkind = \"redis\"\nurl = \"redis+cluster://127.0.0.1:7000,127.0.0.1\"\n",
    )
    .expect("write config");
    let run = tokio::process::Command::new(support::herald_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("herald exits by itself")
        .expect("herald runs");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("invalid redis+cluster url") && stderr.contains("has no port"),
        "{stderr}"
    );
}
