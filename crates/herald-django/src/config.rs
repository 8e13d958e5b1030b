//! `DjangoConfig`: the `[django]` section of herald's configuration, mirroring the Django
//! side's `CHANNEL_LAYERS["default"]["CONFIG"]`.

use serde::{Deserialize, Serialize};

use crate::group_map::{GroupMap, GroupMapRule};

/// Which channels_redis layer the Django project uses (`CHANNEL_LAYERS` `BACKEND`). The two
/// are not interoperable: pick the one Django names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `channels_redis.core.RedisChannelLayer` (sorted sets; the Channels default).
    #[default]
    Core,
    /// `channels_redis.pubsub.RedisPubSubChannelLayer` (Redis PUB/SUB).
    Pubsub,
}

/// A `channel_capacity` entry: channels whose full name matches `pattern` (a glob where `*`
/// matches any run of characters and `?` one character, matched against the whole name)
/// hold at most `capacity` messages per Redis key.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityRule {
    /// Glob over full channel names, e.g. `"specific.*"`.
    pub pattern: String,
    /// Maximum messages queued per key for matching channels.
    pub capacity: u64,
}

/// Settings of the Django bridge. Every field has a default, so `[django]` with
/// `enabled = true` alone talks to a Django project that uses channels_redis' defaults on
/// `redis://127.0.0.1:6379`. Unknown keys are refused.
///
/// ```toml
/// [django]
/// enabled = true
/// backend = "core"                      # or "pubsub"
/// hosts = ["redis://127.0.0.1:6379"]    # same list, same order as Django's
/// group_map = [{ herald = "user.{id}", channels = "user_{id}" }]
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DjangoConfig {
    /// Whether the server starts the bridge at all. Default `false`.
    pub enabled: bool,
    /// The layer Django uses. Default `"core"`.
    pub backend: Backend,
    /// Redis URLs, one per shard, in **the same order** as Django's `hosts` (the order
    /// decides which shard holds which group). Default `["redis://127.0.0.1:6379"]`.
    pub hosts: Vec<String>,
    /// Django's `prefix`. Default `"asgi"`.
    pub prefix: String,
    /// Django's `expiry`, seconds: message lifetime in a queue (core). Default 60.
    pub expiry: u64,
    /// Django's `group_expiry`, seconds: how long a group membership lives without a
    /// refresh (core). Default 86400.
    pub group_expiry: u64,
    /// Django's `capacity`: messages per queue key before senders drop (core). Default 100.
    pub capacity: u64,
    /// Django's `channel_capacity`, as a list (first match wins). Used when herald sends to
    /// Django consumers, and to know the limit of herald's own queue. Default empty.
    pub channel_capacity: Vec<CapacityRule>,
    /// Django's `random_prefix_length` (core). Default 12. The pubsub layer never uses a
    /// prefix, so this is ignored there.
    pub random_prefix_length: usize,
    /// Django's `symmetric_encryption_keys`. Empty (the default) = no encryption.
    pub symmetric_encryption_keys: Vec<String>,
    /// herald group ↔ channels group rules; see [`crate::group_map`]. Default: identity.
    pub group_map: Vec<GroupMapRule>,
    /// The process-specific channel prefix shared by all herald nodes: herald joins
    /// channels groups as `specific.<channel_prefix>!<herald group>` and drains the
    /// queue `<prefix>specific.<channel_prefix>!`. `[A-Za-z0-9._-]+`. Default `"herald"`.
    pub channel_prefix: String,
    /// `type` of the messages herald sends to Django consumers; the consumer handles it in
    /// the method named with `.` replaced by `_` (`herald_message`). Default
    /// `"herald.message"`.
    pub message_type: String,
    /// Seconds a membership written by herald survives without a refresh (core). A group
    /// that no node has members for any more keeps receiving for at most this long.
    /// Default 300.
    pub membership_lease: u64,
    /// Seconds between membership refreshes by each node (core); must be below
    /// `membership_lease`. Default 60.
    pub membership_refresh: u64,
    /// Seconds between checks of herald's queue backlog (core). Default 5.
    pub backlog_check: u64,
}

impl Default for DjangoConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            backend: Backend::Core,
            hosts: vec!["redis://127.0.0.1:6379".to_owned()],
            prefix: "asgi".to_owned(),
            expiry: 60,
            group_expiry: 86400,
            capacity: 100,
            channel_capacity: Vec::new(),
            random_prefix_length: 12,
            symmetric_encryption_keys: Vec::new(),
            group_map: Vec::new(),
            channel_prefix: "herald".to_owned(),
            message_type: "herald.message".to_owned(),
            membership_lease: 300,
            membership_refresh: 60,
            backlog_check: 5,
        }
    }
}

/// A setting is out of range; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("django.{field}: {reason}")]
pub struct InvalidConfig {
    /// The offending key of `[django]`.
    pub field: &'static str,
    /// What is wrong, and what would be right.
    pub reason: String,
}

