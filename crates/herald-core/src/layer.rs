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
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            max_len: 1000,
            max_age: Duration::from_secs(24 * 60 * 60),
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

    /// Publishes `payload` like [`Layer::publish`] unless a message with the same `id` was
    /// published to `group` (through any node sharing the layer) within `window`; then
    /// publishes nothing and returns `Ok(None)`. For senders that may retry a message
    /// another node already published (the Django bridge's queue takeover).
    ///
    /// The default publishes every time: right for a layer that only one node uses.
    fn publish_once(
        &self,
        group: &GroupName,
        payload: Payload,
        id: &str,
        window: std::time::Duration,
    ) -> impl Future<Output = Result<Option<Position>, LayerError>> + Send {
        let _ = (id, window);
        async move { self.publish(group, payload).await.map(Some) }
    }

    /// Starts delivering `group`'s messages to this node's [`Incoming`]. Once the future
    /// resolves `Ok`, every message published afterwards is delivered.
    fn subscribe(&self, group: &GroupName) -> impl Future<Output = Result<(), LayerError>> + Send;

    /// Stops delivering `group`'s messages to this node.
    fn unsubscribe(&self, group: &GroupName)
    -> impl Future<Output = Result<(), LayerError>> + Send;

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

    /// Whether the backend is reachable now (what `/readyz` reports).
    fn is_ready(&self) -> bool;
}
