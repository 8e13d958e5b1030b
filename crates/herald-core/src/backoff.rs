//! `Backoff`: jittered exponential delays for reconnect and retry loops, shared by the
//! Redis layer and the Django bridge.

use std::time::Duration;

/// Doubles a step from `min` up to `max` after each failed attempt and draws each actual
/// delay uniformly from the upper half of the current step (`[step/2, step]`), so that
/// nodes which lost Redis at the same instant do not retry in lockstep, yet no delay is
/// ever shorter than half the step. [`Backoff::reset`] after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// A backoff starting at `min` and growing to `max` (`max` below `min` is raised to it).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            step: min,
        }
    }

    /// The delay before the next attempt; the step then doubles (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = self.step.saturating_mul(2).min(self.max);
        jittered(step, fastrand::f64())
    }

    /// Back to the shortest delay, after an attempt that worked.
    pub fn reset(&mut self) {
        self.step = self.min;
    }

    /// The step the next delay is drawn from.
    pub fn step(&self) -> Duration {
        self.step
    }
}

/// The delay for `step` and a uniform draw `unit` in `[0, 1)`: `step/2 + unit * step/2`.
/// Out-of-range draws are clamped, so the result always lies in `[step/2, step]`.
pub fn jittered(step: Duration, unit: f64) -> Duration {
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let half = step / 2;
    half + half.mul_f64(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn jitter_stays_in_the_upper_half_of_the_step() {
        let step = 100 * MS;
        assert_eq!(jittered(step, 0.0), 50 * MS);
        assert_eq!(jittered(step, 0.5), 75 * MS);
        assert_eq!(jittered(step, 1.0), step);
        assert_eq!(jittered(step, -3.0), 50 * MS);
        assert_eq!(jittered(step, 7.0), step);
        assert_eq!(jittered(step, f64::NAN), 50 * MS);
    }

    #[test]
    fn steps_double_to_the_cap_and_reset() {
        let mut backoff = Backoff::new(50 * MS, 2000 * MS);
        let mut expected = 50 * MS;
        for _ in 0..20 {
            assert_eq!(backoff.step(), expected);
            let delay = backoff.next_delay();
            assert!(
                delay >= expected / 2 && delay <= expected,
                "{delay:?} vs {expected:?}"
            );
            expected = (expected * 2).min(2000 * MS);
        }
        assert_eq!(backoff.step(), 2000 * MS);
        backoff.reset();
        assert_eq!(backoff.step(), 50 * MS);
        assert!(backoff.next_delay() <= 50 * MS);
    }

    #[test]
    fn a_cap_below_the_start_and_huge_steps_do_not_panic() {
        let mut backoff = Backoff::new(10 * MS, MS);
        for _ in 0..3 {
            assert!(backoff.next_delay() <= 10 * MS);
            assert_eq!(backoff.step(), 10 * MS);
        }
        let mut huge = Backoff::new(Duration::MAX / 2, Duration::MAX);
        for _ in 0..4 {
            huge.next_delay();
        }
        assert_eq!(huge.step(), Duration::MAX);
    }
}
