//! Measures publish throughput through Redis: N messages from K concurrent tasks, each
//! publish one script round trip, and prints messages per second.
//!
//! ```text
//! cargo run --release -p herald-redis --example publish_throughput -- \
//!     [--url redis://127.0.0.1:PORT/0] [-n 200000] [-k 32] [--size 100] [--groups 100] [--batch 1]
//! ```
//!
//! Without `--url` it starts its own redis-server on a free port. With `--batch B > 1`
//! each task sends `publish_batch` calls of B messages instead. One node subscribes to
//! every group, so the time includes delivery back through pub/sub; the run ends when
//! every message has been received.

use std::time::{Duration, Instant};

use herald_core::{GroupName, HistoryConfig, Layer, Payload};
use herald_redis::{RedisLayer, RedisLayerConfig};
use herald_testkit::redis::{RedisProcess, unique_prefix};
use tokio::task::JoinSet;

struct Args {
    url: Option<String>,
    messages: usize,
    tasks: usize,
    size: usize,
    groups: usize,
    batch: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: None,
        messages: 200_000,
        tasks: 32,
        size: 100,
        groups: 100,
        batch: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--url" => args.url = Some(value()?),
            "-n" => args.messages = number(value()?)?,
            "-k" => args.tasks = number(value()?)?.max(1),
            "--size" => args.size = number(value()?)?,
            "--groups" => args.groups = number(value()?)?.max(1),
            "--batch" => args.batch = number(value()?)?.max(1),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = parse_args()?;
    // Kept alive until the end of `main` when the example started its own server.
    let (_server, url) = match args.url.clone() {
        Some(url) => (None, url),
        None => {
            let server = RedisProcess::start();
            let url = server.url();
            (Some(server), url)
        }
    };
    let config = RedisLayerConfig::new(url.clone())
        .with_prefix(unique_prefix())
        .with_history(HistoryConfig::default())
        .with_incoming_capacity(65_536);
    let (layer, mut incoming) = RedisLayer::new(config).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !layer.is_ready() {
        if Instant::now() > deadline {
            return Err(format!("redis at {url} not reachable"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let groups: Vec<GroupName> = (0..args.groups)
        .map(|i| GroupName::new(&format!("bench.{i}")).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    for g in &groups {
        layer.subscribe(g).await.map_err(|e| e.to_string())?;
    }
    let payload = Payload::text("x".repeat(args.size));

    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut received = 0usize;
        while received < args.messages {
            match tokio::time::timeout(Duration::from_secs(10), incoming.recv()).await {
                Ok(Some(_)) => received += 1,
                _ => break,
            }
        }
        (received, started.elapsed())
    });
    let mut publishers = JoinSet::new();
    let per_task = args.messages / args.tasks;
    let extra = args.messages % args.tasks;
    for task in 0..args.tasks {
        let layer = layer.clone();
        let groups = groups.clone();
        let payload = payload.clone();
        let count = per_task + usize::from(task < extra);
        let batch = args.batch;
        publishers.spawn(async move {
            let mut sent = 0;
            while sent < count {
                let n = batch.min(count - sent);
                let items: Vec<_> = (0..n)
                    .map(|i| {
                        (
                            groups[(task + sent + i) % groups.len()].clone(),
                            payload.clone(),
                        )
                    })
                    .collect();
                if n == 1 {
                    let (g, p) = items.into_iter().next().expect("one item");
                    layer.publish(&g, p).await.map_err(|e| e.to_string())?;
                } else {
                    layer
                        .publish_batch(items)
                        .await
                        .map_err(|(at, e)| format!("batch failed at {at}: {e}"))?;
                }
                sent += n;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(done) = publishers.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    let published_in = started.elapsed();
    let (received, received_in) = receiver.await.map_err(|e| e.to_string())?;
    layer.close().await;

    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "published {} msgs ({} B, {} groups, {} tasks, batch {}) in {:.2?}: {:.0} msgs/s",
        args.messages,
        args.size,
        args.groups,
        args.tasks,
        args.batch,
        published_in,
        rate(args.messages, published_in)
    );
    println!(
        "received  {received} msgs back through pub/sub in {received_in:.2?}: {:.0} msgs/s",
        rate(received, received_in)
    );
    Ok(())
}
