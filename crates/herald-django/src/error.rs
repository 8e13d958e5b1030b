//! `DjangoError`: what can go wrong when starting the bridge or sending through it.

use herald_core::GroupName;

use crate::config::InvalidConfig;

/// Why a bridge operation failed. Expected outcomes (capacity drops, empty groups) are
/// not errors: they are reported in [`crate::SendReport`] and [`crate::DjangoStats`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DjangoError {
    /// The `[django]` section is invalid; fix the named field.
    #[error(transparent)]
    Config(#[from] InvalidConfig),
    /// A Redis shard could not be reached at start. Check `django.hosts` (shards are
    /// numbered from 0 in list order; URLs are not printed since they may hold passwords).
    #[error("cannot connect to django redis shard {shard}")]
    Connect {
        /// Index into `hosts`.
        shard: usize,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// A Redis command failed (the shard is down or unreachable). The bridge keeps
    /// retrying on its own; a failed `group_active` is retried at the next refresh.
    #[error("django redis shard {shard} failed")]
    Redis {
        /// Index into `hosts`.
        shard: usize,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// The shard's subscriber connection is down: the change is recorded and applied as
    /// soon as it reconnects (pubsub).
    #[error("django redis shard {shard} is disconnected; applied on reconnect")]
    Disconnected {
        /// Index into `hosts`.
        shard: usize,
    },
    /// The group maps to a channels group name longer than 99 characters; shorten the
    /// `group_map` templates.
    #[error("group {0} maps to no valid channels group name")]
    Unmappable(GroupName),
    /// The bridge was shut down.
    #[error("django bridge stopped")]
    Stopped,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<DjangoError>();
    }
}
