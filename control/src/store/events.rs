//! The append-only audit log: who did what, when, to which migration.

use serde_json::Value;
use tokio_postgres::GenericClient;

use crate::error::ControlError;

/// An audit-log entry to append.
#[derive(Debug, Clone)]
pub(crate) struct Event<'a> {
    /// Who: token name, `ctl` user, or `system`.
    pub actor: &'a str,
    /// Which migration, if any.
    pub migration: Option<&'a str>,
    /// What happened, e.g. `phase`, `ddl`, `revert`, `force`.
    pub action: &'a str,
    /// Before/after and outcome.
    pub detail: Value,
}

/// Appends to the audit log (with the caller's transaction, if it is one).
pub(crate) async fn record(
    client: &impl GenericClient,
    event: Event<'_>,
) -> Result<(), ControlError> {
    client
        .execute(
            "INSERT INTO switchyard.events (actor, migration, action, detail) VALUES ($1, $2, $3, $4)",
            &[&event.actor, &event.migration, &event.action, &event.detail],
        )
        .await?;
    Ok(())
}

/// The audit log, newest last.
pub(crate) async fn events(
    client: &impl GenericClient,
    migration: Option<&str>,
    limit: i64,
) -> Result<Vec<Value>, ControlError> {
    let rows = client
        .query(
            "SELECT id, at, actor, migration, action, detail FROM (
                SELECT * FROM switchyard.events WHERE $1::text IS NULL OR migration = $1
                ORDER BY id DESC LIMIT $2) e ORDER BY id",
            &[&migration, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let at: std::time::SystemTime = r.get("at");
            let at_ms = at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            serde_json::json!({
                "id": r.get::<_, i64>("id"),
                "at_unix_ms": at_ms,
                "actor": r.get::<_, String>("actor"),
                "migration": r.get::<_, Option<String>>("migration"),
                "action": r.get::<_, String>("action"),
                "detail": r.get::<_, Value>("detail"),
            })
        })
        .collect())
}
