//! Contract: refuse while other objects depend on the legacy column; set
//! NOT NULL without a long lock (CHECK NOT VALID, VALIDATE, SET NOT NULL,
//! DROP CHECK); drop NOT NULL from the legacy column (writes stop setting
//! it); route to the new column only; move unique constraints to
//! the rebuilt indexes and drop the other legacy indexes concurrently; then
//! drop the legacy column. Each step is its own short-locked transaction.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use switchyard_rules::ident;
use switchyard_rules::migration::Outcome;
use tokio_postgres::Client;

use crate::ddl::{Mode, Step};
use crate::dependencies;
use crate::engine::{pairs_of, table_of, Engine};
use crate::error::ControlError;
use crate::indexes::{self, IndexReport};
use crate::store::{self, Event, StoredMigration};

impl Engine {
    /// Runs contract; `force` also overrides the dependency check (audited).
    pub(crate) async fn contract(
        self: &Arc<Self>,
        m: StoredMigration,
        outcome: Outcome,
        force: bool,
        actor: &str,
    ) -> Result<Value, ControlError> {
        let table = table_of(&m)?;
        let t = table.to_string();
        let lock_timeout = Duration::from_millis(m.spec.backfill.lock_timeout_ms);
        let pairs = pairs_of(&m)?;
        {
            let client = self.db().await?;
            let mut found = Vec::new();
            for p in &pairs {
                for d in dependencies::of_column(&client, &t, &p.legacy).await? {
                    found.push(format!("{d} (uses {})", p.legacy));
                }
            }
            if !found.is_empty() {
                if !force {
                    return Err(ControlError::Conflict(format!(
                        "cannot contract {}: these depend on the legacy column: {}; change or drop them first (?force=true overrides, audited)",
                        m.name,
                        found.join("; ")
                    )));
                }
                let detail = json!({"verb": "contract", "dependents": found});
                let event = Event {
                    actor,
                    migration: Some(&m.name),
                    action: "force",
                    detail,
                };
                store::record(&client, event).await?;
            }
        }
        // DDL runs on its own session: the shared one stays free for the
        // API (an incident responder must see and remove blockers meanwhile).
        let mut ddl = crate::jobs::connect(&self.url).await?;
        {
            for p in pairs.iter().filter(|p| p.not_null) {
                let new = ident::quote(&p.new);
                let check = ident::quote(&format!("switchyard_{}_not_null", p.new));
                for sql in [
                    format!("ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {check}; ALTER TABLE {t} ADD CONSTRAINT {check} CHECK ({new} IS NOT NULL) NOT VALID"),
                    format!("ALTER TABLE {t} VALIDATE CONSTRAINT {check}"),
                    format!("ALTER TABLE {t} ALTER COLUMN {new} SET NOT NULL"),
                    format!("ALTER TABLE {t} DROP CONSTRAINT {check}"),
                ] {
                    self.run_ddl(&mut ddl, &t, &sql, lock_timeout, &m.name, actor).await?;
                }
            }
            // Writes will name only the new column until the legacy one is
            // dropped: a NOT NULL on the legacy column must not refuse them.
            for p in &pairs {
                let sql = format!(
                    "ALTER TABLE {t} ALTER COLUMN {} DROP NOT NULL",
                    ident::quote(&p.legacy)
                );
                self.run_ddl(&mut ddl, &t, &sql, lock_timeout, &m.name, actor)
                    .await?;
            }
            let client = self.db().await?;
            store::set_phase(&client, &m.name, m.phase, outcome.next, &json!({})).await?;
            self.record_transition(&client, &m, "contract", &outcome, actor)
                .await?;
        }
        // Route to the new column only before the legacy one disappears.
        self.publish().await?;
        self.finish_contract(&m.name, actor, true).await?;
        self.detail(&m.name).await
    }

    /// The end of contract, once routing goes to the new column only:
    /// after every instance acknowledged it, retire the legacy indexes and
    /// drop the legacy column. Also run after a restart for a migration
    /// left `contracted` with its legacy column still there. One finisher at
    /// a time (an advisory lock): `wait` queues behind another, otherwise
    /// this returns at once when someone else is at it.
    pub(crate) async fn finish_contract(
        &self,
        name: &str,
        actor: &str,
        wait: bool,
    ) -> Result<(), ControlError> {
        let m = {
            let client = self.db().await?;
            store::get(&client, name).await?
        };
        let table = table_of(&m)?;
        let t = table.to_string();
        let lock_timeout = Duration::from_millis(m.spec.backfill.lock_timeout_ms);
        let pairs = pairs_of(&m)?;
        let mut ddl = crate::jobs::connect(&self.url).await?;
        let key = format!("switchyard.contract.{name}");
        if wait {
            ddl.execute("SELECT pg_advisory_lock(hashtext($1))", &[&key])
                .await?;
        } else {
            let got: bool = ddl
                .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&key])
                .await?
                .get(0);
            if !got {
                return Ok(());
            }
        }
        self.await_acknowledgement().await;
        {
            let mut retired = Vec::new();
            for p in &pairs {
                let step = Retire {
                    table: &t,
                    legacy: &p.legacy,
                    new: &p.new,
                    lock_timeout,
                };
                retired.extend(self.retire_indexes(&mut ddl, step, &m.name, actor).await?);
                let sql = format!(
                    "ALTER TABLE {t} DROP COLUMN IF EXISTS {}",
                    ident::quote(&p.legacy)
                );
                self.run_ddl(&mut ddl, &t, &sql, lock_timeout, &m.name, actor)
                    .await?;
            }
            let client = self.db().await?;
            let state = json!({"retired_indexes": retired});
            store::set_phase(&client, &m.name, m.phase, m.phase, &state).await?;
        }
        self.publish().await?;
        Ok(())
    }

    /// Drops the legacy column's indexes concurrently; a unique constraint
    /// moves to its rebuilt index on the new column instead, so that the
    /// guarantee never lapses.
    async fn retire_indexes(
        &self,
        client: &mut Client,
        r: Retire<'_>,
        migration: &str,
        actor: &str,
    ) -> Result<Vec<IndexReport>, ControlError> {
        let mut reports = Vec::new();
        for index in indexes::covering(client, r.table, r.legacy).await? {
            let qualified = format!(
                "{}.{}",
                ident::quote(&index.schema),
                ident::quote(&index.name)
            );
            let (sql, mode) = match &index.constraint {
                Some(constraint) => {
                    let rebuilt = indexes::renamed(&index.name, r.legacy, r.new);
                    let moved = indexes::renamed(constraint, r.legacy, r.new);
                    let t = r.table;
                    let sql = format!(
                        "ALTER TABLE {t} DROP CONSTRAINT {c}; ALTER TABLE {t} ADD CONSTRAINT {moved} UNIQUE USING INDEX {rebuilt}",
                        c = ident::quote(constraint),
                        moved = ident::quote(&moved),
                        rebuilt = ident::quote(&rebuilt),
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
            let (outcome, reason) = match self.run_ddl_step(client, step, migration, actor).await {
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
}

/// One legacy column whose indexes are retired.
struct Retire<'a> {
    table: &'a str,
    legacy: &'a str,
    new: &'a str,
    lock_timeout: Duration,
}
