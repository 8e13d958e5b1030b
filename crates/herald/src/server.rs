//! `run`: the accept loop, the shared state and the order of a graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use herald_core::Incoming;
use hyper::body::Incoming as HyperBody;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::admin::Admin;
use crate::api::ApiKey;
use crate::auth::Authenticator;
use crate::burst_log::BurstLog;
use crate::config::Config;
use crate::error_body::JsonErrors;
use crate::http_limits::{HttpSlot, HttpSlots, Refused, Reserve, SlotRelease};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::node_layer::NodeLayer;
use crate::route::Route;
use crate::socket::SharedTcp;
use crate::subscriptions::Subscriptions;
use crate::{api, assets, http_limits, ws};

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The layer could not be created.
    #[error("layer: {0}")]
    Layer(String),
    /// The Django bridge could not start (e.g. its Redis is unreachable).
    #[error("django bridge: {0}")]
    Django(#[from] herald_django::DjangoError),
}

/// The address the client connected from.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// The request's plain TCP socket (request extension; absent under TLS): a WebSocket on
/// it lets the hub write frames directly while its task is idle.
#[derive(Clone, Debug)]
pub(crate) struct DirectSocket(pub(crate) Arc<TcpStream>);

/// Everything request handlers and connection tasks share.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) config: Config,
    pub(crate) routes: Vec<Route>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) layer: NodeLayer,
    pub(crate) subscriptions: Subscriptions,
    pub(crate) metrics: Arc<Metrics>,
    /// Fired once when shutdown starts; connections close with 1012.
    pub(crate) shutdown: CancellationToken,
    /// Owns every HTTP and WebSocket connection task.
    pub(crate) tracker: TaskTracker,
    /// Ticks every half heartbeat interval; connections check their heartbeat on it
    /// (one shared timer instead of one per connection).
    pub(crate) ticker: watch::Receiver<()>,
    pub(crate) next_conn_id: AtomicU64,
    /// Publish API keys by name, each with its request counter; empty = open API.
    pub(crate) api_keys: Vec<ApiKey>,
    /// Publish requests on an open API (no key configured).
    pub(crate) open_publish_requests: AtomicU64,
    /// Publish requests refused for a missing or wrong key.
    pub(crate) unauthorized_publishes: AtomicU64,
    /// Verifies connection tokens.
    pub(crate) auth: Authenticator,
    /// WebSocket connections per client IP key ([`crate::client_ip::limit_key`]).
    /// Entries are removed at zero, so the map never outgrows the open connections. A std
    /// mutex: held for one map operation, never across an await.
    pub(crate) per_ip: Mutex<HashMap<IpAddr, u32>>,
    /// The Django bridge, when `[django] enabled`.
    pub(crate) django: Option<herald_django::DjangoBridge>,
    /// Log lines for request bodies cut off as too slow, one per burst.
    pub(crate) body_timeout_log: BurstLog,
    /// Streams reset (4400) for a gap, a regression or an epoch change: one line a burst.
    pub(crate) stream_reset_log: BurstLog,
    /// Log lines for browser publishes refused on an open API, one per burst.
    pub(crate) origin_refused_log: BurstLog,
    /// The `/admin/` side, when `[admin] key` is set.
    pub(crate) admin: Option<Arc<Admin>>,
    /// Open WebSockets per route (same index as `routes`).
    pub(crate) route_connections: Vec<AtomicI64>,
    /// Open SSE streams per route (same index as `routes`).
    pub(crate) route_sse_connections: Vec<AtomicI64>,
    /// Log lines for unusable SSE `Last-Event-ID`s, one per burst.
    pub(crate) last_event_id_log: BurstLog,
    /// The connect hook, when `[hook] url` is set.
    pub(crate) hook: Option<crate::hook::Hook>,
    /// This node's presence entries, kept by their one task.
    pub(crate) presence: crate::presence::PresenceBook,
}

