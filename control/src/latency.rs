//! Application latency as this proxy instance sees it: sessions add each
//! round trip (first message to ReadyForQuery) to a log-scale histogram,
//! a once-a-second history keeps snapshots of it, and the backfill's
//! latency guard compares the p99 of recent seconds with the p99 before the
//! backfill began.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Quarter-octave buckets of microseconds: about 19% wide, up to ~30 min.
const BUCKETS: usize = 128;

/// Counts of round trips by latency bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: [u64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; BUCKETS],
        }
    }
}

fn bucket(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros() as usize; // >= 2
    let quarter = ((us >> (octave - 2)) & 3) as usize;
    (4 * (octave - 1) + quarter).min(BUCKETS - 1)
}

/// The upper edge of a bucket, in microseconds.
fn upper_us(index: usize) -> u64 {
    if index < 4 {
        return index as u64 + 1;
    }
    let octave = index / 4 + 1;
    let quarter = (index % 4) as u64;
    (5 + quarter) << (octave - 2)
}

impl Histogram {
    /// Round trips counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// What was added between `earlier` and this snapshot.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let mut out = Histogram::default();
        for (i, c) in out.counts.iter_mut().enumerate() {
            *c = self.counts[i].saturating_sub(earlier.counts[i]);
        }
        out
    }

    /// The `q` quantile (0..=1), as its bucket's upper edge; `None` if empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_micros(upper_us(i)));
            }
        }
        None
    }
}

/// The histogram sessions add to, shared across threads without locks.
#[derive(Debug)]
pub struct LatencyRecorder {
    counts: Box<[AtomicU64; BUCKETS]>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder {
            counts: Box::new([const { AtomicU64::new(0) }; BUCKETS]),
        }
    }
}

impl LatencyRecorder {
    /// Adds one round trip.
    pub fn record(&self, took: Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        self.counts[bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// Everything recorded so far.
    pub fn snapshot(&self) -> Histogram {
        let mut h = Histogram::default();
        for (i, c) in self.counts.iter().enumerate() {
            h.counts[i] = c.load(Ordering::Relaxed);
        }
        h
    }
}

/// Snapshots taken about once a second, newest last, kept for a minute.
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<(Instant, Histogram)>,
}

impl History {
    const KEEP: usize = 64;

    /// Adds a snapshot taken at `at`.
    pub fn push(&mut self, at: Instant, snapshot: Histogram) {
        if self.samples.len() == Self::KEEP {
            self.samples.pop_front();
        }
        self.samples.push_back((at, snapshot));
    }

    /// The round trips from about `span` before `now` up to `current` (the
    /// snapshot at `now`); shorter when the history is.
    pub fn window(&self, now: Instant, current: &Histogram, span: Duration) -> Histogram {
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
    pub fn sample(&self, snapshot: Histogram) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Instant::now(), snapshot);
    }

    /// The round trips of about the last `span`, up to `current`.
    pub fn window(&self, current: &Histogram, span: Duration) -> Histogram {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .window(Instant::now(), current, span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_cover_their_values() {
        let mut last = 0;
        for us in [0u64, 1, 3, 4, 5, 7, 8, 100, 1_000, 65_535, 10_000_000] {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            assert!(upper_us(b) > us, "{us} above bucket {b}");
            if b >= 4 {
                assert!(upper_us(b - 1) <= us, "{us} below bucket {b}");
            }
            last = b;
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

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
