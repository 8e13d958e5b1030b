//! `RedisProcess`: a real redis-server on a free port, killed on drop.
//!
//! Redis has no "port 0 = pick one" mode, so a free port is found by binding
//! `127.0.0.1:0` and dropping the listener. Another process may take the port in between;
//! that race is detected from the server's log ("Address already in use") and retried.
//! The machine's shared port 6379 is never used.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a started server may take to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How many ports are tried when another process grabs the chosen one first.
const PORT_ATTEMPTS: usize = 3;
/// Deadline of one [`RedisProcess::cmd`] call, connection included.
const CMD_TIMEOUT: Duration = Duration::from_secs(5);

/// A `redis-server` child process bound to `127.0.0.1` on its own port, with persistence
/// off and its working files in a private temporary directory.
///
/// Dropping it kills the server and waits for it, then removes the directory.
#[derive(Debug)]
pub struct RedisProcess {
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A key prefix no other test uses, so tests can share one server without colliding.
pub fn unique_prefix() -> String {
    format!("test-{:016x}", fastrand::u64(..))
}

impl RedisProcess {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// When `redis-server` cannot be found (set `HERALD_REDIS_SERVER` or run
    /// `apt-get install -y redis-server`) or does not come up within 5 s.
    pub fn start() -> Self {
        let binary = find_binary();
        let dir = make_dir();
        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port();
            let mut process = Self {
                binary: binary.clone(),
                port,
                dir: dir.clone(),
                child: None,
            };
            match process.spawn_and_wait() {
                Ok(()) => return process,
                Err(Startup::PortTaken) if attempt < PORT_ATTEMPTS => {
                    // Forget this attempt without removing the shared directory.
                    process.dir = PathBuf::new();
                    continue;
                }
                Err(Startup::PortTaken) => {
                    panic!("redis-server: no free port after {PORT_ATTEMPTS} attempts")
                }
                Err(Startup::Failed(why)) => panic!("redis-server did not start: {why}"),
            }
        }
        unreachable!("the loop returns or panics on its last attempt")
    }

    /// The URL layers connect to: `redis://127.0.0.1:{port}/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The TCP port the server listens on (kept across [`stop`](Self::stop) and
    /// [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server and waits for it to exit. The port stays reserved for this value:
    /// [`restart`](Self::restart) starts again on it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL also ends a paused process, so no resume is needed first.
            // The process may already be gone; either way, reap it so no zombie stays.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs, then starts a new one on the same port with no data:
    /// what a Redis restart without persistence looks like to its clients.
    ///
    /// # Panics
    ///
    /// When the new server does not answer `PING` within 5 s.
    pub fn restart(&mut self) {
        self.stop();
        // The old server's listening socket closes with the process, but the kernel can
        // take a moment to release it; a port clash here is worth a few quick retries.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(Startup::PortTaken) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(Startup::PortTaken) => panic!("redis-server: port {} stayed taken", self.port),
                Err(Startup::Failed(why)) => panic!("redis-server did not restart: {why}"),
            }
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered, which
    /// is what a hung or partitioned Redis looks like. [`resume`](Self::resume) undoes it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [`pause`](Self::pause)d server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is not running");
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("running kill {signal}: {e}"));
        assert!(status.success(), "kill {signal} failed: {status}");
    }

    /// Whether the server process is running (not stopped and not crashed).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Runs one raw command on a fresh connection, for assertions, e.g.
    /// `redis.cmd(&["PUBSUB", "CHANNELS", "prefix:*"]).await`.
    ///
    /// # Panics
    ///
    /// On a connection error, a Redis error reply, or no answer within 5 s.
    pub async fn cmd(&self, args: &[&str]) -> redis::Value {
        let (name, rest) = args.split_first().expect("cmd needs a command name");
        let url = self.url();
        let run = async {
            let client = redis::Client::open(url.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd(name)
                .arg(rest)
                .query_async::<redis::Value>(&mut conn)
                .await
        };
        match tokio::time::timeout(CMD_TIMEOUT, run).await {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => panic!("redis command {args:?} failed: {e}"),
            Err(_) => panic!("redis command {args:?} got no answer within {CMD_TIMEOUT:?}"),
        }
    }

    /// Like [`cmd`](Self::cmd), for replies that are arrays of strings (`KEYS`,
    /// `PUBSUB CHANNELS`): the strings, sorted.
    pub async fn cmd_strings(&self, args: &[&str]) -> Vec<String> {
        let value = self.cmd(args).await;
        let mut out: Vec<String> = match redis::from_redis_value(value) {
            Ok(strings) => strings,
            Err(e) => panic!("redis command {args:?}: reply is not a list of strings: {e}"),
        };
        out.sort();
        out
    }

    fn spawn_and_wait(&mut self) -> Result<(), Startup> {
        let log_path = self.dir.join(format!("redis-{}.log", self.port));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| Startup::Failed(format!("creating {}: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Startup::Failed(format!("cloning log handle: {e}")))?;
        let child = Command::new(&self.binary)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| Startup::Failed(format!("spawning {}: {e}", self.binary.display())))?;
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                if log.contains("Address already in use") {
                    return Err(Startup::PortTaken);
                }
                return Err(Startup::Failed(format!(
                    "exited with {status}; log:\n{log}"
                )));
            }
            if ping(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(Startup::Failed(format!(
                    "no PONG within {READY_TIMEOUT:?}; log:\n{log}"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.stop();
        if !self.dir.as_os_str().is_empty() {
            // Best effort: a leftover temp directory is harmless.
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

enum Startup {
    PortTaken,
    Failed(String),
}

pub(crate) fn find_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HERALD_REDIS_SERVER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "HERALD_REDIS_SERVER={} is not a file",
            path.display()
        );
        return path;
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| is_executable(candidate))
    });
    found.unwrap_or_else(|| {
        panic!(
            "redis-server not found on PATH: install it with `apt-get install -y redis-server` \
             or point HERALD_REDIS_SERVER at the binary"
        )
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub(crate) fn make_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // Relaxed: the counter only has to be unique within this process.
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "herald-redis-{}-{n}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// A port that was free a moment ago (see the module doc for the race this leaves).
pub(crate) fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = listener
            .local_addr()
            .expect("local address of a bound listener")
            .port();
        if port != 6379 {
            return port;
        }
    }
}

/// One raw `PING` over a short-lived connection; `true` on `+PONG`.
pub(crate) fn ping(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let timeout = Some(Duration::from_millis(500));
    if stream.set_read_timeout(timeout).is_err() || stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}
