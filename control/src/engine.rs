//! The migration engine: validates and stores migrations, runs each verb's
//! effect (DDL, routing), publishes rules, and audits everything.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use switchyard_rules::migration::{step, MigrationSpec, Parity, Verb};
use switchyard_rules::{Phase, QualifiedName, ReadRoute, RuleSet};
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
    /// Writes forwarded unrewritten since start, per migration: their rows
    /// need another backfill pass.
    fn unrewritten_writes(&self) -> Vec<(String, u64)>;
    /// Application round trips through this instance so far.
    fn latency(&self) -> crate::latency::Histogram {
        crate::latency::Histogram::default()
    }
}

impl Engine {
    /// Adds a latency snapshot to the history (called once a second).
    pub(crate) fn sample_latency(&self) {
        let snapshot = self.sink.latency();
        self.latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(std::time::Instant::now(), snapshot);
    }

    /// The application's round trips of about the last `span`.
    pub(crate) fn latency_window(&self, span: Duration) -> crate::latency::Histogram {
        let current = self.sink.latency();
        self.latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .window(std::time::Instant::now(), &current, span)
    }
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
    /// Migrations whose legacy column is being refilled (revert skips them).
    pub(crate) restoring: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Migrations whose expand, contract or rollback DDL is running here.
    pub(crate) ddl_running: std::sync::Mutex<std::collections::HashSet<String>>,
    /// DDL that answered 202, shown as the migration's job.
    pub(crate) ddl_jobs: std::sync::Mutex<std::collections::HashMap<String, crate::jobs::Progress>>,
    /// Once-a-second snapshots of the application's latency (backfill pacing).
    pub(crate) latency: std::sync::Mutex<crate::latency::History>,
    /// Running job tasks.
    pub(crate) tasks:
        std::sync::Mutex<std::collections::HashMap<String, tokio::task::JoinHandle<()>>>,
    /// This instance, as the fleet sees it.
    pub(crate) instance: crate::fleet::Instance,
    /// Whether this instance holds the job lock (and so runs jobs).
    pub(crate) holder: std::sync::atomic::AtomicBool,
    /// Unrewritten writes already added to the database's counters.
    pub(crate) reported: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// The fleet upkeep task.
    pub(crate) fleet: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Engine {
    /// Connects to the target database, creates or upgrades the schema, and
    /// republishes the stored routing (so a restart resumes where it was).
    pub async fn connect(
        url: &str,
        sink: Arc<dyn RulesSink>,
        metrics: crate::metrics::ControlMetrics,
        instance: crate::fleet::Instance,
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
            latency: Default::default(),
            ddl_running: Default::default(),
            ddl_jobs: Default::default(),
            instance,
            holder: Default::default(),
            fleet: Default::default(),
            reported: Default::default(),
        };
        // The history starts here, so that a baseline window reaches back
        // to the first round trip even in the first seconds.
        engine.sample_latency();
        engine.publish().await?;
        Ok(engine)
    }

