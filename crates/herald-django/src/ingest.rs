//! Turning a message taken from Django's Redis into publishes on herald's layer.

use std::sync::Arc;
use std::time::Duration;

use herald_core::{GroupName, Layer, Payload};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::codec::{Body, ChannelsMessage};
use crate::stats::{Counters, bump};

/// How long a publish into herald's layer is retried before the message is counted as a
/// publish failure. Django's own messages live `expiry` (60 s) in Redis; holding one
/// longer than a few seconds here only delays everything behind it.
const PUBLISH_RETRY_FOR: Duration = Duration::from_secs(5);

/// What the receive loops share: the layer and the counters.
#[derive(Debug)]
pub(crate) struct Ingest<L> {
    pub(crate) layer: L,
    pub(crate) counters: Arc<Counters>,
    pub(crate) shutdown: CancellationToken,
}

/// The payload herald should deliver for a decoded message, or `None` (counted and logged
/// once per type) when it carries neither `text` nor `bytes`.
pub(crate) fn payload_of(message: ChannelsMessage, counters: &Counters) -> Option<Payload> {
    match message.body {
        Some(Body::Text(text)) => Some(Payload::text(text)),
        Some(Body::Bytes(bytes)) => Some(Payload::binary(bytes)),
        None => {
            counters.no_payload(message.msg_type.as_deref());
            None
        }
    }
}

impl<L: Layer> Ingest<L> {
    /// Publishes `payload` to each group, retrying a failing layer for a few seconds. The
    /// message was already taken out of Redis, so giving up loses it: that is counted.
    pub(crate) async fn publish(&self, groups: &[GroupName], payload: &Payload) {
        for group in groups {
            let deadline = tokio::time::Instant::now() + PUBLISH_RETRY_FOR;
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
            loop {
                match self.layer.publish(group, payload.clone()).await {
                    Ok(_) => {
                        bump(&self.counters.published);
                        break;
                    }
                    Err(error) => {
                        let out_of_time = tokio::time::Instant::now() >= deadline;
                        if out_of_time || !backoff.wait(&self.shutdown).await {
                            bump(&self.counters.publish_failures);
                            tracing::error!(%group, %error, "django message lost: herald layer refused it");
                            break;
                        }
                    }
                }
            }
        }
    }
}
