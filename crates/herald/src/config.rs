//! `Config`: herald's settings from a TOML file, `HERALD_<SECTION>_<KEY>` env vars and flags.
//!
//! Precedence, lowest first: built-in defaults, the file, the environment, command-line
//! flags. Every key is validated at startup; an invalid one is reported once, by its
//! dotted path (`limits.max_connections: invalid type ...`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::client_ip::IpNet;
use crate::route::{Route, RouteError};

/// A configuration error: which key, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key}: {message}")]
pub struct ConfigError {
    /// Dotted path of the offending key (`layer.kind`), or the file for syntax errors.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        // One line: parsers append their own location lines, which the key already says.
        let message: String = message.into();
        let message = message.lines().next().unwrap_or("").trim().to_string();
        Self {
            key: key.into(),
            message,
        }
    }
}

/// Everything `herald serve` needs. `Config::default()` is the seed's setup: the memory
/// layer, the route `/message/{user_id}/stream/` joining `user.{user_id}`, on 127.0.0.1:8000.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:8000`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// WebSocket routes. Default: the seed's route.
    pub routes: Vec<RouteConfig>,
    /// Which layer moves messages between nodes.
    pub layer: LayerConfig,
    /// History kept per group for resuming clients.
    pub history: HistorySection,
    /// The publish API.
    pub api: ApiConfig,
    /// Publishing: the idempotency window.
    pub publish: PublishConfig,
    /// Bounds on connections, frames and queues.
    pub limits: Limits,
    /// Keep-alive of WebSocket connections.
    pub heartbeat: Heartbeat,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Secrets of connection tokens (routes with `auth = "token"`).
    pub auth: AuthConfig,
    /// TLS, so clients connect with `wss://` and `https://` without a proxy. Off by default.
    pub tls: TlsConfig,
    /// The Django Channels bridge (channels_redis wire format). Off by default.
    pub django: herald_django::DjangoConfig,
    /// How `herald serve` logs.
    pub log: LogConfig,
    /// The `/admin/` dashboard. Off unless a key is set.
    pub admin: AdminConfig,
    /// The connect hook asked by routes with `auth = "hook"` (DESIGN.md §11).
    pub hook: HookConfig,
    /// Presence per group across nodes (`GET /api/presence/{group}`, DESIGN.md §12).
    pub presence: PresenceConfig,
    /// `group.occupied` / `group.vacated` webhooks (DESIGN.md §12). Off unless a URL is set.
    pub webhooks: WebhooksConfig,
}

/// `[admin]`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The key the `/admin/` page asks for (at least 16 bytes). Default: none — the page
    /// and its data endpoints are off (404).
    pub key: Option<String>,
    /// How often each node publishes its report to the dashboard. Default `1s`.
    #[serde(deserialize_with = "duration", serialize_with = "human_duration")]
    pub report_interval: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            key: None,
            report_interval: Duration::from_secs(1),
        }
    }
}

impl std::fmt::Debug for AdminConfig {
    // The key never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("report_interval", &self.report_interval)
            .finish()
    }
}

/// `[log]`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default; coloured only when stderr is a terminal) or `json` (one object
    /// per line). The level is set with `RUST_LOG` (default `herald=info,warn`).
    pub format: LogFormat,
}

/// A log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            routes: vec![RouteConfig::seed()],
            layer: LayerConfig::default(),
            history: HistorySection::default(),
            api: ApiConfig::default(),
            publish: PublishConfig::default(),
            limits: Limits::default(),
            heartbeat: Heartbeat::default(),
            shutdown: ShutdownConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            django: herald_django::DjangoConfig::default(),
            log: LogConfig::default(),
            admin: AdminConfig::default(),
            hook: HookConfig::default(),
            presence: PresenceConfig::default(),
            webhooks: WebhooksConfig::default(),
        }
    }
}

/// One `[[routes]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path pattern; `{name}` matches one segment of `[A-Za-z0-9._-]+`.
    pub path: String,
    /// Group templates joined on connect, e.g. `user.{user_id}`.
    pub groups: Vec<String>,
    /// `none` (default), `token` or `hook`.
    #[serde(default)]
    pub auth: AuthMode,
    /// With `auth = "hook"`: patterns (`team.*`, exact names) of the groups the hook's
    /// answer may name besides the route's own. Default: none.
    #[serde(default)]
    pub hook_groups: Vec<String>,
    /// The path parameter a token's `sub` stands for (default grant). Default: the
    /// path's first parameter.
    #[serde(default)]
    pub sub_param: Option<String>,
    /// Allowed `Origin` headers (`https://app.example.com`); refused → close 4503.
    /// Default: empty, any origin.
    #[serde(default)]
    pub origins: Vec<String>,
    /// `herald.v1` connections on this route are sent `join`/`leave` events of the other
    /// `sub`s in their groups (DESIGN.md §12). Default `false`.
    #[serde(default)]
    pub presence: bool,
}

impl RouteConfig {
    /// The seed's route: `/message/{user_id}/stream/` → `user.{user_id}`.
    pub fn seed() -> Self {
        Self {
            path: "/message/{user_id}/stream/".into(),
            groups: vec!["user.{user_id}".into()],
            auth: AuthMode::None,
            hook_groups: Vec::new(),
            sub_param: None,
            origins: Vec::new(),
            presence: false,
        }
    }
}

/// How a route authenticates connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone may connect (the seed's behaviour).
    #[default]
    None,
    /// A signed connection token is required.
    Token,
    /// The application's connect hook decides (`[hook]`, DESIGN.md §11).
    Hook,
}

