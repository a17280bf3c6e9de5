//! Long work: the chunked, throttled, resumable backfill and the chunked
//! parity check. Each runs on its own connection; the backfill writes its
//! checkpoint in the same transaction as each chunk, so a crash loses no
//! completed chunk and a restart resumes from it.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::{Client, NoTls};

use crate::catalog::Pair;
use crate::error::ControlError;
use crate::latency::Histogram;
use crate::throttle::{load, throttle_reason, ChunkSizer, LatencyGuard, Limits};

pub use crate::chunks::{chunk_sql, verify_sql};

/// Live progress of a job, as `GET /v1/migrations/{name}` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    /// `running`, `done` or `failed`.
    pub state: String,
    /// Rows visited so far.
    pub rows_done: u64,
    /// Rows changed (backfill) or mismatched (verify).
    pub rows_changed: u64,
    /// The planner's estimate of the table's rows.
    pub rows_total_estimate: u64,
    /// Recent speed.
    pub rows_per_second: f64,
    /// Seconds left at that speed.
    pub eta_seconds: Option<f64>,
    /// Current chunk size.
    pub chunk_rows: u64,
    /// Why the job is slowed down, if it is.
    pub throttled: Option<String>,
    /// Sample keys of mismatched rows (verify).
    pub sample_keys: Vec<String>,
    /// What went wrong (failed).
    pub error: Option<String>,
}

/// Settings an operator can change while a backfill runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Live {
    /// Hold before the next chunk.
    #[serde(default)]
    pub paused: bool,
    /// Overrides the spec's cap (`Some(None)` removes it).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lifted::deserialize"
    )]
    pub max_rows_per_second: Option<Option<u64>>,
    /// Overrides the spec's target chunk time.
    #[serde(default, with = "millis")]
    pub target_chunk: Option<Duration>,
    /// Overrides the spec's replica-lag limit (`Some(None)` removes it).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lifted::deserialize"
    )]
    pub max_replica_lag_ms: Option<Option<u64>>,
    /// Overrides the spec's active-session limit (`Some(None)` removes it).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lifted::deserialize"
    )]
    pub max_active_sessions: Option<Option<u64>>,
    /// Overrides the spec's latency guard (`Some(None)` turns it off).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lifted::deserialize"
    )]
    pub max_app_p99_pct: Option<Option<u64>>,
}

/// An override that lifts a limit (`Some(None)`) is stored as `null` and
/// must read back as such, not as "no override".
mod lifted {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
        Option::<u64>::deserialize(d).map(Some)
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// What a job works on.
#[derive(Debug, Clone)]
pub struct Target {
    /// Migration name (checkpoint key).
    pub migration: String,
    /// Quoted, qualified table.
    pub table: String,
    /// Quoted key columns (primary key or unique NOT NULL key), in order.
    pub key: Vec<String>,
    /// Their SQL types.
    pub key_types: Vec<String>,
    /// Which column is computed from which.
    pub direction: Direction,
    /// The pairs.
    pub pairs: Vec<Pair>,
    /// Target time per chunk.
    pub target_chunk: Duration,
    /// Rows per second at most.
    pub max_rows_per_second: Option<u64>,
    /// `lock_timeout` per chunk.
    pub lock_timeout: Duration,
    /// Replica-lag and session limits from the spec.
    pub limits: Limits,
}

/// Which way a backfill copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// new = forward(legacy): the backfill.
    Forward,
    /// legacy = backward(new): restoring a dropped legacy column.
    Backward,
}

