//! The chunked, throttled, resumable backfill: keyset (or ctid) chunks, each
//! one transaction with its checkpoint, sized to a target time and paced by
//! the operator's limits and the application's own latency.

use std::time::{Duration, Instant};

use switchyard_rules::migration::{Progress, Settings};
use tokio_postgres::Client;

use super::Target;
use crate::chunks::chunk_sql;
use crate::error::ControlError;
use crate::latency::Histogram;
use crate::throttle::{load, throttle_reason, ChunkSizer, LatencyGuard, Limits};

/// Runs the backfill from the stored checkpoint to the end of the table.
/// `baseline` holds the application's round trips before it started, and
/// `latency()` all of them so far.
pub(crate) async fn backfill(
    client: &mut Client,
    t: &Target,
    live: impl Fn() -> Settings,
    (baseline, latency): (Histogram, impl Fn() -> Histogram),
    mut report: impl FnMut(&Progress, bool),
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
        progress.eta_seconds = Some(0.0);
        return Ok(progress);
    }
    let mut sizer = ChunkSizer::default();
    loop {
        // Operator controls, read before every chunk.
        let settings = live();
        if settings.paused {
            progress.throttled = Some("paused by the operator".into());
            report(&progress, true);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
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
            report(&progress, false);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let target_chunk = guard.chunk_target(settings.target_chunk.unwrap_or(t.target_chunk));
        let chunk_started = Instant::now();
        let statement_timeout = (t.target_chunk * 50).max(Duration::from_secs(1));
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}",
            t.lock_timeout.as_millis().max(1),
            statement_timeout.as_millis()
        ))
        .await?;
        let result = tx
            .query_one(&chunk_sql, &[&last, &(progress.chunk_rows as i64), &end])
            .await;
        let timed_out = chunk_started.elapsed() >= statement_timeout;
        let row = match result {
            Ok(row) => row,
            Err(e) => {
                let Some(why) = retried_smaller(&e, timed_out) else {
                    return Err(e.into());
                };
                drop(tx);
                progress.throttled = Some(why.to_owned());
                progress.chunk_rows = (progress.chunk_rows / 2).max(100);
                report(&progress, false);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
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
            report(&progress, false);
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
                report(&progress, false);
                tokio::time::sleep(wait).await;
            }
        }
        report(&progress, false);
    }
    progress.eta_seconds = Some(0.0);
    Ok(progress)
}

/// Why a chunk that failed is retried smaller rather than failing the job,
/// or `None`: a lock wait past the spec's `lock_timeout`, a deadlock with
/// an application's transaction (PostgreSQL aborts one of the two; rows
/// locked in another order than the chunk's), a chunk past its statement
/// timeout, a serialization failure. A cancel that came before the
/// statement timeout was someone's (`pg_cancel_backend`): the job stops.
fn retried_smaller(e: &tokio_postgres::Error, timed_out: bool) -> Option<&'static str> {
    use tokio_postgres::error::SqlState;
    let code = e.code()?;
    if *code == SqlState::LOCK_NOT_AVAILABLE {
        Some("lock wait on the table; chunk retried smaller")
    } else if *code == SqlState::T_R_DEADLOCK_DETECTED {
        Some("deadlock with another transaction; chunk retried smaller")
    } else if *code == SqlState::QUERY_CANCELED && timed_out {
        Some("chunk past its statement timeout; retried smaller")
    } else if *code == SqlState::T_R_SERIALIZATION_FAILURE {
        Some("serialization failure; chunk retried smaller")
    } else {
        None
    }
}
