//! How fast a backfill goes: the throttles checked before each chunk
//! (lock waiters, replica lag, active sessions) and the chunk size that
//! aims at a target time per chunk.

use std::time::Duration;

use tokio_postgres::Client;

use crate::error::ControlError;
use crate::latency::Histogram;

/// What the database looks like before a chunk: the throttles' inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Load {
    /// The largest `replay_lag` among replicas, in milliseconds.
    pub replica_lag_ms: f64,
    /// Active client sessions other than the backfill's.
    pub active_sessions: i64,
    /// Sessions waiting for a lock on the table.
    pub lock_waiters: i64,
}

/// The limits in force for one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Limits {
    /// Replica lag at most.
    pub max_replica_lag_ms: Option<u64>,
    /// Active sessions at most.
    pub max_active_sessions: Option<u64>,
    /// The application's p99 at most, in percent of its baseline.
    pub max_app_p99_pct: Option<u64>,
}

/// Why the next chunk must wait, if it must. Lock waiters always hold it:
/// a backfill chunk must never make an application (or DDL) queue longer.
pub(crate) fn throttle_reason(load: &Load, limits: &Limits) -> Option<String> {
    if load.lock_waiters > 0 {
        return Some(format!(
            "{} session(s) waiting for a lock on the table",
            load.lock_waiters
        ));
    }
    if let Some(max) = limits.max_replica_lag_ms {
        if load.replica_lag_ms > max as f64 {
            return Some(format!(
                "replica lag {:.0} ms > max_replica_lag_ms {max}",
                load.replica_lag_ms
            ));
        }
    }
    if let Some(max) = limits.max_active_sessions {
        if load.active_sessions > max as i64 {
            return Some(format!(
                "{} active sessions > max_active_sessions {max}",
                load.active_sessions
            ));
        }
    }
    None
}

/// Reads the throttles' inputs in one statement.
pub(crate) async fn load(client: &Client, table: &str) -> Result<Load, ControlError> {
    let row = client
        .query_one(
            "SELECT (SELECT coalesce(max(extract(epoch FROM replay_lag)) * 1000, 0)::float8
                     FROM pg_stat_replication),
                    (SELECT count(*) FROM pg_stat_activity
                     WHERE state = 'active' AND backend_type = 'client backend'
                       AND pid <> pg_backend_pid()),
                    (SELECT count(*) FROM pg_locks
                     WHERE locktype = 'relation' AND relation = $1::text::regclass AND NOT granted)",
            &[&table],
        )
        .await?;
    Ok(Load {
        replica_lag_ms: row.get(0),
        active_sessions: row.get(1),
        lock_waiters: row.get(2),
    })
}

/// Paces the backfill by the application's latency, as the proxy measures
/// it. The baseline is the p99 of the half minute before the backfill
/// started. About twice a second (once enough round trips came in) the
/// guard compares the p99 since its last decision with `pct`% of the
/// baseline. Above, the pause after each chunk grows (4×, 16×, then 64×
/// the chunk's time) and chunks get shorter by the same factor, so that the
/// application meets the backfill in small slices; below, the pause halves
/// until it is gone.
#[derive(Debug, Clone, Default)]
pub(crate) struct LatencyGuard {
    baseline: Option<Duration>,
    /// The pause per chunk as a multiple of the chunk's time.
    factor: f64,
    /// When the current window began, and the round trips up to then.
    window: Option<(std::time::Instant, Histogram)>,
    reason: String,
}

impl LatencyGuard {
    /// How far back the baseline looks.
    pub(crate) const BASELINE_SPAN: Duration = Duration::from_secs(30);
    const DECIDE_EVERY: Duration = Duration::from_millis(500);
    const MIN_BASELINE: u64 = 100;
    const MIN_RECENT: u64 = 20;
    const MAX_FACTOR: f64 = 64.0;
    const MIN_CHUNK: Duration = Duration::from_millis(5);

    /// A guard whose baseline is the p99 of `before` (none with too few
    /// round trips: the guard then stays off).
    pub(crate) fn new(before: &Histogram) -> Self {
        LatencyGuard {
            baseline: (before.count() >= Self::MIN_BASELINE)
                .then(|| before.quantile(0.99))
                .flatten(),
            ..Default::default()
        }
    }

    /// The baseline p99, if there is one.
    #[cfg(test)]
    fn baseline(&self) -> Option<Duration> {
        self.baseline
    }

    /// The chunk time to aim at instead of `target` while pacing.
    pub(crate) fn chunk_target(&self, target: Duration) -> Duration {
        if self.factor > 0.0 {
            target.div_f64(1.0 + self.factor).max(Self::MIN_CHUNK)
        } else {
            target
        }
    }

