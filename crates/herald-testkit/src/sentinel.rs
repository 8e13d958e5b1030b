//! `SentinelSet`: a real Redis Sentinel deployment on free loopback ports, killed on drop:
//! one master, two replicas (`redis-server --replicaof`) and three `redis-sentinel`
//! processes watching them with a 1 s `down-after-milliseconds`, so a killed master is
//! replaced within a few seconds. Every wait has a deadline.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::redis::{find_binary, free_port, make_dir, ping};

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "herald-test";
/// How long a started process may take to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of one command.
const CMD_TIMEOUT: Duration = Duration::from_secs(3);

/// One process of the set.
#[derive(Debug)]
struct Process {
    port: u16,
    child: Option<Child>,
}

impl Process {
    fn signal(&self, signal: &str) {
        let Some(child) = self.child.as_ref() else {
            panic!("process on port {} is not running", self.port);
        };
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("running kill {signal}: {e}"));
        assert!(status.success(), "kill {signal} failed: {status}");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL also ends a stopped process; reap it so no zombie stays.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A master, two replicas and three sentinels (see the module doc).
#[derive(Debug)]
pub struct SentinelSet {
    dir: PathBuf,
    /// Data servers; the first one starts as the master.
    servers: Vec<Process>,
    sentinels: Vec<Process>,
}

impl SentinelSet {
    /// Starts the set and waits until the replicas are in sync and every sentinel knows
    /// both replicas and the two other sentinels (so a failover can be elected).
    ///
    /// # Panics
    ///
    /// When a binary is missing or the set does not come up within its deadlines.
    pub async fn start() -> Self {
        let binary = find_binary();
        let dir = make_dir();
        let mut set = Self {
            dir,
            servers: Vec::new(),
            sentinels: Vec::new(),
        };
        let master = set.spawn_server(&binary, None);
        for _ in 0..2 {
            set.spawn_server(&binary, Some(master));
        }
        for _ in 0..3 {
            set.spawn_sentinel(&binary, master);
        }
        set.wait_settled(Duration::from_secs(30)).await;
        set
    }

    fn spawn_server(&mut self, binary: &PathBuf, master: Option<u16>) -> u16 {
        let port = free_port();
        let log = self.log(&format!("redis-{port}.log"));
        let mut cmd = Command::new(binary);
        cmd.arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args([
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--dbfilename")
            .arg(format!("dump-{port}.rdb"));
        if let Some(master) = master {
            cmd.args(["--replicaof", "127.0.0.1"])
                .arg(master.to_string());
        }
        let child = spawn(cmd, log);
        self.servers.push(Process {
            port,
            child: Some(child),
        });
        wait_ping(port);
        port
    }

    fn spawn_sentinel(&mut self, binary: &PathBuf, master: u16) {
        let port = free_port();
        let conf = self.dir.join(format!("sentinel-{port}.conf"));
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
             sentinel failover-timeout {MASTER_NAME} 4000\n\
             sentinel parallel-syncs {MASTER_NAME} 2\n",
            dir = self.dir.display()
        );
        std::fs::write(&conf, text).unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
        let log = self.log(&format!("sentinel-{port}.log"));
        let mut cmd = Command::new(binary);
        cmd.arg(&conf).arg("--sentinel");
        let child = spawn(cmd, log);
        self.sentinels.push(Process {
            port,
            child: Some(child),
        });
        wait_ping(port);
    }

    fn log(&self, name: &str) -> std::fs::File {
        let path = self.dir.join(name);
        std::fs::File::create(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()))
    }

    /// The layer URL: `redis+sentinel://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/herald-test/0`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}/0", hosts.join(","))
    }

    /// The ports of the data servers (the first one started as the master).
    pub fn server_ports(&self) -> Vec<u16> {
        self.servers.iter().map(|s| s.port).collect()
    }

    /// The ports of the sentinels.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The master's port as the first answering sentinel names it.
    pub async fn master_port(&self) -> Option<u16> {
        for sentinel in &self.sentinels {
            if sentinel.child.is_none() {
                continue;
            }
            let reply = try_cmd(
                sentinel.port,
                &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
            )
            .await;
            if let Some(Ok(addr)) = reply.map(redis::from_redis_value::<Vec<String>>)
                && let Some(port) = addr.get(1).and_then(|p| p.parse().ok())
            {
                return Some(port);
            }
        }
        None
    }

    /// The role (`master`/`slave`) the server on `port` reports, `None` if it does not answer.
    pub async fn role(&self, port: u16) -> Option<String> {
        let reply = try_cmd(port, &["ROLE"]).await?;
        let items: Vec<redis::Value> = redis::from_redis_value(reply).ok()?;
        redis::from_redis_value(items.first()?.clone()).ok()
    }

    /// Runs one command on the server (or sentinel) on `port`.
    ///
    /// # Panics
    ///
    /// On an error or no answer within 3 s.
    pub async fn cmd(&self, port: u16, args: &[&str]) -> redis::Value {
        match try_cmd(port, args).await {
            Some(value) => value,
            None => panic!("{args:?} on port {port} failed or got no answer"),
        }
    }

