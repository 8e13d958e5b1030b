//! herald's Redis layer: any number of herald nodes share groups through one Redis, a
//! Sentinel-managed master, or a Redis Cluster.
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
//!   group's keys at most once per `min(1 min, max_age / 10)`, to `history.max_age` plus
//!   that interval, so keys never expire sooner than `max_age` after the last message.
//!   Each message runs under `pcall` and has its own outcome: one that Redis refuses
//!   fails its own publisher (a `publish_batch` request stops at it), not the others of
//!   the call; a call that fails as a whole fails the publishers of that call only. A
//!   call of exactly one message (a lone publish, the common case) runs a script written
//!   for one message instead, with the same effects and answers but none of the batch
//!   script's per-message tables, closures and `pcall`: there an error Redis answers is
//!   that message's refusal.
//!   Answers are given in call order, so two publishes to one group resolve in the order
//!   of their offsets. `RedisStats::publish_calls` counts the calls. In a Redis Cluster a
//!   call may only name keys of one hash slot: there `Flush::partition` returns the
//!   group's slot, so a call carries one slot's messages, a `publish_batch` is split into
//!   one request per slot (`ClusterState::publish_by_slot`, sent at once), the script uses
//!   `SPUBLISH`, and at least 16 calls may be in flight so that shards work side by side.
//! - **History** is one atomic script call too, so the current position and the messages
//!   come from one instant. Messages older than `history.max_age` are not part of it.
//! - **Delivery**: one dedicated subscriber connection (RESP2 pub/sub) per layer, which
//!   `SUBSCRIBE`s to the channel of each group this node wants (on a Redis Cluster: one
//!   per master, `SSUBSCRIBE`, see `cluster/`). `update_subscriptions`
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
//! - **Presence writes** (`presence.rs`): on one Redis or Sentinel's master, writes made
//!   while one is in flight queue and go out together in one script call (up to 256
//!   groups; each group's write has its own outcome), sent by a task that runs while the
//!   queue is not empty. The server rewrites every group's entry each presence refresh,
//!   which one call per group made as many script calls as a per-user run publishes
//!   messages. On a Redis Cluster each write is its own call (one slot per call).
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
//! # Deployments: one Redis or Sentinel
//!
//! The URL picks the deployment (`topology.rs`): `redis://[user:password@]host:port/db` is
//! one Redis; `redis+sentinel://[user:password@]h1:26379,h2:26379/<master-name>[/<db>]`
//! is the master that Redis Sentinel names. With Sentinel, every connect asks the
//! sentinels in order (`SENTINEL get-master-addr-by-name`; a dead sentinel costs one
//! connect timeout), connects to the address and checks `ROLE` (a server still named but
//! not (yet) a master is refused and retried with backoff). While connected, the
//! sentinels are asked again every `probe_interval` and `ROLE` is re-checked on the
//! session's connection (`sentinel.rs`); when another master is named, or ours was
//! demoted, the session ends and the supervisor reconnects to the new master and
//! re-subscribes every wanted group. A killed master is noticed sooner still, by its
//! broken connections. Asking rather than subscribing to `+switch-master` needs no
//! long-lived connection per sentinel and is indifferent to which sentinels are alive;
//! it costs at most one probe interval. The sentinels are asked with the redis-rs
//! multiplexed connection (one short command, nothing queued), the subscriber stays the
//! bounded hand-driven reader. The credentials and db of the URL apply to the master.
//!
//! While no master is reachable (from the kill until the promotion is followed),
//! publish and history fail fast with `LayerError::Unavailable` (the API answers 503,
//! never a silent drop) and `is_ready()` is `false` (`/readyz` 503); both recover with the
//! first session on the new master.
//!
//! # Failover: gaps and lost writes
//!
//! Redis replicates asynchronously: a write the master acknowledged may not have reached
//! the replica that Sentinel promotes. Two things can then go wrong for a group, and
//! herald turns both into something explicit.
//!
//! **Gaps.** A node whose subscriber was disconnected misses the messages published
//! meanwhile (by nodes that reconnected sooner). Connections notice: each `herald.v1` or
//! SSE stream knows, per group, the last offset it sent and the offset up to which its
//! resume covered the stream (the *replay horizon*), and checks every live offset exactly
//! (`herald::connection::classify`): at or below the horizon it is a replay duplicate
//! (skipped); the next offset is sent; anything else closes the stream with 4400 (SSE:
//! `event: close` with code 4400): a gap (an offset past the next), a regression (an
//! offset at or below the last one sent but above the horizon, under the same epoch), or
//! another epoch. Each is counted (`herald_stream_gaps_total`,
//! `herald_stream_regressions_total`, `herald_stream_epoch_changes_total`) and logged once
//! per burst. For a gap, closing was chosen over fetching the missing range inside the
//! connection: the client's resume already is the exact, tested path (subscribe, read
//! history after the client's own position, replay, de-duplicate), it needs no Redis round
//! trip inside a connection's write loop (which would stall every frame behind it, and
//! for a whole node's connections at once after a reconnect), and when the history no
//! longer covers the gap the client learns it (`recovered: false`) instead of receiving a
//! silently partial range. The cost is one reconnect per affected client.
//!
//! **Lost acknowledged writes.** After a failover the new master may lack the last
//! messages of a group: its offset is lower than one that was acknowledged, and the next
//! publishes reassign those offsets to other messages under the same epoch. A client
//! resuming from such an offset would silently skip the new messages, or receive two
//! different messages under one position. The layer prevents it (`lost_writes.rs`):
//!
//! - It remembers, per group (at most 100,000 groups; past that an arbitrary one is
//!   forgotten, and that group is only protected by the connection-level checks), the
//!   epoch and the highest offset it saw: acknowledged to its own publishes, read as
//!   current by a history read (what resuming clients were told), and received live.
//! - After every (re)connect, before the session's command connection is installed (so
//!   before this node can publish through it and before it reports ready), one script per
//!   256 groups compares them with the master: a group whose epoch is the one seen but
//!   whose offset is below the one seen lost writes, and gets a new random epoch (and an
//!   empty history; offsets keep counting) atomically in that script. Every remembered
//!   group whose epoch is no longer the one seen (reset here, by another node, or gone
//!   with Redis' data) gets a *reset notice* on `Incoming`: offset 0 (never a message's)
//!   under the new epoch. Its streams on this node see the epoch change and close with
//!   4400, their clients resume and are answered `recovered: false` (the old epoch is no
//!   longer the group's). Plain-mode connections never receive notices.
//! - Live, the same check runs on every message: from one session to the next nothing
//!   acknowledged before may come again, so an offset at or below the highest seen (live,
//!   or acknowledged in an earlier session) under the same epoch proves a reassignment:
//!   the group gets a new epoch unconditionally (the script is told "any offset is too
//!   low"), the message is dropped and a reset notice sent. Messages still carrying an
//!   epoch this node retired are dropped (their streams were reset).
//! - Every node runs the same checks; the script only replaces the epoch it was asked
//!   about, so however many nodes notice, one new epoch results. Each detection is
//!   counted (`RedisStats::lost_writes`, `herald_redis_lost_writes_total`) and logged:
//!   one line per reconnect check, one line per burst of live ones.
//! - `history(since)` answers `recovered: false` for a position of another epoch and for
//!   one above the group's current offset under the same epoch.
//!
//! **On a Redis Cluster** the same checks run per shard: after each shard connection is
//! (re)made, the remembered groups on that shard's slots are checked one per script call
//! (a call may only name one slot's keys), and every live message on a shard connection
//! goes through the live check. Shards reconnect independently, so there is no fence
//! between sessions there: only offsets seen live count for the live check (the check
//! after a shard connect still compares acknowledged offsets). A live offset that the
//! gap repair (`cluster/gap.rs`) already delivered from history, but that was never seen
//! live, is a duplicate of that repair and is dropped in the layer.
//!
//! **What stays open.** Detection is by (epoch, offset): if, before this node reconnects
//! and checks, other nodes already published enough on the new master to carry the
//! group's offset back up to (or past) what this node saw, and those messages did not
//! reach this node live, the reassignment is indistinguishable from progress here. The
//! window is the time between the promotion and this node's reconnect (about one probe
//! interval plus the reconnect backoff); its clients may then receive a new message at a
//! position where they had an older one. A node that received the lost messages live and
//! any of the reassigning ones live does detect it. Closing the window entirely needs a
//! write that survives the failover (`WAIT` for a replica before acknowledging, i.e.
//! synchronous replication at the cost of latency), or a per-message identity in the
//! envelope to compare; neither is done yet. Writes acknowledged to no node (a 503 after
//! a timeout whose script still ran) may or may not be delivered: they were never
//! promised.
//!
//! ## Redis keys and channels
//!
//! All names start with the configured prefix (default `herald`) and put the group in a
//! `{hash tag}`, so that a group's keys and channel share a Redis Cluster slot (see
//! [Redis Cluster](#redis-cluster)). The names are built in one place, `keys.rs`.
//!
//! | name | type | content | TTL |
//! |---|---|---|---|
//! | `{prefix}:{{group}}:meta` | hash | `e`: epoch, `o`: offset of the last message, `b`: bytes in the stream (payloads plus `HISTORY_ENTRY_OVERHEAD` per entry), `x`: when a publish last refreshed the TTLs (Unix ms) | `history.max_age` + up to `min(1 min, max_age / 10)`, refreshed by a publish at most once per that interval (and at once when it creates the stream or the epoch); `history.max_age` when `history` creates the epoch |
//! | `{prefix}:{{group}}:stream` | stream | entry `{offset}-0` with fields `k` (kind: `t`/`b`), `d` (payload bytes), `t` (publish time, Unix ms); at most `history.max_len` entries and `history.max_bytes` bytes | as the meta key, refreshed with it |
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
//! - `layer.rs`: [`RedisLayer`], its `Layer` impl and the state shared with its tasks.
//! - `topology.rs`: [`Topology`], the deployment a URL names (one Redis, Sentinel or a cluster).
//! - `coalesce.rs`: the publish queue and its flusher task (generic over a command path,
//!   so a sharded layer can run one per shard).
//! - `supervisor.rs`: the task that connects, reconnects and re-subscribes.
//! - `sentinel.rs`: finding the master through Sentinel and following its changes.
//! - `lost_writes.rs`: the positions seen per group, and the resets after lost writes.
//! - `probe.rs`: the readiness probe of the pub/sub path.
//! - `subscriber.rs`: the subscriber connection: handshake, commands, read loop.
//! - `scripts.rs`: the publish and history Lua scripts and their replies.
//! - `keys.rs`, `envelope.rs`, `resp.rs`: names, wire format, RESP2.
//! - `config.rs`, `error.rs`: [`RedisLayerConfig`] and [`RedisLayerError`].
//! - `cluster/`: Redis Cluster mode: its supervisor and subscription changes (`mod.rs`),
//!   the shard connections (`shard.rs`), slots and the slot map (`slots.rs`), gap repair
//!   (`gap.rs`), the occupied index (`presence.rs`), and the command connection of either
//!   deployment (`command.rs`).

mod cluster;
mod coalesce;
mod config;
mod envelope;
mod error;
mod keys;
mod layer;
mod lost_writes;
mod presence;
mod probe;
pub mod resp;
mod scripts;
mod sentinel;
mod subscriber;
mod supervisor;
mod topology;

pub use cluster::ShardStats;
pub use config::RedisLayerConfig;
pub use error::RedisLayerError;
pub use layer::{RedisLayer, RedisStats};
pub use lost_writes::reset_notice;
pub use topology::{SentinelTopology, Topology};
