//! Redis Cluster mode (`redis+cluster://`): commands through redis-rs' cluster connection,
//! sharded pub/sub through one hand-driven subscriber connection per shard (`shard.rs`),
//! and the slot map that says which shard serves which group.
//!
//! The supervisor here ([`run`]) replaces `supervisor.rs` for a cluster layer: it keeps the
//! command connection, reads `CLUSTER SLOTS` on start, every [`REFRESH_EVERY`] and whenever
//! a shard task asks for it (a lost shard connection, a `MOVED`/`ASK` answer to an
//! `SSUBSCRIBE`, or Redis dropping a shard channel whose slot moved away), and reconciles:
//! a task per shard in the new map (kept when the shard's master and slots are unchanged,
//! started when new, cancelled when gone), then every wanted group whose shard changed is
//! subscribed on its new shard. The layer's `wanted` set stays the one record of which
//! groups are wanted; each shard writer's `applied` set only records what was written on
//! that connection.

pub(crate) mod command;
pub(crate) mod gap;
pub(crate) mod presence;
pub(crate) mod shard;
pub(crate) mod slots;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herald_core::{Backoff, GroupName, KeyedItem, LayerError, Published};
use redis::cluster::ClusterClient;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::command::Commands;
use self::shard::{Expected, Reply, ShardHealth, ShardWriter};
use self::slots::{ShardKey, SlotMap};
use crate::keys::Keys;
use crate::layer::Shared;
use crate::resp;
use crate::subscriber::End;
use crate::topology::ClusterUrl;

/// How often the slot map is read when nothing asked for it: bounds how long a topology
/// change nobody noticed (e.g. a failover of a shard with no subscriptions) goes unseen.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Consecutive failed slot map reads after which the command connection is rebuilt from
/// the seed nodes.
const MAX_MAP_FAILURES: u32 = 10;

/// The cluster part of a layer's shared state.
pub(crate) struct ClusterState {
    pub(crate) url: ClusterUrl,
    client: ClusterClient,
    /// The slot map and each shard's writer: an async lock, held across the writes of a
    /// subscription change so that changes go out one at a time.
    pub(crate) shards: tokio::sync::Mutex<Shards>,
    /// The health of each shard of the current map, for `is_ready` and the stats.
    health: Mutex<Vec<Arc<ShardHealth>>>,
    /// Wakes the supervisor to read the slot map now.
    refresh: Notify,
    /// Wanted groups whose shard dropped or refused them: re-subscribed on the shard the
    /// next slot map says. Holds wanted groups only, and is emptied by every reconcile.
    moved: Mutex<HashSet<GroupName>>,
    /// Probe failures of shards no longer in the map.
    retired_probe_failures: AtomicU64,
    /// The last position delivered per wanted group, for gap repair (`gap.rs`).
    pub(crate) positions: gap::Positions,
    /// Gaps repaired from history, and gaps it could not cover (totals of the layer).
    pub(crate) gap_fills: AtomicU64,
    pub(crate) gap_fill_failures: AtomicU64,
}

/// The slot map and the writers of the shard connections.
#[derive(Default)]
pub(crate) struct Shards {
    map: Option<SlotMap>,
    pub(crate) writers: HashMap<ShardKey, ShardWriter>,
}

impl Shards {
    pub(crate) fn index_of(&self, key: &ShardKey) -> Option<usize> {
        self.map.as_ref()?.shards.iter().position(|k| k == key)
    }

