//! herald's Django bridge: herald speaks channels_redis' Redis wire format, so that
//! unchanged Django Channels code reaches herald's WebSocket clients, and herald can send
//! into channels groups that Django consumers (under daphne) receive.
//!
//! ```python
//! # Django, unchanged: the notification reaches every browser connected to herald's
//! # /message/42/stream/ (herald group "user.42"; see group_map below).
//! async_to_sync(channel_layer.group_send)("user_42", {"type": "notify", "text": json.dumps(n)})
//! ```
//!
//! The message's `text` (a str) becomes a text frame, `bytes` (Python bytes) a binary
//! frame, byte for byte. `type` is not used for delivery: herald has no handlers. With
//! `payload = "event"` (globally or per group pattern) the event without `type` is
//! delivered as compact JSON instead, so Channels' tutorial messages
//! (`{"type": "chat.message", "message": "hi"}` → `{"message":"hi"}`) need no change.
//! Either way a payload over the server's `limits.max_publish_bytes` is dropped and counted.
//!
//! # Using it from the server
//!
//! ```ignore
//! let bridge = DjangoBridge::start(config.django.clone(), layer.clone(), max_payload_bytes, shutdown.clone()).await?;
//! // From the task that orders subscriptions (the hub's first-join / last-leave edges):
//! bridge.group_active(&group).await?;    // first local member of `group` joined
//! bridge.group_inactive(&group).await?;  // last local member of `group` left
//! // Optionally, forward herald publishes to Django consumers of the same group:
//! let report = bridge.group_send(&group, &payload).await?;
//! // Metrics:
//! let stats: DjangoStats = bridge.stats();
//! // Shutdown: cancel the token (or call bridge.shutdown().await), then
//! bridge.stopped().await;
//! ```
//!
//! - [`DjangoBridge::start`]`<L: Layer>(DjangoConfig, L, usize, CancellationToken) -> Result<DjangoBridge, DjangoError>`
//!   validates the config and spawns the tasks, which connect every shard (retrying with
//!   backoff while Django's Redis is down: only an invalid config fails `start`). Messages
//!   from Django are published with `layer.publish_once(group, payload, id, window)`, so
//!   they get offsets and history and reach every node through the layer like any other
//!   publish. The `usize` is the largest payload delivered (the server's publish limit).
//! - [`DjangoBridge::is_ready`]`() -> bool`: every shard answers and memberships are
//!   written (part of the server's `/readyz`).
//! - [`DjangoBridge::group_active`] / [`DjangoBridge::group_inactive`] `(&GroupName) -> Result<(), DjangoError>`:
//!   idempotent; call them in order for a group (the server's subscriptions task does).
//! - [`DjangoBridge::group_send`]`(&GroupName, &Payload) -> Result<SendReport, DjangoError>`:
//!   `{"type": message_type, "text" | "bytes": ...}` into the mapped channels group.
//! - [`DjangoBridge::stats`]`() -> DjangoStats`: counters and the backlog gauge.
//! - [`DjangoBridge::shutdown`] / [`DjangoBridge::stopped`]: stop / wait for the tasks.
//!
//! # Configuration (`[django]` in herald.toml)
//!
//! ```toml
//! [django]
//! enabled = true
//! backend = "core"                           # "core" = RedisChannelLayer, "pubsub" = RedisPubSubChannelLayer
//! hosts = ["redis://127.0.0.1:6379"]         # Django's hosts, same order (shards)
//! prefix = "asgi"                            # Django's prefix
//! expiry = 60                                # Django's expiry
//! group_expiry = 86400                       # Django's group_expiry
//! capacity = 100                             # Django's capacity
//! channel_capacity = [{ pattern = "specific.herald!*", capacity = 10000 }]   # mirror Django's
//! random_prefix_length = 12                  # Django's (core only)
//! symmetric_encryption_keys = []             # Django's, same order
//! group_map = [{ herald = "user.{id}", channels = "user_{id}" }]             # default: identity
//! channel_prefix = "herald"                  # herald's channel names: specific.herald!<group>
//! message_type = "herald.message"            # type of herald -> Django messages
//! membership_lease = 300                     # membership outlives its last refresh by this
//! # membership_refresh = 20                  # default: group_expiry / 3, at most 60 s
//! django_capacity = 100                      # the capacity Django applies to herald's queue
//! payload = "text"                           # or "event": the event without type, as JSON
//! payload_rules = [{ pattern = "chat.*", payload = "event" }]                # per group
//! ```
//!
//! Every field and its default is documented on [`DjangoConfig`]. Everything Django sets in
//! `CHANNEL_LAYERS["default"]["CONFIG"]` that affects the wire must be mirrored here.
//!
//! # Django-side settings
//!
//! **`channel_capacity` for herald's queue (core).** channels_redis limits each Redis
//! queue key to `capacity` (100) messages and `group_send` drops silently beyond it.
//! *All* messages for *all* herald groups share one key, `asgispecific.herald!`, so a burst
//! of 100 notifications in flight would already lose messages. Give herald's channels a
//! large capacity on the Django side (the glob is matched against the full channel name):
//!
//! ```python
//! CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {
//!     "hosts": [{"address": "redis://127.0.0.1:6379", "socket_timeout": None}],
//!     "channel_capacity": {"specific.herald!*": 10000},
//! }}}
//! ```
//!
//! and mirror it in `[django] django_capacity` (and `channel_capacity`). Before each pop
//! herald reads the queue's depth the way channels_redis does (`ZCOUNT`); each time it
//! reaches `django_capacity` (Django is dropping) it is counted in
//! [`DjangoStats::capacity_reached`] and logged once per burst.
//!
//! **redis-py ≥ 8** sets a 5 s socket timeout that breaks channels_redis' 5 s `BZPOPMIN`:
//! idle Django consumers die with 1011. Use `"socket_timeout": None` in the host dict, as
//! above, or pin `redis<8`.
//!
//! # How it works
//!
//! - **core backend**: see [`core`] — one shared process-specific channel prefix for all
//!   nodes, one queue key per shard drained by one node at a time under a Redis lease
//!   (fast takeover, in-flight message handed over, idempotent publish), and memberships
//!   scored in the future (`now + membership_lease`, `ZADD GT`) refreshed every
//!   `membership_refresh`, so Django's pruning never removes them while any node has
//!   members, whatever `group_expiry` Django uses.
//! - **pubsub backend**: see [`pubsub`] — every node subscribes to the
//!   groups it holds and a per-message claim in Redis picks the one node that publishes.
//! - Redis names: [`keys`]. Wire format: [`codec`].
//!
//! core: delivery into herald is exactly once and in queue (send-time) order per shard,
//! across node stalls and crashes (see [`core`]'s "Order" section). pubsub: exactly once
//! while nodes stay up, at most once if a node dies between claiming and publishing.
//!
//! # Layout
//!
//! - [`config`]: [`DjangoConfig`], [`Backend`], [`CapacityRule`].
//! - [`group_map`]: herald group ↔ channels group rules.
//! - [`codec`]: random prefix, Fernet, msgpack (a private `fernet` module holds the cipher).
//! - [`keys`]: Redis names and the consistent hash.
//! - [`core`] / [`pubsub`]: the two backends; [`DjangoBridge`] and [`DjangoStats`] are the handle
//!   and its metrics.

mod bridge;
pub mod codec;
pub mod config;
pub mod core;
mod error;
mod fernet;
pub mod group_map;
mod ingest;
pub mod keys;
pub mod pubsub;
mod stats;

pub use bridge::{DjangoBridge, SendReport};
pub use codec::{Body, ChannelsMessage, Codec, DecodeError, NoRandomness, Targets};
pub use config::{Backend, CapacityRule, DjangoConfig, InvalidConfig, PayloadMode, PayloadRule};
pub use error::DjangoError;
pub use group_map::{GroupMap, GroupMapRule};
pub use stats::DjangoStats;
pub use tokio_util::sync::CancellationToken;

/// Sleeps `backoff`'s next delay; `false` if `shutdown` fired first, so retry loops stop
/// promptly.
pub(crate) async fn wait_backoff(
    backoff: &mut herald_core::Backoff,
    shutdown: &CancellationToken,
) -> bool {
    let delay = backoff.next_delay();
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}
