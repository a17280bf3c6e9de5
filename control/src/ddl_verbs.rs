//! Expand and contract answer when their DDL is done, unless it waits for
//! a lock: then the call answers 202 after [`ANSWER_WITHIN`] and the DDL
//! goes on here, followed as a job in `GET /v1/migrations/{name}` (its
//! `throttled` says it waits for a lock; `GET /v1/blockers` shows on what).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use switchyard_rules::migration::Verb;
use tracing::warn;

use crate::engine::Engine;
use crate::error::ControlError;
use crate::jobs::Progress;

/// How long a DDL verb may take before the call answers 202.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(1);

impl Engine {
    /// Runs `verb` on migration `name`. Backfill and verify answer 202 at
    /// once; expand and contract answer 202 when their DDL is still
    /// waiting for a lock after [`ANSWER_WITHIN`].
    pub async fn apply(
        self: &Arc<Self>,
        name: &str,
        verb: Verb,
        force: bool,
        actor: &str,
    ) -> Result<Value, ControlError> {
        if self.running_ddl(name) {
            return Err(ControlError::Conflict(format!(
                "{name} has DDL waiting for a lock; wait for it (GET /v1/blockers shows the blockers)"
            )));
        }
        if !matches!(verb, Verb::Expand | Verb::Contract) {
            return self.apply_now(name, verb, force, actor).await;
        }
        self.ddl_set().insert(name.to_owned());
        let engine = self.clone();
        let (owned, who) = (name.to_owned(), actor.to_owned());
        let mut task = tokio::spawn(async move {
            let result = engine.apply_now(&owned, verb, force, &who).await;
            engine.ddl_set().remove(&owned);
            result
        });
        match tokio::time::timeout(ANSWER_WITHIN, &mut task).await {
            Ok(joined) => joined.map_err(|e| ControlError::Internal(e.to_string()))?,
            Err(_) => self.follow_ddl(name, verb, task).await,
        }
    }

    fn ddl_set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.ddl_running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running_ddl(&self, name: &str) -> bool {
        self.ddl_set().contains(name)
    }

    /// Shows the waiting DDL as a running job and answers 202.
    async fn follow_ddl(
        self: &Arc<Self>,
        name: &str,
        verb: Verb,
        task: tokio::task::JoinHandle<Result<Value, ControlError>>,
    ) -> Result<Value, ControlError> {
        self.set_job(
            name,
            Progress {
                state: "running".into(),
                throttled: Some(format!(
                    "{} DDL waiting for a lock on the table (see GET /v1/blockers)",
                    verb.as_str()
                )),
                ..Progress::default()
            },
        );
        let engine = self.clone();
        let owned = name.to_owned();
        let watcher = tokio::spawn(async move {
            let progress = match task.await {
                Ok(Ok(_)) => Progress {
                    state: "done".into(),
                    ..Progress::default()
                },
                Ok(Err(e)) => {
                    warn!(migration = %owned, error = %e, "DDL failed");
                    Progress {
                        state: "failed".into(),
                        error: Some(e.to_string()),
                        ..Progress::default()
                    }
                }
                Err(e) => Progress {
                    state: "failed".into(),
                    error: Some(e.to_string()),
                    ..Progress::default()
                },
            };
            engine.set_job(&owned, progress);
        });
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), watcher);
        let mut detail = self.detail(name).await?;
        detail["accepted"] = Value::Bool(true);
        Ok(detail)
    }

    fn set_job(&self, name: &str, progress: Progress) {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), progress);
    }
}