/// `[hook]`: the HTTP endpoint asked whether a connection on an `auth = "hook"` route may
/// open (DESIGN.md §11). Plain `http://` only: run the hook on the loopback or a private
/// network.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HookConfig {
    /// `http://host:port/path` the connect request is POSTed to. Required when a route
    /// uses `auth = "hook"`.
    pub url: Option<String>,
    /// Request headers forwarded to the hook (lowercase names); nothing else is.
    /// Default `["cookie", "authorization"]`.
    pub forward_headers: Vec<String>,
    /// Deadline of one hook request, connect to last body byte; past it the connection is
    /// closed with 1013. Default `2s`.
    #[serde(deserialize_with = "duration", serialize_with = "human_duration")]
    pub timeout: Duration,
    /// How long a decision is reused for the same forwarded headers, origin and path.
    /// `0s` turns the cache off (concurrent asks still share one request). Default `30s`.
    #[serde(deserialize_with = "duration", serialize_with = "human_duration")]
    pub cache_ttl: Duration,
    /// How often an open connection is asked about again; a refusal closes it with 4003.
    /// Default `5m`.
    #[serde(deserialize_with = "duration", serialize_with = "human_duration")]
    pub refresh: Duration,
    /// Most decisions cached (and requests in flight shared). Default 10000.
    pub cache_entries: usize,
    /// Most bytes of cached decisions. Default 8 MiB.
    pub cache_bytes: usize,
}

impl HookConfig {
    /// Checks the URL (plain `http://` with a host), the header names and the bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.url {
            crate::hook::Endpoint::parse(url).map_err(|e| ConfigError::new("hook.url", e))?;
        }
        for (i, name) in self.forward_headers.iter().enumerate() {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(ConfigError::new(
                    format!("hook.forward_headers[{i}]"),
                    "must be a lowercase header name like \"cookie\"",
                ));
            }
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new("hook.timeout", "must be longer than 0s"));
        }
        if self.refresh.is_zero() {
            return Err(ConfigError::new("hook.refresh", "must be longer than 0s"));
        }
        if self.cache_entries == 0 {
            return Err(ConfigError::new(
                "hook.cache_entries",
                "must be greater than 0",
            ));
        }
        if self.cache_bytes == 0 {
            return Err(ConfigError::new(
                "hook.cache_bytes",
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}

impl Default for HookConfig {
    fn default() -> Self {
        Self {
            url: None,
            forward_headers: vec!["cookie".into(), "authorization".into()],
            timeout: Duration::from_secs(2),
            cache_ttl: Duration::from_secs(30),
            refresh: Duration::from_secs(300),
            cache_entries: 10_000,
            cache_bytes: 8 << 20,
        }
    }
}

/// `[layer]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LayerConfig {
    /// `memory` (default, one process) or `redis` (several nodes).
    pub kind: LayerKind,
    /// Redis URL, required when `kind = "redis"`: `redis://[user:pass@]host:port/db`,
    /// `redis+sentinel://[user:pass@]h1:26379,h2:26379/<master-name>[/<db>]` for a master
    /// found (and re-found after a failover) through Redis Sentinel, or
    /// `redis+cluster://h1:7000,h2:7001` for a Redis Cluster (sharded pub/sub, one
    /// subscriber connection per shard).
    pub url: Option<String>,
    /// Prefix of every Redis key and channel. Default `herald`.
    pub prefix: String,
    /// Redis layer: how often the pub/sub path is proven by a round trip on this node's
    /// private channel; `/readyz` answers 503 when a probe stays unanswered for one
    /// interval (so within two intervals of a stall). Default `1s`.
    #[serde(deserialize_with = "duration", serialize_with = "human_duration")]
    pub probe_interval: Duration,
    /// Redis layer: publish script calls in flight at once; while they are, concurrent
    /// publishes queue and go out together in one call when one returns (at most 256
    /// messages per call). Default 4.
    pub publish_in_flight: usize,
}

impl Default for LayerConfig {
    fn default() -> Self {
        Self {
            kind: LayerKind::Memory,
            url: None,
            prefix: "herald".into(),
            probe_interval: Duration::from_secs(1),
            publish_in_flight: 4,
        }
    }
}

/// Which layer backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    /// In-process; one node.
    Memory,
    /// Redis; many nodes share groups.
    Redis,
}

/// `[history]`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySection {
    /// Messages kept per group. Default 1000.
    pub size: usize,
    /// How long messages (and an idle group's epoch) are kept. Default `24h`.
    #[serde(deserialize_with = "duration", serialize_with = "human_duration")]
    pub ttl: Duration,
    /// Bytes of history kept per group: payloads plus about 128 bytes per message; the
    /// oldest are trimmed past it, and a larger message is delivered but not kept.
    /// Default 4 MiB.
    pub max_bytes: usize,
    /// Memory layer: bytes of history the whole node keeps, counted the same way. Past
    /// it the histories of the groups published to least recently are dropped (a resume
    /// that needed them gets `recovered: false`; live streams go on). Default 64 MiB.
    pub max_total_bytes: usize,
    /// Memory layer: groups whose position and history the node keeps; past it the
    /// least recently published group without a member on this node is forgotten.
    /// Default 100000.
    pub max_groups: usize,
}

impl Default for HistorySection {
    fn default() -> Self {
        let core = herald_core::HistoryConfig::default();
        let memory = herald_core::memory::MemoryLayerConfig::default();
        Self {
            size: 1000,
            ttl: Duration::from_secs(24 * 3600),
            max_bytes: core.max_bytes,
            max_total_bytes: memory.max_total_bytes,
            max_groups: memory.max_groups,
        }
    }
}

