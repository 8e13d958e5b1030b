//! The connect hook (`auth = "hook"`, DESIGN.md §11) against a real server and a real
//! HTTP hook written here: a TCP listener answering canned responses and counting the
//! requests it receives. One test per answer, per hostile answer and per fault.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::Config;
use herald::config::AuthMode;
use serde_json::{Value, json};
use support::raw::{Ending, RawWs, TEXT};
use support::{TestServer, eventually, http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(5);
const COOKIE_42: &str = "sessionid=alice-42";

/// What the hook answers one request.
#[derive(Clone)]
enum Answer {
    /// A complete response with this status and JSON (or any) body.
    Body(u16, String),
    /// 200 with a 10 MB body; `declared` sends its Content-Length up front.
    Huge { declared: bool },
    /// 200 whose body arrives one byte every 200 ms for 30 s.
    Drip,
    /// The inner answer after a pause (so concurrent asks overlap).
    After(Duration, Box<Answer>),
}

fn allow(body: Value) -> Answer {
    Answer::Body(200, body.to_string())
}

type Behaviour = Arc<dyn Fn(&Value) -> Answer + Send + Sync>;

/// A real HTTP connect hook on a free port.
struct Hook {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    asks: Arc<Mutex<Vec<Value>>>,
    /// Request heads, lowercased.
    heads: Arc<Mutex<Vec<String>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    task: Option<JoinHandle<()>>,
}

impl Hook {
    async fn start(behaviour: impl Fn(&Value) -> Answer + Send + Sync + 'static) -> Self {
        let mut hook = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            calls: Arc::default(),
            asks: Arc::default(),
            heads: Arc::default(),
            behaviour: Arc::new(Mutex::new(Arc::new(behaviour))),
            task: None,
        };
        hook.listen().await;
        hook
    }

    /// Binds `self.addr` (port 0 the first time, the same port after `stop`).
    async fn listen(&mut self) {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(self.addr).expect("bind hook");
        let listener = socket.listen(1024).expect("listen");
        self.addr = listener.local_addr().expect("addr");
        let (calls, asks, behaviour, heads) = (
            self.calls.clone(),
            self.asks.clone(),
            self.behaviour.clone(),
            self.heads.clone(),
        );
        self.task = Some(tokio::spawn(async move {
            // Owns every request task: aborting the accept task ends them all.
            let mut requests = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (calls, asks, behaviour, heads) = (
                    calls.clone(),
                    asks.clone(),
                    behaviour.clone(),
                    heads.clone(),
                );
                requests.spawn(serve_one(stream, calls, asks, behaviour, heads));
                while requests.try_join_next().is_some() {}
            }
        }));
    }

    /// Closes the listener: the hook is unreachable until `restart`.
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restart(&mut self) {
        self.listen().await;
    }

    fn answer(&self, behaviour: impl Fn(&Value) -> Answer + Send + Sync + 'static) {
        *self.behaviour.lock().expect("lock") = Arc::new(behaviour);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn url(&self) -> String {
        format!("http://{}/herald/connect/", self.addr)
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn serve_one(
    mut stream: TcpStream,
    calls: Arc<AtomicUsize>,
    asks: Arc<Mutex<Vec<Value>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    heads: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, length) = loop {
        let Ok(n) = stream.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            heads.lock().expect("lock").push(head.clone());
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let ask: Value =
        serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
    calls.fetch_add(1, Ordering::SeqCst);
    let behaviour = behaviour.lock().expect("lock").clone();
    let answer = behaviour(&ask);
    asks.lock().expect("lock").push(ask);
    respond(&mut stream, answer).await;
}

async fn respond(stream: &mut TcpStream, mut answer: Answer) {
    while let Answer::After(pause, inner) = answer {
        tokio::time::sleep(pause).await;
        answer = *inner;
    }
    match answer {
        Answer::Body(status, body) => {
            let response = format!(
                "HTTP/1.1 {status} Hook\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        }
        Answer::Huge { declared } => {
            let size = 10 << 20;
            let head = if declared {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n")
            } else {
                "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_string()
            };
            let _ = stream.write_all(head.as_bytes()).await;
            let block = vec![b' '; 64 * 1024];
            for _ in 0..size / block.len() {
                // herald stops reading: the write fails and this answer ends.
                if stream.write_all(&block).await.is_err() {
                    return;
                }
            }
        }
        Answer::Drip => {
            let body = br#"{"allow": true}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len() + 150
            );
            let _ = stream.write_all(head.as_bytes()).await;
            for byte in body.iter().chain(std::iter::repeat(&b' ')).take(150) {
                if stream.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Answer::After(..) => {}
    }
}

/// The seed's route behind the hook, with `team.*` as extra groups.
fn hook_config(hook: &Hook) -> Config {
    let mut config = Config::default();
    config.routes[0].auth = AuthMode::Hook;
    config.routes[0].hook_groups = vec!["team.*".into()];
    config.hook.url = Some(hook.url());
    config.hook.timeout = Duration::from_millis(800);
    config
}

/// Allows user 42's cookie on user 42's stream, as the Django view does.
fn django_like(ask: &Value) -> Answer {
    let cookie = ask["headers"]["cookie"].as_str().unwrap_or("");
    let user = ask["params"]["user_id"].as_str().unwrap_or("");
    match cookie.strip_prefix("sessionid=alice-") {
        None => Answer::Body(401, String::new()),
        Some(id) if id == user => allow(json!({"allow": true, "sub": id})),
        Some(_) => Answer::Body(403, String::new()),
    }
}

async fn upgrade(server: &TestServer, user: &str, cookie: &str) -> RawWs<TcpStream> {
    let mut ws = RawWs::new(TcpStream::connect(server.addr).await.expect("connect"));
    let headers: Vec<(&str, &str)> = if cookie.is_empty() {
        vec![("Origin", "http://app.test")]
    } else {
        vec![("Cookie", cookie), ("Origin", "http://app.test")]
    };
    ws.upgrade(&format!("/message/{user}/stream/"), &headers)
        .await;
    ws
}

/// Opens user `user`'s stream with `cookie` and returns how the server closes it.
async fn close_code(server: &TestServer, user: &str, cookie: &str) -> Ending {
    upgrade(server, user, cookie)
        .await
        .close_code(DEADLINE)
        .await
}

async fn publish(server: &TestServer, group: &str, text: &str) {
    let body = json!({"group": group, "text": text}).to_string();
    let (status, answer) = server.publish(&body).await;
    assert_eq!(status, 200, "{answer}");
}

/// Checks the next text frame is `text`.
async fn assert_next_text(ws: &mut RawWs<TcpStream>, text: &str) {
    let until = Instant::now() + DEADLINE;
    loop {
        match ws.next_frame(until).await {
            Ok(frame) if frame.opcode == TEXT => {
                assert_eq!(String::from_utf8_lossy(&frame.payload), text);
                return;
            }
            Ok(_) => continue,
            Err(ending) => panic!("expected {text:?}, got {ending:?}"),
        }
    }
}

async fn metrics(server: &TestServer) -> String {
    http(server.addr, "GET", "/metrics", &[], b"").await.1
}

fn metric_line(text: &str, prefix: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn allowed_connection_receives_and_the_hook_sees_only_forwarded_headers() {
    let hook = Hook::start(django_like).await;
    let server = TestServer::with_config(hook_config(&hook)).await;
    let mut ws = RawWs::new(TcpStream::connect(server.addr).await.expect("connect"));
    ws.upgrade(
        "/message/42/stream/",
        &[
            ("Cookie", COOKIE_42),
            ("X-Secret", "not-for-the-hook"),
            ("Origin", "http://app.test"),
        ],
    )
    .await;
    publish(&server, "user.42", "for 42").await;
    assert_next_text(&mut ws, "for 42").await;

    let ask = hook.asks.lock().expect("lock")[0].clone();
    assert_eq!(ask["path"], "/message/42/stream/");
    assert_eq!(ask["route"], "/message/{user_id}/stream/");
    assert_eq!(ask["params"], json!({"user_id": "42"}));
    assert_eq!(ask["groups"], json!(["user.42"]));
    assert_eq!(ask["transport"], "websocket");
    assert_eq!(ask["headers"], json!({"cookie": COOKIE_42}));
    assert_eq!(ask["client_ip"], "127.0.0.1");
    assert_eq!(ask["origin"], "http://app.test");
    // Also as request headers, for the application's own middleware.
    let head = hook.heads.lock().expect("lock")[0].clone();
    assert!(head.starts_with("post /herald/connect/ http/1.1"), "{head}");
    assert!(head.contains("cookie: sessionid=alice-42"), "{head}");
    assert!(!head.contains("x-secret"), "{head}");
    let text = metrics(&server).await;
    assert_eq!(
        metric_line(&text, "herald_hook_requests_total{result=\"allow\"}"),
        Some(1)
    );
}

#[tokio::test]
async fn allow_false_closes_4503() {
    let hook = Hook::start(|_| allow(json!({"allow": false}))).await;
    let server = TestServer::with_config(hook_config(&hook)).await;
    assert_eq!(
        close_code(&server, "42", COOKIE_42).await,
        Ending::Code(4503)
    );
}

#[tokio::test]
async fn status_403_closes_4503_and_receives_nothing() {
    let hook = Hook::start(django_like).await;
    let server = TestServer::with_config(hook_config(&hook)).await;
    // Alice's cookie on user 43's stream.
    let mut ws = upgrade(&server, "43", COOKIE_42).await;
    publish(&server, "user.43", "for 43 only").await;
    // The close comes first and nothing for 43 before it.
    let until = Instant::now() + DEADLINE;
    let frame = ws.next_frame(until).await.expect("a frame");
    assert_eq!(frame.opcode, 0x8, "{frame:?}");
    assert_eq!(&frame.payload[..2], &4503u16.to_be_bytes());
}

#[tokio::test]
async fn status_401_closes_4501() {
    let hook = Hook::start(django_like).await;
    let server = TestServer::with_config(hook_config(&hook)).await;
    assert_eq!(close_code(&server, "42", "").await, Ending::Code(4501));
}

#[tokio::test]
async fn answer_groups_within_hook_groups_are_joined() {
    let hook =
        Hook::start(|_| allow(json!({"allow": true, "groups": ["user.42", "team.7"]}))).await;
    let server = TestServer::with_config(hook_config(&hook)).await;
    let mut ws = upgrade(&server, "42", COOKIE_42).await;
    publish(&server, "team.7", "team news").await;
    assert_next_text(&mut ws, "team news").await;
    publish(&server, "user.42", "own news").await;
    assert_next_text(&mut ws, "own news").await;
}

#[tokio::test]
async fn answer_group_outside_the_route_closes_4503() {
    let hook = Hook::start(|_| allow(json!({"allow": true, "groups": ["admin"]}))).await;
    let server = TestServer::with_config(hook_config(&hook)).await;
    assert_eq!(
        close_code(&server, "42", COOKIE_42).await,
        Ending::Code(4503)
    );
}

#[tokio::test]
async fn answer_with_another_users_group_closes_4503() {
    let hook = Hook::start(|_| allow(json!({"allow": true, "groups": ["user.43"]}))).await;
    let server = TestServer::with_config(hook_config(&hook)).await;
    assert_eq!(
        close_code(&server, "42", COOKIE_42).await,
        Ending::Code(4503)
    );
}

#[tokio::test]
async fn answer_naming_thousands_of_groups_closes_4503() {
    let groups: Vec<String> = (0..5000).map(|i| format!("team.{i}")).collect();
    let hook = Hook::start(move |_| allow(json!({"allow": true, "groups": groups}))).await;
    let server = TestServer::with_config(hook_config(&hook)).await;
    assert_eq!(
        close_code(&server, "42", COOKIE_42).await,
        Ending::Code(4503)
    );
}

/// A hostile answer refuses with 1013 and is counted under `result`.
async fn assert_refused_1013(answer: Answer, result: &str) {
    let hook = Hook::start(move |_| answer.clone()).await;
    let server = TestServer::with_config(hook_config(&hook)).await;
    assert_eq!(
        close_code(&server, "42", COOKIE_42).await,
        Ending::Code(1013)
    );
    let text = metrics(&server).await;
    let line = format!("herald_hook_requests_total{{result=\"{result}\"}}");
    assert_eq!(metric_line(&text, &line), Some(1), "{text}");
    assert_eq!(
        metric_line(&text, "herald_hook_requests_total{result=\"allow\"}"),
        Some(0)
    );
}

#[tokio::test]
async fn answer_not_json_closes_1013() {
    assert_refused_1013(Answer::Body(200, "<html>ok</html>".into()), "malformed").await;
}

#[tokio::test]
async fn answer_allow_yes_closes_1013() {
    assert_refused_1013(allow(json!({"allow": "yes"})), "malformed").await;
}

#[tokio::test]
async fn answer_of_10_mb_declared_closes_1013() {
    assert_refused_1013(Answer::Huge { declared: true }, "too_large").await;
}

#[tokio::test]
async fn answer_of_10_mb_undeclared_closes_1013() {
    assert_refused_1013(Answer::Huge { declared: false }, "too_large").await;
}

#[tokio::test]
async fn answer_dripping_for_30_s_closes_1013_at_the_timeout() {
    assert_refused_1013(Answer::Drip, "timeout").await;
}

#[tokio::test]
async fn answer_500_closes_1013() {
    assert_refused_1013(Answer::Body(500, "{\"allow\": true}".into()), "bad_status").await;
}

#[tokio::test]
async fn answer_redirect_closes_1013() {
    assert_refused_1013(Answer::Body(302, String::new()), "bad_status").await;
}

#[tokio::test]
async fn hook_down_closes_1013_and_hook_back_connects() {
    let mut hook = Hook::start(django_like).await;
    let server = TestServer::with_config(hook_config(&hook)).await;
    hook.stop().await;
    assert_eq!(
        close_code(&server, "42", COOKIE_42).await,
        Ending::Code(1013)
    );
    let text = metrics(&server).await;
    assert_eq!(
        metric_line(&text, "herald_hook_requests_total{result=\"unreachable\"}"),
        Some(1)
    );
    hook.restart().await;
    // Errors are not cached: the next attempt asks again and connects.
    let mut ws = upgrade(&server, "42", COOKIE_42).await;
    publish(&server, "user.42", "back").await;
    assert_next_text(&mut ws, "back").await;
    assert_eq!(hook.calls(), 1);
}

#[tokio::test]
async fn decisions_are_cached_and_shared_per_cookie() {
    let hook =
        Hook::start(|ask| Answer::After(Duration::from_millis(200), Box::new(django_like(ask))))
            .await;
    let server = Arc::new(TestServer::with_config(hook_config(&hook)).await);
    // Twenty concurrent upgrades with one cookie: one request in flight, shared.
    let mut opens = JoinSet::new();
    for _ in 0..20 {
        let server = server.clone();
        opens.spawn(async move { upgrade(&server, "42", COOKIE_42).await });
    }
    let mut sockets = Vec::new();
    while let Some(ws) = opens.join_next().await {
        sockets.push(ws.expect("upgrade task"));
    }
    assert_eq!(hook.calls(), 1);
    // Within cache_ttl: answered from the cache.
    let _again = upgrade(&server, "42", COOKIE_42).await;
    assert_eq!(hook.calls(), 1);
    // Another cookie, or another path, is another decision.
    assert_eq!(
        close_code(&server, "42", "sessionid=alice-43").await,
        Ending::Code(4503)
    );
    assert_eq!(
        close_code(&server, "43", COOKIE_42).await,
        Ending::Code(4503)
    );
    assert_eq!(hook.calls(), 3);
    publish(&server, "user.42", "all of them").await;
    for ws in &mut sockets {
        assert_next_text(ws, "all of them").await;
    }
}

#[tokio::test]
async fn refresh_refusal_closes_4003() {
    let hook = Hook::start(django_like).await;
    let mut config = hook_config(&hook);
    config.hook.refresh = Duration::from_secs(1);
    config.hook.cache_ttl = Duration::ZERO;
    let server = TestServer::with_config(config).await;
    let mut ws = upgrade(&server, "42", COOKIE_42).await;
    publish(&server, "user.42", "before logout").await;
    assert_next_text(&mut ws, "before logout").await;
    // The session ends on the application's side.
    hook.answer(|_| Answer::Body(401, String::new()));
    assert_eq!(ws.close_code(DEADLINE).await, Ending::Code(4003));
    let text = metrics(&server).await;
    assert_eq!(
        metric_line(&text, "herald_hook_refresh_refusals_total"),
        Some(1)
    );
}

#[tokio::test]
async fn refresh_asks_again_at_expires_in() {
    let hook = Hook::start(|_| allow(json!({"allow": true, "expires_in": 1}))).await;
    let mut config = hook_config(&hook);
    config.hook.cache_ttl = Duration::from_secs(60);
    let server = TestServer::with_config(config).await;
    let _ws = upgrade(&server, "42", COOKIE_42).await;
    // refresh is 5 min; expires_in = 1 s brings the next ask (and ends the cached entry).
    eventually(DEADLINE, "a second ask after expires_in", || {
        hook.calls() >= 2
    })
    .await;
}

#[tokio::test]
async fn refresh_with_the_hook_failing_keeps_the_connection() {
    let hook = Hook::start(django_like).await;
    let mut config = hook_config(&hook);
    config.hook.refresh = Duration::from_secs(1);
    config.hook.cache_ttl = Duration::ZERO;
    let server = TestServer::with_config(config).await;
    let mut ws = upgrade(&server, "42", COOKIE_42).await;
    hook.answer(|_| Answer::Body(503, String::new()));
    eventually(DEADLINE, "two failed refreshes", || hook.calls() >= 3).await;
    publish(&server, "user.42", "still here").await;
    assert_next_text(&mut ws, "still here").await;
}

#[tokio::test]
async fn refresh_with_changed_groups_closes_4003() {
    let hook =
        Hook::start(|_| allow(json!({"allow": true, "groups": ["user.42", "team.7"]}))).await;
    let mut config = hook_config(&hook);
    config.hook.refresh = Duration::from_secs(1);
    config.hook.cache_ttl = Duration::ZERO;
    let server = TestServer::with_config(config).await;
    let mut ws = upgrade(&server, "42", COOKIE_42).await;
    hook.answer(|_| allow(json!({"allow": true, "groups": ["user.42"]})));
    assert_eq!(ws.close_code(DEADLINE).await, Ending::Code(4003));
}

#[tokio::test]
async fn hostile_answers_leave_other_clients_unharmed() {
    // Bob is served normally; every other ask gets a dripping answer.
    let hook = Hook::start(|ask| {
        if ask["params"]["user_id"] == "7" {
            allow(json!({"allow": true}))
        } else {
            Answer::Drip
        }
    })
    .await;
    let server = Arc::new(TestServer::with_config(hook_config(&hook)).await);
    let mut bob = upgrade(&server, "7", "sessionid=bob").await;
    let mut hostile = JoinSet::new();
    for i in 0..50 {
        let server = server.clone();
        let cookie = format!("sessionid=x{i}");
        hostile.spawn(async move { close_code(&server, "42", &cookie).await });
    }
    // While 50 upgrades wait on the dripping hook, Bob still receives and a new
    // connection of Bob's still opens.
    publish(&server, "user.7", "for bob").await;
    assert_next_text(&mut bob, "for bob").await;
    let mut bob2 = upgrade(&server, "7", "sessionid=bob").await;
    publish(&server, "user.7", "again").await;
    assert_next_text(&mut bob2, "again").await;
    while let Some(ending) = hostile.join_next().await {
        assert_eq!(ending.expect("task"), Ending::Code(1013));
    }
}

#[tokio::test]
async fn ten_mb_answers_do_not_grow_memory() {
    let hook = Hook::start(|_| Answer::Huge { declared: false }).await;
    let server = Arc::new(TestServer::with_config(hook_config(&hook)).await);
    let before = rss_kib();
    let mut asks = JoinSet::new();
    for i in 0..40 {
        let server = server.clone();
        let cookie = format!("sessionid=x{i}");
        asks.spawn(async move { close_code(&server, "42", &cookie).await });
    }
    while let Some(ending) = asks.join_next().await {
        assert_eq!(ending.expect("task"), Ending::Code(1013));
    }
    let grown = rss_kib().saturating_sub(before);
    // 40 answers of 10 MB read whole would be 400 MB; capped reads stay far below.
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn config_refuses_hook_routes_without_a_url_and_https() {
    let mut config = Config::default();
    config.routes[0].auth = AuthMode::Hook;
    let err = config.validate().expect_err("no url");
    assert!(err.to_string().contains("hook.url"), "{err}");
    config.hook.url = Some("https://app.test/herald/connect/".into());
    let err = config.validate().expect_err("https");
    assert!(err.to_string().contains("https"), "{err}");
    config.hook.url = Some("http://127.0.0.1:8001/herald/connect/".into());
    config.routes[0].hook_groups = vec!["bad group".into()];
    assert!(config.validate().is_err());
}

/// A `herald serve` process with a configuration file.
struct Served {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Served {
    fn start(config: &std::path::Path, listen: &str) -> Self {
        let mut cmd = std::process::Command::new(support::herald_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(listen)
            .stderr(std::process::Stdio::null());
        let (child, addr) = support::spawn_serve(cmd);
        Self {
            child,
            addr: addr.parse().expect("address"),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Opens `count` connections at once, connection `i` as user `i % users` with that
/// user's cookie, and returns them all upgraded, with their user.
async fn storm(addr: SocketAddr, count: usize, users: usize) -> Vec<(usize, RawWs<TcpStream>)> {
    let mut opens = JoinSet::new();
    for i in 0..count {
        let user = i % users;
        opens.spawn(async move {
            let mut ws = RawWs::new(TcpStream::connect(addr).await.expect("connect"));
            let cookie = format!("sessionid=alice-{user}");
            ws.upgrade(&format!("/message/{user}/stream/"), &[("Cookie", &cookie)])
                .await;
            (user, ws)
        });
    }
    let mut sockets = Vec::with_capacity(count);
    while let Some(ws) = opens.join_next().await {
        sockets.push(ws.expect("upgrade task"));
    }
    sockets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_after_a_restart_asks_once_per_session() {
    const CONNECTIONS: usize = 2000;
    const SESSIONS: usize = 50;
    // A hook that takes 100 ms, so thousands of asks overlap its requests.
    let hook =
        Hook::start(|ask| Answer::After(Duration::from_millis(100), Box::new(django_like(ask))))
            .await;
    let dir = std::env::temp_dir().join(format!("herald-hook-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("herald.toml");
    std::fs::write(
        &file,
        format!(
            "[[routes]]\npath = \"/message/{{user_id}}/stream/\"\ngroups = [\"user.{{user_id}}\"]\n\
             auth = \"hook\"\n\n[hook]\nurl = \"{}\"\ntimeout = \"5s\"\n\n\
             [limits]\nmax_connections_per_ip = 10000\nmax_http_connections_per_ip = 10000\n",
            hook.url()
        ),
    )
    .expect("write config");

    let mut served = Served::start(&file, "127.0.0.1:0");
    let addr = served.addr;
    let first = storm(addr, CONNECTIONS, SESSIONS).await;
    let after_first = hook.calls();
    assert!(
        after_first <= SESSIONS,
        "{after_first} hook calls for {SESSIONS} sessions"
    );
    // Restart on the same address: every client reconnects at once.
    served.kill();
    drop(first);
    let served = Served::start(&file, &addr.to_string());
    let mut second = storm(served.addr, CONNECTIONS, SESSIONS).await;
    let total = hook.calls();
    assert!(
        total <= 2 * SESSIONS,
        "{total} hook calls for {SESSIONS} sessions over one restart"
    );
    // The reconnected clients are members: user 3's 40 connections receive.
    let body = json!({"group": "user.3", "text": "after the storm"}).to_string();
    let (status, _) = http(served.addr, "POST", "/api/publish", &[], body.as_bytes()).await;
    assert_eq!(status, 200);
    let mut received = 0;
    for (user, ws) in &mut second {
        if *user == 3 {
            assert_next_text(ws, "after the storm").await;
            received += 1;
        }
    }
    assert_eq!(received, CONNECTIONS / SESSIONS);
    let _ = std::fs::remove_dir_all(&dir);
}
