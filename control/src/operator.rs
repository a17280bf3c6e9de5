//! Lock blockers on migrating tables: finding them and removing one (the
//! field guide's "immediate mitigation").

use serde_json::{json, Value};
use switchyard_rules::{Phase, QualifiedName};

use crate::engine::Engine;
use crate::error::ControlError;
use crate::store::{self, Event};

impl Engine {
    /// Sessions holding or waiting for locks on tables being migrated.
    pub async fn blockers(&self) -> Result<Value, ControlError> {
        let client = self.db.session().await?;
        let tables: Vec<String> = store::list(&*client)
            .await?
            .iter()
            .filter(|m| !matches!(m.phase(), Phase::Planned | Phase::Completed))
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
        let client = self.db.session().await?;
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
            &*client,
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
