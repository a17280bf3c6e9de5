//! The recent history of this instance's application latency: a
//! once-a-second history keeps snapshots of the histogram the sessions add
//! to ([`switchyard_rules::latency`]), and the backfill's latency guard
//! compares the p99 of recent seconds with the p99 before the backfill
//! began.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub(crate) use switchyard_rules::latency::Histogram;

/// Snapshots taken about once a second, newest last, kept for a minute.
#[derive(Debug, Default)]
pub(crate) struct History {
    samples: VecDeque<(Instant, Histogram)>,
}

impl History {
    const KEEP: usize = 64;

    /// Adds a snapshot taken at `at`.
    pub(crate) fn push(&mut self, at: Instant, snapshot: Histogram) {
        if self.samples.len() == Self::KEEP {
            self.samples.pop_front();
        }
        self.samples.push_back((at, snapshot));
    }

    /// The round trips from about `span` before `now` up to `current` (the
    /// snapshot at `now`); shorter when the history is.
    pub(crate) fn window(&self, now: Instant, current: &Histogram, span: Duration) -> Histogram {
        let start = now.checked_sub(span);
        let base = self
            .samples
            .iter()
            .rev()
            .find(|(at, _)| start.is_none_or(|s| *at <= s))
            .or(self.samples.front())
            .map(|(_, h)| h);
        match base {
            Some(h) => current.since(h),
            None => current.clone(),
        }
    }
}

/// A [`History`] shared between the fleet's tick (which samples) and the
/// backfill (which reads windows).
#[derive(Debug, Default)]
pub(crate) struct Recent(std::sync::Mutex<History>);

impl Recent {
    /// Adds a snapshot taken now.
    pub(crate) fn sample(&self, snapshot: Histogram) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Instant::now(), snapshot);
    }

    /// The round trips of about the last `span`, up to `current`.
    pub(crate) fn window(&self, current: &Histogram, span: Duration) -> Histogram {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .window(Instant::now(), current, span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_rules::latency::LatencyRecorder;

    #[test]
    fn quantiles_and_windows() {
        let r = LatencyRecorder::default();
        let mut history = History::default();
        let t0 = Instant::now();
        for _ in 0..990 {
            r.record(Duration::from_micros(500));
        }
        for _ in 0..10 {
            r.record(Duration::from_millis(20));
        }
        let first = r.snapshot();
        assert_eq!(first.count(), 1000);
        let p99 = first.quantile(0.99).unwrap();
        assert!(p99 >= Duration::from_micros(500) && p99 < Duration::from_micros(600));
        let p999 = first.quantile(0.999).unwrap();
        assert!(p999 >= Duration::from_millis(20) && p999 < Duration::from_millis(24));
        history.push(t0, first.clone());

        // A second later, only slow round trips: the window sees just them.
        for _ in 0..100 {
            r.record(Duration::from_millis(5));
        }
        let now = t0 + Duration::from_secs(1);
        let recent = history.window(now, &r.snapshot(), Duration::from_secs(1));
        assert_eq!(recent.count(), 100);
        assert!(recent.quantile(0.99).unwrap() >= Duration::from_millis(5));
        assert_eq!(Histogram::default().quantile(0.99), None);
    }
}
