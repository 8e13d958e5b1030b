//! The connect hook (`auth = "hook"`, DESIGN.md §11): asks the application over HTTP
//! whether a connection may open, caches the decision per (forwarded headers, origin,
//! path) with one request in flight per key, and re-asks while the connection is open.
//!
//! Never fail-open: a hook that times out, is unreachable, answers another status than
//! 200/401/403, or a body that is not the documented JSON (or larger than
//! [`MAX_ANSWER_BYTES`]) refuses the connection with 1013. Errors are counted in
//! `herald_hook_requests_total{result=...}` and logged at most once per
//! [`LOG_EVERY`]. Errors are never cached, so a hook that comes back is asked at once.
//!
//! The HTTP client is hyper's, one TCP connection per request, plain `http://` only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, Request, StatusCode, Uri, header};
use bytes::Bytes;
use herald_core::GroupName;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

use crate::auth::pattern_matches;
use crate::close;
use crate::config::HookConfig;
use crate::route::Route;

/// Largest hook answer read; a longer one is malformed (1013). A decision is a few
/// hundred bytes.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Hook errors are logged at most once per this period (the rest are counted).
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// Expired cache entries are swept at most this often (when the cache is full).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Where the hook listens: a parsed `http://host[:port]/path`.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub(crate) uri: Uri,
    /// `host:port`, for the TCP connect.
    pub(crate) address: String,
    /// `host[:port]` as written, for the `Host` header.
    pub(crate) authority: String,
    /// `/path?query`: the request target (origin form, as servers expect from clients).
    pub(crate) target: Uri,
}

impl Endpoint {
    /// Parses the hook URL; only `http://` is supported.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("not a URL ({e}); expected http://host:port/path"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(
                    "https is not supported: run the hook on the loopback or a private network over http://"
                        .into(),
                );
            }
            _ => return Err("must start with http://".into()),
        }
        let authority = uri
            .authority()
            .ok_or("must name a host: http://host:port/path")?
            .clone();
        let port = authority.port_u16().unwrap_or(80);
        let target = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|e| format!("bad path ({e})"))?;
        Ok(Self {
            target,
            address: format!("{}:{port}", authority.host()),
            authority: authority.to_string(),
            uri,
        })
    }
}

/// What the hook decided (cached).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// 200 `{"allow": true, ...}`.
    Allow(Arc<Allow>),
    /// 200 `{"allow": false}` or 403: close 4503.
    Forbidden,
    /// 401: close 4501.
    Unauthorized,
}

/// The details of an allowing answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allow {
    /// `sub`: who the application says the connection is (kept for logs).
    pub sub: Option<String>,
    /// `groups`: when given, the connection's groups instead of the route's.
    pub groups: Option<Vec<GroupName>>,
    /// `expires_in`: ask again after this long (and cache no longer than it).
    pub expires_in: Option<Duration>,
}

/// Why the hook gave no decision: the connection is closed with 1013.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// No complete answer within `hook.timeout`.
    #[error("timed out")]
    Timeout,
    /// Could not connect, or the connection broke.
    #[error("unreachable")]
    Unreachable,
    /// An answer other than 200, 401 or 403.
    #[error("answered status {0}")]
    Status(u16),
    /// The answer body is larger than `MAX_ANSWER_BYTES`.
    #[error("answer larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
    /// The answer body is not the documented JSON.
    #[error("malformed answer")]
    Malformed,
}

impl HookError {
    fn label(self) -> &'static str {
        match self {
            HookError::Timeout => "timeout",
            HookError::Unreachable => "unreachable",
            HookError::Status(_) => "bad_status",
            HookError::TooLarge => "too_large",
            HookError::Malformed => "malformed",
        }
    }
}

/// One ask: the JSON body POSTed to the hook and its cache key.
#[derive(Clone, Debug)]
pub struct Ask {
    /// The serialized body (holds the forwarded headers: kept only by the connection
    /// that needs it for refreshes, never by the cache).
    body: Bytes,
    /// SHA-256 of path, origin and the forwarded headers.
    key: [u8; 32],
    /// The route's own groups for this path (what an answer without `groups` grants).
    route_groups: Vec<GroupName>,
    /// The forwarded headers again, sent as request headers too, so the application's own
    /// middleware (Django's sessions) reads them as usual.
    headers: Vec<(header::HeaderName, header::HeaderValue)>,
}