    /// The control session, reconnected if the database restarted.
    pub(crate) async fn db(&self) -> Result<tokio::sync::MutexGuard<'_, Client>, ControlError> {
        let mut client = self.client.lock().await;
        if client.is_closed() {
            *client = crate::jobs::connect(&self.url).await?;
            info!("control session reconnected");
        }
        Ok(client)
    }

    /// Validates and stores a new migration in phase `planned`.
    pub async fn create(&self, spec: MigrationSpec, actor: &str) -> Result<Value, ControlError> {
        let mut client = self.db().await?;
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
        let client = self.db().await?;
        let m = store::get(&client, name).await?;
        let events = store::events(&client, Some(name), 20).await?;
        Ok(json!({
            "name": m.name,
            "table": m.spec.table,
            "phase": m.phase,
            "routing": routing_of(&m),
            "spec": m.spec,
            "state": m.state,
            "job": self.ddl_job(name).or_else(|| self.local_job(name)).map(|p| json!(p)).or_else(|| m.state.get("job").cloned()),
            "recent_events": events,
        }))
    }

    /// Every migration in short.
    pub async fn list(&self) -> Result<Value, ControlError> {
        let client = self.db().await?;
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
            let client = self.db().await?;
            store::rules_version(&client).await?
        };
        let acknowledged = self.sink.acknowledged();
        self.metrics
            .acknowledgement_lag
            .set(version.saturating_sub(acknowledged) as i64);
        let instances = self.instances().await?;
        Ok(json!({
            "rules_version": version,
            "instance": self.instance.id,
            "instances": instances,
            "migrations": self.list().await?,
        }))
    }

    /// The audit log.
    pub async fn events(&self) -> Result<Value, ControlError> {
        let client = self.db().await?;
        Ok(Value::Array(store::events(&client, None, 500).await?))
    }

    /// Runs `verb` on migration `name` now (see [`Engine::apply`]).
    pub(crate) async fn apply_now(
        self: &Arc<Self>,
        name: &str,
        verb: Verb,
        force: bool,
        actor: &str,
    ) -> Result<Value, ControlError> {
        let mut client = self.db().await?;
        // Our own unrewritten writes count now, not at the next heartbeat.
        self.flush_unrewritten(&client).await?;
        let m = store::get(&client, name).await?;
        let parity: Option<Parity> = m
            .state
            .get("parity")
            .and_then(|p| serde_json::from_value::<Parity>(p.clone()).ok())
            .map(|mut p| {
                p.stale |= unrewritten_writes(&m) > p.writes_seen;
                p
            });
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
        if crate::lifecycle::job_pending(&m) || self.job_running(name) {
            if verb != Verb::Rollback {
                return Err(ControlError::Conflict(format!(
                    "a job is running for {name}; wait for it (or roll back to cancel it)"
                )));
            }
            drop(client);
            self.cancel_job(name).await?;
            client = self.db().await?;
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
        let table = table_of(&m)?;
        let lock_timeout = Duration::from_millis(m.spec.backfill.lock_timeout_ms);
        let mut state = json!({});
        match (verb, m.phase) {
            (Verb::Expand, _) => {
                // DDL on its own session; the shared one serves the API.
                drop(client);
                let mut ddl = crate::jobs::connect(&self.url).await?;
                let mut reports = Vec::new();
                for p in &pairs {
                    let default = p
                        .default
                        .as_ref()
                        .map(|d| format!(" DEFAULT ({d})"))
                        .unwrap_or_default();
                    let sql = format!(
                        "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {} {} NULL{default}",
                        switchyard_rules::ident::quote(&p.new),
                        p.new_type
                    );
                    let report = self
                        .run_ddl(
                            &mut ddl,
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
                client = self.db().await?;
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
        let (report, failure) = match ddl::run(client, step, 20).await {
            Ok(report) => (report, None),
            Err(f) => (f.report, Some(f.error)),
        };
        self.metrics
            .ddl_retries
            .inc_by(u64::from(report.tries.saturating_sub(1)));
        // Every DDL step is audited, the ones that gave up too.
        let event = Event {
            actor,
            migration: Some(migration),
            action: "ddl",
            detail: {
                // Which instance ran it: the job holder.
                let mut d = json!(report);
                d["instance"] = json!(self.instance.id);
                d
            },
        };
        if let Err(e) = store::record(client, event).await {
            warn!(error = %e, "cannot audit a DDL step");
        }
        match failure {
            None => Ok(report),
            Some(e) => Err(e),
        }
    }
}

/// The migrated table, as stored with the migration.
pub(crate) fn table_of(m: &StoredMigration) -> Result<QualifiedName, ControlError> {
    QualifiedName::parse(&m.spec.table)
        .ok_or_else(|| ControlError::Internal(format!("stored table of {}", m.name)))
}

pub(crate) fn pairs_of(m: &StoredMigration) -> Result<Vec<Pair>, ControlError> {
    serde_json::from_value(m.state.get("pairs").cloned().unwrap_or(Value::Null))
        .map_err(|e| ControlError::Internal(format!("stored pairs of {}: {e}", m.name)))
}

/// Writes forwarded without the dual-write rewrite, counted over every
/// instance: rows that may be out of step until a backfill pass.
pub(crate) fn unrewritten_writes(m: &StoredMigration) -> u64 {
    m.state
        .get("unrewritten_writes")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// A rolled-back contract whose legacy column is not refilled yet: its
/// reads must not go back to the legacy column.
pub(crate) fn legacy_incomplete(m: &StoredMigration) -> bool {
    m.state
        .get("legacy_incomplete")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The routing `m` publishes: its phase's, with reads on the legacy column
/// after a revert; `None` once completed.
pub(crate) fn routing(m: &StoredMigration) -> Option<switchyard_rules::Routing> {
    let mut r = m.phase.routing()?;
    if m.state
        .get("reverted")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        r.reads = ReadRoute::Legacy;
    }
    Some(r)
}

fn routing_of(m: &StoredMigration) -> Value {
    match routing(m) {
        Some(r) => json!({"reads": r.reads, "writes": r.writes}),
        None => Value::Null,
    }
}
