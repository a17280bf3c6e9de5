//! contract, as a job on the holder, resumable at each step:
//!
//! 1. refuse while other objects depend on the legacy column (force
//!    overrides, audited);
//! 2. NOT NULL on the new column without a long lock: `CHECK ... NOT
//!    VALID`, then `VALIDATE` (each its own transaction);
//! 3. one short-locked transaction: `SET NOT NULL` (the validated check
//!    makes it instant) and drop the check; drop NOT NULL from the legacy
//!    column (writes stop setting it); route to the new column only
//!    (`contracted`, drop pending). A revert meanwhile makes this step
//!    refuse and roll back;
//! 4. wait until every instance acknowledges that routing (with a
//!    deadline; the job says who is behind);
//! 5. move unique constraints to the indexes rebuilt on the new column and
//!    drop the other legacy indexes concurrently;
//! 6. drop the legacy column in the transaction that records it.
//!
//! A contract that fails before step 3 removes its check, so that no write
//! is refused by a constraint the operator no longer expects.

use std::time::Duration;

use serde_json::json;
use switchyard_rules::ident::quote;
use switchyard_rules::migration::{
    distinct, events, Job, LegacyColumn, MigrationState, Stage, Verb,
};
use tokio_postgres::Client;

use crate::ddl::{Mode, Record, Step};
use crate::dependencies;
use crate::engine::Engine;
use crate::error::ControlError;
use crate::fleet::describe;
use crate::indexes::{self, IndexReport};
use crate::jobs::Reporter;
use crate::publisher::table_of;
use crate::store::{self, Event, StoredMigration};

/// Carries out (or resumes) contract for job `job` of `m`.
pub(crate) async fn run(
    engine: &Engine,
    m: &StoredMigration,
    job: &Job,
    reporter: &Reporter,
) -> Result<(), ControlError> {
    let mut ddl = engine.db.dedicated().await?;
    let dropping = Stage::Contracted {
        legacy: LegacyColumn::Dropping,
    };
    if m.state.stage != dropping {
        if let Err(e) = prepare(engine, &mut ddl, m, job, reporter).await {
            remove_checks(&mut ddl, m).await;
            return Err(e);
        }
    }
    let version = {
        let client = engine.db.session().await?;
        store::rules_version(&*client).await?
    };
    engine
        .await_acknowledgement(version, engine.ack_deadline, |behind| {
            reporter.waiting(Some(describe(version, behind)))
        })
        .await?;
    reporter.waiting(None);
    finish(engine, &mut ddl, m, job, reporter).await?;
    let client = engine.db.session().await?;
    engine.publisher.sync(&*client).await?;
    Ok(())
}

/// Steps 1 to 3.
async fn prepare(
    engine: &Engine,
    ddl: &mut Client,
    m: &StoredMigration,
    job: &Job,
    reporter: &Reporter,
) -> Result<(), ControlError> {
    let table = table_of(m)?.to_string();
    let t = &table;
    let lock_timeout = Duration::from_millis(m.spec.backfill.lock_timeout_ms);
    let who = (m.name.as_str(), job.actor.as_str());
    check_dependencies(engine, m, job).await?;
    let transaction = |sql: &str| (sql.to_owned(), Mode::Transaction);
    let mut checks = Vec::new();
    let mut last = Vec::new();
    let news = distinct(
        m.state
            .pairs
            .iter()
            .filter(|p| p.not_null)
            .map(|p| p.new.as_str()),
    );
    for name in news {
        let new = quote(name);
        let check = quote(&check_name(name));
        checks.push(transaction(&format!(
            "ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {check}; ALTER TABLE {t} ADD CONSTRAINT {check} CHECK ({new} IS NOT NULL) NOT VALID"
        )));
        checks.push(transaction(&format!(
            "ALTER TABLE {t} VALIDATE CONSTRAINT {check}"
        )));
        last.push(format!(
            "ALTER TABLE {t} ALTER COLUMN {new} SET NOT NULL; ALTER TABLE {t} DROP CONSTRAINT {check}"
        ));
    }
    for (sql, mode) in &checks {
        let step = Step {
            table: t,
            sql,
            lock_timeout,
            mode: *mode,
        };
        engine.ddl_step(ddl, step, who, reporter, None).await?;
    }
    // Writes will name only the new column until the legacy one is dropped:
    // a NOT NULL on the legacy column must not refuse them.
    for legacy in legacy_columns(m) {
        last.push(format!(
            "ALTER TABLE {t} ALTER COLUMN {} DROP NOT NULL",
            quote(legacy)
        ));
    }
    let sql = last.join("; ");
    let step = Step {
        table: t,
        sql: &sql,
        lock_timeout,
        mode: Mode::Transaction,
    };
    let change = |state: &MigrationState| Ok(events::contract_routed(state, job.id)?);
    let record = Record {
        migration: &m.name,
        change: &change,
        audit: Some(("contract", &job.actor)),
        notify_jobs: false,
    };
    engine
        .ddl_step(ddl, step, who, reporter, Some(&record))
        .await?;
    // Route to the new column only before the legacy one disappears.
    let client = engine.db.session().await?;
    engine.publisher.sync(&*client).await?;
    Ok(())
}

