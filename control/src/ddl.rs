//! The safe DDL runner: every statement under a short `lock_timeout`, the
//! whole transaction retried on lock timeouts and deadlocks with jittered
//! exponential backoff, and who blocked us recorded for each try.
//!
//! A step that changes which columns exist carries a [`Record`]: the DDL and
//! the state change that records it commit in one transaction, so a crash
//! never leaves one without the other, and a state that moved meanwhile
//! (another actor, a revert) rolls the DDL back.

use std::time::{Duration, Instant};

use switchyard_rules::migration::{DdlReport, MigrationState};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Transaction};

use crate::error::ControlError;
use crate::store;

/// Tries per step before giving up.
pub(crate) const MAX_TRIES: u32 = 20;

/// How a DDL step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// In one transaction, retried whole.
    Transaction,
    /// As one statement outside any transaction block (`... CONCURRENTLY`).
    Concurrently,
}

/// One DDL statement and how to run it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step<'a> {
    /// The table it locks (for the blocker report).
    pub table: &'a str,
    /// The statements (may be empty: only the state change).
    pub sql: &'a str,
    /// `lock_timeout` per try.
    pub lock_timeout: Duration,
    /// Transaction or concurrent.
    pub mode: Mode,
}

/// The state change a step commits with.
pub(crate) struct Record<'a> {
    /// The migration.
    pub migration: &'a str,
    /// The next state from the current one (or a refusal, which rolls the
    /// DDL back).
    pub change: &'a (dyn Fn(&MigrationState) -> Result<MigrationState, ControlError> + Sync),
    /// Audit the phase change as this verb by this actor.
    pub audit: Option<(&'a str, &'a str)>,
    /// Announce a job the change started.
    pub notify_jobs: bool,
}

impl Record<'_> {
    /// Applies the change in `tx`, with its audit event and a rules
    /// version bump.
    async fn apply(&self, tx: &Transaction<'_>) -> Result<(), ControlError> {
        let (m, before) = store::update_in(tx, self.migration, |m| {
            Ok(((self.change)(&m.state)?, m.state.stage))
        })
        .await?;
        if let Some((verb, actor)) = self.audit {
            crate::verbs::audit_phase(tx, self.migration, verb, (before, m.state.stage), actor)
                .await?;
        }
        store::bump_rules_version(tx, 0).await?;
        if self.notify_jobs {
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&crate::fleet::JOBS_CHANNEL, &self.migration],
            )
            .await?;
        }
        Ok(())
    }
}

/// A DDL step that did not complete, with the report of its tries.
#[derive(Debug)]
pub(crate) struct DdlFailure {
    /// What was tried.
    pub report: DdlReport,
    /// Why it stopped.
    pub error: ControlError,
}

/// Runs a step, retrying up to [`MAX_TRIES`] times on 55P03 and 40P01;
/// `waiting` hears about each lock wait. With a `record`, the state change
/// commits in the step's transaction (for `... CONCURRENTLY`, in one of its
/// own right after). Success or not, the report says what happened.
pub(crate) async fn run(
    client: &mut Client,
    step: Step<'_>,
    mut waiting: impl FnMut(Option<String>),
    record: Option<&Record<'_>>,
) -> Result<DdlReport, DdlFailure> {
    let started = Instant::now();
    let mut report = DdlReport {
        sql: step.sql.to_owned(),
        ..DdlReport::default()
    };
    let mut backoff = Duration::from_millis(50);
    let result = loop {
        report.tries += 1;
        let attempt = match step.mode {
            Mode::Transaction => in_transaction(client, step, record).await,
            Mode::Concurrently => concurrently(client, step, record).await,
        };
        match attempt {
            Ok(()) => break Ok(()),
            Err(Attempt::Locked) => {
                let blockers = blocking_pids(client, step.table).await.unwrap_or_default();
                waiting(Some(format!(
                    "DDL waiting for a lock on {} (try {} of {MAX_TRIES}; held by sessions {blockers:?}, see GET /v1/blockers)",
                    step.table, report.tries
                )));
                report.blockers.push(blockers);
                if report.tries == MAX_TRIES {
                    break Err(ControlError::Conflict(format!(
                        "DDL could not take its lock within {MAX_TRIES} tries of {} ms; blockers: {:?}; end them (POST /v1/blockers/PID/terminate) and retry",
                        step.lock_timeout.as_millis(),
                        report.blockers.last().cloned().unwrap_or_default()
                    )));
                }
                let jitter = Duration::from_millis(rand_millis(backoff.as_millis() as u64 / 2));
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(Attempt::Failed(e)) => break Err(e),
        }
    };
    waiting(None);
    report.millis = started.elapsed().as_millis() as u64;
    match result {
        Ok(()) => Ok(report),
        Err(error) => {
            report.error = Some(error.to_string());
            Err(DdlFailure { report, error })
        }
    }
}

enum Attempt {
    Locked,
    Failed(ControlError),
}

impl From<ControlError> for Attempt {
    fn from(e: ControlError) -> Self {
        match &e {
            ControlError::Database(db) if locked(db) => Attempt::Locked,
            _ => Attempt::Failed(e),
        }
    }
}

fn locked(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(&SqlState::LOCK_NOT_AVAILABLE) | Some(&SqlState::T_R_DEADLOCK_DETECTED)
    )
}

fn failed(e: tokio_postgres::Error, sql: &str) -> Attempt {
    if locked(&e) {
        return Attempt::Locked;
    }
    if e.as_db_error().is_none() {
        return Attempt::Failed(e.into());
    }
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string());
    Attempt::Failed(ControlError::Conflict(format!("DDL failed: {msg}: {sql}")))
}

async fn in_transaction(
    client: &mut Client,
    step: Step<'_>,
    record: Option<&Record<'_>>,
) -> Result<(), Attempt> {
    let tx = client.transaction().await.map_err(ControlError::from)?;
    let timeout = step.lock_timeout.as_millis().max(1);
    tx.batch_execute(&format!("SET LOCAL lock_timeout = {timeout}"))
        .await
        .map_err(ControlError::from)?;
    if !step.sql.is_empty() {
        tx.batch_execute(step.sql)
            .await
            .map_err(|e| failed(e, step.sql))?;
    }
    if let Some(record) = record {
        record.apply(&tx).await?;
    }
    tx.commit().await.map_err(|e| failed(e, "COMMIT"))?;
    Ok(())
}

/// The statement outside a transaction block, then the record in a
/// transaction of its own.
async fn concurrently(
    client: &mut Client,
    step: Step<'_>,
    record: Option<&Record<'_>>,
) -> Result<(), Attempt> {
    let timeout = step.lock_timeout.as_millis().max(1);
    client
        .batch_execute(&format!("SET lock_timeout = {timeout}"))
        .await
        .map_err(ControlError::from)?;
    let result = client.batch_execute(step.sql).await;
    client
        .batch_execute("RESET lock_timeout")
        .await
        .map_err(ControlError::from)?;
    result.map_err(|e| failed(e, step.sql))?;
    if let Some(record) = record {
        let tx = client.transaction().await.map_err(ControlError::from)?;
        record.apply(&tx).await?;
        tx.commit().await.map_err(ControlError::from)?;
    }
    Ok(())
}

/// Sessions holding locks on `table`, other than us (the ones that were
/// ahead of our lock request).
pub(crate) async fn blocking_pids(client: &Client, table: &str) -> Result<Vec<i32>, ControlError> {
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