#[derive(Serialize)]
struct AskBody<'a> {
    path: &'a str,
    route: &'a str,
    params: BTreeMap<&'a str, &'a str>,
    groups: Vec<&'a str>,
    transport: &'a str,
    headers: BTreeMap<&'a str, String>,
    client_ip: Option<String>,
    origin: Option<&'a str>,
}

/// A connection the hook allowed: its groups, and what its refreshes need.
#[derive(Debug)]
pub struct Admission {
    /// The groups to join.
    pub groups: Vec<GroupName>,
    /// Who the hook says the connection is.
    pub sub: Option<String>,
    /// When to ask again.
    pub refresh_at: Instant,
    /// The ask, repeated at each refresh.
    pub ask: Ask,
}

/// A refusal at connect: close code and reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookRefusal {
    /// 4501, 4503 or 1013.
    pub code: u16,
    /// Fixed short text.
    pub reason: &'static str,
}

/// Counters of the hook, read by [`crate::metrics::Metrics::families`].
#[derive(Debug, Default)]
pub struct HookStats {
    /// Seconds each hook request took (asks answered by the cache are not requests).
    pub seconds: crate::metrics::LatencyHistogram,
    allow: AtomicU64,
    forbidden: AtomicU64,
    unauthorized: AtomicU64,
    timeout: AtomicU64,
    unreachable: AtomicU64,
    bad_status: AtomicU64,
    too_large: AtomicU64,
    malformed: AtomicU64,
    /// Asks answered from the cache or by sharing another ask's request.
    cache_hits: AtomicU64,
    /// Decisions not cached because the cache was full.
    cache_full: AtomicU64,
    /// Open connections closed with 4003 because a refresh was refused.
    refresh_refusals: AtomicU64,
}

