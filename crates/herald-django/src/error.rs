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
    /// The shard is not connected (yet): pubsub records the change and applies it on
    /// reconnect; core writes memberships as soon as the shard answers.
    #[error("django redis shard {shard} is disconnected; applied on reconnect")]
    Disconnected {
        /// Index into `hosts`.
        shard: usize,
    },
    /// The group maps to a channels group name longer than 99 characters; shorten the
    /// `group_map` templates.
    #[error("group {0} maps to no valid channels group name")]
    Unmappable(GroupName),
    /// The message could not be encrypted because the OS random generator failed (counted
    /// in `encrypt_failures`); nothing was sent.
    #[error(transparent)]
    Encrypt(#[from] crate::codec::NoRandomness),
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
