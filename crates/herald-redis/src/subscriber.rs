//! The subscriber connection: its handshake, the (un)subscribe commands written to it, and
//! the read loop that turns its frames into `Incoming` messages.
//!
//! Writes and reads are split. Callers of `subscribe`/`unsubscribe` write through
//! [`SubscriberWriter`] (one at a time, under an async lock); the read loop, run by the
//! supervisor, owns the read half. Redis answers commands in order, so each write queues
//! what its answers mean ([`Expected`]) before the bytes go out, and the read loop pops an
//! entry once its command is fully answered: a `SUBSCRIBE` or `UNSUBSCRIBE` naming n
//! channels is answered by n frames, or by one error if Redis refuses the command.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herald_core::{GroupName, LayerError, Message};
use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::envelope;
use crate::layer::Shared;
use crate::lost_writes::{self, Live};
use crate::resp::{self, Frame};

/// Room made in the read buffer before each read (here and on cluster shard connections).
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// What one expected answer on a subscriber connection (this one, or a cluster shard's)
/// means.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Nobody waits for it (re-subscription after a reconnect, health-check pings).
    Ignore,
    /// A caller waits for it: its command, and everything before it, took effect.
    Notify(oneshot::Sender<()>),
    /// The (re-)subscriptions made on connect are confirmed: the layer (or the shard) is
    /// ready.
    Ready,
}

/// One command written and not yet fully answered.
#[derive(Debug)]
pub(crate) struct Expected {
    /// Answer frames still to come.
    answers: usize,
    reply: Reply,
}

impl Expected {
    /// A command answered by one frame (`PING`, one-channel `SUBSCRIBE`).
    fn one(reply: Reply) -> Self {
        Self { answers: 1, reply }
    }
}

/// Most channels named in one `SUBSCRIBE` or `UNSUBSCRIBE`: bounds the size of a command.
const CHANNELS_PER_COMMAND: usize = 1024;

type Replies = Arc<Mutex<VecDeque<Expected>>>;

fn lock(replies: &Replies) -> MutexGuard<'_, VecDeque<Expected>> {
    // The queue holds no invariant a panic could break half-way: take it over.
    replies
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The write half of the current subscriber connection and what it is subscribed to.
#[derive(Debug)]
pub(crate) struct SubscriberWriter {
    write: OwnedWriteHalf,
    /// The groups SUBSCRIBEd on this connection (by commands already written).
    applied: HashSet<GroupName>,
    replies: Replies,
    timeout: Duration,
}

/// The read half of the current subscriber connection.
#[derive(Debug)]
pub(crate) struct SubscriberReader {
    read: OwnedReadHalf,
    buf: BytesMut,
    replies: Replies,
}

/// How a read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The connection (or the command connection) is gone: reconnect.
    Lost,
    /// The layer is shutting down.
    Closed,
}

impl SubscriberWriter {
    /// Queues the meaning of the answers, then writes `bytes`.
    async fn send(
        &mut self,
        bytes: &[u8],
        replies: impl IntoIterator<Item = Expected>,
    ) -> Result<(), String> {
        // Queue first: the read loop may see the answer before `write_all` returns.
        lock(&self.replies).extend(replies);
        match tokio::time::timeout(self.timeout, self.write.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("writing to the subscriber connection: {e}")),
            Err(_) => Err("the subscriber connection stopped accepting writes".to_owned()),
        }
    }

    /// Subscribes a fresh connection to the probe channel and every group in `groups`,
    /// followed by a `PING` whose answer marks the layer ready.
    pub(crate) async fn resubscribe(
        &mut self,
        keys: &crate::keys::Keys,
        probe_channel: &str,
        groups: HashSet<GroupName>,
    ) -> Result<(), String> {
        // One SUBSCRIBE per channel, pipelined in one write: each command then has exactly
        // one answer (its confirmation or its error), which keeps the reply queue aligned
        // even if Redis refuses some channel (e.g. an ACL rule).
        let mut bytes = Vec::new();
        let mut replies = Vec::with_capacity(groups.len() + 2);
        bytes.extend(resp::command([&b"SUBSCRIBE"[..], probe_channel.as_bytes()]));
        replies.push(Expected::one(Reply::Ignore));
        for group in &groups {
            let channel = keys.channel(group);
            bytes.extend(resp::command([&b"SUBSCRIBE"[..], channel.as_bytes()]));
            replies.push(Expected::one(Reply::Ignore));
        }
        bytes.extend(resp::command([&b"PING"[..]]));
        replies.push(Expected::one(Reply::Ready));
        self.send(&bytes, replies).await?;
        self.applied = groups;
        Ok(())
    }
}

