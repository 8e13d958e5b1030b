//! The task that owns one WebSocket connection after the upgrade: it writes the frames
//! the hub queued, reads what the client sends, keeps the heartbeat and closes with the
//! right code.
//!
//! Order of a `herald.v1` connection: read `hello` → join groups (live frames start to
//! queue in the outbox) → read history after each client position → `welcome` → replay →
//! release the queued live frames, skipping offsets already replayed. Subscribing before
//! reading history is what makes the replay gap-free; skipping is what makes it
//! duplicate-free. SSE streams (`sse.rs`) resume through the same `Connection::resume`.
//!
//! After that, every live frame is checked exactly (`classify`): at or below the replay
//! horizon it is a replay duplicate (skipped); otherwise it must be the next offset. An
//! offset at or below the last one sent but above the horizon (offsets went backwards
//! under one epoch: a failover lost writes), an offset past the next one (a gap: the node
//! missed messages, e.g. while its Redis subscriber reconnected) and an epoch change all
//! close the stream with 4400: the client resumes from its exact position, and the
//! history either replays what it missed or answers `recovered: false`. Never a silent
//! skip or duplicate; each is counted and logged once per burst.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use herald_core::{GroupName, Layer, Position};
use herald_ws::{FrameReader, Inbound, Limits, ReadError, encode_close, encode_pong};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::{Duration, Instant, timeout};

use crate::close;
use crate::hub::ConnId;
use crate::metrics::Metrics;
use crate::outbox::{Mode, Outbox, OutboxReceiver, epoch_tag};
use crate::presence::Watch;
use crate::protocol::encode_v1;
use crate::protocol::{self, ClientFrame, WelcomeStream};
use crate::server::AppState;

type Io = TokioIo<Upgraded>;

/// Most frames gathered into one socket write.
const MAX_BATCH_FRAMES: usize = 1024;
/// Most bytes gathered into one socket write.
const MAX_BATCH_BYTES: usize = 64 * 1024;
/// Time allowed for the closing handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection that joined its groups and waits for its upgraded socket.
#[derive(Debug)]
pub struct Connection {
    pub(crate) id: ConnId,
    pub(crate) groups: Vec<GroupName>,
    pub(crate) outbox: Outbox,
    pub(crate) rx: OutboxReceiver,
    pub(crate) state: Arc<AppState>,
    /// Set once the connection joined its groups in the hub.
    pub(crate) joined: bool,
    /// Per group: the last offset sent to the client and the offset up to which the
    /// resume covered the stream (replayed, or current at a first visit): a live frame
    /// at or below that horizon is a replay duplicate (herald.v1 and SSE).
    pub(crate) sent: Vec<Sent>,
    /// Per group: the epoch tag of the history those offsets belong to (herald.v1 and SSE).
    pub(crate) epochs: Vec<u32>,
    /// When the connection's token stops being valid: it is closed with 4003 then.
    pub(crate) expires: Option<Instant>,
    /// A `herald.v1` connection on a token route authorizes after its hello; boxed so
    /// connections without it pay one pointer.
    pub(crate) pending_auth: Option<Box<PendingAuth>>,
    /// A connection admitted by the connect hook: what its refreshes ask. Boxed so
    /// connections without it pay one pointer.
    pub(crate) hook: Option<Box<HookSession>>,
    /// Who the connection is (the token's or the hook answer's `sub`), counted in the
    /// presence of its groups; `None` for anonymous connections.
    pub(crate) sub: Option<Arc<str>>,
    /// A `herald.v1` connection on a route with `presence = true`: sent `join`/`leave`.
    pub(crate) watches: bool,
    /// The plain TCP socket under the WebSocket, for the hub's direct writes (plain mode
    /// without TLS only: `herald.v1` frames pass the task's replay filter).
    pub(crate) direct: Option<Arc<TcpStream>>,
}

