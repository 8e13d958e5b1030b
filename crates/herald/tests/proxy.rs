//! herald behind real nginx, configured by the shipped `deploy/nginx/herald.conf` (only its
//! upstream address and listen port are replaced): WebSockets and the publish API pass
//! through, herald sees the client's address (not nginx's) through X-Forwarded-For and
//! `limits.trusted_proxies`, and a graceful restart of herald behind it reaches the client.
//!
//! Needs the `nginx` binary (Debian `nginx-light`; `scripts/test rust` installs it). Without
//! it every test here fails, naming the fix.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use support::{Received, WsClient, herald_bin, http};

/// The shipped configuration, exercised as it is.
const SHIPPED_CONF: &str = include_str!("../../../deploy/nginx/herald.conf");
/// What the shipped file says, replaced by the test's addresses.
const SHIPPED_UPSTREAM: &str = "server 127.0.0.1:8000;";
const SHIPPED_LISTEN: &str = "listen 80;";

const API_KEY: &str = "proxy-test-key-0123456789abcdef";
const DEADLINE: Duration = Duration::from_secs(10);

/// Two client addresses other than nginx's own 127.0.0.1 (all of 127/8 is loopback on Linux).
const CLIENT_A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7));
const CLIENT_B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 8));

/// A private directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "herald-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `sig` to `pid` with kill(1) (the workspace forbids unsafe, so no libc).
fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

fn wait_exit(child: &mut Child, deadline: Duration, what: &str) -> ExitStatus {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < until,
            "{what} did not exit within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `herald serve` process; killed on drop if still running.
struct Herald {
    child: Child,
    addr: SocketAddr,
}

impl Herald {
    /// Starts herald on `listen` with settings from `env`; its stderr goes to `log`.
    fn start(listen: &str, env: &[(&str, &str)], log: &Path) -> Self {
        let mut cmd = Command::new(herald_bin());
        cmd.arg("serve").arg("--listen").arg(listen);
        cmd.env("RUST_LOG", "herald=debug")
            .env("HERALD_API_KEY", API_KEY)
            .env("HERALD_LIMITS_TRUSTED_PROXIES", "127.0.0.1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open herald log");
        cmd.stderr(Stdio::from(log));
        let (child, addr) = support::spawn_serve(cmd);
        let addr = addr.parse().expect("herald prints a socket address");
        Self { child, addr }
    }

    /// The exit status, once herald has exited (it drains within its 10 s default).
    fn wait_exit(&mut self) -> ExitStatus {
        wait_exit(&mut self.child, Duration::from_secs(15), "herald")
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The nginx binary: `$HERALD_NGINX`, else `nginx` on PATH or in /usr/sbin (not on a
/// non-root PATH on Debian).
fn nginx_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("HERALD_NGINX") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx not found on PATH or in /usr/sbin: install it with \
                 `apt-get install nginx-light` (scripts/test rust does), or set HERALD_NGINX"
            )
        })
}

/// Replaces the one occurrence of `from` in `text`, failing if there is not exactly one:
/// the test must notice when the shipped file changes shape.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "deploy/nginx/herald.conf must contain `{from}` exactly once"
    );
    text.replacen(from, to, 1)
}