/// Opens the subscriber connection and authenticates it.
pub(crate) async fn connect(
    info: &ConnectionInfo,
    timeout: Duration,
) -> Result<(SubscriberReader, SubscriberWriter), String> {
    let ConnectionAddr::Tcp(host, port) = info.addr() else {
        // `RedisLayer::new` accepts plain TCP addresses only.
        return Err("only plain TCP addresses are supported".to_owned());
    };
    let stream = TcpStream::connect((host.as_str(), *port))
        .await
        .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    // Subscription commands are small and latency-bound.
    stream
        .set_nodelay(true)
        .map_err(|e| format!("setting TCP_NODELAY: {e}"))?;
    let (read, write) = stream.into_split();
    let replies = Replies::default();
    let mut reader = SubscriberReader {
        read,
        buf: BytesMut::with_capacity(READ_CHUNK),
        replies: replies.clone(),
    };
    let mut writer = SubscriberWriter {
        write,
        applied: HashSet::new(),
        replies,
        timeout,
    };
    let settings = info.redis_settings();
    if let Some(password) = settings.password() {
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(user) = settings.username() {
            args.push(user.as_bytes());
        }
        args.push(password.as_bytes());
        writer
            .write
            .write_all(&resp::command(args))
            .await
            .map_err(|e| format!("sending AUTH: {e}"))?;
        match reader.next_frame().await? {
            Frame::Simple(ok) if ok.eq_ignore_ascii_case(b"OK") => {}
            Frame::Error(e) => {
                return Err(format!("AUTH refused: {}", String::from_utf8_lossy(&e)));
            }
            other => return Err(format!("unexpected AUTH answer {other:?}")),
        }
    }
    Ok((reader, writer))
}

impl SubscriberReader {
    /// Reads until one whole frame is buffered (handshake only; the read loop has its own).
    async fn next_frame(&mut self) -> Result<Frame, String> {
        loop {
            if let Some(frame) = resp::parse(&mut self.buf).map_err(|e| e.to_string())? {
                return Ok(frame);
            }
            self.buf.reserve(READ_CHUNK);
            match self.read.read_buf(&mut self.buf).await {
                Ok(0) => return Err("redis closed the connection".to_owned()),
                Ok(_) => {}
                Err(e) => return Err(format!("reading from redis: {e}")),
            }
        }
    }
}

/// Brings the current subscriber connection in line with whether each of `groups` is
/// wanted, and waits until Redis confirmed it.
///
/// All callers go through one async lock and each reads the wanted state under it, so
/// concurrent calls on one group leave Redis in the state of the last call, whatever
/// order their commands were issued in. The changes go out in one write: one `SUBSCRIBE`
/// naming every newly wanted group's channel and one `UNSUBSCRIBE` for the groups no
/// longer wanted (a group is in at most one of them), then a `PING`, whose answer comes
/// after those of every earlier command; the caller waits for that one.
pub(crate) async fn apply(shared: &Shared, groups: &[GroupName]) -> Result<(), LayerError> {
    let (done, session_writer_failed) = {
        let mut slot = shared.subscriber.lock().await;
        let Some(writer) = slot.as_mut() else {
            // Not connected: the wanted set is recorded and applied on reconnect.
            return Ok(());
        };
        let mut subscribe = Vec::new();
        let mut unsubscribe = Vec::new();
        for group in groups {
            match (shared.is_wanted(group), writer.applied.contains(group)) {
                (true, false) => {
                    writer.applied.insert(group.clone());
                    subscribe.push(shared.keys.channel(group));
                }
                (false, true) => {
                    writer.applied.remove(group);
                    unsubscribe.push(shared.keys.channel(group));
                }
                _ => {}
            }
        }
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for (verb, channels) in [
            (&b"SUBSCRIBE"[..], &subscribe),
            (&b"UNSUBSCRIBE"[..], &unsubscribe),
        ] {
            for chunk in channels.chunks(CHANNELS_PER_COMMAND) {
                let args = std::iter::once(verb).chain(chunk.iter().map(|c| c.as_bytes()));
                bytes.extend(resp::command(args));
                expected.push(Expected {
                    answers: chunk.len(),
                    reply: Reply::Ignore,
                });
            }
        }
        let (tx, rx) = oneshot::channel();
        bytes.extend(resp::command([&b"PING"[..]]));
        expected.push(Expected::one(Reply::Notify(tx)));
        let failed = writer.send(&bytes, expected).await.err();
        (rx, failed)
    };
    if let Some(why) = session_writer_failed {
        // The connection is broken; the supervisor will notice on the read side and the
        // reconnect applies the wanted set.
        tracing::debug!(
            groups = groups.len(),
            why,
            "subscription write failed; applied on reconnect"
        );
        return Ok(());
    }
    match tokio::time::timeout(shared.config.command_timeout, done).await {
        Ok(Ok(())) => Ok(()),
        // The connection dropped before answering: the reconnect applies the wanted set.
        Ok(Err(_)) => Ok(()),
        Err(_) => Err(LayerError::Unavailable(format!(
            "redis did not confirm the subscription change within {:?}; it stays recorded",
            shared.config.command_timeout
        ))),
    }
}

