//! The migration spec an operator submits (`POST /v1/migrations`, or
//! `switchyard ctl apply -f` in JSON or TOML), and its static checks. The
//! checks against the live catalog belong to the control plane.

use serde::{Deserialize, Serialize};

use crate::model::QualifiedName;

/// One legacy → new column pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// The existing column.
    pub legacy: String,
    /// The column to add.
    pub new: String,
    /// SQL type of the new column; default: the legacy column's type.
    #[serde(rename = "type", default)]
    pub sql_type: Option<String>,
    /// SQL over the legacy column giving the new value; default: a cast.
    #[serde(default)]
    pub forward: Option<String>,
    /// SQL over the new column giving the legacy value; default: a cast.
    #[serde(default)]
    pub backward: Option<String>,
    /// Set NOT NULL on the new column at contract.
    #[serde(default)]
    pub not_null: bool,
    /// A default for the new column, added with it at expand; it must be
    /// non-volatile, so that the table is never rewritten.
    #[serde(default)]
    pub default: Option<String>,
}

/// Backfill throttle settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillSettings {
    /// Target time per chunk.
    #[serde(default = "default_chunk_ms")]
    pub target_chunk_ms: u64,
    /// Rows per second at most; `None` for no limit.
    #[serde(default)]
    pub max_rows_per_second: Option<u64>,
    /// `lock_timeout` of each chunk and DDL step.
    #[serde(default = "default_lock_timeout_ms")]
    pub lock_timeout_ms: u64,
    /// Hold chunks while a replica's `replay_lag` exceeds this.
    #[serde(default)]
    pub max_replica_lag_ms: Option<u64>,
    /// Hold chunks while more client sessions than this are active.
    #[serde(default)]
    pub max_active_sessions: Option<u64>,
    /// Pace chunks while the application's p99, as the proxy measures it,
    /// exceeds this percentage of its p99 before the backfill (`null`: off).
    #[serde(default = "default_app_p99_pct")]
    pub max_app_p99_pct: Option<u64>,
}

fn default_app_p99_pct() -> Option<u64> {
    // 150 leaves room for the guard's reaction time under a 2x budget.
    Some(150)
}

fn default_chunk_ms() -> u64 {
    100
}

fn default_lock_timeout_ms() -> u64 {
    100
}

impl Default for BackfillSettings {
    fn default() -> Self {
        BackfillSettings {
            target_chunk_ms: default_chunk_ms(),
            max_rows_per_second: None,
            lock_timeout_ms: default_lock_timeout_ms(),
            max_replica_lag_ms: None,
            max_active_sessions: None,
            max_app_p99_pct: default_app_p99_pct(),
        }
    }
}

/// A migration as submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationSpec {
    /// Unique name, e.g. `users-email`.
    pub name: String,
    /// `schema.table` or `table` (schema `public`).
    pub table: String,
    /// Column pairs that move together.
    pub columns: Vec<ColumnSpec>,
    /// Backfill settings.
    #[serde(default)]
    pub backfill: BackfillSettings,
    /// Install a trigger, from dual-write until contract, that heals rows
    /// written on one side only by writers that bypass the proxy.
    #[serde(default = "default_true")]
    pub guard_trigger: bool,
    /// `complete` waits until no live proxy has seen a statement that
    /// depends on the legacy side for this many minutes (0: no wait).
    #[serde(default = "default_quiet_minutes")]
    pub complete_quiet_minutes: u32,
}

fn default_quiet_minutes() -> u32 {
    10
}

fn default_true() -> bool {
    true
}

/// A spec that cannot be accepted; `field` names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The field path, e.g. `columns[0].new`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

impl MigrationSpec {
    /// Checks what can be checked without the database.
    pub fn validate(&self) -> Result<QualifiedName, SpecError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 63
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(err("name", "use 1 to 63 letters, digits, '-' or '_'"));
        }
        let table = QualifiedName::parse(&self.table)
            .ok_or_else(|| err("table", "expected table or schema.table"))?;
        if self.columns.is_empty() {
            return Err(err("columns", "at least one column pair is required"));
        }
        let mut seen: Vec<&str> = Vec::new();
        for (i, c) in self.columns.iter().enumerate() {
            for (field, value) in [("legacy", &c.legacy), ("new", &c.new)] {
                if value.is_empty() {
                    return Err(err(format!("columns[{i}].{field}"), "must not be empty"));
                }
                if seen.contains(&value.as_str()) {
                    return Err(err(
                        format!("columns[{i}].{field}"),
                        format!("column {value:?} appears twice"),
                    ));
                }
                seen.push(value);
            }
            for (field, value) in [
                ("type", &c.sql_type),
                ("forward", &c.forward),
                ("backward", &c.backward),
            ] {
                if value
                    .as_deref()
                    .is_some_and(|v| v.trim().is_empty() || v.contains(';'))
                {
                    return Err(err(
                        format!("columns[{i}].{field}"),
                        "must be a single SQL expression",
                    ));
                }
            }
        }
        let b = &self.backfill;
        if !(1..=60_000).contains(&b.target_chunk_ms) {
            return Err(err(
                "backfill.target_chunk_ms",
                "must be between 1 and 60000",
            ));
        }
        if !(1..=600_000).contains(&b.lock_timeout_ms) {
            return Err(err(
                "backfill.lock_timeout_ms",
                "must be between 1 and 600000",
            ));
        }
        if b.max_rows_per_second == Some(0) {
            return Err(err(
                "backfill.max_rows_per_second",
                "must be positive or null",
            ));
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
      "name": "users-email",
      "table": "public.users",
      "columns": [{"legacy": "email", "new": "email_address", "type": "varchar(320)",
                   "forward": "lower(email)", "backward": "email_address", "not_null": true}],
      "backfill": {"target_chunk_ms": 100, "max_rows_per_second": null, "lock_timeout_ms": 100}
    }"#;

    #[test]
    fn the_interface_example_parses_and_validates() {
        let spec: MigrationSpec = serde_json::from_str(EXAMPLE).unwrap();
        assert_eq!(
            spec.validate().unwrap(),
            QualifiedName::new("public", "users")
        );
        let rename: MigrationSpec = serde_json::from_str(
            r#"{"name":"r","table":"users","columns":[{"legacy":"email","new":"email_address"}]}"#,
        )
        .unwrap();
        assert_eq!(rename.backfill, BackfillSettings::default());
        assert!(rename.validate().is_ok());
    }

    #[test]
    fn errors_name_the_field() {
        let mut spec: MigrationSpec = serde_json::from_str(EXAMPLE).unwrap();
        spec.columns[0].new = "email".into();
        assert_eq!(spec.validate().unwrap_err().field, "columns[0].new");
        let mut spec: MigrationSpec = serde_json::from_str(EXAMPLE).unwrap();
        spec.columns[0].forward = Some("1; drop table users".into());
        assert_eq!(spec.validate().unwrap_err().field, "columns[0].forward");
        let mut spec: MigrationSpec = serde_json::from_str(EXAMPLE).unwrap();
        spec.name = "bad name".into();
        assert_eq!(spec.validate().unwrap_err().field, "name");
        assert!(serde_json::from_str::<MigrationSpec>(
            r#"{"name":"x","table":"t","columns":[],"extra":1}"#
        )
        .is_err());
    }
}
