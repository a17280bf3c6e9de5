//! Switchyard's state in the target database (schema `switchyard`):
//! migrations with their spec and state as JSONB, the rules version, and
//! the append-only audit log.

pub mod schema;

use serde_json::Value;
use switchyard_rules::migration::MigrationSpec;
use switchyard_rules::Phase;
use tokio_postgres::Client;

use crate::error::ControlError;

/// One stored migration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredMigration {
    /// Its name.
    pub name: String,
    /// Current phase.
    pub phase: Phase,
    /// The spec as submitted (defaults filled in).
    pub spec: MigrationSpec,
    /// Phase-specific state (parity results, DDL reports, ...).
    pub state: Value,
}

/// An audit-log entry to append.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    /// Who: token name, `ctl` user, or `system`.
    pub actor: &'a str,
    /// Which migration, if any.
    pub migration: Option<&'a str>,
    /// What happened, e.g. `phase`, `ddl`, `flip`, `force`.
    pub action: &'a str,
    /// Before/after and outcome.
    pub detail: Value,
}

/// Creates the schema and applies missing steps.
pub async fn bootstrap(client: &mut Client) -> Result<(), ControlError> {
    let tx = client.transaction().await?;
    tx.batch_execute(schema::BOOTSTRAP).await?;
    for (i, step) in schema::STEPS.iter().enumerate() {
        let version = i as i32 + 1;
        let done = tx
            .query_opt(
                "SELECT 1 FROM switchyard.schema_version WHERE version = $1",
                &[&version],
            )
            .await?
            .is_some();
        if !done {
            tx.batch_execute(step).await?;
            tx.execute(
                "INSERT INTO switchyard.schema_version (version) VALUES ($1)",
                &[&version],
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

fn phase_name(phase: Phase) -> String {
    serde_json::to_value(phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn parse_phase(text: &str) -> Result<Phase, ControlError> {
    serde_json::from_value(Value::String(text.to_owned()))
        .map_err(|_| ControlError::Internal(format!("unknown phase {text:?} in the database")))
}

fn row_to_migration(row: &tokio_postgres::Row) -> Result<StoredMigration, ControlError> {
    let spec: Value = row.get("spec");
    Ok(StoredMigration {
        name: row.get("name"),
        phase: parse_phase(row.get("phase"))?,
        spec: serde_json::from_value(spec).map_err(|e| ControlError::Internal(e.to_string()))?,
        state: row.get("state"),
    })
}

/// Inserts a new migration in phase `planned`; 409 if the name is taken.
pub async fn insert(
    client: &Client,
    spec: &MigrationSpec,
    state: &Value,
) -> Result<(), ControlError> {
    let spec_json =
        serde_json::to_value(spec).map_err(|e| ControlError::Internal(e.to_string()))?;
    let inserted = client
        .execute(
            "INSERT INTO switchyard.migrations (name, phase, spec, state) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO NOTHING",
            &[&spec.name, &phase_name(Phase::Planned), &spec_json, state],
        )
        .await?;
    if inserted == 0 {
        return Err(ControlError::Conflict(format!(
            "migration {} already exists",
            spec.name
        )));
    }
    Ok(())
}

/// One migration by name.
pub async fn get(client: &Client, name: &str) -> Result<StoredMigration, ControlError> {
    let row = client
        .query_opt(
            "SELECT name, phase, spec, state FROM switchyard.migrations WHERE name = $1",
            &[&name],
        )
        .await?
        .ok_or_else(|| ControlError::NotFound(format!("no migration named {name}")))?;
    row_to_migration(&row)
}

/// All migrations, oldest first.
pub async fn list(client: &Client) -> Result<Vec<StoredMigration>, ControlError> {
    client
        .query(
            "SELECT name, phase, spec, state FROM switchyard.migrations ORDER BY created_at, name",
            &[],
        )
        .await?
        .iter()
        .map(row_to_migration)
        .collect()
}

/// Moves `name` from `from` to `to` (optimistically: 409 if another actor
/// moved it first) and merges `state`.
pub async fn set_phase(
    client: &Client,
    name: &str,
    from: Phase,
    to: Phase,
    state: &Value,
) -> Result<(), ControlError> {
    let n = client
        .execute(
            "UPDATE switchyard.migrations SET phase = $3, state = state || $4, updated_at = now()
             WHERE name = $1 AND phase = $2",
            &[&name, &phase_name(from), &phase_name(to), state],
        )
        .await?;
    if n == 0 {
        return Err(ControlError::Conflict(format!(
            "migration {name} is no longer in phase {}",
            phase_name(from)
        )));
    }
    Ok(())
}

/// Merges `state` into the migration's state, whatever its phase.
pub async fn merge_state(client: &Client, name: &str, state: &Value) -> Result<(), ControlError> {
    client
        .execute(
            "UPDATE switchyard.migrations SET state = state || $2 WHERE name = $1",
            &[&name, state],
        )
        .await?;
    Ok(())
}

/// Appends to the audit log.
pub async fn record(client: &Client, event: Event<'_>) -> Result<(), ControlError> {
    client
        .execute(
            EVENT_SQL,
            &[&event.actor, &event.migration, &event.action, &event.detail],
        )
        .await?;
    Ok(())
}

/// [`record`] inside a transaction, so the event commits with its change.
pub async fn record_in(
    tx: &tokio_postgres::Transaction<'_>,
    event: Event<'_>,
) -> Result<(), ControlError> {
    tx.execute(
        EVENT_SQL,
        &[&event.actor, &event.migration, &event.action, &event.detail],
    )
    .await?;
    Ok(())
}

const EVENT_SQL: &str =
    "INSERT INTO switchyard.events (actor, migration, action, detail) VALUES ($1, $2, $3, $4)";

/// The audit log, newest last.
pub async fn events(
    client: &Client,
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

/// Bumps the rules version and notifies every instance; returns it.
pub async fn bump_rules_version(client: &Client) -> Result<u64, ControlError> {
    let row = client
        .query_one(
            "WITH v AS (UPDATE switchyard.rules SET version = version + 1, published_at = now() RETURNING version)
             SELECT version, pg_notify('switchyard_rules', version::text) FROM v",
            &[],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// The published rules version.
pub async fn rules_version(client: &Client) -> Result<u64, ControlError> {
    let row = client
        .query_one("SELECT version FROM switchyard.rules", &[])
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}
