//! herald's Redis layer: any number of herald nodes share groups through one Redis.
//!
//! [`RedisLayer`] implements [`herald_core::Layer`] and passes the same conformance suite
//! as the in-memory layer. Membership stays node-local (the server's hub); Redis moves
//! messages between nodes and keeps each group's bounded history.
//!
//! # How it works
//!
//! - **Publish** goes through a small queue (`coalesce.rs`): concurrent publishes
//!   coalesce into one Lua script call (`EVALSHA`). A publish that finds nothing queued
//!   and no call in flight is sent at once by its own caller (no timer, no hand-off).
//!   Otherwise it queues, and a flusher task sends the queue in calls of up to
//!   `publish_batch_max` messages (default 256) and `publish_batch_max_bytes` payload
//!   bytes (default 1 MiB), with at most `publish_in_flight` calls (default 4)
//!   outstanding; what queues meanwhile goes out together when one returns. The queue
//!   holds at most `publish_queue` messages (default 4096); publishers beyond wait up to
//!   `command_timeout` for room. A call may mix groups. For each message the script
//!   creates the group's epoch if it has none, takes the next offset, appends the message
//!   to its history stream (trimmed to `history.max_len` entries and `history.max_bytes`
//!   bytes) and `PUBLISH`es an envelope on the group's channel. It refreshes the TTL of a
//!   group's keys at most once per `min(1 s, max_age / 10)`, to `history.max_age` plus
//!   that interval, so keys never expire sooner than `max_age` after the last message.
//!   Each message runs under `pcall` and has its own outcome: one that Redis refuses
//!   fails its own publisher (a `publish_batch` request stops at it), not the others of
//!   the call; a call that fails as a whole fails the publishers of that call only.
//!   Answers are given in call order, so two publishes to one group resolve in the order
//!   of their offsets. `RedisStats::publish_calls` counts the calls. In a Redis Cluster a
//!   call may only name keys of one hash slot: there `Flush::partition` must return the
//!   group's slot (the flusher then batches per slot; one flusher per shard).
//! - **History** is one atomic script call too, so the current position and the messages
//!   come from one instant. Messages older than `history.max_age` are not part of it.
//! - **Delivery**: one dedicated subscriber connection (RESP2 pub/sub) per layer, which
//!   `SUBSCRIBE`s to the channel of each group this node wants. `update_subscriptions`
//!   applies many changes in one write (one `SUBSCRIBE` naming every channel to add, one
//!   `UNSUBSCRIBE` for those to drop, at most 1024 channels a command), which the server's
//!   subscriptions task uses to turn a connect storm into a few round trips. Frames are read only when
//!   `Incoming` has room, so a slow reader leaves the backlog in Redis, not in herald. The
//!   messages decoded from one read (up to 256) are handed to `Incoming` together when
//!   there is room for all of them, not one wake-up at a time.
//! - **Wanted groups**: the layer's `wanted` set is the one record of which groups this
//!   node wants (`RedisLayer::is_subscribed`); the server's subscriptions task keeps no
//!   copy and compares its hub with it. `subscribe`/`unsubscribe` change the set first and
//!   then wait for Redis' confirmation; if none comes within `command_timeout` they fail
//!   with `Unavailable` but the change stays recorded, and the command already written
//!   (or the re-subscription after a reconnect) brings Redis in line when it catches up.
//!   Messages are delivered only for groups in the set.
//! - **Commands** (publish calls, history, presence) share one multiplexed connection.
//! - **Readiness** proves the pub/sub path (`probe.rs`): every `probe_interval` the
//!   layer publishes a sequence number on its private probe channel through the command
//!   connection and expects it back on the subscriber connection. While one stays
//!   unanswered for a whole interval, `is_ready()` is `false` (so a frozen Redis or
//!   subscriber is reported within two intervals); failures are counted and logged once
//!   per stall.
//! - **Failures**: while Redis is unreachable, `is_ready()` is `false`, publish and
//!   history fail at once with `LayerError::Unavailable` (or after `command_timeout` if
//!   Redis hangs), and `subscribe`/`unsubscribe` only record the wanted set. A supervisor
//!   task reconnects with jittered exponential backoff (50 ms doubling up to 2 s by
//!   default) and re-subscribes every wanted group before reporting ready again. Messages
//!   published while a node was disconnected are not delivered live to it; clients
//!   recover them from history. If Redis lost its data (restart without persistence,
//!   `FLUSHALL`, expiry), the next publish or history call starts a new epoch with offsets
//!   from 1, and resuming clients are told `recovered: false`.
//!
//! ## Redis keys and channels
//!
//! All names start with the configured prefix (default `herald`) and put the group in a
//! `{hash tag}`, so that a group's keys and channel share a Redis Cluster slot (for a
//! later sharded mode). The names are built in one place, `keys.rs`.
//!
//! | name | type | content | TTL |
//! |---|---|---|---|
//! | `{prefix}:{{group}}:meta` | hash | `e`: epoch, `o`: offset of the last message, `b`: bytes in the stream (payloads plus `HISTORY_ENTRY_OVERHEAD` per entry), `x`: when a publish last refreshed the TTLs (Unix ms) | `history.max_age` + up to 1 s, refreshed by a publish at most once a second (and at once when it creates the stream or the epoch); `history.max_age` when `history` creates the epoch |
//! | `{prefix}:{{group}}:stream` | stream | entry `{offset}-0` with fields `k` (kind: `t`/`b`), `d` (payload bytes), `t` (publish time, Unix ms); at most `history.max_len` entries and `history.max_bytes` bytes | as the meta key, refreshed with it |
//! | `{prefix}:{{group}}:ch` | pub/sub channel | one envelope per message | none (channels hold no state) |
//! | `{prefix}:{{group}}:presence` | hash | one field per node with connections in the group: `{valid_until_ms}\n{connections}\n{subs}` (see `presence.rs`) | the writer's presence `ttl`, refreshed by each update; expired fields are skipped and deleted by reads |
//! | `{prefix}:{{group}}:occ` | hash | only with webhooks: the group is occupied (`since`; `empty_since` while no node has a connection) | none: deleted by the `vacate` that reports the group vacated |
//! | `{prefix}:occupied` | sorted set | only with webhooks: every occupied group, scored by `since`, for the nodes' sweep | none |
//! | `{prefix}:probe:{node}` | pub/sub channel | readiness probes: a decimal sequence number; `{node}` is 16 random hex digits per layer | none |
//!
//! With the defaults, group `user.42` uses `herald:{user.42}:meta`,
//! `herald:{user.42}:stream`, `herald:{user.42}:ch` and `herald:{user.42}:presence`.
//! Which nodes subscribe to what lives only in Redis' pub/sub state, which vanishes with
//! the connection, and a crashed node's presence fields expire, so it leaks nothing. An
//! idle group's history and epoch expire together.
//!
//! The envelope (see `envelope.rs`) is `0x01 | kind | offset ':' epoch '\n' | payload`:
//! a version byte first, the payload last and never escaped.
//!
//! # Why the `redis` crate
//!
//! `redis` (redis-rs) is the most used Rust client; its multiplexed connection and
//! `Script` (EVALSHA with a NOSCRIPT fallback) cover the command side with only the
//! `tokio-comp` and `script` features. `fred` would bring its own reconnection and pool
//! policy that this layer needs to control itself (fail fast while down, re-subscribe on
//! its terms). Neither client's pub/sub reader applies backpressure (both queue
//! received messages without bound), so the subscriber connection is a small hand-driven
//! RESP2 reader (`resp.rs`, `subscriber.rs`).
//!
//! Requires Redis 5 or newer (scripts that call `TIME` before writing).
//!
//! # Layout
//!
//! - `layer.rs`: [`RedisLayer`], its `Layer` impl and the state shared with the tasks.
//! - `coalesce.rs`: the publish queue and its flusher task (generic over a command path,
//!   so a sharded layer can run one per shard).
//! - `supervisor.rs`: the task that connects, reconnects and re-subscribes.
//! - `probe.rs`: the readiness probe of the pub/sub path.
//! - `subscriber.rs`: the subscriber connection: handshake, commands, read loop.
//! - `scripts.rs`: the publish and history Lua scripts and their replies.
//! - `keys.rs`, `envelope.rs`, `resp.rs`, `backoff.rs`: names, wire format, RESP2, delays.
//! - `config.rs`, `error.rs`: [`RedisLayerConfig`] and [`RedisLayerError`].

mod coalesce;
mod config;
mod envelope;
mod error;
mod keys;
mod layer;
mod presence;
mod probe;
pub mod resp;
mod scripts;
mod subscriber;
mod supervisor;

pub use config::RedisLayerConfig;
pub use error::RedisLayerError;
pub use layer::{RedisLayer, RedisStats};
