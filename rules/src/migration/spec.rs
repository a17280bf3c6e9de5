//! The migration spec an operator submits (`POST /v1/migrations`, or
//! `switchyard ctl apply -f` in JSON or TOML), and its static checks. The
//! checks against the live catalog belong to the control plane.

use serde::{Deserialize, Serialize};

use crate::model::QualifiedName;

/// One column name, or several (a split's new side, a merge's legacy side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Names {
    /// A single column.
    One(String),
    /// Several columns.
    Many(Vec<String>),
}

impl Names {
    /// The names, in order.
    pub fn list(&self) -> Vec<&str> {
        match self {
            Names::One(n) => vec![n.as_str()],
            Names::Many(ns) => ns.iter().map(String::as_str).collect(),
        }
    }
}

impl From<&str> for Names {
    fn from(name: &str) -> Self {
        Names::One(name.to_owned())
    }
}

/// A value for one column, or a map of column name to value (a split's
/// or merge's `type`, `forward` and `backward`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerColumn {
    /// The value of the entry's only column.
    One(String),
    /// Values by column name.
    Map(std::collections::BTreeMap<String, String>),
}

impl PerColumn {
    /// The value for `column`; a plain value serves any column.
    pub fn of(&self, column: &str) -> Option<&str> {
        match self {
            PerColumn::One(v) => Some(v),
            PerColumn::Map(m) => m.get(column).map(String::as_str),
        }
    }

    fn values(&self) -> Vec<&str> {
        match self {
            PerColumn::One(v) => vec![v.as_str()],
            PerColumn::Map(m) => m.values().map(String::as_str).collect(),
        }
    }

    fn keys(&self) -> Vec<&str> {
        match self {
            PerColumn::One(_) => vec![],
            PerColumn::Map(m) => m.keys().map(String::as_str).collect(),
        }
    }
}

impl From<&str> for PerColumn {
    fn from(value: &str) -> Self {
        PerColumn::One(value.to_owned())
    }
}

/// One entry of `columns`: a legacy → new pair, a split (one legacy
/// column, several new) or a merge (several legacy columns, one new).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// The existing column(s).
    pub legacy: Names,
    /// The column(s) to add.
    pub new: Names,
    /// SQL type of the new column; default: the legacy column's type. A
    /// split or merge gives a map of new column to type.
    #[serde(rename = "type", default)]
    pub sql_type: Option<PerColumn>,
    /// SQL over the legacy column(s) giving each new value; default: a
    /// cast. A split or merge gives a map of new column to expression.
    #[serde(default)]
    pub forward: Option<PerColumn>,
    /// SQL over the new column(s) giving each legacy value; default: a
    /// cast. A split or merge gives a map of legacy column to expression.
    #[serde(default)]
    pub backward: Option<PerColumn>,
    /// Set NOT NULL on the new column(s) at contract.
    #[serde(default)]
    pub not_null: bool,
    /// A default for the new column, added with it at expand; it must be
    /// non-volatile, so that the table is never rewritten.
    #[serde(default)]
    pub default: Option<String>,
    /// A split or merge whose forward then backward does not give back
    /// the legacy values is accepted: the loss is intended.
    #[serde(default)]
    pub lossy: bool,
}