/// The outcome of [`Connection::resume`].
#[derive(Debug)]
pub(crate) struct Resumed {
    /// Per group (in the connection's order): its current position, and whether the
    /// client's position was covered (`true` on a first visit too).
    pub(crate) currents: Vec<(Position, bool)>,
    /// The missed messages to send before the live ones, oldest first per group.
    pub(crate) replay: Vec<herald_core::Message>,
}

/// What a `herald.v1` connection needs to authorize once its `hello` arrived.
#[derive(Debug)]
pub(crate) struct PendingAuth {
    /// `?token=` from the URL, used when the hello carries none.
    pub(crate) url_token: Option<String>,
    /// Index of the matched route in `AppState::routes`.
    pub(crate) route: usize,
    /// The route's parameter values from the path.
    pub(crate) values: Vec<String>,
}

/// What an open connection on an `auth = "hook"` route re-asks the hook.
#[derive(Debug)]
pub(crate) struct HookSession {
    /// The connect request, repeated as it was (same forwarded headers).
    pub(crate) ask: crate::hook::Ask,
    /// Index of the matched route in `AppState::routes`.
    pub(crate) route: usize,
    /// When to ask first.
    pub(crate) refresh_at: Instant,
    /// Who the hook said the connection is (its answer's `sub`), for the logs.
    pub(crate) sub: Option<String>,
}

/// Re-asks the hook every refresh period (or at the answer's `expires_in`) until it
/// refuses; returns the close reason then. Hook errors keep the connection.
pub(crate) async fn refresh_until_refused(
    state: Arc<AppState>,
    session: HookSession,
    groups: Vec<GroupName>,
) -> &'static str {
    let mut at = session.refresh_at;
    loop {
        tokio::time::sleep_until(at).await;
        let (Some(hook), Some(route)) = (state.hook.as_ref(), state.routes.get(session.route))
        else {
            // Routes and the hook are fixed at startup, so this never happens; never
            // refusing is the safe side for an already-admitted connection.
            return std::future::pending().await;
        };
        let max_groups = state.config.limits.max_groups_per_connection;
        match hook.refresh(&session.ask, route, &groups, max_groups).await {
            Ok(next) => at = next,
            Err(reason) => return reason,
        }
    }
}

/// Where a `herald.v1` or SSE stream is in one group.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sent {
    /// The last offset sent to the client.
    pub(crate) last: u64,
    /// The offset up to which the resume covered the stream.
    pub(crate) horizon: u64,
}

/// What a live frame means for a `herald.v1` or SSE stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LiveFrame {
    /// The next offset: send it.
    Send,
    /// At or below the replay horizon: the replay already sent it. Skip it.
    Replayed,
    /// At or below the last offset sent but above the horizon, under the same epoch: the
    /// group's offsets went backwards (a failover lost acknowledged writes).
    Regressed,
    /// Past the next offset: messages are missing in between.
    Gap,
    /// Another epoch: the group's history was lost or reset.
    EpochChanged,
}

impl LiveFrame {
    /// The close reason of a frame that resets the stream (under 123 bytes).
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Send | Self::Replayed => "",
            Self::Regressed => "stream reset: offsets went backwards",
            Self::Gap => "stream reset: gap in the live stream, resume from history",
            Self::EpochChanged => "stream reset: history epoch changed",
        }
    }
}

/// Classifies a live frame at `offset` for a stream that sent up to `last` and whose
/// resume covered up to `horizon` (`horizon <= last`). Pure, so every case is unit-tested.
pub(crate) fn classify(offset: u64, same_epoch: bool, last: u64, horizon: u64) -> LiveFrame {
    if !same_epoch {
        LiveFrame::EpochChanged
    } else if offset <= horizon {
        LiveFrame::Replayed
    } else if offset <= last {
        LiveFrame::Regressed
    } else if offset > last.saturating_add(1) {
        LiveFrame::Gap
    } else {
        LiveFrame::Send
    }
}

