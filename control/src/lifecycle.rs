//! Long jobs: backfill, verify, and the restore after a rollback of
//! contract. Any instance records a job (answered 202, followed through the
//! migration detail); the holder of the job lock runs it, so exactly one
//! instance works on a table, and a new holder picks up what a dead one
//! left, from its checkpoint.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use switchyard_rules::migration::{Outcome, Parity, Verb};
use switchyard_rules::{ident, Phase, QualifiedName};
use tracing::{info, warn};

use crate::catalog;

use crate::engine::{pairs_of, table_of, Engine};
use crate::error::ControlError;
use crate::fleet::JOBS_CHANNEL;
use crate::indexes;
use crate::jobs::{self, Direction, Target};
use crate::store::{self, Event, StoredMigration};
use crate::throttle::LatencyGuard;

impl Engine {
    pub(crate) async fn target(
        &self,
        m: &StoredMigration,
        direction: Direction,
    ) -> Result<Target, ControlError> {
        let table = table_of(m)?;
        let client = self.db().await?;
        // Without a key, the jobs walk page ranges by ctid.
        let facts = catalog::table_facts(&client, &table).await?;
        let key_types = facts
            .key
            .iter()
            .map(|k| {
                facts
                    .column(k)
                    .map(|c| c.sql_type.clone())
                    .unwrap_or_default()
            })
            .collect();
        Ok(Target {
            migration: m.name.clone(),
            table: table.to_string(),
            key: facts.key.iter().map(|k| ident::quote(k)).collect(),
            key_types,
            direction,
            pairs: pairs_of(m)?,
            target_chunk: Duration::from_millis(m.spec.backfill.target_chunk_ms),
            max_rows_per_second: m.spec.backfill.max_rows_per_second,
            lock_timeout: Duration::from_millis(m.spec.backfill.lock_timeout_ms),
            limits: crate::throttle::Limits {
                max_replica_lag_ms: m.spec.backfill.max_replica_lag_ms,
                max_active_sessions: m.spec.backfill.max_active_sessions,
                max_app_p99_pct: m.spec.backfill.max_app_p99_pct,
            },
        })
    }

    /// Starts a backfill, verify or restore job and answers at once. The
    /// job is recorded in the database first; the holder of the job lock
    /// runs it (this instance, or another one woken by a notification).
    pub(crate) async fn start_job(
        self: &Arc<Self>,
        m: StoredMigration,
        verb: Verb,
        outcome: Outcome,
        actor: &str,
    ) -> Result<Value, ControlError> {
        if job_pending(&m) || self.job_running(&m.name) {
            return Err(ControlError::Conflict(format!(
                "a job is already running for {}",
                m.name
            )));
        }
        let target = self.target(&m, direction_of(verb)).await?;
        let holder = self.holder.load(Ordering::SeqCst);
        {
            let client = self.db().await?;
            // A new backfill walks the whole table again; only a resumed
            // one continues from the checkpoint.
            if verb != Verb::Verify {
                client
                    .execute(
                        "DELETE FROM switchyard.checkpoints WHERE migration = $1",
                        &[&m.name],
                    )
                    .await?;
            }
            let event = Event {
                actor,
                migration: Some(&m.name),
                action: verb.as_str(),
                detail: json!({"state": "started", "instance": self.instance.id}),
            };
            store::record(&client, event).await?;
            let state = json!({
                "running_job": {"verb": verb.as_str(), "next": outcome.next, "actor": actor},
                "job": jobs::Progress { state: "running".into(), ..Default::default() },
            });
            store::set_phase(&client, &m.name, m.phase, m.phase, &state).await?;
            if !holder {
                client
                    .execute("SELECT pg_notify($1, $2)", &[&JOBS_CHANNEL, &m.name])
                    .await?;
            }
        }
        let name = m.name.clone();
        if holder {
            self.spawn_job(m, verb, outcome.next, target, actor.to_owned());
        }
        let mut detail = self.detail(&name).await?;
        detail["accepted"] = json!(true);
        Ok(detail)
    }