    pub(crate) fn owner_of_group(&self, shared: &Shared, group: &GroupName) -> Option<usize> {
        self.map
            .as_ref()?
            .owner_of(shared.keys.channel(group).as_bytes())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Single swaps and inserts: a panic cannot leave them half-done.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Per-shard figures, for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardStats {
    /// The shard's master, `host:port`.
    pub addr: String,
    /// The first slot the shard serves (a stable label while the map does not change).
    pub first_slot: u16,
    /// Connected, subscribed, and its last probe answered in time.
    pub healthy: bool,
    /// Probes through this shard unanswered for a whole interval.
    pub probe_failures: u64,
    /// The last probe's round trip through this shard.
    pub probe_round_trip: Duration,
    /// Subscriber connections to this shard re-made after a loss.
    pub reconnects: u64,
    /// Delivery gaps (a moved subscription, skipped offsets) repaired from history.
    pub gap_fills: u64,
    /// Delivery gaps history could not cover, or whose read failed.
    pub gap_fill_failures: u64,
}

impl ClusterState {
    pub(crate) fn new(
        url: ClusterUrl,
        config: &crate::RedisLayerConfig,
    ) -> Result<Self, crate::RedisLayerError> {
        let seeds: Vec<String> = url
            .seeds
            .iter()
            .map(|(host, port)| {
                if host.contains(':') {
                    format!("redis://[{host}]:{port}")
                } else {
                    format!("redis://{host}:{port}")
                }
            })
            .collect();
        let mut builder = ClusterClient::builder(seeds)
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.command_timeout)
            // Fail within about one command timeout: a publish that cannot be placed
            // answers 503, the caller retries.
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(200);
        if let Some(user) = &url.username {
            builder = builder.username(user);
        }
        if let Some(password) = &url.password {
            builder = builder.password(password);
        }
        let client = builder
            .build()
            .map_err(|e| crate::RedisLayerError::InvalidUrl(Box::new(e)))?;
        Ok(Self {
            url,
            client,
            shards: tokio::sync::Mutex::default(),
            health: Mutex::default(),
            refresh: Notify::new(),
            moved: Mutex::default(),
            retired_probe_failures: AtomicU64::new(0),
            positions: gap::Positions::default(),
            gap_fills: AtomicU64::new(0),
            gap_fill_failures: AtomicU64::new(0),
        })
    }

    pub(crate) fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    pub(crate) fn mark_moved(&self, group: GroupName) {
        lock(&self.moved).insert(group);
    }

    /// Every shard of a complete slot map is connected, subscribed and answers its probes.
    pub(crate) fn is_healthy(&self) -> bool {
        let health = lock(&self.health);
        !health.is_empty() && health.iter().all(|h| h.is_healthy())
    }

    pub(crate) fn probe_failures(&self) -> u64 {
        let live: u64 = lock(&self.health)
            .iter()
            .map(|h| h.probe.failures.get())
            .fold(0, u64::saturating_add);
        live.saturating_add(self.retired_probe_failures.load(Ordering::Relaxed))
    }

    pub(crate) fn shard_stats(&self) -> Vec<ShardStats> {
        lock(&self.health)
            .iter()
            .map(|h| ShardStats {
                addr: h.key.addr(),
                first_slot: h.key.ranges.first().map_or(0, |r| r.0),
                healthy: h.is_healthy(),
                probe_failures: h.probe.failures.get(),
                probe_round_trip: h.probe.round_trip(),
                reconnects: h.reconnects.load(Ordering::Relaxed),
                gap_fills: h.gap_fills.load(Ordering::Relaxed),
                gap_fill_failures: h.gap_fill_failures.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Removes `key`'s writer if the task `owner` installed it.
    pub(crate) async fn remove_writer(&self, key: &ShardKey, owner: u64) {
        let mut shards = self.shards.lock().await;
        if shards.writers.get(key).is_some_and(|w| w.owner == owner) {
            shards.writers.remove(key);
        }
    }

    /// The indices of `items` grouped by slot: groups in order of their first item, and
    /// each group's indices in order. A script may only touch one slot's keys.
    pub(crate) fn slot_groups(keys: &Keys, items: &[KeyedItem]) -> Vec<Vec<usize>> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut by_slot: HashMap<u16, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let slot = slots::slot_of(keys.meta(&item.group).as_bytes());
            let at = *by_slot.entry(slot).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            if let Some(group) = groups.get_mut(at) {
                group.push(i);
            }
        }
        groups
    }
}

impl crate::RedisLayer {
    /// Publishes a chunk on Redis Cluster: one script call per slot, all at once (a
    /// batch to random users costs one round trip, not one per message), each call's
    /// messages in their order, so per-group order holds. On failure, returns the index of
    /// the first message not published: every message before it was (its slot's call
    /// succeeded); messages after it on other slots may have been published too.
    pub(crate) async fn publish_by_slot(
        &self,
        items: &[KeyedItem],
        window: Duration,
    ) -> Result<Vec<Published>, (usize, LayerError)> {
        let groups = ClusterState::slot_groups(&self.shared().keys, items);
        if let [only] = groups.as_slice()
            && only.len() == items.len()
        {
            return self.publish_chunk(items, window).await.map_err(|e| (0, e));
        }
        // Owned by this future: dropping it aborts the calls still running.
        let mut calls = JoinSet::new();
        for (n, indices) in groups.iter().enumerate() {
            let part: Vec<KeyedItem> = indices
                .iter()
                .filter_map(|&i| items.get(i).cloned())
                .collect();
            let layer = self.clone();
            calls.spawn(async move { (n, layer.publish_chunk(&part, window).await) });
        }
        let mut published: Vec<Option<Published>> = vec![None; items.len()];
        let mut first_failure: Option<(usize, LayerError)> = None;
        while let Some(joined) = calls.join_next().await {
            let (n, result) = match joined {
                Ok(done) => done,
                Err(e) => {
                    // A panicked call: nothing says which messages it published.
                    let e = LayerError::Unavailable(format!("publish task failed: {e}"));
                    first_failure = Some((0, e));
                    continue;
                }
            };
            let indices = groups.get(n).map_or(&[][..], Vec::as_slice);
            match result {
                Ok(done) if done.len() == indices.len() => {
                    for (&i, p) in indices.iter().zip(done) {
                        if let Some(slot) = published.get_mut(i) {
                            *slot = Some(p);
                        }
                    }
                }
                Ok(_) => {
                    let e = LayerError::Unavailable("redis returned too few positions".into());
                    let at = indices.first().copied().unwrap_or(0);
                    if first_failure.as_ref().is_none_or(|(f, _)| at < *f) {
                        first_failure = Some((at, e));
                    }
                }
                Err(e) => {
                    let at = indices.first().copied().unwrap_or(0);
                    if first_failure.as_ref().is_none_or(|(f, _)| at < *f) {
                        first_failure = Some((at, e));
                    }
                }
            }
        }
        if let Some(failure) = first_failure {
            return Err(failure);
        }
        published
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                (
                    0,
                    LayerError::Unavailable("a message got no position".into()),
                )
            })
    }
}

