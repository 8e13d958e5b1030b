//! Redis Cluster slots: the hash of a key or channel name, and the map from slots to the
//! shards (masters) that serve them, as `CLUSTER SLOTS` reports it.

use redis::Value;

/// Slots in a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;

/// CRC16/XMODEM (polynomial 0x1021, initial value 0, no reflection): the checksum Redis
/// Cluster hashes key names with.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of a key or shard channel name: only the part between the first `{` and the
/// next `}` is hashed when it is not empty (the hash tag), else the whole name.
pub(crate) fn slot_of(name: &[u8]) -> u16 {
    let tagged = name.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = name.get(open + 1..)?;
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(name)) % SLOTS
}

/// A hash tag (the text to put between braces) whose slot is one of `ranges`: found by
/// trying `0`, `1`, `2`, … in turn. With `n` evenly sized shards about `n` tries are
/// needed; the search gives up after a bound and returns `None` (a shard owning almost
/// no slots), and then that shard is probed through no channel of its own.
pub(crate) fn tag_in(ranges: &[(u16, u16)]) -> Option<String> {
    const TRIES: u32 = 1_000_000;
    (0..TRIES)
        .map(|n| n.to_string())
        .find(|tag| in_ranges(ranges, slot_of(tag.as_bytes())))
}

fn in_ranges(ranges: &[(u16, u16)], slot: u16) -> bool {
    ranges.iter().any(|&(lo, hi)| lo <= slot && slot <= hi)
}

/// One shard: its master's address and the slots it serves.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ShardKey {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Sorted, non-overlapping, inclusive.
    pub(crate) ranges: Vec<(u16, u16)>,
}

impl ShardKey {
    pub(crate) fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Which shard serves each slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlotMap {
    /// Sorted by address: the same cluster state gives the same indices.
    pub(crate) shards: Vec<ShardKey>,
    /// Index into `shards` per slot; `u16::MAX` for a slot nobody serves.
    owner: Vec<u16>,
}

/// Owner of a slot no shard serves.
const NOBODY: u16 = u16::MAX;
/// Most shards accepted in a reply: a bound on what a misbehaving server can make us hold.
const MAX_SHARDS: usize = 1024;

impl SlotMap {
    /// The shard index serving `slot`, if any.
    pub(crate) fn owner(&self, slot: u16) -> Option<usize> {
        match self.owner.get(usize::from(slot)) {
            Some(&i) if i != NOBODY => Some(usize::from(i)),
            _ => None,
        }
    }

    /// The shard index serving the channel or key `name`.
    pub(crate) fn owner_of(&self, name: &[u8]) -> Option<usize> {
        self.owner(slot_of(name))
    }