impl HookStats {
    fn count(&self, outcome: &Result<Decision, HookError>) {
        let counter = match outcome {
            Ok(Decision::Allow(_)) => &self.allow,
            Ok(Decision::Forbidden) => &self.forbidden,
            Ok(Decision::Unauthorized) => &self.unauthorized,
            Err(HookError::Timeout) => &self.timeout,
            Err(HookError::Unreachable) => &self.unreachable,
            Err(HookError::Status(_)) => &self.bad_status,
            Err(HookError::TooLarge) => &self.too_large,
            Err(HookError::Malformed) => &self.malformed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The hook's counters as metrics: name, help, and samples labelled `result` (or
    /// unlabelled), for whatever renders `/metrics`.
    pub fn metrics(&self) -> Vec<HookMetric> {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let requests = [
            ("allow", &self.allow),
            ("forbidden", &self.forbidden),
            ("unauthorized", &self.unauthorized),
            ("timeout", &self.timeout),
            ("unreachable", &self.unreachable),
            ("bad_status", &self.bad_status),
            ("too_large", &self.too_large),
            ("malformed", &self.malformed),
        ];
        let single = |name, help, counter: &AtomicU64| HookMetric {
            name,
            help,
            samples: vec![(None, load(counter))],
        };
        vec![
            HookMetric {
                name: "herald_hook_requests_total",
                help: "Connect hook requests by result.",
                samples: requests
                    .iter()
                    .map(|(result, counter)| (Some(*result), load(counter)))
                    .collect(),
            },
            single(
                "herald_hook_cache_hits_total",
                "Connect hook asks answered by the cache or a shared request.",
                &self.cache_hits,
            ),
            single(
                "herald_hook_cache_full_total",
                "Connect hook decisions not cached because the cache was full.",
                &self.cache_full,
            ),
            single(
                "herald_hook_refresh_refusals_total",
                "Open connections closed with 4003 when a refresh was refused.",
                &self.refresh_refusals,
            ),
        ]
    }
}

/// One counter of the hook and its samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookMetric {
    /// The metric's name (a counter: ends with `_total`).
    pub name: &'static str,
    /// Its `# HELP` text.
    pub help: &'static str,
    /// (value of the `result` label, or none, count) per sample.
    pub samples: Vec<(Option<&'static str>, u64)>,
}

enum Slot {
    /// A decision, valid until `until`; `bytes` is its share of the byte bound.
    Ready {
        decision: Decision,
        until: Instant,
        bytes: usize,
    },
    /// A request in flight: wait for its outcome.
    Pending(watch::Receiver<Option<Result<Decision, HookError>>>),
}

/// Decisions by key, bounded by entries and bytes. Holds hashes and decisions only,
/// never header values.
#[derive(Default)]
struct Cache {
    slots: HashMap<[u8; 32], Slot>,
    bytes: usize,
    last_sweep: Option<Instant>,
}

/// The connect hook: endpoint, settings, cache and counters.
pub struct Hook {
    endpoint: Endpoint,
    config: HookConfig,
    /// A std mutex: held for one map operation, never across an await.
    cache: Mutex<Cache>,
    stats: Arc<crate::metrics::Metrics>,
    /// Last time an error was logged, and how many were not logged since.
    last_log: Mutex<Option<Instant>>,
    unlogged: AtomicU64,
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hook")
            .field("url", &self.endpoint.uri)
            .finish_non_exhaustive()
    }
}

impl Hook {
    /// A hook for `config` (whose URL was validated), counting into `metrics`.
    pub fn new(
        config: &HookConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Option<Self>, String> {
        let Some(url) = &config.url else {
            return Ok(None);
        };
        Ok(Some(Self {
            endpoint: Endpoint::parse(url)?,
            config: config.clone(),
            cache: Mutex::new(Cache::default()),
            stats: metrics,
            last_log: Mutex::new(None),
            unlogged: AtomicU64::new(0),
        }))
    }

    /// Builds the ask for an upgrade request on `route`.
    pub fn ask(
        &self,
        path: &str,
        route: &Route,
        values: &[String],
        groups: &[GroupName],
        headers: &HeaderMap,
        client_ip: Option<std::net::IpAddr>,
    ) -> Ask {
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let mut hasher = Sha256::new();
        hasher.update(path.as_bytes());
        hasher.update([0]);
        hasher.update(origin.unwrap_or("").as_bytes());
        hasher.update([0]);
        let mut forwarded = BTreeMap::new();
        let mut raw = Vec::new();
        for name in &self.config.forward_headers {
            if let Ok(header_name) = header::HeaderName::from_bytes(name.as_bytes()) {
                for value in headers.get_all(&header_name) {
                    raw.push((header_name.clone(), value.clone()));
                }
            }
            let values: Vec<String> = headers
                .get_all(name.as_str())
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            if values.is_empty() {
                continue;
            }
            let joined = values.join(if name == "cookie" { "; " } else { ", " });
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update(joined.as_bytes());
            hasher.update([0]);
            forwarded.insert(name.as_str(), joined);
        }
        let body = AskBody {
            path,
            route: route.pattern(),
            params: route
                .params()
                .iter()
                .map(String::as_str)
                .zip(values.iter().map(String::as_str))
                .collect(),
            groups: groups.iter().map(GroupName::as_str).collect(),
            transport: "websocket",
            headers: forwarded,
            client_ip: client_ip.map(|ip| ip.to_string()),
            origin,
        };
        // Serializing maps of strings cannot fail.
        let body = serde_json::to_vec(&body).unwrap_or_default();
        Ask {
            body: Bytes::from(body),
            key: hasher.finalize().into(),
            headers: raw,
            route_groups: groups.to_vec(),
        }
    }

    /// Decides an upgrade: the groups to join, or the close code.
    pub async fn admit(
        &self,
        ask: Ask,
        route: &Route,
        route_groups: &[GroupName],
        max_groups: usize,
    ) -> Result<Admission, HookRefusal> {
        match self.decide(&ask).await {
            Ok(Decision::Allow(allow)) => {
                let groups = granted_groups(&allow, route, route_groups, max_groups)?;
                Ok(Admission {
                    groups,
                    sub: allow.sub.clone(),
                    refresh_at: self.next_refresh(&allow),
                    ask,
                })
            }
            Ok(Decision::Forbidden) => Err(HookRefusal {
                code: close::FORBIDDEN,
                reason: "refused by the connect hook",
            }),
            Ok(Decision::Unauthorized) => Err(HookRefusal {
                code: close::UNAUTHORIZED,
                reason: "unauthorized by the connect hook",
            }),
            Err(_) => Err(HookRefusal {
                code: close::TRY_AGAIN_LATER,
                reason: "connect hook unavailable",
            }),
        }
    }

    /// Re-asks for an open connection joined to `groups`. `Ok(next)` = keep it and ask
    /// again at `next`; `Err` = close it with 4003. A hook error keeps the connection
    /// (counted and logged; asked again after `refresh`): an outage of the application
    /// does not disconnect every listener at once.
    pub async fn refresh(
        &self,
        ask: &Ask,
        route: &Route,
        groups: &[GroupName],
        max_groups: usize,
    ) -> Result<Instant, &'static str> {
        let refused = match self.decide(ask).await {
            Ok(Decision::Allow(allow)) => {
                match granted_groups(&allow, route, &ask.route_groups, max_groups) {
                    Ok(now) if same_set(&now, groups) => return Ok(self.next_refresh(&allow)),
                    Ok(_) => "memberships changed: reconnect",
                    Err(_) => "refused by the connect hook",
                }
            }
            Ok(Decision::Forbidden | Decision::Unauthorized) => "refused by the connect hook",
            Err(_) => return Ok(later(self.config.refresh)),
        };
        self.stats
            .hook
            .refresh_refusals
            .fetch_add(1, Ordering::Relaxed);
        Err(refused)
    }

