//! `BurstLog`: a recurring event (a refused connection, a timed-out body) is logged once
//! per burst, with the number of events the line stands for, instead of once per event.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The shortest time between two lines of one `BurstLog`.
const QUIET: Duration = Duration::from_secs(10);

/// Rate-limits the log lines of one kind of event.
#[derive(Debug, Default)]
pub(crate) struct BurstLog {
    /// When a line was last written. A std mutex: held for one comparison, never across
    /// an await.
    last: Mutex<Option<Instant>>,
    /// Events since that line.
    pending: AtomicU64,
}

impl BurstLog {
    /// Records one event; `Some(n)` when the caller should write a line now, standing for
    /// the `n` events since the previous line (this one included).
    pub(crate) fn hit(&self) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            Some(at) if now.saturating_duration_since(at) < QUIET => None,
            _ => {
                *last = Some(now);
                Some(self.pending.swap(0, Ordering::Relaxed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_burst_counting_what_it_stands_for() {
        let log = BurstLog::default();
        assert_eq!(log.hit(), Some(1), "the first event is logged");
        for _ in 0..99 {
            assert_eq!(log.hit(), None, "the rest of the burst is not");
        }
        *log.last.lock().unwrap() = Some(Instant::now() - QUIET);
        assert_eq!(
            log.hit(),
            Some(100),
            "the next line counts the suppressed events"
        );
    }
}