/// Why the main loop ended.
enum End {
    /// Close with this code and reason, then wait for the peer's close.
    Close(u16, &'static str),
    /// The peer closed: echo its code.
    PeerClosed(Option<u16>),
    /// The socket is gone or stuck; just drop it.
    Drop,
}

impl Connection {
    /// A connection for `groups` in `mode`, not yet a member of anything.
    pub(crate) fn new(state: Arc<AppState>, groups: Vec<GroupName>, mode: Mode) -> Self {
        let limits = &state.config.limits;
        let (outbox, rx) = Outbox::new(mode, limits.outbox_messages, limits.outbox_bytes);
        let id = state.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let sent = vec![Sent::default(); groups.len()];
        let epochs = vec![0; groups.len()];
        Self {
            id,
            groups,
            outbox,
            rx,
            state,
            joined: false,
            sent,
            epochs,
            expires: None,
            pending_auth: None,
            hook: None,
            sub: None,
            watches: false,
            direct: None,
        }
    }

    /// Joins every group and waits until the layer delivers them.
    pub(crate) async fn join(&mut self) {
        for (slot, group) in self.groups.iter().enumerate() {
            // Slots fit in a u8: the route config caps groups per connection well below 256.
            self.state
                .hub
                .join(group, self.id, slot as u8, &self.outbox);
        }
        self.joined = true;
        let watch = if self.watches {
            Watch::Add(self.id, self.outbox.clone())
        } else {
            Watch::No
        };
        self.state
            .presence
            .joined(&self.groups, self.sub.as_ref(), watch)
            .await;
        for group in &self.groups {
            self.state.subscriptions.sync(group).await;
        }
    }

    /// Leaves every group; the subscriptions task unsubscribes the ones now empty here.
    pub(crate) async fn leave(&mut self) {
        if !self.joined {
            return;
        }
        self.joined = false;
        for group in &self.groups {
            self.state.hub.leave(group, self.id);
        }
        let watch = if self.watches {
            Watch::Remove(self.id)
        } else {
            Watch::No
        };
        self.state
            .presence
            .left(&self.groups, self.sub.as_ref(), watch)
            .await;
        for group in &self.groups {
            self.state.subscriptions.sync_later(group).await;
        }
    }

    fn reader(&self) -> FrameReader {
        let max = self.state.config.limits.max_message_bytes;
        FrameReader::new(Limits {
            max_frame: max,
            max_message: max,
        })
    }

    /// Runs the connection until it closes. Counted in the connection gauge throughout.
    pub(crate) async fn serve(mut self, io: Io) {
        let metrics = self.state.metrics.clone();
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut reader = self.reader();
        // The handshake and the closing phases are boxed: they run once and hold large
        // state (history, replay frames, timers), which would otherwise be part of every
        // connection's task for its whole life, idle or not.
        let end = match self.outbox.shared().mode() {
            // SSE streams never reach this task (see `sse.rs`).
            Mode::Plain | Mode::Sse => self.run(&mut rd, &mut wr, &mut reader).await,
            Mode::V1 => match Box::pin(self.handshake_v1(&mut rd, &mut wr, &mut reader)).await {
                Ok(()) => self.run(&mut rd, &mut wr, &mut reader).await,
                Err(end) => end,
            },
        };
        // No more direct writes from the hub: this task owns the socket's last bytes.
        self.rx.begin_writing();
        // Stop receiving before the closing handshake, so nothing queues meanwhile.
        self.leave().await;
        let pending = self.rx.len() as u64;
        Metrics::add(&metrics.frames_dropped, pending);
        self.rx.close();
        Box::pin(finish(end, &mut rd, &mut wr, &mut reader)).await;
    }

    /// Gives up a connection whose upgrade never completed.
    pub(crate) async fn abandon(mut self) {
        self.leave().await;
    }

    /// Closes a connection refused after the upgrade (limits, auth) with `code`.
    pub(crate) async fn refuse(io: Io, code: u16, reason: &'static str, limits: Limits) {
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut reader = FrameReader::new(limits);
        finish(End::Close(code, reason), &mut rd, &mut wr, &mut reader).await;
    }