    fn next_refresh(&self, allow: &Allow) -> Instant {
        let every = match allow.expires_in {
            Some(e) => e.min(self.config.refresh),
            None => self.config.refresh,
        };
        // A zero `expires_in` would re-ask in a loop: at least one second apart.
        later(every.max(Duration::from_secs(1)))
    }

    /// The decision for `ask`: cached, shared with a request in flight, or asked now.
    async fn decide(&self, ask: &Ask) -> Result<Decision, HookError> {
        // A request in flight whose owner went away (its upgrade was dropped) is retried
        // by a waiter, at most this many times.
        for _ in 0..3 {
            // Looking up and claiming the key happen under one lock: of concurrent asks
            // with the same key exactly one leads, the others wait for its outcome.
            let waiting = {
                let mut cache = self.lock_cache();
                let now = Instant::now();
                match cache.slots.get(&ask.key) {
                    Some(Slot::Ready {
                        decision, until, ..
                    }) if *until > now => {
                        self.stats.hook.cache_hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(decision.clone());
                    }
                    Some(Slot::Pending(rx)) => Ok(rx.clone()),
                    _ => {
                        let (tx, rx) = watch::channel(None);
                        // Without room the request is not shared (still bounded: each
                        // upgrade holds a connection slot while it asks).
                        remove_slot(&mut cache, &ask.key);
                        let shared = self.make_room(&mut cache, 0);
                        if shared {
                            cache.slots.insert(ask.key, Slot::Pending(rx));
                        }
                        Err((tx, shared))
                    }
                }
            };
            let mut rx = match waiting {
                Ok(rx) => rx,
                Err((tx, shared)) => return self.lead(ask, tx, shared).await,
            };
            let wait = timeout(
                self.config
                    .timeout
                    .saturating_add(Duration::from_millis(500)),
                rx.wait_for(Option::is_some),
            )
            .await;
            match wait {
                Ok(Ok(outcome)) => {
                    self.stats.hook.cache_hits.fetch_add(1, Ordering::Relaxed);
                    return outcome.clone().unwrap_or(Err(HookError::Unreachable));
                }
                // The leader went away without an outcome: try again (maybe as leader).
                Ok(Err(_)) => continue,
                Err(_) => return Err(HookError::Timeout),
            }
        }
        Err(HookError::Unreachable)
    }

    /// Asks the hook for `ask`; with `shared`, the key's pending slot (claimed by
    /// [`Hook::decide`]) lets concurrent asks wait for this outcome through `tx`.
    async fn lead(
        &self,
        ask: &Ask,
        tx: watch::Sender<Option<Result<Decision, HookError>>>,
        shared: bool,
    ) -> Result<Decision, HookError> {
        // Removes the pending slot if this future is dropped before it finishes.
        let mut guard = PendingGuard {
            hook: self,
            key: ask.key,
            armed: shared,
        };
        let started = std::time::Instant::now();
        let outcome = self.call(ask).await;
        self.stats
            .hook
            .seconds
            .0
            .observe_duration(started.elapsed());
        self.stats.hook.count(&outcome);
        if let Err(e) = &outcome {
            self.log_error(*e);
        }
        {
            let mut cache = self.lock_cache();
            if shared {
                remove_slot(&mut cache, &ask.key);
            }
            if let Ok(decision) = &outcome {
                self.store(&mut cache, ask.key, decision);
            }
        }
        guard.armed = false;
        // Waiters may all have gone: nobody to tell.
        let _ = tx.send(Some(outcome.clone()));
        outcome
    }

