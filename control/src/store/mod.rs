//! Switchyard's state in the target database (schema `switchyard`): each
//! migration's spec and typed state, the rules version, the audit log, and
//! the DDL requests relayed to the job holder.
//!
//! A migration's state changes only through [`update`]: the row is locked,
//! a pure function of the current state gives the next one (or refuses),
//! and the write commits with whatever else the caller's transaction does
//! (DDL, an audit event, a rules version bump). Two actors never both act
//! on the same state.

mod events;
mod requests;
pub(crate) mod schema;
mod upgrade;

use serde_json::Value;
use switchyard_rules::migration::{MigrationSpec, MigrationState, STATE_SCHEMA};
use switchyard_rules::Phase;
use tokio_postgres::{Client, GenericClient, Transaction};

use crate::error::ControlError;

pub(crate) use events::{events, record, Event};
pub(crate) use requests::{
    answer, answer_of, request, take_requests, ANSWERS_CHANNEL, REQUESTS_CHANNEL,
};

/// One stored migration.
#[derive(Debug, Clone)]
pub(crate) struct StoredMigration {
    /// Its name.
    pub name: String,
    /// The spec as submitted (defaults filled in).
    pub spec: MigrationSpec,
    /// Its state.
    pub state: MigrationState,
}

impl StoredMigration {
    pub(crate) fn phase(&self) -> Phase {
        self.state.stage.phase()
    }
}

/// Creates the schema, applies missing steps and upgrades older states.
pub(crate) async fn bootstrap(client: &mut Client) -> Result<(), ControlError> {
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
    upgrade::run(&tx).await?;
    tx.commit().await?;
    Ok(())
}

fn phase_name(phase: Phase) -> String {
    serde_json::to_value(phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn decode(row: &tokio_postgres::Row) -> Result<StoredMigration, ControlError> {
    let name: String = row.get("name");
    let bad = |what: &str, e: serde_json::Error| {
        ControlError::Internal(format!("stored {what} of {name}: {e}"))
    };
    let spec = serde_json::from_value(row.get("spec")).map_err(|e| bad("spec", e))?;
    let state = serde_json::from_value(row.get("state")).map_err(|e| bad("state", e))?;
    Ok(StoredMigration { name, spec, state })
}

fn encode(state: &MigrationState) -> Result<Value, ControlError> {
    let mut state = state.clone();
    state.schema = STATE_SCHEMA;
    serde_json::to_value(&state).map_err(|e| ControlError::Internal(e.to_string()))
}

/// Inserts a new migration; 409 if the name is taken.
pub(crate) async fn insert(
    client: &impl GenericClient,
    spec: &MigrationSpec,
    state: &MigrationState,
) -> Result<(), ControlError> {
    let spec_json =
        serde_json::to_value(spec).map_err(|e| ControlError::Internal(e.to_string()))?;
    let inserted = client
        .execute(
            "INSERT INTO switchyard.migrations (name, phase, spec, state) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO NOTHING",
            &[
                &spec.name,
                &phase_name(state.stage.phase()),
                &spec_json,
                &encode(state)?,
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(ControlError::Conflict(format!(
            "migration {} already exists; pick another name",
            spec.name
        )));
    }
    Ok(())
}

const SELECT: &str = "SELECT name, spec, state FROM switchyard.migrations";

/// One migration by name.
pub(crate) async fn get(
    client: &impl GenericClient,
    name: &str,
) -> Result<StoredMigration, ControlError> {
    let row = client
        .query_opt(&format!("{SELECT} WHERE name = $1"), &[&name])
        .await?
        .ok_or_else(|| not_found(name))?;
    decode(&row)
}

fn not_found(name: &str) -> ControlError {
    ControlError::NotFound(format!(
        "no migration named {name} (GET /v1/migrations lists them)"
    ))
}

/// All migrations, oldest first.
pub(crate) async fn list(
    client: &impl GenericClient,
) -> Result<Vec<StoredMigration>, ControlError> {
    client
        .query(&format!("{SELECT} ORDER BY created_at, name"), &[])
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// Changes `name`'s state inside `tx`: locks the row, gives the current
/// migration to `change`, and writes the state it returns. Commits with
/// `tx`; a refusal writes nothing.
pub(crate) async fn update_in<T>(
    tx: &Transaction<'_>,
    name: &str,
    change: impl FnOnce(&StoredMigration) -> Result<(MigrationState, T), ControlError>,
) -> Result<(StoredMigration, T), ControlError> {
    let row = tx
        .query_opt(&format!("{SELECT} WHERE name = $1 FOR UPDATE"), &[&name])
        .await?
        .ok_or_else(|| not_found(name))?;
    let mut m = decode(&row)?;
    let (state, out) = change(&m)?;
    if state != m.state {
        tx.execute(
            "UPDATE switchyard.migrations SET phase = $2, state = $3, updated_at = now()
             WHERE name = $1",
            &[&name, &phase_name(state.stage.phase()), &encode(&state)?],
        )
        .await?;
        m.state = state;
    }
    Ok((m, out))
}

/// [`update_in`] in a transaction of its own.
pub(crate) async fn update<T>(
    client: &mut Client,
    name: &str,
    change: impl FnOnce(&StoredMigration) -> Result<(MigrationState, T), ControlError>,
) -> Result<(StoredMigration, T), ControlError> {
    let tx = client.transaction().await?;
    let out = update_in(&tx, name, change).await?;
    tx.commit().await?;
    Ok(out)
}

/// Bumps the rules version (to at least `at_least`) and notifies every
/// instance when `tx` commits; returns it.
pub(crate) async fn bump_rules_version(
    tx: &impl GenericClient,
    at_least: u64,
) -> Result<u64, ControlError> {
    let row = tx
        .query_one(
            "WITH v AS (UPDATE switchyard.rules SET version = greatest(version + 1, $1),
                                                published_at = now() RETURNING version)
             SELECT version, pg_notify('switchyard_rules', version::text) FROM v",
            &[&(at_least as i64)],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// The published rules version.
pub(crate) async fn rules_version(client: &impl GenericClient) -> Result<u64, ControlError> {
    let row = client
        .query_one("SELECT version FROM switchyard.rules", &[])
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}
