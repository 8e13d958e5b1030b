//! The `Layer` trait: how messages move between herald nodes and how history is kept.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::{GroupName, Message, Payload, Position};

/// The stream of messages for the groups this node subscribed to, in per-group offset
/// order. It is a bounded channel: a slow reader slows the layer down (memory) or makes it
/// count and report a drop (backends that cannot wait); it never grows without bound.
pub type Incoming = mpsc::Receiver<Message>;

/// How much history a layer keeps per group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Messages kept per group; older ones are trimmed. Default 1000. Zero keeps none (a
    /// resume then only ever succeeds when nothing was missed).
    pub max_len: usize,
    /// Age after which messages are dropped, and after which a group that received
    /// nothing loses its history and epoch. Default 24 h.
    pub max_age: Duration,
    /// Bytes of history kept per group (payloads plus a fixed bookkeeping cost per
    /// message, [`HISTORY_ENTRY_OVERHEAD`]); the oldest messages are trimmed past it. A
    /// message larger than this is delivered but not kept. Default 4 MiB.
    pub max_bytes: usize,
}

/// What one history entry costs besides its payload, as counted against the byte bounds
/// of history: the entry itself and its bookkeeping, approximately.
pub const HISTORY_ENTRY_OVERHEAD: usize = 128;

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            max_len: 1000,
            max_age: Duration::from_secs(24 * 60 * 60),
            max_bytes: 4 << 20,
        }
    }
}

/// The answer to [`Layer::history`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    /// The group's current position: the offset of its latest message (0 if none) and
    /// the epoch of its history.
    pub current: Position,
    /// `true` when `messages` is the complete list of what was published after the
    /// requested position (possibly empty); `false` when the history no longer covers
    /// that position (trimmed, expired, or another epoch). Never a partial list.
    pub recovered: bool,
    /// The messages after the requested position, oldest first, when `recovered`.
    pub messages: Vec<Message>,
}

/// A message to publish once: with a `key`, a retry within the idempotency window
/// publishes nothing and answers the first message's position.
#[derive(Clone, Debug)]
pub struct KeyedItem {
    /// Where it goes.
    pub group: GroupName,
    /// What it carries.
    pub payload: Payload,
    /// The idempotency key (per group), if any.
    pub key: Option<std::sync::Arc<str>>,
}

/// The outcome of one [`KeyedItem`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The message's position, or the first one's when `duplicate`.
    pub position: Position,
    /// The key was already used in the group within the window: nothing was published.
    pub duplicate: bool,
}

/// This node's share of a group's presence, as [`Layer::presence_update`] records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalPresence {
    /// Connections of the group on this node. Zero removes the node's entry.
    pub connections: u64,
    /// The distinct `sub`s of those connections (anonymous ones have none), sorted.
    pub subs: Vec<String>,
}

/// A group's presence across every node sharing the backend: the answer to
/// [`Layer::presence`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Presence {
    /// Connections of the group, summed over the nodes.
    pub connections: u64,
    /// The distinct `sub`s over all nodes, sorted.
    pub subs: Vec<String>,
    /// Nodes with at least one connection in the group.
    pub nodes: u64,
}

impl Presence {
    /// Sums node entries into one answer (entries with no connection are skipped).
    pub fn sum<'a>(entries: impl IntoIterator<Item = &'a LocalPresence>) -> Self {
        let mut total = Self::default();
        let mut subs = std::collections::BTreeSet::new();
        for entry in entries {
            if entry.connections == 0 {
                continue;
            }
            total.connections = total.connections.saturating_add(entry.connections);
            total.nodes += 1;
            subs.extend(entry.subs.iter().cloned());
        }
        total.subs = subs.into_iter().collect();
        total
    }
}

/// Why a layer operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// The backend cannot be reached now (e.g. Redis is down). Publishing must be retried
    /// by the caller; the layer keeps trying to reconnect on its own.
    #[error("layer unavailable: {0}")]
    Unavailable(String),
    /// The layer was closed.
    #[error("layer closed")]
    Closed,
}

