//! The `herald` binary as users run it: `serve` prints its address and drains on SIGTERM,
//! `publish` talks to it, a bad configuration exits with 2 and names the key.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{WsClient, herald_bin};

/// A `herald serve` child process; killed on drop if still running.
struct Served {
    child: Child,
    addr: String,
}

impl Served {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(herald_bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stderr(Stdio::null());
        let (child, addr) = support::spawn_serve(cmd);
        Self { child, addr }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let until = std::time::Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < until,
                "herald did not exit within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn publish_cli(addr: &str, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(herald_bin())
        .arg("publish")
        .arg("--server")
        .arg(format!("http://{addr}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald publish");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(data) = stdin {
        input.write_all(data).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("herald publish output")
}

#[tokio::test]
async fn sigterm_closes_clients_with_1012_and_exits_0() {
    let mut served = Served::start(&[], &[]);
    let mut a = WsClient::connect(&format!("ws://{}/message/42/stream/", served.addr))
        .await
        .unwrap();
    let mut b = WsClient::connect(&format!("ws://{}/message/43/stream/", served.addr))
        .await
        .unwrap();
    served.signal("TERM");
    assert_eq!(
        a.closed_within(Duration::from_secs(10)).await.unwrap(),
        1012
    );
    assert_eq!(
        b.closed_within(Duration::from_secs(10)).await.unwrap(),
        1012
    );
    let status = served.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sigint_also_drains() {
    let mut served = Served::start(&[], &[]);
    let mut a = WsClient::connect(&format!("ws://{}/message/1/stream/", served.addr))
        .await
        .unwrap();
    served.signal("INT");
    assert_eq!(
        a.closed_within(Duration::from_secs(10)).await.unwrap(),
        1012
    );
    assert_eq!(served.wait_exit(Duration::from_secs(15)).code(), Some(0));
}

#[tokio::test]
async fn publish_cli_prints_the_offset_and_reports_errors() {
    let served = Served::start(&[], &[("HERALD_API_KEY", "k3y")]);
    let mut client = WsClient::connect(&format!("ws://{}/message/42/stream/", served.addr))
        .await
        .unwrap();

    let out = publish_cli(
        &served.addr,
        &["--api-key", "k3y", "user.42", r#"{"msg":"from cli"}"#],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    assert_eq!(client.recv_text().await.unwrap(), r#"{"msg":"from cli"}"#);

    // Payload from stdin; binary.
    let out = publish_cli(
        &served.addr,
        &["--api-key", "k3y", "user.42"],
        Some(b"piped text\n"),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    assert_eq!(client.recv_text().await.unwrap(), "piped text\n");
    let out = publish_cli(
        &served.addr,
        &["--api-key", "k3y", "--binary", "user.42"],
        Some(&[0, 159, 255]),
    );
    assert!(out.status.success());
    assert_eq!(
        client.recv().await.unwrap(),
        support::Received::Binary(vec![0u8, 159, 255].into())
    );

    // Errors: the server's message and a non-zero exit.
    let out = publish_cli(&served.addr, &["--api-key", "wrong", "user.42", "x"], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("API key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = publish_cli(&served.addr, &["--api-key", "k3y", "bad group", "x"], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("group"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = publish_cli("127.0.0.1:1", &["user.42", "x"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

#[test]
fn invalid_config_exits_2_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("herald-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        (
            "[limits]\nmax_connections = \"many\"\n",
            &[],
            "limits.max_connections",
        ),
        ("[layer]\nkind = \"redis\"\n", &[], "layer.url"),
        (
            "",
            &[("HERALD_HEARTBEAT_INTERVAL", "sometime")],
            "heartbeat.interval",
        ),
        (
            "[[routes]]\npath = \"/a/{id}/\"\ngroups = [\"x.{nope}\"]\n",
            &[],
            "routes[0]",
        ),
        ("listen = [", &[], "herald.toml"),
    ];
    for (i, (toml, env, key)) in cases.iter().enumerate() {
        let file = dir.join(format!("{i}-herald.toml"));
        std::fs::write(&file, toml).unwrap();
        let mut cmd = Command::new(herald_bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&file);
        for (k, v) in *env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(key), "{key} named in {stderr}");
    }
}

#[test]
fn help_is_useful() {
    let out = Command::new(herald_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["serve", "publish", "/message/{user_id}/stream/"] {
        assert!(help.contains(word), "{word} in\n{help}");
    }
    let out = Command::new(herald_bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--config") && help.contains("--listen"),
        "{help}"
    );
}

#[test]
fn version_names_the_crate_version_and_the_git_revision() {
    let out = Command::new(herald_bin())
        .arg("--version")
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let expected_revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    assert!(
        text.starts_with(&format!("herald {} (", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    if let Some(revision) = expected_revision {
        // Built from this checkout (the test command builds before it tests).
        assert!(text.contains(&revision[..7]), "{text} vs {revision}");
    }
}

#[test]
fn config_check_prints_the_effective_configuration_without_secrets() {
    let dir = std::env::temp_dir().join(format!("herald-check-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("herald.toml");
    std::fs::write(
        &file,
        "[api]\nkey = \"file-secret-key\"\n[limits]\nmax_batch = 7\n",
    )
    .expect("write");
    let out = Command::new(herald_bin())
        .args(["config", "check", "--config"])
        .arg(&file)
        .env("HERALD_LIMITS_MAX_CONNECTIONS", "123")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("max_batch = 7"), "the file: {text}");
    assert!(
        text.contains("max_connections = 123"),
        "the environment: {text}"
    );
    assert!(text.contains("heartbeat"), "the defaults: {text}");
    assert!(
        !text.contains("file-secret-key"),
        "secrets are redacted: {text}"
    );
    assert!(text.contains("<redacted>"));
    // An invalid configuration: exit 2 and the key.
    std::fs::write(&file, "[limits]\nmax_batch = 0\n").expect("write");
    let out = Command::new(herald_bin())
        .args(["config", "check", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.max_batch"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_default_is_a_complete_loadable_configuration() {
    let out = Command::new(herald_bin())
        .args(["config", "default"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let dir = std::env::temp_dir().join(format!("herald-default-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("herald.toml");
    std::fs::write(&file, &out.stdout).expect("write");
    let check = Command::new(herald_bin())
        .args(["config", "check", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let plain = Command::new(herald_bin())
        .args(["config", "check"])
        .env_remove("HERALD_CONFIG")
        .output()
        .expect("run");
    assert_eq!(
        check.stdout, plain.stdout,
        "the printed defaults are the defaults"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
