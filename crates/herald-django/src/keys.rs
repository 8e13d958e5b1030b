//! The only place that formats channels_redis' Redis names, and picks their shard.
//!
//! | name | form | example |
//! |---|---|---|
//! | group zset (core) | `{prefix}:group:{channels group}` | `asgi:group:user_42` |
//! | herald's member in it | `specific.{channel_prefix}!{herald group}` | `specific.herald!user.42` |
//! | herald's message zset (core) | `{prefix}specific.{channel_prefix}!` | `asgispecific.herald!` |
//! | a Django consumer's message zset | `{prefix}{non-local part of its channel}` | `asgispecific.5daf…!` |
//! | group pub/sub channel (pubsub) | `{prefix}__group__{channels group}` | `asgi__group__user_42` |
//! | pubsub de-duplication hash | `{channel_prefix}:djdedup:{sha256 hex}` | `herald:djdedup:3f…` |

use sha2::{Digest, Sha256};

/// channels_redis' shard choice: the low 12 bits of the CRC-32 of `value`, scaled onto the
/// ring. Must match Python bit for bit, or messages land on a shard nobody reads.
/// Always below `ring_size` (0 for a ring of 0 or 1), so it indexes the shard list.
pub fn consistent_hash(value: &str, ring_size: usize) -> usize {
    if ring_size <= 1 {
        return 0;
    }
    let low = crc32fast::hash(value.as_bytes()) & 0xFFF;
    // Python computes int(low / (4096 / ring)) in floating point; the integer form
    // low * ring / 4096 floors to the same value because both are exact for these sizes.
    (low as usize * ring_size) / 4096
}

/// The part of a channel name up to and including `!` (the whole name when it has none):
/// what channels_redis turns into the Redis key and hashes for the shard.
pub fn non_local_name(channel: &str) -> &str {
    match channel.find('!') {
        Some(i) => &channel[..=i],
        None => channel,
    }
}

/// Builds names from the configured prefixes.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
    /// `specific.{channel_prefix}!`: the non-local name all herald nodes share.
    herald_non_local: String,
    channel_prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str, channel_prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            herald_non_local: format!("specific.{channel_prefix}!"),
            channel_prefix: channel_prefix.to_owned(),
        }
    }

    /// `asgi:group:user_42`
    pub(crate) fn group_key(&self, channels_group: &str) -> String {
        format!("{}:group:{channels_group}", self.prefix)
    }

    /// `asgispecific.herald!`: the zset every herald node drains.
    pub(crate) fn herald_queue_key(&self) -> String {
        format!("{}{}", self.prefix, self.herald_non_local)
    }

    /// `specific.herald!user.42`: herald's member for a herald group.
    pub(crate) fn herald_member(&self, herald_group: &str) -> String {
        format!("{}{herald_group}", self.herald_non_local)
    }

    /// The herald group named by one of herald's members, or `None` for anyone else's.
    pub(crate) fn herald_group_of<'a>(&self, member: &'a str) -> Option<&'a str> {
        member.strip_prefix(self.herald_non_local.as_str())
    }

    /// `asgispecific.5daf…!` for `specific.5daf…!8a53…`: the zset a channel is read from.
    pub(crate) fn queue_key_of(&self, channel: &str) -> String {
        format!("{}{}", self.prefix, non_local_name(channel))
    }

    /// `asgi__group__user_42`: the pub/sub channel of a group (pubsub layer).
    pub(crate) fn pubsub_group_channel(&self, channels_group: &str) -> String {
        format!("{}__group__{channels_group}", self.prefix)
    }

    /// The channels group named by a pub/sub channel, if it is one of ours.
    pub(crate) fn channels_group_of_pubsub<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("__group__")
    }

    /// The de-duplication hash for one received pub/sub message: keyed by channel and
    /// exact bytes, so identical text sent to two groups are two messages.
    pub(crate) fn dedup_key(&self, channel: &str, payload: &[u8]) -> String {
        let mut hasher = Sha256::new();
        hasher.update(channel.as_bytes());
        // A separator no channel name contains keeps ("ab","c") apart from ("a","bc").
        hasher.update([0u8]);
        hasher.update(payload);
        let digest = hasher.finalize();
        let mut hex = String::with_capacity(64);
        for byte in digest {
            hex.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
            hex.push(char::from_digit(u32::from(byte & 0xF), 16).unwrap_or('0'));
        }
        format!("{}:djdedup:{hex}", self.channel_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_channels_redis() {
        // Reference values from CHANNELS_REDIS.md §7.
        let table = [
            ("user_alice", [0, 1, 3]),
            ("user_bob", [0, 0, 0]),
            ("specific.abc!", [1, 2, 6]),
            ("specific.abc!def", [1, 2, 5]),
        ];
        for (value, [r2, r3, r7]) in table {
            assert_eq!(consistent_hash(value, 2), r2, "{value}");
            assert_eq!(consistent_hash(value, 3), r3, "{value}");
            assert_eq!(consistent_hash(value, 7), r7, "{value}");
            assert_eq!(consistent_hash(value, 1), 0);
        }
        assert_eq!(crc32fast::hash(b"user_alice") & 0xFFF, 1823);
    }

    #[test]
    fn hash_agrees_with_the_float_formula() {
        for low in 0u32..4096 {
            for ring in 1..=16usize {
                let float = (f64::from(low) / (4096.0 / ring as f64)) as usize;
                assert_eq!((low as usize * ring) / 4096, float, "{low} {ring}");
            }
        }
    }

    #[test]
    fn names() {
        let keys = Keys::new("asgi", "herald");
        assert_eq!(keys.group_key("user_42"), "asgi:group:user_42");
        assert_eq!(keys.herald_queue_key(), "asgispecific.herald!");
        assert_eq!(keys.herald_member("user.42"), "specific.herald!user.42");
        assert_eq!(
            keys.herald_group_of("specific.herald!user.42"),
            Some("user.42")
        );
        assert_eq!(keys.herald_group_of("specific.other!user.42"), None);
        assert_eq!(keys.queue_key_of("specific.ab!cd"), "asgispecific.ab!");
        assert_eq!(keys.queue_key_of("worker.tasks"), "asgiworker.tasks");
        assert_eq!(keys.pubsub_group_channel("user_42"), "asgi__group__user_42");
        assert_eq!(
            keys.channels_group_of_pubsub("asgi__group__user_42"),
            Some("user_42")
        );
        assert_eq!(keys.channels_group_of_pubsub("asgispecific.x"), None);
        let a = keys.dedup_key("ab", b"c");
        assert!(a.starts_with("herald:djdedup:") && a.len() == 15 + 64);
        assert_ne!(a, keys.dedup_key("a", b"bc"));
    }
}
