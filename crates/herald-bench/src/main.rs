//! The `herald-bench` command: parse flags, run one benchmark, print the report and one
//! final JSON line.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use herald_bench::{BenchConfig, Mode, Shard, Transport};

#[derive(Parser, Debug)]
#[command(
    name = "herald-bench",
    version,
    about = "Load generator for WebSocket push servers (loopback targets only)",
    long_about = "Opens N WebSocket clients against a URL template ({i} = client index, \
{g} = group index), spread over source addresses 127.0.0.2, 127.0.0.3, ...; publishes \
messages over HTTP whose payloads carry their send time; reports connect rate, \
deliveries/s, loss, latency percentiles and, with --server-pid, the server's RSS per \
connection and CPU seconds per million deliveries. The last line of output is JSON.\n\n\
Example (herald, broadcast to 10k clients, batches of 50):\n  herald-bench --mode broadcast \
--clients 10000 --messages 200 --batch 50 --server-pid $(pgrep -n herald)"
)]
struct Args {
    /// What to do.
    #[arg(long, value_enum, default_value_t = ModeArg::Broadcast)]
    mode: ModeArg,
    /// How clients receive: WebSocket, or Server-Sent Events (a GET with
    /// `Accept: text/event-stream` on the same path; broadcast, per-user and idle only).
    #[arg(long, value_enum, default_value_t = TransportArg::Websocket)]
    transport: TransportArg,
    /// Name of the system under test, echoed in the report.
    #[arg(long, default_value = "herald")]
    label: String,
    /// WebSocket URL template (ws:// or http://, either works for SSE); {i} = client index, {g} = group index (0 in broadcast, i otherwise).
    #[arg(long, default_value = "ws://127.0.0.1:8000/message/{g}/stream/")]
    url: String,
    /// Clients over all shards.
    #[arg(long, default_value_t = 1000)]
    clients: u64,
    /// This process's share, as k/n (0-based k), for runs over several processes.
    #[arg(long, default_value = "0/1", value_parser = parse_shard)]
    shard: Shard,
    /// Source addresses to spread client sockets over, from 127.0.0.2.
    #[arg(long, default_value_t = 8)]
    sources: usize,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Seconds allowed for one connect + upgrade.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Publish URL template ({g} allowed).
    #[arg(long, default_value = "http://127.0.0.1:8000/api/publish")]
    publish_url: String,
    /// Do not publish; expect --expect-messages per client from another publisher.
    #[arg(long)]
    no_publish: bool,
    /// Body of one message ({g}, {payload}).
    #[arg(long, default_value = r#"{"group":"user.{g}","text":"{payload}"}"#)]
    publish_body: String,
    /// Body wrapping a batch ({items} = comma-joined message bodies).
    #[arg(long, default_value = r#"{"messages":[{items}]}"#)]
    batch_body: String,
    /// Messages per publish request (uses --batch-body when above 1).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Content-Type of publish requests.
    #[arg(long, default_value = "application/json")]
    content_type: String,
    /// Extra publish header, "Name: value" (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Messages to publish.
    #[arg(long, default_value_t = 100)]
    messages: u64,
    /// Messages per second (0 = as fast as the server answers).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Concurrent publisher connections.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    payload_size: usize,
    /// With --no-publish: messages each client should receive.
    #[arg(long, default_value_t = 0)]
    expect_messages: u64,
    /// Seconds between "all connected" and the first publish.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Seconds to wait for stragglers after the last publish.
    #[arg(long, default_value_t = 5.0)]
    drain_timeout: f64,
    /// Seconds idle mode holds the connections.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// Hard limit on the whole run, seconds.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Server process(es) to read RSS and CPU from (comma-separated or repeated); summed.
    #[arg(long = "server-pid", value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// Runtime worker threads of this generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TransportArg {
    Websocket,
    Sse,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Broadcast,
    PerUser,
    Idle,
    ConnectStorm,
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    let (k, n) = s.split_once('/').ok_or("expected k/n")?;
    let index: u64 = k.parse().map_err(|_| "k is not a number")?;
    let count: u64 = n.parse().map_err(|_| "n is not a number")?;
    if count == 0 || index >= count {
        return Err("need 0 <= k < n".into());
    }
    Ok(Shard { index, count })
}

fn seconds(name: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| anyhow::anyhow!("--{name}: {s} is not a duration"))
}

fn config(args: Args) -> anyhow::Result<BenchConfig> {
    let mut headers = Vec::new();
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--header {h:?}: expected \"Name: value\""))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut config = BenchConfig::new("127.0.0.1:8000", args.clients);
    config.label = args.label;
    config.mode = match args.mode {
        ModeArg::Broadcast => Mode::Broadcast,
        ModeArg::PerUser => Mode::PerUser,
        ModeArg::Idle => Mode::Idle,
        ModeArg::ConnectStorm => Mode::ConnectStorm,
    };
    config.transport = match (args.transport, args.mode) {
        (TransportArg::Websocket, _) => Transport::WebSocket,
        (TransportArg::Sse, ModeArg::ConnectStorm) => {
            anyhow::bail!("--transport sse: broadcast, per-user and idle only")
        }
        (TransportArg::Sse, _) => Transport::Sse,
    };
    config.ws_url = args.url;
    config.shard = args.shard;
    config.sources = args.sources;
    config.connect_concurrency = args.connect_concurrency;
    config.connect_timeout = seconds("connect-timeout", args.connect_timeout)?;
    config.publish_url = (!args.no_publish).then_some(args.publish_url);
    config.publish_body = args.publish_body;
    config.batch_body = Some(args.batch_body);
    config.batch = args.batch;
    config.content_type = args.content_type;
    config.publish_headers = headers;
    config.messages = args.messages;
    config.rate = args.rate;
    config.publishers = args.publishers;
    config.payload_size = args.payload_size;
    config.expect_messages = args.expect_messages;
    config.warmup = seconds("warmup", args.warmup)?;
    config.drain_timeout = seconds("drain-timeout", args.drain_timeout)?;
    config.hold = seconds("hold", args.hold)?;
    config.duration = seconds("duration", args.duration)?;
    config.server_pids = args.server_pids;
    Ok(config)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let threads = args.threads.max(1);
    let config = match config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let hard_stop = config.duration + Duration::from_secs(15);
    let result = runtime
        .block_on(async { tokio::time::timeout(hard_stop, herald_bench::run(config)).await });
    // Do not wait for tasks still winding down: the report is what matters.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(Ok(report)) => {
            println!("{report}");
            println!("{}", report.to_json());
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("herald-bench: {e}");
            ExitCode::from(2)
        }
        Err(_) => {
            eprintln!("herald-bench: the run overran its deadline");
            ExitCode::FAILURE
        }
    }
}
