//! `MemoryLayer`: the single-process layer, with a bounded history ring per group.
//!
//! It cannot scale past one node: use the Redis layer to share groups between processes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::history_ring::HistoryRing;
use crate::idempotency::IdempotencyRecords;
use crate::{
    Epoch, GroupName, HISTORY_ENTRY_OVERHEAD, History, HistoryConfig, Incoming, KeyedItem, Layer,
    LayerError, LocalPresence, Message, Payload, Position, Presence, Published,
};

/// Settings of a [`MemoryLayer`].
#[derive(Clone, Copy, Debug)]
pub struct MemoryLayerConfig {
    /// History bounds per group.
    pub history: HistoryConfig,
    /// Capacity of the [`Incoming`] channel, in messages. Default 4096. When it is full,
    /// `publish` waits for room (backpressure), it never drops.
    pub incoming_capacity: usize,
    /// Bytes of history kept by the whole node, counted as for
    /// [`HistoryConfig::max_bytes`]. Past it, the histories of the groups published to
    /// least recently are dropped (their epoch and offset stay, so live streams go on and
    /// a resume that needed them gets `recovered: false`). Default 64 MiB.
    pub max_total_bytes: usize,
    /// Groups whose position and history the node keeps. Past it, the group published to
    /// least recently and without a subscriber here is forgotten (a later publish starts
    /// a new epoch). Subscribed groups are never forgotten, so their count may exceed
    /// this. Default 100,000.
    pub max_groups: usize,
}

impl Default for MemoryLayerConfig {
    fn default() -> Self {
        Self {
            history: HistoryConfig::default(),
            incoming_capacity: 4096,
            max_total_bytes: 64 << 20,
            max_groups: 100_000,
        }
    }
}

/// What a [`MemoryLayer`] holds and has dropped, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Groups whose position (and possibly history) is kept.
    pub groups: u64,
    /// Bytes of history held, counted as for [`HistoryConfig::max_bytes`].
    pub bytes: u64,
    /// Histories dropped whole to stay under `max_total_bytes` or `max_groups`.
    pub evicted: u64,
}

/// Where a [`MemoryLayer`] hands each message published to a subscribed group, in place
/// of [`Incoming`] (see [`MemoryLayer::deliver_directly`]): the node's own fan-out, run by
/// the publisher itself instead of a task woken for it.
pub trait DirectSink: Send + Sync + std::fmt::Debug {
    /// Delivers `message` now and returns `None`, or gives it back to go through
    /// [`Incoming`]. Called in offset order, under the layer's lock: it must neither block
    /// nor wait, and it must not call the layer.
    fn offer(&self, message: Message) -> Option<Message>;

    /// Called once the lock is released, after one or more `offer`s took a message: the
    /// place for the part of a delivery that should not hold the lock (socket writes).
    fn flush(&self);
}

/// The in-process layer. Clones share one bus.
#[derive(Clone, Debug)]
pub struct MemoryLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    tx: mpsc::Sender<Message>,
    history: HistoryConfig,
    max_total_bytes: usize,
    max_groups: usize,
    /// One lock for all groups: offsets are assigned and messages enqueued (or offered to
    /// `direct`) under it, which is what keeps deliveries in offset order. Never held
    /// across an `.await`.
    state: Mutex<State>,
    /// Where published messages go before `Incoming`, once set.
    direct: OnceLock<Arc<dyn DirectSink>>,
}

#[derive(Debug, Default)]
struct State {
    groups: HashMap<GroupName, GroupState>,
    subscribed: HashSet<GroupName>,
    last_sweep: Option<Instant>,
    /// Every group by its last publish, oldest first (keyed by a stamp that grows with
    /// each publish): where the node-wide bounds evict from.
    by_activity: BTreeMap<u64, GroupName>,
    next_stamp: u64,
    /// History bytes held by all groups.
    bytes: usize,
    /// Histories dropped by the node-wide bounds.
    evicted: u64,
    /// Idempotency keys published per group (`publish_idempotent`).
    keys: IdempotencyRecords,
    /// This node's presence per group, each valid until its instant. One entry per group
    /// with connections (an update with none removes it); expired ones are swept at most
    /// once per [`PRESENCE_SWEEP`].
    presence: HashMap<GroupName, (Instant, LocalPresence)>,
    last_presence_sweep: Option<Instant>,
    /// Occupied groups, each with when it was first found empty (`occupy`/`vacate`).
    /// A group leaves with its `vacate`; bounded by the groups that had connections.
    occupied: HashMap<GroupName, Option<Instant>>,
}