    fn spawn_job(
        self: &Arc<Self>,
        m: StoredMigration,
        verb: Verb,
        next: Phase,
        target: Target,
        actor: String,
    ) {
        let name = m.name.clone();
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).insert(
            name.clone(),
            jobs::Progress {
                state: "running".into(),
                ..Default::default()
            },
        );
        let engine = self.clone();
        let task = tokio::spawn(async move {
            let result = engine.run_job(&m, verb, next, &target, &actor).await;
            if let Err(e) = result {
                if e.is_transient() {
                    // The database went away (restart, failover): the job
                    // stays recorded and the next scan resumes it from its
                    // checkpoint.
                    warn!(migration = %m.name, error = %e, "job interrupted; it will resume");
                    return;
                }
                warn!(migration = %m.name, error = %e, "job failed");
                let failed = {
                    let mut jobs = engine.jobs.lock().unwrap_or_else(|e| e.into_inner());
                    let p = jobs.entry(m.name.clone()).or_default();
                    p.state = "failed".into();
                    p.error = Some(e.to_string());
                    p.clone()
                };
                // A failed job is not retried by the next holder; the
                // operator issues the verb again.
                let state = json!({"running_job": null, "job": failed});
                if let Ok(client) = engine.db().await {
                    let _ = store::merge_state(&client, &m.name, &state).await;
                }
            }
        });
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = tasks.insert(name, task) {
            old.abort();
        }
    }

    /// Whether a job task of `name` is alive in this instance.
    pub(crate) fn job_running(&self, name: &str) -> bool {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .is_some_and(|t| !t.is_finished())
    }

    /// This instance's view of the job of `name`, if it ran it.
    pub(crate) fn local_job(&self, name: &str) -> Option<jobs::Progress> {
        if !self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name)
        {
            return None;
        }
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Cancels the job of `name` wherever it runs (a rollback undoes what
    /// it was doing).
    pub(crate) async fn cancel_job(&self, name: &str) -> Result<(), ControlError> {
        if let Some(task) = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
        {
            task.abort();
        }
        let cancelled = {
            let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            let p = jobs.entry(name.to_owned()).or_default();
            p.state = "cancelled".into();
            p.clone()
        };
        let client = self.db().await?;
        let state = json!({"running_job": null, "job": cancelled});
        store::merge_state(&client, name, &state).await?;
        client
            .execute("SELECT pg_notify($1, $2)", &[&JOBS_CHANNEL, &name])
            .await?;
        Ok(())
    }

    /// On the job-lock holder: starts recorded jobs that run nowhere (new
    /// ones, or ones interrupted by a restart or by the death of the last
    /// holder; a backfill continues from its checkpoint), stops cancelled
    /// ones, and refreshes operator settings.
    pub(crate) async fn scan_jobs(self: &Arc<Self>) -> Result<(), ControlError> {
        self.take_ddl_requests().await?;
        let all = {
            let client = self.db().await?;
            store::list(&client).await?
        };
        for m in &all {
            if m.phase == Phase::Contracted && !self.job_running(&m.name) {
                self.resume_contract(m).await;
            }
        }
        for m in all {
            if let Some(live) = m
                .state
                .get("live")
                .and_then(|v| serde_json::from_value::<jobs::Live>(v.clone()).ok())
            {
                self.live
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(m.name.clone(), live);
            }
            let running_here = self.job_running(&m.name);
            let Some((verb, next)) = job_of(&m) else {
                if running_here && m.state.pointer("/job/state") == Some(&json!("cancelled")) {
                    if let Some(task) = self
                        .tasks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&m.name)
                    {
                        task.abort();
                    }
                }
                continue;
            };
            if running_here {
                continue;
            }
            match self.target(&m, direction_of(verb)).await {
                Ok(target) => {
                    info!(migration = %m.name, verb = verb.as_str(), "running recorded job");
                    let actor = m
                        .state
                        .pointer("/running_job/actor")
                        .and_then(Value::as_str)
                        .unwrap_or("system")
                        .to_owned();
                    self.spawn_job(m, verb, next, target, actor);
                }
                Err(e) => warn!(migration = %m.name, error = %e, "cannot run recorded job"),
            }
        }
        Ok(())
    }

    /// Finishes a contract that a crash interrupted between routing to the
    /// new column and dropping the legacy one (checked against the
    /// catalog), in the background.
    async fn resume_contract(self: &Arc<Self>, m: &StoredMigration) {
        let Ok(table) = QualifiedName::parse(&m.spec.table).ok_or(()) else {
            return;
        };
        let facts = match self.db().await {
            Ok(client) => catalog::table_facts(&client, &table).await,
            Err(e) => Err(e),
        };
        let Ok(facts) = facts else { return };
        let Ok(pairs) = pairs_of(m) else { return };
        if !pairs.iter().any(|p| facts.column(&p.legacy).is_some()) {
            return;
        }
        info!(migration = %m.name, "finishing an interrupted contract");
        let engine = self.clone();
        let name = m.name.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = engine.finish_contract(&name, "system", false).await {
                warn!(migration = %name, error = %e, "cannot finish the contract yet");
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(m.name.clone(), task);
    }

    /// On the holder: copies running jobs' progress to the database, so
    /// that every instance's API shows it.
    pub(crate) async fn save_progress(&self) -> Result<(), ControlError> {
        let running: Vec<(String, jobs::Progress)> = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(name, p)| {
                (p.state == "running" || p.state == "paused") && self.job_running(name)
            })
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
        if running.is_empty() {
            return Ok(());
        }
        let client = self.db().await?;
        for (name, progress) in running {
            let state = json!({ "job": progress });
            // Only while the job is recorded as running: never over "done".
            client
                .execute(
                    "UPDATE switchyard.migrations SET state = state || $2
                     WHERE name = $1 AND jsonb_typeof(state->'running_job') = 'object'",
                    &[&name, &state],
                )
                .await?;
        }
        Ok(())
    }

    /// Stops running jobs (shutdown, or the job lock lost); the next holder
    /// resumes them.
    pub fn stop_jobs(&self) {
        for (_, task) in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            task.abort();
        }
    }

    async fn run_job(
        &self,
        m: &StoredMigration,
        verb: Verb,
        next: Phase,
        t: &Target,
        actor: &str,
    ) -> Result<(), ControlError> {
        self.await_acknowledgement().await;
        let mut client = jobs::connect(&self.url).await?;
        let report = |p: &jobs::Progress| {
            if verb == Verb::Backfill {
                self.metrics.backfill(&m.name, p);
            }
            self.jobs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(m.name.clone(), p.clone());
        };
        let (progress, state) = if verb != Verb::Verify {
            let p = jobs::backfill(
                &mut client,
                t,
                || self.live_settings(&m.name),
                (self.latency_window(LatencyGuard::BASELINE_SPAN), || {
                    self.sink.latency()
                }),
                report,
            )
            .await?;
            let mut rebuilt = Vec::new();
            for pair in &t.pairs {
                let (from, to) = match t.direction {
                    Direction::Forward => (&pair.legacy, &pair.new),
                    Direction::Backward => (&pair.new, &pair.legacy),
                };
                rebuilt.extend(indexes::rebuild(&client, &t.table, from, to).await?);
            }
            let state = if verb == Verb::Backfill {
                json!({"backfill": p, "indexes": rebuilt, "running_job": null, "job": p})
            } else {
                json!({"restore": p, "restored_indexes": rebuilt, "running_job": null, "job": p, "legacy_incomplete": false})
            };
            (p, state)
        } else {
            let p = jobs::verify(&client, t, report).await?;
            let parity = Parity {
                mismatches: p.rows_changed,
                phase: m.phase,
                stale: false,
                writes_seen: crate::engine::unrewritten_writes(m),
            };
            let state = json!({"verify": p, "parity": parity, "running_job": null, "job": p});
            (p, state)
        };
        let next = if verb == Verb::Verify && progress.rows_changed > 0 {
            m.phase
        } else {
            next
        };
        let client = self.db().await?;
        store::set_phase(&client, &m.name, m.phase, next, &state).await?;
        store::record(
            &client,
            Event {
                actor,
                migration: Some(&m.name),
                action: verb.as_str(),
                detail: json!({"state": "done", "before": m.phase, "after": next, "rows_done": progress.rows_done, "rows_changed": progress.rows_changed}),
            },
        )
        .await?;
        drop(client);
        self.publish().await?;
        // "done" becomes visible only once the phase is written.
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(m.name.clone(), progress.clone());
        info!(migration = %m.name, verb = verb.as_str(), rows = progress.rows_done, "job done");
        Ok(())
    }
}

/// The recorded job of `m`: its verb and the phase it completes into.
fn job_of(m: &StoredMigration) -> Option<(Verb, Phase)> {
    let job = m.state.get("running_job").filter(|j| j.is_object())?;
    let verb = job["verb"].as_str().and_then(Verb::parse)?;
    let next = serde_json::from_value::<Phase>(job["next"].clone()).ok()?;
    Some((verb, next))
}

/// Whether `m` has a job recorded as running (on any instance).
pub(crate) fn job_pending(m: &StoredMigration) -> bool {
    job_of(m).is_some()
}

/// A backfill computes the new column; the restore after a rollback of
/// contract computes the legacy one.
fn direction_of(verb: Verb) -> Direction {
    if verb == Verb::Rollback {
        Direction::Backward
    } else {
        Direction::Forward
    }
}