/// `[api]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Bearer key required by `POST /api/publish`. Default: none (open API; bind to
    /// loopback or set a key).
    pub key: Option<String>,
    /// Several named keys; the name shows in logs.
    pub keys: BTreeMap<String, String>,
    /// Page origins (`https://app.example.com`) that may publish from a browser while
    /// the API has no key. Default: none — without a key, a request with an `Origin`
    /// header (what browsers send) is refused with 403, so no web page the user visits
    /// can publish through a herald on their machine or network.
    pub origins: Vec<String>,
}

/// `[publish]`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// How long an `idempotency_key` is remembered per group: a retry within it
    /// publishes nothing and answers the first offset. Default `5m`.
    #[serde(deserialize_with = "duration", serialize_with = "human_duration")]
    pub idempotency_window: Duration,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            idempotency_window: Duration::from_secs(300),
        }
    }
}

/// `[presence]`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// How often the node rewrites its presence entries in the layer. Each entry counts for
    /// twice this long, so the entries of a node that died vanish within `2 × refresh`.
    /// Default `5s`.
    #[serde(deserialize_with = "duration", serialize_with = "human_duration")]
    pub refresh: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(5),
        }
    }
}

impl PresenceConfig {
    /// How long one written entry counts: `2 × refresh`, the stated staleness bound.
    pub fn ttl(&self) -> Duration {
        self.refresh.saturating_mul(2)
    }
}

/// `[webhooks]`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Where events are POSTed (`http://host:port/path`). Default: none (no webhooks).
    pub url: Option<String>,
    /// Signs each request (`X-Herald-Signature`); required with `url`, at least 16 bytes.
    pub secret: Option<String>,
    /// How long a group must stay empty, cluster-wide, before `group.vacated` (a page
    /// reload is no vacancy). Default `5s`.
    #[serde(deserialize_with = "duration", serialize_with = "human_duration")]
    pub vacated_delay: Duration,
    /// One request, connect to answer. Default `5s`.
    #[serde(deserialize_with = "duration", serialize_with = "human_duration")]
    pub timeout: Duration,
    /// Requests per event before it is given up (counted and logged). Default 10.
    pub max_attempts: u32,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            url: None,
            secret: None,
            vacated_delay: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            max_attempts: 10,
        }
    }
}

impl std::fmt::Debug for WebhooksConfig {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhooksConfig")
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("vacated_delay", &self.vacated_delay)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

/// `[limits]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// WebSocket connections held at once; past it new ones are closed with 1013.
    /// Default 100000.
    pub max_connections: usize,
    /// Largest publish request body, in bytes; larger gets 413. Default 1 MiB.
    pub max_publish_bytes: usize,
    /// Most messages in one batch publish. Default 1000.
    pub max_batch: usize,
    /// Most groups one publish request may name. Default 1000.
    pub max_publish_groups: usize,
    /// Frames queued for one connection before it counts as a slow consumer and is
    /// closed with 4001. Default 4096.
    pub outbox_messages: usize,
    /// Bytes queued for one connection before the same happens. Default 16 MiB.
    pub outbox_bytes: usize,
    /// Largest frame or message a client may send, in bytes; larger closes with 1009.
    /// Default 64 KiB.
    pub max_message_bytes: usize,
    /// Time allowed for the TLS handshake, and again for each HTTP request head (and, in
    /// `herald.v1`, for the `hello`); a slower client is disconnected. Default `10s`.
    #[serde(deserialize_with = "duration", serialize_with = "human_duration")]
    pub handshake_timeout: Duration,
    /// WebSocket connections held at once from one client IP (IPv6: one /64); past it new
    /// ones are closed with 1013. Default 1000.
    pub max_connections_per_ip: usize,
    /// Most groups one connection may join; every route must stay within it. At most
    /// 255. Default 64.
    pub max_groups_per_connection: usize,
    /// Proxies whose `X-Forwarded-For` is believed, as networks (`["10.0.0.0/8"]`).
    /// Default: none — the TCP peer is the client.
    pub trusted_proxies: Vec<IpNet>,
    /// HTTP connections open at once that are not (yet) WebSockets: publish requests,
    /// metrics scrapes, upgrades in progress. Past it a new connection is answered 503
    /// and closed. Default 10000, and never more than half the process's open-files
    /// limit, so stalled requests cannot take the descriptors WebSockets need.
    pub max_http_connections: usize,
    /// The same per client address (IPv6: per /64); past it 429 and closed. Trusted
    /// proxies are exempt (their clients share the proxy's address). Default 256.
    pub max_http_connections_per_ip: usize,
    /// Time allowed for a whole request body; a slower one is answered 408 and its
    /// connection closed. Default `10s`.
    #[serde(deserialize_with = "duration", serialize_with = "human_duration")]
    pub body_timeout: Duration,
    /// Slowest average a request body may arrive at, in bytes per second, once it has
    /// had 2 s; 0 turns the check off. Default 1024.
    pub body_min_rate: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_publish_bytes: 1 << 20,
            max_batch: 1000,
            max_publish_groups: 1000,
            outbox_messages: 4096,
            outbox_bytes: 16 << 20,
            max_message_bytes: 64 << 10,
            handshake_timeout: Duration::from_secs(10),
            max_connections_per_ip: 1000,
            max_groups_per_connection: 64,
            trusted_proxies: Vec::new(),
            max_http_connections: 10_000,
            max_http_connections_per_ip: 256,
            body_timeout: Duration::from_secs(10),
            body_min_rate: 1024,
        }
    }
}

