//! The control plane of one `serve` process, composed of parts that own
//! their state: the database sessions ([`Db`]), the rule publisher
//! ([`Publisher`]), fleet membership ([`Fleet`]) and the job tasks
//! ([`JobRunner`]). Verbs live in `verbs/`, one file each; this file has
//! what reads: create, detail, list, status, events.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use switchyard_rules::migration::{MigrationSpec, MigrationState};
use switchyard_rules::RuleSet;

use crate::catalog;
use crate::db::Db;
use crate::error::ControlError;
use crate::fleet::{Fleet, Instance};
use crate::jobs::JobRunner;
use crate::latency::Recent;
use crate::metrics::ControlMetrics;
use crate::publisher::Publisher;
use crate::store::{self, Event, StoredMigration};

/// Where published rules go: the proxy of this process.
pub trait RulesSink: Send + Sync {
    /// Installs a rule set atomically; returns how long the swap took.
    fn install(&self, set: RuleSet) -> Result<Duration, String>;
    /// The lowest published version an open transaction still runs under.
    fn acknowledged(&self) -> u64;
    /// Follows [`RulesSink::acknowledged`] as it moves.
    fn watch_acknowledged(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Writes forwarded unrewritten since start, per migration: their rows
    /// need another backfill pass.
    fn unrewritten_writes(&self) -> Vec<(String, u64)>;
    /// Statements that still depend on each migration's legacy side.
    fn legacy_uses(&self) -> Vec<(String, switchyard_rules::legacy_use::LegacyUse)> {
        Vec::new()
    }
    /// Application round trips through this instance so far.
    fn latency(&self) -> crate::latency::Histogram {
        crate::latency::Histogram::default()
    }
}

/// How long a step waits for every instance to acknowledge a version.
pub(crate) const ACK_DEADLINE: Duration = Duration::from_secs(300);

/// The control plane of one `serve` process.
pub struct Engine {
    pub(crate) db: Db,
    pub(crate) sink: Arc<dyn RulesSink>,
    pub(crate) publisher: Publisher,
    pub(crate) fleet: Fleet,
    pub(crate) runner: JobRunner,
    pub(crate) latency: Recent,
    pub(crate) metrics: ControlMetrics,
    pub(crate) ack_deadline: Duration,
}

impl Engine {
    /// Connects to the target database, creates or upgrades the schema, and
    /// installs the stored routing (so a restart resumes where it was).
    pub async fn connect(
        url: &str,
        sink: Arc<dyn RulesSink>,
        metrics: ControlMetrics,
        instance: Instance,
    ) -> Result<Self, ControlError> {
        let db = Db::connect(url).await?;
        let database: String = {
            let mut client = db.session().await?;
            store::bootstrap(&mut client).await?;
            client
                .query_one("SELECT current_database()::text", &[])
                .await?
                .get(0)
        };
        let engine = Engine {
            publisher: Publisher::new(sink.clone(), database, metrics.clone()),
            db,
            sink,
            fleet: Fleet::new(instance),
            runner: JobRunner::default(),
            latency: Recent::default(),
            metrics,
            ack_deadline: ACK_DEADLINE,
        };
        // The history starts here, so that a baseline window reaches back
        // to the first round trip even in the first seconds.
        engine.latency.sample(engine.sink.latency());
        {
            let client = engine.db.session().await?;
            engine.publisher.sync(&*client).await?;
        }
        Ok(engine)
    }

    /// Validates and stores a new migration in phase `planned`.
    pub async fn create(&self, spec: MigrationSpec, actor: &str) -> Result<Value, ControlError> {
        let mut client = self.db.session().await?;
        let (_, pairs) = catalog::validate(&mut client, &spec).await?;
        for m in store::list(&*client).await? {
            if m.state.routing().is_none() || m.spec.table != spec.table {
                continue;
            }
            let taken: Vec<&str> = m
                .state
                .pairs
                .iter()
                .flat_map(|p| [p.legacy.as_str(), p.new.as_str()])
                .collect();
            let mine = pairs.iter().flat_map(|p| [&p.legacy, &p.new]);
            if let Some(c) = mine.into_iter().find(|c| taken.contains(&c.as_str())) {
                return Err(ControlError::Conflict(format!(
                    "column {c} is already being migrated by {}; complete or roll back that one first",
                    m.name
                )));
            }
        }
        let tx = client.transaction().await?;
        store::insert(&tx, &spec, &MigrationState::planned(pairs)).await?;
        let event = Event {
            actor,
            migration: Some(&spec.name),
            action: "create",
            detail: json!({ "spec": spec }),
        };
        store::record(&tx, event).await?;
        // Published at once: from now on `*` over the table keeps its shape
        // (see `CompiledTable::pinned_view`), before any DDL.
        store::bump_rules_version(&tx, 0).await?;
        tx.commit().await?;
        self.publisher.sync(&*client).await?;
        drop(client);
        self.detail(&spec.name).await
    }

    /// One migration as the API shows it.
    pub async fn detail(&self, name: &str) -> Result<Value, ControlError> {
        let client = self.db.session().await?;
        let m = store::get(&*client, name).await?;
        let events = store::events(&*client, Some(name), 20).await?;
        let mut detail = summary(&m);
        detail["spec"] = json!(m.spec);
        detail["state"] = json!(m.state);
        detail["job"] = self.job_of(&m);
        detail["legacy_uses"] = json!(self.legacy_uses_of(&*client, name).await?);
        detail["recent_events"] = json!(events);
        Ok(detail)
    }

    /// The migration's job, with this instance's live progress if it runs
    /// it here.
    fn job_of(&self, m: &StoredMigration) -> Value {
        let Some(mut job) = m.state.job.clone() else {
            return Value::Null;
        };
        if let Some((id, shown)) = self.runner.shown(&m.name) {
            if id == job.id && job.is_running() {
                job.progress = shown.progress;
                job.state = if shown.paused {
                    switchyard_rules::migration::JobStatus::Paused
                } else {
                    switchyard_rules::migration::JobStatus::Running
                };
            }
        }
        json!(job)
    }

    /// Every migration in short.
    pub async fn list(&self) -> Result<Value, ControlError> {
        let client = self.db.session().await?;
        let all = store::list(&*client).await?;
        Ok(Value::Array(all.iter().map(summary).collect()))
    }

    /// Rules version, instances and their acknowledgements, migrations in
    /// short.
    pub async fn status(&self) -> Result<Value, ControlError> {
        let version = {
            let client = self.db.session().await?;
            store::rules_version(&*client).await?
        };
        let acknowledged = self.sink.acknowledged();
        self.metrics
            .acknowledgement_lag
            .set(version.saturating_sub(acknowledged) as i64);
        let instances = self.instances().await?;
        Ok(json!({
            "rules_version": version,
            "instance": self.fleet.instance.id,
            "instances": instances,
            "migrations": self.list().await?,
        }))
    }

    /// The audit log.
    pub async fn events(&self) -> Result<Value, ControlError> {
        let client = self.db.session().await?;
        Ok(Value::Array(store::events(&*client, None, 500).await?))
    }

    /// The version this instance runs.
    pub fn installed_version(&self) -> u64 {
        self.publisher.installed_version()
    }
}

/// A migration in short: where it stands and what routes.
fn summary(m: &StoredMigration) -> Value {
    let routing = match m.state.routing() {
        Some(r) => json!({"reads": r.reads, "writes": r.writes}),
        None => Value::Null,
    };
    json!({
        "name": m.name,
        "table": m.spec.table,
        "phase": m.phase(),
        "stage": m.state.stage,
        "routing": routing,
    })
}
