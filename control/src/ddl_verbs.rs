//! Expand, contract and rollback (the verbs that run DDL) run on the job
//! holder, like every long job. An
//! instance that is not the holder records the request in the migration's
//! state and notifies; the holder runs it and writes the answer back.
//! The call answers when the DDL is done, unless it waits for a lock: then
//! it answers 202 after [`ANSWER_WITHIN`] and the DDL goes on, followed as
//! a job in `GET /v1/migrations/{name}` (its `throttled` says it waits for
//! a lock; `GET /v1/blockers` shows on what).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_rules::migration::Verb;
use tracing::warn;

use crate::engine::Engine;
use crate::error::ControlError;
use crate::fleet::JOBS_CHANNEL;
use crate::jobs::Progress;
use crate::store;

/// How long a DDL verb may take before the call answers 202.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// How long an instance waits for the holder's answer before answering 202.
const RELAY_WAIT: Duration = Duration::from_secs(3);

impl Engine {
    /// Runs `verb` on migration `name`. Backfill and verify answer 202 at
    /// once; expand, contract and rollback run on the job holder and answer
    /// 202 when their DDL is still waiting for a lock after
    /// [`ANSWER_WITHIN`].
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
        // A new verb's job (if any) shows from now on.
        self.set_ddl_job(name, None);
        if !matches!(verb, Verb::Expand | Verb::Contract | Verb::Rollback) {
            return self.apply_now(name, verb, force, actor).await;
        }
        if !self.holder.load(Ordering::SeqCst) {
            return self.relay_ddl(name, verb, force, actor).await;
        }
        self.ddl_verb(name, verb, force, actor).await
    }

    /// Runs a DDL verb here (on the holder).
    async fn ddl_verb(
        self: &Arc<Self>,
        name: &str,
        verb: Verb,
        force: bool,
        actor: &str,
    ) -> Result<Value, ControlError> {
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

    /// Hands a DDL verb to the holder and waits a little for its answer.
    async fn relay_ddl(
        self: &Arc<Self>,
        name: &str,
        verb: Verb,
        force: bool,
        actor: &str,
    ) -> Result<Value, ControlError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let id = format!("{}-{nanos:x}", self.instance.id);
        {
            let client = self.db().await?;
            store::get(&client, name).await?;
            let request = json!({"ddl_request": {"id": id, "verb": verb.as_str(), "force": force, "actor": actor}});
            store::merge_state(&client, name, &request).await?;
            client
                .execute("SELECT pg_notify($1, $2)", &[&JOBS_CHANNEL, &name])
                .await?;
        }
        let deadline = Instant::now() + RELAY_WAIT;
        loop {
            let m = {
                let client = self.db().await?;
                store::get(&client, name).await?
            };
            let request = m.state.get("ddl_request").filter(|r| r["id"] == json!(id));
            if let Some(answer) = request.and_then(|r| r.get("answer")) {
                return decode(answer);
            }
            if Instant::now() >= deadline {
                // The holder has not answered yet: the request stays
                // recorded, and the detail follows it.
                let mut detail = self.detail(name).await?;
                detail["accepted"] = Value::Bool(true);
                return Ok(detail);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// On the holder: runs DDL verbs other instances recorded.
    pub(crate) async fn take_ddl_requests(self: &Arc<Self>) -> Result<(), ControlError> {
        let client = self.db().await?;
        // One statement takes each request, so that a request is run once.
        let rows = client
            .query(
                "UPDATE switchyard.migrations
                 SET state = jsonb_set(state, '{ddl_request,taken}', to_jsonb($1::text))
                 WHERE state ? 'ddl_request' AND NOT (state->'ddl_request' ? 'taken')
                 RETURNING name, state->'ddl_request'",
                &[&self.instance.id],
            )
            .await?;
        drop(client);
        for row in rows {
            let name: String = row.get(0);
            let request: Value = row.get(1);
            let Some(verb) = request["verb"].as_str().and_then(Verb::parse) else {
                continue;
            };
            let force = request["force"].as_bool().unwrap_or(false);
            let actor = request["actor"].as_str().unwrap_or("system").to_owned();
            let engine = self.clone();
            tokio::spawn(async move {
                let answer = encode(engine.apply(&name, verb, force, &actor).await);
                let mut request = request;
                request["answer"] = answer;
                match engine.db().await {
                    Ok(client) => {
                        let state = json!({ "ddl_request": request });
                        if let Err(e) = store::merge_state(&client, &name, &state).await {
                            warn!(migration = %name, error = %e, "cannot record a DDL answer");
                        }
                    }
                    Err(e) => warn!(migration = %name, error = %e, "cannot record a DDL answer"),
                }
            });
        }
        Ok(())
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
        let waiting = Progress {
            state: "running".into(),
            throttled: Some(format!(
                "{} DDL waiting for a lock on the table (see GET /v1/blockers)",
                verb.as_str()
            )),
            ..Progress::default()
        };
        self.show_ddl(name, Some(waiting)).await;
        let engine = self.clone();
        let owned = name.to_owned();
        tokio::spawn(async move {
            let progress = match task.await {
                // The verb started a job of its own: that job shows now.
                Ok(Ok(body)) if body["accepted"] == true => None,
                Ok(Ok(_)) => Some(Progress {
                    state: "done".into(),
                    ..Progress::default()
                }),
                Ok(Err(e)) => {
                    warn!(migration = %owned, error = %e, "DDL failed");
                    Some(Progress {
                        state: "failed".into(),
                        error: Some(e.to_string()),
                        ..Progress::default()
                    })
                }
                Err(e) => Some(Progress {
                    state: "failed".into(),
                    error: Some(e.to_string()),
                    ..Progress::default()
                }),
            };
            engine.show_ddl(&owned, progress).await;
        });
        let mut detail = self.detail(name).await?;
        detail["accepted"] = Value::Bool(true);
        Ok(detail)
    }

    /// Shows (or stops showing) DDL progress as the migration's job, here
    /// and, through the database, on every instance.
    async fn show_ddl(&self, name: &str, progress: Option<Progress>) {
        self.set_ddl_job(name, progress.clone());
        if let Some(p) = progress {
            if let Ok(client) = self.db().await {
                let _ = store::merge_state(&client, name, &json!({ "job": p })).await;
            }
        }
    }

    fn set_ddl_job(&self, name: &str, progress: Option<Progress>) {
        let mut shown = self.ddl_jobs.lock().unwrap_or_else(|e| e.into_inner());
        match progress {
            Some(p) => shown.insert(name.to_owned(), p),
            None => shown.remove(name),
        };
    }

    /// DDL progress this instance shows for `name`, if any.
    pub(crate) fn ddl_job(&self, name: &str) -> Option<Progress> {
        self.ddl_jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
}

/// An answer as the holder records it for the instance that asked.
fn encode(result: Result<Value, ControlError>) -> Value {
    match result {
        Ok(body) => json!({ "ok": body }),
        Err(e) => json!({"status": e.status().as_u16(), "message": e.to_string()}),
    }
}

/// The error or body an answer stands for.
fn decode(answer: &Value) -> Result<Value, ControlError> {
    if let Some(body) = answer.get("ok") {
        return Ok(body.clone());
    }
    let message = answer["message"].as_str().unwrap_or_default().to_owned();
    Err(match answer["status"].as_u64() {
        Some(400) => ControlError::BadRequest(message),
        Some(404) => ControlError::NotFound(message),
        Some(409) => ControlError::Conflict(message),
        Some(503) => ControlError::Unavailable(message),
        _ => ControlError::Internal(message),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_keep_their_status() {
        let conflict = decode(&encode(Err(ControlError::Conflict("gate".into())))).unwrap_err();
        assert!(matches!(conflict, ControlError::Conflict(m) if m == "gate"));
        let body = json!({"phase": "expanded", "accepted": true});
        assert_eq!(decode(&encode(Ok(body.clone()))).unwrap(), body);
    }
}
