//! Lost acknowledged writes: what this node saw of each group's positions, and the
//! checks that turn a failover's lost writes into an explicit stream reset (a new epoch)
//! instead of offsets silently reassigned to other messages. The reasoning is in the
//! crate doc, "Failover: gaps and lost writes".

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use herald_core::{Epoch, GroupName, Message, Payload, Position};
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::layer::{Counter, Shared};
use crate::scripts;

/// Most groups remembered: bounds the memory (about 100 bytes an entry) and the work of
/// the check after a reconnect. Past it, an arbitrary entry is forgotten for a new one;
/// a forgotten group is not checked (the connection-level checks still apply).
pub(crate) const MAX_SEEN: usize = 100_000;
/// Groups checked by one script call after a reconnect.
const CHECK_BATCH: usize = 256;

/// What this node saw of one group under one epoch.
#[derive(Debug, Clone)]
struct Entry {
    epoch: Epoch,
    /// Highest offset acknowledged to a publish here or read as current by a history read.
    acked: u64,
    /// Highest offset received live on the subscriber connection. Within a session a
    /// live message is never older than this; from one session to the next, nothing
    /// acknowledged in the previous one may come again (`fence`).
    live: u64,
    /// The epoch this node replaced with a new one: live messages still carrying it were
    /// published before the reset and are dropped (their clients were reset).
    retired: Option<Epoch>,
}

/// What a live message means for its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Live {
    /// In order (or a gap, which the connections handle): deliver it.
    Deliver,
    /// Its offset is at or below one already seen under the same epoch: the master lost
    /// writes and reassigned their offsets. Reset the group.
    Reassigned,
    /// It carries an epoch this node already replaced: drop it.
    Retired,
}

/// The positions this node saw, per group (at most [`MAX_SEEN`] groups).
#[derive(Debug, Default)]
pub(crate) struct Seen {
    map: Mutex<HashMap<GroupName, Entry>>,
    /// Groups found to have lost acknowledged writes, and reset.
    pub(crate) lost: Counter,
    /// When a live reset was last logged, and how many happened since: one line per
    /// burst (a failover can reset many groups at once).
    log: Mutex<(Option<Instant>, u64)>,
}

/// The shortest time between two log lines about live resets.
const LOG_QUIET: Duration = Duration::from_secs(10);

impl Seen {
    fn lock(&self) -> MutexGuard<'_, HashMap<GroupName, Entry>> {
        // Each critical section replaces or updates one entry in one step.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry<'m>(
        map: &'m mut HashMap<GroupName, Entry>,
        group: &GroupName,
        epoch: &Epoch,
    ) -> &'m mut Entry {
        if !map.contains_key(group) && map.len() >= MAX_SEEN {
            // Forget one arbitrary group to stay bounded.
            if let Some(victim) = map.keys().next().cloned() {
                map.remove(&victim);
            }
        }
        let entry = map.entry(group.clone()).or_insert_with(|| Entry {
            epoch: epoch.clone(),
            acked: 0,
            live: 0,
            retired: None,
        });
        if entry.epoch != *epoch {
            let retired = entry.retired.take();
            *entry = Entry {
                epoch: epoch.clone(),
                acked: 0,
                live: 0,
                retired,
            };
        }
        entry
    }

    /// A position acknowledged to a publish, or read as a group's current one.
    pub(crate) fn acked(&self, group: &GroupName, position: &Position) {
        let mut map = self.lock();
        if Self::is_retired(&map, group, &position.epoch) {
            return;
        }
        let entry = Self::entry(&mut map, group, &position.epoch);
        entry.acked = entry.acked.max(position.offset);
    }

    fn is_retired(map: &HashMap<GroupName, Entry>, group: &GroupName, epoch: &Epoch) -> bool {
        map.get(group)
            .is_some_and(|e| e.retired.as_ref() == Some(epoch))
    }

    /// A message received live: records it and says what it means.
    pub(crate) fn live(&self, message: &Message) -> Live {
        let mut map = self.lock();
        if Self::is_retired(&map, &message.group, &message.epoch) {
            return Live::Retired;
        }
        let entry = Self::entry(&mut map, &message.group, &message.epoch);
        if message.offset <= entry.live {
            return Live::Reassigned;
        }
        entry.live = message.offset;
        Live::Deliver
    }

    /// At the start of a session: whatever was acknowledged before can never come live
    /// again, so it counts as seen live.
    pub(crate) fn fence(&self) {
        for entry in self.lock().values_mut() {
            entry.live = entry.live.max(entry.acked);
        }
    }

    /// Every group with what was seen of it: (group, epoch, highest offset).
    pub(crate) fn snapshot(&self) -> Vec<(GroupName, Epoch, u64)> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.live.max(e.acked) > 0)
            .map(|(g, e)| (g.clone(), e.epoch.clone(), e.live.max(e.acked)))
            .collect()
    }

    /// The group was given epoch `new` in place of `old`: starts over under it.
    fn replaced(&self, group: &GroupName, old: &Epoch, new: &Epoch) {
        let mut map = self.lock();
        let entry = Self::entry(&mut map, group, new);
        if old != new {
            entry.retired = Some(old.clone());
        }
    }

    /// Records one reset; `Some(n)` when a line should be logged now for the `n` resets
    /// since the last line.
    fn log_hit(&self) -> Option<u64> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.1 = log.1.saturating_add(1);
        let now = Instant::now();
        match log.0 {
            Some(at) if now.saturating_duration_since(at) < LOG_QUIET => None,
            _ => {
                log.0 = Some(now);
                Some(std::mem::take(&mut log.1))
            }
        }
    }

    /// Whether `group` is remembered (for tests).
    #[cfg(test)]
    fn contains(&self, group: &GroupName) -> bool {
        self.lock().contains_key(group)
    }
}

