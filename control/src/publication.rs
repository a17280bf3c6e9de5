//! Routing publication. The rule set is a pure function of the stored
//! migrations, so every instance builds the same set for a version:
//! `publish` bumps the version (with a NOTIFY) and installs locally; other
//! instances `sync` on the notification, or on their periodic poll when a
//! notification was lost. `revert` swaps locally first, without waiting on
//! the database, then persists and notifies in one transaction.

use std::time::Instant;

use serde_json::{json, Value};
use switchyard_rules::{ColumnMapping, ReadRoute, Routing, RuleSet, TableRules, WriteRoute};
use tokio_postgres::Client;
use tracing::info;

use crate::catalog;
use crate::engine::{legacy_incomplete, pairs_of, table_of, Engine};
use crate::error::ControlError;
use crate::store::{self, Event};

impl Engine {
    /// Publishes the stored routing under a new version and installs it here.
    pub async fn publish(&self) -> Result<u64, ControlError> {
        let client = self.db().await?;
        let version = store::bump_rules_version(&client).await?;
        let set = self.build(&client, version).await?;
        self.install(set)?;
        Ok(version)
    }

    /// Installs the published version if it is newer than ours.
    pub async fn sync(&self) -> Result<(), ControlError> {
        let client = self.db().await?;
        let version = store::rules_version(&client).await?;
        if version <= self.installed_version() {
            return Ok(());
        }
        let set = self.build(&client, version).await?;
        self.install(set)?;
        info!(version, "rules synchronised from the database");
        Ok(())
    }

    /// The version this instance runs.
    pub fn installed_version(&self) -> u64 {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).version
    }

    fn install(&self, set: RuleSet) -> Result<(), ControlError> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        // Two publishers may finish out of order; never go back.
        if set.version <= last.version {
            return Ok(());
        }
        self.sink
            .install(set.clone())
            .map_err(ControlError::Internal)?;
        self.metrics.rules_version.set(set.version as i64);
        *last = set;
        Ok(())
    }

    /// The rule set the stored migrations describe, as `version`.
    async fn build(&self, client: &Client, version: u64) -> Result<RuleSet, ControlError> {
        let all = store::list(client).await?;
        let mut tables: Vec<TableRules> = Vec::new();
        for m in &all {
            let Some(routing) = crate::engine::routing(m) else {
                continue;
            };
            let table = table_of(m)?;
            let facts = catalog::table_facts(client, &table).await?;
            let mappings = pairs_of(m)?
                .into_iter()
                .map(|p| ColumnMapping {
                    migration: m.name.clone(),
                    legacy: p.legacy,
                    legacy_type: p.legacy_type,
                    new: p.new,
                    new_type: p.new_type,
                    forward: p.forward,
                    backward: p.backward,
                    routing,
                    legacy_position: Some(p.legacy_position),
                    on_unsupported: Default::default(),
                })
                .collect::<Vec<_>>();
            match tables.iter_mut().find(|t| t.facts.name == table) {
                Some(t) => t.mappings.extend(mappings),
                None => tables.push(TableRules { facts, mappings }),
            }
        }
        *self.restoring.lock().unwrap_or_else(|p| p.into_inner()) = all
            .iter()
            .filter(|m| legacy_incomplete(m))
            .map(|m| m.name.clone())
            .collect();
        for m in &all {
            self.metrics.set_phase(&m.name, m.phase);
            if let Some(n) = m
                .state
                .pointer("/parity/mismatches")
                .and_then(Value::as_i64)
            {
                self.metrics
                    .parity_mismatches
                    .get_or_create(&crate::metrics::MigrationLabel {
                        migration: m.name.clone(),
                    })
                    .set(n);
            }
        }
        Ok(RuleSet {
            version,
            database: self.database.clone(),
            tables,
            shadows: vec![],
        })
    }

    /// Instant routing revert: reads back to legacy at once (writes stay dual
    /// while both columns exist). The local swap does not wait on the
    /// database; persisting and notifying the other instances follow in one
    /// transaction, so they never see the new version without its state.
    pub async fn revert(&self, name: Option<&str>, actor: &str) -> Result<Value, ControlError> {
        let started = Instant::now();
        let restoring = self
            .restoring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (set, touched, skipped, swap) = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let mut set = last.clone();
            set.version += 1;
            let mut touched = Vec::new();
            let mut skipped = Vec::new();
            for t in &mut set.tables {
                for m in &mut t.mappings {
                    if name.is_some_and(|n| n != m.migration) || m.routing.reads != ReadRoute::New {
                        continue;
                    }
                    if restoring.contains(&m.migration) {
                        skipped.push(m.migration.clone());
                        continue;
                    }
                    m.routing = Routing {
                        reads: ReadRoute::Legacy,
                        writes: if m.routing.legacy_exists() {
                            WriteRoute::Both
                        } else {
                            WriteRoute::New
                        },
                    };
                    touched.push(m.migration.clone());
                }
            }
            touched.dedup();
            skipped.dedup();
            let swap = self
                .sink
                .install(set.clone())
                .map_err(ControlError::Internal)?;
            *last = set.clone();
            (set, touched, skipped, swap)
        };
        let local_ms = started.elapsed().as_secs_f64() * 1000.0;
        info!(
            version = set.version,
            ?touched,
            swap_us = swap.as_micros() as u64,
            "routing reverted"
        );
        let mut client = self.db().await?;
        if let (Some(n), true) = (name, touched.is_empty()) {
            store::get(&client, n).await?;
        }
        let tx = client.transaction().await?;
        for m in &touched {
            tx.execute(
                "UPDATE switchyard.migrations SET state = state || '{\"reverted\": true}' WHERE name = $1",
                &[m],
            )
            .await?;
            let event = Event {
                actor,
                migration: Some(m),
                action: "revert",
                detail: json!({"version": set.version}),
            };
            store::record_in(&tx, event).await?;
        }
        // Another instance may have published meanwhile: the database's
        // version stays the highest, and ours follows it.
        let version: i64 = tx
            .query_one(
                "UPDATE switchyard.rules SET version = greatest(version + 1, $1), published_at = now()
                 RETURNING version",
                &[&(set.version as i64)],
            )
            .await?
            .get(0);
        tx.execute(
            "SELECT pg_notify('switchyard_rules', $1)",
            &[&version.to_string()],
        )
        .await?;
        tx.commit().await?;
        if version as u64 > set.version {
            let rebuilt = self.build(&client, version as u64).await?;
            self.install(rebuilt)?;
        }
        Ok(json!({
            "rules_version": version,
            "reverted": touched,
            "skipped_legacy_incomplete": skipped,
            "swap_micros": swap.as_micros() as u64,
            "local_millis": local_ms,
        }))
    }
}