/// How often [`State::presence`] drops entries whose `ttl` passed without a refresh.
const PRESENCE_SWEEP: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct GroupState {
    epoch: Epoch,
    last_offset: u64,
    last_activity: Instant,
    /// This group's key in `State::by_activity`.
    stamp: u64,
    ring: HistoryRing,
    /// History bytes of `ring`, as the bounds count them.
    bytes: usize,
}

/// What a payload of `len` bytes costs against the byte bounds.
fn cost(len: usize) -> usize {
    len.saturating_add(HISTORY_ENTRY_OVERHEAD)
}

impl GroupState {
    /// Drops the oldest entry; returns its cost.
    fn pop_oldest(&mut self) -> usize {
        let freed = self.ring.pop_oldest().map_or(0, cost);
        self.bytes = self.bytes.saturating_sub(freed);
        freed
    }
}

impl MemoryLayer {
    /// A new bus and the stream of messages for the groups it is subscribed to.
    pub fn new(config: MemoryLayerConfig) -> (Self, Incoming) {
        let (tx, rx) = mpsc::channel(config.incoming_capacity.max(1));
        let shared = Arc::new(Shared {
            tx,
            history: config.history,
            max_total_bytes: config.max_total_bytes,
            max_groups: config.max_groups.max(1),
            state: Mutex::new(State::default()),
            direct: OnceLock::new(),
        });
        (Self { shared }, rx)
    }

    /// From now on, offers every message published to a subscribed group to `sink`
    /// first, under the lock that assigns offsets; only what it gives back goes to
    /// [`Incoming`]. A sink that delivers keeps each group's order as long as it gives
    /// back every message of a group while an earlier one of that group is still queued
    /// on `Incoming`. Set once; a second call is refused and returns `false`.
    pub fn deliver_directly(&self, sink: Arc<dyn DirectSink>) -> bool {
        self.shared.direct.set(sink).is_ok()
    }

    /// `message`, published to a subscribed group, to the direct sink if there is one;
    /// what is left for `Incoming`. Sets `taken` when the sink took it.
    fn offer(&self, message: Message, taken: &mut bool) -> Option<Message> {
        match self.shared.direct.get() {
            Some(sink) => {
                let left = sink.offer(message);
                *taken |= left.is_none();
                left
            }
            None => Some(message),
        }
    }

    /// After the lock is released: lets the sink finish what it took.
    fn flush(&self, taken: bool) {
        if let (true, Some(sink)) = (taken, self.shared.direct.get()) {
            sink.flush();
        }
    }

    /// Whether this node asked for `group`'s messages (`subscribe` without a later
    /// `unsubscribe`): the one record of it, which the server's subscriptions task reads.
    pub fn is_subscribed(&self, group: &GroupName) -> bool {
        self.lock().subscribed.contains(group)
    }

