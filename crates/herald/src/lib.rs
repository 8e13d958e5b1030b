//! herald: a real-time push server.
//!
//! Browsers hold WebSocket connections at routes such as `/message/{user_id}/stream/`;
//! each connection joins the groups its route names; a backend publishes messages to
//! groups over HTTP; herald delivers each message as one frame to every member connection,
//! on every node sharing the same layer.
//!
//! # Data flow
//!
//! ```text
//! browser ──ws / sse──▶ ws::gateway ──▶ connection task ◀── outbox (bounded) ◀── hub (members)
//!                       (route, limits,  (WebSocket or SSE:                         ▲
//!                        origin, token,   reads, heartbeats, resume,                │
//!                        connect hook)    writes shared frames)                     │
//! publisher ──▶ api::publish ──▶ layer.publish ──▶ (memory | redis) ──▶ pump ───────┤
//!                                     ▲                memory, small group:         │
//!                                     │                └──▶ direct ─────────────────┘
//! Django group_send ──▶ herald_django bridge (started by server, memberships kept by
//!                       subscriptions)
//! ```
//!
//! A message enters at `api::publish` (or the Django bridge), gets its offset in the layer,
//! comes back to every subscribed node on the layer's `Incoming`, fans out in `pump` →
//! `hub` (one encoding per wire mode, shared by all members) and leaves through each
//! member's `outbox`, written by its connection task (`connection.rs`; `sse.rs` for
//! event streams). Beside that path, off it: `subscriptions` (which groups this node
//! listens to), `presence` (who is connected, cluster-wide) and `webhooks` (occupied /
//! vacated events), each one task that owns its state.
//!
//! On the memory layer, a message for a small group skips the pump: `direct` fans it out
//! from the publishing request itself, under the layer's offset lock (no task wake-up,
//! and a publisher faster than delivery waits instead of queueing); large groups, and
//! every message while one is still in the pump, take the pump (see `direct.rs`).
//!
//! Another shortcut: for a small group (≤ [`hub::INLINE_MAX_MEMBERS`] local members, e.g. one
//! user's tabs) on a plain-mode connection over plain TCP, the hub writes the frame
//! to the socket itself when the connection's outbox is empty and its task is not
//! writing, instead of waking the task; anything the socket does not take at once goes
//! through the outbox as above.
//!
//! # Layout
//!
//! - [`server`]: [`run`], the accept loop and the graceful-shutdown order.
//! - [`config`]: settings from TOML, `HERALD_*` variables and flags.
//! - [`route`]: path patterns and the groups they yield.
//! - `ws`: the gateway (route, admission, WebSocket upgrade); [`connection`]: one task
//!   per WebSocket; `sse`: Server-Sent Events on the same routes, resumed through the
//!   same replay path.
//! - `pump`: the one task moving messages from the layer into the hub, in slices;
//!   `direct`: the memory layer's delivery from the publisher, for small groups.
//! - [`hub`]: node-local membership (sharded, copy-on-write member lists) and fan-out;
//!   [`outbox`]: one connection's bounded frame queue and its direct-write path;
//!   [`subscriptions`]: the task keeping the layer subscribed to exactly the groups with
//!   local members.
//! - [`api`]: `POST /api/publish`, health, readiness and metrics endpoints.
//! - [`protocol`]: message frames (plain and `herald.v1`) and the `herald.v1` control
//!   frames; [`close`]: close codes.
//! - `hook`: the connect hook (the application decides who may listen), its decision
//!   cache and refreshes; `presence`, `webhooks`: presence entries and occupied/vacated
//!   events across nodes.
//! - `admin`: the `/admin/` dashboard; `http_limits`, `error_body`, `burst_log`: HTTP
//!   connection caps, JSON bodies for hyper's own errors, log lines once per burst.
//! - [`node_layer`]: the configured layer as one type; [`metrics`]: counters.
//! - [`auth`]: connection tokens (HS256 JWT) and what they grant; [`client_ip`]: the
//!   client address behind trusted proxies; [`tls`]: the rustls acceptor.
//! - `socket`: the plain TCP socket shared by a connection's task and the hub's direct
//!   writes.

mod admin;
pub mod api;
mod assets;
pub mod auth;
mod burst_log;
pub mod cli;
pub mod client_ip;
pub mod close;
pub mod config;
pub mod connection;
mod direct;
mod error_body;
pub mod hook;
mod http_limits;
pub mod hub;
pub mod metrics;
pub mod node_layer;
pub mod outbox;
mod presence;
pub mod protocol;
mod pump;
pub mod route;
pub mod server;
mod socket;
mod sse;
pub mod subscriptions;
pub mod tls;
pub mod webhooks;
mod ws;

pub use config::Config;
pub use server::{ServeError, run, serve};
