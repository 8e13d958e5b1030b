//! Server-Sent Events (DESIGN.md §14) against the real server: event format, lossless
//! `Last-Event-ID` resume, resync, hostile ids, refusals as HTTP statuses, CORS, bounds.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use herald::Config;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::TestServer;
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(5);

/// One parsed SSE event (or comment-only block).
#[derive(Debug, Default, Clone, PartialEq)]
struct Event {
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
    comment: bool,
}

/// An SSE stream read over its own HTTP/1.1 connection with hyper's client.
struct SseClient {
    status: u16,
    headers: hyper::HeaderMap,
    body: Incoming,
    buf: Vec<u8>,
    /// The last `id:` seen, as a browser keeps it.
    last_id: Option<String>,
}

impl SseClient {
    async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Self {
        let stream = timeout(WAIT, tokio::net::TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = hyper::Request::get(path)
            .header("host", addr.to_string())
            .header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let response = timeout(WAIT, sender.send_request(req))
            .await
            .expect("response head in time")
            .expect("response");
        Self::from_response(response)
    }

    fn from_response(response: hyper::Response<Incoming>) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Self {
            status,
            headers,
            body: response.into_body(),
            buf: Vec::new(),
            last_id: None,
        }
    }

    /// The whole body of a non-stream answer.
    async fn text(self) -> String {
        let bytes = timeout(WAIT, self.body.collect())
            .await
            .expect("body in time")
            .expect("body")
            .to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The next event block; `None` when the stream ended.
    async fn next_block(&mut self, deadline: Duration) -> Option<Event> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("utf-8 events");
                let mut event = Event::default();
                let mut data: Vec<&str> = Vec::new();
                for line in text.lines() {
                    if line.starts_with(':') {
                        event.comment = true;
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => event.event = Some(value.to_string()),
                        "data" => data.push(value),
                        "id" => event.id = Some(value.to_string()),
                        "retry" => event.retry = value.parse().ok(),
                        _ => {}
                    }
                }
                if !data.is_empty() {
                    event.data = Some(data.join("\n"));
                }
                if let Some(id) = &event.id {
                    self.last_id = Some(id.clone());
                }
                return Some(event);
            }
            let left = until.saturating_duration_since(Instant::now());
            let frame = timeout(left, self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("no event within {deadline:?}"));
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                _ => return None,
            }
        }
    }

    /// The next event carrying data (skips comments and id-only blocks).
    async fn next_event(&mut self, deadline: Duration) -> Event {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let event = self.next_block(left).await.expect("stream still open");
            if event.data.is_some() {
                return event;
            }
        }
    }

    /// Reads until the stream ends; returns the blocks seen.
    async fn until_end(&mut self, deadline: Duration) -> Vec<Event> {
        let until = Instant::now() + deadline;
        let mut seen = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.next_block(left).await {
                Some(event) => seen.push(event),
                None => return seen,
            }
        }
    }
}

