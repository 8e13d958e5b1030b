//! `DjangoConfig`: the `[django]` section of herald's configuration, mirroring the Django
//! side's `CHANNEL_LAYERS["default"]["CONFIG"]`.

use std::time::Duration;

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
    /// Django consumers (herald's own queue: see `django_capacity`). Default empty.
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
    /// Seconds herald's membership outlives its last refresh (core). herald scores its
    /// member `now + membership_lease`, so Django's pruning (members scored at or below
    /// `now - group_expiry`) never removes it while any node refreshes it, whatever
    /// `group_expiry` Django uses; after the last node left, Django prunes it at its next
    /// `group_send` once `membership_lease + group_expiry` seconds have passed (or the key
    /// expires). Default 300.
    pub membership_lease: u64,
    /// Seconds between membership refreshes by each node (core). Each refresh also re-arms
    /// the group key's TTL, which a Django consumer's `group_add` shortens to Django's
    /// `group_expiry`, and repairs a membership that vanished (counted). Default: a third of
    /// `group_expiry` (at most 60 s; fractions of a second allowed), so setting
    /// `group_expiry` alone is enough. An explicit value must be below `group_expiry`.
    pub membership_refresh: Option<u64>,
    /// Seconds between checks of herald's queue backlog (core). Default 5.
    pub backlog_check: u64,
    /// The capacity Django applies to herald's queue key (core): channels_redis'
    /// `group_send` drops a message silently when the key already holds this many
    /// unexpired messages. Mirror Django's `capacity` (or its `channel_capacity` entry for
    /// `specific.<channel_prefix>!*`). herald counts the moments its queue reaches it
    /// (`herald_django_capacity_reached_total`) and logs once per burst. Default 100.
    pub django_capacity: u64,
    /// What herald delivers for a message from Django. Default `"text"`.
    pub payload: PayloadMode,
    /// Per-group exceptions to `payload`, first match wins: `{ pattern = "chat.*",
    /// payload = "event" }` (glob over herald group names). Default empty.
    pub payload_rules: Vec<PayloadRule>,
}

/// How a channels message becomes the frame herald delivers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadMode {
    /// The message's `text` (str) as a text frame or `bytes` as a binary frame; a message
    /// with neither is dropped (counted in `dropped_no_payload`).
    #[default]
    Text,
    /// The whole event without its `type` key, as compact JSON in a text frame: what a
    /// consumer doing `self.send(text_data=json.dumps({k: event[k] ...}))` for every key
    /// would send. `bytes` values are not JSON: such a message is dropped (counted).
    Event,
}

/// A `payload_rules` entry: herald groups matching `pattern` (glob, `*` and `?`) use
/// `payload`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadRule {
    /// Glob over herald group names, e.g. `"chat.*"`.
    pub pattern: String,
    /// The mode for matching groups.
    pub payload: PayloadMode,
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
            membership_refresh: None,
            backlog_check: 5,
            django_capacity: 100,
            payload: PayloadMode::Text,
            payload_rules: Vec::new(),
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
        if let Some(refresh) = self.membership_refresh
            && (refresh == 0 || refresh >= self.group_expiry)
        {
            return Err(InvalidConfig {
                field: "membership_refresh",
                reason: format!(
                    "{refresh} must be at least 1 second and below group_expiry ({}): a Django \
                     consumer's group_add shortens the group key's TTL to group_expiry, so a \
                     slower refresh lets herald's membership expire (leave it unset to follow \
                     group_expiry)",
                    self.group_expiry
                ),
            });
        }
        if self.django_capacity == 0 {
            return bad("django_capacity", "must be at least 1");
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

    /// The refresh period in force: the explicit `membership_refresh`, else a third of
    /// `group_expiry` capped at 60 s.
    pub fn effective_refresh(&self) -> Duration {
        match self.membership_refresh {
            Some(secs) => Duration::from_secs(secs),
            None => (Duration::from_secs(self.group_expiry) / 3)
                .min(Duration::from_secs(60))
                .max(Duration::from_millis(100)),
        }
    }

    /// The payload mode for herald group `group` (first matching rule, else `payload`).
    pub fn payload_mode_of(&self, group: &str) -> PayloadMode {
        self.payload_rules
            .iter()
            .find(|rule| glob_match(rule.pattern.as_bytes(), group.as_bytes()))
            .map_or(self.payload, |rule| rule.payload)
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
        // Setting group_expiry alone is enough: the refresh follows it, well below.
        let short = DjangoConfig {
            group_expiry: 30,
            ..DjangoConfig::default()
        };
        assert!(short.validate().is_ok());
        assert_eq!(short.effective_refresh(), Duration::from_secs(10));
        let tiny = DjangoConfig {
            group_expiry: 1,
            ..DjangoConfig::default()
        };
        assert!(tiny.validate().is_ok());
        assert!(tiny.effective_refresh() < Duration::from_secs(1));
        assert_eq!(
            DjangoConfig::default().effective_refresh(),
            Duration::from_secs(60)
        );
        // An explicit refresh at or above group_expiry is refused.
        for refresh in [0, 30, 60] {
            let bad = DjangoConfig {
                group_expiry: 30,
                membership_refresh: Some(refresh),
                ..DjangoConfig::default()
            };
            assert_eq!(bad.validate().unwrap_err().field, "membership_refresh");
        }
        let ok = DjangoConfig {
            group_expiry: 30,
            membership_refresh: Some(29),
            ..DjangoConfig::default()
        };
        assert_eq!(
            ok.validate().map(|_| ok.effective_refresh()),
            Ok(Duration::from_secs(29))
        );
        let bad = DjangoConfig {
            channel_prefix: "her!ald".into(),
            ..DjangoConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "channel_prefix");
    }
}