impl AppState {
    /// Open connections per route for one transport (same index as `routes`).
    pub(crate) fn route_connections(&self, transport: crate::ws::Transport) -> &[AtomicI64] {
        match transport {
            crate::ws::Transport::WebSocket => &self.route_connections,
            crate::ws::Transport::Sse => &self.route_sse_connections,
        }
    }
}

/// Runs a herald node on `listener` until `shutdown` resolves, then drains: stops
/// accepting, closes every WebSocket with 1012 (after a `goaway` for herald.v1 clients),
/// lets in-flight requests finish, and returns within `shutdown.drain_timeout` (plus the
/// closing handshakes' own short timeout).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    config.validate()?;
    let (layer, incoming) = NodeLayer::from_config(&config).map_err(ServeError::Layer)?;
    serve(listener, config, layer, incoming, shutdown).await
}

/// Like [`run`], on a layer built by the caller.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    layer: NodeLayer,
    incoming: Incoming,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let mut routes = config.compiled_routes()?;
    let admin = match &config.admin.key {
        Some(key) => {
            // The dashboard's stream is an ordinary route joined to the reports' group,
            // first in the list; only /admin/stream/ (after its session check) reaches it.
            let stream = crate::config::RouteConfig {
                path: crate::admin::STREAM_PATH.into(),
                groups: vec![crate::admin::ADMIN_GROUP.into()],
                ..crate::config::RouteConfig::seed()
            };
            let route = crate::route::Route::compile(&stream)
                .map_err(|e| crate::config::ConfigError::new("admin", e.to_string()))?;
            routes.insert(0, route);
            Some(Arc::new(Admin::new(key.clone(), node_name())))
        }
        None => None,
    };
    let open_api = config.api.key.is_none() && config.api.keys.is_empty();
    if let Ok(local) = listener.local_addr() {
        if open_api && !local.ip().is_loopback() {
            tracing::warn!(
                listen = %local,
                "the publish API has no key and listens beyond loopback: anyone who reaches this address can publish (set api.key)"
            );
        }
    }
    let metrics = Arc::new(Metrics::default());
    let hub = Arc::new(Hub::new(metrics.clone()));
    let cancel = CancellationToken::new();
    let connections = TaskTracker::new();
    // Background tasks outlive the connections during a drain: leaving groups still
    // needs the subscriptions task.
    let background = TaskTracker::new();
    let stop_background = CancellationToken::new();
    let django = if config.django.enabled {
        // Stopped with the background tasks: leaving groups during a drain still updates
        // the channels memberships.
        let bridge = herald_django::DjangoBridge::start(
            config.django.clone(),
            layer.clone(),
            // One size limit for every message, whether from the API or from Django.
            config.limits.max_publish_bytes,
            stop_background.clone(),
        )
        .await?;
        tracing::info!(backend = ?config.django.backend, "django bridge started");
        Some(bridge)
    } else {
        None
    };
    let subscriptions = Subscriptions::spawn(
        hub.clone(),
        layer.clone(),
        django.clone(),
        &background,
        stop_background.clone(),
    );
    let webhooks = crate::webhooks::Webhooks::spawn(
        &config.webhooks,
        node_name(),
        metrics.clone(),
        &background,
        stop_background.clone(),
    )
    .map_err(|e| crate::config::ConfigError::new("webhooks.url", e))?;
    let presence = crate::presence::PresenceBook::spawn(
        layer.clone(),
        config.presence.refresh,
        metrics.clone(),
        webhooks,
        &background,
        stop_background.clone(),
    );
    let direct = match &layer {
        NodeLayer::Memory(memory) => {
            let direct = Arc::new(crate::direct::Direct::new(
                hub.clone(),
                metrics.clone(),
                admin.clone(),
            ));
            memory.deliver_directly(direct.clone()).then_some(direct)
        }
        NodeLayer::Redis(_) => None,
    };
    background.spawn(crate::pump::run(
        incoming,
        hub.clone(),
        metrics.clone(),
        admin.clone(),
        direct,
        stop_background.clone(),
    ));
    let tick_every = (config.heartbeat.interval / 2).max(Duration::from_millis(10));
    let (tick_tx, ticker) = watch::channel(());
    background.spawn(tick(tick_tx, tick_every, stop_background.clone()));

    let mut api_keys: Vec<ApiKey> = config
        .api
        .keys
        .iter()
        .map(|(n, k)| ApiKey::new(n, k))
        .collect();
    if let Some(key) = &config.api.key {
        api_keys.push(ApiKey::new("default", key));
    }
    let auth = Authenticator::new(&config.auth.load_secrets()?, config.auth.leeway);
    let tls = if config.tls.is_enabled() {
        Some(crate::tls::acceptor(&config.tls)?)
    } else {
        None
    };
    let hook = crate::hook::Hook::new(&config.hook, metrics.clone())
        .map_err(|e| crate::config::ConfigError::new("hook.url", e))?;
    let drain = config.shutdown.drain_timeout;
    let handshake_timeout = config.limits.handshake_timeout;
    let routes_len = routes.len();
    let state = Arc::new(AppState {
        config,
        routes,
        hub,
        layer,
        subscriptions,
        metrics,
        shutdown: cancel.clone(),
        tracker: connections.clone(),
        ticker,
        next_conn_id: AtomicU64::new(1),
        api_keys,
        open_publish_requests: AtomicU64::new(0),
        unauthorized_publishes: AtomicU64::new(0),
        auth,
        per_ip: Mutex::new(HashMap::new()),
        django: django.clone(),
        body_timeout_log: BurstLog::default(),
        stream_reset_log: BurstLog::default(),
        origin_refused_log: BurstLog::default(),
        route_connections: (0..routes_len).map(|_| AtomicI64::new(0)).collect(),
        route_sse_connections: (0..routes_len).map(|_| AtomicI64::new(0)).collect(),
        last_event_id_log: BurstLog::default(),
        admin,
        hook,
        presence,
    });
    if state.admin.is_some() {
        background.spawn(crate::admin::report_loop(
            state.clone(),
            state.config.admin.report_interval,
            stop_background.clone(),
        ));
    }
    let router = router(state.clone());
    let open_files = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft);
    let slots = Arc::new(HttpSlots::new(
        state.config.limits.max_http_connections,
        state.config.limits.max_http_connections_per_ip,
        open_files,
        state.config.limits.trusted_proxies.clone(),
        state.metrics.clone(),
    ));
    if slots.max_total() < state.config.limits.max_http_connections {
        tracing::info!(
            cap = slots.max_total(),
            open_files = open_files.unwrap_or(0),
            "limits.max_http_connections lowered to half the open-files limit"
        );
    }
    let mut reserve = Reserve::new();
    // Refused connections are answered by short tasks; at most this many at once, the
    // rest are answered without waiting (and may then see a reset).
    let lingering = Arc::new(tokio::sync::Semaphore::new(64));
    let refused_log = BurstLog::default();
    let exhausted_log = BurstLog::default();

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let slot = match slots.take(peer.ip()) {
                        Ok(slot) => slot,
                        Err(refused) => {
                            if let Some(n) = refused_log.hit() {
                                tracing::warn!(connections = n, reason = ?refused, %peer, "HTTP connections refused at a connection cap");
                            }
                            match lingering.clone().try_acquire_owned() {
                                Ok(permit) => {
                                    connections.spawn(async move {
                                        http_limits::refuse(stream, refused.answer()).await;
                                        drop(permit);
                                    });
                                }
                                Err(_) => http_limits::refuse_now(&stream, &refused.answer()),
                            }
                            continue;
                        }
                    };
                    // Small frames must leave at once; Nagle would hold them back.
                    let _ = stream.set_nodelay(true);
                    let mut conn = HttpConn { peer, router: router.clone(), cancel: cancel.clone(), handshake_timeout, drain, direct: None, slot, tracker: connections.clone() };
                    match &tls {
                        // The TLS handshake runs inside the connection's task, so a slow
                        // one never holds up the accept loop.
                        Some(acceptor) => connections.spawn(conn.serve_tls(stream, acceptor.clone())),
                        None => {
                            let shared = SharedTcp::new(stream);
                            conn.direct = Some(DirectSocket(shared.0.clone()));
                            connections.spawn(conn.serve(shared))
                        }
                    };
                }
                Err(e) if Reserve::is_exhaustion(&e) => {
                    Metrics::add(&state.metrics.accept_no_descriptors, 1);
                    if let Some(n) = exhausted_log.hit() {
                        tracing::warn!(connections = n, error = %e, "out of file descriptors: answering new connections 503 and closing them");
                    }
                    // With the reserved descriptor freed, the waiting connection can be
                    // taken off the queue, told why and closed; then the reserve is
                    // taken back. Without a reserve, wait for descriptors to free up.
                    if reserve.release() {
                        let waiting = tokio::time::timeout(Duration::from_millis(100), listener.accept());
                        if let Ok(Ok((stream, _))) = waiting.await {
                            http_limits::refuse_now(&stream, &Refused::NoDescriptors.answer());
                        }
                        reserve.refill();
                    } else {
                        reserve.refill();
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Err(e) => {
                    // Another per-connection failure (e.g. the peer reset before accept):
                    // back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    tracing::info!("shutting down: draining connections");
    drop(listener);
    cancel.cancel();
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed with connections still open");
    }
    stop_background.cancel();
    background.close();
    background.wait().await;
    if let Some(bridge) = &django {
        bridge.stopped().await;
    }
    state.layer.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// This node's name in the admin reports: the host name and a random suffix (several
/// nodes may run on one host).
fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "herald".into());
    let suffix: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(4)
        .collect();
    format!("{host}-{suffix}")
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/admin/", get(crate::admin::page))
        .route("/admin/api/session", post(crate::admin::session))
        .route("/admin/api/cluster", get(crate::admin::cluster))
        .route("/admin/api/publish", post(crate::admin::publish))
        .route(crate::admin::STREAM_PATH, get(crate::admin::stream))
        .route("/api/publish", post(api::publish))
        .route("/api/presence/{group}", get(api::presence))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/", get(assets::index))
        .route("/herald.js", get(assets::client_js))
        .fallback(ws::gateway)
        .method_not_allowed_fallback(|| async {
            crate::api::ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this path does not take this method",
            )
        })
        .with_state(state)
}

