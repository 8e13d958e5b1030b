//! `DjangoBridge`: the handle the server holds; it starts the backend's tasks and forwards
//! membership changes and sends to them.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use herald_core::{GroupName, Layer, Payload};
use redis::aio::ConnectionManager;
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::Codec;
use crate::config::{Backend, DjangoConfig};
use crate::error::DjangoError;
use crate::group_map::GroupMap;
use crate::ingest::Ingest;
use crate::keys::Keys;
use crate::stats::{Counters, DjangoStats};
use crate::{core, pubsub};

/// What a [`DjangoBridge::group_send`] did. Drops at capacity are outcomes, not errors:
/// Django's own `group_send` drops the same way, silently; herald counts and logs them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendReport {
    /// core: Django channels in the group (herald's own members excluded). pubsub: the
    /// number of subscribed connections PUBLISH reported (herald's included).
    pub members: usize,
    /// Queue keys written (core: one per Django process; pubsub: 1).
    pub queued: usize,
    /// Queue keys skipped because they were at capacity.
    pub full: usize,
}

/// One Redis shard: a client for dedicated connections and a shared, self-reconnecting
/// connection for ordinary commands, set by the shard's connector task once Redis first
/// answers (the bridge starts, and the server serves, while Django's Redis is down).
pub(crate) struct Shard {
    pub(crate) client: redis::Client,
    pub(crate) conn: OnceLock<ConnectionManager>,
    /// core: whether the shard's drain loop holds a working connection.
    pub(crate) draining: AtomicBool,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the URL, which may hold a password.
        f.write_str("Shard(..)")
    }
}

/// Everything the tasks and the handle share, immutable after start.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: DjangoConfig,
    pub(crate) keys: Keys,
    pub(crate) map: GroupMap,
    pub(crate) codec: Codec,
    pub(crate) shards: Vec<Shard>,
    pub(crate) counters: Arc<Counters>,
    /// Random id of this bridge instance (pubsub claims count per node).
    pub(crate) node_id: String,
    /// Largest payload delivered from Django; larger ones are dropped and counted.
    pub(crate) max_payload_bytes: usize,
}

impl Shared {
    /// The shared command connection of `shard`, or `Disconnected` before Redis first
    /// answered.
    pub(crate) fn conn(&self, shard: usize) -> Result<ConnectionManager, DjangoError> {
        self.shards[shard]
            .conn
            .get()
            .cloned()
            .ok_or(DjangoError::Disconnected { shard })
    }
}

/// The herald groups this node holds, guarded by an async mutex because each change is
/// applied to Redis while holding it: two changes to one group can then never reach Redis
/// in the opposite order.
#[derive(Debug)]
pub(crate) struct ActiveGroups {
    groups: Mutex<HashSet<GroupName>>,
    count: AtomicU64,
    /// Woken when memberships need writing now (a write failed, or a shard connected).
    pub(crate) pending: Notify,
    /// Whether the last membership write succeeded (part of readiness).
    written: AtomicBool,
}

impl Default for ActiveGroups {
    fn default() -> Self {
        Self {
            groups: Mutex::default(),
            count: AtomicU64::new(0),
            pending: Notify::new(),
            written: AtomicBool::new(true),
        }
    }
}

impl ActiveGroups {
    pub(crate) async fn snapshot(&self) -> Vec<GroupName> {
        self.groups.lock().await.iter().cloned().collect()
    }

    /// Records whether memberships are written; `true` when this turned them from
    /// written to failing (so the caller logs once per outage).
    pub(crate) fn set_written(&self, ok: bool) -> bool {
        self.written.swap(ok, Ordering::Relaxed) && !ok
    }
}