/// A stream-reset notice for `group`: offset 0 (never a message's offset) under the
/// group's new epoch. It carries no payload for anyone; a node's connections that still
/// hold the old epoch see the epoch change and close with 4400 (SSE: `event: close`), so
/// their clients resume and are told `recovered: false`. Plain-mode clients never get it.
pub fn reset_notice(group: GroupName, epoch: Epoch) -> Message {
    Message {
        group,
        offset: 0,
        epoch,
        payload: Payload::text(String::new()),
        received_at: None,
    }
}

/// After connecting, before the session is installed: checks every remembered group
/// against the master; each that lost acknowledged writes gets a new epoch. Every
/// remembered group whose epoch is no longer the one seen (reset now, by another node,
/// or gone with Redis' data) gets a reset notice for this node's connections, if wanted.
pub(crate) async fn check_after_connect(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    cancel: &CancellationToken,
) -> Result<(), String> {
    shared.seen.fence();
    check_groups(shared, conn, &shared.seen.snapshot(), CHECK_BATCH, cancel).await
}

/// Checks `groups` (as [`Seen::snapshot`] lists them) against the master, `batch` groups
/// per script call: on Redis Cluster one call may only name one slot's keys, so a shard
/// checks its groups one per call (`cluster/shard.rs`, after each shard connect).
pub(crate) async fn check_groups<C>(
    shared: &Shared,
    conn: &mut C,
    groups: &[(GroupName, Epoch, u64)],
    batch: usize,
    cancel: &CancellationToken,
) -> Result<(), String>
where
    C: redis::aio::ConnectionLike + Send,
{
    let mut lost = 0u64;
    let mut example = None;
    for batch in groups.chunks(batch.max(1)) {
        let call = scripts::reset_lost(conn, &shared.keys, batch);
        let checked = match tokio::time::timeout(shared.config.command_timeout, call).await {
            Ok(Ok(checked)) => checked,
            Ok(Err(e)) => return Err(format!("checking for lost writes: {e}")),
            Err(_) => return Err("checking for lost writes: no answer in time".to_owned()),
        };
        for ((group, old, offset), checked) in batch.iter().zip(checked) {
            if checked.epoch.as_ref() == Some(old) {
                continue;
            }
            if checked.reset {
                shared.seen.lost.increment();
                lost += 1;
                example.get_or_insert((group.clone(), *offset));
            }
            // Reset here, by another node, or the group's keys are gone: either way this
            // node's streams of the old epoch are stale and must be told now, not at the
            // group's next message (which may never come).
            let new = checked.epoch.unwrap_or_else(Epoch::random);
            shared.seen.replaced(group, old, &new);
            notify(shared, group, new, cancel).await;
        }
    }
    if let Some((group, offset)) = example {
        // One line for the whole check, however many groups it reset.
        tracing::warn!(
            prefix = %shared.config.prefix,
            groups = lost,
            example = %group,
            seen_offset = offset,
            "redis lost acknowledged writes (failover?): these groups get a new epoch and their clients a stream reset"
        );
    }
    Ok(())
}

