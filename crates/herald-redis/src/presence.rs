//! Presence in Redis: one hash per group, one field per node.
//!
//! Redis 7.0 has no per-field expiry, so each field carries its own deadline: the value
//! is `{valid_until_ms}\n{connections}\n{subs}`, with the deadline taken from Redis' clock
//! (`TIME`) plus the writer's `ttl`, so nodes with skewed clocks agree. A read skips and
//! deletes the fields past their deadline; the hash itself expires `ttl` after its latest
//! write, so a group whose every node died leaves nothing behind either. `subs` is each
//! sub as `{byte length}:{bytes}`, one after the other: no escaping, any byte allowed.

use std::sync::LazyLock;
use std::time::Duration;

use herald_core::{GroupName, LocalPresence, Presence};
use redis::Value;

use crate::keys::Keys;
use crate::scripts::{BadReply, ScriptError};

/// KEYS: the group's presence hash. ARGV: node id, ttl ms, connections, encoded subs.
/// Zero connections deletes the node's field. The hash's expiry is never shortened, so
/// nodes with a longer `ttl` keep theirs.
const UPDATE_LUA: &str = r#"
local ttl = tonumber(ARGV[2])
if tonumber(ARGV[3]) == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('HSET', KEYS[1], ARGV[1],
  string.format('%d', now_ms + ttl) .. '\n' .. ARGV[3] .. '\n' .. ARGV[4])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
"#;

/// KEYS: the group's presence hash. Returns the values of the live fields, after
/// deleting the expired ones.
const READ_LUA: &str = r#"
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local value = all[i + 1]
  local until_ms = tonumber(string.match(value, '^(%d+)\n'))
  if until_ms ~= nil and until_ms > now_ms then
    out[#out + 1] = value
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
"#;

/// KEYS: occ hash, index. ARGV: group. 1 when the group was not occupied (this caller
/// announces it); otherwise its empty clock stops and 0.
const OCCUPY_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HDEL', KEYS[1], 'empty_since')
  return 0
end
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('HSET', KEYS[1], 'since', string.format('%d', now_ms))
redis.call('ZADD', KEYS[2], now_ms, ARGV[1])
return 1
"#;

/// KEYS: occ hash, presence hash, index. ARGV: group, delay ms. 1 when the occupied group
/// had no live presence entry for the delay (this caller announces it vacated, and the
/// marks go); otherwise 0, starting or stopping the empty clock.
const VACATE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 0
end
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local all = redis.call('HGETALL', KEYS[2])
for i = 2, #all, 2 do
  local until_ms = tonumber(string.match(all[i], '^(%d+)\n'))
  if until_ms ~= nil and until_ms > now_ms then
    redis.call('HDEL', KEYS[1], 'empty_since')
    return 0
  end
end
local since = tonumber(redis.call('HGET', KEYS[1], 'empty_since'))
if since == nil then
  redis.call('HSET', KEYS[1], 'empty_since', string.format('%d', now_ms))
  return 0
end
if now_ms - since >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 1
end
return 0
"#;

static OCCUPY: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(OCCUPY_LUA));
static VACATE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(VACATE_LUA));

/// Runs the occupy script: `true` for the one caller of a vacant-to-occupied transition.
pub(crate) async fn occupy<C>(
    conn: &mut C,
    keys: &Keys,
    group: &GroupName,
) -> Result<bool, ScriptError>
where
    C: redis::aio::ConnectionLike + Send,
{
    let reply: Value = OCCUPY
        .key(keys.occupied(group))
        .key(keys.occupied_index())
        .arg(group.as_str())
        .invoke_async(conn)
        .await?;
    Ok(matches!(reply, Value::Int(1)))
}

/// Runs the vacate script: `true` for the one caller that finds the group empty for `delay`.
pub(crate) async fn vacate<C>(
    conn: &mut C,
    keys: &Keys,
    group: &GroupName,
    delay: Duration,
) -> Result<bool, ScriptError>
where
    C: redis::aio::ConnectionLike + Send,
{
    let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    let reply: Value = VACATE
        .key(keys.occupied(group))
        .key(keys.presence(group))
        .key(keys.occupied_index())
        .arg(group.as_str())
        .arg(delay_ms)
        .invoke_async(conn)
        .await?;
    Ok(matches!(reply, Value::Int(1)))
}

/// Up to `limit` occupied groups, longest occupied first; names that are no valid group
/// (not written by herald) are skipped.
pub(crate) async fn occupied<C>(
    conn: &mut C,
    keys: &Keys,
    limit: usize,
) -> Result<Vec<GroupName>, ScriptError>
where
    C: redis::aio::ConnectionLike + Send,
{
    if limit == 0 {
        return Ok(Vec::new());
    }
    let names: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys.occupied_index())
        .arg(0)
        .arg(limit.saturating_sub(1))
        .query_async(conn)
        .await?;
    Ok(names
        .iter()
        .filter_map(|n| GroupName::new(n).ok())
        .collect())
}

/// [`UPDATE_LUA`] for many groups in one call (`update_many`): the same effects per group,
/// `TIME` once. Each group runs under `pcall`, so a hash Redis refuses (a key of the wrong
/// type) fails that group's write only.
///
/// KEYS: the groups' presence hashes. ARGV: node id, then per group i, at 3i-1, 3i and
/// 3i+1: ttl ms, connections, encoded subs. Returns per group '' when written (or
/// deleted), else Redis' error text.
const UPDATE_MANY_LUA: &str = r#"
local node = ARGV[1]
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local function one(key, ttl, connections, subs)
  if tonumber(connections) == 0 then
    redis.call('HDEL', key, node)
    return
  end
  redis.call('HSET', key, node, string.format('%d', now_ms + ttl) .. '\n' .. connections .. '\n' .. subs)
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end
local out = {}
for i = 1, #KEYS do
  local ok, e = pcall(one, KEYS[i], tonumber(ARGV[3 * i - 1]), ARGV[3 * i], ARGV[3 * i + 1])
  if ok then
    out[i] = ''
  elseif type(e) == 'table' then
    out[i] = tostring(e.err or e[1] or 'error')
  else
    out[i] = tostring(e)
  end