/// Reads the subscriber connection until it is lost or the layer closes, delivering
/// messages to `Incoming` and resolving the waiters of (un)subscribe commands.
pub(crate) async fn read_loop(
    shared: &Shared,
    reader: &mut SubscriberReader,
    session: u64,
    cancel: &CancellationToken,
) -> End {
    let interval = shared.config.health_check_interval;
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // Messages decoded from the buffer and not yet handed to `Incoming`: a run read in one
    // go is handed over at once, not one wake-up of the pump per message.
    let mut run: Vec<Message> = Vec::with_capacity(RUN_MAX);
    loop {
        loop {
            let frame = match resp::parse(&mut reader.buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(prefix = %shared.config.prefix, error = %e, "garbled subscriber connection; reconnecting");
                    return End::Lost;
                }
            };
            let end = match message_of(shared, frame) {
                Ok(Some(message)) => match shared.seen.live(&message) {
                    Live::Deliver => {
                        run.push(message);
                        if run.len() < RUN_MAX {
                            continue;
                        }
                        hand_over(shared, &mut run, cancel).await
                    }
                    // Published under an epoch this node already replaced: its clients
                    // were reset.
                    Live::Retired => None,
                    // The messages before it go out first, then the group is reset.
                    Live::Reassigned => match hand_over(shared, &mut run, cancel).await {
                        Some(end) => Some(end),
                        None => match lost_writes::reset_reassigned(shared, &message, cancel).await
                        {
                            Ok(()) => None,
                            Err(why) => {
                                tracing::warn!(prefix = %shared.config.prefix, error = %why, "reconnecting to reset a group");
                                return End::Lost;
                            }
                        },
                    },
                },
                Ok(None) => None,
                // Anything else keeps its place after the messages before it.
                Err(frame) => match hand_over(shared, &mut run, cancel).await {
                    Some(end) => Some(end),
                    None => handle_frame(shared, &reader.replies, frame),
                },
            };
            if end == Some(End::Closed) {
                return End::Closed;
            }
            // Waiting on a full `Incoming` is not silence from Redis.
            last_heard = Instant::now();
        }
        if hand_over(shared, &mut run, cancel).await == Some(End::Closed) {
            return End::Closed;
        }
        reader.buf.reserve(READ_CHUNK);
        tokio::select! {
            _ = cancel.cancelled() => return End::Closed,
            _ = shared.command_lost.notified() => {
                if shared.lost_session() == session {
                    return End::Lost;
                }
            }
            _ = tick.tick() => {
                let quiet = last_heard.elapsed();
                if quiet >= interval * 2 {
                    tracing::warn!(prefix = %shared.config.prefix, ?quiet, "redis stopped answering; reconnecting");
                    return End::Lost;
                }
                if quiet >= interval && ping(shared).await.is_err() {
                    return End::Lost;
                }
            }
            // `read_buf` is cancel-safe: losing the race to another branch reads nothing.
            read = reader.read.read_buf(&mut reader.buf) => match read {
                Ok(0) => {
                    tracing::warn!(prefix = %shared.config.prefix, "redis closed the subscriber connection");
                    return End::Lost;
                }
                Ok(_) => last_heard = Instant::now(),
                Err(e) => {
                    tracing::warn!(prefix = %shared.config.prefix, error = %e, "subscriber connection failed");
                    return End::Lost;
                }
            },
        }
    }
}

/// A health-check `PING` whose answer nobody waits for: any answer counts as life.
async fn ping(shared: &Shared) -> Result<(), String> {
    let mut slot = shared.subscriber.lock().await;
    match slot.as_mut() {
        Some(writer) => {
            writer
                .send(
                    &resp::command([&b"PING"[..]]),
                    [Expected::one(Reply::Ignore)],
                )
                .await
        }
        None => Err("no subscriber connection".to_owned()),
    }
}

/// Most messages decoded before they are handed to `Incoming`.
const RUN_MAX: usize = 256;

