//! The safe DDL runner: every statement under a short `lock_timeout`, the
//! whole transaction retried on lock timeouts and deadlocks with jittered
//! exponential backoff, and who blocked us recorded for each try.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::error::ControlError;

/// How one DDL step went.
#[derive(Debug, Clone, Serialize)]
pub struct DdlReport {
    /// The statements.
    pub sql: String,
    /// Tries made (1 = first try succeeded).
    pub tries: u32,
    /// Wall time including backoff.
    pub millis: u64,
    /// Sessions seen blocking us, per failed try.
    pub blockers: Vec<Vec<i32>>,
    /// Why it stopped, when it did not complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a DDL step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In one transaction, retried whole.
    Transaction,
    /// As one statement outside any transaction block (`... CONCURRENTLY`).
    Concurrently,
}

/// One DDL statement and how to run it.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    /// The table it locks (for the blocker report).
    pub table: &'a str,
    /// The statements.
    pub sql: &'a str,
    /// `lock_timeout` per try.
    pub lock_timeout: Duration,
    /// Transaction or concurrent.
    pub mode: Mode,
}

/// A DDL step that did not complete, with the report of its tries.
#[derive(Debug)]
pub struct DdlFailure {
    /// What was tried.
    pub report: DdlReport,
    /// Why it stopped.
    pub error: ControlError,
}

/// Runs a step with its `lock_timeout`, retrying up to `max_tries` times on
/// 55P03 and 40P01. Success or not, the report says what happened.
pub async fn run(
    client: &mut Client,
    step: Step<'_>,
    max_tries: u32,
) -> Result<DdlReport, DdlFailure> {
    let started = Instant::now();
    let mut report = DdlReport {
        sql: step.sql.to_owned(),
        tries: 0,
        millis: 0,
        blockers: Vec::new(),
        error: None,
    };
    let result = tries(client, step, max_tries, &mut report).await;
    report.millis = started.elapsed().as_millis() as u64;
    match result {
        Ok(()) => Ok(report),
        Err(error) => {
            report.error = Some(error.to_string());
            Err(DdlFailure { report, error })
        }
    }
}

async fn tries(
    client: &mut Client,
    step: Step<'_>,
    max_tries: u32,
    report: &mut DdlReport,
) -> Result<(), ControlError> {
    let Step {
        table,
        sql,
        lock_timeout,
        mode,
    } = step;
    let mut backoff = Duration::from_millis(50);
    let timeout = lock_timeout.as_millis().max(1);
    for attempt in 1..=max_tries {
        report.tries = attempt;
        let result = match mode {
            Mode::Transaction => {
                let tx = client.transaction().await?;
                tx.batch_execute(&format!("SET LOCAL lock_timeout = {timeout}"))
                    .await?;
                match tx.batch_execute(sql).await {
                    Ok(()) => tx.commit().await,
                    Err(e) => Err(e),
                }
            }
            Mode::Concurrently => {
                client
                    .batch_execute(&format!("SET lock_timeout = {timeout}"))
                    .await?;
                let result = client.batch_execute(sql).await;
                client.batch_execute("RESET lock_timeout").await?;
                result
            }
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e)
                if matches!(
                    e.code(),
                    Some(&SqlState::LOCK_NOT_AVAILABLE) | Some(&SqlState::T_R_DEADLOCK_DETECTED)
                ) =>
            {
                report
                    .blockers
                    .push(blocking_pids(client, table).await.unwrap_or_default());
                if attempt == max_tries {
                    break;
                }
                let jitter = Duration::from_millis(rand_millis(backoff.as_millis() as u64 / 2));
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                let msg = e
                    .as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_else(|| e.to_string());
                return Err(ControlError::Conflict(format!("DDL failed: {msg}: {sql}")));
            }
        }
    }
    Err(ControlError::Conflict(format!(
        "DDL could not take its lock within {max_tries} tries of {} ms; blockers: {:?}",
        lock_timeout.as_millis(),
        report.blockers.last().cloned().unwrap_or_default()
    )))
}

/// Sessions holding locks on `table`, other than us (the ones that were
/// ahead of our lock request).
pub async fn blocking_pids(client: &Client, table: &str) -> Result<Vec<i32>, ControlError> {
    let rows = client
        .query(
            "SELECT DISTINCT l.pid FROM pg_locks l
             WHERE l.relation = $1::text::regclass AND l.granted AND l.pid <> pg_backend_pid()
             ORDER BY 1",
            &[&table],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn rand_millis(max: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    if max == 0 {
        0
    } else {
        nanos % max
    }
}
