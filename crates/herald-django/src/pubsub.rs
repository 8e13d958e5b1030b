//! The `RedisPubSubChannelLayer` backend: herald subscribes to the channels groups it
//! holds, and publishes into them.
//!
//! # Receiving, exactly once across nodes
//!
//! Django's `group_send` is one `PUBLISH <prefix>__group__<group>`, and every subscribed
//! herald node hears it. Before publishing into herald's layer, a node claims the message
//! in Redis (on the shard the message came from) with one script over a hash keyed by
//! `sha256(channel, payload)`:
//!
//! - each node counts how often it has heard these exact bytes (`HINCRBY hash <node>`),
//! - the hash remembers how many occurrences were delivered (`#delivered`),
//! - a node whose count exceeds `#delivered` delivers and raises `#delivered` to its count.
//!
//! So the k-th identical copy is delivered by whichever node hears its k-th copy first,
//! and by no other. pubsub payloads carry no random prefix, so this counting is what keeps
//! two genuinely repeated messages (the same text twice) from being merged, while a node
//! that subscribed late cannot deliver an old copy twice. The hash expires
//! [`DEDUP_WINDOW_SECS`] after its last use. A node that claims a message and dies before
//! publishing loses it (at most once).
//!
//! One case counting cannot tell apart: if every node subscribed to a channel is new (a
//! full restart of the herald nodes) and Django publishes bytes identical to a message
//! delivered less than [`DEDUP_WINDOW_SECS`] before, the new nodes' counts start below
//! `#delivered` and that copy is not delivered; it is counted in `skipped`. The core
//! backend (`RedisChannelLayer`, Django's default) has no such case: each message is
//! popped by exactly one node.
//!
//! Herald's own `group_send` comes back to herald's subscribers; messages whose `type` is
//! the configured `message_type` are skipped on receive, so nothing loops.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herald_core::{GroupName, Layer, Payload, PayloadKind};
use herald_redis::resp::{self, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::bridge::{SendReport, Shared};
use crate::codec::{Body, ChannelsMessage, Event, Targets};
use crate::error::DjangoError;
use crate::ingest::{Ingest, payload_for};
use crate::keys::consistent_hash;
use crate::stats::bump;
use herald_core::Backoff;

/// How long a claim hash lives after its last use. Every node hears a PUBLISH within
/// milliseconds, so this is far beyond any real spread; it is kept short because of the
/// one case counting cannot tell apart (see the module docs).
pub const DEDUP_WINDOW_SECS: u64 = 15;

/// The claim; see the module docs. KEYS[1]: the hash. ARGV: node id, window seconds.
/// Returns 1 when this node delivers.
const CLAIM_SCRIPT: &str = r#"
local heard = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local delivered = tonumber(redis.call('HGET', KEYS[1], '#delivered') or '0')
redis.call('EXPIRE', KEYS[1], ARGV[2])
if heard > delivered then
    redis.call('HSET', KEYS[1], '#delivered', heard)
    return 1
end
return 0
"#;

/// Why a subscription change is not confirmed (it is still recorded, and applied when
/// the connection is back).
#[derive(Debug)]
pub(crate) enum Unconfirmed {
    /// Redis answered with an error, or the connection broke during the command.
    Redis(redis::RedisError),
    /// The shard's connection is down right now.
    Disconnected,
}

/// The answer to a [`Command`].
pub(crate) type Reply = oneshot::Sender<Result<(), Unconfirmed>>;

/// The claim script, hashed once (it is run for every message heard).
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CLAIM_SCRIPT));

/// A change to one shard's subscriptions, answered once Redis confirmed it.
#[derive(Debug)]
pub(crate) enum Command {
    /// One more herald group needs this pub/sub channel.
    Add(String, Reply),
    /// One herald group less needs it; unsubscribed at zero.
    Remove(String, Reply),
}

/// Capacity of each shard task's command queue. Commands come from group joins and
/// leaves, which the server issues one at a time, so a small bound is plenty.
pub(crate) const COMMAND_QUEUE: usize = 64;

/// The pub/sub channel and shard for a herald group.
pub(crate) fn channel_for(
    shared: &Shared,
    group: &GroupName,
) -> Result<(usize, String), DjangoError> {
    let channels_group = shared
        .map
        .to_channels(group)
        .ok_or_else(|| DjangoError::Unmappable(group.clone()))?;
    let channel = shared.keys.pubsub_group_channel(&channels_group);
    // channels_redis' pubsub layer hashes the full channel name, prefix included.
    let shard = consistent_hash(&channel, shared.shards.len());
    Ok((shard, channel))
}

