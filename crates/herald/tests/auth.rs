//! Connection tokens, origins, per-IP limits behind trusted proxies, API key metrics and
//! `wss://`, against a real server on port 0.

mod support;

use std::sync::Arc;
use std::time::Duration;

use herald::Config;
use herald::auth::{Claims, mint, sign, unix_now};
use herald::config::{AuthMode, RouteConfig};
use support::raw::{Ending, RawWs, TEXT};
use support::{TestServer, V1Client, http};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

const SECRET: &str = "test-secret-test-secret-test-secret!";
const DEADLINE: Duration = Duration::from_secs(5);

/// The seed's route behind tokens.
fn token_config() -> Config {
    let mut config = Config::default();
    config.routes[0].auth = AuthMode::Token;
    config.auth.secret = Some(SECRET.into());
    config
}

fn token_for(sub: &str) -> String {
    mint(SECRET.as_bytes(), sub, None, Duration::from_secs(3600)).expect("mint")
}

async fn connect(addr: std::net::SocketAddr) -> RawWs<TcpStream> {
    RawWs::new(TcpStream::connect(addr).await.expect("connect"))
}

/// Opens `path` and returns how the server ends the connection (after a 101).
async fn refusal(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> Ending {
    let mut ws = connect(server.addr).await;
    ws.upgrade(path, headers).await;
    ws.close_code(DEADLINE).await
}

/// Publishes `text` to `group` and checks `ws` receives exactly it.
async fn assert_receives<S>(server: &TestServer, ws: &mut RawWs<S>, group: &str, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let body = serde_json::json!({"group": group, "text": text}).to_string();
    let (status, answer) = server.publish(&body).await;
    assert_eq!(status, 200, "{answer}");
    assert_next_text(ws, text).await;
}

/// Checks the next text frame `ws` receives is `text`.
async fn assert_next_text<S>(ws: &mut RawWs<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let until = Instant::now() + DEADLINE;
    loop {
        let frame = ws.next_frame(until).await.expect("a frame");
        if frame.opcode == TEXT {
            assert_eq!(frame.payload, text.as_bytes());
            return;
        }
    }
}

async fn metric(server: &TestServer, line_start: &str) -> Option<u64> {
    let (_, text) = http(server.addr, "GET", "/metrics", &[], b"").await;
    text.lines()
        .find(|l| l.starts_with(line_start) && l[line_start.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn own_token_connects_and_receives() {
    let server = TestServer::with_config(token_config()).await;
    let mut ws = connect(server.addr).await;
    let path = format!("/message/42/stream/?token={}", token_for("42"));
    ws.upgrade(&path, &[]).await;
    assert_receives(&server, &mut ws, "user.42", "hello 42").await;
    server.stop().await;
}

#[tokio::test]
async fn another_users_token_is_forbidden() {
    let server = TestServer::with_config(token_config()).await;
    let path = format!("/message/42/stream/?token={}", token_for("43"));
    assert_eq!(refusal(&server, &path, &[]).await, Ending::Code(4503));
    // Refused before joining: user.42 never got a member on this node.
    assert_eq!(metric(&server, "herald_groups").await, Some(0));
    assert_eq!(metric(&server, "herald_auth_refusals_total").await, Some(1));
    server.stop().await;
}

#[tokio::test]
async fn missing_malformed_or_badly_signed_tokens_are_unauthorized() {
    let server = TestServer::with_config(token_config()).await;
    let other_secret = mint(
        b"not-the-secret-not-the-secret-not-the",
        "42",
        None,
        Duration::from_secs(60),
    )
    .unwrap();
    let mut tampered = token_for("42");
    tampered.pop();
    tampered.push('A');
    for path in [
        "/message/42/stream/".to_string(),
        "/message/42/stream/?token=".to_string(),
        "/message/42/stream/?token=garbage".to_string(),
        "/message/42/stream/?token=a.b.c".to_string(),
        format!("/message/42/stream/?token={other_secret}"),
        format!("/message/42/stream/?token={tampered}"),
        format!("/message/42/stream/?token={}", "x".repeat(9000)),
    ] {
        assert_eq!(
            refusal(&server, &path, &[]).await,
            Ending::Code(4501),
            "{path:.60}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn expired_token_gets_4003() {
    let server = TestServer::with_config(token_config()).await;
    let claims = Claims {
        sub: "42".into(),
        exp: unix_now() - 5,
        nbf: None,
        groups: None,
    };
    let token = sign(SECRET.as_bytes(), &claims).unwrap();
    let path = format!("/message/42/stream/?token={token}");
    assert_eq!(refusal(&server, &path, &[]).await, Ending::Code(4003));
    server.stop().await;
}

#[tokio::test]
async fn token_expiring_while_connected_closes_with_4003() {
    let server = TestServer::with_config(token_config()).await;
    let claims = Claims {
        sub: "42".into(),
        exp: unix_now() + 2,
        nbf: None,
        groups: None,
    };
    let token = sign(SECRET.as_bytes(), &claims).unwrap();
    let mut ws = connect(server.addr).await;
    let opened = Instant::now();
    ws.upgrade(&format!("/message/42/stream/?token={token}"), &[])
        .await;
    assert_receives(&server, &mut ws, "user.42", "before expiry").await;
    // `exp` has one-second resolution: the close comes 1–2 s after connecting.
    assert_eq!(ws.close_code(DEADLINE).await, Ending::Code(4003));
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "closed too early"
    );
    assert_eq!(
        metric(&server, "herald_tokens_expired_total").await,
        Some(1)
    );
    server.stop().await;
}

#[tokio::test]
async fn groups_claim_replaces_the_default_grant() {
    let server = TestServer::with_config(token_config()).await;
    let admin = mint(
        SECRET.as_bytes(),
        "admin",
        Some(vec!["user.*".into()]),
        Duration::from_secs(60),
    )
    .unwrap();
    let mut ws = connect(server.addr).await;
    ws.upgrade(&format!("/message/42/stream/?token={admin}"), &[])
        .await;
    assert_receives(&server, &mut ws, "user.42", "for admin").await;
    let news_only = mint(
        SECRET.as_bytes(),
        "42",
        Some(vec!["news.*".into()]),
        Duration::from_secs(60),
    )
    .unwrap();
    let path = format!("/message/42/stream/?token={news_only}");
    assert_eq!(refusal(&server, &path, &[]).await, Ending::Code(4503));
    server.stop().await;
}

#[tokio::test]
async fn herald_v1_takes_the_token_from_the_hello_or_the_url() {
    let server = TestServer::with_config(token_config()).await;
    let url = server.ws_url("/message/42/stream/");
    // In the hello.
    let mut ws = support::WsClient::connect_with(&url, &["herald.v1"])
        .await
        .unwrap();
    let hello = serde_json::json!({"t": "hello", "v": 1, "streams": {}, "token": token_for("42")});
    ws.send_text(&hello.to_string()).await.unwrap();
    let welcome = ws.recv_text().await.unwrap();
    assert!(welcome.contains("\"welcome\""), "{welcome}");
    // In the URL, with a hello that has none.
    let with_url = format!("{url}?token={}", token_for("42"));
    let mut v1 = V1Client::connect(&with_url, Default::default())
        .await
        .expect("welcome");
    server.publish(r#"{"group":"user.42","text":"v1"}"#).await;
    let m = v1.next_message(DEADLINE).await.unwrap();
    assert_eq!(&m.payload[..], b"v1");
    // Someone else's token in the hello.
    let mut ws = support::WsClient::connect_with(&url, &["herald.v1"])
        .await
        .unwrap();
    let hello = serde_json::json!({"t": "hello", "v": 1, "token": token_for("43")});
    ws.send_text(&hello.to_string()).await.unwrap();
    assert_eq!(ws.closed_within(DEADLINE).await.unwrap(), 4503);
    // No token at all.
    let mut ws = support::WsClient::connect_with(&url, &["herald.v1"])
        .await
        .unwrap();
    ws.send_text(r#"{"t":"hello","v":1}"#).await.unwrap();
    assert_eq!(ws.closed_within(DEADLINE).await.unwrap(), 4501);
    server.stop().await;
}

#[tokio::test]
async fn origin_allow_list() {
    let mut config = Config::default();
    config.routes[0].origins = vec!["https://app.example.com".into()];
    let server = TestServer::with_config(config).await;
    let path = "/message/1/stream/";
    let evil = [("Origin", "https://evil.example.com")];
    assert_eq!(refusal(&server, path, &evil).await, Ending::Code(4503));
    for headers in [&[("Origin", "https://app.example.com")][..], &[]] {
        let mut ws = connect(server.addr).await;
        ws.upgrade(path, headers).await;
        assert_receives(&server, &mut ws, "user.1", "welcome in").await;
    }
    server.stop().await;
}

/// Connects from a given loopback source address.
async fn connect_from(source: &str, addr: std::net::SocketAddr) -> RawWs<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    RawWs::new(socket.connect(addr).await.expect("connect"))
}

#[tokio::test]
async fn per_ip_limit_trusts_forwarded_for_only_from_trusted_proxies() {
    let mut config = Config::default();
    config.limits.max_connections_per_ip = 2;
    config.limits.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let server = TestServer::with_config(config).await;
    let path = "/message/1/stream/";
    let mut held = Vec::new();
    // 127.0.0.2 is not a proxy: its X-Forwarded-For is ignored, two connections max.
    for i in 0..2 {
        let mut ws = connect_from("127.0.0.2", server.addr).await;
        ws.upgrade(path, &[("X-Forwarded-For", &format!("10.9.9.{i}"))])
            .await;
        held.push(ws);
    }
    let mut third = connect_from("127.0.0.2", server.addr).await;
    third
        .upgrade(path, &[("X-Forwarded-For", "10.9.9.100")])
        .await;
    assert_eq!(third.close_code(DEADLINE).await, Ending::Code(1013));
    // 127.0.0.1 is trusted: each forwarded client has its own quota.
    for client in ["198.51.100.1", "198.51.100.1", "198.51.100.2"] {
        let mut ws = connect_from("127.0.0.1", server.addr).await;
        ws.upgrade(path, &[("X-Forwarded-For", client)]).await;
        held.push(ws);
    }
    let mut over = connect_from("127.0.0.1", server.addr).await;
    over.upgrade(path, &[("X-Forwarded-For", "198.51.100.1")])
        .await;
    assert_eq!(over.close_code(DEADLINE).await, Ending::Code(1013));
    // Everyone admitted still works.
    assert_receives(&server, &mut held[0], "user.1", "still here").await;
    // Closing frees the quota.
    drop(held.remove(0));
    let admitted = async {
        loop {
            let mut ws = connect_from("127.0.0.2", server.addr).await;
            ws.upgrade(path, &[]).await;
            match ws.close_code(Duration::from_millis(300)).await {
                Ending::Timeout => return ws,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    };
    let again = tokio::time::timeout(DEADLINE, admitted)
        .await
        .unwrap_or_else(|_| panic!("quota not released within {DEADLINE:?}"));
    drop(again);
    server.stop().await;
}

#[tokio::test]
async fn publish_metrics_name_the_api_key() {
    let mut config = Config::default();
    config.api.keys.insert("backend".into(), "k-backend".into());
    config.api.keys.insert("cron".into(), "k-cron".into());
    let server = TestServer::with_config(config).await;
    let body = br#"{"group":"user.1","text":"x"}"#;
    for _ in 0..2 {
        let (status, _) = http(
            server.addr,
            "POST",
            "/api/publish",
            &[("Authorization", "Bearer k-backend")],
            body,
        )
        .await;
        assert_eq!(status, 200);
    }
    let (status, text) = http(
        server.addr,
        "POST",
        "/api/publish",
        &[("Authorization", "Bearer nope")],
        body,
    )
    .await;
    assert_eq!(status, 401);
    assert!(text.contains("\"unauthorized\""), "{text}");
    assert_eq!(
        metric(&server, "herald_publish_requests_total{key=\"backend\"}").await,
        Some(2)
    );
    assert_eq!(
        metric(&server, "herald_publish_requests_total{key=\"cron\"}").await,
        Some(0)
    );
    assert_eq!(
        metric(&server, "herald_publish_unauthorized_total").await,
        Some(1)
    );
    server.stop().await;
}

#[tokio::test]
async fn wss_end_to_end_with_a_self_signed_certificate() {
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::crypto::ring;
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("herald-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, generated.cert.pem()).unwrap();
    std::fs::write(&key_path, generated.signing_key.serialize_pem()).unwrap();

    let mut config = token_config();
    config.tls.cert = Some(cert_path);
    config.tls.key = Some(key_path);
    config.routes.push(RouteConfig {
        path: "/open/{user_id}/".into(),
        groups: vec!["user.{user_id}".into()],
        auth: AuthMode::None,
        sub_param: None,
        hook_groups: Vec::new(),
        presence: false,
        origins: Vec::new(),
    });
    let server = start_tls(config).await;

    let mut roots = RootCertStore::empty();
    roots.add(generated.cert.der().clone()).unwrap();
    let client = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(client));
    let tls_connect = || async {
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        tokio::time::timeout(DEADLINE, connector.connect(name, tcp))
            .await
            .expect("tls handshake in time")
            .expect("tls handshake")
    };

    // The API over HTTPS.
    let publish = |group: &'static str, text: &'static str| {
        let tls = tls_connect();
        async move {
            let body = serde_json::json!({"group": group, "text": text}).to_string();
            let request = format!(
                "POST /api/publish HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let mut https = RawWs::new(tls.await);
            let (status, head) = https.request(request.as_bytes()).await;
            assert_eq!(status, 200, "{head}");
        }
    };

    let mut ws = RawWs::new(tls_connect().await);
    ws.upgrade(&format!("/message/7/stream/?token={}", token_for("7")), &[])
        .await;
    publish("user.7", "over wss").await;
    assert_next_text(&mut ws, "over wss").await;

    // A plain-text client on the TLS port gets nothing useful, and the server survives.
    let (status, _) = support::raw_http(server.addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 0);
    let mut ws = RawWs::new(tls_connect().await);
    ws.upgrade("/open/8/", &[]).await;
    publish("user.8", "still serving").await;
    assert_next_text(&mut ws, "still serving").await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TLS server: `TestServer::with_config` polls `/readyz` over plain HTTP, which a TLS
/// port cannot answer, so wait for readiness over TLS here instead.
async fn start_tls(config: Config) -> TestServer {
    TestServer::with_config_unchecked(config).await
}

#[test]
fn cli_mints_tokens_and_serves_https() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let out = Command::new(support::herald_bin())
        .args([
            "token",
            "--sub",
            "42",
            "--groups",
            "user.42, news.*",
            "--ttl",
            "10m",
        ])
        .args(["--secret", SECRET])
        .output()
        .expect("run herald token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let auth = herald::auth::Authenticator::new(&[SECRET.as_bytes().to_vec()], Duration::ZERO);
    let claims = auth.verify(token.trim()).expect("a valid token");
    assert_eq!(claims.sub, "42");
    assert_eq!(
        claims.groups,
        Some(vec!["user.42".to_string(), "news.*".to_string()])
    );
    let left = claims.exp - unix_now();
    assert!((590..=600).contains(&left), "ttl {left}");

    // Without a secret anywhere: a clear error, exit 2.
    let out = Command::new(support::herald_bin())
        .args(["token", "--sub", "42"])
        .env_remove("HERALD_AUTH_SECRET")
        .env_remove("HERALD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no secret"));

    // `serve` with [tls] says https.
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("herald-cli-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), generated.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), generated.signing_key.serialize_pem()).unwrap();
    let mut child = Command::new(support::herald_bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("HERALD_TLS_CERT", dir.join("cert.pem"))
        .env("HERALD_TLS_KEY", dir.join("key.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the one address line; the thread ends with it.
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(10));
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let line = line.expect("herald prints its address within 10 s");
    assert!(
        line.starts_with("listening on https://127.0.0.1:"),
        "{line}"
    );
}