    /// Cuts the master on `port` off from its replicas: it requires a password they do
    /// not have and drops their links, so what it acknowledges next lives on it alone
    /// (until it dies: the lost writes of an asynchronous failover). Its other clients
    /// keep their authenticated connections.
    ///
    /// # Panics
    ///
    /// When the master does not take the commands within 3 s.
    pub async fn cut_replication(&self, port: u16) {
        let run = async {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("CONFIG")
                .arg(&["SET", "requirepass", "cut-off"])
                .query_async::<()>(&mut conn)
                .await?;
            redis::cmd("CLIENT")
                .arg(&["KILL", "TYPE", "replica"])
                .query_async::<redis::Value>(&mut conn)
                .await
        };
        match tokio::time::timeout(CMD_TIMEOUT, run).await {
            Ok(Ok(_)) => {}
            other => panic!("cutting replication off on port {port}: {other:?}"),
        }
    }

    /// SIGKILLs the data server on `port`.
    pub fn kill_server(&mut self, port: u16) {
        self.server(port).kill();
    }

    /// SIGKILLs the sentinel on `port`.
    pub fn kill_sentinel(&mut self, port: u16) {
        match self.sentinels.iter_mut().find(|s| s.port == port) {
            Some(sentinel) => sentinel.kill(),
            None => panic!("no sentinel on port {port}"),
        }
    }

    /// SIGSTOPs the sentinel on `port`: it accepts connections and answers nothing.
    pub fn pause_sentinel(&self, port: u16) {
        match self.sentinels.iter().find(|s| s.port == port) {
            Some(sentinel) => sentinel.signal("-STOP"),
            None => panic!("no sentinel on port {port}"),
        }
    }

    /// SIGSTOPs the data server on `port` (it keeps its connections but answers nothing).
    pub fn pause_server(&self, port: u16) {
        self.server_ref(port).signal("-STOP");
    }

    /// SIGCONTs a paused data server.
    pub fn resume_server(&self, port: u16) {
        self.server_ref(port).signal("-CONT");
    }

    fn server(&mut self, port: u16) -> &mut Process {
        self.servers
            .iter_mut()
            .find(|s| s.port == port)
            .unwrap_or_else(|| panic!("no server on port {port}"))
    }

    fn server_ref(&self, port: u16) -> &Process {
        self.servers
            .iter()
            .find(|s| s.port == port)
            .unwrap_or_else(|| panic!("no server on port {port}"))
    }

    /// Waits until the sentinels name a master other than `old` and that server says it
    /// is a master; returns its port and when this was first seen.
    ///
    /// # Panics
    ///
    /// After `limit` without one.
    pub async fn wait_new_master(&self, old: u16, limit: Duration) -> (u16, Instant) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(port) = self.master_port().await
                && port != old
                && self.role(port).await.as_deref() == Some("master")
            {
                return (port, Instant::now());
            }
            assert!(Instant::now() < deadline, "no new master within {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the master's replicas are all in sync and every sentinel sees the
    /// replicas and the other sentinels.
    async fn wait_settled(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let master = self.servers[0].port;
        loop {
            let mut settled = true;
            for replica in &self.servers[1..] {
                let info = try_cmd(replica.port, &["INFO", "replication"])
                    .await
                    .and_then(|v| redis::from_redis_value::<String>(v).ok())
                    .unwrap_or_default();
                settled &= info.contains("master_link_status:up");
            }
            for sentinel in &self.sentinels {
                for (what, want) in [("replicas", 2), ("sentinels", 2)] {
                    let n = try_cmd(sentinel.port, &["SENTINEL", what, MASTER_NAME])
                        .await
                        .and_then(|v| redis::from_redis_value::<Vec<redis::Value>>(v).ok())
                        .map_or(0, |v| v.len());
                    settled &= n >= want;
                }
            }
            if settled {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sentinel set (master {master}) not settled within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether every replica of the current master acknowledged everything it was sent:
    /// `WAIT numreplicas 0` with a short timeout.
    pub async fn replicas_in_sync(&self, master: u16, replicas: usize) -> bool {
        matches!(
            try_cmd(master, &["WAIT", &replicas.to_string(), "1000"]).await,
            Some(redis::Value::Int(n)) if n >= replicas as i64
        )
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for process in self.sentinels.iter_mut().chain(self.servers.iter_mut()) {
            process.kill();
        }
        // Best effort: a leftover temp directory is harmless.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn(mut cmd: Command, log: std::fs::File) -> Child {
    let err = log.try_clone().expect("cloning a log handle");
    cmd.stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"))
}

fn wait_ping(port: u16) {
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    while !ping(port) {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing answered PING on port {port} within {READY_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One command on a fresh connection; `None` on any error or no answer within 3 s.
async fn try_cmd(port: u16, args: &[&str]) -> Option<redis::Value> {
    let (name, rest) = args.split_first()?;
    let run = async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd(name)
            .arg(rest)
            .query_async::<redis::Value>(&mut conn)
            .await
    };
    match tokio::time::timeout(CMD_TIMEOUT, run).await {
        Ok(Ok(value)) => Some(value),
        _ => None,
    }
}
