//! The Lua scripts behind `publish` and `history`, and the parsing of their replies.
//!
//! Each call is one `EVALSHA` (the `redis` crate loads the script and retries once when
//! Redis answers `NOSCRIPT`, e.g. after a restart), so a publish costs one round trip and
//! a history read sees the offset, epoch and stream at one instant.
//!
//! Stream entry IDs are `{offset}-0`, which keeps them increasing within an epoch and lets
//! `XRANGE` start exactly after a client's offset. Each entry has the fields `k` (kind
//! byte), `d` (payload) and `t` (publish time, Unix ms, from Redis' clock so that all
//! nodes agree).

use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{Epoch, GroupName, History, Message, Payload, Position};
use redis::Value;

use crate::envelope;
use crate::keys::Keys;

/// Publishes a batch of messages: for each, creates the group's epoch if it has none,
/// takes the next offset, appends to the history stream, refreshes the expiry of the
/// group's keys and PUBLISHes the envelope.
///
/// KEYS: for message i, `meta` at 2i-1 and `stream` at 2i.
/// ARGV: ttl ms, max_len, candidate epoch, a once-key ('' for none) and its lifetime in
/// ms, then for message i: channel, kind, payload.
/// Returns: offset and epoch of each message, flattened; an empty array, publishing
/// nothing, when the once-key already exists (the message was published before).
const PUBLISH_LUA: &str = r#"
local ttl = tonumber(ARGV[1])
local max_len = tonumber(ARGV[2])
local candidate = ARGV[3]
if ARGV[4] ~= '' and not redis.call('SET', ARGV[4], '1', 'NX', 'PX', ARGV[5]) then
  return {}