end
return out
"#;

static UPDATE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(UPDATE_LUA));
static UPDATE_MANY: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(UPDATE_MANY_LUA));
static READ: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(READ_LUA));

/// Writes (or with no connection, deletes) `node`'s entry for `group`.
pub(crate) async fn update<C>(
    conn: &mut C,
    keys: &Keys,
    node: &str,
    group: &GroupName,
    local: &LocalPresence,
    ttl: Duration,
) -> Result<(), ScriptError>
where
    C: redis::aio::ConnectionLike + Send,
{
    // At least 1 ms: PEXPIRE 0 deletes the key on the spot.
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    let _: Value = UPDATE
        .key(keys.presence(group))
        .arg(node)
        .arg(ttl_ms)
        .arg(local.connections)
        .arg(encode_subs(&local.subs))
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// One group's entry to write with [`update_many`].
pub(crate) struct Write {
    pub(crate) group: GroupName,
    pub(crate) local: LocalPresence,
    pub(crate) ttl: Duration,
}

/// Writes the entries of `writes` in one script call (keys of any slots: one Redis only).
/// Returns per write `None` when written, else the error text Redis gave for it.
pub(crate) async fn update_many<C>(
    conn: &mut C,
    keys: &Keys,
    node: &str,
    writes: &[Write],
) -> Result<Vec<Option<String>>, ScriptError>
where
    C: redis::aio::ConnectionLike + Send,
{
    let mut invocation = UPDATE_MANY.prepare_invoke();
    invocation.arg(node);
    for write in writes {
        // At least 1 ms: PEXPIRE 0 deletes the key on the spot.
        let ttl_ms = u64::try_from(write.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        invocation
            .key(keys.presence(&write.group))
            .arg(ttl_ms)
            .arg(write.local.connections)
            .arg(encode_subs(&write.local.subs));
    }
    let reply: Value = invocation.invoke_async(conn).await?;
    let Value::Array(values) = reply else {
        return Err(BadReply("presence update reply is not an array").into());
    };
    if values.len() != writes.len() {
        return Err(BadReply("presence update reply has the wrong length").into());
    }
    values
        .into_iter()
        .map(|value| match value {
            Value::BulkString(text) if text.is_empty() => Ok(None),
            Value::BulkString(text) => Ok(Some(String::from_utf8_lossy(&text).into_owned())),
            Value::SimpleString(text) if text.is_empty() => Ok(None),
            Value::SimpleString(text) => Ok(Some(text)),
            _ => Err(BadReply("presence update outcome is not a string").into()),
        })
        .collect()
}

/// Reads the live entries of `group` and sums them.
pub(crate) async fn read<C>(
    conn: &mut C,
    keys: &Keys,
    group: &GroupName,
) -> Result<Presence, ScriptError>
where
    C: redis::aio::ConnectionLike + Send,
{
    let reply: Value = READ.key(keys.presence(group)).invoke_async(conn).await?;
    let Value::Array(values) = reply else {
        return Err(BadReply("presence reply is not an array").into());
    };
    let mut entries = Vec::with_capacity(values.len());
    for value in values {
        let bytes = match value {
            Value::BulkString(data) => data,
            _ => return Err(BadReply("presence entry is not a string").into()),
        };
        entries.push(decode_entry(&bytes).ok_or(BadReply("malformed presence entry"))?);
    }
    Ok(Presence::sum(&entries))
}

fn encode_subs(subs: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(subs.iter().map(|s| s.len() + 4).sum());
    for sub in subs {
        out.extend_from_slice(sub.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(sub.as_bytes());
    }
    out
}

/// Parses `{valid_until_ms}\n{connections}\n{subs}`; `None` when anything is off.
fn decode_entry(value: &[u8]) -> Option<LocalPresence> {
    let mut parts = value.splitn(3, |&b| b == b'\n');
    let _valid_until = parts.next()?;
    let connections = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let mut rest = parts.next()?;
    let mut subs = Vec::new();
    while !rest.is_empty() {
        let colon = rest.iter().position(|&b| b == b':')?;
        let len: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
        let body = rest.get(colon + 1..)?;
        let sub = body.get(..len)?;
        subs.push(String::from_utf8(sub.to_vec()).ok()?);
        rest = &body[len..];
    }
    Some(LocalPresence { connections, subs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_any_sub() {
        let subs = vec![String::new(), "42".to_owned(), "a:b\n7:x".to_owned()];
        let mut value = b"1700000000000\n3\n".to_vec();
        value.extend_from_slice(&encode_subs(&subs));
        assert_eq!(
            decode_entry(&value),
            Some(LocalPresence {
                connections: 3,
                subs
            })
        );
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in [
            &b""[..],
            b"1\nx\n",
            b"1\n2\n5:ab",
            b"1\n2\nab",
            b"1\n2\n99999999999999999999999:a",
        ] {
            assert_eq!(decode_entry(bad), None, "{bad:?}");
        }
        assert_eq!(
            decode_entry(b"1\n0\n"),
            Some(LocalPresence::default()),
            "no subs"
        );
    }
}
