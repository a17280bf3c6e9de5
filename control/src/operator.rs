//! Operator controls that are not phase changes: pausing and re-tuning a
//! running backfill, and finding and removing lock blockers on migrating
//! tables (the field guide's "immediate mitigation").

use std::time::Duration;

use serde_json::{json, Value};
use switchyard_rules::{Phase, QualifiedName};

use crate::engine::Engine;
use crate::error::ControlError;
use crate::jobs::Live;
use crate::store::{self, Event};

impl Engine {
    /// The operator settings of `name`'s backfill.
    pub(crate) fn live_settings(&self, name: &str) -> Live {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    async fn set_live(
        &self,
        name: &str,
        live: Live,
        actor: &str,
        action: &str,
    ) -> Result<Value, ControlError> {
        {
            let client = self.db().await?;
            let m = store::get(&client, name).await?;
            store::set_phase(&client, name, m.phase, m.phase, &json!({ "live": live })).await?;
            store::record(
                &client,
                Event {
                    actor,
                    migration: Some(name),
                    action,
                    detail: json!(live),
                },
            )
            .await?;
        }
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), live);
        self.detail(name).await
    }

    /// Pauses or resumes the backfill before its next chunk; survives restarts.
    pub async fn pause(
        &self,
        name: &str,
        paused: bool,
        actor: &str,
    ) -> Result<Value, ControlError> {
        let live = Live {
            paused,
            ..self.live_settings(name)
        };
        self.set_live(name, live, actor, if paused { "pause" } else { "resume" })
            .await
    }

    /// `PATCH .../backfill`: change `max_rows_per_second` and
    /// `target_chunk_ms` while the backfill runs.
    pub async fn tune(&self, name: &str, body: &Value, actor: &str) -> Result<Value, ControlError> {
        let object = body
            .as_object()
            .ok_or_else(|| ControlError::BadRequest("expected a JSON object".into()))?;
        let mut live = self.live_settings(name);
        for (key, value) in object {
            match (key.as_str(), value) {
                ("max_rows_per_second", Value::Null) => live.max_rows_per_second = Some(None),
                ("max_rows_per_second", v) => match v.as_u64().filter(|n| *n > 0) {
                    Some(n) => live.max_rows_per_second = Some(Some(n)),
                    None => {
                        return Err(ControlError::BadRequest(
                            "max_rows_per_second: a positive integer or null".into(),
                        ))
                    }
                },
                ("max_replica_lag_ms", Value::Null) => live.max_replica_lag_ms = Some(None),
                ("max_replica_lag_ms", v) => match v.as_u64() {
                    Some(n) => live.max_replica_lag_ms = Some(Some(n)),
                    None => {
                        return Err(ControlError::BadRequest(
                            "max_replica_lag_ms: milliseconds or null".into(),
                        ))
                    }
                },
                ("max_active_sessions", Value::Null) => live.max_active_sessions = Some(None),
                ("max_active_sessions", v) => match v.as_u64() {
                    Some(n) => live.max_active_sessions = Some(Some(n)),
                    None => {
                        return Err(ControlError::BadRequest(
                            "max_active_sessions: a count or null".into(),
                        ))
                    }
                },
                ("max_app_p99_pct", Value::Null) => live.max_app_p99_pct = Some(None),
                ("max_app_p99_pct", v) => match v.as_u64().filter(|n| *n >= 100) {
                    Some(n) => live.max_app_p99_pct = Some(Some(n)),
                    None => {
                        return Err(ControlError::BadRequest(
                            "max_app_p99_pct: a percentage of at least 100, or null".into(),
                        ))
                    }
                },
                ("target_chunk_ms", v) => match v.as_u64().filter(|n| (1..=60_000).contains(n)) {
                    Some(n) => live.target_chunk = Some(Duration::from_millis(n)),
                    None => {
                        return Err(ControlError::BadRequest(
                            "target_chunk_ms: between 1 and 60000".into(),
                        ))
                    }
                },
                (other, _) => {
                    return Err(ControlError::BadRequest(format!(
                        "{other}: not a backfill setting"
                    )))
                }
            }
        }
        self.set_live(name, live, actor, "tune").await
    }

    /// Sessions holding or waiting for locks on tables being migrated.
    pub async fn blockers(&self) -> Result<Value, ControlError> {
        let client = self.db().await?;
        let tables: Vec<String> = store::list(&client)
            .await?
            .iter()
            .filter(|m| !matches!(m.phase, Phase::Planned | Phase::Completed))
            .filter_map(|m| QualifiedName::parse(&m.spec.table).map(|t| t.to_string()))
            .collect();
        let rows = client
            .query(
                "SELECT a.pid, a.usename::text, a.state, left(a.query, 200), l.mode, l.granted,
                        l.relation::regclass::text, pg_blocking_pids(a.pid),
                        extract(epoch FROM now() - a.xact_start)::float8
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.relation IN (SELECT to_regclass(t) FROM unnest($1::text[]) t)
                   AND a.pid <> pg_backend_pid()
                 ORDER BY a.xact_start NULLS LAST, a.pid",
                &[&tables],
            )
            .await?;
        Ok(Value::Array(
            rows.iter()
                .map(|r| {
                    json!({
                        "pid": r.get::<_, i32>(0),
                        "user": r.get::<_, Option<String>>(1),
                        "state": r.get::<_, Option<String>>(2),
                        "query": r.get::<_, Option<String>>(3),
                        "mode": r.get::<_, String>(4),
                        "granted": r.get::<_, bool>(5),
                        "table": r.get::<_, Option<String>>(6),
                        "blocked_by": r.get::<_, Vec<i32>>(7),
                        "transaction_seconds": r.get::<_, Option<f64>>(8),
                    })
                })
                .collect(),
        ))
    }

    /// Cancels the query of, or terminates, a session listed as a blocker.
    pub async fn remove_blocker(
        &self,
        pid: i32,
        terminate: bool,
        actor: &str,
    ) -> Result<Value, ControlError> {
        let listed = self.blockers().await?;
        let Some(entry) = listed
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["pid"] == pid)
        else {
            return Err(ControlError::NotFound(format!(
                "session {pid} holds no lock on a migrating table"
            )));
        };
        let entry = entry.clone();
        let client = self.db().await?;
        let function = if terminate {
            "pg_terminate_backend"
        } else {
            "pg_cancel_backend"
        };
        let done: bool = client
            .query_one(&format!("SELECT {function}($1)"), &[&pid])
            .await?
            .get(0);
        store::record(
            &client,
            Event {
                actor,
                migration: None,
                action: if terminate { "terminate" } else { "cancel" },
                detail: json!({"pid": pid, "signalled": done, "session": entry}),
            },
        )
        .await?;
        Ok(json!({"pid": pid, "signalled": done, "action": function}))
    }
}
