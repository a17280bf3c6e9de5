//! expand: adds the new columns, nullable (with their non-volatile
//! defaults), in one short-locked transaction that also records them as the
//! migration's own and moves it to `expanded`. A column of that name that
//! appeared since the migration was created is not taken over: the DDL
//! fails and nothing is recorded.

use std::time::Duration;

use switchyard_rules::ident::quote;
use switchyard_rules::migration::{events, Job, MigrationState, Stage};

use crate::ddl::{Mode, Record, Step};
use crate::engine::Engine;
use crate::error::ControlError;
use crate::jobs::Reporter;
use crate::publisher::table_of;
use crate::store::{self, StoredMigration};

/// Carries out expand for job `job` of `m`.
pub(crate) async fn run(
    engine: &Engine,
    m: &StoredMigration,
    job: &Job,
    reporter: &Reporter,
) -> Result<(), ControlError> {
    let table = table_of(m)?.to_string();
    // A merge's pairs share their new column.
    let mut pairs = m.state.pairs.clone();
    pairs.dedup_by(|a, b| a.new == b.new);
    let adds: Vec<String> = pairs
        .iter()
        .map(|p| {
            let default = p
                .default
                .as_ref()
                .map(|d| format!(" DEFAULT ({d})"))
                .unwrap_or_default();
            format!("ADD COLUMN {} {} NULL{default}", quote(&p.new), p.new_type)
        })
        .collect();
    let sql = format!("ALTER TABLE {table} {}", adds.join(", "));
    let step = Step {
        table: &table,
        sql: &sql,
        lock_timeout: Duration::from_millis(m.spec.backfill.lock_timeout_ms),
        mode: Mode::Transaction,
    };
    let columns: Vec<String> = pairs.iter().map(|p| p.new.clone()).collect();
    let change = |state: &MigrationState| {
        Ok(events::ddl_done(
            state,
            job.id,
            Stage::Planned,
            Stage::Expanded,
            |s| s.created.columns = columns.clone(),
        )?)
    };
    let record = Record {
        migration: &m.name,
        change: &change,
        audit: Some(("expand", &job.actor)),
        notify_jobs: false,
    };
    let mut ddl = engine.db.dedicated().await?;
    let report = engine
        .ddl_step(
            &mut ddl,
            step,
            (&m.name, &job.actor),
            reporter,
            Some(&record),
        )
        .await?;
    // The report is kept with the state for operators.
    let mut client = engine.db.session().await?;
    store::update(&mut client, &m.name, |now| {
        let mut s = now.state.clone();
        s.reports.expand = vec![report.clone()];
        Ok((s, ()))
    })
    .await?;
    engine.publisher.sync(&*client).await?;
    Ok(())
}
