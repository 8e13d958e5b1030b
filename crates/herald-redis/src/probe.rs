//! The readiness probe: proves the whole pub/sub path, not only that sockets are open.
//!
//! Every `probe_interval` the supervisor publishes a sequence number on this node's
//! private channel (`{prefix}:probe:{node}`, subscribed with the groups) through the
//! command connection, and the read loop hands what comes back on that channel to
//! [`Probe::answered`]. A probe unanswered for one interval makes the layer not ready;
//! since probes go out every interval, a stall is reported within two intervals of its
//! start, and the first answer after it makes the layer ready again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use crate::layer::Counter;

/// State of one layer's probes.
#[derive(Debug)]
pub(crate) struct Probe {
    /// This node's private channel.
    channel: String,
    interval: Duration,
    state: Mutex<State>,
    /// Probe intervals that ended without an answer.
    pub(crate) failures: Counter,
    /// The last round trip, in microseconds (0 before the first answer).
    round_trip_us: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Number of the last probe sent.
    seq: u64,
    /// When it was sent.
    sent_at: Option<Instant>,
    /// When the oldest probe still unanswered was sent; `None` when all were answered.
    unanswered_since: Option<Instant>,
    /// The last probe counted as failed, so that none is counted twice.
    failed_seq: u64,
    /// Failures since the last answer, for the one log line per stall.
    failures_in_a_row: u64,
}

impl Probe {
    pub(crate) fn new(channel: String, interval: Duration) -> Self {
        Self {
            channel,
            interval,
            state: Mutex::default(),
            failures: Counter::default(),
            round_trip_us: AtomicU64::new(0),
        }
    }

    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain numbers and instants, each set in one statement: take a poisoned lock over.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether no probe has been waiting for its answer for a whole interval.
    pub(crate) fn is_healthy(&self) -> bool {
        match self.lock().unanswered_since {
            Some(since) => since.elapsed() < self.interval,
            None => true,
        }
    }

    /// The last round trip (zero before the first answer).
    pub(crate) fn round_trip(&self) -> Duration {
        Duration::from_micros(self.round_trip_us.load(Ordering::Relaxed))
    }

    /// Forgets probes of a previous connection (they can no longer be answered).
    pub(crate) fn reset(&self) {
        let mut state = self.lock();
        state.sent_at = None;
        state.unanswered_since = None;
    }

    /// A message on the probe channel: the answer to probe `payload` (a decimal number).
    pub(crate) fn answered(&self, prefix: &str, payload: &[u8]) {
        let seq = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.parse::<u64>().ok());
        let mut state = self.lock();
        // Answers come in order; only the last probe's clears the stall (an older one
        // arriving late says nothing about the newer ones).
        if seq != Some(state.seq) {
            return;
        }
        if let Some(sent_at) = state.sent_at.take() {
            let took = sent_at.elapsed();
            if took >= self.interval {
                // Answered, but too late: the layer reported not ready meanwhile.
                self.failed(&mut state, prefix);
            }
            let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            self.round_trip_us.store(micros, Ordering::Relaxed);
        }
        state.unanswered_since = None;
        if state.failures_in_a_row > 0 {
            tracing::info!(
                prefix,
                failed_probes = state.failures_in_a_row,
                "redis pub/sub probe answered again"
            );
            state.failures_in_a_row = 0;
        }
    }

    /// Counts the last probe sent as failed, once.
    fn failed(&self, state: &mut State, prefix: &str) {
        if state.failed_seq == state.seq {
            return;
        }
        state.failed_seq = state.seq;
        self.failures.increment();
        state.failures_in_a_row += 1;
        // One line per stall; the recovery line counts the failures.
        if state.failures_in_a_row == 1 {
            tracing::warn!(prefix, interval = ?self.interval, "redis pub/sub probe unanswered; not ready until it answers");
        }
    }

    /// Starts probe number `seq + 1`; returns its number. First counts the previous probe
    /// as failed if it is still unanswered.
    pub(crate) fn start(&self, prefix: &str) -> u64 {
        let now = Instant::now();
        let mut state = self.lock();
        if state.sent_at.is_some() {
            self.failed(&mut state, prefix);
        }
        state.seq += 1;
        state.sent_at = Some(now);
        state.unanswered_since.get_or_insert(now);
        state.seq
    }

    /// Sends a probe every interval on `conn`, until the caller drops this future.
    pub(crate) async fn run(
        &self,
        prefix: &str,
        mut conn: MultiplexedConnection,
        command_timeout: Duration,
    ) {
        // The first probe one interval in: the channel's SUBSCRIBE is confirmed by then.
        let mut tick = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let seq = self.start(prefix);
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(&self.channel).arg(seq);
            let publish = cmd.query_async::<i64>(&mut conn);
            // A failed or late PUBLISH is an unanswered probe; the connection's own
            // failure is the health check's and the command path's to notice.
            if let Ok(Err(e)) = tokio::time::timeout(command_timeout, publish).await {
                tracing::debug!(prefix, error = %e, "probe publish failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn unanswered_for_an_interval_is_unhealthy_and_counted_once() {
        let probe = Probe::new("p:probe:x".to_owned(), SECOND);
        assert!(probe.is_healthy(), "nothing sent yet");
        let first = probe.start("p");
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(probe.is_healthy(), "still within the interval");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!probe.is_healthy(), "one whole interval unanswered");
        let second = probe.start("p");
        assert_eq!(probe.failures.get(), 1, "the first probe failed");
        probe.answered("p", first.to_string().as_bytes());
        assert!(
            !probe.is_healthy(),
            "a late answer to an older probe clears nothing"
        );
        tokio::time::advance(Duration::from_millis(10)).await;
        probe.answered("p", second.to_string().as_bytes());
        assert!(probe.is_healthy());
        assert_eq!(probe.failures.get(), 1, "a timely answer is no failure");
        assert_eq!(probe.round_trip(), Duration::from_millis(10));
        probe.start("p");
        assert_eq!(probe.failures.get(), 1, "an answered probe is not counted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_is_one_failure_and_garbage_is_ignored() {
        let probe = Probe::new("p:probe:x".to_owned(), SECOND);
        let seq = probe.start("p");
        tokio::time::advance(Duration::from_millis(1500)).await;
        probe.answered("p", b"not a number");
        assert!(!probe.is_healthy());
        probe.answered("p", seq.to_string().as_bytes());
        assert!(probe.is_healthy());
        assert_eq!(probe.failures.get(), 1);
        probe.start("p");
        assert_eq!(
            probe.failures.get(),
            1,
            "the late probe is not counted again"
        );
    }
}