end
local now = redis.call('TIME')
local now_ms = string.format('%d', now[1] * 1000 + math.floor(now[2] / 1000))
local out = {}
for i = 1, #KEYS / 2 do
  local meta, stream = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 6 + (i - 1) * 3
  local channel, kind, data = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  if redis.call('HSETNX', meta, 'e', candidate) == 1 then
    -- A new history begins: entries left over from a lost one must not mix in.
    redis.call('DEL', stream)
  end
  local epoch = redis.call('HGET', meta, 'e')
  local offset = redis.call('HINCRBY', meta, 'o', 1)
  if max_len > 0 then
    redis.call('XADD', stream, 'MAXLEN', max_len, string.format('%d-0', offset),
      'k', kind, 'd', data, 't', now_ms)
    redis.call('PEXPIRE', stream, ttl)
  end
  redis.call('PEXPIRE', meta, ttl)
  redis.call('PUBLISH', channel,
    string.char(1) .. kind .. string.format('%d', offset) .. ':' .. epoch .. '\n' .. data)
  out[#out + 1] = offset
  out[#out + 1] = epoch
end
return out
"#;

/// Reads a group's current position and, when asked, the messages after a position.
///
/// KEYS: meta, stream.
/// ARGV: ttl ms, max age ms, candidate epoch, '1' if a position follows, its offset, its epoch.
/// Returns: last offset, epoch, 1 if recovered else 0, then offset, kind, payload per message.
const HISTORY_LUA: &str = r#"
local meta, stream = KEYS[1], KEYS[2]
if redis.call('HSETNX', meta, 'e', ARGV[3]) == 1 then
  -- Asking about a group creates its epoch, so the first publish keeps what was told.
  redis.call('HSET', meta, 'o', 0)
  redis.call('PEXPIRE', meta, ARGV[1])
  redis.call('DEL', stream)
end
local epoch = redis.call('HGET', meta, 'e')
local last = tonumber(redis.call('HGET', meta, 'o') or '0')
if ARGV[4] ~= '1' then
  return {last, epoch, 1}
end
local since = tonumber(ARGV[5])
if since == nil or ARGV[6] ~= epoch or since > last then
  return {last, epoch, 0}
end
if since == last then
  return {last, epoch, 1}
end
local first_id = string.format('%d-0', since + 1)
local entries = redis.call('XRANGE', stream, first_id, '+')
local first = entries[1]
if first == nil or first[1] ~= first_id then
  return {last, epoch, 0}
end
local now = redis.call('TIME')
local cutoff = now[1] * 1000 + math.floor(now[2] / 1000) - tonumber(ARGV[2])
local out = {last, epoch, 1}
for n, entry in ipairs(entries) do
  local kind, data, t = nil, nil, nil
  local fields = entry[2]
  for j = 1, #fields, 2 do
    local f = fields[j]
    if f == 'k' then kind = fields[j + 1]
    elseif f == 'd' then data = fields[j + 1]
    elseif f == 't' then t = tonumber(fields[j + 1]) end
  end
  -- The first message wanted is older than the history's age: the rest is not enough.
  if n == 1 and (t == nil or t < cutoff) then
    return {last, epoch, 0}
  end
  out[#out + 1] = tonumber(string.match(entry[1], '^(%d+)'))
  out[#out + 1] = kind or ''
  out[#out + 1] = data or ''
end
return out
"#;

static PUBLISH: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(PUBLISH_LUA));
static HISTORY: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(HISTORY_LUA));

/// A reply that does not have the shape the script returns: a bug, or a foreign script
/// under the same name.
#[derive(Debug, thiserror::Error)]
#[error("unexpected script reply: {0}")]
pub(crate) struct BadReply(&'static str);

/// The history settings as script arguments.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) max_age_ms: u64,
    pub(crate) max_len: usize,
}

impl Limits {
    pub(crate) fn new(max_age: Duration, max_len: usize) -> Self {
        // At least 1 ms: PEXPIRE 0 would delete the keys on the spot.
        let max_age_ms = u64::try_from(max_age.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Self {
            max_age_ms,
            max_len,
        }
    }
}

/// Runs the publish script for `items`; returns their positions in order. With `once =
/// Some((key, ms))`, nothing is published (and no position returned) if `key` exists;
/// else it is created to live `ms`.
pub(crate) async fn publish<C>(
    conn: &mut C,
    keys: &Keys,
    limits: Limits,
    items: &[(GroupName, Payload)],
    once: Option<(&str, u64)>,
) -> Result<Vec<Position>, ScriptError>
where
    C: redis::aio::ConnectionLike + Send,
{
    let candidate = Epoch::random();
    let mut invocation = PUBLISH.prepare_invoke();
    let (once_key, once_ms) = once.unwrap_or(("", 0));
    invocation
        .arg(limits.max_age_ms)
        .arg(limits.max_len)
        .arg(candidate.as_str())
        .arg(once_key)
        .arg(once_ms.max(1));
    for (group, payload) in items {
        invocation
            .key(keys.meta(group))
            .key(keys.stream(group))
            .arg(keys.channel(group))
            .arg(envelope::kind_of(payload))
            .arg(&payload.data()[..]);
    }
    let reply: Value = invocation.invoke_async(conn).await?;
    let Value::Array(values) = reply else {
        return Err(BadReply("publish reply is not an array").into());
    };
    if values.is_empty() && once.is_some() {
        return Ok(Vec::new());
    }
    if values.len() != items.len() * 2 {
        return Err(BadReply("publish reply has the wrong length").into());
    }
    let mut positions = Vec::with_capacity(items.len());
    let mut values = values.into_iter();
    while let (Some(offset), Some(epoch)) = (values.next(), values.next()) {
        positions.push(Position {
            offset: as_offset(offset)?,
            epoch: as_epoch(epoch)?,
        });
    }
    Ok(positions)
}

/// Runs the history script for `group`.
pub(crate) async fn history<C>(
    conn: &mut C,
    keys: &Keys,
    limits: Limits,
    group: &GroupName,
    since: Option<&Position>,
) -> Result<History, ScriptError>
where
    C: redis::aio::ConnectionLike + Send,
{
    let candidate = Epoch::random();
    let mut invocation = HISTORY.prepare_invoke();
    invocation
        .key(keys.meta(group))
        .key(keys.stream(group))
        // The keys live as long as the messages may: one bound serves as TTL and age.
        .arg(limits.max_age_ms)
        .arg(limits.max_age_ms)
        .arg(candidate.as_str());
    match since {
        Some(position) => invocation
            .arg("1")
            .arg(position.offset)
            .arg(position.epoch.as_str()),
        None => invocation.arg("0").arg(0).arg(""),
    };
    let reply: Value = invocation.invoke_async(conn).await?;
    let Value::Array(values) = reply else {
        return Err(BadReply("history reply is not an array").into());
    };
    if values.len() < 3 || (values.len() - 3) % 3 != 0 {
        return Err(BadReply("history reply has the wrong length").into());
    }
    let mut values = values.into_iter();
    let (Some(last), Some(epoch), Some(recovered)) = (values.next(), values.next(), values.next())
    else {
        return Err(BadReply("history reply is too short").into());
    };
    let current = Position {
        offset: as_offset(last)?,
        epoch: as_epoch(epoch)?,
    };
    let recovered = matches!(recovered, Value::Int(1));
    let mut messages = Vec::with_capacity(values.len() / 3);
    while let (Some(offset), Some(kind), Some(data)) = (values.next(), values.next(), values.next())
    {
        let kind = as_bytes(kind)?;
        let payload = envelope::payload_from_parts(&kind, as_bytes(data)?)
            .map_err(|_| BadReply("history entry has a bad kind or payload"))?;
        messages.push(Message {
            group: group.clone(),
            offset: as_offset(offset)?,
            epoch: current.epoch.clone(),
            payload,
        });
    }
    Ok(History {
        current,
        recovered,
        messages,
    })
}

/// Why a script call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScriptError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Reply(#[from] BadReply),
}

fn as_offset(value: Value) -> Result<u64, BadReply> {
    match value {
        Value::Int(n) => u64::try_from(n).map_err(|_| BadReply("negative offset")),
        _ => Err(BadReply("offset is not an integer")),
    }
}

fn as_epoch(value: Value) -> Result<Epoch, BadReply> {
    let bytes = as_bytes(value)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| BadReply("epoch is not UTF-8"))?;
    Ok(Epoch::new(text))
}

fn as_bytes(value: Value) -> Result<Bytes, BadReply> {
    match value {
        Value::BulkString(data) => Ok(Bytes::from(data)),
        Value::SimpleString(text) => Ok(Bytes::from(text)),
        _ => Err(BadReply("expected a string")),
    }
}
