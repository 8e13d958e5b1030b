//! One shard's subscriber connection: a task per shard (master) that connects, subscribes
//! the probe channel and every wanted group whose slot the shard serves, reads shard
//! messages into `Incoming` (only while `Incoming` has room, like `subscriber.rs`), probes
//! its own pub/sub path, and reconnects with backoff until the supervisor cancels it.
//!
//! Every `SSUBSCRIBE`/`SUNSUBSCRIBE` names one channel: Redis refuses a multi-channel one
//! whose channels are on different slots, and one channel per command keeps one answer per
//! command. Batching is pipelining: all the commands of one change go out in one write per
//! shard, followed by a `PING` whose answer confirms them all.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herald_core::{Backoff, GroupName, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::command::Commands;
use super::gap;
use super::slots::ShardKey;
use crate::envelope;
use crate::layer::Shared;
use crate::lost_writes::{self, Live};
use crate::probe::Probe;
use crate::resp::{self, Frame};
pub(crate) use crate::subscriber::Reply;
use crate::subscriber::{End, READ_CHUNK};

/// One command written and not yet answered (each has exactly one answer).
#[derive(Debug)]
pub(crate) struct Expected {
    pub(crate) reply: Reply,
    /// The group an `SSUBSCRIBE`/`SUNSUBSCRIBE` names, to re-home it on `MOVED`.
    pub(crate) group: Option<GroupName>,
    /// Whether the command is an `SUNSUBSCRIBE`: its answer is an `sunsubscribe` frame
    /// that is not the server dropping a migrated channel.
    pub(crate) unsubscribe: bool,
}

impl Expected {
    pub(crate) fn plain(reply: Reply) -> Self {
        Self {
            reply,
            group: None,
            unsubscribe: false,
        }
    }
}

type Replies = Arc<Mutex<VecDeque<Expected>>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is one push, pop or store: take a poisoned lock over.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Health of one shard's pub/sub path, read by `is_ready` without any async lock.
#[derive(Debug)]
pub(crate) struct ShardHealth {
    pub(crate) key: ShardKey,
    /// Connected, and the subscriptions made on connect are confirmed.
    pub(crate) ready: AtomicBool,
    /// The probe through this shard (its channel's hash tag lands on the shard's slots).
    pub(crate) probe: Probe,
    /// Whether the probe has a channel: `false` only for a shard owning so few slots that
    /// no tag was found for it, which is then trusted on its connection's health alone.
    pub(crate) probed: bool,
    /// Connections made to this shard after the first.
    pub(crate) reconnects: AtomicU64,
    pub(crate) gap_fills: AtomicU64,
    pub(crate) gap_fill_failures: AtomicU64,
}

impl ShardHealth {
    pub(crate) fn new(key: ShardKey, probe_channel: Option<String>, interval: Duration) -> Self {
        let probed = probe_channel.is_some();
        Self {
            key,
            ready: AtomicBool::new(false),
            probe: Probe::new(probe_channel.unwrap_or_default(), interval),
            probed,
            reconnects: AtomicU64::new(0),
            gap_fills: AtomicU64::new(0),
            gap_fill_failures: AtomicU64::new(0),
        }
    }

    pub(crate) fn count_gap_fill(&self, covered: bool) {
        let counter = if covered {
            &self.gap_fills
        } else {
            &self.gap_fill_failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.probe.is_healthy()
    }
}

/// The write half of a shard connection and the groups subscribed on it.
#[derive(Debug)]
pub(crate) struct ShardWriter {
    write: OwnedWriteHalf,
    /// Groups `SSUBSCRIBE`d on this connection by commands already written.
    pub(crate) applied: HashSet<GroupName>,
    replies: Replies,
    timeout: Duration,
    /// The task that owns this connection: a stale task never removes a newer writer.
    pub(crate) owner: u64,
}

impl ShardWriter {
    /// Queues the meaning of the answers, then writes `bytes`.
    pub(crate) async fn send(
        &mut self,
        bytes: &[u8],
        replies: impl IntoIterator<Item = Expected>,
    ) -> Result<(), String> {
        // Queue first: the read loop may see an answer before `write_all` returns.
        lock(&self.replies).extend(replies);
        match tokio::time::timeout(self.timeout, self.write.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("writing to a shard subscriber connection: {e}")),
            Err(_) => Err("a shard subscriber connection stopped accepting writes".to_owned()),
        }
    }
}

