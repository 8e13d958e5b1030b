//! `Keys`: the only place that spells Redis key and channel names.
//!
//! Every name is `{prefix}:{{{group}}}:{kind}`. The braces make the group a Redis Cluster
//! hash tag, so one group's keys and channel always live on one shard; a group name can
//! contain neither `{`, `}` nor `:` (see `GroupName`), so a name parses back unambiguously.

use herald_core::GroupName;

/// Builds the names of one layer's keys and channels from its prefix.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
    /// Redis Cluster: group channels are shard channels (`SPUBLISH`/`SSUBSCRIBE`).
    sharded: bool,
}

/// Suffix of the hash holding a group's epoch (`e`) and last offset (`o`).
const META: &str = "meta";
/// Suffix of the stream holding a group's history.
const STREAM: &str = "stream";
/// Suffix of the pub/sub channel carrying a group's messages.
const CHANNEL: &str = "ch";
/// Suffix of the hash holding each node's presence entry for a group.
const PRESENCE: &str = "presence";
/// Suffix of the hash marking a group occupied (`since`, and `empty_since` while empty).
const OCCUPIED: &str = "occ";

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            sharded: false,
        }
    }

    /// The names of a layer on Redis Cluster: the same names, published with `SPUBLISH`.
    pub(crate) fn sharded(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            sharded: true,
        }
    }

    /// Whether group channels are shard channels (Redis Cluster).
    pub(crate) fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// The hash with the group's epoch and last offset.
    pub(crate) fn meta(&self, group: &GroupName) -> String {
        self.name(group, META)
    }

    /// The stream with the group's recent messages.
    pub(crate) fn stream(&self, group: &GroupName) -> String {
        self.name(group, STREAM)
    }

    /// The hash with one presence entry per node (field: the node id).
    pub(crate) fn presence(&self, group: &GroupName) -> String {
        self.name(group, PRESENCE)
    }

    /// The hash marking the group occupied, for `group.occupied`/`group.vacated`.
    pub(crate) fn occupied(&self, group: &GroupName) -> String {
        self.name(group, OCCUPIED)
    }

    /// The sorted set of every occupied group (member: the group name, score: since when,
    /// Unix ms). Not tied to a group: on Redis Cluster it lives on one shard.
    pub(crate) fn occupied_index(&self) -> String {
        format!("{}:occupied", self.prefix)
    }

    /// The pub/sub channel the group's messages are published on.
    pub(crate) fn channel(&self, group: &GroupName) -> String {
        self.name(group, CHANNEL)
    }

    /// The key holding the first position published with idempotency key `key` (also
    /// what `publish_once` uses, with its message id as the key).
    pub(crate) fn idempotency(&self, group: &GroupName, key: &str) -> String {
        format!("{}:{{{group}}}:once:{key}", self.prefix)
    }

    /// The private channel of one node's readiness probes (`node` is random per layer).
    /// It has no `{group}` part, so it never parses as a group's channel.
    pub(crate) fn probe_channel(&self, node: &str) -> String {
        format!("{}:probe:{node}", self.prefix)
    }

    /// The private probe channel of one node on one Redis Cluster shard: `tag` is a hash
    /// tag whose slot that shard serves (see `cluster/slots.rs`).
    pub(crate) fn shard_probe_channel(&self, node: &str, tag: &str) -> String {
        format!("{}:probe:{node}:{{{tag}}}", self.prefix)
    }

    /// The group name inside a channel name, if it is one of this prefix's channels.
    /// Not validated: callers look it up among the groups they subscribed to.
    pub(crate) fn group_name_of_channel<'a>(&self, channel: &'a [u8]) -> Option<&'a str> {
        let rest = channel.strip_prefix(self.prefix.as_bytes())?;
        let rest = rest.strip_prefix(b":{")?;
        let name = rest.strip_suffix(b"}:ch")?;
        std::str::from_utf8(name).ok()
    }

    fn name(&self, group: &GroupName, kind: &str) -> String {
        format!("{}:{{{group}}}:{kind}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_the_group_hash_tag() {
        let keys = Keys::new("herald");
        let g = GroupName::new("user.42").unwrap();
        assert_eq!(keys.meta(&g), "herald:{user.42}:meta");
        assert_eq!(keys.stream(&g), "herald:{user.42}:stream");
        assert_eq!(keys.channel(&g), "herald:{user.42}:ch");
        assert_eq!(keys.presence(&g), "herald:{user.42}:presence");
    }

    #[test]
    fn channels_parse_back() {
        let keys = Keys::new("app:herald");
        let g = GroupName::new("news-feed.EU").unwrap();
        let channel = keys.channel(&g);
        assert_eq!(
            keys.group_name_of_channel(channel.as_bytes()),
            Some("news-feed.EU")
        );
        assert_eq!(keys.group_name_of_channel(b"other:{g}:ch"), None);
        assert_eq!(keys.group_name_of_channel(b"app:herald:{g}:meta"), None);
    }
}
