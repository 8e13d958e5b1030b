//! CI smoke run: a real herald in this process, 50 clients in broadcast mode for a few
//! seconds through herald-bench's library entry point. Asserts delivery and the report's
//! shape, never timing.

use std::time::Duration;

use herald_bench::{BenchConfig, Mode};
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_smoke_run_loses_nothing() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(herald::run(
        listener,
        herald::Config::default(),
        async move {
            let _ = stopped.await;
        },
    ));

    let mut config = BenchConfig::new(&addr.to_string(), 50);
    config.mode = Mode::Broadcast;
    config.messages = 60;
    config.rate = 30.0;
    config.batch = 3;
    config.publishers = 2;
    config.duration = Duration::from_secs(20);
    config.server_pids = vec![std::process::id()];
    let report = herald_bench::run(config).await.expect("bench runs");

    assert_eq!(report.connected, 50, "{report}");
    assert_eq!(report.connect_failures, 0, "{report}");
    assert_eq!(report.published, 60, "{report}");
    assert_eq!(report.publish_errors, 0, "{report}");
    assert_eq!(report.expected, 50 * 60, "{report}");
    assert_eq!(report.received, report.expected, "{report}");
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.unstamped, 0, "{report}");
    assert_eq!(report.disconnects, 0, "{report}");
    assert!(!report.timed_out, "{report}");
    assert_eq!(report.latency_us.count, 50 * 60);
    assert!(report.latency_us.p50 <= report.latency_us.p99);
    assert!(report.latency_us.p99 <= report.latency_us.max);

    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("JSON report");
    assert_eq!(json["mode"], "broadcast");
    assert_eq!(json["received"], 3000);
    assert_eq!(json["lost"], 0);
    assert!(json["deliveries_per_sec"].as_f64().is_some_and(|d| d > 0.0));
    assert!(json["latency_us"]["p99"].as_f64().is_some());
    assert!(json["server"]["cpu_secs_per_million"].as_f64().is_some());

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("server stops")
        .expect("server task")
        .expect("server ran");
}