    /// The pause after a chunk that took `took`, and why; `total` holds the
    /// application's round trips so far.
    pub(crate) fn pause(
        &mut self,
        now: std::time::Instant,
        total: &Histogram,
        pct: Option<u64>,
        took: Duration,
    ) -> Option<(Duration, String)> {
        let (Some(base), Some(pct)) = (self.baseline, pct) else {
            self.factor = 0.0;
            return None;
        };
        let (since, start) = self
            .window
            .get_or_insert_with(|| (now, total.clone()))
            .clone();
        let recent = total.since(&start);
        let age = now.duration_since(since);
        // A quiet application (too few round trips for a p99 for a while)
        // counts as within the limit.
        let quiet = age >= Self::DECIDE_EVERY * 4;
        if age >= Self::DECIDE_EVERY && (recent.count() >= Self::MIN_RECENT || quiet) {
            self.window = Some((now, total.clone()));
            let limit = base.mul_f64(pct as f64 / 100.0);
            let p99 = match recent.count() >= Self::MIN_RECENT {
                true => recent.quantile(0.99).unwrap_or_default(),
                false => Duration::ZERO,
            };
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            if p99 > limit {
                self.factor = (self.factor * 4.0).clamp(4.0, Self::MAX_FACTOR);
                self.reason = format!(
                    "application p99 {:.1} ms > max_app_p99_pct {pct}% of {:.1} ms before the backfill",
                    ms(p99),
                    ms(base)
                );
            } else if self.factor > 0.0 {
                self.factor /= 2.0;
                if self.factor < 0.5 {
                    self.factor = 0.0;
                }
                self.reason = format!(
                    "easing off: application p99 {:.1} ms, within {pct}% of {:.1} ms",
                    ms(p99),
                    ms(base)
                );
            }
        }
        (self.factor > 0.0).then(|| (took.mul_f64(self.factor), self.reason.clone()))
    }
}

/// Chunk sizing from recent chunks: aim the p90 of their time per row at
/// the target, grow at most ×1.5, cut hard (÷4) when the last chunk took
/// five times the target, within [100, 100 000].
#[derive(Debug, Clone, Default)]
pub(crate) struct ChunkSizer {
    /// Seconds per row of the last chunks, oldest first.
    recent: std::collections::VecDeque<f64>,
}

impl ChunkSizer {
    const WINDOW: usize = 10;

    /// The size after a chunk of `size` rows took `took`.
    pub(crate) fn next(&mut self, size: u64, took: Duration, target: Duration) -> u64 {
        let took = took.as_secs_f64().max(0.000_1);
        let target = target.as_secs_f64();
        if self.recent.len() == Self::WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(took / size.max(1) as f64);
        let next = if took > 5.0 * target {
            self.recent.clear();
            size as f64 / 4.0
        } else {
            let mut per_row: Vec<f64> = self.recent.iter().copied().collect();
            per_row.sort_by(|a, b| a.total_cmp(b));
            let p90 = per_row[(per_row.len() * 9 / 10).min(per_row.len() - 1)];
            (target / p90).min(size as f64 * 1.5)
        };
        (next as u64).clamp(100, 100_000)
    }
}

