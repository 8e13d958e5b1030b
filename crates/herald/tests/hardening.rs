//! Attacks and operator mistakes against the real `herald serve` binary, one test each, so
//! the first failure does not hide the rest: huge token expiries, request bodies that
//! never finish, descriptor exhaustion, unbounded history, environment values, browser
//! publishes on an open API, and the weak answers to malformed HTTP.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herald::auth::{Claims, sign};
use support::raw::{Ending, RawWs, upgrade_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

const SECRET: &str = "hardening-secret-hardening-secret-0123";

/// A `herald serve` process on a free port, its stderr in a file; killed on drop.
struct Herald {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Herald {
    /// Starts `herald serve` with `config` (TOML) and `env`, optionally under a lowered
    /// descriptor limit (`ulimit -n`, soft and hard).
    fn start(config: &str, env: &[(&str, &str)], open_files: Option<u32>) -> Self {
        Self::start_on("127.0.0.1:0", config, env, open_files)
    }

    fn start_on(listen: &str, config: &str, env: &[(&str, &str)], open_files: Option<u32>) -> Self {
        let dir = std::env::temp_dir().join(format!("herald-hardening-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config_path = dir.join("herald.toml");
        std::fs::write(&config_path, config).expect("write config");
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("log file");
        let bin = support::herald_bin();
        let mut cmd = match open_files {
            Some(n) => {
                let mut cmd = Command::new("bash");
                cmd.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--listen")
            .arg(listen)
            .stderr(Stdio::from(stderr))
            .env("RUST_LOG", "herald=info,warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (child, addr) = support::spawn_serve(cmd);
        let addr = addr.replace("0.0.0.0", "127.0.0.1");
        Self {
            child,
            addr: addr.parse().expect("address"),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Resident memory of the process, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("process status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    /// One value from `/metrics`.
    async fn metric(&self, name: &str) -> u64 {
        let (status, text) = support::http(self.addr, "GET", "/metrics", &[], b"").await;
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} in /metrics"))
    }

    fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.0/8 is all ours).
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    let from: IpAddr = from.parse().expect("source address");
    socket.bind(SocketAddr::new(from, 0)).expect("bind source");
    tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
        .await
        .expect("connect within 10 s")
        .expect("connect")
}

/// Sends `request` on `stream` and reads the answer to its end (≤ 10 s): (status, body).
async fn exchange(mut stream: TcpStream, request: &[u8]) -> (u16, String) {
    stream.write_all(request).await.expect("write");
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response));
    let _ = read.await.expect("an answer within 10 s");
    support::parse_response(&response)
}

/// The `error` code of a JSON error body (panics when the body is not one).
fn error_code(body: &str) -> String {
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON body ({e}): {body:?}"));
    json["error"].as_str().expect("error code").to_string()
}

/// Sends `request` to `herald` and checks the answer: `status` with the JSON error `code`.
async fn assert_refused(herald: &Herald, request: &str, status: u16, code: &str) {
    let stream = connect_from("127.0.0.1", herald.addr).await;
    let (got, body) = exchange(stream, request.as_bytes()).await;
    assert_eq!(got, status, "{body}");
    assert_eq!(error_code(&body), code);
}

async fn healthz_from(from: &str, addr: SocketAddr) -> u16 {
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    exchange(connect_from(from, addr).await, request.as_bytes())
        .await
        .0
}

async fn publish(addr: SocketAddr, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    support::http(addr, "POST", "/api/publish", headers, body.as_bytes()).await
}

// ---------------------------------------------------------------------------------------
// Bug 1: a token with an absurd `exp`.

#[tokio::test]
async fn a_token_with_a_huge_exp_is_refused_without_a_panic() {
    let config = format!(
        "[[routes]]\npath = \"/t/{{user_id}}/\"\ngroups = [\"user.{{user_id}}\"]\nauth = \"token\"\n\
         [auth]\nsecret = \"{SECRET}\"\n"
    );
    let herald = Herald::start(&config, &[("RUST_BACKTRACE", "1")], None);
    for exp in [u64::MAX, 1 << 63, (1 << 62) + 12345] {
        let token = sign(
            SECRET.as_bytes(),
            &Claims {
                sub: "42".into(),
                exp,
                nbf: None,
                groups: None,
            },
        )
        .expect("sign");
        let mut plain =
            support::WsClient::connect(&herald.ws_url(&format!("/t/42/?token={token}")))
                .await
                .expect("the upgrade is accepted, then closed");
        let code = plain
            .closed_within(Duration::from_secs(5))
            .await
            .expect("closed");
        assert_eq!(code, 4501, "exp {exp}");
        let v1 = support::WsClient::connect_with(
            &herald.ws_url(&format!("/t/42/?token={token}")),
            &["herald.v1"],
        )
        .await;
        let mut v1 = v1.expect("v1 upgrade accepted");
        // A herald.v1 connection is authorized once its hello arrives.
        v1.send_text(r#"{"t":"hello","v":1,"streams":{}}"#)
            .await
            .expect("hello");
        assert_eq!(
            v1.closed_within(Duration::from_secs(5))
                .await
                .expect("closed"),
            4501
        );
    }
    assert_eq!(support::get_status(herald.addr, "/healthz").await, 200);
    let log = herald.log();
    assert!(!log.contains("panicked"), "no panic in the log:\n{log}");
}

#[test]
fn herald_token_refuses_an_absurd_ttl() {
    let out = Command::new(support::herald_bin())
        .args([
            "token",
            "--sub",
            "42",
            "--ttl",
            "18446744073709551615s",
            "--secret",
            SECRET,
        ])
        .output()
        .expect("run herald token");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ttl"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let out = Command::new(support::herald_bin())
        .args(["token", "--sub", "42", "--ttl", "30d", "--secret", SECRET])
        .output()
        .expect("run herald token");
    assert!(out.status.success(), "a month is fine");
}

// ---------------------------------------------------------------------------------------
// Bug 2: request bodies that never finish, and descriptor exhaustion.

/// Opens a publish request announcing `length` bytes and sends one.
async fn stalled_body(from: &str, addr: SocketAddr, length: usize) -> TcpStream {
    let mut stream = connect_from(from, addr).await;
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream
}

/// Waits (≤ `deadline`) until the server ends `stream`; returns the answer's status
/// (0 when it closed without one).
async fn ended_by_server(mut stream: TcpStream, deadline: Duration) -> Option<u16> {
    let mut response = Vec::new();
    let read = tokio::time::timeout(deadline, stream.read_to_end(&mut response)).await;
    match read {
        Err(_) => None,
        Ok(_) => Some(
            String::from_utf8_lossy(&response)
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        ),
    }
}

#[tokio::test]
async fn unfinished_bodies_are_closed_within_the_body_timeout_while_others_are_served() {
    let herald = Herald::start(
        "[limits]\nbody_timeout = \"3s\"\nmax_http_connections_per_ip = 5000\n",
        &[],
        None,
    );
    let mut client = support::WsClient::connect(&herald.ws_url("/message/1/stream/"))
        .await
        .expect("connect");
    let started = Instant::now();
    let mut stalled = Vec::new();
    for i in 0..2000 {
        let from = format!("127.0.0.{}", 2 + i % 4);
        stalled.push(stalled_body(&from, herald.addr, 1_000_000).await);
    }
    // While they hang: /healthz answers and the connected client keeps receiving.
    assert_eq!(healthz_from("127.0.0.9", herald.addr).await, 200);
    let (status, _) = publish(
        herald.addr,
        r#"{"group":"user.1","text":"still here"}"#,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let text = tokio::time::timeout(Duration::from_secs(5), client.recv_text())
        .await
        .expect("delivered within 5 s")
        .expect("text");
    assert_eq!(text, "still here");
    // Every stalled request is ended by the server, with a 408, within the body timeout
    // (plus the time it took to open them all and some slack).
    let deadline = Duration::from_secs(3) + started.elapsed() + Duration::from_secs(5);
    let mut readers = tokio::task::JoinSet::new();
    for stream in stalled {
        readers.spawn(ended_by_server(stream, deadline));
    }
    let endings: Vec<Option<u16>> = readers.join_all().await;
    let still_open = endings.iter().filter(|e| e.is_none()).count();
    assert_eq!(
        still_open, 0,
        "stalled requests left open past the body timeout"
    );
    let with_408 = endings.iter().filter(|e| **e == Some(408)).count();
    assert_eq!(with_408, 2000, "each is told why: {endings:?}");
    assert_eq!(herald.metric("herald_body_timeouts_total").await, 2000);
    let log = herald.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("request bodies too slow"))
        .count();
    assert!(
        (1..=3).contains(&lines),
        "logged once per burst, not per request: {lines}"
    );
}

#[tokio::test]
async fn a_body_dripping_below_the_minimum_rate_is_cut_off_before_the_timeout() {
    let herald = Herald::start("[limits]\nbody_timeout = \"60s\"\n", &[], None);
    let stream = stalled_body("127.0.0.1", herald.addr, 10_000).await;
    let (reader, mut writer) = stream.into_split();
    // One byte every 100 ms: 10 bytes/s, far below the default 1024 bytes/s. The answer
    // is read while dripping (a write after the server closed would reset the socket).
    let answer = tokio::spawn(async move {
        let mut reader = reader;
        let mut response = Vec::new();
        let _ = reader.read_to_end(&mut response).await;
        response
    });
    let drip = async {
        while !answer.is_finished() {
            let _ = writer.write_all(b" ").await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), drip)
        .await
        .expect("cut off long before the 60 s body timeout");
    let response = answer.await.expect("reader");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert_eq!(
        error_code(text.split_once("\r\n\r\n").map_or("", |(_, b)| b)),
        "body_timeout"
    );
}

#[tokio::test]
async fn stalled_requests_from_one_address_leave_healthz_and_clients_working() {
    // Bodies that may take all the time they want, so the stalled requests stay.
    let herald = Herald::start(
        "[limits]\nbody_timeout = \"1h\"\nbody_min_rate = 0\n",
        &[],
        Some(1024),
    );
    let mut client = support::WsClient::connect(&herald.ws_url("/message/1/stream/"))
        .await
        .expect("connect");
    // Past the per-address cap (256), connections are answered 429 and closed at once;
    // the others hang, holding their descriptors.
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..1100 {
        let mut stream = stalled_body("127.0.0.1", herald.addr, 1_000_000).await;
        let mut response = Vec::new();
        let wait = Duration::from_millis(if held.len() < 256 { 30 } else { 2000 });
        match tokio::time::timeout(wait, stream.read_to_end(&mut response)).await {
            Err(_) if response.is_empty() => held.push(stream),
            _ => {
                let text = String::from_utf8_lossy(&response);
                assert!(text.starts_with("HTTP/1.1 429 "), "connection {i}: {text}");
                refused += 1;
            }
        }
    }
    assert_eq!(held.len(), 256, "limits.max_http_connections_per_ip");
    assert_eq!(refused, 1100 - 256);
    assert_eq!(healthz_from("127.0.0.2", herald.addr).await, 200);
    let (status, _) = support::http(herald.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(
        status, 429,
        "the flooding address itself is told to back off"
    );
    let body = r#"{"group":"user.1","text":"unharmed"}"#;
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        herald.addr,
        body.len()
    );
    let (status, body) = exchange(
        connect_from("127.0.0.3", herald.addr).await,
        request.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let text = tokio::time::timeout(Duration::from_secs(5), client.recv_text())
        .await
        .expect("delivered within 5 s")
        .expect("text");
    assert_eq!(text, "unharmed");
    assert!(!herald.log().contains("Too many open files"));
}

#[tokio::test]
async fn running_out_of_descriptors_is_answered_and_survived() {
    // WebSockets are not capped below the descriptor limit (limits.max_connections is
    // 100000 by default), so enough of them exhaust a limit of 1024.
    let herald = Herald::start("", &[], Some(1024));
    let mut first = support::WsClient::connect(&herald.ws_url("/message/1/stream/"))
        .await
        .expect("connect");
    let mut sockets = Vec::new();
    let mut overloaded = None;
    for i in 0..1100 {
        let from = format!("127.0.1.{}", 1 + i % 8);
        let stream = connect_from(&from, herald.addr).await;
        let mut ws = RawWs::new(stream);
        let request = upgrade_request(&herald.addr.to_string(), "/message/2/stream/", &[]);
        let (status, _) = ws.request(request.as_bytes()).await;
        match status {
            101 => sockets.push(ws),
            // Told 503, or closed before the request was read (then no answer fits).
            503 | 0 => {
                overloaded = Some(i);
                break;
            }
            other => panic!("connection {i}: unexpected status {other}"),
        }
    }
    let at = overloaded.expect("a connection past the descriptor limit is answered 503");
    assert!(
        at > 900,
        "the limit was reached only near 1024 descriptors: {at}"
    );
    // Free some descriptors: the server serves again, and the first client was never cut.
    sockets.truncate(sockets.len() - 100);
    let until = Instant::now() + Duration::from_secs(10);
    while support::get_status(herald.addr, "/healthz").await != 200 {
        assert!(
            Instant::now() < until,
            "healthz answers once descriptors are free"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = publish(herald.addr, r#"{"group":"user.1","text":"survived"}"#, &[]).await;
    assert_eq!(status, 200);
    let text = tokio::time::timeout(Duration::from_secs(5), first.recv_text())
        .await
        .expect("delivered within 5 s")
        .expect("text");
    assert_eq!(text, "survived");
    assert!(herald.metric("herald_accept_no_descriptors_total").await >= 1);
    let mut ws = sockets.pop().expect("a held socket");
    assert_eq!(
        ws.close_code(Duration::from_millis(200)).await,
        Ending::Timeout,
        "still open"
    );
}

// ---------------------------------------------------------------------------------------
// Bug 3: history bounded by count only.

/// The documented bound on a default server's resident memory, whatever is published.
const DEFAULT_RSS_BOUND: u64 = 256 << 20;

#[tokio::test]
async fn large_messages_to_one_group_keep_history_within_its_byte_bound() {
    let herald = Herald::start("", &[], None);
    let payload = "x".repeat(1_000_000);
    let body = format!(r#"{{"group":"nobody.joined","text":"{payload}"}}"#);
    let body = body.as_str();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let addr = herald.addr;
        let body = body.to_string();
        tasks.push(tokio::spawn(async move {
            for _ in 0..250 {
                let (status, answer) = publish(addr, &body, &[]).await;
                assert_eq!(status, 200, "{answer}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("publisher");
    }
    let bytes = herald.metric("herald_history_bytes").await;
    assert!(
        bytes <= 4 << 20,
        "history.max_bytes (4 MiB) per group: {bytes}"
    );
    assert!(bytes >= 1_000_000, "the latest messages are kept: {bytes}");
    assert_eq!(herald.metric("herald_history_groups").await, 1);
    let rss = herald.rss();
    eprintln!("RSS after the publishes: {} MB", rss >> 20);
    assert!(rss < DEFAULT_RSS_BOUND, "RSS {} MB", rss >> 20);
}

#[tokio::test]
async fn many_groups_keep_history_within_the_node_bounds() {
    let herald = Herald::start("", &[], None);
    for chunk in 0..200 {
        let messages: Vec<String> = (0..1000)
            .map(|i| format!(r#"{{"group":"g.{}","text":"x"}}"#, chunk * 1000 + i))
            .collect();
        let body = format!(r#"{{"messages":[{}]}}"#, messages.join(","));
        let (status, answer) = publish(herald.addr, &body, &[]).await;
        assert_eq!(status, 200, "{answer}");
    }
    let groups = herald.metric("herald_history_groups").await;
    assert_eq!(groups, 100_000, "history.max_groups");
    assert!(herald.metric("herald_history_bytes").await <= 64 << 20);
    assert_eq!(herald.metric("herald_history_evicted_total").await, 100_000);
    let rss = herald.rss();
    eprintln!("RSS after the publishes: {} MB", rss >> 20);
    assert!(rss < DEFAULT_RSS_BOUND, "RSS {} MB", rss >> 20);
}

// ---------------------------------------------------------------------------------------
// Bug 4: environment values.

#[tokio::test]
async fn an_api_key_of_digits_from_the_environment_works() {
    let herald = Herald::start("", &[("HERALD_API_KEY", "12345678")], None);
    let body = r#"{"group":"user.1","text":"x"}"#;
    assert_eq!(publish(herald.addr, body, &[]).await.0, 401);
    let (status, answer) =
        publish(herald.addr, body, &[("Authorization", "Bearer 12345678")]).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn list_values_from_the_environment_are_comma_separated() {
    let herald = Herald::start(
        "",
        &[("HERALD_API_ORIGINS", "https://a.example, https://b.example")],
        None,
    );
    for origin in ["https://a.example", "https://b.example"] {
        let (status, answer) = publish(
            herald.addr,
            r#"{"group":"user.1","text":"x"}"#,
            &[("Origin", origin)],
        )
        .await;
        assert_eq!(status, 200, "{origin}: {answer}");
    }
}

// ---------------------------------------------------------------------------------------
// Bug 5: the open publish API driven by a web page.

#[tokio::test]
async fn a_browser_publish_without_a_key_is_refused() {
    let herald = Herald::start("", &[], None);
    let body = r#"{"group":"user.1","text":"from a page"}"#;
    let (status, answer) = publish(
        herald.addr,
        body,
        &[
            ("Origin", "https://evil.example"),
            ("Content-Type", "text/plain"),
        ],
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(error_code(&answer), "origin_refused");
    assert_eq!(
        publish(herald.addr, body, &[]).await.0,
        200,
        "servers send no Origin"
    );
    assert_eq!(
        herald.metric("herald_publish_origin_refused_total").await,
        1
    );
}

#[tokio::test]
async fn an_open_api_beyond_loopback_is_warned_about() {
    let herald = Herald::start_on("0.0.0.0:0", "", &[], None);
    assert_eq!(support::get_status(herald.addr, "/healthz").await, 200);
    let log = herald.log();
    assert!(log.contains("the publish API has no key"), "{log}");
    let quiet = Herald::start("", &[], None);
    assert_eq!(support::get_status(quiet.addr, "/healthz").await, 200);
    assert!(!quiet.log().contains("the publish API has no key"));
}

// ---------------------------------------------------------------------------------------
// Weak answers.

#[tokio::test]
async fn an_http10_upgrade_is_refused_with_json() {
    let herald = Herald::start("", &[], None);
    let request = upgrade_request(&herald.addr.to_string(), "/message/1/stream/", &[])
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    assert_refused(&herald, &request, 400, "bad_upgrade").await;
}

#[tokio::test]
async fn too_many_headers_answer_431_with_json() {
    let herald = Herald::start("", &[], None);
    let headers: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
    assert_refused(&herald, &request, 431, "headers_too_large").await;
}

#[tokio::test]
async fn a_url_over_64_kib_answers_414_with_json() {
    let herald = Herald::start("", &[], None);
    let request = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    assert_refused(&herald, &request, 414, "uri_too_long").await;
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let herald = Herald::start("[api]\nkey = \"k-123\"\n", &[], None);
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth = format!("{scheme} k-123");
        let (status, answer) = publish(
            herald.addr,
            r#"{"group":"user.1","text":"x"}"#,
            &[("Authorization", &auth)],
        )
        .await;
        assert_eq!(status, 200, "{scheme}: {answer}");
    }
    let (status, _) = publish(
        herald.addr,
        r#"{"group":"user.1","text":"x"}"#,
        &[("Authorization", "Basic k-123")],
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_request_without_host_is_refused() {
    let herald = Herald::start("", &[], None);
    let request = upgrade_request("x", "/message/1/stream/", &[]).replacen("Host: x\r\n", "", 1);
    assert_refused(&herald, &request, 400, "bad_host").await;
}

#[tokio::test]
async fn a_request_with_two_hosts_is_refused() {
    let herald = Herald::start("", &[], None);
    let request = upgrade_request("x", "/message/1/stream/", &[("Host", "y")]);
    assert_refused(&herald, &request, 400, "bad_host").await;
}

#[tokio::test]
async fn logs_written_to_a_file_carry_no_colour_codes() {
    let herald = Herald::start("", &[], None);
    assert_eq!(support::get_status(herald.addr, "/healthz").await, 200);
    let log = herald.log();
    assert!(
        log.contains("open files limit"),
        "the startup lines are there: {log}"
    );
    assert!(!log.contains('\u{1b}'), "no escape codes: {log:?}");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let herald = Herald::start("[log]\nformat = \"json\"\n", &[], None);
    assert_eq!(support::get_status(herald.addr, "/healthz").await, 200);
    let log = herald.log();
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty());
    for line in lines {
        let json: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            json["level"].is_string() && json["fields"].is_object(),
            "{line}"
        );
    }
}
