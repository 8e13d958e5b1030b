//! The Grafana dashboard in `deploy/grafana/herald.json` only queries metrics that a
//! running herald exports — checked against a real node on the Redis layer with the
//! Django bridge on, after some traffic.

mod support;

use std::time::Duration;

use herald_testkit::redis::RedisProcess;
use serde_json::Value;

/// Every `herald_*` metric name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("herald_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn dashboard() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/herald.json"
    );
    let text = std::fs::read_to_string(path).expect("deploy/grafana/herald.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// (panel title, expression) of every query in the dashboard.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut out = Vec::new();
    for panel in panels {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().expect("every panel has a title");
        let targets = panel["targets"]
            .as_array()
            .expect("every panel has targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            out.push((title.to_string(), expr.to_string()));
        }
    }
    out
}

#[test]
fn the_dashboard_is_importable() {
    let d = dashboard();
    assert!(d["uid"].is_string() && d["title"].is_string());
    assert!(d["schemaVersion"].as_u64().is_some());
    let panels = d["panels"].as_array().expect("panels");
    let mut ids: Vec<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for panel in panels {
        let grid = &panel["gridPos"];
        for k in ["x", "y", "w", "h"] {
            assert!(
                grid[k].as_u64().is_some(),
                "{}: gridPos.{k}",
                panel["title"]
            );
        }
    }
    let names: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for (title, expr) in queries(&d) {
        for var in ["$job", "$instance"] {
            if expr.contains(var) {
                assert!(names.contains(&&var[1..]), "{title}: {var} is defined");
            }
        }
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let redis = RedisProcess::start();
    let mut config = support::redis_config(&redis.url(), &format!("g{}", fastrand::u32(..)));
    config.django.enabled = true;
    config.django.hosts = vec![redis.url()];
    let server = support::TestServer::with_config(config).await;
    // Some traffic, so that the histograms have observations.
    let mut client = server.connect_user("1").await;
    let (status, _) = server
        .publish(r#"{"group":"user.1","text":"for the dashboard"}"#)
        .await;
    assert_eq!(status, 200);
    let text = tokio::time::timeout(Duration::from_secs(5), client.recv_text())
        .await
        .expect("delivered within 5 s")
        .expect("text");
    assert_eq!(text, "for the dashboard");

    let (status, metrics) = support::http(server.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    let exported: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let d = dashboard();
    let mut checked = 0;
    for (title, expr) in queries(&d) {
        for name in metric_names(&expr) {
            assert!(
                exported.contains(&name.as_str()),
                "panel {title:?} queries {name}, which /metrics does not export"
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "the dashboard queries {checked} metrics");
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics"))
    };
    assert!(sample("herald_delivery_seconds_count") >= 1.0);
    assert!(sample("herald_publish_seconds_count") >= 1.0);
    server.stop().await;
}
