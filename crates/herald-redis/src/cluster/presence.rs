//! The occupied mark on Redis Cluster: the group's `occ` hash lives on the group's slot,
//! the node-wide `{prefix}:occupied` index on another one, and a script may only touch one
//! slot. So the index is updated in a command of its own, ordered so that a crash between
//! the two calls leaves an index entry without a mark, which the next sweep's `vacate`
//! removes (an index that misses an occupied group would never report it vacated).
//!
//! - occupy: `ZADD index NX now group` first, then the script on the mark alone.
//! - vacate: the script on the mark and the presence hash; when it reports the group
//!   vacated, or finds no mark at all, `ZREM index group` after it.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_core::GroupName;
use redis::Value;

use crate::keys::Keys;
use crate::scripts::ScriptError;

/// KEYS: occ hash. 1 when the group was not occupied (this caller announces it);
/// otherwise its empty clock stops and 0.
const OCCUPY_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HDEL', KEYS[1], 'empty_since')
  return 0
end
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('HSET', KEYS[1], 'since', string.format('%d', now_ms))
return 1
"#;

/// KEYS: occ hash, presence hash. ARGV: delay ms. 1: vacated (the mark is gone); 2: there
/// was no mark; 0: occupied still, or empty for less than the delay.
const VACATE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 2
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
if now_ms - since >= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

static OCCUPY: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(OCCUPY_LUA));
static VACATE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(VACATE_LUA));

/// `true` for the one caller of a vacant-to-occupied transition.
pub(crate) async fn occupy<C>(
    conn: &mut C,
    keys: &Keys,
    group: &GroupName,
) -> Result<bool, ScriptError>
where
    C: redis::aio::ConnectionLike + Send,
{
    // The index entry first (see the module doc); its score orders the sweep only, so
    // this node's clock is good enough.
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let _: Value = redis::cmd("ZADD")
        .arg(keys.occupied_index())
        .arg("NX")
        .arg(now_ms)
        .arg(group.as_str())
        .query_async(conn)
        .await?;
    let reply: Value = OCCUPY.key(keys.occupied(group)).invoke_async(conn).await?;
    Ok(matches!(reply, Value::Int(1)))
}

/// `true` for the one caller that finds the group empty for `delay`.
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
        .arg(delay_ms)
        .invoke_async(conn)
        .await?;
    let outcome = match reply {
        Value::Int(n) => n,
        _ => 0,
    };
    if outcome == 1 || outcome == 2 {
        let _: Value = redis::cmd("ZREM")
            .arg(keys.occupied_index())
            .arg(group.as_str())
            .query_async(conn)
            .await?;
    }
    Ok(outcome == 1)
}
