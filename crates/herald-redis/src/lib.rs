//! herald's Redis layer: any number of herald nodes share groups through one Redis.
//!
//! [`RedisLayer`] implements [`herald_core::Layer`] and passes the same conformance suite
//! as the in-memory layer. Membership stays node-local (the server's hub); Redis moves
//! messages between nodes and keeps each group's bounded history.
//!
//! # How it works
//!
//! - **Publish** is one round trip: a Lua script (`EVALSHA`) creates the group's epoch if
//!   it has none, increments its offset, appends the message to its history stream
//!   (trimmed to `history.max_len` entries and `history.max_bytes` bytes), refreshes the TTL of the group's keys to
//!   `history.max_age`, and `PUBLISH`es an envelope on the group's channel.
//! - **History** is one atomic script call too, so the current position and the messages
//!   come from one instant. Messages older than `history.max_age` are not part of it.
//! - **Delivery**: one dedicated subscriber connection (RESP2 pub/sub) per layer, which
//!   `SUBSCRIBE`s to the channel of each group this node wants. `update_subscriptions`
//!   applies many changes in one write (one `SUBSCRIBE` naming every channel to add, one
//!   `UNSUBSCRIBE` for those to drop, at most 1024 channels a command), which the server's
//!   subscriptions task uses to turn a connect storm into a few round trips. Frames are read only when
//!   `Incoming` has room, so a slow reader leaves the backlog in Redis, not in herald.
//! - **Wanted groups**: the layer's `wanted` set is the one record of which groups this
//!   node wants (`RedisLayer::is_subscribed`); the server's subscriptions task keeps no
//!   copy and compares its hub with it. `subscribe`/`unsubscribe` change the set first and
//!   then wait for Redis' confirmation; if none comes within `command_timeout` they fail
//!   with `Unavailable` but the change stays recorded, and the command already written
//!   (or the re-subscription after a reconnect) brings Redis in line when it catches up.
//!   Messages are delivered only for groups in the set.
//! - **Commands** (publish, history) share one multiplexed connection.
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
//! `{hash tag}`, so that a group's keys and channel share a Redis Cluster slot (see
//! [Redis Cluster](#redis-cluster)). The names are built in one place, `keys.rs`.
//!
//! | name | type | content | TTL |
//! |---|---|---|---|
//! | `{prefix}:{{group}}:meta` | hash | `e`: epoch, `o`: offset of the last message, `b`: bytes in the stream (payloads plus `HISTORY_ENTRY_OVERHEAD` per entry) | `history.max_age`, refreshed by each publish; set when `history` creates the epoch |
//! | `{prefix}:{{group}}:stream` | stream | entry `{offset}-0` with fields `k` (kind: `t`/`b`), `d` (payload bytes), `t` (publish time, Unix ms); at most `history.max_len` entries and `history.max_bytes` bytes | `history.max_age`, refreshed by each publish |
//! | `{prefix}:{{group}}:ch` | pub/sub channel | one envelope per message | none (channels hold no state) |
//! | `{prefix}:{{group}}:presence` | hash | one field per node with connections in the group: `{valid_until_ms}\n{connections}\n{subs}` (see `presence.rs`) | the writer's presence `ttl`, refreshed by each update; expired fields are skipped and deleted by reads |
//! | `{prefix}:{{group}}:occ` | hash | only with webhooks: the group is occupied (`since`; `empty_since` while no node has a connection) | none: deleted by the `vacate` that reports the group vacated |
//! | `{prefix}:occupied` | sorted set | only with webhooks: every occupied group, scored by `since`, for the nodes' sweep | none |
//! | `{prefix}:probe:{node}` | pub/sub channel | readiness probes: a decimal sequence number; `{node}` is 16 random hex digits per layer | none |
//! | `{prefix}:probe:{node}:{{tag}}` | shard channel (cluster only) | the same, one per shard: `tag` is a short number whose slot that shard serves | none |
//! | `{prefix}:{{group}}:once:{key}` | string | an idempotency key's first position, `{offset}:{epoch}` | the publish's window |
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
//! # Redis Cluster
//!
//! With `url = "redis+cluster://[user:password@]h1:7000,h2:7001"` (seed nodes; parsed in
//! `topology.rs`, a bad one is refused at start-up with the reason) the layer runs on a
//! Redis Cluster (Redis 7 or newer: sharded pub/sub):
//!
//! - **Commands** go through redis-rs' cluster connection, which routes each command by
//!   the slot of its first key, follows `MOVED`/`ASK` (migrations) and refreshes its own
//!   slot map. Every script touches the keys of one group only, all tagged `{group}`, so
//!   one slot: publish (meta, stream, idempotency key; the script `SPUBLISH`es on the
//!   group's channel, which has the same tag and so the same slot), history (meta,
//!   stream), presence (presence hash). A `publish_batch` naming several groups makes one
//!   script call per slot, all at once (`RedisLayer::publish_by_slot`), each with its
//!   messages in order, so per-group order holds and a batch to random users costs one
//!   round trip rather than one per message. A failure reports the first message not
//!   published, and every message before it was, as `Layer` promises; unlike on a single
//!   Redis (where a chunk is all or nothing), messages after it on other slots may have
//!   been published too: retry with idempotency keys to be safe.
//! - **Node-wide keys**: `{prefix}:occupied`, the index of occupied groups, is one key on
//!   one shard, and no script may touch it together with a group's keys. On a cluster,
//!   `occupy` adds the group to the index (`ZADD NX`) *before* its script marks the group,
//!   and `vacate` removes it (`ZREM`) *after* its script removed the mark
//!   (`cluster/presence.rs`): a crash in between leaves an index entry without a mark,
//!   which the next sweep's `vacate` cleans up, never a mark the sweep cannot find. The
//!   probe channels are per node and shard (below). Nothing else is node-wide.
//! - **Delivery**: one subscriber connection per shard (master), driven by hand like the
//!   single-node one (`cluster/shard.rs`): `SSUBSCRIBE` of the channel of each wanted
//!   group the shard serves, read only while `Incoming` has room. Redis refuses a
//!   multi-channel `SSUBSCRIBE` across slots, so each command names one channel and a
//!   change is pipelined: one write per shard, ending with a `PING` that confirms it all.
//!   The `wanted` set stays the one record; each shard connection only records what was
//!   written on it.
//! - **Slot map** (`CLUSTER SLOTS`, `cluster/slots.rs`): read at start, every second, and
//!   at once when a shard connection is lost or cannot be made, when Redis answers an
//!   `SSUBSCRIBE` with `MOVED`/`ASK`, or when it sends an `sunsubscribe` nobody asked for
//!   (Redis 7 drops the shard channels of a slot that left the node: a migration, or a
//!   master demoted by a failover). The supervisor (`cluster/mod.rs`) then keeps the
//!   shard tasks whose master and slots did not change, cancels the others, starts one
//!   per new shard, and subscribes each wanted group on the shard now serving it. A slot
//!   map with unserved slots (mid-failover) is not applied.
//! - **Gap repair** (`cluster/gap.rs`): a subscription that moved (migration, failover,
//!   a lost shard connection) misses what was published in between. The layer remembers
//!   the last position it delivered per wanted group and, in the shard's read loop (so
//!   order holds), reads the missed messages from history when the re-subscription is
//!   confirmed, and before any live message that skips offsets. History that cannot cover
//!   the gap is reported, not papered over: the live message goes on as it is. Offsets at
//!   or below the last delivered one pass through untouched: whether that is a duplicate
//!   or a write lost in a failover is for the connections to decide.
//! - **Readiness**: a probe per shard, on a node-private shard channel whose hash tag is
//!   found by trying `0`, `1`, … until its CRC16 slot is one the shard serves. `is_ready()`
//!   needs every shard of a complete slot map connected, subscribed and answering its
//!   probe within the interval, so a frozen shard makes `/readyz` 503 within two
//!   intervals even when no group of this node lives on it. [`RedisLayer::shard_stats`]
//!   gives each shard's health, probe figures and reconnects.
//! - **Failover**: a killed master closes its shard connection; the shard task retries
//!   with backoff, each failure asks for a slot map read, and once a replica is promoted
//!   the map names it, its task starts and re-subscribes, and gap repair delivers what
//!   was published meanwhile. Publishes in the gap fail within `command_timeout` (503).
//! - **Limits**: gap repair reads history one group at a time in the shard's read loop,
//!   so after a failover of a shard with many active groups that shard's delivery pauses
//!   for one round trip per group (its other groups wait; `Incoming` stays bounded). A
//!   batch publish over many groups costs one script call per slot it touches (random
//!   groups: about one per message, run concurrently), where a single Redis needs one per
//!   256 messages: more Redis CPU per message. During a migration, a publish whose keys are split between the two
//!   nodes gets `TRYAGAIN`; redis-rs retries twice, then the publish answers 503.
//!
//! # Why the `redis` crate
//!
//! `redis` (redis-rs) is the most used Rust client; its multiplexed connection and
//! `Script` (EVALSHA with a NOSCRIPT fallback) cover the command side with only the
//! `tokio-comp` and `script` features. On Redis Cluster the `cluster-async` feature adds
//! its cluster connection: slot routing, `MOVED`/`ASK` and slot map refresh are subtle
//! and well tested there, and it runs the same scripts (`SCRIPT LOAD` goes to every
//! master, so a promoted replica gets them on its first `NOSCRIPT`). `fred` would bring its own reconnection and pool
//! policy that this layer needs to control itself (fail fast while down, re-subscribe on
//! its terms). Neither client's pub/sub reader applies backpressure (both queue
//! received messages without bound; redis-rs' cluster pub/sub too), so the subscriber
//! connections are a small hand-driven RESP2 reader (`resp.rs`, `subscriber.rs`, and one
//! per shard in `cluster/shard.rs`).
//!
//! Requires Redis 5 or newer (scripts that call `TIME` before writing).
//!
//! # Layout
//!
//! - `layer.rs`: [`RedisLayer`], its `Layer` impl and the state shared with the task.
//! - `supervisor.rs`: the task that connects, reconnects and re-subscribes.
//! - `probe.rs`: the readiness probe of the pub/sub path.
//! - `subscriber.rs`: the subscriber connection: handshake, commands, read loop.
//! - `scripts.rs`: the publish and history Lua scripts and their replies.
//! - `keys.rs`, `envelope.rs`, `resp.rs`, `backoff.rs`: names, wire format, RESP2, delays.
//! - `config.rs`, `error.rs`: [`RedisLayerConfig`] and [`RedisLayerError`].
//! - `topology.rs`: which deployment a URL names (single Redis or cluster).
//! - `cluster/`: Redis Cluster mode: its supervisor and subscription changes (`mod.rs`),
//!   the shard connections (`shard.rs`), slots and the slot map (`slots.rs`), gap repair
//!   (`gap.rs`), the occupied index (`presence.rs`), and the command connection of either
//!   deployment (`command.rs`).

mod cluster;
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
mod topology;

pub use cluster::ShardStats;
pub use config::RedisLayerConfig;
pub use error::RedisLayerError;
pub use layer::{RedisLayer, RedisStats};
