//! Application round-trip latency as one proxy instance sees it: sessions
//! add each round trip (first message to ReadyForQuery) to a lock-free
//! log-scale histogram; the control plane reads snapshots of it. Shared by
//! the wire path (which records) and the control plane (which throttles on
//! it), so it lives here, beside neither.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
}