/// Brings each shard connection in line with whether each of `groups` is wanted, and waits
/// until every shard involved confirmed it (see `subscriber::apply` for the single-node
/// version and the ordering argument, which holds per shard).
pub(crate) async fn apply(
    shared: &Shared,
    cluster: &ClusterState,
    groups: &[GroupName],
) -> Result<(), LayerError> {
    let waits = {
        let mut shards = cluster.shards.lock().await;
        write_changes(shared, &mut shards, groups.iter()).await
    };
    cluster.positions.forget(shared, groups);
    let all = async {
        for rx in waits {
            // A dropped sender means the connection went: its reconnect applies the set.
            let _ = rx.await;
        }
    };
    match tokio::time::timeout(shared.config.command_timeout, all).await {
        Ok(()) => Ok(()),
        Err(_) => Err(LayerError::Unavailable(format!(
            "redis did not confirm the subscription change within {:?}; it stays recorded",
            shared.config.command_timeout
        ))),
    }
}

/// Writes, per shard, the commands that bring it in line with `groups`, each shard's in
/// one write ending with a `PING`; returns the waiters of those `PING`s.
async fn write_changes<'a>(
    shared: &Shared,
    shards: &mut Shards,
    groups: impl Iterator<Item = &'a GroupName>,
) -> Vec<oneshot::Receiver<()>> {
    let Some(map) = shards.map.as_ref() else {
        return Vec::new();
    };
    let mut pending: HashMap<ShardKey, (Vec<u8>, Vec<Expected>)> = HashMap::new();
    for group in groups {
        let wanted = shared.is_wanted(group);
        let home = map
            .owner_of(shared.keys.channel(group).as_bytes())
            .and_then(|i| map.shards.get(i));
        for (key, writer) in shards.writers.iter_mut() {
            let here = home == Some(key);
            let applied = writer.applied.contains(group);
            let subscribe = match (wanted && here, applied) {
                (true, false) => true,
                (false, true) => false,
                _ => continue,
            };
            if subscribe {
                writer.applied.insert(group.clone());
            } else {
                writer.applied.remove(group);
            }
            let (bytes, expected) = pending.entry(key.clone()).or_default();
            shard::push_command(shared, bytes, expected, group, subscribe);
        }
    }
    let mut waits = Vec::with_capacity(pending.len());
    for (key, (mut bytes, mut expected)) in pending {
        let Some(writer) = shards.writers.get_mut(&key) else {
            continue;
        };
        let (tx, rx) = oneshot::channel();
        bytes.extend(resp::command([&b"PING"[..]]));
        expected.push(Expected::plain(Reply::Notify(tx)));
        match writer.send(&bytes, expected).await {
            Ok(()) => waits.push(rx),
            Err(why) => {
                // The read side notices the broken connection; its reconnect applies the set.
                tracing::debug!(shard = %key.addr(), why, "subscription write failed; applied on reconnect");
            }
        }
    }
    waits
}