/// Connects a dedicated client for a job.
pub async fn connect(url: &str) -> Result<Client, ControlError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Runs the backfill from the stored checkpoint to the end of the table.
/// `baseline` holds the application's round trips before it started, and
/// `latency()` all of them so far.
pub async fn backfill(
    client: &mut Client,
    t: &Target,
    live: impl Fn() -> Live,
    (baseline, latency): (Histogram, impl Fn() -> Histogram),
    mut report: impl FnMut(&Progress),
) -> Result<Progress, ControlError> {
    let mut guard = LatencyGuard::new(&baseline);
    let estimate: f32 = client
        .query_one(
            &format!(
                "SELECT greatest(reltuples, 0)::real FROM pg_class WHERE oid = '{}'::regclass",
                t.table.replace('\'', "''")
            ),
            &[],
        )
        .await?
        .get(0);
    let row = client
        .query_opt(
            "SELECT ARRAY(SELECT jsonb_array_elements_text(CASE jsonb_typeof(last_key)
                          WHEN 'array' THEN last_key ELSE jsonb_build_array(last_key) END)),
                    rows_done
             FROM switchyard.checkpoints WHERE migration = $1 AND last_key IS NOT NULL",
            &[&t.migration],
        )
        .await?;
    let mut last: Option<Vec<String>> = row.as_ref().map(|r| r.get(0));
    let mut progress = Progress {
        state: "running".into(),
        rows_done: row.map(|r| r.get::<_, i64>(1) as u64).unwrap_or(0),
        rows_total_estimate: estimate as u64,
        chunk_rows: 1000,
        ..Progress::default()
    };
    let started = Instant::now();
    let done_at_start = progress.rows_done;
    let chunk_sql = chunk_sql(t);
    let end: Option<Vec<String>> = client
        .query_opt(&crate::chunks::end_sql(t), &[])
        .await?
        .and_then(|r| r.get(0));
    if end.is_none() && !t.key.is_empty() {
        // An empty table: nothing to backfill.
        progress.state = "done".into();
        progress.eta_seconds = Some(0.0);
        return Ok(progress);
    }
    let mut sizer = ChunkSizer::default();
    loop {
        // Operator controls, read before every chunk.
        let settings = live();
        if settings.paused {
            progress.throttled = Some("paused by the operator".into());
            progress.state = "paused".into();
            report(&progress);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        progress.state = "running".into();
        let limits = Limits {
            max_replica_lag_ms: settings
                .max_replica_lag_ms
                .unwrap_or(t.limits.max_replica_lag_ms),
            max_active_sessions: settings
                .max_active_sessions
                .unwrap_or(t.limits.max_active_sessions),
            max_app_p99_pct: settings.max_app_p99_pct.unwrap_or(t.limits.max_app_p99_pct),
        };
        if let Some(reason) = throttle_reason(&load(client, &t.table).await?, &limits) {
            progress.throttled = Some(reason);
            report(&progress);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let target_chunk = guard.chunk_target(settings.target_chunk.unwrap_or(t.target_chunk));
        let chunk_started = Instant::now();
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}",
            t.lock_timeout.as_millis().max(1),
            (t.target_chunk.as_millis() * 50).max(1000)
        ))
        .await?;
        let result = tx
            .query_one(&chunk_sql, &[&last, &(progress.chunk_rows as i64), &end])
            .await;
        let row = match result {
            Ok(row) => row,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                drop(tx);
                progress.throttled = Some("lock wait on the table; chunk retried smaller".into());
                progress.chunk_rows = (progress.chunk_rows / 2).max(100);
                report(&progress);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let max_key: Option<Vec<String>> = row.get(0);
        let visited: i64 = row.get(1);
        let changed: i64 = row.get(2);
        let Some(max_key) = max_key else {
            tx.commit().await?;
            break;
        };
        progress.rows_done += visited as u64;
        progress.rows_changed += changed as u64;
        tx.execute(
            "INSERT INTO switchyard.checkpoints (migration, last_key, rows_done, updated_at) VALUES ($1, to_jsonb($2::text[]), $3, now())
             ON CONFLICT (migration) DO UPDATE SET last_key = excluded.last_key, rows_done = excluded.rows_done, updated_at = now()",
            &[&t.migration, &max_key, &(progress.rows_done as i64)],
        )
        .await?;
        tx.commit().await?;
        last = Some(max_key);

        let took = chunk_started.elapsed();
        progress.chunk_rows = sizer.next(progress.chunk_rows, took, target_chunk);
        let elapsed = started.elapsed().as_secs_f64().max(0.001);
        progress.rows_per_second = (progress.rows_done - done_at_start) as f64 / elapsed;
        progress.eta_seconds = (progress.rows_per_second > 0.0).then(|| {
            progress
                .rows_total_estimate
                .saturating_sub(progress.rows_done) as f64
                / progress.rows_per_second
        });
        progress.throttled = None;
        if let Some((pause, reason)) =
            guard.pause(Instant::now(), &latency(), limits.max_app_p99_pct, took)
        {
            progress.throttled = Some(reason);
            report(&progress);
            tokio::time::sleep(pause).await;
        }
        if let Some(limit) = settings
            .max_rows_per_second
            .unwrap_or(t.max_rows_per_second)
        {
            let due =
                Duration::from_secs_f64((progress.rows_done - done_at_start) as f64 / limit as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                progress.throttled = Some(format!("max_rows_per_second = {limit}"));
                report(&progress);
                tokio::time::sleep(wait).await;
            }
        }
        report(&progress);
    }
    progress.state = "done".into();
    progress.eta_seconds = Some(0.0);
    Ok(progress)
}

/// A full parity pass, chunked by key, each chunk one statement.
pub async fn verify(
    client: &Client,
    t: &Target,
    mut report: impl FnMut(&Progress),
) -> Result<Progress, ControlError> {
    let mut progress = Progress {
        state: "running".into(),
        chunk_rows: 10_000,
        ..Progress::default()
    };
    let sql = verify_sql(t);
    let mut last: Option<Vec<String>> = None;
    loop {
        let row = client
            .query_one(&sql, &[&last, &(progress.chunk_rows as i64)])
            .await?;
        let Some(max_key) = row.get::<_, Option<Vec<String>>>(0) else {
            break;
        };
        progress.rows_done += row.get::<_, i64>(1) as u64;
        progress.rows_changed += row.get::<_, i64>(2) as u64;
        if let Some(samples) = row.get::<_, Option<Vec<String>>>(3) {
            for s in samples {
                if progress.sample_keys.len() < 10 {
                    progress.sample_keys.push(s);
                }
            }
        }
        last = Some(max_key);
        report(&progress);
    }
    progress.state = "done".into();
    Ok(progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lifted_limit_survives_a_round_trip_through_json() {
        let live = Live {
            max_rows_per_second: Some(None),
            max_app_p99_pct: Some(Some(150)),
            ..Live::default()
        };
        let stored = serde_json::to_value(&live).unwrap();
        assert_eq!(stored["max_rows_per_second"], serde_json::Value::Null);
        assert!(stored.get("max_active_sessions").is_none());
        let back: Live = serde_json::from_value(stored).unwrap();
        assert_eq!(back, live);
    }
}