/// The message a pub/sub `message` frame carries, if it is for a wanted group: `Ok(None)`
/// for one that is skipped (probe answers included), `Err(frame)` for any other frame.
fn message_of(shared: &Shared, frame: Frame) -> Result<Option<Message>, Frame> {
    let Frame::Array(Some(items)) = &frame else {
        return Err(frame);
    };
    match items.first() {
        Some(Frame::Bulk(Some(kind))) if &kind[..] == b"message" => {}
        _ => return Err(frame),
    }
    let Frame::Array(Some(items)) = frame else {
        return Ok(None);
    };
    let mut items = items.into_iter().skip(1);
    match (items.next(), items.next()) {
        (Some(Frame::Bulk(Some(channel))), Some(Frame::Bulk(Some(data)))) => {
            Ok(decode(shared, &channel, data))
        }
        _ => {
            shared.stats.decode_errors.increment();
            tracing::warn!("malformed pub/sub message frame skipped");
            Ok(None)
        }
    }
}

/// Handles one frame other than a message: answers to commands.
fn handle_frame(shared: &Shared, replies: &Replies, frame: Frame) -> Option<End> {
    match frame {
        Frame::Array(Some(items)) => {
            let mut items = items.into_iter();
            let kind = match items.next() {
                Some(Frame::Bulk(Some(kind))) => kind,
                other => {
                    tracing::debug!(?other, "unexpected frame on the subscriber connection");
                    return None;
                }
            };
            match &kind[..] {
                b"subscribe" | b"unsubscribe" | b"pong" => {
                    answer(shared, replies, false);
                    None
                }
                other => {
                    tracing::debug!(kind = %String::from_utf8_lossy(other), "unexpected push on the subscriber connection");
                    None
                }
            }
        }
        // With no channel subscribed, Redis answers PING outside pub/sub framing.
        Frame::Simple(pong) if pong.eq_ignore_ascii_case(b"PONG") => {
            answer(shared, replies, false);
            None
        }
        Frame::Error(e) => {
            tracing::warn!(prefix = %shared.config.prefix, error = %String::from_utf8_lossy(&e), "redis refused a subscriber command");
            // A refused command is answered by this one error, however many channels it named.
            answer(shared, replies, true);
            None
        }
        other => {
            tracing::debug!(?other, "unexpected frame on the subscriber connection");
            None
        }
    }
}

/// Counts one answer to the oldest command still waiting for answers (all of them when
/// `whole`, for an error), and resolves it once it is fully answered.
fn answer(shared: &Shared, replies: &Replies, whole: bool) {
    let reply = {
        let mut queue = lock(replies);
        match queue.front_mut() {
            Some(front) if !whole && front.answers > 1 => {
                front.answers -= 1;
                return;
            }
            Some(_) => queue.pop_front().map(|e| e.reply),
            None => None,
        }
    };
    match reply {
        // The caller may have given up waiting; nothing to do then.
        Some(Reply::Notify(tx)) => {
            let _ = tx.send(());
        }
        Some(Reply::Ready) => shared.set_ready(),
        Some(Reply::Ignore) => {}
        None => tracing::debug!("answer on the subscriber connection that nothing asked for"),
    }
}

/// Decodes a message for a wanted group; `None` for probe answers, unwanted groups and
/// malformed envelopes (counted).
fn decode(shared: &Shared, channel: &[u8], data: Bytes) -> Option<Message> {
    if channel == shared.probe.channel().as_bytes() {
        shared.probe.answered(&shared.config.prefix, &data);
        return None;
    }
    // Only groups still wanted are delivered: between an unsubscribe and Redis' confirmation
    // messages may still arrive, and nobody on this node wants them any more.
    let group = shared.wanted_group_of_channel(channel)?;
    match envelope::decode(group, data) {
        Ok(message) => {
            shared.stats.received.increment();
            Some(message)
        }
        Err(e) => {
            shared.stats.decode_errors.increment();
            tracing::warn!(prefix = %shared.config.prefix, error = %e, "malformed envelope skipped");
            None
        }
    }
}

/// Hands `run` to `Incoming` and empties it: all at once when there is room for the
/// whole run, else one by one, waiting for room. `Some(End::Closed)` when the layer
/// closed while waiting.
async fn hand_over(
    shared: &Shared,
    run: &mut Vec<Message>,
    cancel: &CancellationToken,
) -> Option<End> {
    if run.is_empty() {
        return None;
    }
    if let Ok(permits) = shared.tx.try_reserve_many(run.len()) {
        for (permit, message) in permits.zip(run.drain(..)) {
            permit.send(message);
        }
        return None;
    }
    for message in run.drain(..) {
        tokio::select! {
            _ = cancel.cancelled() => return Some(End::Closed),
            permit = shared.tx.reserve() => match permit {
                Ok(permit) => permit.send(message),
                // Nobody reads `Incoming` any more: the messages have no taker.
                Err(_) => return None,
            },
        }
    }
    None
}