/// One accepted TCP connection and what serving it needs.
struct HttpConn {
    peer: SocketAddr,
    router: Router,
    cancel: CancellationToken,
    handshake_timeout: Duration,
    drain: Duration,
    /// The plain TCP socket, for the hub's direct writes (none under TLS).
    direct: Option<DirectSocket>,
    /// Its place under the HTTP connection caps, held until it ends or upgrades.
    slot: HttpSlot,
    /// Owns the tasks of its HTTP/2 streams.
    tracker: TaskTracker,
}

/// Runs hyper's HTTP/2 stream tasks on the server's tracker, so a drain waits for them.
#[derive(Clone)]
struct Tracked(TaskTracker);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// Most concurrent streams on one HTTP/2 connection (SSE streams and requests).
const MAX_H2_STREAMS: u32 = 256;

impl HttpConn {
    /// Completes the TLS handshake within `limits.handshake_timeout`, then serves HTTP
    /// over it. A failed or slow handshake just ends the connection.
    async fn serve_tls(self, stream: TcpStream, acceptor: TlsAcceptor) {
        let handshake = tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream));
        let tls = tokio::select! {
            _ = self.cancel.cancelled() => return,
            result = handshake => match result {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %self.peer, error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %self.peer, "tls handshake timed out");
                    return;
                }
            },
        };
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            self.serve_h2(tls).await;
        } else {
            self.serve(tls).await;
        }
    }

    /// Serves HTTP/2 (negotiated by ALPN over TLS) until the peer leaves or the drain
    /// ends: many SSE streams and publishes share the connection. The request checks
    /// are the HTTP/1.1 ones; the head limit is HTTP/2's header list size, and a peer
    /// that stops answering pings is dropped. WebSockets stay on HTTP/1.1.
    async fn serve_h2<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            peer,
            router,
            cancel,
            handshake_timeout,
            drain,
            slot,
            tracker,
            ..
        } = self;
        let slot = SlotRelease::new(slot);
        let service = service(peer, None, router, slot.clone());
        let conn = hyper::server::conn::http2::Builder::new(Tracked(tracker))
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_H2_STREAMS)
            .max_header_list_size(MAX_HEAD_BYTES as u32)
            .keep_alive_interval(Some(handshake_timeout))
            .keep_alive_timeout(handshake_timeout)
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let _slot = slot;
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "http/2 connection ended with an error");
                }
            }
            _ = cancel.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(drain, conn).await;
            }
        }
    }

    /// Serves HTTP/1.1 (and WebSocket upgrades) until the peer leaves or the drain ends.
    /// Each request head must arrive within `limits.handshake_timeout`: hyper's header
    /// read timer is what defeats slowloris clients.
    async fn serve<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            peer,
            router,
            cancel,
            handshake_timeout,
            drain,
            direct,
            slot,
            tracker: _,
        } = self;
        let slot = SlotRelease::new(slot);
        let service = service(peer, direct, router, slot.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(handshake_timeout)
            .serve_connection(TokioIo::new(JsonErrors::new(io)), service)
            .with_upgrades();
        tokio::pin!(conn);
        // The slot is given back when the connection ends or becomes a WebSocket (the
        // connection future then resolves and the socket lives on in its own task), or
        // when one of its requests becomes an SSE stream ([`SlotRelease`]).
        let _slot = slot;
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "http connection ended with an error");
                }
            }
            _ = cancel.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(drain, conn).await;
            }
        }
    }
}

