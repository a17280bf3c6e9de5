//! The long steps of the lifecycle: backfill and verify jobs (answered 202
//! and followed through the migration detail) and contract.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use switchyard_rules::migration::{Outcome, Parity, Verb};
use switchyard_rules::{ident, Phase, QualifiedName};
use tracing::{info, warn};

use crate::catalog;

use crate::engine::{pairs_of, Engine};
use crate::error::ControlError;
use crate::indexes;
use crate::jobs::{self, Direction, Target};
use crate::store::{self, Event, StoredMigration};

impl Engine {
    pub(crate) async fn target(
        &self,
        m: &StoredMigration,
        direction: Direction,
    ) -> Result<Target, ControlError> {
        let table = QualifiedName::parse(&m.spec.table)
            .ok_or_else(|| ControlError::Internal("stored table".into()))?;
        let client = self.client.lock().await;
        let facts = catalog::table_facts(&client, &table).await?;
        if facts.key.is_empty() {
            return Err(ControlError::Conflict(format!(
                "{table} has lost its primary key or unique NOT NULL key"
            )));
        }
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
        })
    }

    /// Waits until this instance's open transactions all run under the
    /// published rules, so that no write escapes dual-write.
    pub(crate) async fn await_acknowledgement(&self) {
        let version = self.last.lock().unwrap_or_else(|e| e.into_inner()).version;
        while self.sink.acknowledged() < version {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts a backfill or verify job; answers at once.
    pub(crate) async fn start_job(
        self: &Arc<Self>,
        m: StoredMigration,
        verb: Verb,
        outcome: Outcome,
        actor: &str,
    ) -> Result<Value, ControlError> {
        if self.job_running(&m.name) {
            return Err(ControlError::Conflict(format!(
                "a job is already running for {}",
                m.name
            )));
        }
        let target = self.target(&m, direction_of(verb)).await?;
        {
            let client = self.client.lock().await;
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
            store::record(
                &client,
                Event {
                    actor,
                    migration: Some(&m.name),
                    action: verb.as_str(),
                    detail: json!({"state": "started"}),
                },
            )
            .await?;
        }
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).insert(
            m.name.clone(),
            jobs::Progress {
                state: "running".into(),
                ..Default::default()
            },
        );
        // Recorded so that a restarted `serve` resumes the job.
        {
            let client = self.client.lock().await;
            let running = json!({"running_job": {"verb": verb.as_str(), "next": outcome.next}});
            store::set_phase(&client, &m.name, m.phase, m.phase, &running).await?;
        }
        let name = m.name.clone();
        self.spawn_job(m, verb, outcome.next, target, actor.to_owned());
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
        let engine = self.clone();
        let task = tokio::spawn(async move {
            let result = engine.run_job(&m, verb, next, &target, &actor).await;
            if let Err(e) = result {
                warn!(migration = %m.name, error = %e, "job failed");
                let mut jobs = engine.jobs.lock().unwrap_or_else(|e| e.into_inner());
                let p = jobs.entry(m.name.clone()).or_default();
                p.state = "failed".into();
                p.error = Some(e.to_string());
            }
        });
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = tasks.insert(name, task) {
            old.abort();
        }
    }

    /// Whether a job runs (or is paused) for `name`.
    pub(crate) fn job_running(&self, name: &str) -> bool {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .is_some_and(|p| p.state == "running" || p.state == "paused")
    }

    /// Stops the job of `name` (a rollback undoes what it was doing).
    pub(crate) async fn cancel_job(&self, name: &str) -> Result<(), ControlError> {
        if let Some(task) = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
        {
            task.abort();
        }
        if let Some(p) = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(name)
        {
            p.state = "cancelled".into();
        }
        let client = self.client.lock().await;
        client
            .execute(
                "UPDATE switchyard.migrations SET state = state || '{\"running_job\": null}' WHERE name = $1",
                &[&name],
            )
            .await?;
        Ok(())
    }

    /// Restarts the jobs that were running when the process stopped; the
    /// backfill continues from its checkpoint.
    pub fn resume_jobs(self: &Arc<Self>) {
        let engine = self.clone();
        tokio::spawn(async move {
            let migrations = {
                let client = engine.client.lock().await;
                store::list(&client).await
            };
            for m in migrations.into_iter().flatten() {
                let Some(job) = m.state.get("running_job").filter(|j| !j.is_null()) else {
                    continue;
                };
                let (Some(verb), Ok(next)) = (
                    job["verb"].as_str().and_then(Verb::parse),
                    serde_json::from_value::<Phase>(job["next"].clone()),
                ) else {
                    continue;
                };
                match engine.target(&m, direction_of(verb)).await {
                    Ok(target) => {
                        info!(migration = %m.name, verb = verb.as_str(), "resuming job");
                        engine
                            .jobs
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(
                                m.name.clone(),
                                jobs::Progress {
                                    state: "running".into(),
                                    ..Default::default()
                                },
                            );
                        engine.spawn_job(m, verb, next, target, "system".into());
                    }
                    Err(e) => warn!(migration = %m.name, error = %e, "cannot resume job"),
                }
            }
        });
    }

    /// Stops running jobs (process shutdown); they resume on the next start.
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
            if let Some(live) = m
                .state
                .get("live")
                .and_then(|v| serde_json::from_value::<jobs::Live>(v.clone()).ok())
            {
                self.live
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(m.name.clone())
                    .or_insert(live);
            }
            let p = jobs::backfill(&mut client, t, || self.live_settings(&m.name), report).await?;
            let mut rebuilt = Vec::new();
            for pair in &t.pairs {
                let (from, to) = match t.direction {
                    Direction::Forward => (&pair.legacy, &pair.new),
                    Direction::Backward => (&pair.new, &pair.legacy),
                };
                rebuilt.extend(indexes::rebuild(&client, &t.table, from, to).await?);
            }
            let state = if verb == Verb::Backfill {
                json!({"backfill": p, "indexes": rebuilt, "running_job": null})
            } else {
                json!({"restore": p, "restored_indexes": rebuilt, "running_job": null, "legacy_incomplete": false})
            };
            (p, state)
        } else {
            let p = jobs::verify(&client, t, report).await?;
            let parity = Parity {
                mismatches: p.rows_changed,
                phase: m.phase,
                stale: false,
            };
            let state = json!({"verify": p, "parity": parity, "running_job": null});
            (p, state)
        };
        let next = if verb == Verb::Verify && progress.rows_changed > 0 {
            m.phase
        } else {
            next
        };
        let client = self.client.lock().await;
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

/// A backfill computes the new column; the restore after a rollback of
/// contract computes the legacy one.
fn direction_of(verb: Verb) -> Direction {
    if verb == Verb::Rollback {
        Direction::Backward
    } else {
        Direction::Forward
    }
}
