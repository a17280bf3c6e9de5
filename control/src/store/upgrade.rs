//! Upgrades migrations stored by earlier versions to the typed state
//! (schema 2), at start-up, in the bootstrap transaction: nothing is lost,
//! and the scattered keys of schema 1 become their typed places.

use serde::de::DeserializeOwned;
use serde_json::Value;
use switchyard_rules::migration::{
    Created, Job, JobKind, JobStatus, LegacyColumn, MigrationState, Parity, Stage, SwitchedReads,
    STATE_SCHEMA,
};
use switchyard_rules::{Phase, QualifiedName};
use tokio_postgres::Transaction;

use crate::error::ControlError;

/// Upgrades every row not yet at [`STATE_SCHEMA`].
pub(super) async fn run(tx: &Transaction<'_>) -> Result<(), ControlError> {
    let rows = tx
        .query(
            "SELECT name, phase, spec->>'table', state FROM switchyard.migrations
             WHERE (state->>'schema') IS DISTINCT FROM $1 FOR UPDATE",
            &[&STATE_SCHEMA.to_string()],
        )
        .await?;
    for row in rows {
        let name: String = row.get(0);
        let phase: Phase = serde_json::from_value(Value::String(row.get(1)))
            .map_err(|e| ControlError::Internal(format!("phase of {name}: {e}")))?;
        let table: String = row.get(2);
        let old: Value = row.get(3);
        let legacy_present = match phase {
            Phase::Contracted => legacy_present(tx, &table, &old).await?,
            _ => true,
        };
        let state = from_v1(phase, &old, legacy_present)
            .map_err(|e| ControlError::Internal(format!("upgrading {name}: {e}")))?;
        let encoded =
            serde_json::to_value(&state).map_err(|e| ControlError::Internal(e.to_string()))?;
        tx.execute(
            "UPDATE switchyard.migrations SET state = $2 WHERE name = $1",
            &[&name, &encoded],
        )
        .await?;
        tracing::info!(migration = %name, "state upgraded to schema {STATE_SCHEMA}");
    }
    Ok(())
}

/// Whether any legacy column of a contracted schema-1 migration is still
/// in the catalog (its drop was interrupted).
async fn legacy_present(
    tx: &Transaction<'_>,
    table: &str,
    old: &Value,
) -> Result<bool, ControlError> {
    let Some(table) = QualifiedName::parse(table) else {
        return Ok(false);
    };
    let legacy: Vec<String> = old["pairs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["legacy"].as_str().map(str::to_owned))
        .collect();
    let row = tx
        .query_one(
            "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = ANY($3) AND NOT a.attisdropped",
            &[&table.schema, &table.name, &legacy],
        )
        .await?;
    Ok(row.get::<_, i64>(0) > 0)
}

fn field<T: DeserializeOwned + Default>(old: &Value, key: &str) -> Result<T, String> {
    match old.get(key) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("{key}: {e}")),
    }
}

