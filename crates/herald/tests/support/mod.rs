//! Shared harness of the server's integration tests: a real server on port 0, HTTP
//! helpers, and the `herald` binary for process-level tests.
#![allow(dead_code)]

pub mod raw;

use std::net::SocketAddr;
use std::time::Duration;

use herald::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[allow(unused_imports)]
pub use herald_testkit::ws::{Received, V1Client, WsClient};

/// A server running in this process on a free port.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), herald::ServeError>>>,
}

impl TestServer {
    /// Starts a server with the default configuration.
    pub async fn start() -> Self {
        Self::with_config(Config::default()).await
    }

    /// Starts a server with `config` (its `listen` is ignored: port 0 is used).
    pub async fn with_config(config: Config) -> Self {
        let server = Self::with_config_unchecked(config).await;
        server.wait_ready().await;
        server
    }

    /// Starts a server without waiting for `/readyz` (which a TLS port does not answer
    /// in plain HTTP). The listener is bound, so connections queue until it accepts.
    pub async fn with_config_unchecked(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(herald::run(listener, config, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Waits (≤ 10 s) until `/readyz` answers 200: the layer is connected.
    pub async fn wait_ready(&self) {
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while get_status(self.addr, "/readyz").await != 200 {
            assert!(
                tokio::time::Instant::now() < until,
                "server not ready within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Connects a plain client to the seed route of `user`.
    pub async fn connect_user(&self, user: &str) -> WsClient {
        WsClient::connect(&self.ws_url(&format!("/message/{user}/stream/")))
            .await
            .expect("connect")
    }

    /// `POST /api/publish` with a JSON body; returns (status, body).
    pub async fn publish(&self, body: &str) -> (u16, serde_json::Value) {
        let (status, text) = http(self.addr, "POST", "/api/publish", &[], body.as_bytes()).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// Stops the server and checks that `run` returns within 15 s.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("server stops within 15 s")
                .expect("server task did not panic")
                .expect("server returned Ok");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A minimal HTTP/1.1 request over a fresh connection; returns (status, body). Written
/// by hand so tests can also send what no client library would.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    raw_http(addr, &bytes).await
}

/// Sends raw bytes and parses the response's status line and body.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("write");
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        response
    };
    let response = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("http response within 10 s");
    parse_response(&response)
}

/// The status (0 when there is none) and the body of a raw HTTP response.
pub fn parse_response(response: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The `herald` binary built for these tests.
pub fn herald_bin() -> &'static str {
    env!("CARGO_BIN_EXE_herald")
}

/// Waits for `cond` to hold, polling every 20 ms, failing after `deadline`.
pub async fn eventually<F: FnMut() -> bool>(deadline: Duration, what: &str, mut cond: F) {
    let until = tokio::time::Instant::now() + deadline;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A configuration on the Redis layer at `url`, with its own key prefix.
pub fn redis_config(url: &str, prefix: &str) -> Config {
    let mut config = Config::default();
    config.layer.kind = herald::config::LayerKind::Redis;
    config.layer.url = Some(url.to_string());
    config.layer.prefix = prefix.to_string();
    config
}

/// `GET path` and the status.
pub async fn get_status(addr: SocketAddr, path: &str) -> u16 {
    http(addr, "GET", path, &[], b"").await.0
}

/// Spawns `cmd` (a `herald serve --listen 127.0.0.1:0 ...` command), waits (≤ 10 s) for the
/// `listening on http://ADDR` line and returns the child with that address.
pub fn spawn_serve(mut cmd: std::process::Command) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn herald");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the one address line; the thread ends with it.
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("herald prints its address within 10 s");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    assert!(!addr.ends_with(":0"), "the real port is printed: {addr}");
    (child, addr)
}