/// A port free at the moment of asking (nginx binds it right after).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// An nginx master process with the shipped site in front of `upstream`; stopped on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    fn start(dir: &Path, upstream: SocketAddr) -> Self {
        // The free port can be taken between asking and nginx's bind: try a few.
        for _ in 0..3 {
            if let Some(nginx) = Self::start_on(dir, upstream, free_port()) {
                return nginx;
            }
        }
        panic!(
            "nginx could not bind a free port in 3 attempts:\n{}",
            read_log(&dir.join("error.log"))
        );
    }

    /// nginx listening on `port`, or `None` when that port was taken.
    fn start_on(dir: &Path, upstream: SocketAddr, port: u16) -> Option<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let site = replace_once(
            &replace_once(
                SHIPPED_CONF,
                SHIPPED_UPSTREAM,
                &format!("server {upstream};"),
            ),
            SHIPPED_LISTEN,
            &format!("listen {addr};"),
        );
        std::fs::write(dir.join("herald.conf"), site).expect("write site");
        // Under root nginx would run its workers as nobody, who cannot use this private
        // directory for its temporary files.
        let user =
            if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir).expect("stat")) == 0 {
                "user root;\n"
            } else {
                ""
            };
        let d = dir.display();
        let main = format!(
            "{user}worker_processes 1;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
             \x20   access_log {d}/access.log;\n\
             \x20   client_body_temp_path {d}/body;\n\
             \x20   proxy_temp_path {d}/proxy;\n\
             \x20   fastcgi_temp_path {d}/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/uwsgi;\n\
             \x20   scgi_temp_path {d}/scgi;\n\
             \x20   include {d}/herald.conf;\n\
             }}\n"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, main).expect("write nginx.conf");
        let mut child = Command::new(nginx_bin())
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .arg("-g")
            .arg(format!("daemon off; pid {d}/nginx.pid;"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting nginx failed ({e}): install it with `apt-get install nginx-light`")
            });
        let until = Instant::now() + DEADLINE;
        while TcpStream::connect(addr).is_err() {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let log = read_log(&dir.join("error.log"));
                if log.contains(&format!("bind() to {addr} failed (98")) {
                    return None;
                }
                panic!("nginx exited with {status} before listening on {addr}:\n{log}");
            }
            assert!(
                Instant::now() < until,
                "nginx not listening on {addr} within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self {
            child,
            addr,
            dir: dir.to_path_buf(),
        })
    }

    fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// `POST /api/publish` through nginx with the key; returns (status, body).
    async fn publish(&self, body: &str) -> (u16, String) {
        let auth = format!("Bearer {API_KEY}");
        http(
            self.addr,
            "POST",
            "/api/publish",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .await
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers; SIGKILL would orphan them.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let until = Instant::now() + Duration::from_secs(5);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "nginx error log:\n{}",
                read_log(&self.dir.join("error.log"))
            );
        }
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
}

/// herald (with `env`) and nginx in front of it, in one temp dir.
struct Scene {
    herald: Herald,
    nginx: Nginx,
    dir: TempDir,
}

impl Scene {
    fn start(env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("proxy");
        let herald = Herald::start("127.0.0.1:0", env, &dir.0.join("herald.log"));
        let nginx = Nginx::start(&dir.0, herald.addr);
        Self { herald, nginx, dir }
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("herald log:\n{}", read_log(&self.dir.0.join("herald.log")));
        }
    }
}