/// Django's pubsub `group_send`, done by herald: one PUBLISH of bare msgpack (or a bare
/// Fernet token), no random prefix, no `__asgi_channel__`.
pub(crate) async fn group_send(
    shared: &Shared,
    group: &GroupName,
    payload: &Payload,
) -> Result<SendReport, DjangoError> {
    let (shard, channel) = channel_for(shared, group)?;
    let body = match payload.kind() {
        PayloadKind::Text => Body::Text(String::from_utf8_lossy(payload.data()).into_owned()),
        PayloadKind::Binary => Body::Bytes(payload.data().clone()),
    };
    let message = ChannelsMessage {
        msg_type: Some(shared.config.message_type.clone()),
        body: Some(body),
        targets: Targets::None,
        event: Event::default(),
    };
    let mut conn = shared.conn(shard)?;
    let receivers: u64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(
            shared
                .codec
                .encode(&message)
                .inspect_err(|_| shared.counters.encrypt_failure())?,
        )
        .query_async(&mut conn)
        .await
        .map_err(|source| DjangoError::Redis { shard, source })?;
    bump(&shared.counters.sent);
    Ok(SendReport {
        // PUBLISH counts subscribed connections (herald's own included): processes, not
        // consumers, but the closest thing pub/sub reports.
        members: usize::try_from(receivers).unwrap_or(usize::MAX),
        queued: 1,
        full: 0,
    })
}

/// Owns one shard's SUBSCRIBE connection until shutdown: applies commands, handles
/// messages, and after a lost connection reconnects with backoff and re-subscribes.
///
/// The connection is read by hand ([`herald_redis::resp`]), one frame at a time and only
/// after the previous message was handled, so a slow layer leaves the backlog in Redis
/// (bounded there by `client-output-buffer-limit pubsub`, which disconnects a hopeless
/// subscriber) instead of in herald's memory.
pub(crate) async fn run_shard<L: Layer>(
    shared: Arc<Shared>,
    ingest: Arc<Ingest<L>>,
    shard: usize,
    mut commands: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) {
    // channel -> number of herald groups on this node that need it.
    let mut wanted: HashMap<String, usize> = HashMap::new();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut failing = false;
    // Set after any failure: the next connection attempt waits out the backoff first.
    let mut delay = false;
    'connect: loop {
        // Commands keep being answered while disconnected, so joins do not hang; what
        // they change in `wanted` is applied once connected.
        if delay && !wait_answering(&mut backoff, &mut commands, &mut wanted, &shutdown).await {
            return;
        }
        delay = true;
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = Subscriber::connect(&shared.shards[shard].client) => c,
        };
        let mut sub = match connected {
            Ok(sub) => sub,
            Err(error) => {
                if !failing {
                    tracing::warn!(shard, %error, "django bridge cannot reach redis pub/sub; retrying");
                    failing = true;
                }
                continue;
            }
        };
        // Confirmations still owed by Redis, in order: one per channel subscribed or
        // unsubscribed (re-subscriptions are owed to nobody).
        let mut owed: VecDeque<Option<Reply>> = VecDeque::new();
        if !wanted.is_empty() {
            let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
            args.extend(wanted.keys().map(|c| c.as_bytes()));
            if let Err(error) = sub.send(&resp::command(args)).await {
                tracing::warn!(shard, %error, "cannot re-subscribe django groups; reconnecting");
                failing = true;
                continue;
            }
            owed.extend(wanted.keys().map(|_| None));
        }
        if failing {
            // `failing` stays set: each loss below warns on its own.
            tracing::info!(shard, "django bridge reconnected to redis pub/sub");
        }
        backoff.reset();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                // New commands only while few confirmations are owed: bounded.
                command = commands.recv(), if owed.len() < COMMAND_QUEUE => {
                    let Some(command) = command else { return };
                    let (channel, reply, add) = match command {
                        Command::Add(c, r) => (c, r, true),
                        Command::Remove(c, r) => (c, r, false),
                    };
                    let verb: &[u8] = match change(&mut wanted, &channel, add) {
                        Some(true) => b"SUBSCRIBE",
                        Some(false) => b"UNSUBSCRIBE",
                        None => {
                            let _ = reply.send(Ok(()));
                            continue;
                        }
                    };
                    if let Err(error) = sub.send(&resp::command([verb, channel.as_bytes()])).await {
                        // The caller may have given up waiting; nothing to do then.
                        let _ = reply.send(Err(Unconfirmed::Redis(io_error(&error))));
                        tracing::warn!(shard, %error, "django pub/sub connection failed; reconnecting");
                        failing = true;
                        continue 'connect;
                    }
                    owed.push_back(Some(reply));
                }
                frame = sub.next_frame() => {
                    let frame = match frame {
                        Ok(frame) => frame,
                        Err(error) => {
                            tracing::warn!(shard, %error, "django pub/sub connection lost; reconnecting");
                            failing = true;
                            fail_owed(&mut owed);
                            continue 'connect;
                        }
                    };
                    match classify(frame) {
                        Heard::Message(channel, payload) => {
                            handle_message(&shared, &ingest, shard, &channel, &payload).await;
                        }
                        Heard::Confirmation => {
                            if let Some(Some(reply)) = owed.pop_front() {
                                let _ = reply.send(Ok(()));
                            }
                        }
                        Heard::Other => {}
                        Heard::Error(error) => {
                            tracing::warn!(shard, error, "django pub/sub connection got an error; reconnecting");
                            failing = true;
                            fail_owed(&mut owed);
                            continue 'connect;
                        }
                    }
                }
            }
        }
    }
}