    fn store(&self, cache: &mut Cache, key: [u8; 32], decision: &Decision) {
        let mut ttl = self.config.cache_ttl;
        if let Decision::Allow(allow) = decision {
            if let Some(e) = allow.expires_in {
                ttl = ttl.min(e);
            }
        }
        if ttl.is_zero() {
            return;
        }
        let bytes = decision_bytes(decision);
        if !self.make_room(cache, bytes) {
            self.stats.hook.cache_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        cache.bytes += bytes;
        cache.slots.insert(
            key,
            Slot::Ready {
                decision: decision.clone(),
                until: later(ttl),
                bytes,
            },
        );
    }

    /// Whether one more entry of `bytes` fits, after sweeping expired decisions when
    /// full (at most once per [`SWEEP_EVERY`], so a flood of new keys costs no rescans).
    fn make_room(&self, cache: &mut Cache, bytes: usize) -> bool {
        let fits = |c: &Cache| {
            c.slots.len() < self.config.cache_entries
                && c.bytes.saturating_add(bytes) <= self.config.cache_bytes
        };
        if fits(cache) {
            return true;
        }
        let now = Instant::now();
        if cache
            .last_sweep
            .is_some_and(|at| now.duration_since(at) < SWEEP_EVERY)
        {
            return false;
        }
        cache.last_sweep = Some(now);
        let mut freed = 0;
        cache.slots.retain(|_, slot| match slot {
            Slot::Ready { until, bytes, .. } if *until <= now => {
                freed += *bytes;
                false
            }
            _ => true,
        });
        cache.bytes = cache.bytes.saturating_sub(freed);
        fits(cache)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // Every critical section is a few map operations that cannot panic halfway, so a
        // poisoned lock still holds a consistent map.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Logs a hook error unless one was logged within [`LOG_EVERY`].
    fn log_error(&self, error: HookError) {
        let now = Instant::now();
        let mut last = self
            .last_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| now.duration_since(at) < LOG_EVERY) {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        drop(last);
        let unlogged = self.unlogged.swap(0, Ordering::Relaxed);
        tracing::warn!(
            url = %self.endpoint.uri,
            %error,
            result = error.label(),
            also_failed_since_last_log = unlogged,
            "connect hook failed; connections are refused with 1013"
        );
    }

    /// One HTTP exchange under the total deadline.
    async fn call(&self, ask: &Ask) -> Result<Decision, HookError> {
        match timeout(self.config.timeout, self.exchange(ask)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(HookError::Timeout),
        }
    }

    async fn exchange(&self, ask: &Ask) -> Result<Decision, HookError> {
        let stream = TcpStream::connect(&self.endpoint.address)
            .await
            .map_err(|_| HookError::Unreachable)?;
        // Small request, small answer: no point waiting for more bytes to batch.
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| HookError::Unreachable)?;
        let mut request = Request::post(self.endpoint.target.clone())
            .header(header::HOST, self.endpoint.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "herald-connect-hook")
            .header(header::CONNECTION, "close")
            .body(Full::new(ask.body.clone()))
            .map_err(|_| HookError::Malformed)?;
        for (name, value) in &ask.headers {
            request.headers_mut().append(name.clone(), value.clone());
        }
        let exchange = async move {
            let response = sender
                .send_request(request)
                .await
                .map_err(|_| HookError::Unreachable)?;
            let status = response.status();
            let declared = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
                return Err(HookError::TooLarge);
            }
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| HookError::Unreachable)?;
                if let Some(data) = frame.data_ref() {
                    if bytes.len() + data.len() > MAX_ANSWER_BYTES {
                        return Err(HookError::TooLarge);
                    }
                    bytes.extend_from_slice(data);
                }
            }
            parse_answer(status, &bytes)
        };
        // The connection future drives the socket; it runs beside the exchange in this
        // task (no spawn), and ends once the exchange dropped its sender.
        let connection = async move {
            let _ = connection.await;
        };
        tokio::pin!(exchange, connection);
        tokio::select! {
            biased;
            outcome = &mut exchange => outcome,
            _ = &mut connection => exchange.await,
        }
    }
}

/// Now plus `d`, capped at a year so no configured or answered duration overflows.
fn later(d: Duration) -> Instant {
    Instant::now() + d.min(Duration::from_secs(365 * 24 * 3600))
}