/// Publishes `text` to `group` through nginx and checks herald's 200.
async fn publish_text(nginx: &Nginx, group: &str, text: &str) {
    let (status, body) = nginx
        .publish(&format!(r#"{{"group":"{group}","text":"{text}"}}"#))
        .await;
    assert_eq!(status, 200, "publish through nginx: {body}");
}

#[tokio::test]
async fn websocket_through_nginx_receives_a_published_message() {
    let scene = Scene::start(&[]);
    let mut ws = WsClient::connect(&scene.nginx.ws_url("/message/42/stream/"))
        .await
        .expect("WebSocket upgrade through nginx");
    publish_text(&scene.nginx, "user.42", "through the proxy").await;
    assert_eq!(ws.recv_text().await.unwrap(), "through the proxy");
}

#[tokio::test]
async fn publish_api_through_nginx_keeps_herald_answers() {
    let scene = Scene::start(&[]);
    let (status, body) = scene
        .nginx
        .publish(r#"{"group":"user.1","text":"x"}"#)
        .await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    assert!(answer["offset"].is_u64(), "{answer}");

    // Without the key: herald's own 401 with its JSON error, not an nginx page.
    let (status, body) = http(
        scene.nginx.addr,
        "POST",
        "/api/publish",
        &[],
        br#"{"group":"user.1","text":"x"}"#,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
    assert_eq!(error["error"], "unauthorized");

    // Over the 1 MiB limit: nginx refuses it itself, in herald's JSON error shape (herald
    // closes on an oversized Content-Length, which nginx would otherwise report as a 502).
    let big = format!(r#"{{"group":"user.1","text":"{}"}}"#, "a".repeat(1_500_000));
    let (status, body) = scene.nginx.publish(&big).await;
    assert_eq!(status, 413, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
    assert_eq!(error["error"], "payload_too_large");
}

#[tokio::test]
async fn herald_limits_connections_by_the_address_nginx_forwards() {
    // One WebSocket per client address: if herald counted nginx's address (every proxied
    // connection comes from 127.0.0.1), the second client would be refused too.
    let scene = Scene::start(&[("HERALD_LIMITS_MAX_CONNECTIONS_PER_IP", "1")]);
    let mut first =
        WsClient::connect_from(CLIENT_A, &scene.nginx.ws_url("/message/1/stream/"), &[])
            .await
            .unwrap();
    let mut again =
        WsClient::connect_from(CLIENT_A, &scene.nginx.ws_url("/message/2/stream/"), &[])
            .await
            .unwrap();
    assert_eq!(
        again.closed_within(DEADLINE).await.unwrap(),
        1013,
        "a second connection from the same client address is over the per-IP limit"
    );
    let mut other =
        WsClient::connect_from(CLIENT_B, &scene.nginx.ws_url("/message/3/stream/"), &[])
            .await
            .unwrap();
    publish_text(&scene.nginx, "user.3", "to b").await;
    assert_eq!(other.recv_text().await.unwrap(), "to b");
    publish_text(&scene.nginx, "user.1", "to a").await;
    assert_eq!(first.recv_text().await.unwrap(), "to a");
}

#[tokio::test]
async fn a_client_cannot_pick_its_address_through_nginx() {
    // nginx replaces the X-Forwarded-For a client sends: a client claiming another address
    // is still counted as itself.
    let scene = Scene::start(&[("HERALD_LIMITS_MAX_CONNECTIONS_PER_IP", "1")]);
    let mut first =
        WsClient::connect_from(CLIENT_A, &scene.nginx.ws_url("/message/1/stream/"), &[])
            .await
            .unwrap();
    let mut spoofed = WsClient::connect_from(
        CLIENT_A,
        &scene.nginx.ws_url("/message/2/stream/"),
        &[("X-Forwarded-For", "127.0.0.9")],
    )
    .await
    .unwrap();
    assert_eq!(spoofed.closed_within(DEADLINE).await.unwrap(), 1013);
    publish_text(&scene.nginx, "user.1", "still here").await;
    assert_eq!(first.recv_text().await.unwrap(), "still here");
}

#[tokio::test]
async fn graceful_restart_through_nginx() {
    let mut scene = Scene::start(&[]);
    let mut ws = WsClient::connect(&scene.nginx.ws_url("/message/5/stream/"))
        .await
        .unwrap();
    // herald's 1012 (service restart) close frame passes through nginx unchanged.
    let addr = scene.herald.addr;
    signal(scene.herald.child.id(), "TERM");
    assert_eq!(
        ws.recv_within(DEADLINE).await.unwrap(),
        Some(Received::Closed(1012))
    );
    assert_eq!(
        scene.herald.wait_exit().code(),
        Some(0),
        "herald drains and exits 0"
    );

    // A new herald on the same address; nginx sends new connections to it.
    scene.herald = Herald::start(&addr.to_string(), &[], &scene.dir.0.join("herald.log"));
    let until = tokio::time::Instant::now() + DEADLINE;
    while support::get_status(scene.nginx.addr, "/readyz").await != 200 {
        assert!(
            tokio::time::Instant::now() < until,
            "/readyz through nginx not 200 within {DEADLINE:?} of the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut again = WsClient::connect(&scene.nginx.ws_url("/message/5/stream/"))
        .await
        .expect("a new WebSocket through nginx after the restart");
    publish_text(&scene.nginx, "user.5", "after restart").await;
    assert_eq!(again.recv_text().await.unwrap(), "after restart");
}
