//! Switchyard's control plane: the HTTP API, the migration engine (spec
//! validation against the catalog, safe DDL, routing publication, jobs,
//! audit log) and its state in the database's `switchyard` schema.
//!
//! The migration model itself (typed state, gates, transitions) is pure and
//! lives in `switchyard_rules::migration`; this crate persists it and
//! carries out its effects.

pub mod catalog;
mod chunks;
mod db;
mod ddl;
mod dependencies;
mod engine;
mod error;
pub mod fleet;
mod guard;
pub mod http;
mod indexes;
mod jobs;
mod latency;
mod literal_proof;
pub mod metrics;
mod operator;
mod publisher;
mod store;
mod throttle;
mod verbs;

pub use engine::{Engine, RulesSink};
pub use error::ControlError;

/// The statements that install migration `migration`'s guard trigger for
/// `pairs` of `table` (quoted, qualified), for benchmarks.
pub fn guard_statements(
    table: &str,
    migration: &str,
    pairs: &[catalog::Pair],
) -> Result<String, ControlError> {
    guard::install_sql(table, migration, pairs)
}

/// The backfill's chunk statement and the parity pass's statement over
/// `table` (quoted, qualified), walked by `key` (quoted; none: ctid pages),
/// so that tests can check their plans.
pub fn job_statements(
    table: &str,
    key: &[(String, String)],
    pairs: &[catalog::Pair],
) -> (String, String) {
    let target = jobs::Target {
        migration: String::new(),
        table: table.to_owned(),
        key: key.iter().map(|(k, _)| k.clone()).collect(),
        key_types: key.iter().map(|(_, t)| t.clone()).collect(),
        direction: jobs::Direction::Forward,
        pairs: pairs.to_vec(),
        target_chunk: std::time::Duration::from_millis(100),
        max_rows_per_second: None,
        lock_timeout: std::time::Duration::from_millis(100),
        limits: Default::default(),
    };
    (chunks::chunk_sql(&target), chunks::verify_sql(&target))
}
