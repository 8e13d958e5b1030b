//! The presence task: the one owner of this node's presence entries in the layer.
//!
//! Connections report their joins and leaves (group, `sub`) here; the task keeps the
//! node-local count and `sub`s per group and writes a group's entry to the layer when it
//! changed, coalescing whatever arrived meanwhile into one write per group, and rewrites
//! every entry each `presence.refresh`. An entry counts for `2 × refresh` (see
//! [`crate::config::PresenceConfig::ttl`]), so a node that dies without clearing its
//! entries drops out of every group's presence within that bound. None of this is on the
//! delivery path: messages never touch it.
//!
//! It also sends `join`/`leave` events to the `herald.v1` connections of routes with
//! `presence = true` ("watchers"): every [`EVENT_TICK`] it reads the presence of each group
//! that has watchers here (one layer call per group), compares its `sub`s with those it
//! announced, and sends the differences, at most [`MAX_EVENTS_PER_TICK`] per group and
//! tick; the rest wait for the next tick (deferred, never dropped). A group's events are
//! thus bounded by `MAX_EVENTS_PER_TICK × 1 s / EVENT_TICK` = 200 per second per
//! connection, whatever the churn, and a join and leave within one tick cancel out. The
//! first read of a newly watched group only sets what counts as announced: events report
//! changes, the current set is `GET /api/presence/{group}`.
//!
//! With `[webhooks]`, the task also reports transitions: when a group gets its first
//! connection here it asks the layer to [`occupy`](Layer::occupy) it (after writing the
//! entry), and when a group loses its last connection here it asks to
//! [`vacate`](Layer::vacate) it, again `vacated_delay` later. The layer answers `true` to
//! one node per transition, cluster-wide, and that node queues the webhook. Every
//! refresh, the groups recorded as occupied that have no connection here are checked as
//! well, so that a group whose last node died is vacated too: within
//! `2 × refresh` (its entries expire) `+ vacated_delay + refresh` (the next checks).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use herald_core::{GroupName, Layer, LocalPresence};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::burst_log::BurstLog;
use crate::hub::ConnId;
use crate::metrics::Metrics;
use crate::node_layer::NodeLayer;
use crate::outbox::{CONTROL_SLOT, OutFrame, Outbox};
use crate::webhooks::{Transition, Webhooks};

/// Changes queued for the task; a burst of connects waits here rather than growing it.
const QUEUE: usize = 4096;
/// Changes applied before the dirty groups are written.
const BATCH: usize = 4096;
/// Layer writes in flight at once during a flush or a refresh.
const CONCURRENCY: usize = 64;
/// How often the groups with watchers are read and their changes announced.
pub(crate) const EVENT_TICK: Duration = Duration::from_millis(250);
/// Most `join`/`leave` events sent per group and tick.
pub(crate) const MAX_EVENTS_PER_TICK: usize = 50;
/// Occupied groups checked per refresh for a vacancy nobody here saw happen.
const SWEEP: usize = 1000;

#[derive(Debug)]
struct Change {
    group: GroupName,
    sub: Option<Arc<str>>,
    joined: bool,
    watch: Watch,
}

/// What a change does to a group's watchers.
#[derive(Clone, Debug)]
pub(crate) enum Watch {
    /// The connection is no watcher.
    No,
    /// A watcher joins: its events go to this outbox.
    Add(ConnId, Outbox),
    /// A watcher leaves.
    Remove(ConnId),
}

/// A group with watchers here.
#[derive(Debug, Default)]
struct Watched {
    members: HashMap<ConnId, Outbox>,
    /// The `sub`s the watchers were told about; `None` until the first read.
    announced: Option<BTreeSet<String>>,
}

/// Handle to the presence task.
#[derive(Clone, Debug)]
pub(crate) struct PresenceBook {
    tx: mpsc::Sender<Change>,
}

/// One group on this node.
#[derive(Debug, Default)]
struct Local {
    connections: u64,
    /// Connections per `sub` (anonymous connections have none).
    subs: HashMap<Arc<str>, u64>,
}