impl DjangoConfig {
    /// Checks every field and compiles the group map.
    pub fn validate(&self) -> Result<GroupMap, InvalidConfig> {
        let bad = |field, reason: &str| {
            Err(InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.hosts.is_empty() {
            return bad("hosts", "needs at least one redis:// URL");
        }
        for host in &self.hosts {
            if let Err(e) = redis::Client::open(host.as_str()) {
                return Err(InvalidConfig {
                    field: "hosts",
                    reason: format!("{host:?} is not a Redis URL: {e}"),
                });
            }
        }
        if self.expiry == 0 {
            return bad("expiry", "must be at least 1 second");
        }
        if self.group_expiry == 0 {
            return bad("group_expiry", "must be at least 1 second");
        }
        if self.capacity == 0 {
            return bad("capacity", "must be at least 1");
        }
        if self.channel_prefix.is_empty()
            || !self
                .channel_prefix
                .bytes()
                .all(herald_core::group::is_name_byte)
        {
            return bad("channel_prefix", "must match [A-Za-z0-9._-]+");
        }
        // Django dispatches on type.replace(".", "_") and refuses names starting with "_".
        if self.message_type.is_empty() || self.message_type.starts_with(['_', '.']) {
            return bad(
                "message_type",
                "must be non-empty and not start with '_' or '.'",
            );
        }
        if self.membership_lease == 0 {
            return bad("membership_lease", "must be at least 1 second");
        }
        if self.membership_refresh == 0 || self.membership_refresh >= self.membership_lease {
            return bad(
                "membership_refresh",
                "must be at least 1 second and below membership_lease",
            );
        }
        if self.backlog_check == 0 {
            return bad("backlog_check", "must be at least 1 second");
        }
        GroupMap::new(&self.group_map).map_err(|e| InvalidConfig {
            field: "group_map",
            reason: e.to_string(),
        })
    }

    /// The capacity Django applies to `channel` (first matching `channel_capacity` rule,
    /// else `capacity`).
    pub fn capacity_of(&self, channel: &str) -> u64 {
        self.channel_capacity
            .iter()
            .find(|rule| glob_match(rule.pattern.as_bytes(), channel.as_bytes()))
            .map_or(self.capacity, |rule| rule.capacity)
    }

    /// The random prefix length in force for the configured backend.
    pub(crate) fn effective_prefix_length(&self) -> usize {
        match self.backend {
            Backend::Core => self.random_prefix_length,
            Backend::Pubsub => 0,
        }
    }
}

/// Whole-string glob match with `*` and `?` (iterative, linear backtracking on the last
/// star, so hostile patterns cannot blow up).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"specific.herald!*", b"specific.herald!user.42"));
        assert!(glob_match(b"specific.*", b"specific."));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(!glob_match(b"a?c", b"ac"));
        assert!(!glob_match(b"worker.big", b"worker.bigger"));
        assert!(glob_match(b"*a*b*", b"xxaxxbxx"));
        assert!(!glob_match(b"*a*b", b"xxaxxbxxc"));
    }

    #[test]
    fn capacity_rules_first_match() {
        let config = DjangoConfig {
            channel_capacity: vec![
                CapacityRule {
                    pattern: "specific.herald!*".into(),
                    capacity: 10_000,
                },
                CapacityRule {
                    pattern: "specific.*".into(),
                    capacity: 5,
                },
            ],
            ..DjangoConfig::default()
        };
        assert_eq!(config.capacity_of("specific.herald!user.1"), 10_000);
        assert_eq!(config.capacity_of("specific.abc!def"), 5);
        assert_eq!(config.capacity_of("worker"), 100);
    }

    #[derive(Debug, Deserialize)]
    struct File {
        django: DjangoConfig,
    }

    #[test]
    fn parses_a_toml_section() {
        let file: File = toml::from_str(
            r#"
            [django]
            enabled = true
            backend = "pubsub"
            hosts = ["redis://127.0.0.1:6390", "redis://127.0.0.1:6391"]
            prefix = "myapp"
            symmetric_encryption_keys = ["s3cret"]
            channel_capacity = [{ pattern = "specific.herald!*", capacity = 10000 }]
            group_map = [{ herald = "user.{id}", channels = "user_{id}" }]
            "#,
        )
        .unwrap();
        let config = file.django;
        assert!(config.enabled);
        assert_eq!(config.backend, Backend::Pubsub);
        assert_eq!(config.hosts.len(), 2);
        assert_eq!(config.capacity_of("specific.herald!user.1"), 10_000);
        // Unset keys keep their defaults.
        assert_eq!(config.expiry, 60);
        assert_eq!(config.channel_prefix, "herald");
        assert_eq!(config.effective_prefix_length(), 0);
        assert!(config.validate().is_ok());

        let empty: File = toml::from_str("[django]").unwrap();
        assert_eq!(empty.django, DjangoConfig::default());
        assert!(!empty.django.enabled);
    }

    #[test]
    fn refuses_unknown_keys_and_backends() {
        assert!(toml::from_str::<File>("[django]\nhost = \"redis://x\"").is_err());
        assert!(toml::from_str::<File>("[django]\nbackend = \"memory\"").is_err());
        assert!(
            toml::from_str::<File>(
                "[django]\ngroup_map = [{ herald = \"a\", channels = \"b\", x = 1 }]"
            )
            .is_err()
        );
    }

    #[test]
    fn defaults_validate() {
        assert!(DjangoConfig::default().validate().is_ok());
        let bad = DjangoConfig {
            membership_refresh: 300,
            ..DjangoConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "membership_refresh");
        let bad = DjangoConfig {
            channel_prefix: "her!ald".into(),
            ..DjangoConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "channel_prefix");
    }
}
