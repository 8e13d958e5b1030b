//! Shared harness of the bridge's integration tests: the Python (Django) peer, a layer
//! that counts publishes, and deadline helpers.
#![allow(dead_code)]

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::{Epoch, GroupName, History, Layer, LayerError, Payload, Position};
use herald_django::{DjangoBridge, DjangoConfig};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio_util::sync::CancellationToken;

/// How long any single wait in these tests may take.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn group(name: &str) -> GroupName {
    GroupName::new(name).unwrap()
}

/// The interpreter of the venv holding Django + channels + channels_redis + daphne:
/// `HERALD_PYTHON`, else `<repo>/.venv/bin/python`. Missing is a failure, never a skip.
pub fn python() -> PathBuf {
    let path = match std::env::var_os("HERALD_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => repo_root().join(".venv/bin/python"),
    };
    if !path.exists() {
        missing_python(&format!("{} does not exist", path.display()));
    }
    path
}

/// Fails the test with the command that fixes it.
pub fn missing_python(why: &str) -> ! {
    panic!(
        "no Python with Django Channels for the django bridge tests ({why}).\n\
         Set HERALD_PYTHON to such an interpreter, or create the venv:\n  \
         python3 -m venv {root}/.venv && {root}/.venv/bin/pip install 'channels==4.3.2' \
         'channels-redis==4.3.0' daphne django msgpack 'redis<8' cryptography websockets",
        root = repo_root().display()
    );
}

pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

fn django_dir() -> PathBuf {
    // From the repository root, so other crates' tests can share this project.
    repo_root().join("crates/herald-django/tests/django")
}

/// What the Django side is configured with (mirrors the herald side in each test).
#[derive(Clone, Debug)]
pub struct DjangoSide {
    pub hosts: Vec<String>,
    pub backend: &'static str,
    pub prefix: String,
    pub keys: Vec<String>,
    pub group_expiry: u64,
    pub capacity_json: Option<String>,
}

impl DjangoSide {
    pub fn core(hosts: Vec<String>) -> Self {
        Self {
            hosts,
            backend: "core",
            prefix: "asgi".into(),
            keys: Vec::new(),
            group_expiry: 86400,
            capacity_json: None,
        }
    }

    pub fn pubsub(hosts: Vec<String>) -> Self {
        Self {
            backend: "pubsub",
            ..Self::core(hosts)
        }
    }