impl ColumnSpec {
    /// A split or merge (either side names several columns).
    pub fn is_group(&self) -> bool {
        matches!(self.legacy, Names::Many(_)) || matches!(self.new, Names::Many(_))
    }
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

/// The shape of one entry: a split or merge has one side of one column,
/// and a map (or nothing, for `type`) where it names columns.
fn check_entry(i: usize, c: &ColumnSpec) -> Result<(), SpecError> {
    let (legacy, new) = (c.legacy.list(), c.new.list());
    for (field, value) in [
        ("type", &c.sql_type),
        ("forward", &c.forward),
        ("backward", &c.backward),
    ] {
        let values = value.as_ref().map(PerColumn::values).unwrap_or_default();
        if values
            .iter()
            .any(|v| v.trim().is_empty() || v.contains(';'))
        {
            return Err(err(
                format!("columns[{i}].{field}"),
                "must be a single SQL expression",
            ));
        }
    }
    if !c.is_group() {
        return Ok(());
    }
    if legacy.len() > 1 && new.len() > 1 {
        return Err(err(
            format!("columns[{i}]"),
            "a split names one legacy column and a merge one new column; several on both sides is not supported",
        ));
    }
    if c.default.is_some() {
        return Err(err(
            format!("columns[{i}].default"),
            "a split or merge takes no default",
        ));
    }
    // Each new column needs its forward, each legacy column its backward:
    // a cast cannot stand in for an expression over several columns.
    for (field, value, columns) in [
        ("forward", &c.forward, &new),
        ("backward", &c.backward, &legacy),
        ("type", &c.sql_type, &new),
    ] {
        let Some(value) = value else {
            if field == "type" {
                continue;
            }
            return Err(err(
                format!("columns[{i}].{field}"),
                format!("a split or merge needs a map with an expression for each of {columns:?}"),
            ));
        };
        let keys = value.keys();
        let complete = field == "type" || columns.iter().all(|c| keys.contains(c));
        if !complete || keys.iter().any(|k| !columns.contains(k)) {
            return Err(err(
                format!("columns[{i}].{field}"),
                format!("a split or merge needs a map whose keys are exactly {columns:?}"),
            ));
        }
    }
    Ok(())
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
            for (field, names) in [("legacy", &c.legacy), ("new", &c.new)] {
                let names = names.list();
                if names.is_empty() {
                    return Err(err(format!("columns[{i}].{field}"), "must name a column"));
                }
                for value in names {
                    if value.is_empty() {
                        return Err(err(format!("columns[{i}].{field}"), "must not be empty"));
                    }
                    if seen.contains(&value) {
                        return Err(err(
                            format!("columns[{i}].{field}"),
                            format!("column {value:?} appears twice"),
                        ));
                    }
                    seen.push(value);
                }
            }
            check_entry(i, c)?;
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
    fn a_split_and_a_merge_parse_and_validate() {
        let split: MigrationSpec = serde_json::from_str(
            r#"{"name":"s","table":"people","columns":[{"legacy":"full_name","new":["first_name","last_name"],
                "forward":{"first_name":"split_part(full_name, ' ', 1)","last_name":"split_part(full_name, ' ', 2)"},
                "backward":{"full_name":"first_name || ' ' || last_name"}}]}"#,
        )
        .unwrap();
        assert!(split.columns[0].is_group());
        assert!(split.validate().is_ok());
        let merge: MigrationSpec = serde_json::from_str(
            r#"{"name":"m","table":"people","columns":[{"legacy":["street","city"],"new":"address",
                "type":{"address":"text"}, "forward":{"address":"street || ', ' || city"},
                "backward":{"street":"split_part(address, ', ', 1)","city":"split_part(address, ', ', 2)"}}]}"#,
        )
        .unwrap();
        assert!(merge.validate().is_ok());
        let mut missing = merge.clone();
        missing.columns[0].backward = Some(PerColumn::Map(
            [("street".to_owned(), "address".to_owned())].into(),
        ));
        let e = missing.validate().unwrap_err();
        assert_eq!(e.field, "columns[0].backward", "{e}");
        let mut plain = merge.clone();
        plain.columns[0].forward = Some("street".into());
        assert_eq!(plain.validate().unwrap_err().field, "columns[0].forward");
        let mut both = merge;
        both.columns[0].new = Names::Many(vec!["a".into(), "b".into()]);
        assert_eq!(both.validate().unwrap_err().field, "columns[0]");
    }

    #[test]
    fn errors_name_the_field() {
        let mut spec: MigrationSpec = serde_json::from_str(EXAMPLE).unwrap();
        spec.columns[0].new = "email".into();
        assert_eq!(spec.validate().unwrap_err().field, "columns[0].new");
        let mut spec: MigrationSpec = serde_json::from_str(EXAMPLE).unwrap();
        spec.columns[0].new = Names::Many(vec!["a".into(), "email".into()]);
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