async fn publish_n(server: &TestServer, group: &str, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        let (status, body) = server
            .publish(&format!(r#"{{"group":"{group}","text":"m{i}"}}"#))
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

async fn expect_messages(client: &mut SseClient, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        let event = client.next_event(WAIT).await;
        assert_eq!(event.event, None, "{event:?}");
        assert_eq!(event.data.as_deref(), Some(format!("m{i}").as_str()));
    }
}

/// Opens a stream and reads its opening block (`retry:` and the starting id).
async fn open_stream(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> SseClient {
    let mut client = SseClient::open(server.addr, path, headers).await;
    assert_eq!(client.status, 200);
    let first = client.next_block(WAIT).await.expect("an opening block");
    assert!(first.retry.is_some(), "retry: on connect: {first:?}");
    assert!(first.id.is_some(), "the starting position: {first:?}");
    client
}

async fn metric(server: &TestServer, name: &str) -> i64 {
    let (status, text) = support::http(server.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

const STREAM: &str = "/message/42/stream/";

#[tokio::test]
async fn events_carry_the_payload_and_the_position() {
    let server = TestServer::start().await;
    let mut client = SseClient::open(server.addr, STREAM, &[]).await;
    assert_eq!(client.status, 200);
    assert_eq!(
        client.headers["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let first = client.next_block(WAIT).await.unwrap();
    assert_eq!(first.retry, Some(3000));
    let start = first.id.unwrap();
    assert!(start.starts_with("user.42:0:"), "{start}");
    let epoch = start.rsplit(':').next().unwrap().to_string();

    let (status, _) = server
        .publish(r#"{"group":"user.42","text":"line one\nline two"}"#)
        .await;
    assert_eq!(status, 200);
    let event = client.next_event(WAIT).await;
    assert_eq!(event.data.as_deref(), Some("line one\nline two"));
    assert_eq!(event.id, Some(format!("user.42:1:{epoch}")));

    let (status, _) = server
        .publish(r#"{"group":"user.42","bytes":"AAEC"}"#)
        .await;
    assert_eq!(status, 200);
    let event = client.next_event(WAIT).await;
    assert_eq!(event.event.as_deref(), Some("binary"));
    assert_eq!(event.data.as_deref(), Some("AAEC"));
    assert_eq!(event.id, Some(format!("user.42:2:{epoch}")));
}

#[tokio::test]
async fn resume_after_disconnect_gets_each_missed_message_once_in_order() {
    let server = TestServer::start().await;
    let mut client = open_stream(&server, STREAM, &[]).await;
    publish_n(&server, "user.42", 1..=10).await;
    expect_messages(&mut client, 1..=10).await;
    let last = client.last_id.clone().unwrap();
    drop(client);

    publish_n(&server, "user.42", 11..=30).await;
    let mut client = SseClient::open(server.addr, STREAM, &[("last-event-id", &last)]).await;
    assert_eq!(client.status, 200);
    // Missed ones first, then live ones, with no gap or duplicate between.
    let publisher = async {
        publish_n(&server, "user.42", 31..=60).await;
    };
    let reader = async {
        expect_messages(&mut client, 11..=60).await;
    };
    tokio::join!(publisher, reader);
    assert!(client.last_id.unwrap().starts_with("user.42:60:"));
}

#[tokio::test]
async fn resume_from_the_query_string() {
    let server = TestServer::start().await;
    let mut client = open_stream(&server, STREAM, &[]).await;
    publish_n(&server, "user.42", 1..=3).await;
    expect_messages(&mut client, 1..=3).await;
    let last = client.last_id.clone().unwrap();
    drop(client);
    publish_n(&server, "user.42", 4..=5).await;
    let encoded = last.replace(':', "%3A");
    let mut client = SseClient::open(
        server.addr,
        &format!("{STREAM}?last_event_id={encoded}"),
        &[],
    )
    .await;
    expect_messages(&mut client, 4..=5).await;
}

#[tokio::test]
async fn trimmed_history_gets_resync() {
    let mut config = Config::default();
    config.history.size = 5;
    let server = TestServer::with_config(config).await;
    let mut client = open_stream(&server, STREAM, &[]).await;
    publish_n(&server, "user.42", 1..=2).await;
    expect_messages(&mut client, 1..=2).await;
    let last = client.last_id.clone().unwrap();
    drop(client);
    publish_n(&server, "user.42", 3..=20).await;

    let mut client = SseClient::open(server.addr, STREAM, &[("last-event-id", &last)]).await;
    let resync = client.next_event(WAIT).await;
    assert_eq!(resync.event.as_deref(), Some("resync"));
    assert_eq!(resync.data.as_deref(), Some(r#"{"groups":["user.42"]}"#));
    assert!(resync.id.unwrap().starts_with("user.42:20:"));
    publish_n(&server, "user.42", 21..=21).await;
    expect_messages(&mut client, 21..=21).await;
}

/// A hostile `Last-Event-ID` starts a stream from now: it still receives what comes next.
async fn hostile_id_is_a_first_visit_or_resync(id: &str, resync: bool) {
    let server = TestServer::start().await;
    publish_n(&server, "user.42", 1..=3).await;
    let mut client = SseClient::open(server.addr, STREAM, &[("last-event-id", id)]).await;
    assert_eq!(client.status, 200);
    if resync {
        let event = client.next_event(WAIT).await;
        assert_eq!(event.event.as_deref(), Some("resync"), "{event:?}");
    }
    publish_n(&server, "user.42", 4..=4).await;
    expect_messages(&mut client, 4..=4).await;
    // The server is unharmed.
    assert_eq!(support::get_status(server.addr, "/healthz").await, 200);
}

#[tokio::test]
async fn garbage_last_event_id_is_a_first_visit() {
    hostile_id_is_a_first_visit_or_resync("garbage::,,:%%~~ \u{e9}", false).await;
}

#[tokio::test]
async fn huge_last_event_id_is_a_first_visit() {
    let id = "user.42:1:abc,".repeat(4000);
    hostile_id_is_a_first_visit_or_resync(&id, false).await;
}

#[tokio::test]
async fn megabyte_last_event_id_is_refused_with_431_and_a_json_body() {
    let server = TestServer::start().await;
    let id = "user.42:1:abc,".repeat(75_000);
    let (status, body) = support::http(
        server.addr,
        "GET",
        STREAM,
        &[("Accept", "text/event-stream"), ("Last-Event-ID", &id)],
        b"",
    )
    .await;
    assert_eq!(status, 431);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "headers_too_large");
    assert_eq!(support::get_status(server.addr, "/healthz").await, 200);
}

#[tokio::test]
async fn offset_over_u64_is_a_first_visit() {
    hostile_id_is_a_first_visit_or_resync("user.42:99999999999999999999999999:abc", false).await;
}

#[tokio::test]
async fn future_offset_gets_resync() {
    let server = TestServer::start().await;
    let client = open_stream(&server, STREAM, &[]).await;
    let epoch = client.last_id.clone().unwrap();
    let epoch = epoch.rsplit(':').next().unwrap();
    drop(client);
    let id = format!("user.42:{}:{epoch}", u64::MAX);
    let mut client = SseClient::open(server.addr, STREAM, &[("last-event-id", &id)]).await;
    let event = client.next_event(WAIT).await;
    assert_eq!(event.event.as_deref(), Some("resync"));
    publish_n(&server, "user.42", 1..=1).await;
    expect_messages(&mut client, 1..=1).await;
}

#[tokio::test]
async fn another_epoch_gets_resync() {
    hostile_id_is_a_first_visit_or_resync("user.42:2:NotThisOne", true).await;
}

#[tokio::test]
async fn missing_token_is_401_with_a_json_body() {
    let mut config = Config::default();
    config.auth.secret = Some("s3cret-s3cret-s3cret-s3cret-s3cret".into());
    config.routes[0].auth = herald::config::AuthMode::Token;
    let server = TestServer::with_config(config).await;
    let client = SseClient::open(server.addr, STREAM, &[]).await;
    assert_eq!(client.status, 401);
    let body: serde_json::Value = serde_json::from_str(&client.text().await).unwrap();
    assert_eq!(body["error"], "unauthorized");
}

#[tokio::test]
async fn refused_origin_is_403_and_an_allowed_one_gets_cors() {
    let mut config = Config::default();
    config.routes[0].origins = vec!["https://app.example".into()];
    let server = TestServer::with_config(config).await;
    let client = SseClient::open(server.addr, STREAM, &[("origin", "https://evil.example")]).await;
    assert_eq!(client.status, 403);
    assert!(!client.headers.contains_key("access-control-allow-origin"));
    let body: serde_json::Value = serde_json::from_str(&client.text().await).unwrap();
    assert_eq!(body["error"], "forbidden");

    let client = SseClient::open(server.addr, STREAM, &[("origin", "https://app.example")]).await;
    assert_eq!(client.status, 200);
    assert_eq!(
        client.headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(client.headers["access-control-allow-credentials"], "true");
}

#[tokio::test]
async fn connection_limit_is_503_and_streams_count_in_the_gauges() {
    let mut config = Config::default();
    config.limits.max_connections = 2;
    let server = TestServer::with_config(config).await;
    let _a = open_stream(&server, STREAM, &[]).await;
    let _b = open_stream(&server, "/message/43/stream/", &[]).await;
    let refused = SseClient::open(server.addr, STREAM, &[]).await;
    assert_eq!(refused.status, 503);
    assert!(refused.headers.contains_key("retry-after"));
    let body: serde_json::Value = serde_json::from_str(&refused.text().await).unwrap();
    assert_eq!(body["error"], "try_again_later");
    assert_eq!(
        metric(&server, "herald_transport_connections{transport=\"sse\"}").await,
        2
    );
    assert_eq!(
        metric(
            &server,
            "herald_transport_connections{transport=\"websocket\"}"
        )
        .await,
        0
    );
}

/// An admitted stream gives its HTTP connection's place back: more streams from one address
/// than `limits.max_http_connections_per_ip`, and a short request after them, all pass.
#[tokio::test]
async fn streams_do_not_hold_places_meant_for_short_requests() {
    let mut config = Config::default();
    config.limits.max_http_connections_per_ip = 3;
    let server = TestServer::with_config(config).await;
    let mut streams = Vec::new();
    for user in 0..10 {
        streams.push(open_stream(&server, &format!("/message/{user}/stream/"), &[]).await);
    }
    // Only the scrape itself holds a place.
    assert_eq!(metric(&server, "herald_http_connections").await, 1);
    assert_eq!(support::get_status(server.addr, "/healthz").await, 200);
    assert_eq!(
        metric(&server, "herald_transport_connections{transport=\"sse\"}").await,
        10
    );
}

#[tokio::test]
async fn slow_reader_is_closed_and_counted() {
    let mut config = Config::default();
    config.limits.outbox_messages = 64;
    let server = TestServer::with_config(config).await;
    // Opened and never read past its head: the socket buffers fill, then the outbox.
    let client = SseClient::open(server.addr, STREAM, &[]).await;
    assert_eq!(client.status, 200);
    let big = "x".repeat(30_000);
    let until = Instant::now() + Duration::from_secs(20);
    while metric(&server, "herald_outbox_overflows_total").await == 0 {
        assert!(Instant::now() < until, "the slow reader was never kicked");
        let items: Vec<String> = (0..30)
            .map(|_| format!(r#"{{"group":"user.42","text":"{big}"}}"#))
            .collect();
        let (status, body) = support::http(
            server.addr,
            "POST",
            "/api/publish",
            &[("content-type", "application/json")],
            format!(r#"{{"messages":[{}]}}"#, items.join(",")).as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let until = Instant::now() + WAIT;
    while metric(&server, "herald_transport_connections{transport=\"sse\"}").await != 0 {
        assert!(Instant::now() < until, "the stream was not closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(client);
}

#[tokio::test]
async fn graceful_shutdown_ends_streams_with_a_retry_hint() {
    let mut config = Config::default();
    config.shutdown.goaway_window = Duration::from_secs(10);
    let server = TestServer::with_config(config).await;
    let mut client = open_stream(&server, STREAM, &[]).await;
    let stop = tokio::spawn(server.stop());
    let seen = client.until_end(WAIT).await;
    let close = seen
        .iter()
        .find(|e| e.event.as_deref() == Some("close"))
        .expect("an event: close");
    assert_eq!(
        close.data.as_deref(),
        Some(r#"{"code":1012,"reason":"server restart"}"#)
    );
    let retry = seen.iter().find_map(|e| e.retry).expect("a retry: hint");
    assert!(retry <= 10_000, "{retry}");
    timeout(Duration::from_secs(20), stop)
        .await
        .expect("stops")
        .expect("stop task");
}

#[tokio::test]
async fn idle_streams_get_heartbeat_comments() {
    let mut config = Config::default();
    config.heartbeat.interval = Duration::from_millis(200);
    let server = TestServer::with_config(config).await;
    let mut client = open_stream(&server, STREAM, &[]).await;
    let block = client.next_block(Duration::from_secs(2)).await.unwrap();
    assert!(block.comment && block.data.is_none(), "{block:?}");
}

/// Resident memory of this process (the server runs in it), in KiB.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_streams_stay_small_and_leave_others_unharmed() {
    use tokio::io::AsyncWriteExt;
    const STREAMS: usize = 2000;
    let mut config = Config::default();
    config.limits.max_connections_per_ip = 10_000;
    config.limits.max_http_connections_per_ip = 10_000;
    let server = TestServer::with_config(config).await;
    let before = rss_kib();
    let mut idle = Vec::with_capacity(STREAMS);
    for i in 0..STREAMS {
        let mut stream = timeout(WAIT, tokio::net::TcpStream::connect(server.addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let request = format!(
            "GET /message/idle{i}/stream/ HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        // Never read from.
        idle.push(stream);
    }
    let until = Instant::now() + Duration::from_secs(30);
    while metric(&server, "herald_transport_connections{transport=\"sse\"}").await < STREAMS as i64
    {
        assert!(
            Instant::now() < until,
            "the idle streams were not all opened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown = rss_kib().saturating_sub(before);
    let per_stream = grown * 1024 / STREAMS as u64;
    eprintln!("{per_stream} bytes of resident memory per idle stream");
    assert!(
        per_stream < 48 * 1024,
        "{per_stream} bytes of resident memory per idle stream"
    );
    // Another stream still gets its messages at once, while the idle ones hold theirs.
    let mut client = open_stream(&server, STREAM, &[]).await;
    for i in (0..STREAMS).step_by(100) {
        let (status, _) = server
            .publish(&format!(r#"{{"group":"user.idle{i}","text":"hello"}}"#))
            .await;
        assert_eq!(status, 200);
    }
    publish_n(&server, "user.42", 1..=5).await;
    expect_messages(&mut client, 1..=5).await;
    drop(idle);
    let until = Instant::now() + Duration::from_secs(30);
    while metric(&server, "herald_transport_connections{transport=\"sse\"}").await > 1 {
        assert!(Instant::now() < until, "closed streams were not released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn http2_carries_two_streams_and_a_publish_on_one_tls_connection() {
    use std::sync::Arc;
    use support::raw::RawWs;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::crypto::ring;
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("herald-h2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, generated.cert.pem()).unwrap();
    std::fs::write(&key_path, generated.signing_key.serialize_pem()).unwrap();
    let mut config = Config::default();
    config.tls.cert = Some(cert_path);
    config.tls.key = Some(key_path);
    let server = TestServer::with_config_unchecked(config).await;

    let mut roots = RootCertStore::empty();
    roots.add(generated.cert.der().clone()).unwrap();
    let connect = |alpn: &[u8]| {
        let mut client = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        client.alpn_protocols = vec![alpn.to_vec()];
        let connector = TlsConnector::from(Arc::new(client));
        let addr = server.addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            timeout(WAIT, connector.connect(name, tcp))
                .await
                .expect("tls handshake in time")
                .expect("tls handshake")
        }
    };

    let tls = connect(b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let request = |method: &str, path: &str, body: &str| {
        hyper::Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"))
            .header("accept", "text/event-stream")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let mut streams = Vec::new();
    for path in ["/message/42/stream/", "/message/43/stream/"] {
        let mut sender = sender.clone();
        let response = timeout(WAIT, sender.send_request(request("GET", path, "")))
            .await
            .expect("stream head in time")
            .expect("stream");
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        let mut client = SseClient::from_response(response);
        assert_eq!(client.status, 200);
        client.next_block(WAIT).await.expect("opening block");
        streams.push(client);
    }
    for group in ["user.42", "user.43"] {
        let body = format!(r#"{{"group":"{group}","text":"over h2"}}"#);
        let mut sender = sender.clone();
        let response = timeout(
            WAIT,
            sender.send_request(request("POST", "/api/publish", &body)),
        )
        .await
        .expect("publish in time")
        .expect("publish");
        assert_eq!(response.status(), 200);
    }
    for client in &mut streams {
        let event = client.next_event(WAIT).await;
        assert_eq!(event.data.as_deref(), Some("over h2"));
    }

    // WebSockets keep HTTP/1.1 on the same port.
    let mut ws = RawWs::new(connect(b"http/1.1").await);
    ws.upgrade("/message/44/stream/", &[]).await;
    let mut sender = sender.clone();
    let response = timeout(
        WAIT,
        sender.send_request(request(
            "POST",
            "/api/publish",
            r#"{"group":"user.44","text":"over wss"}"#,
        )),
    )
    .await
    .expect("publish in time")
    .expect("publish");
    assert_eq!(response.status(), 200);
    let frame = ws
        .next_frame(Instant::now() + WAIT)
        .await
        .expect("a frame over wss");
    assert_eq!(&frame.payload[..], b"over wss");
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