/// Moves messages between the herald nodes that share a backend, and keeps a bounded
/// history per group.
///
/// Contract, checked by the conformance suite in `herald-testkit` for every backend:
/// - **Delivery** is at most once per subscribed node, in offset order per group. A node's
///   own publishes come back through its [`Incoming`] like everyone else's.
/// - **Publishing** to a group nobody subscribes to is fine: the message is still stored in
///   the group's history and counted in its offsets.
/// - `subscribe`/`unsubscribe` are idempotent; unsubscribing an unknown group is `Ok`.
/// - Handles are cheap to clone and share one backend connection.
/// - All methods are cancel-safe in the sense that dropping the future leaves the layer
///   usable; a dropped `publish` may or may not have published.
pub trait Layer: Clone + Send + Sync + 'static {
    /// Publishes `payload` to `group`: assigns the next offset, appends it to the group's
    /// history and delivers it to every subscribed node. Returns the message's position.
    fn publish(
        &self,
        group: &GroupName,
        payload: Payload,
    ) -> impl Future<Output = Result<Position, LayerError>> + Send;

    /// Publishes several messages, in order; the positions come back in the same order.
    /// Fails at the first message that cannot be published (the ones before it were).
    fn publish_batch(
        &self,
        items: Vec<(GroupName, Payload)>,
    ) -> impl Future<Output = Result<Vec<Position>, (usize, LayerError)>> + Send {
        async move {
            let mut positions = Vec::with_capacity(items.len());
            for (group, payload) in items {
                match self.publish(&group, payload).await {
                    Ok(p) => positions.push(p),
                    Err(e) => return Err((positions.len(), e)),
                }
            }
            Ok(positions)
        }
    }

    /// Publishes `items` in order like [`Layer::publish_batch`], except that an item whose
    /// `key` was already published to its group within `window` (by any node sharing the
    /// backend) publishes nothing, delivers nothing, and answers the first message's
    /// position with `duplicate: true`. Checking and recording a key is atomic with the
    /// publish, so concurrent retries publish once. Keys are bounded per group
    /// ([`crate::MAX_KEYS_PER_GROUP`] in memory; Redis expires each after `window`).
    fn publish_idempotent(
        &self,
        items: Vec<KeyedItem>,
        window: Duration,
    ) -> impl Future<Output = Result<Vec<Published>, (usize, LayerError)>> + Send;

    /// Publishes `payload` like [`Layer::publish`] unless a message with the same `id` was
    /// published to `group` (through any node sharing the layer) within `window`; then
    /// publishes nothing and returns `Ok(None)`. For senders that may retry a message
    /// another node already published (the Django bridge's queue takeover). It is
    /// [`Layer::publish_idempotent`] with `id` as the key.
    fn publish_once(
        &self,
        group: &GroupName,
        payload: Payload,
        id: &str,
        window: Duration,
    ) -> impl Future<Output = Result<Option<Position>, LayerError>> + Send {
        let item = KeyedItem {
            group: group.clone(),
            payload,
            key: Some(std::sync::Arc::from(id)),
        };
        async move {
            match self.publish_idempotent(vec![item], window).await {
                Ok(mut published) => match published.pop() {
                    Some(p) if p.duplicate => Ok(None),
                    Some(p) => Ok(Some(p.position)),
                    None => Err(LayerError::Unavailable(
                        "the layer answered no position".into(),
                    )),
                },
                Err((_, e)) => Err(e),
            }
        }
    }

    /// Starts delivering `group`'s messages to this node's [`Incoming`]. Once the future
    /// resolves `Ok`, every message published afterwards is delivered.
    fn subscribe(&self, group: &GroupName) -> impl Future<Output = Result<(), LayerError>> + Send;

    /// Stops delivering `group`'s messages to this node.
    fn unsubscribe(&self, group: &GroupName)
    -> impl Future<Output = Result<(), LayerError>> + Send;

    /// Subscribes to every group of `subscribe` and unsubscribes from every group of
    /// `unsubscribe` (a group should be in at most one of them). Backends override it to
    /// apply many changes in one round trip; the default calls `subscribe` and
    /// `unsubscribe` in turn, goes on past a failure and returns the first one.
    fn update_subscriptions(
        &self,
        subscribe: &[GroupName],
        unsubscribe: &[GroupName],
    ) -> impl Future<Output = Result<(), LayerError>> + Send {
        async move {
            let mut first_error = None;
            for group in subscribe {
                if let Err(e) = self.subscribe(group).await {
                    first_error.get_or_insert(e);
                }
            }
            for group in unsubscribe {
                if let Err(e) = self.unsubscribe(group).await {
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        }
    }

    /// The messages of `group` after `since`, and the group's current position.
    ///
    /// With `since = None` (a first visit) the answer holds no messages, only the current
    /// position, and `recovered` is `true`. Asking about a group with no history creates its
    /// epoch, so the first message published later keeps the epoch the client was told.
    fn history(
        &self,
        group: &GroupName,
        since: Option<&Position>,
    ) -> impl Future<Output = Result<History, LayerError>> + Send;

    /// Records this node's share of `group`'s presence, replacing what it recorded before.
    /// The entry counts for `ttl` (at least 1 ms): a node refreshes its entries well within
    /// it, so the entries of a node that died without clearing them vanish after `ttl` at
    /// most. `connections == 0` removes the node's entry at once.
    fn presence_update(
        &self,
        group: &GroupName,
        local: &LocalPresence,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), LayerError>> + Send;

    /// `group`'s presence summed over the live entries of every node (one backend round
    /// trip per call, whatever the group's size).
    fn presence(
        &self,
        group: &GroupName,
    ) -> impl Future<Output = Result<Presence, LayerError>> + Send;

    /// Records that `group` has a connection (call it after this node's
    /// [`Layer::presence_update`] counted one). Returns `true` to exactly one caller per
    /// transition from vacant to occupied, cluster-wide: that node announces
    /// `group.occupied`. An occupied group that was waiting to be declared vacant stays
    /// occupied, and nobody is told.
    fn occupy(&self, group: &GroupName) -> impl Future<Output = Result<bool, LayerError>> + Send;

    /// Checks whether occupied `group` has had no live presence entry for `delay`: the
    /// first call that finds it empty starts the clock, and the call that finds it empty
    /// for `delay` or longer returns `true` (exactly one caller per transition; that node
    /// announces `group.vacated`). Any live entry stops the clock.
    fn vacate(
        &self,
        group: &GroupName,
        delay: Duration,
    ) -> impl Future<Output = Result<bool, LayerError>> + Send;

    /// Up to `limit` of the groups currently recorded as occupied, so that a node can
    /// [`vacate`](Layer::vacate) those whose last node died.
    fn occupied(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<GroupName>, LayerError>> + Send;

    /// Whether the backend is reachable now (what `/readyz` reports).
    fn is_ready(&self) -> bool;
}