/// A live message reassigned an offset already seen: gives the group a new epoch (unless
/// another node already did) and resets this node's connections to it. `Err` when Redis
/// could not be asked: the session ends and the check after the reconnect takes over.
pub(crate) async fn reset_reassigned(
    shared: &Shared,
    message: &Message,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let (_, mut conn) = shared
        .command_connection()
        .map_err(|e| format!("resetting {}: {e}", message.group))?;
    // Whatever the master's offset, the epoch is wrong: a message reassigned an offset.
    let batch = [(message.group.clone(), message.epoch.clone(), u64::MAX)];
    let call = scripts::reset_lost(&mut conn, &shared.keys, &batch);
    let checked = match tokio::time::timeout(shared.config.command_timeout, call).await {
        Ok(Ok(mut checked)) => checked.pop(),
        Ok(Err(e)) => return Err(format!("resetting {}: {e}", message.group)),
        Err(_) => return Err(format!("resetting {}: no answer in time", message.group)),
    };
    // A group without an epoch any more starts a new one at its next publish; the
    // connections are reset to a random one meanwhile (any change resets them).
    let new = checked.and_then(|c| c.epoch).unwrap_or_else(Epoch::random);
    shared.seen.lost.increment();
    if let Some(resets) = shared.seen.log_hit() {
        tracing::warn!(
            prefix = %shared.config.prefix,
            group = %message.group,
            offset = message.offset,
            resets,
            "redis reassigned an offset already seen (lost writes after a failover?): the group gets a new epoch and its clients a stream reset"
        );
    }
    shared.seen.replaced(&message.group, &message.epoch, &new);
    notify(shared, &message.group, new, cancel).await;
    Ok(())
}

async fn notify(shared: &Shared, group: &GroupName, epoch: Epoch, cancel: &CancellationToken) {
    let Some(group) = shared.wanted_group(group) else {
        return;
    };
    tokio::select! {
        _ = cancel.cancelled() => {}
        permit = shared.tx.reserve() => {
            // An error means nobody reads `Incoming` any more.
            if let Ok(permit) = permit {
                permit.send(reset_notice(group, epoch));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(group: &GroupName, offset: u64, epoch: &str) -> Message {
        Message {
            group: group.clone(),
            offset,
            epoch: Epoch::new(epoch),
            payload: Payload::text("x"),
            received_at: None,
        }
    }

    #[test]
    fn a_live_offset_at_or_below_one_seen_live_is_reassigned() {
        let seen = Seen::default();
        let g = GroupName::new("g").unwrap();
        assert_eq!(seen.live(&message(&g, 1, "E")), Live::Deliver);
        assert_eq!(seen.live(&message(&g, 2, "E")), Live::Deliver);
        assert_eq!(seen.live(&message(&g, 5, "E")), Live::Deliver, "a gap");
        assert_eq!(seen.live(&message(&g, 5, "E")), Live::Reassigned);
        assert_eq!(seen.live(&message(&g, 3, "E")), Live::Reassigned);
        assert_eq!(
            seen.live(&message(&g, 1, "F")),
            Live::Deliver,
            "a new epoch"
        );
    }

    #[test]
    fn an_own_ack_before_its_live_copy_is_no_conflict_until_the_next_session() {
        let seen = Seen::default();
        let g = GroupName::new("g").unwrap();
        let at = |offset| Position {
            offset,
            epoch: Epoch::new("E"),
        };
        seen.acked(&g, &at(7));
        assert_eq!(seen.live(&message(&g, 7, "E")), Live::Deliver);
        seen.acked(&g, &at(9));
        seen.fence();
        assert_eq!(
            seen.live(&message(&g, 8, "E")),
            Live::Reassigned,
            "after a reconnect, offset 8 was already acknowledged by the old master"
        );
        assert_eq!(seen.snapshot(), vec![(g.clone(), Epoch::new("E"), 9)]);
    }

    #[test]
    fn a_replaced_epoch_is_retired() {
        let seen = Seen::default();
        let g = GroupName::new("g").unwrap();
        assert_eq!(seen.live(&message(&g, 4, "E")), Live::Deliver);
        seen.replaced(&g, &Epoch::new("E"), &Epoch::new("F"));
        assert_eq!(seen.live(&message(&g, 5, "E")), Live::Retired);
        assert_eq!(seen.live(&message(&g, 5, "F")), Live::Deliver);
    }

    #[test]
    fn live_resets_are_logged_once_per_burst() {
        let seen = Seen::default();
        assert_eq!(seen.log_hit(), Some(1));
        assert_eq!(seen.log_hit(), None);
        assert_eq!(seen.log_hit(), None);
        seen.log.lock().unwrap().0 = Some(Instant::now() - LOG_QUIET);
        assert_eq!(seen.log_hit(), Some(3), "the line counts the quiet ones");
    }

    #[test]
    fn bounded() {
        let seen = Seen::default();
        let at = Position {
            offset: 1,
            epoch: Epoch::new("E"),
        };
        for i in 0..MAX_SEEN + 10 {
            seen.acked(&GroupName::new(&format!("g{i}")).unwrap(), &at);
        }
        assert_eq!(seen.lock().len(), MAX_SEEN);
        let last = GroupName::new(&format!("g{}", MAX_SEEN + 9)).unwrap();
        assert!(seen.contains(&last), "the newest is kept");
    }
}
