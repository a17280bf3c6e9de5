//! Running recorded jobs on the job holder. A job is recorded in the
//! migration's state before anything runs it; the holder runs every
//! recorded job that runs nowhere (new ones, and ones a restart or the
//! death of the last holder interrupted: a backfill resumes from its
//! checkpoint, a DDL verb from the step its state has reached), stops the
//! ones no longer recorded, and copies their progress to the state once a
//! second so that every instance's API shows it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use switchyard_rules::ident;
use switchyard_rules::migration::events::{self, Finished};
use switchyard_rules::migration::{Job, JobKind};
use tracing::{info, warn};

use super::{Direction, Ended, Reporter, Target};
use crate::catalog;
use crate::engine::Engine;
use crate::error::ControlError;
use crate::fleet::describe;
use crate::indexes;
use crate::publisher::table_of;
use crate::store::{self, Event, StoredMigration};
use crate::throttle::{LatencyGuard, Limits};

impl Engine {
    /// On the job-lock holder: runs recorded jobs that run nowhere (a job a
    /// rollback cancels is stopped by the rollback, which runs here too).
    pub(crate) async fn scan_jobs(self: &Arc<Self>) -> Result<(), ControlError> {
        let all = {
            let client = self.db.session().await?;
            store::list(&*client).await?
        };
        for m in all {
            self.runner.set_settings(&m.name, m.state.settings.clone());
            let Some(job) = m.state.running_job().cloned() else {
                continue;
            };
            if self.runner.running(&m.name).map(|(id, _)| id) != Some(job.id) {
                info!(migration = %m.name, job = job.kind.as_str(), "running recorded job");
                drop(self.spawn_job(m, job));
            }
        }
        Ok(())
    }

    /// Runs `job` of `m` in the background (unless it already runs here);
    /// the receiver hears how it ended.
    pub(crate) fn spawn_job(self: &Arc<Self>, m: StoredMigration, job: Job) -> Ended {
        let engine = self.clone();
        let (name, id, kind) = (m.name.clone(), job.id, job.kind);
        self.runner.start(&name, id, kind, move |reporter, done| {
            reporter.report(&job.progress, false);
            tokio::spawn(async move {
                let result = engine.run_job(&m, &job, &reporter).await;
                if let Err(e) = &result {
                    if e.is_transient() {
                        // The database went away: the job stays recorded
                        // and the next scan resumes it.
                        warn!(migration = %m.name, error = %e, "job interrupted; it will resume");
                    } else {
                        warn!(migration = %m.name, error = %e, "job failed");
                        engine.fail_job(&m.name, job.id, &e.to_string()).await;
                    }
                }
                let _ = done.send(Some(Arc::new(result)));
            })
        })
    }

    async fn run_job(
        &self,
        m: &StoredMigration,
        job: &Job,
        reporter: &Reporter,
    ) -> Result<(), ControlError> {
        match job.kind {
            JobKind::Backfill | JobKind::Verify | JobKind::Restore => {
                self.run_long(m, job, reporter).await
            }
            JobKind::Expand => crate::verbs::run_expand(self, m, job, reporter).await,
            JobKind::Contract => crate::verbs::run_contract(self, m, job, reporter).await,
            JobKind::Rollback => crate::verbs::run_rollback(self, m, job, reporter).await,
        }
    }