/// Step 1: 409 while views, triggers, keys, checks, generated columns or
/// functions use a legacy column, unless forced (audited).
async fn check_dependencies(
    engine: &Engine,
    m: &StoredMigration,
    job: &Job,
) -> Result<(), ControlError> {
    let table = table_of(m)?.to_string();
    let client = engine.db.session().await?;
    let mut found = Vec::new();
    for legacy in legacy_columns(m) {
        for d in dependencies::of_column(&client, &table, legacy).await? {
            found.push(format!("{d} (uses {legacy})"));
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    if !job.force {
        return Err(ControlError::Conflict(format!(
            "cannot contract {}: these depend on the legacy column: {}; change or drop them first (?force=true overrides, audited)",
            m.name,
            found.join("; ")
        )));
    }
    let event = Event {
        actor: &job.actor,
        migration: Some(&m.name),
        action: "force",
        detail: json!({"verb": Verb::Contract.as_str(), "dependents": found}),
    };
    store::record(&*client, event).await
}

/// Steps 5 and 6.
async fn finish(
    engine: &Engine,
    ddl: &mut Client,
    m: &StoredMigration,
    job: &Job,
    reporter: &Reporter,
) -> Result<(), ControlError> {
    let table = table_of(m)?.to_string();
    let lock_timeout = Duration::from_millis(m.spec.backfill.lock_timeout_ms);
    let mut retired = Vec::new();
    let mut seen = Vec::new();
    for p in &m.state.pairs {
        if seen.contains(&&p.legacy) {
            continue;
        }
        seen.push(&p.legacy);
        let r = Retire {
            table: &table,
            legacy: &p.legacy,
            new: &p.new,
            split_or_merge: p.group.is_some(),
            lock_timeout,
        };
        retired.extend(retire_indexes(engine, ddl, r, m, job, reporter).await?);
    }
    let drops: Vec<String> = legacy_columns(m)
        .into_iter()
        .map(|legacy| format!("DROP COLUMN IF EXISTS {}", quote(legacy)))
        .collect();
    // The guard trigger's WHEN clause names the legacy column: it goes
    // first, in the same transaction.
    let sql = format!(
        "{}; ALTER TABLE {table} {}",
        crate::guard::drop_sql(&table, &m.name),
        drops.join(", ")
    );
    let step = Step {
        table: &table,
        sql: &sql,
        lock_timeout,
        mode: Mode::Transaction,
    };
    let who = (m.name.as_str(), job.actor.as_str());
    let change = |state: &MigrationState| {
        let mut next = events::legacy_dropped(state, job.id, retired.clone())?;
        next.created.guard = false;
        Ok(next)
    };
    let record = Record {
        migration: &m.name,
        change: &change,
        audit: None,
        notify_jobs: false,
    };
    engine
        .ddl_step(ddl, step, who, reporter, Some(&record))
        .await?;
    Ok(())
}

/// One legacy column whose indexes are retired.
struct Retire<'a> {
    table: &'a str,
    legacy: &'a str,
    new: &'a str,
    /// Its indexes were rebuilt as expression indexes, which no
    /// constraint can use: the column drop takes the constraint, and the
    /// expression index keeps enforcing uniqueness.
    split_or_merge: bool,
    lock_timeout: Duration,
}

/// Each legacy column once (a split's pairs share theirs).
fn legacy_columns(m: &StoredMigration) -> Vec<&str> {
    distinct(m.state.pairs.iter().map(|p| p.legacy.as_str()))
}

/// Drops the legacy column's indexes concurrently; a unique constraint
/// moves to its rebuilt index on the new column instead, so that the
/// guarantee never lapses.
async fn retire_indexes(
    engine: &Engine,
    client: &mut Client,
    r: Retire<'_>,
    m: &StoredMigration,
    job: &Job,
    reporter: &Reporter,
) -> Result<Vec<IndexReport>, ControlError> {
    let mut reports = Vec::new();
    for index in indexes::covering(client, r.table, r.legacy).await? {
        let qualified = format!("{}.{}", quote(&index.schema), quote(&index.name));
        if index.constraint.is_some() && r.split_or_merge {
            reports.push(IndexReport {
                index: index.name,
                sql: None,
                outcome: "skipped".into(),
                reason: Some(
                    "a split or merged column's constraint goes with the column; its expression index keeps the guarantee"
                        .into(),
                ),
            });
            continue;
        }
        let (sql, mode) = match &index.constraint {
            Some(constraint) => {
                let rebuilt = indexes::renamed(&index.name, r.legacy, r.new);
                let moved = indexes::renamed(constraint, r.legacy, r.new);
                let t = r.table;
                let sql = format!(
                    "ALTER TABLE {t} DROP CONSTRAINT {c}; ALTER TABLE {t} ADD CONSTRAINT {moved} UNIQUE USING INDEX {rebuilt}",
                    c = quote(constraint),
                    moved = quote(&moved),
                    rebuilt = quote(&rebuilt),
                );
                (sql, Mode::Transaction)
            }
            None => (
                format!("DROP INDEX CONCURRENTLY IF EXISTS {qualified}"),
                Mode::Concurrently,
            ),
        };
        let step = Step {
            table: r.table,
            sql: &sql,
            lock_timeout: r.lock_timeout,
            mode,
        };
        let who = (m.name.as_str(), job.actor.as_str());
        let result = engine.ddl_step(client, step, who, reporter, None).await;
        let (outcome, reason) = match result {
            Ok(_) if index.constraint.is_some() => ("moved_constraint", None),
            Ok(_) => ("dropped", None),
            // The column drop takes the constraint with it; the rebuilt
            // unique index keeps enforcing uniqueness.
            Err(e) if index.constraint.is_some() => ("skipped", Some(e.to_string())),
            Err(e) => return Err(e),
        };
        reports.push(IndexReport {
            index: index.name,
            sql: Some(sql),
            outcome: outcome.into(),
            reason,
        });
    }
    Ok(reports)
}

/// The check constraint contract adds to set NOT NULL without a long lock.
pub(crate) fn check_name(new: &str) -> String {
    format!("switchyard_{new}_not_null")
}

/// Removes contract's check constraints (best effort): after a failed or
/// rolled-back contract, writes must not meet a constraint nobody expects.
pub(crate) async fn remove_checks(client: &mut Client, m: &StoredMigration) {
    let Ok(table) = table_of(m) else { return };
    let news = distinct(
        m.state
            .pairs
            .iter()
            .filter(|p| p.not_null)
            .map(|p| p.new.as_str()),
    );
    for name in news {
        let sql = format!(
            "SET lock_timeout = 1000; ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {}; RESET lock_timeout",
            quote(&check_name(name))
        );
        if let Err(e) = client.batch_execute(&sql).await {
            tracing::warn!(migration = %m.name, error = %e, "cannot remove contract's check constraint");
        }
    }
}