    async fn handshake_v1(
        &mut self,
        rd: &mut ReadHalf<Io>,
        wr: &mut WriteHalf<Io>,
        reader: &mut FrameReader,
    ) -> Result<(), End> {
        let deadline = self.state.config.limits.handshake_timeout;
        let first = tokio::select! {
            _ = self.state.shutdown.cancelled() => return Err(End::Close(close::RESTART, "server restart")),
            first = timeout(deadline, reader.read(rd)) => first,
        };
        let text = match first {
            Err(_) => return Err(self.bad_request("no hello in time")),
            Ok(Ok(Some(Inbound::Text(text)))) => text,
            Ok(Ok(Some(Inbound::Close { code, .. }))) => return Err(End::PeerClosed(code)),
            Ok(Ok(Some(_))) => return Err(self.bad_request("first frame must be a text hello")),
            Ok(Ok(None)) | Ok(Err(ReadError::Io(_))) => return Err(End::Drop),
            Ok(Err(ReadError::Protocol(e))) => return Err(self.protocol_error(e.code, e.reason)),
            Ok(Err(_)) => return Err(End::Drop),
        };
        let hello = protocol::parse_hello(&text).map_err(|e| self.bad_request(e.0))?;
        if let Some(pending) = self.pending_auth.take() {
            // Before joining: a refused connection never becomes a member of anything.
            self.authorize(hello.token.as_deref(), *pending)?;
        }
        self.join().await;
        let resumed = match self.resume(|group| hello.streams.get(group.as_str())).await {
            Ok(resumed) => resumed,
            Err(()) => return Err(End::Close(close::TRY_AGAIN_LATER, "history unavailable")),
        };
        let currents = resumed.currents;
        let replay = resumed.replay.iter().map(encode_v1);
        let streams: Vec<WelcomeStream<'_>> = self
            .groups
            .iter()
            .zip(&currents)
            .map(|(group, (current, recovered))| WelcomeStream {
                group,
                current,
                recovered: *recovered,
            })
            .collect();
        let welcome = protocol::welcome(
            self.state.config.heartbeat.interval.as_millis() as u64,
            &streams,
        );
        if write_frames(
            wr,
            std::iter::once(welcome).chain(replay),
            self.stall_timeout(),
        )
        .await
        .is_err()
        {
            return Err(End::Drop);
        }
        Ok(())
    }