struct PendingGuard<'h> {
    hook: &'h Hook,
    key: [u8; 32],
    armed: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut cache = self.hook.lock_cache();
            if matches!(cache.slots.get(&self.key), Some(Slot::Pending(_))) {
                cache.slots.remove(&self.key);
            }
        }
    }
}

fn remove_slot(cache: &mut Cache, key: &[u8; 32]) {
    if let Some(Slot::Ready { bytes, .. }) = cache.slots.remove(key) {
        cache.bytes = cache.bytes.saturating_sub(bytes);
    }
}

/// What a cached decision costs, roughly: the key, the slot, the strings.
fn decision_bytes(decision: &Decision) -> usize {
    let base = 32 + std::mem::size_of::<Slot>() + 32;
    match decision {
        Decision::Allow(allow) => {
            base + allow.sub.as_ref().map_or(0, String::len)
                + allow
                    .groups
                    .as_ref()
                    .map_or(0, |g| g.iter().map(|g| g.as_str().len() + 32).sum())
        }
        _ => base,
    }
}

fn same_set(a: &[GroupName], b: &[GroupName]) -> bool {
    a.len() == b.len() && a.iter().all(|g| b.contains(g))
}

/// The groups an allowing answer grants on `route`: the route's own, or the answer's when
/// it names some — each one of the route's or matching its `hook_groups`.
fn granted_groups(
    allow: &Allow,
    route: &Route,
    route_groups: &[GroupName],
    max_groups: usize,
) -> Result<Vec<GroupName>, HookRefusal> {
    let Some(named) = &allow.groups else {
        return Ok(route_groups.to_vec());
    };
    let forbidden = |reason| HookRefusal {
        code: close::FORBIDDEN,
        reason,
    };
    // Checked first, so a hostile answer naming thousands of groups costs no more than
    // `max_groups` pattern checks.
    if named.len() > max_groups {
        return Err(forbidden("hook granted too many groups"));
    }
    let mut groups: Vec<GroupName> = Vec::with_capacity(named.len());
    for group in named {
        let allowed = route_groups.contains(group)
            || route
                .hook_groups()
                .iter()
                .any(|p| pattern_matches(p, group.as_str()));
        if !allowed {
            return Err(forbidden("hook granted a group outside the route"));
        }
        if !groups.contains(group) {
            groups.push(group.clone());
        }
    }
    if groups.is_empty() {
        return Err(forbidden("hook granted no group"));
    }
    Ok(groups)
}