    /// herald's config for the same Redis and settings.
    pub fn herald_config(&self) -> DjangoConfig {
        DjangoConfig {
            enabled: true,
            backend: match self.backend {
                "pubsub" => herald_django::Backend::Pubsub,
                _ => herald_django::Backend::Core,
            },
            hosts: self.hosts.clone(),
            prefix: self.prefix.clone(),
            symmetric_encryption_keys: self.keys.clone(),
            group_expiry: self.group_expiry,
            ..DjangoConfig::default()
        }
    }

    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(django_dir())
            .env("DJANGO_SETTINGS_MODULE", "djpeer.settings")
            .env("PYTHONUNBUFFERED", "1")
            // Keep the source tree free of __pycache__ directories.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("HERALD_TEST_HOSTS", self.hosts.join(","))
            .env("HERALD_TEST_BACKEND", self.backend)
            .env("HERALD_TEST_PREFIX", &self.prefix)
            .env("HERALD_TEST_KEYS", self.keys.join(","))
            .env("HERALD_TEST_GROUP_EXPIRY", self.group_expiry.to_string())
            .env(
                "HERALD_TEST_CAPACITY",
                self.capacity_json.clone().unwrap_or_default(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `peer.py ARGS` to completion and returns its JSON lines.
    pub async fn run(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["peer.py"];
        all.extend_from_slice(args);
        let child = self
            .command(&python(), &all)
            .spawn()
            .unwrap_or_else(|e| missing_python(&format!("cannot run it: {e}")));
        let output = within(DEADLINE, child.wait_with_output(), "peer.py to finish")
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "peer.py {args:?} failed: {}",
            output.status
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// `group_send(group, {"type": "notify", "text": text})`, `count` times.
    pub async fn group_send(&self, group: &str, text: &str, count: usize) {
        self.run(&["send", group, text, &count.to_string()]).await;
    }

    /// Starts `peer.py ARGS` and returns it with its output lines.
    pub fn spawn(&self, args: &[&str]) -> Peer {
        let mut all = vec!["peer.py"];
        all.extend_from_slice(args);
        self.spawn_program(&python(), &all)
    }

    fn spawn_program(&self, program: &Path, args: &[&str]) -> Peer {
        let mut child = self
            .command(program, args)
            .spawn()
            .unwrap_or_else(|e| missing_python(&format!("cannot run {}: {e}", program.display())));
        let stdout = child.stdout.take().unwrap();
        Peer {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// daphne serving the test project on a free port; returns it and its port once it
    /// accepts connections.
    pub async fn daphne(&self) -> (Peer, u16) {
        let port = free_port();
        let peer = self.spawn_program(
            &python(),
            &[
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "djpeer.asgi:application",
            ],
        );
        eventually(DEADLINE, "daphne to listen", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        (peer, port)
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running Python process; killed on drop.
pub struct Peer {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    /// The next JSON line, within the deadline.
    pub async fn next(&mut self) -> Value {
        let line = within(
            DEADLINE,
            self.lines.next_line(),
            "a line from the python peer",
        )
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("python peer exited early"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"))
    }

    pub async fn finish(mut self) {
        let status = within(DEADLINE, self.child.wait(), "the python peer to exit")
            .await
            .unwrap();
        assert!(status.success(), "python peer failed: {status}");
    }
}

/// Awaits `future`, failing the test after `limit`.
pub async fn within<T>(limit: Duration, future: impl Future<Output = T>, what: &str) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"))
}

/// Polls `check` every 20 ms until it is true, failing the test after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A layer-like sink shared by several bridges ("nodes"): records every publish.
#[derive(Clone, Debug, Default)]
pub struct CountingLayer {
    published: Arc<Mutex<Vec<(GroupName, Payload)>>>,
}

impl CountingLayer {
    pub fn published(&self) -> Vec<(GroupName, Payload)> {
        self.published.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.published.lock().unwrap().len()
    }
}

impl Layer for CountingLayer {
    fn publish(
        &self,
        group: &GroupName,
        payload: Payload,
    ) -> impl Future<Output = Result<Position, LayerError>> + Send {
        let offset = {
            let mut published = self.published.lock().unwrap();
            published.push((group.clone(), payload));
            published.len() as u64
        };
        async move {
            Ok(Position {
                offset,
                epoch: Epoch::new("test"),
            })
        }
    }

    /// The bridge never publishes with keys: each item is recorded like `publish`.
    async fn publish_idempotent(
        &self,
        items: Vec<herald_core::KeyedItem>,
        _window: std::time::Duration,
    ) -> Result<Vec<herald_core::Published>, (usize, LayerError)> {
        let mut published = Vec::with_capacity(items.len());
        for item in items {
            let position = self
                .publish(&item.group, item.payload)
                .await
                .map_err(|e| (published.len(), e))?;
            published.push(herald_core::Published {
                position,
                duplicate: false,
            });
        }
        Ok(published)
    }

    async fn subscribe(&self, _: &GroupName) -> Result<(), LayerError> {
        Ok(())
    }

    async fn unsubscribe(&self, _: &GroupName) -> Result<(), LayerError> {
        Ok(())
    }

    async fn history(&self, _: &GroupName, _: Option<&Position>) -> Result<History, LayerError> {
        Ok(History {
            current: Position {
                offset: 0,
                epoch: Epoch::new("test"),
            },
            recovered: true,
            messages: Vec::new(),
        })
    }

    /// The bridge has no use for presence: nothing is kept.
    async fn presence_update(
        &self,
        _: &GroupName,
        _: &herald_core::LocalPresence,
        _: Duration,
    ) -> Result<(), LayerError> {
        Ok(())
    }

    async fn presence(&self, _: &GroupName) -> Result<herald_core::Presence, LayerError> {
        Ok(herald_core::Presence::default())
    }

    async fn occupy(&self, _: &GroupName) -> Result<bool, LayerError> {
        Ok(false)
    }

    async fn vacate(&self, _: &GroupName, _: Duration) -> Result<bool, LayerError> {
        Ok(false)
    }

    async fn occupied(&self, _: usize) -> Result<Vec<GroupName>, LayerError> {
        Ok(Vec::new())
    }

    fn is_ready(&self) -> bool {
        true
    }
}

/// Starts `n` bridges ("nodes") on the same config and sink, with `groups` active on each.
pub async fn start_nodes(
    n: usize,
    config: &DjangoConfig,
    sink: &CountingLayer,
    groups: &[&str],
    shutdown: &CancellationToken,
) -> Vec<DjangoBridge> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        let bridge = DjangoBridge::start(config.clone(), sink.clone(), 1 << 20, shutdown.clone())
            .await
            .unwrap();
        for g in groups {
            bridge.group_active(&group(g)).await.unwrap();
        }
        nodes.push(bridge);
    }
    nodes
}

/// Sum of a stat over nodes.
pub fn total(nodes: &[DjangoBridge], stat: impl Fn(&herald_django::DjangoStats) -> u64) -> u64 {
    nodes.iter().map(|n| stat(&n.stats())).sum()
}

/// Stops every node and checks that their tasks end promptly.
pub async fn stop(shutdown: CancellationToken, nodes: Vec<DjangoBridge>) {
    shutdown.cancel();
    for node in nodes {
        within(
            Duration::from_secs(5),
            node.stopped(),
            "bridge tasks to end",
        )
        .await;
    }
}