    /// Reads each group's history after the client's position (`since`; `None` = a first
    /// visit) and sets the positions the live frames are filtered against. Call after
    /// [`Connection::join`]: live frames queue meanwhile and the ones the replay already
    /// holds are skipped later, so nothing is lost or repeated. Shared by the `herald.v1`
    /// hello and the SSE `Last-Event-ID`.
    pub(crate) async fn resume<'p>(
        &mut self,
        since: impl Fn(&GroupName) -> Option<&'p Position>,
    ) -> Result<Resumed, ()> {
        let mut currents: Vec<(Position, bool)> = Vec::with_capacity(self.groups.len());
        let mut replay = Vec::new();
        for (slot, group) in self.groups.iter().enumerate() {
            let since = since(group);
            let history = match self.state.layer.history(group, since).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(conn_id = self.id, group = %group, error = %e, "history unavailable");
                    return Err(());
                }
            };
            // A position the history does not cover, or a first visit, starts from now.
            let recovered = history.recovered && since.is_some();
            replay.extend(history.messages);
            if let Some(sent) = self.sent.get_mut(slot) {
                sent.last = history.current.offset;
                sent.horizon = history.current.offset;
            }
            if let Some(tag) = self.epochs.get_mut(slot) {
                *tag = epoch_tag(history.current.epoch.as_str());
            }
            currents.push((history.current, recovered || since.is_none()));
        }
        Ok(Resumed { currents, replay })
    }

    /// Checks a live frame of group `slot` against the stream's position ([`classify`]);
    /// moves the position on when it is the next one, and counts and logs (once per
    /// burst) a frame that resets the stream.
    pub(crate) fn check_live(&mut self, slot: usize, offset: u64, epoch: u32) -> LiveFrame {
        let (Some(Sent { last, horizon }), Some(&tag)) =
            (self.sent.get_mut(slot), self.epochs.get(slot))
        else {
            // Slots come from this connection's own joins; an unknown one is not ours.
            return LiveFrame::Replayed;
        };
        let horizon = *horizon;
        let verdict = classify(offset, epoch == tag, *last, horizon);
        let metrics = &self.state.metrics;
        let counter = match verdict {
            LiveFrame::Send => {
                *last = offset;
                return verdict;
            }
            LiveFrame::Replayed => return verdict,
            LiveFrame::Gap => &metrics.stream_gaps,
            LiveFrame::Regressed => &metrics.stream_regressions,
            LiveFrame::EpochChanged => &metrics.stream_epoch_changes,
        };
        Metrics::add(counter, 1);
        if let Some(resets) = self.state.stream_reset_log.hit() {
            let group = self.groups.get(slot).map(GroupName::as_str).unwrap_or("");
            tracing::warn!(
                conn_id = self.id,
                group,
                offset,
                last = *last,
                horizon,
                resets,
                reason = verdict.reason(),
                "stream reset (4400); the client resumes from history"
            );
        }
        verdict
    }

    /// Checks the token of a `herald.v1` connection (the hello's, else the URL's).
    fn authorize(&mut self, hello_token: Option<&str>, pending: PendingAuth) -> Result<(), End> {
        let token = hello_token.or(pending.url_token.as_deref());
        let result = match self.state.routes.get(pending.route) {
            Some(route) => self
                .state
                .auth
                .authorize(token, route, &pending.values, &self.groups),
            // Routes are fixed at startup, so the gateway's index is always valid.
            None => Err(crate::auth::Refusal::Invalid),
        };
        match result {
            Ok(grant) => {
                self.expires = Some(grant.deadline());
                self.sub = Some(Arc::from(grant.sub));
                Ok(())
            }
            Err(refusal) => {
                Metrics::add(&self.state.metrics.auth_refusals, 1);
                tracing::debug!(conn_id = self.id, code = refusal.close_code(), %refusal, "connection refused");
                Err(End::Close(refusal.close_code(), refusal.reason()))
            }
        }
    }

    fn bad_request(&self, reason: &'static str) -> End {
        Metrics::add(&self.state.metrics.protocol_errors, 1);
        tracing::debug!(conn_id = self.id, reason, "bad request");
        End::Close(close::BAD_REQUEST, reason)
    }

    fn protocol_error(&self, code: u16, reason: &'static str) -> End {
        Metrics::add(&self.state.metrics.protocol_errors, 1);
        tracing::debug!(conn_id = self.id, code, reason, "protocol error");
        End::Close(code, reason)
    }

    fn stall_timeout(&self) -> Duration {
        let hb = &self.state.config.heartbeat;
        hb.interval + hb.timeout
    }

    async fn run(
        &mut self,
        rd: &mut ReadHalf<Io>,
        wr: &mut WriteHalf<Io>,
        reader: &mut FrameReader,
    ) -> End {
        let shared = self.outbox.shared().clone();
        let mode = shared.mode();
        let hb = self.state.config.heartbeat;
        let tick = next_tick(self.state.ticker.clone());
        tokio::pin!(tick);
        let mut ticking = true;
        let mut last_in = Instant::now();
        let mut last_out = Instant::now();
        let stall = self.stall_timeout();
        // The token's expiry. Boxed and only for connections with a token: a `Sleep` held
        // inline would enlarge every connection's task by its size.
        let mut expiry = self
            .expires
            .map(|at| Box::pin(tokio::time::sleep_until(at)));
        // The hook's refreshes run inside this task's select (no spawn), so an answer
        // that takes `hook.timeout` never delays the connection's frames.
        let session_sub = self.hook.as_ref().and_then(|s| s.sub.clone());
        let mut refresh = self.hook.take().map(|session| {
            Box::pin(refresh_until_refused(
                self.state.clone(),
                *session,
                self.groups.clone(),
            ))
        });
        // Created once, outside the loop: each of these registers a waiter, and creating
        // them per iteration (per delivered frame) costs a lock and a list update each.
        let shutdown = self.state.shutdown.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let kicked = shared.kicked();
        tokio::pin!(kicked);
        if mode == Mode::Plain {
            if let Some(socket) = self.direct.take() {
                // From here on the socket carries only WebSocket frames (the 101 went
                // out before the upgrade completed), so the hub may write them itself.
                self.rx.arm_direct(socket);
            }
        }
        loop {
            tokio::select! {
                biased;
                _ = async { if let Some(sleep) = expiry.as_mut() { sleep.await } }, if expiry.is_some() => {
                    Metrics::add(&self.state.metrics.tokens_expired, 1);
                    return End::Close(close::TOKEN_EXPIRED, "token expired");
                }
                reason = async { match refresh.as_mut() { Some(f) => f.await, None => std::future::pending().await } }, if refresh.is_some() => {
                    let sub = session_sub.as_deref();
                    tracing::debug!(conn_id = self.id, sub, reason, "connect hook refused on refresh");
                    return End::Close(close::TOKEN_EXPIRED, reason);
                }
                _ = &mut cancelled => {
                    self.rx.begin_writing();
                    if mode == Mode::V1 {
                        let window = self.state.config.shutdown.goaway_window.as_millis() as u64;
                        // Best effort: the close that follows is what matters.
                        let _ = timeout(CLOSE_TIMEOUT, wr.write_all(&protocol::goaway(window))).await;
                    }
                    return End::Close(close::RESTART, "server restart");
                }
                _ = &mut kicked => {
                    let code = shared.close_code().unwrap_or(close::SLOW_CONSUMER);
                    return End::Close(code, "slow consumer: outbox overflowed");
                }
                first = self.rx.recv() => {
                    let Some(first) = first else { return End::Drop };
                    let mut batch = Vec::new();
                    let mut bytes = 0;
                    // Everything taken, skipped frames included, for `release`.
                    let (mut taken, mut taken_bytes) = (0, 0);
                    let mut next = Some(first);
                    while let Some(frame) = next {
                        taken += 1;
                        taken_bytes += frame.frame.len();
                        if mode == Mode::V1 && frame.slot != crate::outbox::CONTROL_SLOT {
                            match self.check_live(frame.slot as usize, frame.offset, frame.epoch) {
                                LiveFrame::Send => {}
                                LiveFrame::Replayed => { next = self.rx.try_recv().ok(); continue; }
                                reset => {
                                    self.rx.release(taken, taken_bytes);
                                    return End::Close(close::STREAM_RESET, reset.reason());
                                }
                            }
                        }
                        bytes += frame.frame.len();
                        batch.push(frame.frame);
                        next = if batch.len() < MAX_BATCH_FRAMES && bytes < MAX_BATCH_BYTES {
                            self.rx.try_recv().ok()
                        } else {
                            None
                        };
                    }
                    self.rx.release(taken, taken_bytes);
                    if batch.is_empty() {
                        continue;
                    }
                    if write_frames(wr, batch, stall).await.is_err() {
                        return End::Drop;
                    }
                    self.rx.done_writing();
                    last_out = Instant::now();
                }
                inbound = reader.read(rd) => {
                    last_in = Instant::now();
                    match inbound {
                        Ok(Some(Inbound::Ping(data))) => {
                            self.rx.begin_writing();
                            if write_frames(wr, [encode_pong(&data)], stall).await.is_err() {
                                return End::Drop;
                            }
                            self.rx.done_writing();
                        }
                        Ok(Some(Inbound::Pong(_))) => {}
                        Ok(Some(Inbound::Close { code, .. })) => return End::PeerClosed(code),
                        Ok(Some(Inbound::Text(text))) => {
                            if mode == Mode::V1 {
                                match protocol::parse_client_frame(&text) {
                                    Ok(ClientFrame::Pong | ClientFrame::Other) => {}
                                    Err(e) => return self.bad_request(e.0),
                                }
                            }
                            // Plain mode: client frames are ignored (DESIGN.md §3).
                        }
                        Ok(Some(Inbound::Binary(data))) => {
                            // Client messages are not forwarded anywhere yet; a well-formed
                            // one is ignored like in plain mode, a malformed one is a 4500.
                            if mode == Mode::V1 {
                                if let Err(e) = protocol::parse_client_binary(&data) {
                                    return self.bad_request(e.0);
                                }
                            }
                        }
                        Ok(None) | Err(ReadError::Io(_)) => return End::Drop,
                        Err(ReadError::Protocol(e)) => return self.protocol_error(e.code, e.reason),
                        Err(_) => return End::Drop,
                    }
                    reader.shrink_if_idle();
                }
                ticked = &mut tick, if ticking => {
                    let Some(receiver) = ticked else {
                        // The ticker stopped: the server is shutting down.
                        ticking = false;
                        continue;
                    };
                    tick.set(next_tick(receiver));
                    let depth = &self.state.metrics.outbox_depth.0;
                    depth.observe(shared.queued() as f64);
                    let now = Instant::now();
                    if now.saturating_duration_since(last_in) > hb.interval + hb.timeout {
                        Metrics::add(&self.state.metrics.heartbeat_timeouts, 1);
                        return match mode {
                            Mode::V1 => End::Close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout"),
                            // A plain peer that ignores pings is gone; nobody reads a close.
                            Mode::Plain | Mode::Sse => End::Drop,
                        };
                    }
                    // Ping when we sent nothing lately (keep-alive) and also when the
                    // peer said nothing lately, even under steady traffic: its pong is
                    // what proves it is alive.
                    if now.saturating_duration_since(last_out) >= hb.interval / 2
                        || now.saturating_duration_since(last_in) >= hb.interval / 2
                    {
                        let ping = match mode {
                            Mode::Plain | Mode::Sse => herald_ws::encode_ping(b""),
                            Mode::V1 => protocol::ping(),
                        };
                        self.rx.begin_writing();
                        if write_frames(wr, [ping], stall).await.is_err() {
                            return End::Drop;
                        }
                        self.rx.done_writing();
                        last_out = now;
                    }
                }
            }
        }
    }
}