/// A schema-1 state (untyped keys beside the phase) as a typed state.
pub(super) fn from_v1(
    phase: Phase,
    old: &Value,
    legacy_present: bool,
) -> Result<MigrationState, String> {
    let flag = |key: &str| old.get(key).and_then(Value::as_bool).unwrap_or(false);
    let stage = match phase {
        Phase::Planned => Stage::Planned,
        Phase::Expanded => Stage::Expanded,
        Phase::DualWrite => Stage::DualWrite,
        Phase::Backfilled => Stage::Backfilled,
        Phase::Verified => Stage::Verified,
        Phase::ReadsSwitched => Stage::ReadsSwitched {
            reads: if flag("legacy_incomplete") {
                SwitchedReads::Restoring
            } else if flag("reverted") {
                SwitchedReads::Reverted
            } else {
                SwitchedReads::New
            },
        },
        Phase::Contracted => Stage::Contracted {
            legacy: if legacy_present {
                LegacyColumn::Dropping
            } else {
                LegacyColumn::Dropped
            },
        },
        Phase::Completed => Stage::Completed,
    };
    let mut state = MigrationState::planned(field(old, "pairs")?);
    state.stage = stage;
    state.parity = match old.get("parity").filter(|p| p.is_object()) {
        None => None,
        Some(p) => Some(Parity {
            mismatches: p["mismatches"].as_u64().unwrap_or(0),
            phase: serde_json::from_value(p["phase"].clone()).map_err(|e| e.to_string())?,
            writes_seen: p["writes_seen"].as_u64().unwrap_or(0),
        }),
    };
    state.unrewritten_writes = old["unrewritten_writes"].as_u64().unwrap_or(0);
    state.settings = field(old, "live")?;
    state.reports.expand = field(old, "expand")?;
    state.reports.backfill = field(old, "backfill")?;
    state.reports.verify = field(old, "verify")?;
    state.reports.restore = field(old, "restore")?;
    state.reports.indexes = field(old, "indexes")?;
    state.reports.retired_indexes = field(old, "retired_indexes")?;
    state.reports.dropped_indexes = field(old, "dropped_indexes")?;
    // Schema 1 added new columns with IF NOT EXISTS and dropped them on
    // rollback: it treated them as its own.
    state.created = Created {
        columns: match stage {
            Stage::Planned => vec![],
            _ => state.pairs.iter().map(|p| p.new.clone()).collect(),
        },
        indexes: state
            .reports
            .indexes
            .iter()
            .filter(|r| r.outcome == "created")
            .map(|r| r.index.clone())
            .collect(),
        legacy_columns: vec![],
        // Schema 1 had no guard trigger.
        guard: false,
    };
    if let Some(running) = old.get("running_job").filter(|j| j.is_object()) {
        let kind = match running["verb"].as_str() {
            Some("backfill") => JobKind::Backfill,
            Some("verify") => JobKind::Verify,
            Some("rollback") => JobKind::Restore,
            other => return Err(format!("running job {other:?}")),
        };
        state.jobs_started = 1;
        state.job = Some(Job {
            id: 1,
            kind,
            state: JobStatus::Running,
            actor: running["actor"].as_str().unwrap_or("system").to_owned(),
            force: false,
            writes_seen: state.unrewritten_writes,
            progress: field(old, "job")?,
            error: None,
        });
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs() -> Value {
        json!([{"legacy": "email", "legacy_type": "text", "new": "email_address", "new_type": "text",
                "forward": "lower(email)", "backward": "email_address", "not_null": false,
                "legacy_position": 1}])
    }

    #[test]
    fn a_reverted_schema_1_state_keeps_its_revert_parity_and_counters() {
        let old = json!({
            "pairs": pairs(), "reverted": true, "unrewritten_writes": 4,
            "parity": {"mismatches": 0, "phase": "verified", "stale": false, "writes_seen": 3},
            "live": {"paused": true, "max_rows_per_second": null},
            "backfill": {"state": "done", "rows_done": 30, "rows_changed": 30, "rows_total_estimate": 30,
                         "rows_per_second": 10.0, "eta_seconds": 0.0, "chunk_rows": 1000,
                         "throttled": null, "sample_keys": [], "error": null},
            "indexes": [{"index": "users_email_address_key", "sql": "CREATE", "outcome": "created", "reason": null}],
            "ddl_request": {"id": "x", "verb": "expand", "taken": "y"},
            "job": {"state": "done", "rows_done": 30}
        });
        let s = from_v1(Phase::ReadsSwitched, &old, true).unwrap();
        assert_eq!(
            s.stage,
            Stage::ReadsSwitched {
                reads: SwitchedReads::Reverted
            }
        );
        assert_eq!(s.unrewritten_writes, 4);
        assert!(s.parity_stale());
        assert!(s.settings.paused);
        assert_eq!(s.settings.max_rows_per_second, Some(None));
        assert_eq!(s.reports.backfill.as_ref().unwrap().rows_done, 30);
        assert_eq!(s.created.indexes, vec!["users_email_address_key"]);
        assert_eq!(s.created.columns, vec!["email_address"]);
        assert!(s.job.is_none());
        assert_eq!(s.pairs.len(), 1);
    }

    #[test]
    fn running_jobs_and_interrupted_drops_come_through() {
        let old = json!({"pairs": pairs(), "legacy_incomplete": true,
                         "running_job": {"verb": "rollback", "next": "reads_switched", "actor": "ops"},
                         "job": {"state": "running", "rows_done": 7}});
        let s = from_v1(Phase::ReadsSwitched, &old, true).unwrap();
        assert_eq!(
            s.stage,
            Stage::ReadsSwitched {
                reads: SwitchedReads::Restoring
            }
        );
        let job = s.running_job().unwrap();
        assert_eq!((job.kind, job.progress.rows_done), (JobKind::Restore, 7));
        let s = from_v1(Phase::Contracted, &json!({"pairs": pairs()}), true).unwrap();
        assert_eq!(
            s.stage,
            Stage::Contracted {
                legacy: LegacyColumn::Dropping
            }
        );
        assert!(from_v1(Phase::Contracted, &json!({"pairs": pairs()}), false).is_ok());
    }
}