/// The supervisor of a cluster layer; runs until `cancel` fires.
pub(crate) async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let Some(cluster) = shared.cluster.as_ref() else {
        return;
    };
    let config = &shared.config;
    let mut backoff = Backoff::new(config.reconnect_min_delay, config.reconnect_max_delay);
    let mut ever_connected = false;
    let mut failures_in_a_row = 0u64;
    loop {
        let attempt = tokio::select! {
            () = cancel.cancelled() => break,
            attempt = tokio::time::timeout(config.connect_timeout, cluster.client.get_async_connection()) => attempt,
        };
        match attempt {
            Ok(Ok(conn)) => {
                if ever_connected {
                    shared.stats.reconnects.increment();
                    tracing::info!(prefix = %config.prefix, "reconnected to the redis cluster");
                } else {
                    tracing::info!(prefix = %config.prefix, "connected to the redis cluster");
                }
                ever_connected = true;
                failures_in_a_row = 0;
                let commands = Commands::Cluster(conn);
                shared.install_command(commands.clone());
                shared.set_ready();
                let end = session(&shared, cluster, commands, &cancel).await;
                shared.go_down().await;
                go_down(cluster).await;
                if end == End::Closed {
                    break;
                }
                backoff.reset();
            }
            Ok(Err(e)) => {
                shared.stats.connect_failures.increment();
                if failures_in_a_row == 0 {
                    tracing::warn!(prefix = %config.prefix, error = %e, "cannot reach the redis cluster; retrying with backoff");
                }
                failures_in_a_row = failures_in_a_row.saturating_add(1);
            }
            Err(_) => {
                shared.stats.connect_failures.increment();
                if failures_in_a_row == 0 {
                    tracing::warn!(prefix = %config.prefix, "no redis cluster connection within the connect timeout; retrying with backoff");
                }
                failures_in_a_row = failures_in_a_row.saturating_add(1);
            }
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    shared.go_down().await;
    go_down(cluster).await;
    tracing::debug!(prefix = %config.prefix, "redis cluster layer stopped");
}

async fn go_down(cluster: &ClusterState) {
    let retired: u64 = std::mem::take(&mut *lock(&cluster.health))
        .iter()
        .map(|h| h.probe.failures.get())
        .fold(0, u64::saturating_add);
    cluster
        .retired_probe_failures
        .fetch_add(retired, Ordering::Relaxed);
    let mut shards = cluster.shards.lock().await;
    shards.map = None;
    shards.writers.clear();
    cluster.positions.clear();
}

/// The shard tasks of one session.
struct Running {
    tasks: JoinSet<()>,
    by_key: HashMap<ShardKey, (CancellationToken, Arc<ShardHealth>)>,
}

/// One command connection's lifetime: keep the slot map current and a task per shard.
async fn session(
    shared: &Arc<Shared>,
    cluster: &ClusterState,
    mut commands: Commands,
    cancel: &CancellationToken,
) -> End {
    let mut running = Running {
        tasks: JoinSet::new(),
        by_key: HashMap::new(),
    };
    let mut map_failures = 0u32;
    let end = loop {
        let fetched = tokio::time::timeout(
            shared.config.command_timeout,
            fetch_map(&mut commands, cluster),
        )
        .await
        .unwrap_or_else(|_| Err("no CLUSTER SLOTS answer in time".to_owned()));
        match fetched {
            Ok(map) => {
                map_failures = 0;
                reconcile(shared, cluster, &commands, map, &mut running, cancel).await;
            }
            Err(why) => {
                map_failures = map_failures.saturating_add(1);
                tracing::debug!(prefix = %shared.config.prefix, why, "reading the slot map failed");
                if map_failures >= MAX_MAP_FAILURES {
                    tracing::warn!(prefix = %shared.config.prefix, why, "the slot map cannot be read; reconnecting to the cluster");
                    break End::Lost;
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => break End::Closed,
            () = cluster.refresh.notified() => {}
            () = tokio::time::sleep(REFRESH_EVERY) => {}
            Some(_) = running.tasks.join_next() => {}
        }
        // A burst of triggers (every group of a migrated slot) costs one read.
        tokio::select! {
            () = cancel.cancelled() => break End::Closed,
            () = tokio::time::sleep(shared.config.reconnect_min_delay) => {}
        }
    };
    for (token, _) in running.by_key.values() {
        token.cancel();
    }
    running.tasks.shutdown().await;
    end
}

/// Reads `CLUSTER SLOTS` from any node.
async fn fetch_map(commands: &mut Commands, cluster: &ClusterState) -> Result<SlotMap, String> {
    let Commands::Cluster(conn) = commands else {
        return Err("not a cluster connection".to_owned());
    };
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("SLOTS");
    let reply = conn
        .route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
        .await
        .map_err(|e| e.to_string())?;
    let fallback = cluster
        .url
        .seeds
        .first()
        .map_or("127.0.0.1", |(h, _)| h.as_str());
    SlotMap::from_cluster_slots(reply, fallback)
}

/// Makes the shard tasks and subscriptions follow `map`.
async fn reconcile(
    shared: &Arc<Shared>,
    cluster: &ClusterState,
    commands: &Commands,
    map: SlotMap,
    running: &mut Running,
    cancel: &CancellationToken,
) {
    if !map.is_complete() {
        // Mid-failover, a node may report slots as served by nobody; keep the old map.
        tracing::debug!(prefix = %shared.config.prefix, "slot map incomplete; keeping the current one");
        return;
    }
    let moved: HashSet<GroupName> = std::mem::take(&mut *lock(&cluster.moved));
    let mut shards = cluster.shards.lock().await;
    let changed = shards.map.as_ref() != Some(&map);
    if !changed && moved.is_empty() {
        return;
    }
    if changed {
        tracing::info!(prefix = %shared.config.prefix, shards = map.shards.len(), "redis cluster slot map changed");
        let keep: HashSet<&ShardKey> = map.shards.iter().collect();
        running.by_key.retain(|key, (token, health)| {
            let kept = keep.contains(key);
            if !kept {
                token.cancel();
                cluster
                    .retired_probe_failures
                    .fetch_add(health.probe.failures.get(), Ordering::Relaxed);
                shards.writers.remove(key);
            }
            kept
        });
        for key in &map.shards {
            if running.by_key.contains_key(key) {
                continue;
            }
            let probe_channel = slots::tag_in(&key.ranges)
                .map(|tag| shared.keys.shard_probe_channel(&shared.node, &tag));
            let health = Arc::new(ShardHealth::new(
                key.clone(),
                probe_channel,
                shared.config.probe_interval,
            ));
            let token = cancel.child_token();
            running.tasks.spawn(shard::run(
                shared.clone(),
                health.clone(),
                commands.clone(),
                token.clone(),
            ));
            running.by_key.insert(key.clone(), (token, health));
        }
        *lock(&cluster.health) = map
            .shards
            .iter()
            .filter_map(|k| running.by_key.get(k).map(|(_, h)| h.clone()))
            .collect();
        shards.map = Some(map);
    }
    // Forget what the shards no longer serve (Redis dropped it, or will), then subscribe
    // every wanted group not yet on its shard. Only what the map change or a shard's
    // answer can have affected is looked at when nothing else changed.
    let Some(map) = shards.map.clone() else {
        return;
    };
    let mut affected: HashSet<GroupName> = moved;
    for (key, writer) in shards.writers.iter_mut() {
        let index = map.shards.iter().position(|k| k == key);
        writer.applied.retain(|g| {
            let stays = !affected.contains(g)
                && map.owner_of(shared.keys.channel(g).as_bytes()) == index
                && index.is_some();
            if !stays {
                affected.insert(g.clone());
            }
            stays
        });
    }
    let groups: Vec<GroupName> = if changed {
        shared.wanted_snapshot().into_iter().collect()
    } else {
        affected.into_iter().collect()
    };
    // Nobody waits for these confirmations: a shard that does not answer fails its probe.
    let _ = write_changes(shared, &mut shards, groups.iter()).await;
}

/// The hash slot of `group`'s keys (they share one through the `{group}` hash tag).
pub(crate) fn slot_of_group(keys: &Keys, group: &GroupName) -> u16 {
    slots::slot_of(keys.meta(group).as_bytes())
}

#[cfg(test)]
mod tests {
    use herald_core::{GroupName, KeyedItem, Payload};

    use super::ClusterState;
    use crate::keys::Keys;

    fn item(group: &str) -> KeyedItem {
        KeyedItem {
            group: GroupName::new(group).unwrap(),
            payload: Payload::text("x"),
            key: None,
        }
    }

    #[test]
    fn batches_group_by_slot_in_order() {
        let keys = Keys::sharded("p");
        let items = [item("a"), item("b"), item("a"), item("c"), item("b")];
        assert_eq!(
            ClusterState::slot_groups(&keys, &items),
            vec![vec![0, 2], vec![1, 4], vec![3]]
        );
        assert!(ClusterState::slot_groups(&keys, &[]).is_empty());
    }
}
