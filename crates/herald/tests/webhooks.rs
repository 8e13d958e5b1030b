//! `group.occupied` / `group.vacated` webhooks (DESIGN.md §12) on a real redis-server,
//! with herald nodes in this process and as binaries, and a real HTTP receiver.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use herald::Config;
use herald_testkit::redis::{RedisProcess, unique_prefix};
use serde_json::Value;
use support::{TestServer, WsClient, http, redis_config};
use tokio::time::Instant;

const SECRET: &str = "webhook-secret-0123456789";
const REFRESH: Duration = Duration::from_millis(200);
const VACATED_DELAY: Duration = Duration::from_millis(500);

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    at: Instant,
    body: Value,
    signature: String,
    raw: Bytes,
}

/// A real HTTP server recording every request; answers 503 while `down`.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let signature = headers
        .get("x-herald-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let parsed = serde_json::from_slice(&body).unwrap_or(Value::Null);
    r.got.lock().unwrap().push(Received {
        at: Instant::now(),
        body: parsed,
        signature,
        raw: body,
    });
    if r.down.load(std::sync::atomic::Ordering::SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    }
}

impl Receiver {
    /// Serves on a free port; returns the receiver and its URL. The server task ends
    /// with the test's runtime.
    async fn start() -> (Self, String) {
        let receiver = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(receiver.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (receiver, url)
    }

    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The events answered 2xx-wise are unknown here; this lists every request's event.
    fn events(&self) -> Vec<(String, String)> {
        self.all()
            .iter()
            .map(|r| {
                (
                    r.body["event"].as_str().unwrap_or("").to_owned(),
                    r.body["group"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    /// Waits until `n` requests arrived, failing after `deadline`.
    async fn wait_for(&self, n: usize, deadline: Duration) -> Vec<Received> {
        let until = Instant::now() + deadline;
        loop {
            let all = self.all();
            if all.len() >= n {
                return all;
            }
            assert!(
                Instant::now() < until,
                "{} webhook requests within {deadline:?}, wanted {n}: {:?}",
                all.len(),
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Checks `t=<unix>,v1=<hex>` against the body, with a fresh timestamp.
fn assert_signed(r: &Received) {
    let (t, v1) = r
        .signature
        .split_once(",v1=")
        .and_then(|(t, v1)| Some((t.strip_prefix("t=")?.parse::<u64>().ok()?, v1)))
        .unwrap_or_else(|| panic!("bad signature header {:?}", r.signature));
    assert_eq!(v1, herald::webhooks::sign(SECRET.as_bytes(), t, &r.raw));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(t) < 60, "timestamp {t} vs now {now}");
}

fn with_webhooks(mut config: Config, url: &str) -> Config {
    config.presence.refresh = REFRESH;
    config.webhooks.url = Some(url.to_owned());
    config.webhooks.secret = Some(SECRET.to_owned());
    config.webhooks.vacated_delay = VACATED_DELAY;
    config.webhooks.timeout = Duration::from_secs(1);
    config
}

fn event(name: &str) -> (String, String) {
    (name.to_owned(), "user.42".to_owned())
}

#[tokio::test]
async fn two_tabs_on_two_nodes_give_one_occupied_one_vacated_and_a_reload_gives_nothing() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let (receiver, url) = Receiver::start().await;
    let a = TestServer::with_config(with_webhooks(redis_config(&redis.url(), &prefix), &url)).await;
    let b = TestServer::with_config(with_webhooks(redis_config(&redis.url(), &prefix), &url)).await;
    let tab_a = a.connect_user("42").await;
    let first = receiver.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(receiver.events(), vec![event("group.occupied")]);
    assert_signed(&first[0]);
    let body = &first[0].body;
    assert!(
        body["id"].as_str().is_some_and(|id| id.len() == 32),
        "{body}"
    );
    assert!(
        body["node"].as_str().is_some_and(|n| !n.is_empty()),
        "{body}"
    );
    assert!(body["time"].as_f64().is_some_and(|t| t > 1.0e9), "{body}");
    // The second tab, on the other node: the group was occupied already.
    let tab_b = b.connect_user("42").await;
    // A reload: both tabs close, one comes back within the delay.
    tab_a.close().await.expect("close");
    tab_b.close().await.expect("close");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reloaded = b.connect_user("42").await;
    tokio::time::sleep(2 * VACATED_DELAY + 2 * REFRESH).await;
    assert_eq!(
        receiver.events(),
        vec![event("group.occupied")],
        "a second tab and a reload send nothing"
    );
    // The last tab closes: one vacated, no sooner than the delay.
    let closed = Instant::now();
    reloaded.close().await.expect("close");
    let all = receiver
        .wait_for(2, VACATED_DELAY + 3 * REFRESH + Duration::from_secs(2))
        .await;
    assert!(
        all[1].at.duration_since(closed) >= VACATED_DELAY,
        "vacated after {:?}",
        all[1].at.duration_since(closed)
    );
    assert_signed(&all[1]);
    tokio::time::sleep(VACATED_DELAY + 2 * REFRESH).await;
    assert_eq!(
        receiver.events(),
        vec![event("group.occupied"), event("group.vacated")],
        "once per transition, not once per node"
    );
    assert_ne!(all[0].body["id"], all[1].body["id"]);
    // The first tab again: one occupied, whichever node.
    let again = a.connect_user("42").await;
    let _also = b.connect_user("42").await;
    receiver.wait_for(3, Duration::from_secs(15)).await;
    tokio::time::sleep(2 * REFRESH).await;
    assert_eq!(receiver.events().len(), 3, "{:?}", receiver.events());
    drop(again);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_first_connection_while_redis_hangs_is_announced_once_redis_answers() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let (receiver, url) = Receiver::start().await;
    let server =
        TestServer::with_config(with_webhooks(redis_config(&redis.url(), &prefix), &url)).await;
    // Redis hangs: the first connection's `occupy` fails (command timeout)…
    redis.pause();
    let _tab = server.connect_user("42").await;
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, metrics) = http(server.addr, "GET", "/metrics", &[], b"").await;
        let failures = metrics
            .lines()
            .find_map(|l| l.strip_prefix("herald_presence_failures_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if failures > 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "no presence failure while redis hung"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(receiver.all().is_empty());
    // …and is retried at a later refresh once Redis answers: one occupied, not none.
    redis.resume();
    receiver.wait_for(1, Duration::from_secs(15)).await;
    tokio::time::sleep(4 * REFRESH).await;
    assert_eq!(receiver.events(), vec![event("group.occupied")]);
}

#[tokio::test]
async fn a_killed_node_holding_the_last_connection_is_vacated_within_the_bound_once() {
    let redis = RedisProcess::start();
    let prefix = unique_prefix();
    let (receiver, url) = Receiver::start().await;
    let a = TestServer::with_config(with_webhooks(redis_config(&redis.url(), &prefix), &url)).await;
    let dir = std::env::temp_dir().join(format!("herald-webhooks-{}", unique_prefix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config_path = dir.join("herald.toml");
    std::fs::write(
        &config_path,
        format!(
            "[layer]\nkind = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\n\n\
             [presence]\nrefresh = \"200ms\"\n\n\
             [webhooks]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nvacated_delay = \"500ms\"\n",
            redis.url()
        ),
    )
    .expect("config");
    let spawn_b = || {
        let mut cmd = std::process::Command::new(support::herald_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .stderr(std::process::Stdio::null());
        support::spawn_serve(cmd)
    };
    let (mut b, addr) = spawn_b();
    let _tab = WsClient::connect(&format!("ws://{addr}/message/42/stream/"))
        .await
        .expect("connect to b");
    receiver.wait_for(1, Duration::from_secs(15)).await;
    b.kill().expect("SIGKILL");
    let _ = b.wait();
    // B's entry expires within 2 x refresh; A's next sweep starts the empty clock, and
    // the one after the delay vacates: 2 x refresh + delay + 2 x refresh at most.
    let bound = 4 * REFRESH + VACATED_DELAY;
    receiver
        .wait_for(2, bound + Duration::from_millis(500))
        .await;
    assert_eq!(
        receiver.events(),
        vec![event("group.occupied"), event("group.vacated")]
    );
    // B comes back (no connection): nothing more.
    let (mut b, _) = spawn_b();
    tokio::time::sleep(VACATED_DELAY + 4 * REFRESH).await;
    assert_eq!(receiver.events().len(), 2, "{:?}", receiver.events());
    let _ = b.kill();
    let _ = b.wait();
    let _ = std::fs::remove_dir_all(&dir);
    a.stop().await;
}

#[tokio::test]
async fn a_receiver_down_for_a_while_gets_the_event_when_it_is_back() {
    let (receiver, url) = Receiver::start().await;
    receiver
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let server = TestServer::with_config(with_webhooks(Config::default(), &url)).await;
    let _tab = server.connect_user("42").await;
    // The receiver stays down for 20 s from the first attempt (the scenario's outage,
    // not a wait for a state): herald keeps retrying with backoff all along…
    let first = receiver.wait_for(1, Duration::from_secs(15)).await;
    tokio::time::sleep_until(first[0].at + Duration::from_secs(20)).await;
    let attempts_while_down = receiver.all().len();
    assert!(
        attempts_while_down >= 5,
        "retried while down: {attempts_while_down} attempts"
    );
    receiver
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    // …then the one it takes, the same event each time.
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, metrics) = http(server.addr, "GET", "/metrics", &[], b"").await;
        if metrics
            .lines()
            .any(|l| l == "herald_webhooks_delivered_total 1")
        {
            assert!(
                metrics
                    .lines()
                    .any(|l| l.starts_with("herald_webhooks_failed_attempts_total ")
                        && l != "herald_webhooks_failed_attempts_total 0")
            );
            break;
        }
        assert!(Instant::now() < until, "not delivered once back up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = receiver.all();
    assert!(all.len() >= 4);
    assert!(
        all.iter().all(|r| r.body["id"] == all[0].body["id"]),
        "one event, retried"
    );
    all.iter().for_each(assert_signed);
    server.stop().await;
}

#[tokio::test]
async fn a_receiver_down_past_max_attempts_is_a_counted_give_up_and_nothing_blocks() {
    // A port nobody listens on: every attempt is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", closed.local_addr().expect("addr"));
    drop(closed);
    let mut config = with_webhooks(Config::default(), &url);
    config.webhooks.max_attempts = 3;
    let server = TestServer::with_config(config).await;
    let tab = server.connect_user("42").await;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = http(server.addr, "GET", "/metrics", &[], b"").await;
        if metrics
            .lines()
            .any(|l| l == "herald_webhooks_given_up_total 1")
        {
            assert!(
                metrics
                    .lines()
                    .any(|l| l == "herald_webhooks_failed_attempts_total 3"),
                "three attempts"
            );
            break;
        }
        assert!(Instant::now() < until, "no give-up counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Connections and publishing never waited on it.
    let mut other = server.connect_user("7").await;
    let (status, _) = server.publish(r#"{"group":"user.7","text":"hi"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(other.recv_text().await.expect("message"), "hi");
    drop(tab);
    server.stop().await;
}