/// The largest `limits.max_groups_per_connection`: the hub numbers a connection's groups
/// with a `u8`.
pub const MAX_GROUPS_PER_CONNECTION: usize = 255;

/// `[auth]`: how connection tokens are verified.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The HS256 secret tokens are signed with (at least 32 bytes).
    pub secret: Option<String>,
    /// More accepted secrets, for rotation: sign with the new one, accept both, drop the
    /// old one once its tokens expired.
    pub secrets: Vec<String>,
    /// A file holding secrets, one per non-empty line (keeps them out of the config).
    pub secret_file: Option<PathBuf>,
    /// Clock skew tolerated on `exp` and `nbf`. Default `0s`; at most `1h`.
    #[serde(deserialize_with = "duration", serialize_with = "human_duration")]
    pub leeway: Duration,
}

impl std::fmt::Debug for AuthConfig {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secrets", &self.secrets.len())
            .field("secret_file", &self.secret_file)
            .field("leeway", &self.leeway)
            .finish()
    }
}

/// The shortest secret accepted: HS256 is only as strong as its key (RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;

impl AuthConfig {
    /// Every accepted secret: `secret`, then `secrets`, then the lines of `secret_file`.
    pub fn load_secrets(&self) -> Result<Vec<Vec<u8>>, ConfigError> {
        let mut secrets: Vec<(String, String)> = Vec::new();
        if let Some(s) = &self.secret {
            secrets.push(("auth.secret".into(), s.clone()));
        }
        for (i, s) in self.secrets.iter().enumerate() {
            secrets.push((format!("auth.secrets[{i}]"), s.clone()));
        }
        if let Some(path) = &self.secret_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    "auth.secret_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                secrets.push(("auth.secret_file".into(), line.to_string()));
            }
        }
        secrets
            .into_iter()
            .map(|(key, s)| {
                if s.len() < MIN_SECRET_BYTES {
                    Err(ConfigError::new(
                        key,
                        format!("a secret needs at least {MIN_SECRET_BYTES} bytes"),
                    ))
                } else {
                    Ok(s.into_bytes())
                }
            })
            .collect()
    }
}

/// `[tls]`: both or neither.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether TLS is on.
    pub fn is_enabled(&self) -> bool {
        self.cert.is_some() || self.key.is_some()
    }
}

/// `[heartbeat]`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Heartbeat {
    /// How often idle connections are pinged. Default `25s`.
    #[serde(deserialize_with = "duration", serialize_with = "human_duration")]
    pub interval: Duration,
    /// How long past a ping a silent peer is kept before it is dropped. Default `10s`.
    #[serde(deserialize_with = "duration", serialize_with = "human_duration")]
    pub timeout: Duration,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(25),
            timeout: Duration::from_secs(10),
        }
    }
}

/// `[shutdown]`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long connections and requests get to finish after SIGTERM. Default `10s`.
    #[serde(deserialize_with = "duration", serialize_with = "human_duration")]
    pub drain_timeout: Duration,
    /// Window over which `herald.v1` clients spread their reconnects after a `goaway`.
    /// Default `10s`.
    #[serde(deserialize_with = "duration", serialize_with = "human_duration")]
    pub goaway_window: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(10),
            goaway_window: Duration::from_secs(10),
        }
    }
}

fn human_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!("{e} (expected e.g. \"10s\", \"500ms\", \"1h\")"))
    })
}

/// `herald config default`: every key at its default, commented.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config/default.toml");

/// Keys whose values are secrets, wherever they appear.
const SECRET_KEYS: &[&str] = &[
    "key",
    "keys",
    "secret",
    "secrets",
    "symmetric_encryption_keys",
];

/// Replaces secrets in a rendered configuration (see [`Config::to_redacted_toml`]).
fn redact(value: &mut toml::Value, key: &str) {
    match value {
        toml::Value::Table(table) if SECRET_KEYS.contains(&key) => {
            // A table of secrets (`[api.keys]`): names stay, values go.
            for (_, v) in table.iter_mut() {
                *v = toml::Value::String("<redacted>".into());
            }
        }
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                redact(v, k);
            }
        }
        toml::Value::Array(items) if SECRET_KEYS.contains(&key) => {
            for item in items {
                *item = toml::Value::String("<redacted>".into());
            }
        }
        toml::Value::Array(items) => {
            for item in items {
                redact(item, key);
            }
        }
        toml::Value::String(text) if SECRET_KEYS.contains(&key) => {
            *text = "<redacted>".into();
        }
        toml::Value::String(text) => {
            // redis://user:password@host → redis://user:<redacted>@host
            if let Some((scheme, rest)) = text.split_once("://") {
                if let Some((userinfo, host)) = rest.split_once('@') {
                    if let Some((user, _)) = userinfo.split_once(':') {
                        *text = format!("{scheme}://{user}:<redacted>@{host}");
                    }
                }
            }
        }
        _ => {}
    }
}

/// Sections whose keys may be set from `HERALD_<SECTION>_<KEY>`.
const SECTIONS: &[&str] = &[
    "layer",
    "history",
    "api",
    "publish",
    "limits",
    "heartbeat",
    "shutdown",
    "django",
    "auth",
    "tls",
    "log",
    "admin",
    "hook",
    "presence",
    "webhooks",
];

