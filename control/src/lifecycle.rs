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
use crate::jobs::{self, Target};
use crate::store::{self, Event, StoredMigration};

impl Engine {
    async fn target(&self, m: &StoredMigration) -> Result<Target, ControlError> {
        let table = QualifiedName::parse(&m.spec.table)
            .ok_or_else(|| ControlError::Internal("stored table".into()))?;
        let client = self.client.lock().await;
        let facts = catalog::table_facts(&client, &table).await?;
        let [key] = facts.key.as_slice() else {
            return Err(ControlError::NotImplemented(format!(
                "{table} has a composite key; only single-column keys are backfilled yet"
            )));
        };
        let key_type = facts
            .column(key)
            .map(|c| c.sql_type.clone())
            .unwrap_or_default();
        Ok(Target {
            migration: m.name.clone(),
            table: table.to_string(),
            key: ident::quote(key),
            key_type,
            pairs: pairs_of(m)?,
            target_chunk: Duration::from_millis(m.spec.backfill.target_chunk_ms),
            max_rows_per_second: m.spec.backfill.max_rows_per_second,
            lock_timeout: Duration::from_millis(m.spec.backfill.lock_timeout_ms),
        })
    }

    /// Waits until this instance's open transactions all run under the
    /// published rules, so that no write escapes dual-write.
    async fn await_acknowledgement(&self) {
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
        let running = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&m.name)
            .is_some_and(|p| p.state == "running");
        if running {
            return Err(ControlError::Conflict(format!(
                "a job is already running for {}",
                m.name
            )));
        }
        let target = self.target(&m).await?;
        {
            let client = self.client.lock().await;
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
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
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
                match engine.target(&m).await {
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
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
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
        let (progress, state) = if verb == Verb::Backfill {
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
            let state = json!({"backfill": p, "running_job": null});
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

    /// Contract: NOT NULL without a long lock (CHECK NOT VALID, VALIDATE,
    /// SET NOT NULL, DROP CHECK), routing to the new column only, then the
    /// legacy column dropped; each step its own short-locked transaction.
    pub(crate) async fn contract(
        self: &Arc<Self>,
        m: StoredMigration,
        outcome: Outcome,
        actor: &str,
    ) -> Result<Value, ControlError> {
        let table = QualifiedName::parse(&m.spec.table)
            .ok_or_else(|| ControlError::Internal("stored table".into()))?;
        let t = table.to_string();
        let lock_timeout = Duration::from_millis(m.spec.backfill.lock_timeout_ms);
        let pairs = pairs_of(&m)?;
        {
            let mut client = self.client.lock().await;
            for p in pairs.iter().filter(|p| p.not_null) {
                let new = ident::quote(&p.new);
                let check = ident::quote(&format!("switchyard_{}_not_null", p.new));
                for sql in [
                    format!("ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {check}; ALTER TABLE {t} ADD CONSTRAINT {check} CHECK ({new} IS NOT NULL) NOT VALID"),
                    format!("ALTER TABLE {t} VALIDATE CONSTRAINT {check}"),
                    format!("ALTER TABLE {t} ALTER COLUMN {new} SET NOT NULL"),
                    format!("ALTER TABLE {t} DROP CONSTRAINT {check}"),
                ] {
                    self.run_ddl(&mut client, &t, &sql, lock_timeout, &m.name, actor).await?;
                }
            }
            store::set_phase(&client, &m.name, m.phase, outcome.next, &json!({})).await?;
            store::record(
                &client,
                Event {
                    actor,
                    migration: Some(&m.name),
                    action: "phase",
                    detail: json!({"verb": "contract", "before": m.phase, "after": outcome.next}),
                },
            )
            .await?;
            if let Some(reason) = &outcome.forced {
                store::record(
                    &client,
                    Event {
                        actor,
                        migration: Some(&m.name),
                        action: "force",
                        detail: json!({"verb": "contract", "gate": reason}),
                    },
                )
                .await?;
            }
        }
        // Route to the new column only before the legacy one disappears.
        self.publish().await?;
        self.await_acknowledgement().await;
        {
            let mut client = self.client.lock().await;
            for p in &pairs {
                let sql = format!(
                    "ALTER TABLE {t} DROP COLUMN IF EXISTS {}",
                    ident::quote(&p.legacy)
                );
                self.run_ddl(&mut client, &t, &sql, lock_timeout, &m.name, actor)
                    .await?;
            }
        }
        self.publish().await?;
        self.detail(&m.name).await
    }
}
