//! The migration engine: validates and stores migrations, runs each verb's
//! effect (DDL, routing), publishes rules, and audits everything.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_rules::migration::{step, MigrationSpec, Parity, Verb};
use switchyard_rules::{
    ColumnMapping, Phase, QualifiedName, ReadRoute, Routing, RuleSet, TableRules, WriteRoute,
};
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};
use tracing::{info, warn};

use crate::catalog::{self, Pair};
use crate::ddl;
use crate::error::ControlError;
use crate::store::{self, Event, StoredMigration};

/// Where published rules go: the proxy of this process.
pub trait RulesSink: Send + Sync {
    /// Installs a rule set atomically; returns how long the swap took.
    fn install(&self, set: RuleSet) -> Result<Duration, String>;
    /// The lowest rules version an open transaction still runs under.
    fn acknowledged(&self) -> u64;
}

/// The control plane of one `serve` process.
pub struct Engine {
    pub(crate) client: Mutex<Client>,
    pub(crate) sink: Arc<dyn RulesSink>,
    pub(crate) database: String,
    pub(crate) last: std::sync::Mutex<RuleSet>,
    pub(crate) url: String,
    /// Live progress of running or finished jobs, by migration.
    pub(crate) jobs: std::sync::Mutex<std::collections::HashMap<String, crate::jobs::Progress>>,
    /// Operator settings of backfills (pause, throttle), by migration.
    pub(crate) live: std::sync::Mutex<std::collections::HashMap<String, crate::jobs::Live>>,
    /// Metrics.
    pub(crate) metrics: crate::metrics::ControlMetrics,
    /// Running job tasks.
    /// Migrations whose legacy column is being refilled (revert skips them).
    pub(crate) restoring: std::sync::Mutex<std::collections::HashSet<String>>,
    pub(crate) tasks:
        std::sync::Mutex<std::collections::HashMap<String, tokio::task::JoinHandle<()>>>,
}