/// Writes frames in one `write_all` when there are several (one copy into a batch
/// buffer beats one syscall per frame), directly when there is one. A write that makes no
/// progress for `stall` means the peer stopped reading: the connection is dropped.
async fn write_frames(
    wr: &mut WriteHalf<Io>,
    frames: impl IntoIterator<Item = Bytes>,
    stall: Duration,
) -> io::Result<()> {
    let mut frames = frames.into_iter();
    let Some(first) = frames.next() else {
        return Ok(());
    };
    let write = async {
        match frames.next() {
            None => wr.write_all(&first).await,
            Some(second) => {
                let mut buf = BytesMut::with_capacity(first.len() + second.len());
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&second);
                for frame in frames {
                    buf.extend_from_slice(&frame);
                }
                wr.write_all(&buf).await
            }
        }
    };
    match timeout(stall, write).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "peer stopped reading",
        )),
    }
}

/// Waits for the shared heartbeat tick and hands the receiver back (`None` once the ticker
/// stopped). Owning the receiver lets the connection keep one pending wait across loop
/// iterations instead of registering a new one for every frame it sends.
pub(crate) async fn next_tick(
    mut ticker: tokio::sync::watch::Receiver<()>,
) -> Option<tokio::sync::watch::Receiver<()>> {
    ticker.changed().await.ok().map(|()| ticker)
}