impl Config {
    /// Loads the configuration: defaults, then the TOML file (if any), then every
    /// `HERALD_*` variable in `env`, then validation.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new(path.display().to_string(), format!("cannot read: {e}"))
                })?;
                text.parse::<toml::Table>().map_err(|e| {
                    ConfigError::new(path.display().to_string(), e.message().to_string())
                })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                ConfigError::new(
                    if key == "." { "config".into() } else { key },
                    e.into_inner().to_string(),
                )
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot: non-zero bounds, a Redis URL for the Redis layer,
    /// compilable routes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("limits.max_connections", self.limits.max_connections),
            ("limits.max_publish_bytes", self.limits.max_publish_bytes),
            ("limits.max_batch", self.limits.max_batch),
            ("limits.max_publish_groups", self.limits.max_publish_groups),
            ("limits.outbox_messages", self.limits.outbox_messages),
            ("limits.outbox_bytes", self.limits.outbox_bytes),
            ("limits.max_message_bytes", self.limits.max_message_bytes),
            (
                "limits.max_connections_per_ip",
                self.limits.max_connections_per_ip,
            ),
            (
                "limits.max_groups_per_connection",
                self.limits.max_groups_per_connection,
            ),
            (
                "limits.max_http_connections",
                self.limits.max_http_connections,
            ),
            ("history.max_bytes", self.history.max_bytes),
            ("history.max_total_bytes", self.history.max_total_bytes),
            ("history.max_groups", self.history.max_groups),
            (
                "limits.max_http_connections_per_ip",
                self.limits.max_http_connections_per_ip,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(key, "must be greater than 0"));
            }
        }
        let nonzero = [
            ("heartbeat.interval", self.heartbeat.interval),
            ("heartbeat.timeout", self.heartbeat.timeout),
            ("limits.handshake_timeout", self.limits.handshake_timeout),
            ("limits.body_timeout", self.limits.body_timeout),
            ("history.ttl", self.history.ttl),
            (
                "publish.idempotency_window",
                self.publish.idempotency_window,
            ),
            ("presence.refresh", self.presence.refresh),
            ("webhooks.timeout", self.webhooks.timeout),
        ];
        for (key, value) in nonzero {
            if value.is_zero() {
                return Err(ConfigError::new(key, "must be longer than 0s"));
            }
        }
        if self.layer.kind == LayerKind::Redis {
            match self.layer.url.as_deref() {
                None | Some("") => {
                    return Err(ConfigError::new(
                        "layer.url",
                        "required when layer.kind = \"redis\"",
                    ));
                }
                Some(url) => {
                    // The layer's own parser: a bad Sentinel address list fails here, at
                    // start-up, with the reason.
                    if let Err(e) = herald_redis::Topology::parse(url) {
                        let message = match std::error::Error::source(&e) {
                            Some(why) => format!("{e}: {why}"),
                            None => e.to_string(),
                        };
                        return Err(ConfigError::new("layer.url", message));
                    }
                }
            }
        }
        if let Some(url) = &self.webhooks.url {
            crate::hook::Endpoint::parse(url).map_err(|e| ConfigError::new("webhooks.url", e))?;
            match &self.webhooks.secret {
                Some(secret) if secret.len() >= 16 => {}
                _ => {
                    return Err(ConfigError::new(
                        "webhooks.secret",
                        "required with webhooks.url, at least 16 bytes",
                    ));
                }
            }
        }
        if self.webhooks.max_attempts == 0 {
            return Err(ConfigError::new(
                "webhooks.max_attempts",
                "must be greater than 0",
            ));
        }
        if self.layer.prefix.is_empty() {
            return Err(ConfigError::new("layer.prefix", "must not be empty"));
        }
        if self.layer.publish_in_flight == 0 {
            return Err(ConfigError::new(
                "layer.publish_in_flight",
                "must be at least 1",
            ));
        }
        if self.routes.is_empty() {
            return Err(ConfigError::new("routes", "at least one route is needed"));
        }
        let max_groups = self.limits.max_groups_per_connection;
        if max_groups > MAX_GROUPS_PER_CONNECTION {
            return Err(ConfigError::new(
                "limits.max_groups_per_connection",
                format!("must be at most {MAX_GROUPS_PER_CONNECTION}"),
            ));
        }
        if self.auth.leeway > Duration::from_secs(3600) {
            return Err(ConfigError::new("auth.leeway", "must be at most 1h"));
        }
        let secrets = self.auth.load_secrets()?;
        for (i, route) in self.routes.iter().enumerate() {
            let compiled = Route::compile(route)
                .map_err(|e: RouteError| ConfigError::new(format!("routes[{i}]"), e.to_string()))?;
            if compiled.group_count() > max_groups {
                return Err(ConfigError::new(
                    format!("routes[{i}].groups"),
                    format!(
                        "{} groups, more than limits.max_groups_per_connection = {max_groups}",
                        compiled.group_count()
                    ),
                ));
            }
            if route.auth == AuthMode::Hook && self.hook.url.is_none() {
                return Err(ConfigError::new(
                    format!("routes[{i}].auth"),
                    "\"hook\" needs hook.url",
                ));
            }
            if route.auth == AuthMode::Token && secrets.is_empty() {
                return Err(ConfigError::new(
                    format!("routes[{i}].auth"),
                    "\"token\" needs a secret: set auth.secret, auth.secrets or auth.secret_file",
                ));
            }
        }
        self.hook.validate()?;
        if self.tls.is_enabled() {
            crate::tls::acceptor(&self.tls)?;
        }
        if self.django.enabled {
            self.django
                .validate()
                .map_err(|e| ConfigError::new("django", e.to_string()))?;
        }
        for (name, key) in &self.api.keys {
            if key.is_empty() {
                return Err(ConfigError::new(
                    format!("api.keys.{name}"),
                    "must not be empty",
                ));
            }
        }
        if let Some(key) = &self.admin.key {
            if key.len() < 16 {
                return Err(ConfigError::new("admin.key", "needs at least 16 bytes"));
            }
        }
        if self.admin.report_interval < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "admin.report_interval",
                "must be at least 100ms",
            ));
        }
        if self.api.key.as_deref() == Some("") {
            return Err(ConfigError::new(
                "api.key",
                "must not be empty (omit it for an open API)",
            ));
        }
        Ok(())
    }

    /// The configuration as TOML, every key included (defaults too), with secrets shown
    /// as `"<redacted>"` and passwords in URLs replaced: what `herald config check` prints.
    pub fn to_redacted_toml(&self) -> Result<String, ConfigError> {
        let mut value = toml::Value::try_from(self)
            .map_err(|e| ConfigError::new("config", format!("cannot render: {e}")))?;
        redact(&mut value, "");
        toml::to_string(&value)
            .map_err(|e| ConfigError::new("config", format!("cannot render: {e}")))
    }

    /// The compiled routes (validated by [`Config::validate`]).
    pub fn compiled_routes(&self) -> Result<Vec<Route>, ConfigError> {
        self.routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Route::compile(r)
                    .map_err(|e| ConfigError::new(format!("routes[{i}]"), e.to_string()))
            })
            .collect()
    }
}