/// Answers every owed confirmation with "disconnected" (applied again on reconnect).
fn fail_owed(owed: &mut VecDeque<Option<Reply>>) {
    for reply in owed.drain(..).flatten() {
        let _ = reply.send(Err(Unconfirmed::Disconnected));
    }
}

fn io_error(why: &str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::other(why.to_owned()))
}

/// What one frame on the subscriber connection is.
enum Heard {
    /// `message <channel> <payload>`.
    Message(String, Bytes),
    /// `subscribe` / `unsubscribe` confirmation of one channel.
    Confirmation,
    /// Anything else pub/sub may send (e.g. a `pong`).
    Other,
    /// An error reply: the connection is not usable.
    Error(String),
}

fn classify(frame: Frame) -> Heard {
    match frame {
        Frame::Array(Some(items)) => {
            let kind = match items.first() {
                Some(Frame::Bulk(Some(kind))) => kind.clone(),
                _ => return Heard::Other,
            };
            match (&kind[..], items.get(1), items.get(2)) {
                (
                    b"message",
                    Some(Frame::Bulk(Some(channel))),
                    Some(Frame::Bulk(Some(payload))),
                ) => match std::str::from_utf8(channel) {
                    Ok(channel) => Heard::Message(channel.to_owned(), payload.clone()),
                    Err(_) => Heard::Other,
                },
                (b"subscribe" | b"unsubscribe", _, _) => Heard::Confirmation,
                _ => Heard::Other,
            }
        }
        Frame::Error(e) => Heard::Error(String::from_utf8_lossy(&e).into_owned()),
        _ => Heard::Other,
    }
}

/// How much is read from the socket at a time; a frame larger than this is read in
/// several calls, but nothing past the frame being completed is requested eagerly.
const READ_CHUNK: usize = 16 * 1024;

/// A hand-driven RESP2 subscriber connection.
struct Subscriber {
    read: tokio::net::tcp::OwnedReadHalf,
    write: tokio::net::tcp::OwnedWriteHalf,
    buf: BytesMut,
}

impl Subscriber {
    /// Connects (TCP only, like the rest of the bridge's Redis features) and
    /// authenticates with the URL's credentials.
    async fn connect(client: &redis::Client) -> Result<Self, String> {
        let info = client.get_connection_info();
        let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
            return Err("only plain TCP redis:// addresses are supported".to_owned());
        };
        let connect = tokio::net::TcpStream::connect((host.as_str(), *port));
        let stream = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .map_err(|_| format!("connecting to {host}:{port}: timed out"))?
            .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let mut sub = Self {
            read,
            write,
            buf: BytesMut::with_capacity(READ_CHUNK),
        };
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = settings.username() {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            sub.send(&resp::command(args)).await?;
            match tokio::time::timeout(Duration::from_secs(5), sub.next_frame()).await {
                Ok(Ok(Frame::Simple(ok))) if ok.eq_ignore_ascii_case(b"OK") => {}
                Ok(Ok(Frame::Error(e))) => {
                    return Err(format!("AUTH refused: {}", String::from_utf8_lossy(&e)));
                }
                Ok(Ok(_)) => return Err("unexpected AUTH answer".to_owned()),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err("no AUTH answer within 5 s".to_owned()),
            }
        }
        Ok(sub)
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let write = self.write.write_all(bytes);
        match tokio::time::timeout(Duration::from_secs(5), write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("writing to redis: {e}")),
            Err(_) => Err("writing to redis timed out".to_owned()),
        }
    }

    /// The next whole frame; reads the socket only while no whole frame is buffered.
    /// Cancel-safe: a read that loses a `select!` race reads nothing.
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

