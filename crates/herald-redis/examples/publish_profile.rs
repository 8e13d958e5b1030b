//! What the publish script costs inside Redis: publishes `MESSAGES` messages (default
//! 100,000, 99-byte payloads) through a `RedisLayer` on a private redis-server, from
//! `PUBLISHERS` concurrent tasks over `GROUPS` groups (per-user traffic), and prints the
//! `INFO commandstats` deltas (calls and microseconds per command, per message) and the
//! server's CPU time per message.
//!
//! ```text
//! cargo run --release -p herald-redis --example publish_profile
//! MESSAGES=100000 PUBLISHERS=4 GROUPS=10000 IN_FLIGHT=1 BATCH_MAX=256 cargo run --release -p herald-redis --example publish_profile
//! ```

use std::collections::BTreeMap;
use std::time::Instant;

use herald_core::{GroupName, Layer, Payload};
use herald_redis::{RedisLayer, RedisLayerConfig};
use herald_testkit::redis::{RedisProcess, unique_prefix};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `INFO` fields as text.
async fn info(redis: &RedisProcess, section: &str) -> String {
    match redis.cmd(&["INFO", section]).await {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("unexpected INFO reply {other:?}"),
    }
}

/// `cmdstat_<name>:calls=..,usec=..` lines as (calls, usec) per command.
fn commandstats(text: &str) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, fields)) = rest.split_once(':') else {
            continue;
        };
        let field = |key: &str| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(key))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.insert(name.to_owned(), (field("calls="), field("usec=")));
    }
    out
}

/// This process's CPU time (user + system), in seconds: the layer's client side.
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields 14 and 15 (utime, stime) in clock ticks; 100 per second on Linux.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn cpu(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| {
            l.split_once(':')
                .and_then(|(_, v)| v.trim().parse::<f64>().ok())
        })
        .sum()
}

#[tokio::main]
async fn main() {
    let messages = env("MESSAGES", 100_000);
    let publishers = env("PUBLISHERS", 16).max(1);
    let groups = env("GROUPS", 10_000).max(1);
    let redis = RedisProcess::start();
    let mut config = RedisLayerConfig::new(redis.url()).with_prefix(unique_prefix());
    config.publish_in_flight = env("IN_FLIGHT", config.publish_in_flight as u64) as usize;
    config.publish_batch_max = env("BATCH_MAX", config.publish_batch_max as u64) as usize;
    let (layer, _incoming) = RedisLayer::new(config).expect("valid config");
    let start = Instant::now();
    while !layer.is_ready() {
        assert!(start.elapsed().as_secs() < 5, "layer not ready within 5 s");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let payload = Payload::text("x".repeat(99));
    redis.cmd(&["CONFIG", "RESETSTAT"]).await;
    let cpu_before = cpu(&info(&redis, "cpu").await);
    let own_before = own_cpu();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let layer = layer.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut seq = p;
            while seq < messages {
                let group = GroupName::new(&format!("user.{}", seq % groups)).expect("valid");
                layer
                    .publish(&group, payload.clone())
                    .await
                    .expect("publish");
                seq += publishers;
            }
        }));
    }
    for task in tasks {
        task.await.expect("publisher");
    }
    let elapsed = started.elapsed();
    let own_used = own_cpu() - own_before;
    let cpu_used = cpu(&info(&redis, "cpu").await) - cpu_before;
    let commands = commandstats(&info(&redis, "commandstats").await);
    let per = messages as f64;
    println!(
        "{messages} publishes, {publishers} publishers, {groups} groups: {:.0} msg/s, redis CPU {:.1} µs/msg, client (layer) CPU {:.1} µs/msg",
        per / elapsed.as_secs_f64(),
        cpu_used * 1e6 / per,
        own_used * 1e6 / per
    );
    let stats = layer.stats();
    println!(
        "script calls: {} ({:.2} messages per call, largest {})",
        stats.publish_calls,
        per / stats.publish_calls.max(1) as f64,
        stats.publish_largest_call
    );
    println!("| command | calls per message | µs per call | µs per message |");
    println!("|---|---|---|---|");
    let mut rows: Vec<_> = commands.into_iter().collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.1.1));
    for (name, (calls, usec)) in rows {
        if name == "info" || name == "config|resetstat" || name == "config" {
            continue;
        }
        println!(
            "| {name} | {:.3} | {:.2} | {:.2} |",
            calls as f64 / per,
            usec as f64 / calls.max(1) as f64,
            usec as f64 / per
        );
    }
}
