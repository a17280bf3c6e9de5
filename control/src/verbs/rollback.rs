//! rollback: one phase back, undoing that phase's effect, as a job on the
//! holder. Each column change commits with the state change recording it.
//!
//! - expanded → planned drops the new columns the migration created (and
//!   only those);
//! - dual_write → expanded routes writes to the legacy column only,
//!   removes the guard trigger, and drops a NOT NULL a contract set on the
//!   new column (writes stop filling it);
//! - backfilled → dual_write drops the indexes the backfill built and
//!   forgets the checkpoint and the parity pass (a running backfill is
//!   cancelled);
//! - verified → backfilled forgets the parity pass;
//! - reads_switched → verified routes reads back to the legacy column and
//!   removes a check constraint an interrupted contract left;
//! - contracted → reads_switched re-adds the legacy column if it is gone
//!   (nullable) with the guard trigger, routes writes to both columns, and
//!   refills it from
//!   `backward(new)` as a restore job; reads stay on the new column until
//!   it is done.

use std::time::Duration;

use switchyard_rules::ident::quote;
use switchyard_rules::migration::{
    decide, distinct, events, Effect, Job, JobKind, MigrationState, Stage, Verb,
};

use crate::ddl::{Mode, Record, Step};
use crate::engine::Engine;
use crate::error::ControlError;
use crate::jobs::Reporter;
use crate::publisher::table_of;
use crate::store::StoredMigration;

/// Carries out (or resumes) the rollback job `job` of `m`.
pub(crate) async fn run(
    engine: &Engine,
    m: &StoredMigration,
    job: &Job,
    reporter: &Reporter,
) -> Result<(), ControlError> {
    // The decision is the one taken when the job started: the stage only
    // moves when its DDL commits.
    let mut idle = m.state.clone();
    idle.job = None;
    let decision = decide(&idle, Verb::Rollback, true)?;
    let table = table_of(m)?.to_string();
    let t = &table;
    let lock_timeout = Duration::from_millis(m.spec.backfill.lock_timeout_ms);
    let who = (m.name.as_str(), job.actor.as_str());
    let mut ddl = engine.db.dedicated().await?;
    let mut dropped_indexes = Vec::new();
    let mut re_added = Vec::new();
    let mut statements = Vec::new();
    // Whether the guard trigger is there afterwards (`None`: unchanged).
    let mut guard = None;
    match (decision.effect, m.state.stage) {
        (Effect::DropNewColumns, _) => {
            // A session still in a transaction under dual-write rules would
            // write the column about to go: wait until none is.
            let version = {
                let client = engine.db.session().await?;
                crate::store::rules_version(&*client).await?
            };
            engine
                .await_acknowledgement(version, engine.ack_deadline, |behind| {
                    reporter.waiting(Some(crate::fleet::describe(version, behind)))
                })
                .await?;
            reporter.waiting(None);
            statements.push(crate::guard::drop_sql(t, &m.name));
            guard = Some(false);
            for c in &m.state.created.columns {
                statements.push(format!(
                    "ALTER TABLE {t} DROP COLUMN IF EXISTS {}",
                    quote(c)
                ));
            }
        }
        (Effect::DropRebuiltIndexes, _) => {
            dropped_indexes = drop_indexes(engine, &mut ddl, m, job, reporter).await?;
            ddl.execute(
                "DELETE FROM switchyard.checkpoints WHERE migration = $1",
                &[&m.name],
            )
            .await?;
        }
        (Effect::RestoreLegacy, _) => {
            // The refill walks the whole table, not from the backfill's
            // checkpoint.
            statements.push(format!(
                "DELETE FROM switchyard.checkpoints WHERE migration = '{}'",
                m.name.replace('\'', "''")
            ));
            let facts = crate::catalog::table_facts(&ddl, &table_of(m)?).await?;
            for p in &m.state.pairs {
                if facts.column(&p.legacy).is_none() && !re_added.contains(&p.legacy) {
                    statements.push(format!(
                        "ALTER TABLE {t} ADD COLUMN {} {} NULL",
                        quote(&p.legacy),
                        p.legacy_type
                    ));
                    re_added.push(p.legacy.clone());
                }
            }
            if m.spec.guard_trigger {
                statements.push(crate::guard::install_sql(t, &m.name, &m.state.pairs)?);
                guard = Some(true);
            }
        }
        (Effect::Route, Stage::DualWrite) => {
            statements.push(crate::guard::drop_sql(t, &m.name));
            guard = Some(false);
            for new in distinct(m.state.pairs.iter().map(|p| p.new.as_str())) {
                statements.push(format!(
                    "ALTER TABLE {t} ALTER COLUMN {} DROP NOT NULL",
                    quote(new)
                ));
            }
        }
        (Effect::Route, Stage::ReadsSwitched { .. }) => {
            let news = m.state.pairs.iter().filter(|p| p.not_null);
            for new in distinct(news.map(|p| p.new.as_str())) {
                statements.push(format!(
                    "ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {}",
                    quote(&super::contract::check_name(new))
                ));
            }
        }
        (Effect::Route, _) => {}
        (other, _) => {
            return Err(ControlError::Internal(format!(
                "rollback decided {other:?}"
            )))
        }
    }
    let sql = statements.join("; ");
    let step = Step {
        table: t,
        sql: &sql,
        lock_timeout,
        mode: Mode::Transaction,
    };
    let from = m.state.stage;
    let next = decision.next;
    let restores = decision.effect == Effect::RestoreLegacy;
    let change = |state: &MigrationState| {
        let mut s = events::ddl_done(state, job.id, from, next, |s| {
            s.reports.dropped_indexes = dropped_indexes.clone();
            s.created.legacy_columns.extend(re_added.iter().cloned());
            if let Some(guard) = guard {
                s.created.guard = guard;
            }
        })?;
        if restores {
            s = events::start_job(&s, JobKind::Restore, &job.actor, false)?.0;
        }
        Ok(s)
    };
    let record = Record {
        migration: &m.name,
        change: &change,
        audit: Some(("rollback", &job.actor)),
        notify_jobs: restores,
    };
    engine
        .ddl_step(&mut ddl, step, who, reporter, Some(&record))
        .await?;
    let client = engine.db.session().await?;
    engine.publisher.sync(&*client).await?;
    Ok(())
}

/// Drops, concurrently, the indexes the backfill built on the new columns.
async fn drop_indexes(
    engine: &Engine,
    ddl: &mut tokio_postgres::Client,
    m: &StoredMigration,
    job: &Job,
    reporter: &Reporter,
) -> Result<Vec<String>, ControlError> {
    let table = table_of(m)?;
    let lock_timeout = Duration::from_millis(m.spec.backfill.lock_timeout_ms);
    let mut dropped = Vec::new();
    for index in &m.state.created.indexes {
        let sql = format!(
            "DROP INDEX CONCURRENTLY IF EXISTS {}.{}",
            quote(&table.schema),
            quote(index)
        );
        let step = Step {
            table: &table.to_string(),
            sql: &sql,
            lock_timeout,
            mode: Mode::Concurrently,
        };
        engine
            .ddl_step(ddl, step, (&m.name, &job.actor), reporter, None)
            .await?;
        dropped.push(index.clone());
    }
    Ok(dropped)
}
