//! `RedisLayerError`: why a Redis layer could not be built.

/// Why [`RedisLayer::new`](crate::RedisLayer::new) refused its configuration.
///
/// Only the configuration can fail: an unreachable Redis is not an error at start-up, the
/// layer connects in the background and reports it through `is_ready()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisLayerError {
    /// `url` is not a Redis URL. Use `redis://[user:password@]host[:port][/db]`.
    #[error("invalid redis url")]
    InvalidUrl(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The URL names a transport this layer does not speak (TLS `rediss://` or a Unix
    /// socket). Use a plain `redis://host:port` URL.
    #[error("unsupported redis address: {0}")]
    UnsupportedAddress(String),
    /// A `redis+cluster://` URL that does not parse; the message says why.
    #[error("invalid redis+cluster url: {0}")]
    InvalidClusterUrl(String),
    /// A setting is out of range; the message names it.
    #[error("invalid redis layer config: {0}")]
    InvalidConfig(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_send_sync_static() {
        fn check<T: std::error::Error + Send + Sync + 'static>() {}
        check::<RedisLayerError>();
    }
}