    /// A job that stopped: recorded failed (the operator issues the verb
    /// again), unless the state moved on meanwhile.
    async fn fail_job(&self, name: &str, id: u64, error: &str) {
        let result = match self.db.session().await {
            Ok(mut client) => {
                store::update(&mut client, name, |m| {
                    Ok((events::fail(&m.state, id, error)?, ()))
                })
                .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            warn!(migration = %name, error = %e, "cannot record a failed job");
        }
    }

    /// Backfill, verify and restore: after every instance acknowledges the
    /// routing they depend on.
    async fn run_long(
        &self,
        m: &StoredMigration,
        job: &Job,
        reporter: &Reporter,
    ) -> Result<(), ControlError> {
        if job.kind == JobKind::Verify {
            self.reprove_literals(m, &job.actor).await?;
        }
        let version = {
            let client = self.db.session().await?;
            store::rules_version(&*client).await?
        };
        self.await_acknowledgement(version, self.ack_deadline, |behind| {
            reporter.waiting(Some(describe(version, behind)))
        })
        .await?;
        reporter.waiting(None);
        let direction = match job.kind {
            JobKind::Restore => Direction::Backward,
            _ => Direction::Forward,
        };
        let t = self.target(m, direction).await?;
        let mut client = self.db.dedicated().await?;
        // Chunks are planned before their bounds are known, for millions of
        // rows: JIT compiled each (tens of ms for a 100 ms chunk).
        client.batch_execute("SET jit = off").await?;
        let report = |p: &_, paused| {
            if job.kind == JobKind::Backfill {
                self.metrics.backfill(&m.name, p);
            }
            reporter.report(p, paused);
        };
        let end = match job.kind {
            JobKind::Verify => Finished::Verify {
                progress: super::verify(&client, &t, report).await?,
            },
            _ => {
                let baseline = self
                    .latency
                    .window(&self.sink.latency(), LatencyGuard::BASELINE_SPAN);
                let progress = super::backfill(
                    &mut client,
                    &t,
                    || self.runner.settings(&m.name),
                    (baseline, || self.sink.latency()),
                    report,
                )
                .await?;
                let mut rebuilt = Vec::new();
                // A split's or merge's indexes follow as expression indexes
                // (restoring them on re-added legacy columns is left out).
                for pair in t.pairs.iter().filter(|p| p.group.is_none()) {
                    let (from, to) = match direction {
                        Direction::Forward => (&pair.legacy, &pair.new),
                        Direction::Backward => (&pair.new, &pair.legacy),
                    };
                    rebuilt.extend(indexes::rebuild(&client, &t.table, from, to).await?);
                }
                if direction == Direction::Forward {
                    for (label, derived) in indexes::derived_of(&t.pairs) {
                        let table = &t.table;
                        rebuilt.extend(
                            indexes::rebuild_group(&client, table, &derived, &label).await?,
                        );
                    }
                }
                match job.kind {
                    JobKind::Restore => Finished::Restore {
                        progress,
                        indexes: rebuilt,
                    },
                    _ => Finished::Backfill {
                        progress,
                        indexes: rebuilt,
                    },
                }
            }
        };
        self.finish_job(m, job, end).await
    }

    /// Records a long job's end, its audit event and the new rules version.
    async fn finish_job(
        &self,
        m: &StoredMigration,
        job: &Job,
        end: Finished,
    ) -> Result<(), ControlError> {
        let mut client = self.db.session().await?;
        let tx = client.transaction().await?;
        let (now, before) = store::update_in(&tx, &m.name, |now| {
            Ok((events::finish(&now.state, job.id, end)?, now.state.stage))
        })
        .await?;
        let progress = now
            .state
            .job
            .as_ref()
            .map(|j| j.progress.clone())
            .unwrap_or_default();
        let event = Event {
            actor: &job.actor,
            migration: Some(&m.name),
            action: job.kind.as_str(),
            detail: json!({"state": "done", "before": before.phase(), "after": now.phase(),
                           "rows_done": progress.rows_done, "rows_changed": progress.rows_changed}),
        };
        store::record(&tx, event).await?;
        store::bump_rules_version(&tx, 0).await?;
        tx.commit().await?;
        self.publisher.sync(&*client).await?;
        info!(migration = %m.name, job = job.kind.as_str(), rows = progress.rows_done, "job done");
        Ok(())
    }

    /// On the holder: copies running jobs' progress to the state.
    pub(crate) async fn save_progress(&self) -> Result<(), ControlError> {
        for (name, id, shown) in self.runner.all_shown() {
            let mut client = self.db.session().await?;
            let saved = store::update(&mut client, &name, |m| {
                Ok((
                    events::progress(&m.state, id, &shown.progress, shown.paused)?,
                    (),
                ))
            })
            .await;
            match saved {
                // A job that ended (or was cancelled) meanwhile.
                Ok(_) | Err(ControlError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn target(
        &self,
        m: &StoredMigration,
        direction: Direction,
    ) -> Result<Target, ControlError> {
        let table = table_of(m)?;
        let client = self.db.session().await?;
        // Without a key, the jobs walk page ranges by ctid.
        let facts = catalog::table_facts(&*client, &table).await?;
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
        let b = &m.spec.backfill;
        Ok(Target {
            migration: m.name.clone(),
            table: table.to_string(),
            key: facts.key.iter().map(|k| ident::quote(k)).collect(),
            key_types,
            direction,
            pairs: m.state.pairs.clone(),
            target_chunk: Duration::from_millis(b.target_chunk_ms),
            max_rows_per_second: b.max_rows_per_second,
            lock_timeout: Duration::from_millis(b.lock_timeout_ms),
            limits: Limits {
                max_replica_lag_ms: b.max_replica_lag_ms,
                max_active_sessions: b.max_active_sessions,
                max_app_p99_pct: b.max_app_p99_pct,
            },
        })
    }
}