impl Local {
    fn entry(&self) -> LocalPresence {
        let mut subs: Vec<String> = self.subs.keys().map(|s| s.to_string()).collect();
        subs.sort_unstable();
        LocalPresence {
            connections: self.connections,
            subs,
        }
    }
}

impl PresenceBook {
    /// Starts the task; it ends when `cancel` fires (or every handle is dropped).
    pub(crate) fn spawn(
        layer: NodeLayer,
        refresh: Duration,
        metrics: Arc<Metrics>,
        webhooks: Option<Webhooks>,
        tracker: &tokio_util::task::TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = Task {
            layer,
            refresh,
            ttl: refresh.saturating_mul(2),
            metrics,
            failures: BurstLog::default(),
            groups: HashMap::new(),
            watched: HashMap::new(),
            webhooks,
            present: HashSet::new(),
            rechecks: HashMap::new(),
        };
        tracker.spawn(task.run(rx, cancel));
        Self { tx }
    }

    /// Counts a connection of `sub` into `groups` (a watcher with `Watch::Add`).
    pub(crate) async fn joined(&self, groups: &[GroupName], sub: Option<&Arc<str>>, watch: Watch) {
        self.send(groups, sub, true, watch).await;
    }

    /// Counts a connection of `sub` out of `groups` (a watcher with `Watch::Remove`).
    pub(crate) async fn left(&self, groups: &[GroupName], sub: Option<&Arc<str>>, watch: Watch) {
        self.send(groups, sub, false, watch).await;
    }

    async fn send(&self, groups: &[GroupName], sub: Option<&Arc<str>>, joined: bool, watch: Watch) {
        for group in groups {
            let change = Change {
                group: group.clone(),
                sub: sub.cloned(),
                joined,
                watch: watch.clone(),
            };
            // An error means the task ended (shutdown): presence no longer matters.
            if self.tx.send(change).await.is_err() {
                return;
            }
        }
    }
}

