//! Turning a message taken from Django's Redis into publishes on herald's layer.

use std::sync::Arc;
use std::time::Duration;

use herald_core::{GroupName, Layer, Payload};
use tokio_util::sync::CancellationToken;

use crate::bridge::Shared;
use crate::codec::{Body, ChannelsMessage};
use crate::config::PayloadMode;
use crate::stats::{Counters, bump};
use herald_core::Backoff;

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

/// The payload herald delivers to `group` for a decoded message, or `None` (counted, and
/// logged once per burst or per type) when there is none: `payload = "text"` needs
/// `text` or `bytes`, `"event"` a JSON-renderable event; either way the payload must fit
/// within the bridge's payload limit (one limit with the publish API).
pub(crate) fn payload_for(
    message: &ChannelsMessage,
    group: &GroupName,
    shared: &Shared,
) -> Option<Payload> {
    let counters = &shared.counters;
    let payload = match shared.config.payload_mode_of(group.as_str()) {
        PayloadMode::Text => match &message.body {
            Some(Body::Text(text)) => Payload::text(text.clone()),
            Some(Body::Bytes(bytes)) => Payload::binary(bytes.clone()),
            None => {
                counters.no_payload(message.msg_type.as_deref());
                return None;
            }
        },
        PayloadMode::Event => match message.event.to_json() {
            Ok(json) => Payload::text(json),
            Err(why) => {
                counters.unrenderable(why);
                return None;
            }
        },
    };
    let size = payload.data().len();
    if size > shared.max_payload_bytes {
        counters.oversized(size, shared.max_payload_bytes);
        return None;
    }
    Some(payload)
}

impl<L: Layer> Ingest<L> {
    /// Publishes `payload` to `group`, retrying a failing layer for a few seconds. The
    /// message was already taken out of Redis, so giving up loses it: that is counted.
    /// With `once = Some((id, window))` the publish is idempotent per id (a retry after a
    /// timeout that did publish, or another node's copy, publishes nothing).
    pub(crate) async fn publish(
        &self,
        group: &GroupName,
        payload: &Payload,
        once: Option<(&str, Duration)>,
    ) {
        {
            let deadline = tokio::time::Instant::now() + PUBLISH_RETRY_FOR;
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
            loop {
                let result = match once {
                    Some((id, window)) => {
                        self.layer
                            .publish_once(group, payload.clone(), id, window)
                            .await
                    }
                    None => self.layer.publish(group, payload.clone()).await.map(Some),
                };
                match result {
                    Ok(Some(_)) => {
                        bump(&self.counters.published);
                        break;
                    }
                    Ok(None) => {
                        bump(&self.counters.duplicates_skipped);
                        break;
                    }
                    Err(error) => {
                        let out_of_time = tokio::time::Instant::now() >= deadline;
                        if out_of_time || !crate::wait_backoff(&mut backoff, &self.shutdown).await {
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