/// Overlays `HERALD_<SECTION>_<KEY>=value` (and `HERALD_LISTEN`) onto the TOML table.
///
/// A value is read as what its key is declared to be, never guessed from its look: a
/// string key takes the text exactly as given (`HERALD_API_KEY=12345678` and
/// `HERALD_API_KEY=true` are strings), a number or boolean key parses it, and a list key
/// takes comma-separated items (`HERALD_DJANGO_HOSTS=redis://a:6379,redis://b:6379`; an
/// empty value is an empty list). A TOML literal (`["a,b"]`, `[{ pattern = "x", capacity = 5 }]`)
/// is accepted where plain text does not fit, e.g. for items that contain a comma.
///
/// The key's type is found by trying the readings in that order against the
/// configuration's own schema: the first one the key accepts wins. A value no reading
/// fits is kept as text, and loading then reports the key with its type error.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("HERALD_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let (section, key) = if rest == "listen" {
            (None, rest)
        } else {
            let Some((section, key)) = rest.split_once('_') else {
                continue;
            };
            if !SECTIONS.contains(&section) || key.is_empty() {
                // Other HERALD_* variables (e.g. HERALD_REDIS_SERVER for tests) are not config.
                continue;
            }
            (Some(section.to_string()), key.to_string())
        };
        let parsed = env_value(section.as_deref(), &key, &value);
        let target = match &section {
            None => &mut *table,
            Some(section) => {
                let entry = table
                    .entry(section.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(section_table) = entry else {
                    return Err(ConfigError::new(section.clone(), "must be a table"));
                };
                section_table
            }
        };
        target.insert(key, parsed);
    }
    Ok(())
}

/// The reading of an environment value that its key accepts (see [`apply_env`]).
fn env_value(section: Option<&str>, key: &str, value: &str) -> toml::Value {
    let text = toml::Value::String(value.to_string());
    let mut readings = vec![text.clone()];
    if let Some(literal) = toml_literal(value) {
        readings.push(literal);
    }
    readings.push(comma_list(value, false));
    readings.push(comma_list(value, true));
    readings
        .into_iter()
        .find(|reading| key_accepts(section, key, reading))
        .unwrap_or(text)
}

/// Whether the schema accepts `value` at `section.key`, all else left at its default.
fn key_accepts(section: Option<&str>, key: &str, value: &toml::Value) -> bool {
    let mut probe = toml::Table::new();
    match section {
        None => {
            probe.insert(key.to_string(), value.clone());
        }
        Some(section) => {
            let mut inner = toml::Table::new();
            inner.insert(key.to_string(), value.clone());
            probe.insert(section.to_string(), toml::Value::Table(inner));
        }
    }
    match serde_path_to_error::deserialize::<_, Config>(toml::Value::Table(probe)) {
        Ok(_) => true,
        Err(e) => {
            // Only an error at this key (or inside it) rules the reading out.
            let path = e.path().to_string();
            let at = match section {
                None => key.to_string(),
                Some(section) => format!("{section}.{key}"),
            };
            !(path == at
                || path.starts_with(&format!("{at}."))
                || path.starts_with(&format!("{at}[")))
        }
    }
}

/// `value` as the right-hand side of `v = <value>`, if it is a TOML literal.
fn toml_literal(value: &str) -> Option<toml::Value> {
    format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
}

