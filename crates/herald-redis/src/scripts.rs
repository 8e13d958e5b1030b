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
use herald_core::{Epoch, GroupName, History, Message, Position, Published};
use redis::Value;

use crate::coalesce::Request;
use crate::envelope;
use crate::keys::Keys;

/// The history trim both publish scripts share, put in front of each (`with_trim`):
/// drops a stream's oldest entries while it holds more than `max_len` entries or
/// `max_bytes` bytes (payloads plus `overhead` each); returns the length and bytes left.
const TRIM_LUA: &str = r#"
local function trim(stream, len, bytes, max_len, max_bytes, overhead)
  while len > max_len or bytes > max_bytes do
    local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
    if oldest == nil then break end
    local fields, size = oldest[2], 0
    for j = 1, #fields, 2 do
      if fields[j] == 'd' then size = #fields[j + 1] end
    end
    redis.call('XDEL', stream, oldest[1])
    bytes = bytes - (size + overhead)
    len = len - 1
  end
  return len, bytes
end
"#;

/// `body` with [`TRIM_LUA`] in front, and `SPUBLISH` for `PUBLISH` when `sharded` (a
/// Redis Cluster: the message goes to the channel's shard only).
fn with_trim(body: &str, sharded: bool) -> redis::Script {
    let script = [TRIM_LUA, body].concat();
    if sharded {
        redis::Script::new(&script.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',"))
    } else {
        redis::Script::new(&script)
    }
}

/// Publishes a batch of messages, possibly of many groups and many requests (see
/// `coalesce.rs`): for each, creates the group's epoch if it has none, takes the next
/// offset, appends to the history stream (trimming the oldest entries past `max_len`
/// entries or `max_bytes` bytes) and PUBLISHes the envelope. A message with an
/// idempotency key whose key already holds a position (published within the window, by
/// any node) publishes nothing and answers that position; otherwise the key is set to the
/// new position for the window.
///
/// Work per message is kept small (see bench/PROFILE.md): a group's meta fields and stream
/// length are read once per call (`HMGET`, `XLEN`), then each message costs `XADD`, one
/// `HSET` of `o` and `b`, and `PUBLISH`. The keys' TTL is refreshed at most once per
/// `refresh` ms per group (the time of the last refresh is the meta field `x`), to
/// `ttl + refresh`, so an idle group's keys still live at least `ttl` after its last
/// message. A call that (re)creates the stream or the epoch refreshes at once, so no key
/// is ever left without a TTL. `TIME` is called once per call.
///
/// Each message runs under `pcall`: one that Redis refuses (e.g. a key of the wrong type)
/// answers its error and the rest of the batch goes on; the later messages of the same
/// request are then skipped, so a request is published up to its first failure.
///
/// The stream's size in bytes (payloads plus `overhead` per entry) is kept in the meta
/// hash's `b` field. A payload larger than `max_bytes` is not kept, and the entries before
/// it go too: a history cannot be continued past a message it lacks.
///
/// KEYS: for message i, `meta` at 3i-2, `stream` at 3i-1, its idempotency key at 3i (the
/// meta key again when the message has none: every key is declared, none is unused).
/// ARGV: ttl ms, max_len, candidate epoch, refresh ms, max_bytes, overhead, then for
/// message i: channel, kind, payload, idempotency key ('' for none), window ms, request.
/// Returns, flattened, per message: offset, epoch, 0; or the first position, its epoch, 1
/// for a duplicate; or 0, the error, 2 when Redis refused it; or 0, '', 3 when skipped.
const PUBLISH_LUA: &str = r#"
local ttl = tonumber(ARGV[1])
local max_len = tonumber(ARGV[2])
local candidate = ARGV[3]
local refresh = tonumber(ARGV[4])
local max_bytes = tonumber(ARGV[5])
local overhead = tonumber(ARGV[6])
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local now_text = string.format('%d', now_ms)
-- Per group (by meta key): what this call knows of it, read once.
local groups = {}
local order = {}
local function load(meta, stream)
  local g = groups[meta]
  if g then return g end
  local f = redis.call('HMGET', meta, 'e', 'o', 'b', 'x')
  g = {meta = meta, stream = stream, epoch = f[1], offset = tonumber(f[2]) or 0,
       bytes = tonumber(f[3]) or 0, refreshed = tonumber(f[4]), len = 0, touch = false}
  if not g.epoch then
    -- A new history begins: entries left over from a lost one must not mix in.
    redis.call('HSET', meta, 'e', candidate)
    redis.call('DEL', stream)
    g.epoch = candidate
    g.bytes = 0
    g.touch = true
  elseif max_len > 0 then
    g.len = redis.call('XLEN', stream)
  end
  groups[meta] = g
  order[#order + 1] = g
  return g
end
local function publish_one(meta, stream, channel, kind, data)
  local g = load(meta, stream)
  local offset = g.offset + 1
  local cost = #data + overhead
  local bytes, len = g.bytes, g.len
  if max_len > 0 and cost <= max_bytes then
    redis.call('XADD', stream, string.format('%d-0', offset),
      'k', kind, 'd', data, 't', now_text)
    -- A stream created now has no TTL yet: refresh at the end of this call.
    if len == 0 then g.touch = true end
    bytes = bytes + cost
    len = len + 1
    len, bytes = trim(stream, len, bytes, max_len, max_bytes, overhead)
  else
    redis.call('DEL', stream)
    bytes, len = 0, 0
  end
  redis.call('HSET', meta, 'o', offset, 'b', bytes)
  g.offset, g.bytes, g.len = offset, bytes, len
  redis.call('PUBLISH', channel,
    string.char(1) .. kind .. string.format('%d', offset) .. ':' .. g.epoch .. '\n' .. data)
  return offset, g.epoch
end
local function message(meta, stream, once, channel, kind, data, key, window)
  if key ~= '' then
    local first = redis.call('GET', once)
    if first then
      -- A retry: publish nothing, answer the first message's position.
      local offset, epoch = string.match(first, '^(%d+):(.*)$')
      return tonumber(offset), epoch, 1
    end
  end
  local offset, epoch = publish_one(meta, stream, channel, kind, data)
  if key ~= '' then
    redis.call('SET', once, string.format('%d', offset) .. ':' .. epoch, 'PX', window)
  end
  return offset, epoch, 0
end
local function why(e)
  if type(e) == 'table' then return tostring(e.err or e[1] or 'error') end
  return tostring(e)
end
local out = {}
local failed = {}
for i = 1, #KEYS / 3 do
  local meta, stream, once = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local a = 7 + (i - 1) * 6
  local request = ARGV[a + 5]
  if failed[request] then
    out[#out + 1] = 0
    out[#out + 1] = ''
    out[#out + 1] = 3
  else
    local ok, offset, epoch, flag = pcall(message, meta, stream, once,
      ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4])
    if ok then
      out[#out + 1] = offset
      out[#out + 1] = epoch
      out[#out + 1] = flag
    else
      failed[request] = true
      out[#out + 1] = 0
      out[#out + 1] = why(offset)
      out[#out + 1] = 2
    end
  end
end
-- Refresh each group's TTL at most once per `refresh` ms (or now, for new keys).
for _, g in ipairs(order) do
  if g.touch or g.refreshed == nil or now_ms - g.refreshed >= refresh then
    pcall(function()
      redis.call('PEXPIRE', g.stream, ttl + refresh)
      redis.call('HSET', g.meta, 'x', now_text)
      redis.call('PEXPIRE', g.meta, ttl + refresh)
    end)
  end
end
return out
"#;

/// The publish script for a call of exactly one message, the common case of a lone
/// publish (the coalescer's direct path): the same effects as [`PUBLISH_LUA`] for one
/// message, written straight through. No per-group tables, no closures, no `pcall`: a
/// message Redis refuses fails the call, which is that message's own outcome. Every
/// command that can be refused (`GET`, `HMGET`, `XLEN`, `XADD` on keys of the wrong type)
/// runs before the first write to the meta hash, so a refused message leaves at most a
/// deleted stream behind (when it would have started a new epoch), never a meta key
/// without a TTL. The refresh time `x` goes in the same `HSET` as `o` and `b`.
///
/// KEYS: meta, stream, the idempotency key (the meta key again when there is none).
/// ARGV: ttl ms, max_len, candidate epoch, refresh ms, max_bytes, overhead, channel, kind,
/// payload, idempotency key ('' for none), window ms.
/// Returns: offset, epoch, 0; or the first position, its epoch, 1 for a duplicate.
const PUBLISH_ONE_LUA: &str = r#"
local meta, stream, once = KEYS[1], KEYS[2], KEYS[3]
local key = ARGV[10]
if key ~= '' then
  local first = redis.call('GET', once)
  if first then
    -- A retry: publish nothing, answer the first message's position.
    local offset, epoch = string.match(first, '^(%d+):(.*)$')
    return {tonumber(offset), epoch, 1}
  end
end
local max_len = tonumber(ARGV[2])
local refresh = tonumber(ARGV[4])
local max_bytes = tonumber(ARGV[5])
local overhead = tonumber(ARGV[6])
local data = ARGV[9]
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local now_text = string.format('%d', now_ms)
local f = redis.call('HMGET', meta, 'e', 'o', 'b', 'x')
local epoch, offset, bytes, refreshed = f[1], (tonumber(f[2]) or 0) + 1, tonumber(f[3]) or 0, tonumber(f[4])
local offset_text = string.format('%d', offset)
local created, len = false, 0
if not epoch then
  -- A new history begins: entries left over from a lost one must not mix in.
  epoch, bytes, created = ARGV[3], 0, true
  redis.call('DEL', stream)
elseif max_len > 0 then
  len = redis.call('XLEN', stream)
end
local due = created or refreshed == nil or now_ms - refreshed >= refresh
local cost = #data + overhead
if max_len > 0 and cost <= max_bytes then
  redis.call('XADD', stream, offset_text .. '-0', 'k', ARGV[8], 'd', data, 't', now_text)
  -- A stream created now has no TTL yet.
  if len == 0 then due = true end
  bytes = bytes + cost
  len = len + 1
  len, bytes = trim(stream, len, bytes, max_len, max_bytes, overhead)
else
  redis.call('DEL', stream)
  bytes = 0
end
if created then
  redis.call('HSET', meta, 'e', epoch, 'o', offset_text, 'b', bytes, 'x', now_text)
elseif due then
  redis.call('HSET', meta, 'o', offset_text, 'b', bytes, 'x', now_text)
else
  redis.call('HSET', meta, 'o', offset_text, 'b', bytes)
end
if due then
  local ttl = tonumber(ARGV[1]) + refresh
  redis.call('PEXPIRE', meta, ttl)
  redis.call('PEXPIRE', stream, ttl)
end
redis.call('PUBLISH', ARGV[7],
  string.char(1) .. ARGV[8] .. offset_text .. ':' .. epoch .. '\n' .. data)
if key ~= '' then
  redis.call('SET', once, offset_text .. ':' .. epoch, 'PX', ARGV[11])
end
return {offset, epoch, 0}
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

/// Gives groups that lost acknowledged writes a new epoch (see "Failover: gaps and lost
/// writes" in the crate doc).
///
/// KEYS: for group i, `meta` at 2i-1 and `stream` at 2i.
/// ARGV: for group i, at 3i-2 the epoch this node saw, at 3i-1 the highest offset it saw
/// under it, at 3i a candidate epoch.
/// A group whose epoch is still the one seen but whose offset is below the one seen lost
/// writes: it gets the candidate epoch and an empty history (its offsets go on counting,
/// so new entries never collide with old IDs). Returns, per group: 1 if it was given a new
/// epoch else 0, then its epoch now ('' when the group has none).
const RESET_LUA: &str = r#"
local out = {}
for i = 1, #KEYS / 2 do
  local meta, stream = KEYS[2 * i - 1], KEYS[2 * i]
  local seen_epoch, seen, candidate = ARGV[3 * i - 2], tonumber(ARGV[3 * i - 1]), ARGV[3 * i]
  local epoch = redis.call('HGET', meta, 'e')
  local offset = tonumber(redis.call('HGET', meta, 'o') or '0')
  if epoch == seen_epoch and seen ~= nil and offset < seen then
    redis.call('HSET', meta, 'e', candidate, 'b', 0)
    redis.call('DEL', stream)
    out[#out + 1] = 1
    out[#out + 1] = candidate
  else
    out[#out + 1] = 0
    out[#out + 1] = epoch or ''
  end
end
return out
"#;

static PUBLISH: LazyLock<redis::Script> = LazyLock::new(|| with_trim(PUBLISH_LUA, false));
/// The publish script for Redis Cluster: the same, with `SPUBLISH` (the channel carries
/// the group's hash tag, so it is on the slot of the keys the script writes).
static PUBLISH_SHARDED: LazyLock<redis::Script> = LazyLock::new(|| with_trim(PUBLISH_LUA, true));
static PUBLISH_ONE: LazyLock<redis::Script> = LazyLock::new(|| with_trim(PUBLISH_ONE_LUA, false));
/// The one-message script for Redis Cluster, with `SPUBLISH` like [`PUBLISH_SHARDED`].
static PUBLISH_ONE_SHARDED: LazyLock<redis::Script> =
    LazyLock::new(|| with_trim(PUBLISH_ONE_LUA, true));
static HISTORY: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(HISTORY_LUA));
static RESET: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RESET_LUA));

/// A reply that does not have the shape the script returns: a bug, or a foreign script
/// under the same name.
#[derive(Debug, thiserror::Error)]
#[error("unexpected script reply: {0}")]
pub(crate) struct BadReply(pub(crate) &'static str);

/// Longest time between two TTL refreshes of a group's keys (1 min). Keys live up to this
/// much longer than `max_age` after the last message (with the default day, 0.07 %); in
/// exchange a group that gets a message every few seconds (per-user notifications)
/// refreshes on one message in many rather than on nearly every one: two `PEXPIRE`s and
/// the `x` field saved per message.
pub(crate) const REFRESH_MAX_MS: u64 = 60_000;

/// The history settings as script arguments.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) max_age_ms: u64,
    pub(crate) max_len: usize,
    pub(crate) max_bytes: usize,
}

impl Limits {
    /// Least time between two TTL refreshes of a group's keys: a tenth of the TTL, at
    /// least 1 ms and at most [`REFRESH_MAX_MS`].
    pub(crate) fn refresh_ms(&self) -> u64 {
        (self.max_age_ms / 10).clamp(1, REFRESH_MAX_MS)
    }

    pub(crate) fn new(max_age: Duration, max_len: usize, max_bytes: usize) -> Self {
        // At least 1 ms: PEXPIRE 0 would delete the keys on the spot.
        let max_age_ms = u64::try_from(max_age.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Self {
            max_age_ms,
            max_len,
            max_bytes,
        }
    }
}

/// The outcome of one message in a publish call: its position, or the error text Redis
/// gave for it (`None` when it was skipped after an earlier message of its request failed).
pub(crate) type Outcome = Result<Published, Option<String>>;

/// Runs the publish script for every message of `requests`, in order; returns one outcome
/// per message. A call of exactly one message runs [`PUBLISH_ONE_LUA`].
pub(crate) async fn publish<C>(
    conn: &mut C,
    keys: &Keys,
    limits: Limits,
    requests: &[Request],
) -> Result<Vec<Outcome>, ScriptError>
where
    C: redis::aio::ConnectionLike + Send,
{
    let single = match requests {
        [request] if request.items.len() == 1 => Some(request),
        _ => None,
    };
    let candidate = Epoch::random();
    let script = match (single.is_some(), keys.is_sharded()) {
        (true, false) => &*PUBLISH_ONE,
        (true, true) => &*PUBLISH_ONE_SHARDED,
        (false, false) => &*PUBLISH,
        (false, true) => &*PUBLISH_SHARDED,
    };
    let mut invocation = script.prepare_invoke();
    invocation
        .arg(limits.max_age_ms)
        .arg(limits.max_len)
        .arg(candidate.as_str())
        .arg(limits.refresh_ms())
        .arg(limits.max_bytes)
        .arg(herald_core::HISTORY_ENTRY_OVERHEAD);
    let mut count = 0usize;
    for (r, request) in requests.iter().enumerate() {
        // At least 1 ms: SET PX 0 is an error.
        let window_ms = u64::try_from(request.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        for item in &request.items {
            let group = &item.group;
            let meta = keys.meta(group);
            let once = match &item.key {
                Some(key) => keys.idempotency(group, key),
                None => meta.clone(),
            };
            invocation
                .key(meta)
                .key(keys.stream(group))
                .key(once)
                .arg(keys.channel(group))
                .arg(envelope::kind_of(&item.payload))
                .arg(&item.payload.data()[..])
                .arg(item.key.as_deref().unwrap_or(""))
                .arg(window_ms);
            if single.is_none() {
                invocation.arg(r);
            }
            count = count.saturating_add(1);
        }
    }
    let reply: Value = match invocation.invoke_async(conn).await {
        Ok(reply) => reply,
        // One message: an error Redis answered (e.g. `WRONGTYPE`) is that message's own
        // refusal, as the batch script reports it; the connection stays.
        Err(e) if single.is_some() => match refusal(&e) {
            Some(why) => return Ok(vec![Err(Some(why))]),
            None => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    let Value::Array(values) = reply else {
        return Err(BadReply("publish reply is not an array").into());
    };
    if values.len() != count.saturating_mul(3) {
        return Err(BadReply("publish reply has the wrong length").into());
    }
    let mut outcomes = Vec::with_capacity(count);
    let mut values = values.into_iter();
    while let (Some(offset), Some(epoch), Some(flag)) =
        (values.next(), values.next(), values.next())
    {
        let outcome = match flag {
            Value::Int(0) | Value::Int(1) => Ok(Published {
                position: Position {
                    offset: as_offset(offset)?,
                    epoch: as_epoch(epoch)?,
                },
                duplicate: matches!(flag, Value::Int(1)),
            }),
            Value::Int(2) => Err(Some(
                String::from_utf8_lossy(&as_bytes(epoch)?).into_owned(),
            )),
            Value::Int(3) => Err(None),
            _ => return Err(BadReply("publish outcome flag is not 0 to 3").into()),
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// The text of an error reply that refuses a script's command (its code, e.g.
/// `WRONGTYPE`, and detail); `None` for a failure of the connection or the client.
fn refusal(e: &redis::RedisError) -> Option<String> {
    if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
        return None;
    }
    let code = e.code()?;
    Some(match e.detail() {
        Some(detail) => format!("{code} {detail}"),
        None => code.to_owned(),
    })
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
            received_at: None,
        });
    }
    Ok(History {
        current,
        recovered,
        messages,
    })
}

/// What [`reset_lost`] found for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checked {
    /// The group was given a new epoch: it had lost writes.
    pub(crate) reset: bool,
    /// The group's epoch now; `None` when it has none (its keys are gone).
    pub(crate) epoch: Option<Epoch>,
}

/// Runs the reset script for `groups` (group, epoch seen, highest offset seen under it);
/// answers one [`Checked`] per group, in order.
pub(crate) async fn reset_lost<C>(
    conn: &mut C,
    keys: &Keys,
    groups: &[(GroupName, Epoch, u64)],
) -> Result<Vec<Checked>, ScriptError>
where
    C: redis::aio::ConnectionLike + Send,
{
    let mut invocation = RESET.prepare_invoke();
    for (group, epoch, offset) in groups {
        invocation
            .key(keys.meta(group))
            .key(keys.stream(group))
            .arg(epoch.as_str())
            .arg(*offset)
            .arg(Epoch::random().as_str());
    }
    let reply: Value = invocation.invoke_async(conn).await?;
    let Value::Array(values) = reply else {
        return Err(BadReply("reset reply is not an array").into());
    };
    if values.len() != groups.len() * 2 {
        return Err(BadReply("reset reply has the wrong length").into());
    }
    let mut out = Vec::with_capacity(groups.len());
    let mut values = values.into_iter();
    while let (Some(reset), Some(epoch)) = (values.next(), values.next()) {
        let epoch = as_epoch(epoch)?;
        out.push(Checked {
            reset: matches!(reset, Value::Int(1)),
            epoch: (!epoch.as_str().is_empty()).then_some(epoch),
        });
    }
    Ok(out)
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