    /// Parses a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, …], replicas…], …]`.
    /// A master announced with an empty host (a node that does not know its address) is
    /// taken to be on `fallback_host`, the host the reply came through.
    pub(crate) fn from_cluster_slots(reply: Value, fallback_host: &str) -> Result<Self, String> {
        let Value::Array(entries) = reply else {
            return Err("CLUSTER SLOTS reply is not an array".to_owned());
        };
        let mut by_master: std::collections::BTreeMap<(String, u16), Vec<(u16, u16)>> =
            std::collections::BTreeMap::new();
        for entry in entries {
            let Value::Array(parts) = entry else {
                return Err("CLUSTER SLOTS entry is not an array".to_owned());
            };
            let mut parts = parts.into_iter();
            let (Some(start), Some(end), Some(master)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err("CLUSTER SLOTS entry is too short".to_owned());
            };
            let (start, end) = (as_slot(start)?, as_slot(end)?);
            if start > end {
                return Err("CLUSTER SLOTS range is reversed".to_owned());
            }
            let Value::Array(node) = master else {
                return Err("CLUSTER SLOTS master is not an array".to_owned());
            };
            let mut node = node.into_iter();
            let (Some(host), Some(port)) = (node.next(), node.next()) else {
                return Err("CLUSTER SLOTS master is too short".to_owned());
            };
            let host = match host {
                Value::BulkString(b) => String::from_utf8(b).map_err(|_| "host is not UTF-8")?,
                Value::SimpleString(s) => s,
                Value::Nil => String::new(),
                _ => return Err("CLUSTER SLOTS host is not a string".to_owned()),
            };
            let host = if host.is_empty() || host == "?" {
                fallback_host.to_owned()
            } else {
                host
            };
            let port = match port {
                Value::Int(p) => u16::try_from(p).map_err(|_| "port out of range")?,
                _ => return Err("CLUSTER SLOTS port is not an integer".to_owned()),
            };
            if by_master.len() >= MAX_SHARDS && !by_master.contains_key(&(host.clone(), port)) {
                return Err("too many shards in CLUSTER SLOTS".to_owned());
            }
            by_master
                .entry((host, port))
                .or_default()
                .push((start, end));
        }
        let mut owner = vec![NOBODY; usize::from(SLOTS)];
        let mut shards = Vec::with_capacity(by_master.len());
        for (i, ((host, port), mut ranges)) in by_master.into_iter().enumerate() {
            ranges.sort_unstable();
            let index = u16::try_from(i).map_err(|_| "too many shards")?;
            for &(lo, hi) in &ranges {
                for slot in lo..=hi {
                    if let Some(o) = owner.get_mut(usize::from(slot)) {
                        *o = index;
                    }
                }
            }
            shards.push(ShardKey { host, port, ranges });
        }
        Ok(Self { shards, owner })
    }

    /// Whether every slot is served (a cluster whose `cluster_state` is `ok`).
    pub(crate) fn is_complete(&self) -> bool {
        !self.owner.contains(&NOBODY)
    }
}

fn as_slot(value: Value) -> Result<u16, String> {
    match value {
        Value::Int(n) => u16::try_from(n)
            .ok()
            .filter(|s| *s < SLOTS)
            .ok_or_else(|| "slot out of range".to_owned()),
        _ => Err("slot is not an integer".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // The CRC16/XMODEM check value, and slots `CLUSTER KEYSLOT` gives.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"herald:{foo}:ch"), 12182);
        assert_eq!(slot_of(b"{}foo"), slot_of(b"{}foo"));
        assert_ne!(
            slot_of(b"{}foo"),
            slot_of(b"foo"),
            "an empty tag hashes the whole name"
        );
        assert_eq!(slot_of(b"a{foo}{bar}"), 12182, "only the first tag counts");
    }

    #[test]
    fn tags_land_in_their_ranges() {
        for ranges in [
            vec![(0, 5460)],
            vec![(5461, 10922)],
            vec![(10923, 16383)],
            vec![(7, 7)],
        ] {
            let tag = tag_in(&ranges).expect("a tag");
            assert!(in_ranges(&ranges, slot_of(tag.as_bytes())), "{ranges:?}");
        }
    }

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn cluster_slots_parse() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(100),
                node("b", 2),
                node("r", 9),
            ]),
            Value::Array(vec![Value::Int(101), Value::Int(16383), node("", 1)]),
            Value::Array(vec![Value::Int(5), Value::Int(5), node("b", 2)]),
        ]);
        let map = SlotMap::from_cluster_slots(reply, "seed").unwrap();
        assert_eq!(map.shards.len(), 2);
        assert_eq!(map.shards[0].host, "b");
        assert_eq!(map.shards[1].host, "seed");
        assert_eq!(map.owner(0), Some(0));
        assert_eq!(map.owner(101), Some(1));
        assert_eq!(map.owner(5), Some(0));
        assert!(map.is_complete());
        assert!(SlotMap::from_cluster_slots(Value::Int(1), "x").is_err());
        let bad = Value::Array(vec![Value::Array(vec![Value::Int(9), Value::Int(99999)])]);
        assert!(SlotMap::from_cluster_slots(bad, "x").is_err());
    }
}