/// Reads the hook's answer (DESIGN.md §11 table).
fn parse_answer(status: StatusCode, body: &[u8]) -> Result<Decision, HookError> {
    match status.as_u16() {
        200 => {}
        401 => return Ok(Decision::Unauthorized),
        403 => return Ok(Decision::Forbidden),
        other => return Err(HookError::Status(other)),
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| HookError::Malformed)?;
    let object = value.as_object().ok_or(HookError::Malformed)?;
    match object.get("allow") {
        Some(serde_json::Value::Bool(true)) => {}
        Some(serde_json::Value::Bool(false)) => return Ok(Decision::Forbidden),
        _ => return Err(HookError::Malformed),
    }
    let sub = match object.get("sub") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        Some(_) => return Err(HookError::Malformed),
    };
    let groups = match object.get("groups") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Array(items)) => Some(
            items
                .iter()
                .map(|item| {
                    item.as_str()
                        .and_then(|s| GroupName::new(s).ok())
                        .ok_or(HookError::Malformed)
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(HookError::Malformed),
    };
    let expires_in = match object.get("expires_in") {
        None | Some(serde_json::Value::Null) => None,
        // Any non-negative integer; huge values saturate (the refresh period caps them).
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(secs) => Some(Duration::from_secs(secs)),
            None => return Err(HookError::Malformed),
        },
        Some(_) => return Err(HookError::Malformed),
    };
    Ok(Decision::Allow(Arc::new(Allow {
        sub,
        groups,
        expires_in,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Result<Decision, HookError> {
        parse_answer(StatusCode::OK, body.as_bytes())
    }

    #[test]
    fn answers_map_to_decisions() {
        assert_eq!(ok(r#"{"allow": false}"#), Ok(Decision::Forbidden));
        assert_eq!(
            parse_answer(StatusCode::UNAUTHORIZED, b""),
            Ok(Decision::Unauthorized)
        );
        assert_eq!(
            parse_answer(StatusCode::FORBIDDEN, b"whatever"),
            Ok(Decision::Forbidden)
        );
        let Ok(Decision::Allow(allow)) =
            ok(r#"{"allow": true, "sub": 42, "groups": ["user.42"], "expires_in": 600}"#)
        else {
            panic!("not allowed");
        };
        assert_eq!(allow.sub.as_deref(), Some("42"));
        assert_eq!(allow.expires_in, Some(Duration::from_secs(600)));
    }

    #[test]
    fn garbage_is_an_error_never_an_allow() {
        for body in [
            "",
            "not json",
            "[]",
            r#"{"allow": "yes"}"#,
            r#"{"allow": 1}"#,
            r#"{}"#,
            r#"{"allow": true, "groups": "user.42"}"#,
            r#"{"allow": true, "groups": ["no spaces allowed"]}"#,
            r#"{"allow": true, "expires_in": -1}"#,
            r#"{"allow": true, "expires_in": 1.5}"#,
            r#"{"allow": true, "sub": {}}"#,
        ] {
            assert_eq!(ok(body), Err(HookError::Malformed), "{body}");
        }
        for status in [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::NOT_FOUND] {
            assert!(matches!(
                parse_answer(status, br#"{"allow": true}"#),
                Err(HookError::Status(_))
            ));
        }
        // Saturates instead of overflowing.
        assert!(matches!(
            ok(r#"{"allow": true, "expires_in": 18446744073709551615}"#),
            Ok(Decision::Allow(_))
        ));
    }

    fn hook_with(entries: usize, bytes: usize) -> Hook {
        let config = HookConfig {
            url: Some("http://127.0.0.1:9/".into()),
            cache_entries: entries,
            cache_bytes: bytes,
            ..HookConfig::default()
        };
        Hook::new(&config, Arc::default())
            .expect("valid")
            .expect("configured")
    }

    fn allow_with_groups(n: usize) -> Decision {
        Decision::Allow(Arc::new(Allow {
            sub: Some("42".into()),
            groups: Some(
                (0..n)
                    .map(|i| GroupName::new(&format!("team.{i}")).expect("group"))
                    .collect(),
            ),
            expires_in: None,
        }))
    }

    #[tokio::test]
    async fn the_cache_is_bounded_by_entries() {
        let hook = hook_with(3, 1 << 20);
        let mut cache = hook.lock_cache();
        for i in 0..10u8 {
            hook.store(&mut cache, [i; 32], &Decision::Forbidden);
        }
        assert_eq!(cache.slots.len(), 3);
        drop(cache);
        assert_eq!(hook.stats.hook.cache_full.load(Ordering::Relaxed), 7);
    }

    #[tokio::test]
    async fn the_cache_is_bounded_by_bytes() {
        let big = allow_with_groups(50);
        let size = decision_bytes(&big);
        let hook = hook_with(1000, size * 2 + 1);
        let mut cache = hook.lock_cache();
        for i in 0..5u8 {
            hook.store(&mut cache, [i; 32], &big);
        }
        assert_eq!(cache.slots.len(), 2);
        assert!(cache.bytes <= size * 2 + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_decisions_make_room() {
        let hook = hook_with(2, 1 << 20);
        {
            let mut cache = hook.lock_cache();
            hook.store(&mut cache, [1; 32], &Decision::Forbidden);
            hook.store(&mut cache, [2; 32], &Decision::Forbidden);
        }
        // Past cache_ttl (30 s) and the sweep interval, a new decision fits again.
        tokio::time::advance(Duration::from_secs(31)).await;
        let mut cache = hook.lock_cache();
        hook.store(&mut cache, [3; 32], &Decision::Forbidden);
        assert_eq!(cache.slots.len(), 1);
        assert!(cache.slots.contains_key(&[3; 32]));
    }

    #[test]
    fn endpoint_is_plain_http() {
        assert!(Endpoint::parse("http://127.0.0.1:8001/herald/connect/").is_ok());
        assert!(Endpoint::parse("https://example.com/").is_err());
        assert!(Endpoint::parse("/herald/connect/").is_err());
        assert_eq!(
            Endpoint::parse("http://localhost/x").map(|e| e.address),
            Ok("localhost:80".to_string())
        );
    }
}
