//! `RedisLayer`: the `Layer` implementation and the state its handles share with the
//! supervisor task.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herald_core::{
    GroupName, History, Incoming, KeyedItem, Layer, LayerError, LocalPresence, Message, Payload,
    Position, Presence, Published,
};
use redis::ConnectionAddr;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::command::Commands;
use crate::cluster::{self, ClusterState};
use crate::coalesce::{self, Bounds, Coalescer, Flush, ItemOutcome, Request};
use crate::keys::Keys;
use crate::lost_writes::Seen;
use crate::presence;
use crate::probe::Probe;
use crate::scripts::{self, Limits, ScriptError};
use crate::subscriber::{self, SubscriberWriter};
use crate::topology::Topology;
use crate::{RedisLayerConfig, RedisLayerError, supervisor};

/// Most messages of one `publish_batch` or `publish_idempotent` call sent as one request
/// (published together in one script call); larger calls go in requests of this size, one
/// after the other.
const BATCH_CHUNK: usize = 256;

/// Publish script calls out at once on a Redis Cluster, at least (`publish_in_flight`
/// applies when larger): calls to different slots, so different shards, overlap.
const CLUSTER_CALLS_IN_FLIGHT: usize = 16;

/// A layer backed by Redis: any number of herald nodes on one Redis (and one prefix)
/// share groups. Clones share the connections; dropping the last clone (or calling
/// [`close`](Self::close)) stops the background task.
#[derive(Clone)]
pub struct RedisLayer {
    inner: Arc<Inner>,
}

/// Owned by the handles only: its drop is what stops the supervisor.
struct Inner {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    /// The supervisor and the publish flusher.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The supervisor holds `shared` but not `Inner`: this fires when the last handle goes.
        self.cancel.cancel();
    }
}

/// State shared by the handles and the supervisor task.
pub(crate) struct Shared {
    pub(crate) config: RedisLayerConfig,
    /// Where the connections go: a fixed Redis, or the master the sentinels name.
    pub(crate) target: Target,
    /// Redis Cluster mode (`redis+cluster://`): the slot map and the shard connections.
    pub(crate) cluster: Option<ClusterState>,
    pub(crate) keys: Keys,
    pub(crate) limits: Limits,
    pub(crate) tx: mpsc::Sender<Message>,
    /// The groups this node wants delivered, whatever the connection state: the truth the
    /// subscriber connection is brought in line with.
    wanted: Mutex<HashSet<GroupName>>,
    /// The command connection of the current session and that session's number; `None`
    /// while disconnected, which makes commands fail fast.
    command: Mutex<Option<(u64, Commands)>>,
    /// The subscriber connection's write half, `None` while disconnected. An async lock:
    /// it is held across the write of a command so commands go out one at a time.
    pub(crate) subscriber: tokio::sync::Mutex<Option<SubscriberWriter>>,
    ready: AtomicBool,
    /// Numbers the sessions, so that a failure seen on an old connection cannot end a
    /// newer one.
    session: AtomicU64,
    /// The session whose command connection last failed.
    lost_session: AtomicU64,
    /// Wakes the read loop when `lost_session` was set.
    pub(crate) command_lost: Notify,
    pub(crate) stats: Counters,
    /// This layer's name among the nodes, as its presence entries are keyed: random per
    /// layer, so a restarted node never revives its former entries.
    pub(crate) node: String,
    /// The readiness probe of the pub/sub path.
    pub(crate) probe: Probe,
    /// What this node saw of each group's position, against lost acknowledged writes.
    pub(crate) seen: Seen,
    /// The queue of publishes waiting for a script call (`coalesce.rs`).
    publisher: Coalescer,
    /// Presence writes waiting for a script call (one Redis or Sentinel; see
    /// `RedisLayer::presence_update`).
    presence_writes: Mutex<PresenceQueue>,
    /// Wakes the presence writer task (`Shared::write_presence`) when writes are queued.
    presence_queued: Notify,
}