/// Appends one `SSUBSCRIBE` or `SUNSUBSCRIBE` of `group`'s channel to a pipeline.
pub(crate) fn push_command(
    shared: &Shared,
    bytes: &mut Vec<u8>,
    expected: &mut Vec<Expected>,
    group: &GroupName,
    subscribe: bool,
) {
    let verb: &[u8] = if subscribe {
        b"SSUBSCRIBE"
    } else {
        b"SUNSUBSCRIBE"
    };
    let channel = shared.keys.channel(group);
    bytes.extend(resp::command([verb, channel.as_bytes()]));
    expected.push(Expected {
        reply: Reply::Ignore,
        group: Some(group.clone()),
        unsubscribe: !subscribe,
    });
}

/// The read half of a shard connection.
#[derive(Debug)]
struct ShardReader {
    read: OwnedReadHalf,
    buf: BytesMut,
    replies: Replies,
}

/// Numbers shard tasks, for [`ShardWriter::owner`].
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

/// Runs one shard's subscriber until `token` is cancelled (the supervisor does when the
/// shard leaves the slot map, or the layer closes).
pub(crate) async fn run(
    shared: Arc<Shared>,
    health: Arc<ShardHealth>,
    commands: Commands,
    token: CancellationToken,
) {
    let Some(cluster) = shared.cluster.as_ref() else {
        return;
    };
    let config = &shared.config;
    let addr = health.key.addr();
    // Relaxed: only uniqueness matters.
    let owner = NEXT_OWNER.fetch_add(1, Ordering::Relaxed);
    let mut backoff = Backoff::new(config.reconnect_min_delay, config.reconnect_max_delay);
    let mut failures_in_a_row = 0u64;
    let mut ever_connected = false;
    loop {
        let attempt = tokio::select! {
            () = token.cancelled() => break,
            attempt = tokio::time::timeout(config.connect_timeout, connect(&shared, &health.key, owner)) => attempt,
        };
        match attempt
            .unwrap_or_else(|_| Err(format!("no connection within {:?}", config.connect_timeout)))
        {
            Ok((mut reader, writer)) => {
                if ever_connected {
                    health.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                ever_connected = true;
                failures_in_a_row = 0;
                let started = Instant::now();
                let end = session(&shared, &health, &commands, &mut reader, writer, &token).await;
                health.ready.store(false, Ordering::Release);
                health.probe.reset();
                cluster.remove_writer(&health.key, owner).await;
                if end == End::Closed {
                    break;
                }
                tracing::warn!(prefix = %config.prefix, shard = %addr, "shard subscriber connection lost; refreshing the slot map");
                cluster.request_refresh();
                if started.elapsed() >= config.reconnect_max_delay.max(Duration::from_secs(1)) {
                    backoff.reset();
                }
            }
            Err(why) => {
                shared.stats.connect_failures.increment();
                if failures_in_a_row == 0 {
                    tracing::warn!(prefix = %config.prefix, shard = %addr, error = %why, "cannot reach a redis cluster shard; retrying with backoff");
                    cluster.request_refresh();
                }
                failures_in_a_row = failures_in_a_row.saturating_add(1);
            }
        }
        tokio::select! {
            () = token.cancelled() => break,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    health.ready.store(false, Ordering::Release);
    cluster.remove_writer(&health.key, owner).await;
}

/// Opens a shard connection and authenticates it.
async fn connect(
    shared: &Shared,
    key: &ShardKey,
    owner: u64,
) -> Result<(ShardReader, ShardWriter), String> {
    let stream = TcpStream::connect((key.host.as_str(), key.port))
        .await
        .map_err(|e| format!("connecting to {}: {e}", key.addr()))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("setting TCP_NODELAY: {e}"))?;
    let (read, write) = stream.into_split();
    let replies = Replies::default();
    let mut reader = ShardReader {
        read,
        buf: BytesMut::with_capacity(READ_CHUNK),
        replies: replies.clone(),
    };
    let mut writer = ShardWriter {
        write,
        applied: HashSet::new(),
        replies,
        timeout: shared.config.command_timeout,
        owner,
    };
    let url = shared.cluster.as_ref().map(|c| &c.url);
    if let Some(password) = url.and_then(|u| u.password.as_deref()) {
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(user) = url.and_then(|u| u.username.as_deref()) {
            args.push(user.as_bytes());
        }
        args.push(password.as_bytes());
        writer
            .write
            .write_all(&resp::command(args))
            .await
            .map_err(|e| format!("sending AUTH: {e}"))?;
        match next_frame(&mut reader).await? {
            Frame::Simple(ok) if ok.eq_ignore_ascii_case(b"OK") => {}
            Frame::Error(e) => {
                return Err(format!("AUTH refused: {}", String::from_utf8_lossy(&e)));
            }
            other => return Err(format!("unexpected AUTH answer {other:?}")),
        }
    }
    Ok((reader, writer))
}

async fn next_frame(reader: &mut ShardReader) -> Result<Frame, String> {
    loop {
        if let Some(frame) = resp::parse(&mut reader.buf).map_err(|e| e.to_string())? {
            return Ok(frame);
        }
        reader.buf.reserve(READ_CHUNK);
        match reader.read.read_buf(&mut reader.buf).await {
            Ok(0) => return Err("redis closed the connection".to_owned()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading from redis: {e}")),
        }
    }
}

/// One connected period: subscribe, install the writer, read and probe until lost.
async fn session(
    shared: &Shared,
    health: &ShardHealth,
    commands: &Commands,
    reader: &mut ShardReader,
    mut writer: ShardWriter,
    token: &CancellationToken,
) -> End {
    let Some(cluster) = shared.cluster.as_ref() else {
        return End::Closed;
    };
    let seen_here: Vec<_>;
    {
        // As in the single-node supervisor: holding the lock while reading the wanted set
        // orders this against every concurrent change of it.
        let mut shards = cluster.shards.lock().await;
        let Some(index) = shards.index_of(&health.key) else {
            // The shard left the map meanwhile; the supervisor cancels this task.
            return End::Closed;
        };
        let groups: Vec<GroupName> = shared
            .wanted_snapshot()
            .into_iter()
            .filter(|g| shards.owner_of_group(shared, g) == Some(index))
            .collect();
        // The groups on this shard whose positions this node saw: checked for lost
        // writes below, before the first message is read from the new connection.
        seen_here = shared
            .seen
            .snapshot()
            .into_iter()
            .filter(|(g, _, _)| shards.owner_of_group(shared, g) == Some(index))
            .collect();
        let mut bytes = Vec::new();
        let mut expected = Vec::with_capacity(groups.len() + 2);
        if health.probed {
            bytes.extend(resp::command([
                &b"SSUBSCRIBE"[..],
                health.probe.channel().as_bytes(),
            ]));
            expected.push(Expected::plain(Reply::Ignore));
        }
        for group in &groups {
            push_command(shared, &mut bytes, &mut expected, group, true);
        }
        bytes.extend(resp::command([&b"PING"[..]]));
        expected.push(Expected::plain(Reply::Ready));
        if let Err(why) = writer.send(&bytes, expected).await {
            tracing::warn!(prefix = %shared.config.prefix, shard = %health.key.addr(), error = %why, "subscribing on a shard failed");
            return End::Lost;
        }
        writer.applied = groups.into_iter().collect();
        shards.writers.insert(health.key.clone(), writer);
    }
    health.probe.reset();
    let mut history = commands.clone();
    // A shard that failed over may have lost acknowledged writes: such groups get a new
    // epoch (one script call per group: one slot per call) and this node's streams a reset.
    if let Err(why) = lost_writes::check_groups(shared, &mut history, &seen_here, 1, token).await {
        tracing::warn!(prefix = %shared.config.prefix, shard = %health.key.addr(), error = %why, "lost-writes check failed");
        return End::Lost;
    }
    tokio::select! {
        end = read_loop(shared, health, reader, &mut history, token) => end,
        () = probe_loop(shared, health, commands.clone()) => End::Lost,
    }
}

/// Sends a probe through this shard every interval; never returns.
async fn probe_loop(shared: &Shared, health: &ShardHealth, mut commands: Commands) {
    if !health.probed {
        return std::future::pending().await;
    }
    let prefix = shared.config.prefix.as_str();
    let interval = shared.config.probe_interval;
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let seq = health.probe.start(prefix);
        let mut cmd = redis::cmd("SPUBLISH");
        cmd.arg(health.probe.channel()).arg(seq);
        let publish = cmd.query_async::<redis::Value>(&mut commands);
        if let Ok(Err(e)) = tokio::time::timeout(shared.config.command_timeout, publish).await {
            tracing::debug!(prefix, shard = %health.key.addr(), error = %e, "probe publish failed");
        }
    }
}

/// Reads a shard connection until it is lost or `token` fires.
async fn read_loop(
    shared: &Shared,
    health: &ShardHealth,
    reader: &mut ShardReader,
    commands: &mut Commands,
    token: &CancellationToken,
) -> End {
    let interval = shared.config.health_check_interval;
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    loop {
        loop {
            match resp::parse(&mut reader.buf) {
                Ok(Some(frame)) => {
                    if handle_frame(shared, health, &reader.replies, commands, frame, token).await
                        == Some(End::Closed)
                    {
                        return End::Closed;
                    }
                    last_heard = Instant::now();
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(prefix = %shared.config.prefix, shard = %health.key.addr(), error = %e, "garbled shard connection; reconnecting");
                    return End::Lost;
                }
            }
        }
        reader.buf.reserve(READ_CHUNK);
        tokio::select! {
            () = token.cancelled() => return End::Closed,
            _ = tick.tick() => {
                let quiet = last_heard.elapsed();
                if quiet >= interval.saturating_mul(2) {
                    tracing::warn!(prefix = %shared.config.prefix, shard = %health.key.addr(), ?quiet, "shard stopped answering; reconnecting");
                    return End::Lost;
                }
                if quiet >= interval && ping(shared, &health.key).await.is_err() {
                    return End::Lost;
                }
            }
            // `read_buf` is cancel-safe.
            read = reader.read.read_buf(&mut reader.buf) => match read {
                Ok(0) => return End::Lost,
                Ok(_) => last_heard = Instant::now(),
                Err(e) => {
                    tracing::debug!(prefix = %shared.config.prefix, shard = %health.key.addr(), error = %e, "shard connection failed");
                    return End::Lost;
                }
            },
        }
    }
}

async fn ping(shared: &Shared, key: &ShardKey) -> Result<(), String> {
    let Some(cluster) = shared.cluster.as_ref() else {
        return Err("not a cluster layer".to_owned());
    };
    let mut shards = cluster.shards.lock().await;
    match shards.writers.get_mut(key) {
        Some(writer) => {
            writer
                .send(
                    &resp::command([&b"PING"[..]]),
                    [Expected::plain(Reply::Ignore)],
                )
                .await
        }
        None => Err("no shard connection".to_owned()),
    }
}

/// Handles one frame; `Some(End::Closed)` when the task was cancelled while waiting for
/// room in `Incoming`.
async fn handle_frame(
    shared: &Shared,
    health: &ShardHealth,
    replies: &Replies,
    commands: &mut Commands,
    frame: Frame,
    token: &CancellationToken,
) -> Option<End> {
    match frame {
        Frame::Array(Some(items)) => {
            let mut items = items.into_iter();
            let Some(Frame::Bulk(Some(kind))) = items.next() else {
                tracing::debug!("unexpected frame on a shard connection");
                return None;
            };
            match &kind[..] {
                b"smessage" => match (items.next(), items.next()) {
                    (Some(Frame::Bulk(Some(channel))), Some(Frame::Bulk(Some(data)))) => {
                        deliver(shared, health, commands, &channel, data, token).await
                    }
                    _ => {
                        shared.stats.decode_errors.increment();
                        None
                    }
                },
                b"sunsubscribe" => {
                    let channel = match items.next() {
                        Some(Frame::Bulk(Some(channel))) => channel,
                        _ => Bytes::new(),
                    };
                    sunsubscribed(shared, health, replies, &channel);
                    None
                }
                b"ssubscribe" => {
                    // A confirmed re-subscription: first what it missed (`gap.rs`).
                    match answer(health, replies) {
                        Some(group) => resubscribed(shared, health, commands, group, token).await,
                        None => None,
                    }
                }
                b"pong" => {
                    answer(health, replies);
                    None
                }
                _ => None,
            }
        }
        Frame::Simple(pong) if pong.eq_ignore_ascii_case(b"PONG") => {
            answer(health, replies);
            None
        }
        Frame::Error(e) => {
            refused(shared, health, replies, &e);
            None
        }
        _ => None,
    }
}

/// An `sunsubscribe` frame: the answer to our `SUNSUBSCRIBE`, or Redis dropping a channel
/// whose slot left this shard (a migration or a failover): then the group is re-homed.
fn sunsubscribed(shared: &Shared, health: &ShardHealth, replies: &Replies, channel: &[u8]) {
    let ours = lock(replies).front().is_some_and(|front| {
        front.unsubscribe
            && front
                .group
                .as_ref()
                .is_some_and(|g| shared.keys.channel(g).as_bytes() == channel)
    });
    if ours {
        answer(health, replies);
        return;
    }
    let Some(cluster) = shared.cluster.as_ref() else {
        return;
    };
    if channel == health.probe.channel().as_bytes() {
        tracing::info!(prefix = %shared.config.prefix, shard = %health.key.addr(), "probe channel's slot moved; refreshing the slot map");
    } else if let Some(group) = shared.wanted_group_of_channel(channel) {
        tracing::info!(prefix = %shared.config.prefix, shard = %health.key.addr(), %group, "redis dropped a shard channel (slot moved); re-subscribing");
        cluster.mark_moved(group);
    }
    cluster.request_refresh();
}

/// An error answer: pops the command it answers; `MOVED`/`ASK` re-home its group.
fn refused(shared: &Shared, health: &ShardHealth, replies: &Replies, error: &[u8]) {
    let front = lock(replies).pop_front();
    let moved = error.starts_with(b"MOVED") || error.starts_with(b"ASK");
    match front {
        Some(Expected {
            group: Some(group),
            reply,
            ..
        }) if moved => {
            release(health, reply);
            if let Some(cluster) = shared.cluster.as_ref() {
                if shared.is_wanted(&group) {
                    cluster.mark_moved(group);
                }
                cluster.request_refresh();
            }
        }
        Some(expected) => {
            tracing::warn!(prefix = %shared.config.prefix, shard = %health.key.addr(), error = %String::from_utf8_lossy(error), "redis refused a shard subscriber command");
            if moved && let Some(cluster) = shared.cluster.as_ref() {
                cluster.request_refresh();
            }
            release(health, expected.reply);
        }
        None => {}
    }
}

/// Resolves the oldest command waiting for its answer; returns the group it subscribed,
/// if it was an `SSUBSCRIBE` of a group.
fn answer(health: &ShardHealth, replies: &Replies) -> Option<GroupName> {
    let expected = lock(replies).pop_front()?;
    release(health, expected.reply);
    if expected.unsubscribe {
        None
    } else {
        expected.group
    }
}

/// A group's subscription on this shard is confirmed: if this node delivered the group
/// before, what was published since comes from history first.
async fn resubscribed(
    shared: &Shared,
    health: &ShardHealth,
    commands: &mut Commands,
    group: GroupName,
    token: &CancellationToken,
) -> Option<End> {
    let cluster = shared.cluster.as_ref()?;
    let since = cluster.positions.last(&group)?;
    let missed = gap::fill(shared, health, commands, &group, &since, None).await;
    hand_over(shared, missed, token).await
}

/// Hands messages to `Incoming` in order, waiting for room, remembering each position.
async fn hand_over(
    shared: &Shared,
    messages: Vec<Message>,
    token: &CancellationToken,
) -> Option<End> {
    for message in messages {
        if let Some(cluster) = shared.cluster.as_ref() {
            cluster.positions.record(shared, &message);
        }
        tokio::select! {
            () = token.cancelled() => return Some(End::Closed),
            permit = shared.tx.reserve() => {
                // An error means nobody reads `Incoming` any more.
                if let Ok(permit) = permit {
                    permit.send(message);
                }
            }
        }
    }
    None
}

fn release(health: &ShardHealth, reply: Reply) {
    match reply {
        Reply::Notify(tx) => {
            // The caller may have given up waiting.
            let _ = tx.send(());
        }
        Reply::Ready => health.ready.store(true, Ordering::Release),
        Reply::Ignore => {}
    }
}

/// Decodes a shard message and hands it to `Incoming`, waiting for room.
async fn deliver(
    shared: &Shared,
    health: &ShardHealth,
    commands: &mut Commands,
    channel: &[u8],
    data: Bytes,
    token: &CancellationToken,
) -> Option<End> {
    if health.probed && channel == health.probe.channel().as_bytes() {
        health.probe.answered(&shared.config.prefix, &data);
        return None;
    }
    let group = shared.wanted_group_of_channel(channel)?;
    let message = match envelope::decode(group, data) {
        Ok(message) => message,
        Err(e) => {
            shared.stats.decode_errors.increment();
            tracing::warn!(prefix = %shared.config.prefix, error = %e, "malformed envelope skipped");
            return None;
        }
    };
    shared.stats.received.increment();
    match shared.seen.live(&message) {
        Live::Deliver => {}
        // Published under an epoch this node already replaced: its clients were reset.
        Live::Retired => return None,
        Live::Reassigned => {
            return match lost_writes::reset_reassigned(shared, &message, token).await {
                Ok(()) => None,
                Err(why) => {
                    tracing::warn!(prefix = %shared.config.prefix, error = %why, "reconnecting to reset a group");
                    Some(End::Lost)
                }
            };
        }
    }
    let last = shared
        .cluster
        .as_ref()
        .and_then(|c| c.positions.last(&message.group))
        .filter(|last| last.epoch == message.epoch);
    if last
        .as_ref()
        .is_some_and(|last| message.offset <= last.offset)
    {
        // Already delivered from history by a gap repair (a live offset this node never
        // saw live, so not a lost write: that check came first).
        return None;
    }
    let mut batch = Vec::new();
    if let Some(last) = last
        && message.offset > last.offset.saturating_add(1)
    {
        let upto = message.offset.saturating_sub(1);
        batch = gap::fill(shared, health, commands, &message.group, &last, Some(upto)).await;
    }
    batch.push(message);
    hand_over(shared, batch, token).await
}
