//! `IdempotencyRecords`: the memory layer's record of which idempotency keys were
//! published to which group, and at which position, within the idempotency window.
//!
//! Bounded: at most [`MAX_KEYS_PER_GROUP`] keys per group (the oldest is forgotten
//! first), records older than the window are dropped on use, and groups whose every
//! record expired are swept.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::{GroupName, Position};

/// Most keys remembered per group; past it the oldest key is forgotten (a retry of it
/// after that would publish again).
pub const MAX_KEYS_PER_GROUP: usize = 10_000;

/// Keys published per group, with the position of their first message.
#[derive(Debug, Default)]
pub(crate) struct IdempotencyRecords {
    groups: HashMap<GroupName, GroupRecords>,
    last_sweep: Option<Instant>,
}

#[derive(Debug, Default)]
struct GroupRecords {
    by_key: HashMap<Arc<str>, (Position, Instant)>,
    /// Keys in the order they were recorded, to expire and evict the oldest first.
    order: VecDeque<(Arc<str>, Instant)>,
}

impl GroupRecords {
    fn expire(&mut self, window: Duration, now: Instant) {
        while let Some((key, at)) = self.order.front() {
            if now.saturating_duration_since(*at) < window && self.order.len() <= MAX_KEYS_PER_GROUP
            {
                break;
            }
            // A key is recorded once (a duplicate is never recorded again), so the entry
            // in `by_key` is this one.
            self.by_key.remove(key);
            self.order.pop_front();
        }
    }
}

impl IdempotencyRecords {
    /// The position of the first message published to `group` with `key` within
    /// `window`, if any.
    pub(crate) fn first(
        &mut self,
        group: &GroupName,
        key: &str,
        window: Duration,
        now: Instant,
    ) -> Option<Position> {
        self.sweep(window, now);
        let records = self.groups.get_mut(group)?;
        records.expire(window, now);
        records
            .by_key
            .get(key)
            .map(|(position, _)| position.clone())
    }

    /// Records that `key`'s first message in `group` is at `position`.
    pub(crate) fn record(
        &mut self,
        group: &GroupName,
        key: Arc<str>,
        position: Position,
        window: Duration,
        now: Instant,
    ) {
        let records = self.groups.entry(group.clone()).or_default();
        records.by_key.insert(key.clone(), (position, now));
        records.order.push_back((key, now));
        records.expire(window, now);
    }

    /// Forgets groups whose records all expired, at most once per window (or minute).
    fn sweep(&mut self, window: Duration, now: Instant) {
        let every = window.min(Duration::from_secs(60));
        if self
            .last_sweep
            .is_some_and(|at| now.saturating_duration_since(at) < every)
        {
            return;
        }
        self.last_sweep = Some(now);
        self.groups.retain(|_, records| {
            records
                .order
                .back()
                .is_some_and(|(_, at)| now.saturating_duration_since(*at) < window)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Epoch;

    fn pos(offset: u64) -> Position {
        Position {
            offset,
            epoch: Epoch::new("e"),
        }
    }

    #[test]
    fn a_key_answers_its_first_position_within_the_window() {
        let group = GroupName::new("g").expect("group");
        let window = Duration::from_secs(60);
        let now = Instant::now();
        let mut records = IdempotencyRecords::default();
        assert_eq!(records.first(&group, "k", window, now), None);
        records.record(&group, Arc::from("k"), pos(7), window, now);
        assert_eq!(records.first(&group, "k", window, now), Some(pos(7)));
        let later = now + window;
        assert_eq!(records.first(&group, "k", window, later), None);
    }

    #[test]
    fn keys_per_group_are_bounded() {
        let group = GroupName::new("g").expect("group");
        let window = Duration::from_secs(60);
        let now = Instant::now();
        let mut records = IdempotencyRecords::default();
        for i in 0..MAX_KEYS_PER_GROUP + 10 {
            records.record(&group, Arc::from(i.to_string()), pos(i as u64), window, now);
        }
        let g = records.groups.get(&group).expect("records");
        assert_eq!(g.order.len(), MAX_KEYS_PER_GROUP);
        assert_eq!(g.by_key.len(), MAX_KEYS_PER_GROUP);
        assert_eq!(records.first(&group, "0", window, now), None);
        assert!(records.first(&group, "10", window, now).is_some());
    }
}
