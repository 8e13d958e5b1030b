//! `RedisCluster`: a real Redis Cluster of 3 masters and 3 replicas on free loopback
//! ports, made with `redis-cli --cluster create`, killed on drop.
//!
//! Each node gets two free ports (client and cluster bus, `--cluster-port`), persistence
//! off, `--cluster-node-timeout 1000` so that a killed master's replica is promoted within
//! a few seconds. Every wait has a deadline and panics with what it waited for.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Value;

use crate::redis::{find_binary, free_port, make_dir, ping};

/// Masters in the cluster.
pub const MASTERS: usize = 3;
/// Time allowed for the nodes to start and the cluster to form.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of one command on one node.
const CMD_TIMEOUT: Duration = Duration::from_secs(5);
/// Node timeout of the cluster (ms): a dead master is failed over soon after it.
const NODE_TIMEOUT_MS: u64 = 1000;

/// One `redis-server --cluster-enabled yes` process.
#[derive(Debug)]
struct Node {
    port: u16,
    child: Option<Child>,
}

/// A running Redis Cluster; dropping it kills every node and removes their directory.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

/// One master and the slots it serves, from `CLUSTER SLOTS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Master {
    pub port: u16,
    pub ranges: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts 6 nodes and forms a cluster of 3 masters with one replica each; returns once
    /// every node reports `cluster_state:ok` and every replica's link to its master is up.
    ///
    /// # Panics
    ///
    /// When `redis-server` or `redis-cli` are missing, or the cluster does not form within
    /// 60 s.
    pub fn start() -> Self {
        let binary = find_binary();
        let dir = make_dir();
        let mut cluster = Self {
            nodes: Vec::new(),
            dir,
        };
        let deadline = Instant::now() + FORM_TIMEOUT;
        let mut taken = std::collections::HashSet::new();
        for _ in 0..MASTERS * 2 {
            let node = cluster.start_node(&binary, &mut taken, deadline);
            cluster.nodes.push(node);
        }
        let cli = binary.with_file_name("redis-cli");
        let cli = if cli.is_file() {
            cli
        } else {
            PathBuf::from("redis-cli")
        };
        let mut create = Command::new(cli);
        create.args(["--cluster", "create"]);
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = create.spawn().expect("spawning redis-cli --cluster create");
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for redis-cli") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-cli --cluster create did not finish within {FORM_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let output = child.wait_with_output().expect("redis-cli output");
        assert!(
            status.success(),
            "redis-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_healthy(deadline);
        cluster
    }

    /// Starts a node and waits for its `PING`; a node that exits at once (another
    /// process took one of its ports between `free_port` and its bind) is started again
    /// on other ports, a few times.
    fn start_node(
        &self,
        binary: &PathBuf,
        taken: &mut std::collections::HashSet<u16>,
        deadline: Instant,
    ) -> Node {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            let mut node = self.spawn_node(binary, taken);
            loop {
                // The answer must come from this child, not from a server of another
                // test that took the port first.
                let pid = node.child.as_ref().map(Child::id);
                if ping(node.port)
                    && pid.is_some_and(|pid| {
                        cmd_text(node.port, &["INFO", "server"])
                            .is_some_and(|info| info.contains(&format!("process_id:{pid}\r\n")))
                    })
                {
                    return node;
                }
                let exited = node
                    .child
                    .as_mut()
                    .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
                if exited {
                    node.child = None;
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} answers PING: not by the deadline",
                    node.port
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!(
            "redis-server (cluster node) exited at start {ATTEMPTS} times; see {}",
            self.dir.display()
        );
    }

    fn spawn_node(&self, binary: &PathBuf, taken: &mut std::collections::HashSet<u16>) -> Node {
        let mut pick = || loop {
            let port = free_port();
            if taken.insert(port) {
                return port;
            }
        };
        let port = pick();
        let bus = pick();
        let log = std::fs::File::create(self.dir.join(format!("redis-{port}.log")))
            .expect("creating a node log");
        let log_err = log.try_clone().expect("cloning a log handle");
        let child = Command::new(binary)
            .arg("--port")
            .arg(port.to_string())
            .arg("--cluster-port")
            .arg(bus.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(format!("nodes-{port}.conf"))
            .arg("--cluster-node-timeout")
            .arg(NODE_TIMEOUT_MS.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("spawning redis-server");
        Node {
            port,
            child: Some(child),
        }
    }

    /// Waits until every running node reports `cluster_state:ok` with every slot served
    /// and every running replica's link to its master is up.
    ///
    /// # Panics
    ///
    /// At `deadline`.
    pub fn wait_healthy(&self, deadline: Instant) {
        let ports = self.running_ports();
        wait_for("every node reports cluster_state:ok", deadline, || {
            ports.iter().all(|&port| {
                cmd_text(port, &["CLUSTER", "INFO"]).is_some_and(|info| {
                    info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                })
            })
        });
        wait_for("every replica is in sync", deadline, || {
            ports.iter().all(|&port| {
                cmd_text(port, &["INFO", "replication"]).is_some_and(|info| {
                    info.contains("role:master") || info.contains("master_link_status:up")
                })
            })
        });
    }

    /// The URL a layer uses: `redis+cluster://` naming two of the nodes as seeds.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .take(2)
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The client port of every node still running.
    pub fn running_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// The masters and their slots, as a running node sees them.
    ///
    /// # Panics
    ///
    /// When no running node answers `CLUSTER SLOTS`.
    pub fn masters(&self) -> Vec<Master> {
        for port in self.running_ports() {
            if let Some(Value::Array(entries)) = cmd(port, &["CLUSTER", "SLOTS"]) {
                let mut by_port: BTreeMap<u16, Vec<(u16, u16)>> = BTreeMap::new();
                for entry in entries {
                    let Value::Array(parts) = entry else { continue };
                    let (Some(Value::Int(lo)), Some(Value::Int(hi)), Some(Value::Array(node))) =
                        (parts.first(), parts.get(1), parts.get(2))
                    else {
                        continue;
                    };
                    let Some(Value::Int(p)) = node.get(1) else {
                        continue;
                    };
                    let (Ok(p), Ok(lo), Ok(hi)) =
                        (u16::try_from(*p), u16::try_from(*lo), u16::try_from(*hi))
                    else {
                        continue;
                    };
                    by_port.entry(p).or_default().push((lo, hi));
                }
                return by_port
                    .into_iter()
                    .map(|(port, mut ranges)| {
                        ranges.sort_unstable();
                        Master { port, ranges }
                    })
                    .collect();
            }
        }
        panic!("no running node answered CLUSTER SLOTS");
    }

    /// The slot of a key or shard channel name (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, name: &str) -> u16 {
        let port = self.running_ports()[0];
        match cmd(port, &["CLUSTER", "KEYSLOT", name]) {
            Some(Value::Int(slot)) => u16::try_from(slot).expect("a slot"),
            other => panic!("CLUSTER KEYSLOT {name}: {other:?}"),
        }
    }

    /// The port of the master serving `slot`.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        self.masters()
            .into_iter()
            .find(|m| m.ranges.iter().any(|&(lo, hi)| lo <= slot && slot <= hi))
            .map(|m| m.port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// SIGKILLs the node on `port`.
    pub fn kill(&mut self, port: u16) {
        let node = self.node_mut(port);
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the node on `port` (SIGSTOP).
    pub fn pause(&self, port: u16) {
        self.signal(port, "-STOP");
    }

    /// Lets a paused node run again (SIGCONT).
    pub fn resume(&self, port: u16) {
        self.signal(port, "-CONT");
    }

    /// The pid of the node on `port`, e.g. to read its CPU time from `/proc`.
    pub fn pid(&self, port: u16) -> Option<u32> {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .and_then(|n| n.child.as_ref())
            .map(Child::id)
    }

    fn signal(&self, port: u16, signal: &str) {
        let pid = self.pid(port).expect("the node is running");
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// Waits until a running node other than `dead` serves every slot `dead` served, and
    /// the running nodes report `cluster_state:ok`.
    ///
    /// # Panics
    ///
    /// When that does not happen within `limit`.
    pub fn wait_failover(&self, dead: u16, limit: Duration) {
        let deadline = Instant::now() + limit;
        let ports = self.running_ports();
        wait_for(
            &format!("a replica replaced master {dead}"),
            deadline,
            || {
                ports.iter().all(|&port| {
                    cmd_text(port, &["CLUSTER", "INFO"])
                        .is_some_and(|info| info.contains("cluster_state:ok"))
                }) && std::panic::catch_unwind(|| self.masters())
                    .is_ok_and(|masters| masters.iter().all(|m| m.port != dead))
            },
        );
    }

    /// Moves `slot` with its keys to the master on `to`, the way `redis-cli --cluster
    /// reshard` does: `SETSLOT IMPORTING` on the target, `MIGRATING` on the source,
    /// `MIGRATE` of the keys in batches, then `SETSLOT NODE` on the target, the source and
    /// the other masters. `between` runs after each step (e.g. to let publishes happen).
    ///
    /// # Panics
    ///
    /// On any refused command, or when the slot is already on `to`.
    pub fn migrate_slot(&self, slot: u16, to: u16, mut between: impl FnMut()) {
        let from = self.master_of_slot(slot);
        assert_ne!(from, to, "slot {slot} is already on {to}");
        let id = |port: u16| cmd_text(port, &["CLUSTER", "MYID"]).expect("CLUSTER MYID");
        let (from_id, to_id) = (id(from), id(to));
        let slot_text = slot.to_string();
        must(
            to,
            &["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &from_id],
        );
        must(
            from,
            &["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &to_id],
        );
        between();
        loop {
            let keys = match cmd(from, &["CLUSTER", "GETKEYSINSLOT", &slot_text, "100"]) {
                Some(Value::Array(keys)) => keys,
                other => panic!("CLUSTER GETKEYSINSLOT: {other:?}"),
            };
            if keys.is_empty() {
                break;
            }
            let keys: Vec<String> = keys
                .into_iter()
                .filter_map(|k| match k {
                    Value::BulkString(b) => String::from_utf8(b).ok(),
                    _ => None,
                })
                .collect();
            let to_port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            must(from, &args);
            between();
        }
        must(to, &["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id]);
        must(from, &["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id]);
        for master in self.masters() {
            if master.port != from && master.port != to {
                // Best effort: gossip tells the others anyway.
                let _ = cmd(
                    master.port,
                    &["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id],
                );
            }
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // SIGKILL also ends a stopped process.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(what: &str, deadline: Instant, mut condition: impl FnMut() -> bool) {
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not by the deadline");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One command on one node over a fresh connection; `None` on any failure.
pub fn cmd(port: u16, args: &[&str]) -> Option<Value> {
    let (name, rest) = args.split_first()?;
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let mut conn = client.get_connection_with_timeout(CMD_TIMEOUT).ok()?;
    conn.set_read_timeout(Some(CMD_TIMEOUT)).ok()?;
    conn.set_write_timeout(Some(CMD_TIMEOUT)).ok()?;
    redis::cmd(name).arg(rest).query::<Value>(&mut conn).ok()
}

fn cmd_text(port: u16, args: &[&str]) -> Option<String> {
    match cmd(port, args)? {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

fn must(port: u16, args: &[&str]) {
    let (name, rest) = args.split_first().expect("a command");
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("a url");
    let mut conn = client
        .get_connection_with_timeout(CMD_TIMEOUT)
        .unwrap_or_else(|e| panic!("connecting to {port}: {e}"));
    conn.set_read_timeout(Some(CMD_TIMEOUT))
        .expect("read timeout");
    redis::cmd(name)
        .arg(rest)
        .query::<Value>(&mut conn)
        .unwrap_or_else(|e| panic!("{args:?} on {port}: {e}"));
}
