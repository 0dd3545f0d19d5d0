//! Sliding one-second windows, counted as the documents' limits are read at their strictest:
//! at most N calls in ANY window `(t − 1 s, t]` (shared/reference/flow-control.md).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(1);

/// Arrival times within the last second, and the most ever seen in one window.
#[derive(Debug, Default)]
pub struct SlidingWindow {
    times: VecDeque<Instant>,
    max: usize,
}

impl SlidingWindow {
    fn prune(&mut self, now: Instant) {
        while let Some(&front) = self.times.front() {
            if now.duration_since(front) >= WINDOW {
                self.times.pop_front();
            } else {
                break;
            }
        }
    }

    /// How many calls the window `(now − 1 s, now]` holds already.
    pub fn count(&mut self, now: Instant) -> usize {
        self.prune(now);
        self.times.len()
    }

    /// Records a call at `now`; returns the window's count including it.
    pub fn record(&mut self, now: Instant) -> usize {
        self.prune(now);
        self.times.push_back(now);
        self.max = self.max.max(self.times.len());
        self.times.len()
    }

    /// The most calls any window has held.
    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_any_sliding_second() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        for i in 0..10 {
            w.record(t0 + Duration::from_millis(i * 100));
        }
        // At t0+999 ms all ten are inside; at t0+1000 ms the first has left.
        assert_eq!(w.count(t0 + Duration::from_millis(999)), 10);
        assert_eq!(w.count(t0 + Duration::from_millis(1000)), 9);
        assert_eq!(w.max(), 10);
        // At 1950 ms everything up to 950 ms has left: only the new call is inside.
        w.record(t0 + Duration::from_millis(1950));
        assert_eq!(w.count(t0 + Duration::from_millis(1950)), 1);
        w.record(t0 + Duration::from_millis(2000));
        assert_eq!(w.count(t0 + Duration::from_millis(2949)), 2);
    }
}
