//! `Backoff`: jittered exponential delays between reconnection attempts.

use std::time::Duration;

/// Doubles the delay after each failed attempt, from `min` up to `max`, and draws each
/// actual delay uniformly from the upper half of the current step, so that nodes which
/// lost Redis at the same instant do not reconnect in lockstep.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            step: min,
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Back to the shortest delay, after a connection that worked.
    pub(crate) fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter() {
        let min = Duration::from_millis(50);
        let max = Duration::from_secs(2);
        let mut backoff = Backoff::new(min, max);
        let mut step = min;
        for _ in 0..20 {
            let d = backoff.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
            step = (step * 2).min(max);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= min);
    }
}
