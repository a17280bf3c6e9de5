//! How fast a backfill goes: the throttles checked before each chunk
//! (lock waiters, replica lag, active sessions) and the chunk size that
//! aims at a target time per chunk.

use std::time::Duration;

use tokio_postgres::Client;

use crate::error::ControlError;
use crate::latency::Histogram;

/// What the database looks like before a chunk: the throttles' inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// The largest `replay_lag` among replicas, in milliseconds.
    pub replica_lag_ms: f64,
    /// Active client sessions other than the backfill's.
    pub active_sessions: i64,
    /// Sessions waiting for a lock on the table.
    pub lock_waiters: i64,
}

/// The limits in force for one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Replica lag at most.
    pub max_replica_lag_ms: Option<u64>,
    /// Active sessions at most.
    pub max_active_sessions: Option<u64>,
    /// The application's p99 at most, in percent of its baseline.
    pub max_app_p99_pct: Option<u64>,
}

/// Why the next chunk must wait, if it must. Lock waiters always hold it:
/// a backfill chunk must never make an application (or DDL) queue longer.
pub fn throttle_reason(load: &Load, limits: &Limits) -> Option<String> {
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
/// started. At most once a second the guard compares the last two seconds'
/// p99 with `pct`% of it: above, the pause after each chunk doubles (from
/// 1× up to 8× the chunk's time, so the backfill keeps at least 11% of its
/// speed); below, it halves until it is gone.
#[derive(Debug, Clone, Default)]
pub struct LatencyGuard {
    baseline: Option<Duration>,
    /// The pause per chunk as a multiple of the chunk's time.
    factor: f64,
    decided: Option<std::time::Instant>,
    reason: String,
}

impl LatencyGuard {
    /// How far back the baseline looks.
    pub const BASELINE_SPAN: Duration = Duration::from_secs(30);
    /// How far back "now" looks.
    pub const RECENT_SPAN: Duration = Duration::from_secs(2);
    const MIN_BASELINE: u64 = 100;
    const MIN_RECENT: u64 = 20;

    /// A guard whose baseline is the p99 of `before` (none with too few
    /// round trips: the guard then stays off).
    pub fn new(before: &Histogram) -> Self {
        LatencyGuard {
            baseline: (before.count() >= Self::MIN_BASELINE)
                .then(|| before.quantile(0.99))
                .flatten(),
            ..Default::default()
        }
    }

    /// The baseline p99, if there is one.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline
    }

    /// The pause after a chunk that took `took`, and why; `recent` holds
    /// the round trips of the last [`Self::RECENT_SPAN`].
    pub fn pause(
        &mut self,
        now: std::time::Instant,
        recent: &Histogram,
        pct: Option<u64>,
        took: Duration,
    ) -> Option<(Duration, String)> {
        let (Some(base), Some(pct)) = (self.baseline, pct) else {
            self.factor = 0.0;
            return None;
        };
        let due = self
            .decided
            .is_none_or(|d| now.duration_since(d) >= Duration::from_secs(1));
        if due {
            self.decided = Some(now);
            let limit = base.mul_f64(pct as f64 / 100.0);
            let p99 = (recent.count() >= Self::MIN_RECENT)
                .then(|| recent.quantile(0.99))
                .flatten();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            match p99 {
                Some(p) if p > limit => {
                    self.factor = (self.factor * 2.0).clamp(1.0, 8.0);
                    self.reason = format!(
                        "application p99 {:.1} ms > max_app_p99_pct {pct}% of {:.1} ms before the backfill",
                        ms(p),
                        ms(base)
                    );
                }
                _ if self.factor > 0.0 => {
                    self.factor /= 2.0;
                    if self.factor < 0.125 {
                        self.factor = 0.0;
                    }
                    self.reason = format!(
                        "easing off: application p99 back within {pct}% of {:.1} ms",
                        ms(base)
                    );
                }
                _ => {}
            }
        }
        (self.factor > 0.0).then(|| (took.mul_f64(self.factor), self.reason.clone()))
    }
}

/// Chunk sizing from recent chunks: aim the p90 of their time per row at
/// the target, grow at most ×1.5, cut hard (÷4) when the last chunk took
/// five times the target, within [100, 100 000].
#[derive(Debug, Clone, Default)]
pub struct ChunkSizer {
    /// Seconds per row of the last chunks, oldest first.
    recent: std::collections::VecDeque<f64>,
}

impl ChunkSizer {
    const WINDOW: usize = 10;

    /// The size after a chunk of `size` rows took `took`.
    pub fn next(&mut self, size: u64, took: Duration, target: Duration) -> u64 {
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
pub fn next_chunk(size: u64, took: Duration, target: Duration) -> u64 {
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
        use crate::latency::LatencyRecorder;
        let before = LatencyRecorder::default();
        for _ in 0..1000 {
            before.record(Duration::from_millis(1));
        }
        let mut guard = LatencyGuard::new(&before.snapshot());
        assert!(guard.baseline().unwrap() >= Duration::from_millis(1));
        let slow = LatencyRecorder::default();
        for _ in 0..100 {
            slow.record(Duration::from_millis(3));
        }
        let fast = LatencyRecorder::default();
        for _ in 0..100 {
            fast.record(Duration::from_micros(900));
        }
        let chunk = Duration::from_millis(100);
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Within 200%: no pause.
        assert_eq!(guard.pause(at(0), &fast.snapshot(), Some(200), chunk), None);
        // Above: the pause doubles once a second, up to 8x the chunk.
        let (p, why) = guard
            .pause(at(1), &slow.snapshot(), Some(200), chunk)
            .unwrap();
        assert_eq!(p, chunk);
        assert!(why.contains("max_app_p99_pct 200%"), "{why}");
        // Not re-decided within the same second.
        assert_eq!(
            guard
                .pause(at(1), &slow.snapshot(), Some(200), chunk)
                .unwrap()
                .0,
            chunk
        );
        for s in 2..8 {
            guard.pause(at(s), &slow.snapshot(), Some(200), chunk);
        }
        assert_eq!(
            guard
                .pause(at(8), &slow.snapshot(), Some(200), chunk)
                .unwrap()
                .0,
            chunk * 8
        );
        // Back under: it halves until gone.
        let mut s = 9;
        while guard
            .pause(at(s), &fast.snapshot(), Some(200), chunk)
            .is_some()
        {
            s += 1;
            assert!(s < 20, "the pause never went away");
        }
        // Off, or without a baseline, it never pauses.
        assert_eq!(guard.pause(at(30), &slow.snapshot(), None, chunk), None);
        let mut blind = LatencyGuard::new(&LatencyRecorder::default().snapshot());
        assert_eq!(blind.pause(at(0), &slow.snapshot(), Some(200), chunk), None);
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
