//! The contract at the centre of herald, and its embedded default backend.
//!
//! # The model
//!
//! - A **group** ([`GroupName`]) is a named set of WebSocket connections. Membership is
//!   node-local: only the server's hub knows which connections belong to a group.
//! - A **message** ([`Message`]) is a payload ([`Payload`]: bytes plus text/binary kind)
//!   published to one group, stamped by the layer with a [`Position`]: an offset (+1 per
//!   message per group) and an [`Epoch`] naming one unbroken history of that group.
//! - A **layer** ([`Layer`]) moves messages between the nodes that share it and keeps a
//!   bounded history per group so that a client can resume from a position. Every node
//!   subscribed to a group receives each message published to it through its
//!   [`Incoming`] stream, its own publishes included: there is one delivery path. (One
//!   shortcut: a [`MemoryLayer`] given a [`DirectSink`] hands its messages to it first,
//!   in offset order, so a node can deliver from the publishing call itself.)
//! - [`MemoryLayer`] is the single-process layer (the default); the Redis layer lives in
//!   its own crate and passes the same conformance suite.
//!
//! # Layout
//!
//! - [`group`]: the validated group-name newtype.
//! - [`message`]: payloads, positions, epochs and messages.
//! - [`layer`]: the [`Layer`] trait, its error and the history answer.
//! - [`memory`]: [`MemoryLayer`], with its per-group history ring.
//! - [`backoff`]: the jittered exponential [`Backoff`] every reconnect loop uses.

pub mod backoff;
pub mod group;
mod history_ring;
mod idempotency;
pub mod layer;
pub mod memory;
pub mod message;

pub use backoff::Backoff;
pub use group::{GroupName, InvalidGroupName};
pub use idempotency::MAX_KEYS_PER_GROUP;
pub use layer::{
    HISTORY_ENTRY_OVERHEAD, History, HistoryConfig, Incoming, KeyedItem, Layer, LayerError,
    LocalPresence, Presence, Published,
};
pub use memory::{DirectSink, MemoryLayer};
pub use message::{Epoch, Message, Payload, PayloadKind, Position};
