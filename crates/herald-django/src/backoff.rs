//! Exponential backoff for reconnect and retry loops, with jitter so that several herald
//! nodes do not hammer a recovering Redis in lockstep.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Doubles from `min` up to `max`; `reset` after a success.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }

    /// Sleeps for the next delay (±25 % jitter). Returns `false` if `shutdown` fired
    /// first, so loops can stop promptly.
    pub(crate) async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = 0.75 + fastrand::f64() * 0.5;
        let delay = base.mul_f64(jitter);
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}