#[derive(Debug)]
enum BackendHandle {
    Core,
    Pubsub {
        commands: Vec<mpsc::Sender<pubsub::Command>>,
    },
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    active: Arc<ActiveGroups>,
    backend: BackendHandle,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// The Django bridge of one herald node. Cheap to clone; clones share the tasks.
///
/// See the crate docs for the protocol, the exactly-once design and the Django settings.
#[derive(Clone, Debug)]
pub struct DjangoBridge {
    inner: Arc<Inner>,
}

/// Response timeout of the shared command connections: `group_send` pipelines and
/// scripts are short, but a busy Redis should not turn into spurious errors.
const COMMAND_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

impl DjangoBridge {
    /// Validates `config` and spawns the backend's tasks, which connect to every shard
    /// (retrying with backoff while Redis is unreachable, so a server can start before
    /// Django's Redis) and publish what Django sends to herald's groups into `layer`.
    /// [`DjangoBridge::is_ready`] tells when every shard answers.
    ///
    /// `max_payload_bytes` is the largest message delivered from Django (the server passes
    /// its publish API limit, so one limit holds for both); larger ones are dropped,
    /// counted in `dropped_oversized` and logged once per burst.
    ///
    /// Tasks (all owned by the bridge and ended by `shutdown` or [`DjangoBridge::shutdown`]):
    /// - one connector per shard (until its first connection);
    /// - core: one drain loop per shard, the membership refresher, the backlog watcher;
    /// - pubsub: one subscriber per shard.
    ///
    /// `config.enabled` is not looked at: deciding whether to start is the caller's job.
    /// Fails only when the config is invalid.
    pub async fn start<L: Layer>(
        config: DjangoConfig,
        layer: L,
        max_payload_bytes: usize,
        shutdown: CancellationToken,
    ) -> Result<Self, DjangoError> {
        let map = config.validate()?;
        let mut shards = Vec::with_capacity(config.hosts.len());
        for (index, url) in config.hosts.iter().enumerate() {
            // `validate` opened every URL already; this cannot fail on a valid config.
            let client = redis::Client::open(url.as_str()).map_err(|e| {
                DjangoError::Config(crate::config::InvalidConfig {
                    field: "hosts",
                    reason: e.to_string(),
                })
            })?;
            // One attempt now, so a bridge whose Redis is up is connected when `start`
            // returns; otherwise the connector task keeps trying.
            let conn = OnceLock::new();
            // Bounded, so that an unreachable Redis never holds up the server's start.
            let first = client.get_connection_manager_with_config(manager_config());
            let first = tokio::time::timeout(FIRST_CONNECT, first)
                .await
                .unwrap_or_else(|_| {
                    Err(redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no connection within 1 s",
                    )))
                });
            match first {
                Ok(manager) => {
                    let _ = conn.set(manager);
                }
                Err(error) => tracing::warn!(
                    shard = index,
                    %error,
                    "django bridge cannot reach redis; retrying with backoff (not ready until it answers)"
                ),
            }
            shards.push(Shard {
                client,
                conn,
                draining: AtomicBool::new(false),
            });
        }
        let fernet_ttl = match config.backend {
            // channels_redis' core layer accepts tokens up to expiry + 10 s old.
            Backend::Core => Some(config.expiry + 10),
            Backend::Pubsub => None,
        };
        let codec = Codec::new(
            config.effective_prefix_length(),
            &config.symmetric_encryption_keys,
            fernet_ttl,
        );
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            keys: Keys::new(&config.prefix, &config.channel_prefix),
            map,
            codec,
            shards,
            counters: counters.clone(),
            // The process id first: an operator (or a test) can tell from the drain lease's
            // value which process holds it.
            node_id: format!("{}-{:016x}", std::process::id(), fastrand::u64(..)),
            max_payload_bytes,
            config,
        });
        // A child token: the bridge can be stopped alone, and stops with the server.
        let shutdown = shutdown.child_token();
        let ingest = Arc::new(Ingest {
            layer,
            counters,
            shutdown: shutdown.clone(),
        });
        let active = Arc::new(ActiveGroups::default());
        let tracker = TaskTracker::new();
        for shard in (0..shared.shards.len()).filter(|&s| shared.shards[s].conn.get().is_none()) {
            tracker.spawn(connect_shard(
                shared.clone(),
                active.clone(),
                shard,
                shutdown.clone(),
            ));
        }
        let backend = match shared.config.backend {
            Backend::Core => {
                for shard in 0..shared.shards.len() {
                    tracker.spawn(core::drain_shard(
                        shared.clone(),
                        ingest.clone(),
                        shard,
                        shutdown.clone(),
                    ));
                }
                tracker.spawn(core::refresh_memberships(
                    shared.clone(),
                    active.clone(),
                    shutdown.clone(),
                ));
                tracker.spawn(core::watch_backlog(shared.clone(), shutdown.clone()));
                BackendHandle::Core
            }
            Backend::Pubsub => {
                let mut commands = Vec::with_capacity(shared.shards.len());
                for shard in 0..shared.shards.len() {
                    let (tx, rx) = mpsc::channel(pubsub::COMMAND_QUEUE);
                    commands.push(tx);
                    tracker.spawn(pubsub::run_shard(
                        shared.clone(),
                        ingest.clone(),
                        shard,
                        rx,
                        shutdown.clone(),
                    ));
                }
                BackendHandle::Pubsub { commands }
            }
        };
        // No more tasks are added; `wait` can then finish once they have all ended.
        tracker.close();
        tracing::info!(
            backend = ?shared.config.backend,
            shards = shared.shards.len(),
            queue = %shared.keys.herald_queue_key(),
            "django bridge started"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                active,
                backend,
                tracker,
                shutdown,
            }),
        })
    }

    /// Call when this node's first local member of `group` joins. Idempotent.
    ///
    /// core: writes herald's membership of the mapped channels group at once (and then
    /// refreshes it). pubsub: subscribes to the group's channel; once this returns `Ok`,
    /// every later Django `group_send` to it is received.
    ///
    /// On `Err` the group stays registered: core retries at the next refresh, pubsub when
    /// its connection is back. `Unmappable` groups are not registered.
    pub async fn group_active(&self, group: &GroupName) -> Result<(), DjangoError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(DjangoError::Stopped);
        }
        let shared = &self.inner.shared;
        // Check the mapping before registering, so a bad group leaves no trace.
        if shared.map.to_channels(group).is_none() {
            return Err(DjangoError::Unmappable(group.clone()));
        }
        // Held until Redis has the change, so changes to a group reach Redis in order.
        let mut groups = self.inner.active.groups.lock().await;
        if !groups.insert(group.clone()) {
            return Ok(());
        }
        self.inner.active.count.fetch_add(1, Ordering::Relaxed);
        match &self.inner.backend {
            BackendHandle::Core => {
                let written = core::write_memberships(
                    shared,
                    std::slice::from_ref(group),
                    core::Write::First,
                )
                .await;
                if written.is_err() {
                    // The refresher retries soon, not a whole period later.
                    self.inner.active.set_written(false);
                    self.inner.active.pending.notify_one();
                }
                written
            }
            BackendHandle::Pubsub { commands } => {
                let (shard, channel) = pubsub::channel_for(shared, group)?;
                self.command(&commands[shard], shard, |reply| {
                    pubsub::Command::Add(channel, reply)
                })
                .await
            }
        }
    }

    /// Call when this node's last local member of `group` leaves. Idempotent.
    ///
    /// core: stops refreshing; herald's membership lapses `membership_lease` seconds after
    /// the last refresh by any node (never removed here: other nodes may still hold the
    /// group). pubsub: unsubscribes once no local herald group needs the channel.
    pub async fn group_inactive(&self, group: &GroupName) -> Result<(), DjangoError> {
        let shared = &self.inner.shared;
        // Held until Redis has the change, so changes to a group reach Redis in order.
        let mut groups = self.inner.active.groups.lock().await;
        if !groups.remove(group) {
            return Ok(());
        }
        self.inner.active.count.fetch_sub(1, Ordering::Relaxed);
        match &self.inner.backend {
            BackendHandle::Core => Ok(()),
            BackendHandle::Pubsub { commands } => {
                let (shard, channel) = pubsub::channel_for(shared, group)?;
                self.command(&commands[shard], shard, |reply| {
                    pubsub::Command::Remove(channel, reply)
                })
                .await
            }
        }
    }

    async fn command(
        &self,
        commands: &mpsc::Sender<pubsub::Command>,
        shard: usize,
        make: impl FnOnce(pubsub::Reply) -> pubsub::Command,
    ) -> Result<(), DjangoError> {
        let (reply, answer) = oneshot::channel();
        commands
            .send(make(reply))
            .await
            .map_err(|_| DjangoError::Stopped)?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(pubsub::Unconfirmed::Redis(source))) => {
                Err(DjangoError::Redis { shard, source })
            }
            Ok(Err(pubsub::Unconfirmed::Disconnected)) => Err(DjangoError::Disconnected { shard }),
            Err(_) => Err(DjangoError::Stopped),
        }
    }

    /// Sends `payload` to the Django consumers of `group`'s channels group, as
    /// `{"type": message_type, "text": ...}` (or `"bytes"` for a binary payload), the way
    /// channels_redis' `group_send` does, including its per-queue capacity check. Herald's
    /// own members are skipped (core) and herald's own messages are ignored on receive
    /// (pubsub), so nothing comes back into herald.
    ///
    /// `Err(Redis)` right after a Redis outage is possible while the shared connection
    /// reconnects; the message may then or may not have been queued, so a caller that
    /// retries accepts a possible duplicate.
    pub async fn group_send(
        &self,
        group: &GroupName,
        payload: &Payload,
    ) -> Result<SendReport, DjangoError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(DjangoError::Stopped);
        }
        let shared = &self.inner.shared;
        let result = match shared.config.backend {
            Backend::Core => core::group_send(shared, group, payload).await,
            Backend::Pubsub => pubsub::group_send(shared, group, payload).await,
        };
        if matches!(result, Err(DjangoError::Redis { .. })) {
            crate::stats::bump(&shared.counters.send_errors);
        }
        result
    }

    /// The bridge's counters and gauges, for the server's metrics.
    pub fn stats(&self) -> DjangoStats {
        let active = self.inner.active.count.load(Ordering::Relaxed);
        self.inner.shared.counters.snapshot(active)
    }

    /// Whether the bridge works: every shard answered, memberships are written, and (core)
    /// every drain loop holds a connection. The server's `/readyz` includes it.
    pub fn is_ready(&self) -> bool {
        let shared = &self.inner.shared;
        let connected = shared.shards.iter().all(|s| s.conn.get().is_some());
        let draining = match shared.config.backend {
            Backend::Core => shared
                .shards
                .iter()
                .all(|s| s.draining.load(Ordering::Relaxed)),
            Backend::Pubsub => true,
        };
        connected && draining && self.inner.active.written.load(Ordering::Relaxed)
    }

    /// The configuration the bridge runs with.
    pub fn config(&self) -> &DjangoConfig {
        &self.inner.shared.config
    }

    /// The channels group a herald group maps to (`None` if the name would be invalid).
    pub fn channels_group(&self, group: &GroupName) -> Option<String> {
        self.inner.shared.map.to_channels(group)
    }

    /// Stops the bridge's tasks and waits for them to end (at most about one second for
    /// a drain loop to finish its current pop). Other clones then answer `Stopped`.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tracker.wait().await;
    }

    /// Waits until every task has ended (after the shutdown token fired).
    pub async fn stopped(&self) {
        self.inner.tracker.wait().await;
    }
}

/// Connects `shard`'s shared command connection, retrying with backoff (at most 2 s
/// apart) until Redis answers or shutdown; then wakes the membership writer. After that
/// the connection manager reconnects by itself.
async fn connect_shard(
    shared: Arc<Shared>,
    active: Arc<ActiveGroups>,
    shard: usize,
    shutdown: CancellationToken,
) {
    let mut backoff = herald_core::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        if !crate::wait_backoff(&mut backoff, &shutdown).await {
            return;
        }
        let client = &shared.shards[shard].client;
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = client.get_connection_manager_with_config(manager_config()) => c,
        };
        match connected {
            Ok(conn) => {
                let _ = shared.shards[shard].conn.set(conn);
                tracing::info!(shard, "django bridge connected to redis");
                active.pending.notify_one();
                return;
            }
            Err(error) => tracing::debug!(shard, %error, "django redis still unreachable"),
        }
    }
}

/// How long `start` waits for each shard's first connection before leaving it to the
/// connector task.
const FIRST_CONNECT: Duration = Duration::from_secs(1);

/// The shared connection: a single quick retry per (re)connection (the bridge's own loops
/// back off), at most 5 s per attempt.
fn manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(COMMAND_RESPONSE_TIMEOUT))
}
