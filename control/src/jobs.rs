//! Long work: the chunked, throttled, resumable backfill and the chunked
//! parity check. Each runs on its own connection; the backfill writes its
//! checkpoint in the same transaction as each chunk, so a crash loses no
//! completed chunk and a restart resumes from it.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::{Client, NoTls};

use crate::catalog::Pair;
use crate::error::ControlError;

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
    #[serde(default)]
    pub max_rows_per_second: Option<Option<u64>>,
    /// Overrides the spec's target chunk time.
    #[serde(default, with = "millis")]
    pub target_chunk: Option<Duration>,
    /// Overrides the spec's replica-lag limit (`Some(None)` removes it).
    #[serde(default)]
    pub max_replica_lag_ms: Option<Option<u64>>,
    /// Overrides the spec's active-session limit (`Some(None)` removes it).
    #[serde(default)]
    pub max_active_sessions: Option<Option<u64>>,
}

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
async fn load(client: &Client, table: &str) -> Result<Load, ControlError> {
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

/// The written column, its type, and the expression computing it from the
/// source column.
fn copy_of(p: &Pair, direction: Direction) -> (&str, &str, &str, &str) {
    match direction {
        Direction::Forward => (&p.new, &p.new_type, &p.forward, &p.legacy),
        Direction::Backward => (&p.legacy, &p.legacy_type, &p.backward, &p.new),
    }
}

fn set_clause(t: &Target) -> String {
    t.pairs
        .iter()
        .map(|p| {
            let (target, ty, expr, _) = copy_of(p, t.direction);
            format!(
                "{} = ({expr})::{ty}",
                switchyard_rules::ident::quote(target)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn mismatch(t: &Target, alias: &str) -> String {
    t.pairs
        .iter()
        .map(|p| {
            let (target, ty, expr, source) = copy_of(p, t.direction);
            let expr = qualify(expr, source, alias);
            format!(
                "{alias}.{} IS DISTINCT FROM ({expr})::{ty}",
                switchyard_rules::ident::quote(target)
            )
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// `(k1, k2)` qualified by `alias`.
fn key_row(t: &Target, alias: &str) -> String {
    let cols: Vec<String> = t.key.iter().map(|k| format!("{alias}.{k}")).collect();
    format!("({})", cols.join(", "))
}

/// `($1[1]::type1, $1[2]::type2)`: the checkpoint, a text array, typed.
fn key_param(t: &Target) -> String {
    let vals: Vec<String> = t
        .key_types
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("($1::text[])[{}]::{ty}", i + 1))
        .collect();
    format!("({})", vals.join(", "))
}

/// Keyset order over the key, ascending or descending.
fn key_order(t: &Target, alias: &str, desc: bool) -> String {
    let dir = if desc { " DESC" } else { "" };
    t.key
        .iter()
        .map(|k| format!("{alias}.{k}{dir}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One backfill chunk: the next `$2` keys after checkpoint `$1` (a text
/// array), updated where they differ; answers the last key, the rows
/// visited and the rows changed.
pub fn chunk_sql(t: &Target) -> String {
    if t.key.is_empty() {
        return ctid_chunk_sql(t);
    }
    let batch_cols: Vec<String> = t
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("s.{k} AS k{i}"))
        .collect();
    let join: Vec<String> = t
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("t.{k} = batch.k{i}"))
        .collect();
    let last: Vec<String> = (0..t.key.len()).map(|i| format!("k{i}::text")).collect();
    let last_order: Vec<String> = (0..t.key.len()).map(|i| format!("k{i} DESC")).collect();
    format!(
        "WITH batch AS (SELECT {cols} FROM {table} AS s WHERE $1::text[] IS NULL OR {row} > {param} ORDER BY {order} LIMIT $2),
              upd AS (UPDATE {table} AS t SET {set} FROM batch WHERE {join} AND ({mismatch}) RETURNING 1)
         SELECT (SELECT ARRAY[{last}] FROM batch ORDER BY {last_order} LIMIT 1), (SELECT count(*) FROM batch), (SELECT count(*) FROM upd)",
        cols = batch_cols.join(", "),
        table = t.table,
        row = key_row(t, "s"),
        param = key_param(t),
        order = key_order(t, "s", false),
        set = set_clause(t),
        join = join.join(" AND "),
        mismatch = mismatch(t, "t"),
        last = last.join(", "),
        last_order = last_order.join(", "),
    )
}

/// The page range of a chunk over a table without a key: from checkpoint
/// `$1` (a one-element text array: the next page) for about `$2` rows'
/// worth of pages. The bounds are scalar subqueries so that PostgreSQL
/// (14+) runs a TID range scan, never a sequential one.
fn ctid_range(t: &Target) -> String {
    let table = t.table.replace('\'', "''");
    format!(
        "r AS (SELECT coalesce(($1::text[])[1]::bigint, 0) AS lo,
                      greatest(1, $2::bigint / greatest(1, (SELECT (reltuples / greatest(relpages, 1))::bigint
                                                            FROM pg_class WHERE oid = '{table}'::regclass))) AS pages,
                      pg_relation_size('{table}'::regclass) / current_setting('block_size')::bigint AS relpages),
         b AS (SELECT lo, pages, relpages, format('(%s,0)', lo)::tid AS lo_tid,
                      format('(%s,0)', lo + pages)::tid AS hi_tid FROM r)"
    )
}

/// [`chunk_sql`] for a table without a key: a page range by `ctid`. The
/// checkpoint is the next page; rows an update moved behind it are already
/// in step, and rows it moved ahead are skipped by the mismatch filter.
fn ctid_chunk_sql(t: &Target) -> String {
    format!(
        "WITH {range},
              upd AS (UPDATE {table} AS t SET {set}
                      WHERE t.ctid >= (SELECT lo_tid FROM b) AND t.ctid < (SELECT hi_tid FROM b)
                        AND ({mismatch}) RETURNING 1)
         SELECT CASE WHEN (SELECT lo FROM b) < (SELECT relpages FROM b)
                     THEN ARRAY[(SELECT lo + pages FROM b)::text] END,
                (SELECT count(*) FROM {table} AS s
                 WHERE s.ctid >= (SELECT lo_tid FROM b) AND s.ctid < (SELECT hi_tid FROM b)),
                (SELECT count(*) FROM upd)",
        range = ctid_range(t),
        table = t.table,
        set = set_clause(t),
        mismatch = mismatch(t, "t"),
    )
}

/// [`verify_sql`] for a table without a key; sample keys are `ctid`s.
fn ctid_verify_sql(t: &Target) -> String {
    format!(
        "WITH {range},
              c AS (SELECT t.ctid::text AS k, ({mismatch}) AS bad FROM {table} AS t
                    WHERE t.ctid >= (SELECT lo_tid FROM b) AND t.ctid < (SELECT hi_tid FROM b))
         SELECT CASE WHEN (SELECT lo FROM b) < (SELECT relpages FROM b)
                     THEN ARRAY[(SELECT lo + pages FROM b)::text] END,
                (SELECT count(*) FROM c), (SELECT count(*) FROM c WHERE bad),
                (SELECT array_agg(k) FROM (SELECT k FROM c WHERE bad LIMIT 5) s)",
        range = ctid_range(t),
        table = t.table,
        mismatch = mismatch(t, "t"),
    )
}

/// One parity chunk: the last key, rows seen, mismatches and up to five
/// sample keys.
pub fn verify_sql(t: &Target) -> String {
    if t.key.is_empty() {
        return ctid_verify_sql(t);
    }
    let key_text: Vec<String> = t.key.iter().map(|k| format!("t.{k}::text")).collect();
    format!(
        "WITH c AS (SELECT ARRAY[{key_text}] AS k, row_number() OVER (ORDER BY {order}) AS n, ({mismatch}) AS bad
                    FROM (SELECT * FROM {table} AS t WHERE $1::text[] IS NULL OR {row} > {param}
                          ORDER BY {order} LIMIT $2) AS t)
         SELECT (SELECT k FROM c ORDER BY n DESC LIMIT 1), (SELECT count(*) FROM c),
                (SELECT count(*) FROM c WHERE bad),
                (SELECT array_agg(array_to_string(k, ',')) FROM (SELECT k FROM c WHERE bad ORDER BY n LIMIT 5) s)",
        key_text = key_text.join(", "),
        mismatch = mismatch(t, "t"),
        table = t.table,
        row = key_row(t, "t"),
        param = key_param(t),
        order = key_order(t, "t", false),
    )
}

/// `forward` with its legacy column qualified by `alias`.
fn qualify(expr: &str, column: &str, alias: &str) -> String {
    match switchyard_rules::template::Template::compile(expr, column) {
        Ok(t) => t.fill(&format!(
            "{alias}.{}",
            switchyard_rules::ident::quote(column)
        )),
        Err(_) => expr.to_owned(),
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

/// Runs the backfill from the stored checkpoint to the end of the table.
pub async fn backfill(
    client: &mut Client,
    t: &Target,
    live: impl Fn() -> Live,
    mut report: impl FnMut(&Progress),
) -> Result<Progress, ControlError> {
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
        };
        if let Some(reason) = throttle_reason(&load(client, &t.table).await?, &limits) {
            progress.throttled = Some(reason);
            report(&progress);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let target_chunk = settings.target_chunk.unwrap_or(t.target_chunk);
        let chunk_started = Instant::now();
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}",
            t.lock_timeout.as_millis().max(1),
            (t.target_chunk.as_millis() * 50).max(1000)
        ))
        .await?;
        let result = tx
            .query_one(&chunk_sql, &[&last, &(progress.chunk_rows as i64)])
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

    #[test]
    fn mismatch_predicates_qualify_the_legacy_column() {
        assert_eq!(qualify("lower(email)", "email", "t"), "(lower((t.email)))");
    }
}