/// The per-request checks (one Host, head size) in front of the router, for both HTTP
/// versions.
fn service(
    peer: SocketAddr,
    direct: Option<DirectSocket>,
    router: Router,
    slot: SlotRelease,
) -> impl hyper::service::Service<
    Request<HyperBody>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<
        Output = Result<axum::response::Response, std::convert::Infallible>,
    > + Send,
> + Clone {
    hyper::service::service_fn(move |mut req: Request<HyperBody>| {
        req.extensions_mut().insert(PeerAddr(peer));
        req.extensions_mut().insert(slot.clone());
        if let Some(direct) = &direct {
            req.extensions_mut().insert(direct.clone());
        }
        let too_large = head_too_large(&req);
        let bad_host = !has_one_host(&req);
        let router = router.clone();
        async move {
            if bad_host {
                return Ok(crate::api::ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "bad_host",
                    "an HTTP/1.1 request needs exactly one Host header",
                )
                .closing()
                .into_response());
            }
            if too_large {
                return Ok(crate::api::ApiError::new(
                    axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "headers_too_large",
                    format!("request headers are larger than {MAX_HEAD_BYTES} bytes"),
                )
                .into_response());
            }
            router.oneshot(req).await
        }
    })
}

/// Largest request head (target plus headers) served. hyper refuses heads that fill its
/// read buffer (~400 KB) with 431, but one that arrives in a single large read can slip
/// through; this makes the limit exact and much lower.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host` header (HTTP/1.0 may
/// have none). Two could route one request two ways behind a proxy.
fn has_one_host<B>(req: &Request<B>) -> bool {
    let hosts = req
        .headers()
        .get_all(axum::http::header::HOST)
        .iter()
        .count();
    // HTTP/2 names the host in the `:authority` pseudo-header instead.
    hosts == 1
        || (hosts == 0 && req.version() < axum::http::Version::HTTP_11)
        || (hosts == 0
            && req.version() >= axum::http::Version::HTTP_2
            && req.uri().authority().is_some())
}

fn head_too_large<B>(req: &Request<B>) -> bool {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    target + headers > MAX_HEAD_BYTES
}

async fn tick(tx: watch::Sender<()>, every: Duration, stop: CancellationToken) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = interval.tick() => tx.send_replace(()),
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