struct Task {
    layer: NodeLayer,
    refresh: Duration,
    ttl: Duration,
    metrics: Arc<Metrics>,
    failures: BurstLog,
    /// Groups with connections here. Bounded by the connections' memberships: a group
    /// leaves the map with its last connection.
    groups: HashMap<GroupName, Local>,
    /// Groups with watchers here; a group leaves with its last watcher.
    watched: HashMap<GroupName, Watched>,
    webhooks: Option<Webhooks>,
    /// Groups whose entry was last written with connections.
    present: HashSet<GroupName>,
    /// Groups emptied here, and when to ask again whether they are vacated. One per
    /// group: bounded like `groups`.
    rechecks: HashMap<GroupName, tokio::time::Instant>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Change>, cancel: CancellationToken) {
        let mut refresh = tokio::time::interval(self.refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate and there is nothing to refresh yet.
        refresh.tick().await;
        let mut events = tokio::time::interval(EVENT_TICK);
        events.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let check_every = self
            .webhooks
            .as_ref()
            .map_or(Duration::from_secs(1), |w| w.vacated_delay / 5)
            .clamp(Duration::from_millis(20), Duration::from_secs(1));
        let mut checks = tokio::time::interval(check_every);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dirty: HashSet<GroupName> = HashSet::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = checks.tick(), if !self.rechecks.is_empty() => self.recheck().await,
                _ = events.tick(), if !self.watched.is_empty() => self.announce().await,
                change = rx.recv() => {
                    let Some(change) = change else { break };
                    self.apply(change, &mut dirty);
                    // Whatever else is queued joins this write.
                    while dirty.len() < BATCH {
                        match rx.try_recv() {
                            Ok(change) => self.apply(change, &mut dirty),
                            Err(_) => break,
                        }
                    }
                    let groups: Vec<GroupName> = dirty.drain().collect();
                    self.write(groups).await;
                }
                _ = refresh.tick() => {
                    let groups: Vec<GroupName> = self.groups.keys().cloned().collect();
                    self.write(groups).await;
                    self.sweep().await;
                }
            }
        }
    }

    fn apply(&mut self, change: Change, dirty: &mut HashSet<GroupName>) {
        match change.watch {
            Watch::No => {}
            Watch::Add(id, outbox) => {
                self.watched
                    .entry(change.group.clone())
                    .or_default()
                    .members
                    .insert(id, outbox);
            }
            Watch::Remove(id) => {
                if let Some(watched) = self.watched.get_mut(&change.group) {
                    watched.members.remove(&id);
                    if watched.members.is_empty() {
                        self.watched.remove(&change.group);
                    }
                }
            }
        }
        let local = self.groups.entry(change.group.clone()).or_default();
        if change.joined {
            local.connections += 1;
            if let Some(sub) = change.sub {
                *local.subs.entry(sub).or_default() += 1;
            }
        } else {
            local.connections = local.connections.saturating_sub(1);
            if let Some(sub) = change.sub {
                if let Some(n) = local.subs.get_mut(&sub) {
                    *n -= 1;
                    if *n == 0 {
                        local.subs.remove(&sub);
                    }
                }
            }
        }
        dirty.insert(change.group);
    }

    /// Writes the entries of `groups` (deleting those with no connection left), up to
    /// [`CONCURRENCY`] at a time. A failed write is counted and corrected by the next
    /// refresh; a failed delete leaves an entry that expires within the ttl.
    async fn write(&mut self, groups: Vec<GroupName>) {
        let mut in_flight = JoinSet::new();
        let mut failed = 0u64;
        let mut firsts = Vec::new();
        let mut emptied = Vec::new();
        for group in groups {
            let entry = match self.groups.get(&group) {
                Some(local) if local.connections > 0 => local.entry(),
                _ => {
                    self.groups.remove(&group);
                    LocalPresence::default()
                }
            };
            if entry.connections > 0 {
                if self.present.insert(group.clone()) {
                    firsts.push((group.clone(), entry.subs.clone()));
                }
            } else if self.present.remove(&group) {
                emptied.push(group.clone());
            }
            if in_flight.len() >= CONCURRENCY {
                failed += Self::failures_of(in_flight.join_next().await);
            }
            let layer = self.layer.clone();
            let ttl = self.ttl;
            in_flight.spawn(async move { layer.presence_update(&group, &entry, ttl).await });
        }
        while let Some(done) = in_flight.join_next().await {
            failed += Self::failures_of(Some(done));
        }
        // After the entries: a vacancy check elsewhere sees this node's connections.
        if let Some(webhooks) = self.webhooks.clone() {
            for (group, subs) in firsts {
                self.rechecks.remove(&group);
                match self.layer.occupy(&group).await {
                    Ok(true) => webhooks.send(Transition::Occupied, group, subs),
                    Ok(false) => {}
                    Err(_) => {
                        failed += 1;
                        // Not marked present here, so the next refresh (which writes
                        // every group) finds it first again and retries the occupy:
                        // otherwise its `group.occupied` would never be sent.
                        self.present.remove(&group);
                    }
                }
            }
            let at = tokio::time::Instant::now() + webhooks.vacated_delay;
            for group in emptied {
                // Starts the group's empty clock, unless another node has connections.
                if self.vacate(&webhooks, &group).await.is_err() {
                    failed += 1;
                }
                self.rechecks.insert(group, at);
            }
        }
        if failed > 0 {
            Metrics::add(&self.metrics.presence_failures, failed);
            if let Some(n) = self.failures.hit() {
                tracing::warn!(
                    failed = n,
                    "presence entries not written to the layer; retried at the next refresh"
                );
            }
        }
    }

    /// Asks the layer whether `group` is vacated now; queues the webhook if this node won.
    async fn vacate(
        &self,
        webhooks: &Webhooks,
        group: &GroupName,
    ) -> Result<(), herald_core::LayerError> {
        if self.layer.vacate(group, webhooks.vacated_delay).await? {
            webhooks.send(Transition::Vacated, group.clone(), Vec::new());
        }
        Ok(())
    }

    /// Asks again about the groups emptied here `vacated_delay` ago.
    async fn recheck(&mut self) {
        let Some(webhooks) = self.webhooks.clone() else {
            self.rechecks.clear();
            return;
        };
        let now = tokio::time::Instant::now();
        let due: Vec<GroupName> = self
            .rechecks
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(g, _)| g.clone())
            .collect();
        let mut failed = 0;
        for group in due {
            self.rechecks.remove(&group);
            if !self.present.contains(&group) && self.vacate(&webhooks, &group).await.is_err() {
                failed += 1;
            }
        }
        self.count_failures(failed);
    }

    /// Checks the occupied groups without connections here: finds those whose last node
    /// died (its entries expired), or whose check this node missed.
    async fn sweep(&mut self) {
        let Some(webhooks) = self.webhooks.clone() else {
            return;
        };
        let groups = match self.layer.occupied(SWEEP).await {
            Ok(groups) => groups,
            Err(_) => return self.count_failures(1),
        };
        let mut failed = 0;
        for group in groups {
            if !self.present.contains(&group) && self.vacate(&webhooks, &group).await.is_err() {
                failed += 1;
            }
        }
        self.count_failures(failed);
    }

    fn count_failures(&self, failed: u64) {
        if failed > 0 {
            Metrics::add(&self.metrics.presence_failures, failed);
            if let Some(n) = self.failures.hit() {
                tracing::warn!(
                    failed = n,
                    "presence calls to the layer failed; retried at the next refresh"
                );
            }
        }
    }

    /// Reads the presence of every watched group and sends each one's changes since the
    /// last announcement to its watchers, up to [`MAX_EVENTS_PER_TICK`].
    async fn announce(&mut self) {
        let groups: Vec<GroupName> = self.watched.keys().cloned().collect();
        let mut reads = JoinSet::new();
        let mut answers = Vec::with_capacity(groups.len());
        for group in groups {
            if reads.len() >= CONCURRENCY {
                answers.extend(reads.join_next().await);
            }
            let layer = self.layer.clone();
            reads.spawn(async move {
                let presence = layer.presence(&group).await;
                (group, presence)
            });
        }
        while let Some(done) = reads.join_next().await {
            answers.push(done);
        }
        let mut failed = 0;
        for answer in answers {
            let (group, presence) = match answer {
                Ok((group, Ok(presence))) => (group, presence),
                Ok((_, Err(_))) | Err(_) => {
                    failed += 1;
                    continue;
                }
            };
            // The group may have lost its last watcher while it was read.
            let Some(watched) = self.watched.get_mut(&group) else {
                continue;
            };
            let now: BTreeSet<String> = presence.subs.into_iter().collect();
            let Some(announced) = watched.announced.as_mut() else {
                watched.announced = Some(now);
                continue;
            };
            let joins: Vec<String> = now.difference(announced).cloned().collect();
            let leaves: Vec<String> = announced.difference(&now).cloned().collect();
            let changes = leaves
                .into_iter()
                .map(|s| (false, s))
                .chain(joins.into_iter().map(|s| (true, s)))
                .take(MAX_EVENTS_PER_TICK);
            for (joined, sub) in changes {
                let frame = OutFrame {
                    frame: crate::protocol::presence_event(joined, &group, &sub),
                    slot: CONTROL_SLOT,
                    offset: 0,
                    epoch: 0,
                };
                for outbox in watched.members.values() {
                    // A full outbox counts the drop and closes the connection (4001).
                    outbox.offer(frame.clone(), &self.metrics, false);
                }
                if joined {
                    announced.insert(sub);
                } else {
                    announced.remove(&sub);
                }
            }
        }
        if failed > 0 {
            Metrics::add(&self.metrics.presence_failures, failed);
            if let Some(n) = self.failures.hit() {
                tracing::warn!(
                    failed = n,
                    "presence not read for join/leave events; read again at the next tick"
                );
            }
        }
    }

    fn failures_of(
        done: Option<Result<Result<(), herald_core::LayerError>, tokio::task::JoinError>>,
    ) -> u64 {
        match done {
            Some(Ok(Ok(()))) | None => 0,
            Some(Ok(Err(_)) | Err(_)) => 1,
        }
    }
}