/// Presence writes queued while one call is in flight; they go out together in the next.
/// Bounded by its callers: each waits for its answer (the server's presence task keeps a
/// fixed number of writes in flight).
#[derive(Default)]
struct PresenceQueue {
    writes: Vec<(presence::Write, oneshot::Sender<Result<(), LayerError>>)>,
}

/// Most presence writes in one script call.
const PRESENCE_BATCH: usize = 256;

/// Where a layer's connections go.
#[derive(Debug)]
pub(crate) enum Target {
    /// One Redis at a fixed address.
    Single(redis::Client),
    /// The master Redis Sentinel names, asked again at every connect.
    Sentinel(crate::topology::SentinelTopology),
    /// A Redis Cluster: its own supervisor (`cluster/mod.rs`) connects the shards.
    Cluster,
}

/// Counters of a [`RedisLayer`], for metrics. All are totals since the layer was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Connections re-established after a loss.
    pub reconnects: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Messages received from Redis for wanted groups.
    pub received: u64,
    /// Pub/sub frames or envelopes that could not be decoded and were skipped.
    pub decode_errors: u64,
    /// Publish and history calls answered with `LayerError::Unavailable`.
    pub unavailable: u64,
    /// Readiness probes (see `RedisLayerConfig::probe_interval`) that went unanswered for
    /// a whole interval.
    pub probe_failures: u64,
    /// The last probe's round trip through Redis pub/sub (zero before the first).
    pub probe_round_trip: Duration,
    /// Groups found to have lost acknowledged writes (offsets reassigned by a new master
    /// after a failover) and given a new epoch, so their clients were reset.
    pub lost_writes: u64,
    /// Redis Cluster: delivery gaps (a subscription that moved shards, skipped offsets)
    /// repaired from history. Always 0 on a single Redis.
    pub gap_fills: u64,
    /// Redis Cluster: delivery gaps history could not cover (left to the connections'
    /// own checks), or whose history read failed.
    pub gap_fill_failures: u64,
    /// Publish script calls made: fewer than the messages published when concurrent
    /// publishes were coalesced.
    pub publish_calls: u64,
    /// The most messages one publish script call carried.
    pub publish_largest_call: u64,
    /// Messages waiting for a publish script call now (not a total).
    pub publish_queued: u64,
}

/// One counter; `Relaxed` everywhere because each is read alone, for reporting only.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn increment(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) reconnects: Counter,
    pub(crate) connect_failures: Counter,
    pub(crate) received: Counter,
    pub(crate) decode_errors: Counter,
    pub(crate) unavailable: Counter,
}

