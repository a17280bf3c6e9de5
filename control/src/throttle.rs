//! How fast a backfill goes: the throttles checked before each chunk
//! (lock waiters, replica lag, active sessions) and the chunk size that
//! aims at a target time per chunk.

use std::time::Duration;

use tokio_postgres::Client;

use crate::error::ControlError;

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
    fn throttles_report_their_reason() {
        let calm = Load {
            replica_lag_ms: 10.0,
            active_sessions: 3,
            lock_waiters: 0,
        };
        let limits = Limits {
            max_replica_lag_ms: Some(500),
            max_active_sessions: Some(8),
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
