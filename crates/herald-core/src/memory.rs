//! `MemoryLayer`: the single-process layer, with a bounded history ring per group.
//!
//! It cannot scale past one node: use the Redis layer to share groups between processes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::idempotency::IdempotencyRecords;
use crate::{
    Epoch, GroupName, History, HistoryConfig, Incoming, KeyedItem, Layer, LayerError, Message,
    Payload, Position, Published,
};

/// Settings of a [`MemoryLayer`].
#[derive(Clone, Copy, Debug)]
pub struct MemoryLayerConfig {
    /// History bounds per group.
    pub history: HistoryConfig,
    /// Capacity of the [`Incoming`] channel, in messages. Default 4096. When it is full,
    /// `publish` waits for room (backpressure), it never drops.
    pub incoming_capacity: usize,
}

impl Default for MemoryLayerConfig {
    fn default() -> Self {
        Self {
            history: HistoryConfig::default(),
            incoming_capacity: 4096,
        }
    }
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
    /// One lock for all groups: offsets are assigned and messages enqueued under it, which
    /// is what keeps `Incoming` in offset order. Never held across an `.await`.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    groups: HashMap<GroupName, GroupState>,
    subscribed: HashSet<GroupName>,
    last_sweep: Option<Instant>,
    /// Idempotency keys published per group (`publish_idempotent`).
    keys: IdempotencyRecords,
}

#[derive(Debug)]
struct GroupState {
    epoch: Epoch,
    last_offset: u64,
    last_activity: Instant,
    ring: VecDeque<(Instant, Message)>,
}

impl MemoryLayer {
    /// A new bus and the stream of messages for the groups it is subscribed to.
    pub fn new(config: MemoryLayerConfig) -> (Self, Incoming) {
        let (tx, rx) = mpsc::channel(config.incoming_capacity.max(1));
        let shared = Arc::new(Shared {
            tx,
            history: config.history,
            state: Mutex::new(State::default()),
        });
        (Self { shared }, rx)
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

impl State {
    /// The group's state, created with a fresh epoch when it has none, and trimmed by age.
    fn group(
        &mut self,
        group: &GroupName,
        config: &HistoryConfig,
        now: Instant,
    ) -> &mut GroupState {
        self.sweep(config, now);
        let state = self
            .groups
            .entry(group.clone())
            .or_insert_with(|| GroupState {
                epoch: Epoch::random(),
                last_offset: 0,
                last_activity: now,
                ring: VecDeque::new(),
            });
        while let Some((at, _)) = state.ring.front() {
            if now.saturating_duration_since(*at) > config.max_age {
                state.ring.pop_front();
            } else {
                break;
            }
        }
        state
    }

    /// Stamps `payload` with the group's next offset and stores it in the history ring;
    /// returns the message and whether this node subscribed to the group.
    fn append(
        &mut self,
        group: &GroupName,
        payload: Payload,
        config: &HistoryConfig,
        now: Instant,
    ) -> (Message, bool) {
        let subscribed = self.subscribed.contains(group);
        let g = self.group(group, config, now);
        g.last_offset += 1;
        g.last_activity = now;
        let message = Message {
            group: group.clone(),
            offset: g.last_offset,
            epoch: g.epoch.clone(),
            payload,
        };
        if config.max_len > 0 {
            if g.ring.len() >= config.max_len {
                g.ring.pop_front();
            }
            g.ring.push_back((now, message.clone()));
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
        self.groups
            .retain(|_, g| now.saturating_duration_since(g.last_activity) <= config.max_age);
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
        let mut state = self.lock();
        let (message, subscribed) =
            state.append(group, payload, &self.shared.history, Instant::now());
        let position = message.position();
        if subscribed {
            permit.send(message);
        }
        Ok(position)
    }

    async fn publish_batch(
        &self,
        items: Vec<(GroupName, Payload)>,
    ) -> Result<Vec<Position>, (usize, LayerError)> {
        // The same as `publish` one by one, with one reservation and one lock per chunk.
        let mut positions = Vec::with_capacity(items.len());
        let chunk_len = self.shared.tx.max_capacity().max(1);
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let chunk: Vec<_> = items.by_ref().take(chunk_len).collect();
            let mut permits = match self.shared.tx.reserve_many(chunk.len()).await {
                Ok(permits) => permits,
                Err(_) => return Err((positions.len(), LayerError::Closed)),
            };
            let now = Instant::now();
            let mut state = self.lock();
            for (group, payload) in chunk {
                let (message, subscribed) =
                    state.append(&group, payload, &self.shared.history, now);
                positions.push(message.position());
                if subscribed {
                    // One permit was reserved per item, so one is always left here.
                    if let Some(permit) = permits.next() {
                        permit.send(message);
                    }
                }
            }
        }
        Ok(positions)
    }

    async fn publish_idempotent(
        &self,
        items: Vec<KeyedItem>,
        window: Duration,
    ) -> Result<Vec<Published>, (usize, LayerError)> {
        // Like `publish_batch`; the key check, the append and the record happen under one
        // lock, so two concurrent retries cannot both publish.
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
                let (message, subscribed) =
                    state.append(&item.group, item.payload, &self.shared.history, now);
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
                    if let Some(permit) = permits.next() {
                        permit.send(message);
                    }
                }
            }
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
        let config = self.shared.history;
        let now = Instant::now();
        let mut state = self.lock();
        let g = state.group(group, &config, now);
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
                    .front()
                    .is_some_and(|(_, first)| first.offset <= since.offset + 1));
        let messages = if covered {
            g.ring
                .iter()
                .filter(|(_, m)| m.offset > since.offset)
                .map(|(_, m)| m.clone())
                .collect()
        } else {
            Vec::new()
        };
        Ok(History {
            current,
            recovered: covered,
            messages,
        })
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

    #[tokio::test(start_paused = true)]
    async fn history_expires_by_age_and_the_epoch_with_it() {
        let (layer, _rx) = MemoryLayer::new(MemoryLayerConfig {
            history: HistoryConfig {
                max_len: 10,
                max_age: Duration::from_secs(60),
            },
            incoming_capacity: 16,
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
            },
            incoming_capacity: 16,
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
}