/// Reads and discards until end of stream, or until the peer pauses for 200 ms.
async fn drain(rd: &mut ReadHalf<Io>) {
    use tokio::io::AsyncReadExt;
    // On the heap: an array here would sit in every connection task's future.
    let mut scratch = vec![0u8; 4096];
    while let Ok(Ok(n)) = timeout(Duration::from_millis(200), rd.read(&mut scratch)).await {
        if n == 0 {
            break;
        }
    }
}

/// The closing handshake: send our close (or echo the peer's), then give the peer a moment
/// to answer before dropping the socket, so its last frames are not cut by a reset.
async fn finish(end: End, rd: &mut ReadHalf<Io>, wr: &mut WriteHalf<Io>, reader: &mut FrameReader) {
    match end {
        End::Drop => {}
        End::PeerClosed(code) => {
            let frame = encode_close(code.unwrap_or(close::NORMAL), "");
            let _ = timeout(CLOSE_TIMEOUT, async {
                wr.write_all(&frame).await?;
                wr.shutdown().await
            })
            .await;
        }
        End::Close(code, reason) => {
            let frame = encode_close(code, reason);
            let sent = timeout(CLOSE_TIMEOUT, wr.write_all(&frame)).await;
            if matches!(sent, Ok(Ok(()))) {
                let _ = timeout(CLOSE_TIMEOUT, async {
                    loop {
                        match reader.read(rd).await {
                            Ok(Some(Inbound::Close { .. })) | Ok(None) | Err(ReadError::Io(_)) => {
                                break;
                            }
                            Ok(Some(_)) => {}
                            // After a protocol error the frames cannot be parsed: read and
                            // discard what the peer is still sending (say, the rest of an
                            // oversized frame), or closing with unread data would reset the
                            // connection and the peer would never see our close code.
                            Err(_) => {
                                drain(rd).await;
                                break;
                            }
                        }
                    }
                })
                .await;
                let _ = timeout(CLOSE_TIMEOUT, wr.shutdown()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_offset_is_sent() {
        assert_eq!(classify(11, true, 10, 10), LiveFrame::Send);
        assert_eq!(classify(15, true, 14, 10), LiveFrame::Send);
    }

    #[test]
    fn replay_duplicates_are_skipped() {
        // Resumed at 10: live frames queued meanwhile up to 10 were replayed.
        assert_eq!(classify(3, true, 10, 10), LiveFrame::Replayed);
        assert_eq!(classify(10, true, 10, 10), LiveFrame::Replayed);
        assert_eq!(classify(10, true, 14, 10), LiveFrame::Replayed);
        // A reset notice (offset 0) under the stream's own epoch says nothing new.
        assert_eq!(classify(0, true, 14, 10), LiveFrame::Replayed);
    }

    #[test]
    fn offsets_going_backwards_above_the_horizon_reset() {
        assert_eq!(classify(11, true, 14, 10), LiveFrame::Regressed);
        assert_eq!(classify(14, true, 14, 10), LiveFrame::Regressed);
    }

    #[test]
    fn a_gap_resets() {
        assert_eq!(classify(12, true, 10, 10), LiveFrame::Gap);
        assert_eq!(classify(u64::MAX, true, u64::MAX - 2, 0), LiveFrame::Gap);
        // No overflow at the top of the range.
        assert_eq!(classify(u64::MAX, true, u64::MAX, 0), LiveFrame::Regressed);
    }

    #[test]
    fn another_epoch_resets_whatever_the_offset() {
        assert_eq!(classify(11, false, 10, 10), LiveFrame::EpochChanged);
        assert_eq!(classify(0, false, 10, 10), LiveFrame::EpochChanged);
    }

    #[test]
    fn reasons_fit_a_close_frame() {
        for v in [
            LiveFrame::Regressed,
            LiveFrame::Gap,
            LiveFrame::EpochChanged,
        ] {
            assert!(!v.reason().is_empty() && v.reason().len() <= 123);
        }
    }
}