/// Applies a refcount change; `Some(true)` = subscribe now, `Some(false)` = unsubscribe.
fn change(wanted: &mut HashMap<String, usize>, channel: &str, add: bool) -> Option<bool> {
    if add {
        let count = wanted.entry(channel.to_owned()).or_insert(0);
        *count += 1;
        (*count == 1).then_some(true)
    } else {
        match wanted.get_mut(channel) {
            Some(count) if *count > 1 => {
                *count -= 1;
                None
            }
            Some(_) => {
                wanted.remove(channel);
                Some(false)
            }
            None => None,
        }
    }
}

/// Sleeps the backoff while still answering commands (recording them in `wanted` for the
/// next connection). Returns `false` on shutdown.
async fn wait_answering(
    backoff: &mut Backoff,
    commands: &mut mpsc::Receiver<Command>,
    wanted: &mut HashMap<String, usize>,
    shutdown: &CancellationToken,
) -> bool {
    let sleep = crate::wait_backoff(backoff, shutdown);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            alive = &mut sleep => return alive,
            command = commands.recv() => match command {
                None => return false,
                Some(Command::Add(channel, reply)) => {
                    change(wanted, &channel, true);
                    // Recorded for the next connection, but not in force yet: say so.
                    let _ = reply.send(Err(Unconfirmed::Disconnected));
                }
                Some(Command::Remove(channel, reply)) => {
                    // Nothing is subscribed while disconnected, so a removal is complete.
                    change(wanted, &channel, false);
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }
}

/// Runs the claim script, retrying briefly: the first command after a lost connection
/// fails while the shared connection reconnects, and the message must not be lost to that.
async fn claim(shared: &Shared, shard: usize, key: &str) -> redis::RedisResult<i64> {
    const ATTEMPTS: u32 = 4;
    let mut attempt = 1;
    loop {
        let Some(mut conn) = shared.shards[shard].conn.get().cloned() else {
            return Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "django redis shard not connected yet",
            )));
        };
        let result = CLAIM
            .key(key)
            .arg(&shared.node_id)
            .arg(DEDUP_WINDOW_SECS)
            .invoke_async(&mut conn)
            .await;
        match result {
            Err(_) if attempt < ATTEMPTS => {
                // 100, 200, 400 ms: well inside the dedup window, so a retried claim is
                // still compared with the other nodes' claims of the same message.
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// One PUBLISH heard: decode, skip herald's own, claim, publish into herald's layer.
async fn handle_message<L: Layer>(
    shared: &Shared,
    ingest: &Ingest<L>,
    shard: usize,
    channel: &str,
    raw: &[u8],
) {
    bump(&shared.counters.received);
    let Some(group) = shared
        .keys
        .channels_group_of_pubsub(channel)
        .and_then(|c| shared.map.to_herald(c))
    else {
        shared.counters.decode_error(&format_args!(
            "pub/sub channel {channel:?} names no herald group"
        ));
        return;
    };
    let decoded = match shared.codec.decode(raw) {
        Ok(decoded) => decoded,
        Err(error) => {
            shared.counters.decode_error(&error);
            return;
        }
    };
    if decoded.msg_type.as_deref() == Some(shared.config.message_type.as_str()) {
        bump(&shared.counters.skipped);
        return;
    }
    let Some(payload) = payload_for(&decoded, &group, shared) else {
        return;
    };
    let key = shared.keys.dedup_key(channel, raw);
    let claimed = claim(shared, shard, &key).await;
    match claimed {
        Ok(1) => ingest.publish(&group, &payload, None).await,
        Ok(_) => {
            bump(&shared.counters.skipped);
        }
        Err(error) => {
            // Without the claim there is no way to know whether another node delivers;
            // skipping keeps "at most once".
            bump(&shared.counters.publish_failures);
            tracing::warn!(shard, %error, "cannot claim a django pub/sub message; dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcounts() {
        let mut wanted = HashMap::new();
        assert_eq!(change(&mut wanted, "a", true), Some(true));
        assert_eq!(change(&mut wanted, "a", true), None);
        assert_eq!(change(&mut wanted, "a", false), None);
        assert_eq!(change(&mut wanted, "a", false), Some(false));
        assert_eq!(change(&mut wanted, "a", false), None);
        assert!(wanted.is_empty());
    }
}