/// Comma-separated items, each trimmed: all as text, or (`typed`) numbers and booleans as
/// such.
fn comma_list(value: &str, typed: bool) -> toml::Value {
    if value.trim().is_empty() {
        return toml::Value::Array(Vec::new());
    }
    toml::Value::Array(
        value
            .split(',')
            .map(str::trim)
            .map(|item| match toml_literal(item).filter(|_| typed) {
                Some(
                    v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)),
                ) => v,
                _ => toml::Value::String(item.to_string()),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("herald-config-{}", fastrand::u64(..)));
        std::fs::write(&dir, toml_text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let result = Config::load(Some(&dir), env);
        let _ = std::fs::remove_file(&dir);
        result
    }

    #[test]
    fn defaults_are_the_seed() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(c.routes[0].path, "/message/{user_id}/stream/");
        assert_eq!(c.layer.kind, LayerKind::Memory);
    }

    #[test]
    fn env_overrides_file() {
        let c = load(
            "listen = \"127.0.0.1:9000\"\n[limits]\nmax_connections = 5\n",
            &[
                ("HERALD_LIMITS_MAX_CONNECTIONS", "7"),
                ("HERALD_API_KEY", "s3cr3t"),
                ("HERALD_HEARTBEAT_INTERVAL", "2s"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.limits.max_connections, 7);
        assert_eq!(c.api.key.as_deref(), Some("s3cr3t"));
        assert_eq!(c.heartbeat.interval, Duration::from_secs(2));
    }

    #[test]
    fn env_values_take_the_type_of_their_key() {
        let env = |pairs: &[(&str, &str)]| {
            Config::load(
                None,
                pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            )
        };
        // A string key takes the text as given, even when it looks like a number or bool.
        for text in ["12345678", "true", "1.5", "[\"a\"]", "a,b", " spaced "] {
            let c = env(&[("HERALD_API_KEY", text)]).unwrap();
            assert_eq!(c.api.key.as_deref(), Some(text));
        }
        // Lists: comma-separated items, or a TOML array literal.
        let c = env(&[
            ("HERALD_DJANGO_HOSTS", "redis://a:6379,redis://b:6379"),
            ("HERALD_LIMITS_TRUSTED_PROXIES", "10.0.0.0/8, ::1"),
        ])
        .unwrap();
        assert_eq!(c.django.hosts, vec!["redis://a:6379", "redis://b:6379"]);
        assert_eq!(c.limits.trusted_proxies.len(), 2);
        let c = env(&[("HERALD_DJANGO_HOSTS", "[\"redis://a:6379\"]")]).unwrap();
        assert_eq!(c.django.hosts, vec!["redis://a:6379"]);
        let c = env(&[("HERALD_LIMITS_TRUSTED_PROXIES", "")]).unwrap();
        assert!(c.limits.trusted_proxies.is_empty());
        // Numbers, booleans and durations.
        let c = env(&[
            ("HERALD_LIMITS_MAX_BATCH", "17"),
            ("HERALD_DJANGO_ENABLED", "false"),
            ("HERALD_HISTORY_TTL", "90s"),
            ("HERALD_LISTEN", "127.0.0.1:0"),
        ])
        .unwrap();
        assert_eq!(c.limits.max_batch, 17);
        assert!(!c.django.enabled);
        assert_eq!(c.history.ttl, Duration::from_secs(90));
        assert_eq!(c.listen.port(), 0);
        // A value its key cannot take is reported by key.
        let e = env(&[("HERALD_LIMITS_MAX_BATCH", "lots")]).unwrap_err();
        assert_eq!(e.key, "limits.max_batch");
        let e = env(&[("HERALD_LIMITS_BOGUS", "1")]).unwrap_err();
        assert_eq!(e.key, "limits.bogus");
    }

    proptest::proptest! {
        #[test]
        fn any_text_reaches_a_string_key_verbatim(text in "\\PC{1,40}") {
            let c = Config::load(None, [("HERALD_API_KEY".to_string(), text.clone())]).unwrap();
            proptest::prop_assert_eq!(c.api.key.as_deref(), Some(text.as_str()));
        }

        #[test]
        fn comma_separated_items_reach_a_list_key(
            items in proptest::collection::vec("[a-z0-9:/._-]{1,20}", 1..6)
        ) {
            let value = items.join(",");
            let c = Config::load(None, [("HERALD_DJANGO_HOSTS".to_string(), value)]).unwrap();
            proptest::prop_assert_eq!(c.django.hosts, items);
        }

        #[test]
        fn numbers_reach_a_number_key(n in 1usize..1_000_000) {
            let c = Config::load(None, [("HERALD_LIMITS_MAX_BATCH".to_string(), n.to_string())]).unwrap();
            proptest::prop_assert_eq!(c.limits.max_batch, n);
        }
    }

    /// Every key of `table`, as dotted paths (array elements are not descended into).
    fn key_paths(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in table {
            let path = format!("{prefix}{k}");
            if let toml::Value::Table(inner) = v {
                key_paths(inner, &format!("{path}."), out);
            }
            out.push(path);
        }
    }

    #[test]
    fn the_default_config_text_is_the_default_with_every_key() {
        let text = DEFAULT_CONFIG_TOML;
        let loaded = load(text, &[]).unwrap();
        assert_eq!(
            loaded.to_redacted_toml().unwrap(),
            Config::default().to_redacted_toml().unwrap(),
            "config/default.toml says what Config::default() is"
        );
        let rendered: toml::Table = Config::default()
            .to_redacted_toml()
            .unwrap()
            .parse()
            .unwrap();
        let written: toml::Table = text.parse().unwrap();
        let (mut want, mut have) = (Vec::new(), Vec::new());
        key_paths(&rendered, "", &mut want);
        key_paths(&written, "", &mut have);
        let missing: Vec<_> = want.iter().filter(|k| !have.contains(k)).collect();
        assert!(
            missing.is_empty(),
            "keys missing from config/default.toml: {missing:?}"
        );
    }

    #[test]
    fn the_rendered_config_hides_secrets() {
        let secret = "s".repeat(40);
        let c = load(
            &format!(
                "[api]\nkey = \"api-key-1\"\n[api.keys]\nops = \"api-key-2\"\n[auth]\nsecret = \"{secret}\"\n\
                 [layer]\nkind = \"redis\"\nurl = \"redis://user:hunter2@10.0.0.5:6379/0\"\n"
            ),
            &[],
        )
        .unwrap();
        let text = c.to_redacted_toml().unwrap();
        for hidden in ["api-key-1", "api-key-2", secret.as_str(), "hunter2"] {
            assert!(!text.contains(hidden), "{hidden} leaked:\n{text}");
        }
        assert!(
            text.contains("redis://user:<redacted>@10.0.0.5:6379/0"),
            "{text}"
        );
        assert!(text.contains("max_connections = 100000"));
        // What is printed loads back (secrets aside) to the same configuration.
        assert!(text.parse::<toml::Table>().is_ok());
    }

    #[test]
    fn a_redis_cluster_url_is_accepted() {
        let c = load(
            "[layer]\nkind = \"redis\"\nurl = \"redis+cluster://10.0.0.5:7000,10.0.0.6:7001\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            c.layer.url.as_deref(),
            Some("redis+cluster://10.0.0.5:7000,10.0.0.6:7001")
        );
        let e = load("[layer]\nkind = \"redis\"\nurl = \"cluster://h:1\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "layer.url");
    }

    #[test]
    fn errors_name_the_key() {
        let e = load("[limits]\nmax_connections = \"lots\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "limits.max_connections");
        let e = load("[layer]\nkind = \"redis\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "layer.url");
        let e = load(
            "[layer]\nkind = \"redis\"\nurl = \"redis+sentinel://h1:26379,h2:x/m\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.key, "layer.url");
        assert!(e.message.contains("port"), "{}", e.message);
        load(
            "[layer]\nkind = \"redis\"\nurl = \"redis+sentinel://h1:26379,h2/mymaster/0\"\n",
            &[],
        )
        .expect("a valid sentinel url");
        let e = load("[layer]\nkind = \"postgres\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "layer.kind");
        let e = load("[limits]\nbogus = 1\n", &[]).unwrap_err();
        // serde_path_to_error names the unknown key itself.
        assert_eq!(e.key, "limits.bogus");
        assert!(e.message.contains("bogus"), "{}", e.message);
        let e = load("[heartbeat]\ninterval = \"soon\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "heartbeat.interval");
        let e = load(
            "[[routes]]\npath = \"/a/{x}/\"\ngroups = [\"g.{y}\"]\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.key, "routes[0]");
        let e = load("[limits]\noutbox_messages = 0\n", &[]).unwrap_err();
        assert_eq!(e.key, "limits.outbox_messages");
    }

    #[test]
    fn security_keys() {
        let secret = "s".repeat(32);
        let c = load(
            &format!(
                "[[routes]]\npath = \"/m/{{id}}/\"\ngroups = [\"user.{{id}}\"]\nauth = \"token\"\n\
                 origins = [\"https://app.example.com\"]\n[auth]\nsecrets = [\"{secret}\"]\n\
                 [limits]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n"
            ),
            &[("HERALD_LIMITS_MAX_CONNECTIONS_PER_IP", "5")],
        )
        .unwrap();
        assert_eq!(c.routes[0].auth, AuthMode::Token);
        assert_eq!(
            c.auth.load_secrets().unwrap(),
            vec![secret.clone().into_bytes()]
        );
        assert_eq!(c.limits.max_connections_per_ip, 5);
        assert_eq!(c.limits.trusted_proxies.len(), 2);
        assert!(
            !format!("{:?}", c.auth).contains(&secret),
            "secrets stay out of Debug"
        );
        // From the environment, as the other sections.
        let c = Config::load(None, [("HERALD_AUTH_SECRET".to_string(), secret.clone())]).unwrap();
        assert_eq!(c.auth.load_secrets().unwrap().len(), 1);
    }

    #[test]
    fn security_errors_name_the_key() {
        let token_route =
            "[[routes]]\npath = \"/m/{id}/\"\ngroups = [\"user.{id}\"]\nauth = \"token\"\n";
        let e = load(token_route, &[]).unwrap_err();
        assert_eq!(e.key, "routes[0].auth");
        let e = load(&format!("{token_route}[auth]\nsecret = \"short\"\n"), &[]).unwrap_err();
        assert_eq!(e.key, "auth.secret");
        let e = load("[auth]\nsecret_file = \"/nonexistent/herald\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "auth.secret_file");
        let e = load("[limits]\ntrusted_proxies = [\"10.0.0.0/33\"]\n", &[]).unwrap_err();
        assert_eq!(e.key, "limits.trusted_proxies[0]");
        let e = load("[limits]\nmax_groups_per_connection = 256\n", &[]).unwrap_err();
        assert_eq!(e.key, "limits.max_groups_per_connection");
        let e = load(
            "[limits]\nmax_groups_per_connection = 1\n[[routes]]\npath = \"/a/{x}/\"\ngroups = [\"a.{x}\", \"b\"]\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.key, "routes[0].groups");
        let e = load("[tls]\ncert = \"/nonexistent.pem\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "tls.key");
        let e = load(
            "[tls]\ncert = \"/nonexistent.pem\"\nkey = \"/nonexistent.pem\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.key, "tls.cert");
        let e = load(
            "[[routes]]\npath = \"/a/{x}/\"\ngroups = [\"a.{x}\"]\norigins = [\"app.example.com\"]\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.key, "routes[0]");
        let e = load("[auth]\nleeway = \"2h\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "auth.leeway");
    }
}