impl Engine {
    /// Connects to the target database, creates or upgrades the schema, and
    /// republishes the stored routing (so a restart resumes where it was).
    pub async fn connect(
        url: &str,
        sink: Arc<dyn RulesSink>,
        metrics: crate::metrics::ControlMetrics,
    ) -> Result<Self, ControlError> {
        let (mut client, connection) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                warn!(error = %e, "control database connection closed");
            }
        });
        store::bootstrap(&mut client).await?;
        let database: String = client
            .query_one("SELECT current_database()::text", &[])
            .await?
            .get(0);
        let engine = Engine {
            client: Mutex::new(client),
            sink,
            database,
            last: std::sync::Mutex::new(RuleSet::default()),
            url: url.to_owned(),
            jobs: Default::default(),
            live: Default::default(),
            metrics,
            tasks: Default::default(),
            restoring: Default::default(),
        };
        engine.publish().await?;
        Ok(engine)
    }

    /// Validates and stores a new migration in phase `planned`.
    pub async fn create(&self, spec: MigrationSpec, actor: &str) -> Result<Value, ControlError> {
        let mut client = self.client.lock().await;
        let (_, pairs) = catalog::validate(&mut client, &spec).await?;
        for m in store::list(&client).await? {
            if m.phase == Phase::Completed || m.spec.table != spec.table {
                continue;
            }
            let taken: Vec<&str> = m
                .spec
                .columns
                .iter()
                .flat_map(|c| [c.legacy.as_str(), c.new.as_str()])
                .collect();
            if let Some(c) = spec
                .columns
                .iter()
                .find(|c| taken.contains(&c.legacy.as_str()) || taken.contains(&c.new.as_str()))
            {
                return Err(ControlError::Conflict(format!(
                    "column {} is already being migrated by {}",
                    c.legacy, m.name
                )));
            }
        }
        let state = json!({ "pairs": pairs });
        store::insert(&client, &spec, &state).await?;
        store::record(
            &client,
            Event {
                actor,
                migration: Some(&spec.name),
                action: "create",
                detail: json!({ "spec": spec }),
            },
        )
        .await?;
        drop(client);
        self.detail(&spec.name).await
    }

    /// One migration as the API shows it.
    pub async fn detail(&self, name: &str) -> Result<Value, ControlError> {
        let client = self.client.lock().await;
        let m = store::get(&client, name).await?;
        let events = store::events(&client, Some(name), 20).await?;
        Ok(json!({
            "name": m.name,
            "table": m.spec.table,
            "phase": m.phase,
            "routing": routing_of(&m),
            "spec": m.spec,
            "state": m.state,
            "job": self.jobs.lock().unwrap_or_else(|e| e.into_inner()).get(name),
            "recent_events": events,
        }))
    }

    /// Every migration in short.
    pub async fn list(&self) -> Result<Value, ControlError> {
        let client = self.client.lock().await;
        let all = store::list(&client).await?;
        Ok(Value::Array(
            all.iter()
                .map(|m| json!({"name": m.name, "table": m.spec.table, "phase": m.phase, "routing": routing_of(m)}))
                .collect(),
        ))
    }

    /// Rules version, this instance's acknowledgement, migrations in short.
    pub async fn status(&self) -> Result<Value, ControlError> {
        let version = {
            let client = self.client.lock().await;
            store::rules_version(&client).await?
        };
        let acknowledged = self.sink.acknowledged();
        self.metrics
            .acknowledgement_lag
            .set(version.saturating_sub(acknowledged) as i64);
        Ok(json!({
            "rules_version": version,
            "instances": [{"id": "local", "acknowledged_version": acknowledged}],
            "migrations": self.list().await?,
        }))
    }

    /// The audit log.
    pub async fn events(&self) -> Result<Value, ControlError> {
        let client = self.client.lock().await;
        Ok(Value::Array(store::events(&client, None, 500).await?))
    }

    /// Runs `verb` on migration `name`.
    pub async fn apply(
        self: &Arc<Self>,
        name: &str,
        verb: Verb,
        force: bool,
        actor: &str,
    ) -> Result<Value, ControlError> {
        let mut client = self.client.lock().await;
        let m = store::get(&client, name).await?;
        let parity: Option<Parity> = m
            .state
            .get("parity")
            .and_then(|p| serde_json::from_value(p.clone()).ok());
        let reverted = m
            .state
            .get("reverted")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let outcome = match (verb, m.phase, reverted) {
            // After a revert, switch-reads puts reads back on the new column.
            (Verb::SwitchReads, Phase::ReadsSwitched, true) => {
                switchyard_rules::migration::Outcome {
                    next: Phase::ReadsSwitched,
                    forced: None,
                }
            }
            _ => step(m.phase, verb, parity.as_ref(), force)
                .map_err(|e| ControlError::Conflict(e.to_string()))?,
        };
        if verb == Verb::Rollback && legacy_incomplete(&m) {
            return Err(ControlError::Conflict(format!(
                "the legacy column of {name} is still being restored; reads must stay on the new column until that job is done"
            )));
        }
        if self.job_running(name) {
            if verb != Verb::Rollback {
                return Err(ControlError::Conflict(format!(
                    "a job is running for {name}; wait for it (or roll back to cancel it)"
                )));
            }
            drop(client);
            self.cancel_job(name).await?;
            client = self.client.lock().await;
        }
        if matches!(verb, Verb::Backfill | Verb::Verify) {
            drop(client);
            return self.start_job(m, verb, outcome, actor).await;
        }
        if verb == Verb::Contract {
            drop(client);
            return self.contract(m, outcome, force, actor).await;
        }
        if verb == Verb::Rollback {
            drop(client);
            return self.rollback(m, outcome, actor).await;
        }
        let pairs = pairs_of(&m)?;
        let table = QualifiedName::parse(&m.spec.table)
            .ok_or_else(|| ControlError::Internal("stored table name".into()))?;
        let lock_timeout = Duration::from_millis(m.spec.backfill.lock_timeout_ms);
        let mut state = json!({});
        match (verb, m.phase) {
            (Verb::Expand, _) => {
                let mut reports = Vec::new();
                for p in &pairs {
                    let sql = format!(
                        "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {} {} NULL",
                        switchyard_rules::ident::quote(&p.new),
                        p.new_type
                    );
                    let report = self
                        .run_ddl(
                            &mut client,
                            &table.to_string(),
                            &sql,
                            lock_timeout,
                            name,
                            actor,
                        )
                        .await?;
                    reports.push(report);
                }
                state = json!({ "expand": reports });
            }
            (Verb::DualWrite | Verb::Complete, _) => {}
            (Verb::SwitchReads, _) => state = json!({ "reverted": false }),
            (verb, phase) => {
                return Err(ControlError::NotImplemented(format!(
                    "{} from {phase:?} is not implemented yet",
                    verb.as_str()
                )))
            }
        }
        store::set_phase(&client, name, m.phase, outcome.next, &state).await?;
        self.record_transition(&client, &m, verb.as_str(), &outcome, actor)
            .await?;
        drop(client);
        self.publish().await?;
        self.detail(name).await
    }

    /// Audits a phase change, and the gate it overrode if it was forced.
    pub(crate) async fn record_transition(
        &self,
        client: &Client,
        m: &StoredMigration,
        verb: &str,
        outcome: &switchyard_rules::migration::Outcome,
        actor: &str,
    ) -> Result<(), ControlError> {
        let detail = json!({"verb": verb, "before": m.phase, "after": outcome.next});
        let event = Event {
            actor,
            migration: Some(&m.name),
            action: "phase",
            detail,
        };
        store::record(client, event).await?;
        if let Some(reason) = &outcome.forced {
            let event = Event {
                actor,
                migration: Some(&m.name),
                action: "force",
                detail: json!({"verb": verb, "gate": reason}),
            };
            store::record(client, event).await?;
        }
        Ok(())
    }

    /// Instant routing revert: reads back to legacy at once (writes stay dual
    /// while both columns exist). The local swap does not wait on the
    /// database; persisting and publishing follow.
    pub async fn revert(&self, name: Option<&str>, actor: &str) -> Result<Value, ControlError> {
        let started = Instant::now();
        let mut set = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        set.version += 1;
        let mut touched = Vec::new();
        let mut skipped = Vec::new();
        let restoring = self
            .restoring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for t in &mut set.tables {
            for m in &mut t.mappings {
                if restoring.contains(&m.migration) {
                    skipped.push(m.migration.clone());
                    continue;
                }
                if name.is_none_or(|n| n == m.migration) && m.routing.reads == ReadRoute::New {
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
        }
        touched.dedup();
        skipped.dedup();
        if let Some(n) = name {
            if touched.is_empty() {
                let client = self.client.lock().await;
                store::get(&client, n).await?;
            }
        }
        let swap = self
            .sink
            .install(set.clone())
            .map_err(ControlError::Internal)?;
        let local_ms = started.elapsed().as_secs_f64() * 1000.0;
        let version = set.version;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = set;
        info!(
            version,
            ?touched,
            swap_us = swap.as_micros() as u64,
            "routing reverted"
        );
        let client = self.client.lock().await;
        client
            .execute(
                "UPDATE switchyard.rules SET version = greatest(version, $1), published_at = now()",
                &[&(version as i64)],
            )
            .await?;
        for m in &touched {
            client
                .execute(
                    "UPDATE switchyard.migrations SET state = state || '{\"reverted\": true}' WHERE name = $1",
                    &[m],
                )
                .await?;
            store::record(
                &client,
                Event {
                    actor,
                    migration: Some(m),
                    action: "revert",
                    detail: json!({"version": version}),
                },
            )
            .await?;
        }
        client
            .execute(
                "SELECT pg_notify('switchyard_rules', $1)",
                &[&version.to_string()],
            )
            .await?;
        Ok(json!({
            "rules_version": version,
            "reverted": touched,
            "skipped_legacy_incomplete": skipped,
            "swap_micros": swap.as_micros() as u64,
            "local_millis": local_ms,
        }))
    }

    /// Runs one DDL step with the migration's lock policy, audits it and
    /// counts its retries.
    pub(crate) async fn run_ddl(
        &self,
        client: &mut Client,
        table: &str,
        sql: &str,
        lock_timeout: Duration,
        migration: &str,
        actor: &str,
    ) -> Result<ddl::DdlReport, ControlError> {
        let step = ddl::Step {
            table,
            sql,
            lock_timeout,
            mode: ddl::Mode::Transaction,
        };
        self.run_ddl_step(client, step, migration, actor).await
    }

    /// Like [`Engine::run_ddl`], for any [`ddl::Mode`].
    pub(crate) async fn run_ddl_step(
        &self,
        client: &mut Client,
        step: ddl::Step<'_>,
        migration: &str,
        actor: &str,
    ) -> Result<ddl::DdlReport, ControlError> {
        let report = ddl::run(client, step, 20).await?;
        self.metrics
            .ddl_retries
            .inc_by(u64::from(report.tries.saturating_sub(1)));
        store::record(
            client,
            Event {
                actor,
                migration: Some(migration),
                action: "ddl",
                detail: json!(report),
            },
        )
        .await?;
        Ok(report)
    }

    /// Rebuilds the rule set from the stored migrations and installs it
    /// under a new version.
    pub async fn publish(&self) -> Result<u64, ControlError> {
        let client = self.client.lock().await;
        let mut tables: Vec<TableRules> = Vec::new();
        for m in store::list(&client).await? {
            let Some(mut routing) = m.phase.routing() else {
                continue;
            };
            if m.state
                .get("reverted")
                .and_then(Value::as_bool)
                .unwrap_or(false)
            {
                routing.reads = ReadRoute::Legacy;
            }
            let table = QualifiedName::parse(&m.spec.table)
                .ok_or_else(|| ControlError::Internal("stored table".into()))?;
            let facts = catalog::table_facts(&client, &table).await?;
            let mappings = pairs_of(&m)?
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
        let version = store::bump_rules_version(&client).await?;
        let all = store::list(&client).await?;
        *self.restoring.lock().unwrap_or_else(|p| p.into_inner()) = all
            .iter()
            .filter(|m| legacy_incomplete(m))
            .map(|m| m.name.clone())
            .collect();
        for m in all {
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
        self.metrics.rules_version.set(version as i64);
        let set = RuleSet {
            version,
            database: self.database.clone(),
            tables,
            shadows: vec![],
        };
        self.sink
            .install(set.clone())
            .map_err(ControlError::Internal)?;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = set;
        Ok(version)
    }
}

pub(crate) fn pairs_of(m: &StoredMigration) -> Result<Vec<Pair>, ControlError> {
    serde_json::from_value(m.state.get("pairs").cloned().unwrap_or(Value::Null))
        .map_err(|e| ControlError::Internal(format!("stored pairs of {}: {e}", m.name)))
}

/// A rolled-back contract whose legacy column is not refilled yet: its
/// reads must not go back to the legacy column.
pub(crate) fn legacy_incomplete(m: &StoredMigration) -> bool {
    m.state
        .get("legacy_incomplete")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn routing_of(m: &StoredMigration) -> Value {
    match m.phase.routing() {
        Some(mut r) => {
            if m.state
                .get("reverted")
                .and_then(Value::as_bool)
                .unwrap_or(false)
            {
                r.reads = ReadRoute::Legacy;
            }
            json!({"reads": r.reads, "writes": r.writes})
        }
        None => Value::Null,
    }
}