/// Next chunk size from the last chunk alone (see [`ChunkSizer`]).
#[cfg(test)]
fn next_chunk(size: u64, took: Duration, target: Duration) -> u64 {
    ChunkSizer::default().next(size, took, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_adapts_within_bounds() {
        let target = Duration::from_millis(100);
        assert_eq!(
            next_chunk(1000, Duration::from_millis(50), target),
            1500,
            "grows at most x1.5"
        );
        assert_eq!(next_chunk(1000, Duration::from_millis(200), target), 500);
        assert_eq!(
            next_chunk(1000, Duration::from_millis(600), target),
            250,
            "hard cut past 5x"
        );
        assert_eq!(next_chunk(100, Duration::from_secs(10), target), 100);
        assert_eq!(
            next_chunk(100_000, Duration::from_millis(1), target),
            100_000
        );
        // One fast chunk among slow ones does not make the next one big:
        // the p90 of recent chunks decides.
        let mut sizer = ChunkSizer::default();
        for _ in 0..5 {
            assert_eq!(sizer.next(1000, Duration::from_millis(100), target), 1000);
        }
        assert_eq!(sizer.next(1000, Duration::from_millis(10), target), 1000);
    }

    #[test]
    fn the_latency_guard_paces_while_the_application_is_slow() {
        use switchyard_rules::latency::LatencyRecorder;
        let before = LatencyRecorder::default();
        for _ in 0..1000 {
            before.record(Duration::from_millis(1));
        }
        let mut guard = LatencyGuard::new(&before.snapshot());
        assert!(guard.baseline().unwrap() >= Duration::from_millis(1));
        let app = LatencyRecorder::default();
        let add = |n: usize, each: Duration| {
            for _ in 0..n {
                app.record(each);
            }
            app.snapshot()
        };
        let chunk = Duration::from_millis(100);
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let fast = Duration::from_micros(900);
        let slow = Duration::from_millis(3);
        // The first call opens a window; quick round trips never pause.
        assert_eq!(guard.pause(at(0), &add(50, fast), Some(200), chunk), None);
        assert_eq!(guard.pause(at(600), &add(50, fast), Some(200), chunk), None);
        assert_eq!(guard.chunk_target(chunk), chunk);
        // Slow ones: the pause starts at 4x, then grows 4x per decision.
        let (p, why) = guard
            .pause(at(1200), &add(50, slow), Some(200), chunk)
            .unwrap();
        assert_eq!(p, chunk * 4);
        assert!(why.contains("max_app_p99_pct 200%"), "{why}");
        assert!(guard.chunk_target(chunk) < chunk / 2);
        // Too soon, or too few round trips: no new decision.
        assert_eq!(
            guard
                .pause(at(1300), &add(0, slow), Some(200), chunk)
                .unwrap()
                .0,
            chunk * 4
        );
        assert_eq!(
            guard
                .pause(at(2000), &add(5, slow), Some(200), chunk)
                .unwrap()
                .0,
            chunk * 4
        );
        let mut ms = 2000;
        for _ in 0..10 {
            ms += 600;
            guard.pause(at(ms), &add(50, slow), Some(200), chunk);
        }
        assert_eq!(
            guard
                .pause(at(ms), &add(0, slow), Some(200), chunk)
                .unwrap()
                .0,
            chunk * 64
        );
        assert_eq!(guard.chunk_target(chunk), LatencyGuard::MIN_CHUNK);
        // Back under: it halves until gone.
        let mut decisions = 0;
        while guard
            .pause(at(ms), &add(50, fast), Some(200), chunk)
            .is_some()
        {
            ms += 600;
            decisions += 1;
            assert!(decisions < 20, "the pause never went away");
        }
        // A quiet application lets the pause go too.
        guard.pause(at(ms), &add(50, slow), Some(200), chunk);
        assert!(guard
            .pause(at(ms + 600), &add(50, slow), Some(200), chunk)
            .is_some());
        let mut quiet_ms = ms + 600;
        while guard
            .pause(at(quiet_ms), &add(0, slow), Some(200), chunk)
            .is_some()
        {
            quiet_ms += 2100;
            assert!(quiet_ms < ms + 60_000, "a quiet application kept the pause");
        }
        // Off, or without a baseline, it never pauses.
        assert_eq!(guard.pause(at(ms + 600), &add(50, slow), None, chunk), None);
        let mut blind = LatencyGuard::new(&LatencyRecorder::default().snapshot());
        assert_eq!(blind.pause(at(0), &add(50, slow), Some(200), chunk), None);
        assert_eq!(blind.pause(at(600), &add(50, slow), Some(200), chunk), None);
    }

    #[test]
    fn throttles_report_their_reason() {
        let calm = Load {
            replica_lag_ms: 10.0,
            active_sessions: 3,
            lock_waiters: 0,
        };
        let limits = Limits {
            max_replica_lag_ms: Some(500),
            max_active_sessions: Some(8),
            max_app_p99_pct: None,
        };
        assert_eq!(throttle_reason(&calm, &limits), None);
        assert_eq!(throttle_reason(&calm, &Limits::default()), None);
        let lagging = Load {
            replica_lag_ms: 900.0,
            ..calm
        };
        assert_eq!(
            throttle_reason(&lagging, &limits).unwrap(),
            "replica lag 900 ms > max_replica_lag_ms 500"
        );
        assert_eq!(throttle_reason(&lagging, &Limits::default()), None);
        let busy = Load {
            active_sessions: 20,
            ..calm
        };
        assert!(throttle_reason(&busy, &limits)
            .unwrap()
            .contains("20 active sessions"));
        let waiting = Load {
            lock_waiters: 2,
            ..calm
        };
        assert!(throttle_reason(&waiting, &Limits::default())
            .unwrap()
            .contains("2 session(s) waiting"));
    }
}