    /// Groups and bytes held, and histories evicted.
    pub fn stats(&self) -> MemoryStats {
        let state = self.lock();
        MemoryStats {
            groups: state.groups.len() as u64,
            bytes: state.bytes as u64,
            evicted: state.evicted,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the maps half-updated in a way
        // that matters more than losing the process, so a poisoned lock is taken over.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The node-wide bounds, as [`State`] enforces them.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    history: HistoryConfig,
    max_total_bytes: usize,
    max_groups: usize,
}

impl Shared {
    fn bounds(&self) -> Bounds {
        Bounds {
            history: self.history,
            max_total_bytes: self.max_total_bytes,
            max_groups: self.max_groups,
        }
    }
}

impl State {
    /// The group's state, created with a fresh epoch when it has none, and trimmed by age.
    fn group(&mut self, group: &GroupName, bounds: &Bounds, now: Instant) -> &mut GroupState {
        self.sweep(&bounds.history, now);
        let mut stamp = 0;
        if !self.groups.contains_key(group) {
            self.make_room_for_a_group(bounds.max_groups);
            stamp = self.stamp();
            self.by_activity.insert(stamp, group.clone());
        }
        // Inserted exactly when it was missing above, with the stamp taken there.
        let state = self
            .groups
            .entry(group.clone())
            .or_insert_with(|| GroupState {
                epoch: Epoch::random(),
                last_offset: 0,
                last_activity: now,
                stamp,
                ring: HistoryRing::new(now),
                bytes: 0,
            });
        let mut freed = 0;
        while let Some(at) = state.ring.oldest_at() {
            if now.saturating_duration_since(at) > bounds.history.max_age {
                freed += state.pop_oldest();
            } else {
                break;
            }
        }
        self.bytes = self.bytes.saturating_sub(freed);
        state
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    /// Forgets groups without a subscriber here, least recently published first, until
    /// one more fits under `max_groups`.
    fn make_room_for_a_group(&mut self, max_groups: usize) {
        if self.groups.len() < max_groups {
            return;
        }
        let victims: Vec<u64> = self
            .by_activity
            .iter()
            .filter(|(_, g)| !self.subscribed.contains(*g))
            .map(|(stamp, _)| *stamp)
            .take(self.groups.len() + 1 - max_groups)
            .collect();
        for stamp in victims {
            if let Some(name) = self.by_activity.remove(&stamp) {
                if let Some(g) = self.groups.remove(&name) {
                    self.bytes = self.bytes.saturating_sub(g.bytes);
                    self.evicted += 1;
                }
            }
        }
    }

    /// Drops whole histories, least recently published first (never `keep`'s), until
    /// the node holds at most `max_total_bytes`; positions and epochs stay.
    fn shed_bytes(&mut self, max_total_bytes: usize, keep: u64) {
        let mut cursor = 0;
        while self.bytes > max_total_bytes {
            let Some((&stamp, name)) = self.by_activity.range(cursor..).next() else {
                break;
            };
            cursor = stamp + 1;
            if stamp == keep {
                continue;
            }
            let Some(g) = self.groups.get_mut(name) else {
                continue;
            };
            if g.ring.is_empty() {
                continue;
            }
            self.bytes = self.bytes.saturating_sub(g.bytes);
            g.ring.clear();
            g.bytes = 0;
            self.evicted += 1;
        }
    }

    /// Stamps `payload` with the group's next offset and stores it in the history ring,
    /// within the group's and the node's bounds; returns the message and whether this
    /// node subscribed to the group.
    fn append(
        &mut self,
        group: &GroupName,
        payload: Payload,
        bounds: &Bounds,
        now: Instant,
    ) -> (Message, bool) {
        let subscribed = self.subscribed.contains(group);
        let stamp = self.stamp();
        let config = bounds.history;
        let g = self.group(group, bounds, now);
        g.last_offset += 1;
        g.last_activity = now;
        let old_stamp = std::mem::replace(&mut g.stamp, stamp);
        let message = Message {
            group: group.clone(),
            offset: g.last_offset,
            epoch: g.epoch.clone(),
            payload,
            received_at: Some(std::time::Instant::now()),
        };
        let mut added = 0;
        let mut freed = 0;
        let size = cost(message.payload.data().len());
        if config.max_len > 0 && size <= config.max_bytes {
            g.ring.push(message.offset, &message.payload, now);
            g.bytes += size;
            added = size;
        } else {
            // Too large to keep: the history before it cannot be continued past it.
            while !g.ring.is_empty() {
                freed += g.pop_oldest();
            }
        }
        while g.ring.len() > config.max_len || g.bytes > config.max_bytes {
            freed += g.pop_oldest();
        }
        self.bytes = self.bytes.saturating_add(added).saturating_sub(freed);
        self.by_activity.remove(&old_stamp);
        self.by_activity.insert(stamp, group.clone());
        if self.bytes > bounds.max_total_bytes {
            self.shed_bytes(bounds.max_total_bytes, stamp);
        }
        (message, subscribed)
    }

    /// Forgets groups idle for longer than the history age, at most once per sweep
    /// interval, so abandoned groups do not accumulate. Their epoch goes with them.
    fn sweep(&mut self, config: &HistoryConfig, now: Instant) {
        let interval = config.max_age.min(Duration::from_secs(60));
        match self.last_sweep {
            Some(last) if now.saturating_duration_since(last) < interval => return,
            _ => {}
        }
        self.last_sweep = Some(now);
        let mut freed = 0;
        let by_activity = &mut self.by_activity;
        self.groups.retain(|_, g| {
            let keep = now.saturating_duration_since(g.last_activity) <= config.max_age;
            if !keep {
                freed += g.bytes;
                by_activity.remove(&g.stamp);
            }
            keep
        });
        self.bytes = self.bytes.saturating_sub(freed);
    }
}

impl Layer for MemoryLayer {
    async fn publish(&self, group: &GroupName, payload: Payload) -> Result<Position, LayerError> {
        // Reserve room first (this may wait), then assign the offset and enqueue under the
        // lock, so that messages enter `Incoming` in offset order.
        let permit = self
            .shared
            .tx
            .reserve()
            .await
            .map_err(|_| LayerError::Closed)?;
        let bounds = self.shared.bounds();
        let mut state = self.lock();
        let (message, subscribed) = state.append(group, payload, &bounds, Instant::now());
        let position = message.position();
        let mut taken = false;
        if subscribed {
            if let Some(message) = self.offer(message, &mut taken) {
                permit.send(message);
            }
        }
        drop(state);
        self.flush(taken);
        Ok(position)
    }

    async fn publish_batch(
        &self,
        items: Vec<(GroupName, Payload)>,
    ) -> Result<Vec<Position>, (usize, LayerError)> {
        if let [_] = &items[..] {
            // One message (one POST, one group: the usual request): the plain path,
            // without the keyed path's vectors.
            let Some((group, payload)) = items.into_iter().next() else {
                return Ok(Vec::new());
            };
            return match self.publish(&group, payload).await {
                Ok(position) => Ok(vec![position]),
                Err(e) => Err((0, e)),
            };
        }
        // The keyed path without keys: one reservation and one lock per chunk.
        let items = items
            .into_iter()
            .map(|(group, payload)| KeyedItem {
                group,
                payload,
                key: None,
            })
            .collect();
        let published = self.publish_idempotent(items, Duration::ZERO).await?;
        Ok(published.into_iter().map(|p| p.position).collect())
    }

    async fn publish_idempotent(
        &self,
        items: Vec<KeyedItem>,
        window: Duration,
    ) -> Result<Vec<Published>, (usize, LayerError)> {
        // The same as `publish` one by one, with one reservation and one lock per chunk; the
        // key check, the append and the record happen under that lock, so two concurrent
        // retries cannot both publish.
        let mut published = Vec::with_capacity(items.len());
        let chunk_len = self.shared.tx.max_capacity().max(1);
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let chunk: Vec<_> = items.by_ref().take(chunk_len).collect();
            let mut permits = match self.shared.tx.reserve_many(chunk.len()).await {
                Ok(permits) => permits,
                Err(_) => return Err((published.len(), LayerError::Closed)),
            };
            let now = Instant::now();
            let bounds = self.shared.bounds();
            let mut taken = false;
            let mut state = self.lock();
            for item in chunk {
                if let Some(key) = &item.key {
                    if let Some(first) = state.keys.first(&item.group, key, window, now) {
                        published.push(Published {
                            position: first,
                            duplicate: true,
                        });
                        continue;
                    }
                }
                let (message, subscribed) = state.append(&item.group, item.payload, &bounds, now);
                let position = message.position();
                if let Some(key) = item.key {
                    state
                        .keys
                        .record(&item.group, key, position.clone(), window, now);
                }
                published.push(Published {
                    position,
                    duplicate: false,
                });
                if subscribed {
                    // One permit was reserved per item, so one is always left here.
                    let left = self.offer(message, &mut taken);
                    if let (Some(message), Some(permit)) = (left, permits.next()) {
                        permit.send(message);
                    }
                }
            }
            drop(state);
            self.flush(taken);
        }
        Ok(published)
    }

    async fn subscribe(&self, group: &GroupName) -> Result<(), LayerError> {
        self.lock().subscribed.insert(group.clone());
        Ok(())
    }

    async fn unsubscribe(&self, group: &GroupName) -> Result<(), LayerError> {
        self.lock().subscribed.remove(group);
        Ok(())
    }

    async fn history(
        &self,
        group: &GroupName,
        since: Option<&Position>,
    ) -> Result<History, LayerError> {
        let bounds = self.shared.bounds();
        let now = Instant::now();
        let mut state = self.lock();
        let g = state.group(group, &bounds, now);
        let current = Position {
            offset: g.last_offset,
            epoch: g.epoch.clone(),
        };
        let Some(since) = since else {
            return Ok(History {
                current,
                recovered: true,
                messages: Vec::new(),
            });
        };
        let covered = since.epoch == g.epoch
            && since.offset <= g.last_offset
            && (since.offset == g.last_offset
                || g.ring
                    .first_offset()
                    .is_some_and(|first| first <= since.offset + 1));
        let messages = if covered {
            g.ring.after(since.offset, group, &g.epoch)
        } else {
            Vec::new()
        };
        Ok(History {
            current,
            recovered: covered,
            messages,
        })
    }

    /// One process is one node: the answer is this layer's own entry, if still valid.
    async fn presence_update(
        &self,
        group: &GroupName,
        local: &LocalPresence,
        ttl: Duration,
    ) -> Result<(), LayerError> {
        let now = Instant::now();
        let mut state = self.lock();
        if state
            .last_presence_sweep
            .is_none_or(|at| now.saturating_duration_since(at) >= PRESENCE_SWEEP)
        {
            state.last_presence_sweep = Some(now);
            state.presence.retain(|_, (until, _)| *until > now);
        }
        if local.connections == 0 {
            state.presence.remove(group);
        } else {
            let until = now + ttl.max(Duration::from_millis(1));
            state.presence.insert(group.clone(), (until, local.clone()));
        }
        Ok(())
    }

    async fn presence(&self, group: &GroupName) -> Result<Presence, LayerError> {
        let now = Instant::now();
        let state = self.lock();
        let live = state
            .presence
            .get(group)
            .filter(|(until, _)| *until > now)
            .map(|(_, entry)| entry);
        Ok(Presence::sum(live))
    }

    async fn occupy(&self, group: &GroupName) -> Result<bool, LayerError> {
        let mut state = self.lock();
        match state.occupied.get_mut(group) {
            Some(empty_since) => {
                *empty_since = None;
                Ok(false)
            }
            None => {
                state.occupied.insert(group.clone(), None);
                Ok(true)
            }
        }
    }

    async fn vacate(&self, group: &GroupName, delay: Duration) -> Result<bool, LayerError> {
        let now = Instant::now();
        let mut state = self.lock();
        let live = state
            .presence
            .get(group)
            .is_some_and(|(until, entry)| *until > now && entry.connections > 0);
        let Some(empty_since) = state.occupied.get_mut(group) else {
            return Ok(false);
        };
        if live {
            *empty_since = None;
            return Ok(false);
        }
        match *empty_since {
            None => {
                *empty_since = Some(now);
                Ok(false)
            }
            Some(since) if now.saturating_duration_since(since) >= delay => {
                state.occupied.remove(group);
                Ok(true)
            }
            Some(_) => Ok(false),
        }
    }

    async fn occupied(&self, limit: usize) -> Result<Vec<GroupName>, LayerError> {
        Ok(self.lock().occupied.keys().take(limit).cloned().collect())
    }

    fn is_ready(&self) -> bool {
        !self.shared.tx.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str) -> GroupName {
        GroupName::new(name).unwrap()
    }

    /// A batch of one (the one-item path) and a batch of several give the same offsets
    /// and deliveries, in order.
    #[tokio::test]
    async fn a_batch_of_one_publishes_like_a_batch_of_several() {
        let (layer, mut rx) = MemoryLayer::new(MemoryLayerConfig::default());
        let g = group("g");
        layer.subscribe(&g).await.unwrap();
        let one = layer
            .publish_batch(vec![(g.clone(), Payload::text("a"))])
            .await
            .unwrap();
        let two = layer
            .publish_batch(vec![
                (g.clone(), Payload::text("b")),
                (g.clone(), Payload::text("c")),
            ])
            .await
            .unwrap();
        let three = layer
            .publish_batch(vec![(g.clone(), Payload::text("d"))])
            .await
            .unwrap();
        let offsets: Vec<u64> = one
            .iter()
            .chain(&two)
            .chain(&three)
            .map(|p| p.offset)
            .collect();
        assert_eq!(offsets, [1, 2, 3, 4]);
        for (offset, text) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
            let m = rx.recv().await.unwrap();
            assert_eq!((m.offset, &m.payload.data()[..]), (offset, text.as_bytes()));
        }
        let h = layer.history(&g, None).await.unwrap();
        assert_eq!(h.current.offset, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn history_expires_by_age_and_the_epoch_with_it() {
        let (layer, _rx) = MemoryLayer::new(MemoryLayerConfig {
            history: HistoryConfig {
                max_len: 10,
                max_age: Duration::from_secs(60),
                ..HistoryConfig::default()
            },
            incoming_capacity: 16,
            ..MemoryLayerConfig::default()
        });
        let g = group("g");
        let first = layer.publish(&g, Payload::text("a")).await.unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        let h = layer
            .history(
                &g,
                Some(&Position {
                    offset: 0,
                    epoch: first.epoch.clone(),
                }),
            )
            .await
            .unwrap();
        assert!(!h.recovered, "the only message expired");
        // Once idle past the age, the group is forgotten and gets a new epoch.
        tokio::time::advance(Duration::from_secs(61)).await;
        let again = layer.publish(&g, Payload::text("b")).await.unwrap();
        assert_ne!(again.epoch, first.epoch);
        assert_eq!(again.offset, 1);
    }

    #[tokio::test]
    async fn trimmed_history_is_not_recovered() {
        let (layer, _rx) = MemoryLayer::new(MemoryLayerConfig {
            history: HistoryConfig {
                max_len: 3,
                max_age: Duration::from_secs(60),
                ..HistoryConfig::default()
            },
            incoming_capacity: 16,
            ..MemoryLayerConfig::default()
        });
        let g = group("g");
        let mut last = None;
        for i in 0..5 {
            last = Some(
                layer
                    .publish(&g, Payload::text(format!("{i}")))
                    .await
                    .unwrap(),
            );
        }
        let epoch = last.unwrap().epoch;
        let h = layer
            .history(
                &g,
                Some(&Position {
                    offset: 1,
                    epoch: epoch.clone(),
                }),
            )
            .await
            .unwrap();
        assert!(!h.recovered, "offset 2 was trimmed");
        let h = layer
            .history(&g, Some(&Position { offset: 2, epoch }))
            .await
            .unwrap();
        assert!(h.recovered);
        assert_eq!(
            h.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
    }

    fn bounded(
        max_bytes: usize,
        max_total_bytes: usize,
        max_groups: usize,
    ) -> (MemoryLayer, Incoming) {
        MemoryLayer::new(MemoryLayerConfig {
            history: HistoryConfig {
                max_bytes,
                ..HistoryConfig::default()
            },
            incoming_capacity: 16,
            max_total_bytes,
            max_groups,
        })
    }

    async fn resume(layer: &MemoryLayer, g: &GroupName, at: &Position) -> History {
        layer.history(g, Some(at)).await.unwrap()
    }

    #[tokio::test]
    async fn a_group_keeps_at_most_max_bytes_of_history() {
        let per = 1000 + HISTORY_ENTRY_OVERHEAD;
        let (layer, _rx) = bounded(3 * per, usize::MAX, 100);
        let g = group("g");
        let mut positions = Vec::new();
        for _ in 0..10 {
            positions.push(
                layer
                    .publish(&g, Payload::binary(vec![7u8; 1000]))
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(layer.stats().bytes, 3 * per as u64);
        let h = resume(&layer, &g, &positions[6]).await;
        assert!(h.recovered);
        assert_eq!(h.messages.len(), 3, "offsets 8, 9, 10");
        assert!(!resume(&layer, &g, &positions[5]).await.recovered);
        // A message larger than the bound is not kept, and what came before it cannot
        // be continued past it.
        let big = layer
            .publish(&g, Payload::binary(vec![0u8; 4 * per]))
            .await
            .unwrap();
        assert_eq!(layer.stats().bytes, 0);
        assert!(!resume(&layer, &g, &positions[9]).await.recovered);
        assert!(
            resume(&layer, &g, &big).await.recovered,
            "nothing missed since"
        );
    }

    #[tokio::test]
    async fn the_node_drops_the_least_recently_published_histories_first() {
        let per = 1000 + HISTORY_ENTRY_OVERHEAD;
        let (layer, _rx) = bounded(usize::MAX, 5 * per, 100);
        let (a, b, c) = (group("a"), group("b"), group("c"));
        let a1 = layer
            .publish(&a, Payload::binary(vec![1u8; 1000]))
            .await
            .unwrap();
        let b1 = layer
            .publish(&b, Payload::binary(vec![1u8; 1000]))
            .await
            .unwrap();
        for _ in 0..3 {
            layer
                .publish(&c, Payload::binary(vec![1u8; 1000]))
                .await
                .unwrap();
        }
        assert_eq!(layer.stats().evicted, 0, "exactly at the bound");
        let c4 = layer
            .publish(&c, Payload::binary(vec![1u8; 1000]))
            .await
            .unwrap();
        let stats = layer.stats();
        assert_eq!(stats.evicted, 1);
        assert_eq!(stats.bytes, 5 * per as u64);
        // a's history went (published least recently); its position and epoch stayed.
        let h = resume(
            &layer,
            &a,
            &Position {
                offset: 0,
                epoch: a1.epoch.clone(),
            },
        )
        .await;
        assert!(
            !h.recovered,
            "the evicted history is reported, never a partial list"
        );
        assert_eq!(h.current, a1);
        assert!(
            resume(
                &layer,
                &b,
                &Position {
                    offset: 0,
                    epoch: b1.epoch.clone()
                }
            )
            .await
            .recovered
        );
        let a2 = layer.publish(&a, Payload::text("x")).await.unwrap();
        assert_eq!((a2.offset, a2.epoch), (2, a1.epoch));
        assert!(resume(&layer, &c, &c4).await.recovered);
    }

    #[tokio::test]
    async fn past_max_groups_unsubscribed_groups_are_forgotten_oldest_first() {
        let (layer, _rx) = bounded(usize::MAX, usize::MAX, 3);
        let (a, b, c, d) = (group("a"), group("b"), group("c"), group("d"));
        layer.subscribe(&a).await.unwrap();
        let a1 = layer.publish(&a, Payload::text("1")).await.unwrap();
        let b1 = layer.publish(&b, Payload::text("1")).await.unwrap();
        layer.publish(&c, Payload::text("1")).await.unwrap();
        layer.publish(&d, Payload::text("1")).await.unwrap();
        let stats = layer.stats();
        assert_eq!((stats.groups, stats.evicted), (3, 1));
        // b (oldest without a subscriber) went; a (subscribed, older) stayed.
        let b2 = layer.publish(&b, Payload::text("2")).await.unwrap();
        assert_ne!(b2.epoch, b1.epoch, "forgotten: a new history");
        let a2 = layer.publish(&a, Payload::text("2")).await.unwrap();
        assert_eq!((a2.offset, a2.epoch), (2, a1.epoch));
        assert_eq!(layer.stats().groups, 3);
    }

    #[tokio::test]
    async fn many_groups_stay_within_the_bounds() {
        let (layer, _rx) = bounded(usize::MAX, 1 << 20, 1000);
        for i in 0..20_000 {
            layer
                .publish(&group(&format!("g{i}")), Payload::text("x"))
                .await
                .unwrap();
        }
        let stats = layer.stats();
        assert_eq!(stats.groups, 1000);
        assert!(stats.bytes <= 1 << 20);
        let state = layer.lock();
        assert_eq!(
            state.by_activity.len(),
            state.groups.len(),
            "one index entry per group"
        );
        let counted: usize = state.groups.values().map(|g| g.bytes).sum();
        assert_eq!(
            counted, state.bytes,
            "the node's count is the sum of the groups'"
        );
    }
}