impl RedisLayer {
    /// Builds the layer and the stream of messages for the groups it subscribes to.
    ///
    /// Fails only on an invalid configuration. The connections are made in the
    /// background: until they are up, [`is_ready`](Layer::is_ready) is `false` and
    /// publishing fails with `LayerError::Unavailable`. Must be called inside a Tokio
    /// runtime (the background task is spawned on it).
    pub fn new(config: RedisLayerConfig) -> Result<(Self, Incoming), RedisLayerError> {
        config.validate()?;
        let (target, cluster, keys) = match Topology::parse(&config.url)? {
            Topology::Single(url) => (
                Target::Single(open_tcp(&url)?),
                None,
                Keys::new(&config.prefix),
            ),
            Topology::Sentinel(sentinel) => {
                // The master's URL is only known at connect time; check its form now.
                open_tcp(&sentinel.master_url("127.0.0.1", 6379))?;
                (Target::Sentinel(sentinel), None, Keys::new(&config.prefix))
            }
            Topology::Cluster(url) => {
                let cluster = ClusterState::new(url, &config)?;
                (
                    Target::Cluster,
                    Some(cluster),
                    Keys::sharded(&config.prefix),
                )
            }
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            RedisLayerError::InvalidConfig("RedisLayer::new must be called inside a Tokio runtime")
        })?;
        let (tx, rx) = mpsc::channel(config.incoming_capacity);
        // Random per layer: nodes sharing a prefix never answer each other's probes.
        let node = format!("{:016x}", fastrand::u64(..));
        let probe = Probe::new(keys.probe_channel(&node), config.probe_interval);
        let cluster_mode = cluster.is_some();
        let shared = Arc::new(Shared {
            keys,
            probe,
            limits: Limits::new(
                config.history.max_age,
                config.history.max_len,
                config.history.max_bytes,
            ),
            target,
            cluster,
            tx,
            wanted: Mutex::default(),
            command: Mutex::default(),
            subscriber: tokio::sync::Mutex::default(),
            ready: AtomicBool::new(false),
            session: AtomicU64::new(0),
            lost_session: AtomicU64::new(0),
            command_lost: Notify::new(),
            stats: Counters::default(),
            node: format!("{:016x}", fastrand::u64(..)),
            seen: Seen::default(),
            presence_writes: Mutex::default(),
            presence_queued: Notify::new(),
            publisher: Coalescer::new(Bounds {
                max_items: config.publish_batch_max,
                max_bytes: config.publish_batch_max_bytes,
                // A call carries one slot's messages on a cluster: with one call in flight
                // the shards would take turns, so each may have calls of its own out.
                in_flight: if cluster_mode {
                    config.publish_in_flight.max(CLUSTER_CALLS_IN_FLIGHT)
                } else {
                    config.publish_in_flight
                },
                queue: config.publish_queue,
            }),
            config,
        });
        let cancel = CancellationToken::new();
        let supervisor = runtime.spawn(supervisor::run(shared.clone(), cancel.clone()));
        let flusher = {
            let (shared, cancel) = (shared.clone(), cancel.clone());
            runtime.spawn(async move {
                coalesce::run(&shared.publisher, &*shared, &cancel).await;
            })
        };
        let presence_writer = {
            let (shared, cancel) = (shared.clone(), cancel.clone());
            runtime.spawn(async move { shared.write_presence(&cancel).await })
        };
        let inner = Arc::new(Inner {
            shared,
            cancel,
            tasks: Mutex::new(vec![supervisor, flusher, presence_writer]),
        });
        Ok((Self { inner }, rx))
    }

    /// Stops the background task and closes the connections; waits until they are
    /// closed. Afterwards every call fails with `LayerError::Closed`. Idempotent.
    pub async fn close(&self) {
        self.inner.cancel.cancel();
        let tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        for task in tasks {
            // Each task stops at its next await point; an error means it panicked, which
            // it already reported.
            let _ = task.await;
        }
    }

    /// The layer's counters.
    pub fn stats(&self) -> RedisStats {
        let c = &self.inner.shared.stats;
        RedisStats {
            reconnects: c.reconnects.get(),
            connect_failures: c.connect_failures.get(),
            received: c.received.get(),
            decode_errors: c.decode_errors.get(),
            unavailable: c.unavailable.get(),
            probe_failures: self.inner.shared.probe.failures.get().saturating_add(
                self.inner
                    .shared
                    .cluster
                    .as_ref()
                    .map_or(0, ClusterState::probe_failures),
            ),
            publish_calls: self.inner.shared.publisher.stats().0,
            publish_largest_call: self.inner.shared.publisher.stats().1,
            publish_queued: u64::try_from(self.inner.shared.publisher.queued()).unwrap_or(u64::MAX),
            probe_round_trip: self.inner.shared.probe.round_trip(),
            lost_writes: self.inner.shared.seen.lost.get(),
            gap_fills: self.inner.shared.cluster.as_ref().map_or(0, |c| {
                c.gap_fills.load(std::sync::atomic::Ordering::Relaxed)
            }),
            gap_fill_failures: self.inner.shared.cluster.as_ref().map_or(0, |c| {
                c.gap_fill_failures
                    .load(std::sync::atomic::Ordering::Relaxed)
            }),
        }
    }

    /// Per-shard figures of a Redis Cluster layer (one entry per shard of the current slot
    /// map); empty on a single Redis.
    pub fn shard_stats(&self) -> Vec<crate::ShardStats> {
        self.inner
            .shared
            .cluster
            .as_ref()
            .map_or_else(Vec::new, ClusterState::shard_stats)
    }

    /// This layer's node id: random per layer, the field of its presence entries.
    pub fn node_id(&self) -> &str {
        &self.inner.shared.node
    }

    /// Whether this node wants `group` delivered: recorded by the last `subscribe` or
    /// `unsubscribe` call at once, whether or not Redis confirmed it yet (the supervisor
    /// and the subscriber connection bring Redis in line). This is the one record of it.
    pub fn is_subscribed(&self, group: &GroupName) -> bool {
        self.inner.shared.is_wanted(group)
    }

    /// The groups this node currently wants delivered (applied to Redis as soon as it is
    /// reachable), sorted.
    pub fn subscribed_groups(&self) -> Vec<GroupName> {
        let mut groups: Vec<GroupName> = self.inner.shared.wanted_snapshot().into_iter().collect();
        groups.sort();
        groups
    }

    fn check_open(&self) -> Result<(), LayerError> {
        if self.inner.cancel.is_cancelled() {
            Err(LayerError::Closed)
        } else {
            Ok(())
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Publishes `items` (of one slot on a cluster) as one request; any failure fails it
    /// whole (for `ClusterState::publish_by_slot`, which runs one per slot at once).
    pub(crate) async fn publish_chunk(
        &self,
        items: &[KeyedItem],
        window: Duration,
    ) -> Result<Vec<Published>, LayerError> {
        self.publish_request(items.to_vec(), window)
            .await
            .map_err(|(_, e)| e)
    }

    /// Publishes up to one chunk as one request: queued, and sent in a script call with
    /// whatever other publishes are waiting (`coalesce.rs`).
    async fn publish_request(
        &self,
        items: Vec<KeyedItem>,
        window: Duration,
    ) -> Result<Vec<Published>, (usize, LayerError)> {
        self.check_open().map_err(|e| (0, e))?;
        let shared = &self.inner.shared;
        // Fail fast while disconnected, without queueing.
        shared.command_connection().map_err(|e| (0, e))?;
        shared
            .publisher
            .submit(
                &**shared,
                Request { items, window },
                shared.config.command_timeout,
            )
            .await
    }

    /// Publishes keyed items in requests of [`BATCH_CHUNK`], one after the other.
    async fn publish_chunks(
        &self,
        mut items: Vec<KeyedItem>,
        window: Duration,
    ) -> Result<Vec<Published>, (usize, LayerError)> {
        let cluster = self.inner.shared.cluster.is_some();
        if items.len() <= BATCH_CHUNK && !cluster {
            return self.publish_request(items, window).await;
        }
        let mut published = Vec::with_capacity(items.len());
        if cluster {
            for chunk in items.chunks(BATCH_CHUNK) {
                // One script call may only touch one slot's keys (`cluster/mod.rs`).
                match self.publish_by_slot(chunk, window).await {
                    Ok(mut done) => published.append(&mut done),
                    Err((n, e)) => return Err((published.len().saturating_add(n), e)),
                }
            }
            return Ok(published);
        }
        while !items.is_empty() {
            let take = items.len().min(BATCH_CHUNK);
            let rest = items.split_off(take);
            let chunk = std::mem::replace(&mut items, rest);
            match self.publish_request(chunk, window).await {
                Ok(mut done) => published.append(&mut done),
                Err((n, e)) => return Err((published.len().saturating_add(n), e)),
            }
        }
        Ok(published)
    }
}

/// Items without keys: the window is not used then.
const NO_WINDOW: Duration = Duration::from_millis(1);

fn unkeyed(group: GroupName, payload: Payload) -> KeyedItem {
    KeyedItem {
        group,
        payload,
        key: None,
    }
}

impl fmt::Debug for RedisLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.inner.shared;
        f.debug_struct("RedisLayer")
            .field("prefix", &shared.config.prefix)
            .field("ready", &shared.ready.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

impl Layer for RedisLayer {
    async fn publish(&self, group: &GroupName, payload: Payload) -> Result<Position, LayerError> {
        let mut published = self
            .publish_request(vec![unkeyed(group.clone(), payload)], NO_WINDOW)
            .await
            .map_err(|(_, e)| e)?;
        // The script returns one position per message; `scripts::publish` checked the count.
        published
            .pop()
            .map(|p| p.position)
            .ok_or_else(|| LayerError::Unavailable("redis returned no position".to_owned()))
    }

    /// Publishes in requests of up to 256 messages, each published in one script call
    /// (shared with concurrent publishes); a request is published up to its first
    /// message that Redis refuses.
    async fn publish_batch(
        &self,
        items: Vec<(GroupName, Payload)>,
    ) -> Result<Vec<Position>, (usize, LayerError)> {
        let items = items.into_iter().map(|(g, p)| unkeyed(g, p)).collect();
        let published = self.publish_chunks(items, NO_WINDOW).await?;
        Ok(published.into_iter().map(|p| p.position).collect())
    }

    /// Like `publish_batch`; each key is checked and set in the same script call as its
    /// message, under `{prefix}:{group}:once:{key}` with a TTL of `window`.
    async fn publish_idempotent(
        &self,
        items: Vec<KeyedItem>,
        window: Duration,
    ) -> Result<Vec<Published>, (usize, LayerError)> {
        self.publish_chunks(items, window).await
    }

    /// Records the group as wanted and, when connected, waits until Redis confirmed the
    /// subscription. While Redis is unreachable it returns `Ok` at once: the subscription
    /// is made on reconnect, and messages published meanwhile are found in history.
    /// If no confirmation comes within `command_timeout` (Redis hangs, or `Incoming` is
    /// full and unread, which pauses the subscriber connection), it fails with
    /// `Unavailable`; the group stays wanted and is subscribed when Redis catches up.
    async fn subscribe(&self, group: &GroupName) -> Result<(), LayerError> {
        self.check_open()?;
        lock(&self.inner.shared.wanted).insert(group.clone());
        apply(&self.inner.shared, std::slice::from_ref(group)).await
    }

    /// Records the group as unwanted (nothing more is delivered for it from now on) and,
    /// when connected, waits until Redis confirmed it. If no confirmation comes within
    /// `command_timeout` it fails with `Unavailable`; the group stays unwanted and the
    /// `UNSUBSCRIBE` takes effect when Redis catches up.
    async fn unsubscribe(&self, group: &GroupName) -> Result<(), LayerError> {
        self.check_open()?;
        lock(&self.inner.shared.wanted).remove(group);
        apply(&self.inner.shared, std::slice::from_ref(group)).await
    }

    /// Records all the changes at once and applies them in one write and one round trip:
    /// one `SUBSCRIBE` naming every channel to add, one `UNSUBSCRIBE` for those to drop
    /// (in commands of at most 1024 channels), then waits for Redis to confirm them all,
    /// failing like `subscribe` when it does not in time (the changes stay recorded).
    async fn update_subscriptions(
        &self,
        subscribe: &[GroupName],
        unsubscribe: &[GroupName],
    ) -> Result<(), LayerError> {
        self.check_open()?;
        {
            let mut wanted = lock(&self.inner.shared.wanted);
            for group in unsubscribe {
                wanted.remove(group);
            }
            for group in subscribe {
                wanted.insert(group.clone());
            }
        }
        let groups: Vec<GroupName> = subscribe.iter().chain(unsubscribe).cloned().collect();
        apply(&self.inner.shared, &groups).await
    }

    async fn history(
        &self,
        group: &GroupName,
        since: Option<&Position>,
    ) -> Result<History, LayerError> {
        self.check_open()?;
        let shared = &self.inner.shared;
        let (session, mut conn) = shared.command_connection()?;
        let call = scripts::history(&mut conn, &shared.keys, shared.limits, group, since);
        match tokio::time::timeout(shared.config.command_timeout, call).await {
            Ok(Ok(history)) => {
                shared.seen.acked(group, &history.current);
                Ok(history)
            }
            Ok(Err(e)) => Err(shared.command_failed(session, e)),
            Err(_) => Err(shared.timed_out()),
        }
    }

    /// Writes this node's entry in the group's presence hash (see `presence.rs`).
    /// On one Redis (or Sentinel's master), writes made while another is in flight are
    /// queued and go out together in one script call when it returns (up to
    /// `PRESENCE_BATCH`), sent by the layer's presence writer task: the
    /// server's presence task rewrites every group's entry each refresh, and one call per
    /// group cost as many script calls as a per-user run publishes messages. A write may
    /// so wait for the call in flight, then for its own: up to twice `command_timeout`.
    /// A hash Redis refuses fails its own write only. On a Redis Cluster (one slot per
    /// call) each write is its own call.
    async fn presence_update(
        &self,
        group: &GroupName,
        local: &LocalPresence,
        ttl: Duration,
    ) -> Result<(), LayerError> {
        self.check_open()?;
        let shared = &self.inner.shared;
        let (session, mut conn) = shared.command_connection()?;
        if shared.cluster.is_some() {
            let call = presence::update(&mut conn, &shared.keys, &shared.node, group, local, ttl);
            return match tokio::time::timeout(shared.config.command_timeout, call).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(shared.command_failed(session, e)),
                Err(_) => Err(shared.timed_out()),
            };
        }
        drop(conn);
        let (tx, rx) = oneshot::channel();
        let write = presence::Write {
            group: group.clone(),
            local: local.clone(),
            ttl,
        };
        lock(&shared.presence_writes).writes.push((write, tx));
        shared.presence_queued.notify_one();
        // The sender is dropped unanswered only if the writer task is (the runtime stops).
        rx.await.unwrap_or(Err(LayerError::Closed))
    }

    /// One script call on the group's presence hash: one round trip, whatever the
    /// group's size.
    async fn presence(&self, group: &GroupName) -> Result<Presence, LayerError> {
        self.check_open()?;
        let shared = &self.inner.shared;
        let (session, mut conn) = shared.command_connection()?;
        let call = presence::read(&mut conn, &shared.keys, group);
        match tokio::time::timeout(shared.config.command_timeout, call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(shared.command_failed(session, e)),
            Err(_) => Err(shared.timed_out()),
        }
    }

    /// One script call on the group's occupied mark (see `presence.rs`).
    async fn occupy(&self, group: &GroupName) -> Result<bool, LayerError> {
        self.check_open()?;
        let shared = &self.inner.shared;
        let (session, mut conn) = shared.command_connection()?;
        let call = async {
            match shared.cluster {
                Some(_) => cluster::presence::occupy(&mut conn, &shared.keys, group).await,
                None => presence::occupy(&mut conn, &shared.keys, group).await,
            }
        };
        match tokio::time::timeout(shared.config.command_timeout, call).await {
            Ok(Ok(won)) => Ok(won),
            Ok(Err(e)) => Err(shared.command_failed(session, e)),
            Err(_) => Err(shared.timed_out()),
        }
    }

    /// One script call reading the presence hash and updating the occupied mark.
    async fn vacate(&self, group: &GroupName, delay: Duration) -> Result<bool, LayerError> {
        self.check_open()?;
        let shared = &self.inner.shared;
        let (session, mut conn) = shared.command_connection()?;
        let call = async {
            match shared.cluster {
                Some(_) => cluster::presence::vacate(&mut conn, &shared.keys, group, delay).await,
                None => presence::vacate(&mut conn, &shared.keys, group, delay).await,
            }
        };
        match tokio::time::timeout(shared.config.command_timeout, call).await {
            Ok(Ok(won)) => Ok(won),
            Ok(Err(e)) => Err(shared.command_failed(session, e)),
            Err(_) => Err(shared.timed_out()),
        }
    }

    async fn occupied(&self, limit: usize) -> Result<Vec<GroupName>, LayerError> {
        self.check_open()?;
        let shared = &self.inner.shared;
        let (session, mut conn) = shared.command_connection()?;
        let call = presence::occupied(&mut conn, &shared.keys, limit);
        match tokio::time::timeout(shared.config.command_timeout, call).await {
            Ok(Ok(groups)) => Ok(groups),
            Ok(Err(e)) => Err(shared.command_failed(session, e)),
            Err(_) => Err(shared.timed_out()),
        }
    }

    fn is_ready(&self) -> bool {
        // Connected and subscribed, and the pub/sub path answered its last probe in time.
        !self.inner.cancel.is_cancelled()
            && self.inner.shared.ready.load(Ordering::Acquire)
            && self.inner.shared.probe.is_healthy()
            && (self.inner.shared.cluster.as_ref()).is_none_or(ClusterState::is_healthy)
    }
}

/// Applies a change of the wanted set to the subscriber connection, or on Redis Cluster to
/// the shard connections.
async fn apply(shared: &Shared, groups: &[GroupName]) -> Result<(), LayerError> {
    match &shared.cluster {
        Some(state) => cluster::apply(shared, state, groups).await,
        None => subscriber::apply(shared, groups).await,
    }
}

/// A client for a plain TCP `redis://` URL.
fn open_tcp(url: &str) -> Result<redis::Client, RedisLayerError> {
    let client = redis::Client::open(url).map_err(|e| RedisLayerError::InvalidUrl(Box::new(e)))?;
    match client.get_connection_info().addr() {
        ConnectionAddr::Tcp(..) => Ok(client),
        other => Err(RedisLayerError::UnsupportedAddress(other.to_string())),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a single insert, remove or swap: a panic cannot leave
    // the value half-updated, so a poisoned lock is taken over.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn is_wanted(&self, group: &GroupName) -> bool {
        lock(&self.wanted).contains(group)
    }

    pub(crate) fn wanted_snapshot(&self) -> HashSet<GroupName> {
        lock(&self.wanted).clone()
    }

    /// The stored name of `group` if it is wanted.
    pub(crate) fn wanted_group(&self, group: &GroupName) -> Option<GroupName> {
        lock(&self.wanted).get(group).cloned()
    }

    /// The wanted group a channel belongs to, sharing the stored name (no allocation).
    pub(crate) fn wanted_group_of_channel(&self, channel: &[u8]) -> Option<GroupName> {
        let name = self.keys.group_name_of_channel(channel)?;
        lock(&self.wanted).get(name).cloned()
    }

    pub(crate) fn set_ready(&self) {
        // Release: pairs with the Acquire in `is_ready`.
        if !self.ready.swap(true, Ordering::Release) {
            tracing::debug!(prefix = %self.config.prefix, "redis layer ready");
        }
    }

    /// Installs a new session's command connection; returns the session number.
    pub(crate) fn install_command(&self, conn: impl Into<Commands>) -> u64 {
        let conn = conn.into();
        // Relaxed: the number is only compared, and it is published under the mutex below.
        let session = self.session.fetch_add(1, Ordering::Relaxed) + 1;
        *lock(&self.command) = Some((session, conn));
        session
    }

    /// Marks everything disconnected: commands fail fast and subscriptions are recorded
    /// only, until the next session.
    pub(crate) async fn go_down(&self) {
        self.ready.store(false, Ordering::Release);
        self.probe.reset();
        lock(&self.command).take();
        // Dropping the writer drops the queued answers, which releases their waiters.
        self.subscriber.lock().await.take();
    }

    pub(crate) fn lost_session(&self) -> u64 {
        self.lost_session.load(Ordering::Acquire)
    }

    pub(crate) fn command_connection(&self) -> Result<(u64, Commands), LayerError> {
        // A clone shares the one multiplexed connection.
        match lock(&self.command).as_ref() {
            Some((session, conn)) => Ok((*session, conn.clone())),
            None => {
                self.stats.unavailable.increment();
                Err(LayerError::Unavailable("not connected to redis".to_owned()))
            }
        }
    }

    /// Turns a failed script call into the caller's error, and tells the supervisor when
    /// the connection itself is broken so it reconnects without waiting for the read side.
    fn command_failed(&self, session: u64, error: ScriptError) -> LayerError {
        self.stats.unavailable.increment();
        match &error {
            ScriptError::Redis(e)
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() =>
            {
                tracing::debug!(prefix = %self.config.prefix, error = %e, "redis command connection lost");
                self.lost_session.store(session, Ordering::Release);
                self.command_lost.notify_one();
            }
            // Anything else is a Redis-side refusal (OOM, LOADING, READONLY) or a bug in a
            // script: worth seeing in the log.
            _ => {
                tracing::warn!(prefix = %self.config.prefix, error = %error, "redis command failed")
            }
        }
        LayerError::Unavailable(error.to_string())
    }

    /// The presence writer task: sends the queued presence writes, up to
    /// [`PRESENCE_BATCH`] per call, one call at a time, until `cancel`; then answers what
    /// is still queued with `Closed`.
    async fn write_presence(&self, cancel: &CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.presence_queued.notified() => {}
            }
            self.send_presence().await;
        }
        let left = std::mem::take(&mut lock(&self.presence_writes).writes);
        for (_, reply) in left {
            let _ = reply.send(Err(LayerError::Closed));
        }
    }

    /// Sends the queued presence writes, a call at a time, until the queue is empty.
    async fn send_presence(&self) {
        loop {
            let batch: Vec<_> = {
                let mut queue = lock(&self.presence_writes);
                if queue.writes.is_empty() {
                    return;
                }
                let n = queue.writes.len().min(PRESENCE_BATCH);
                queue.writes.drain(..n).collect()
            };
            let (writes, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let outcome = match self.command_connection() {
                Err(e) => Err(e),
                Ok((session, mut conn)) => {
                    let call = presence::update_many(&mut conn, &self.keys, &self.node, &writes);
                    match tokio::time::timeout(self.config.command_timeout, call).await {
                        Ok(Ok(outcomes)) => Ok(outcomes),
                        Ok(Err(e)) => Err(self.command_failed(session, e)),
                        Err(_) => Err(self.timed_out()),
                    }
                }
            };
            match outcome {
                Ok(outcomes) => {
                    for (reply, why) in replies.into_iter().zip(outcomes) {
                        let answer = match why {
                            None => Ok(()),
                            Some(why) => {
                                self.stats.unavailable.increment();
                                tracing::warn!(prefix = %self.config.prefix, error = %why, "redis refused a presence write");
                                Err(LayerError::Unavailable(format!(
                                    "redis refused the presence write: {why}"
                                )))
                            }
                        };
                        // The writer may have given up waiting: nothing to do then.
                        let _ = reply.send(answer);
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    fn timed_out(&self) -> LayerError {
        self.stats.unavailable.increment();
        LayerError::Unavailable(format!(
            "redis did not answer within {:?}",
            self.config.command_timeout
        ))
    }
}

/// The layer's one command path: every batch goes to the current session's connection.
impl Flush for Shared {
    /// Redis Cluster: a script call only names keys of one slot, so requests (each of one
    /// slot, see `publish_chunks`) share a call only with requests of the same slot.
    fn partition(&self, request: &Request) -> u64 {
        match (&self.cluster, request.items.first()) {
            (Some(_), Some(item)) => u64::from(cluster::slot_of_group(&self.keys, &item.group)),
            _ => 0,
        }
    }

    async fn flush(&self, batch: &[Request]) -> Result<Vec<ItemOutcome>, LayerError> {
        let (session, mut conn) = self.command_connection()?;
        let call = scripts::publish(&mut conn, &self.keys, self.limits, batch);
        let outcomes = match tokio::time::timeout(self.config.command_timeout, call).await {
            Ok(Ok(outcomes)) => outcomes,
            Ok(Err(e)) => return Err(self.command_failed(session, e)),
            Err(_) => return Err(self.timed_out()),
        };
        // What this node acknowledged, against lost writes after a failover.
        let items = batch.iter().flat_map(|request| request.items.iter());
        for (item, outcome) in items.zip(&outcomes) {
            if let Ok(published) = outcome {
                self.seen.acked(&item.group, &published.position);
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|outcome| {
                outcome.map_err(|why| match why {
                    Some(why) => {
                        self.stats.unavailable.increment();
                        tracing::warn!(prefix = %self.config.prefix, error = %why, "redis refused a message");
                        LayerError::Unavailable(format!("redis refused the message: {why}"))
                    }
                    None => LayerError::Unavailable(
                        "not published: an earlier message of the same call failed".to_owned(),
                    ),
                })
            })
            .collect())
    }
}
