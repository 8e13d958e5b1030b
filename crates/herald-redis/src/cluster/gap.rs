//! Gap repair on the shard connections.
//!
//! On Redis Cluster a group's subscription moves between connections: its slot migrates
//! (Redis drops the channel on the old shard, herald re-subscribes on the new one), or its
//! master fails and a replica takes over. Messages published in between reach no
//! subscriber of this node. Each node therefore remembers the last position it delivered
//! per wanted group ([`Positions`], bounded by the wanted set) and repairs from the
//! group's history, in the shard's read loop so that order is kept:
//!
//! - when a re-subscription of a group with a remembered position is confirmed, the
//!   messages after that position are read from history and delivered first (messages
//!   published after the confirmation arrive live after them; the ones that overlap are
//!   dropped here);
//! - when a live message skips offsets (same epoch), the missing ones are read from
//!   history and delivered before it.
//!
//! When history cannot cover the gap (trimmed, expired, or another epoch) nothing is
//! invented: the live message is delivered as it is and the connections' own checks
//! (epoch change → reset) take over. A live offset at or below one this node saw live is
//! a lost write (`lost_writes.rs`: the group gets a new epoch); one at or below the
//! remembered position but never seen live was delivered by a repair and is dropped.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use herald_core::{GroupName, Message, Position};

use super::command::Commands;
use super::shard::ShardHealth;
use crate::layer::Shared;
use crate::scripts;

/// The last position delivered per wanted group.
#[derive(Debug, Default)]
pub(crate) struct Positions(Mutex<HashMap<GroupName, Position>>);

impl Positions {
    fn lock(&self) -> MutexGuard<'_, HashMap<GroupName, Position>> {
        // One insert or remove at a time: take a poisoned lock over.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn last(&self, group: &GroupName) -> Option<Position> {
        self.lock().get(group).cloned()
    }

    /// Remembers `message` as delivered if it is ahead of what was (or of another epoch).
    /// An entry is kept only while its group is wanted: checked after the insert, so a
    /// concurrent unsubscribe (which changes the wanted set, then calls `forget`) never
    /// leaves one behind.
    pub(crate) fn record(&self, shared: &Shared, message: &Message) {
        {
            let mut map = self.lock();
            let ahead = map
                .get(&message.group)
                .is_none_or(|last| last.epoch != message.epoch || message.offset > last.offset);
            if !ahead {
                return;
            }
            map.insert(
                message.group.clone(),
                Position {
                    offset: message.offset,
                    epoch: message.epoch.clone(),
                },
            );
        }
        if !shared.is_wanted(&message.group) {
            self.lock().remove(&message.group);
        }
    }

    /// Drops the entries of those of `groups` that are no longer wanted.
    pub(crate) fn forget(&self, shared: &Shared, groups: &[GroupName]) {
        let mut map = self.lock();
        for group in groups {
            if !shared.is_wanted(group) {
                map.remove(group);
            }
        }
    }

    pub(crate) fn clear(&self) {
        self.lock().clear();
    }
}

/// The messages of `group` after `since` (up to `upto` when given), from history; empty
/// when history cannot cover them or Redis does not answer in time.
pub(crate) async fn fill(
    shared: &Shared,
    health: &ShardHealth,
    commands: &mut Commands,
    group: &GroupName,
    since: &Position,
    upto: Option<u64>,
) -> Vec<Message> {
    let count = |covered: bool| {
        health.count_gap_fill(covered);
        if let Some(cluster) = shared.cluster.as_ref() {
            let total = if covered {
                &cluster.gap_fills
            } else {
                &cluster.gap_fill_failures
            };
            total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let read = scripts::history(commands, &shared.keys, shared.limits, group, Some(since));
    match tokio::time::timeout(shared.config.command_timeout, read).await {
        Ok(Ok(history)) if history.recovered && history.current.epoch == since.epoch => {
            count(true);
            let messages: Vec<Message> = history
                .messages
                .into_iter()
                .filter(|m| m.offset > since.offset && upto.is_none_or(|u| m.offset <= u))
                .collect();
            if !messages.is_empty() {
                // Debug: a failover re-homes every group of a shard at once; the metric
                // (`gap_fills`) is what to watch.
                tracing::debug!(prefix = %shared.config.prefix, %group, from = since.offset, count = messages.len(), "delivered a gap from history");
            }
            messages
        }
        Ok(Ok(_)) => {
            count(false);
            tracing::warn!(prefix = %shared.config.prefix, %group, from = since.offset, "history does not cover a delivery gap; connections will see it");
            Vec::new()
        }
        Ok(Err(e)) => {
            count(false);
            tracing::warn!(prefix = %shared.config.prefix, %group, error = %e, "reading history to fill a delivery gap failed");
            Vec::new()
        }
        Err(_) => {
            count(false);
            tracing::warn!(prefix = %shared.config.prefix, %group, "reading history to fill a delivery gap timed out");
            Vec::new()
        }
    }
}
