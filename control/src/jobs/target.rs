//! What a job works on: the table, its key, the pairs and which way they
//! are copied, and the limits from the spec.

use std::time::Duration;

use serde::Serialize;
use switchyard_rules::migration::Pair;

use crate::throttle::Limits;

/// What a job works on.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Migration name (checkpoint key).
    pub migration: String,
    /// Quoted, qualified table.
    pub table: String,
    /// Quoted key columns (primary key or unique NOT NULL key), in order.
    pub key: Vec<String>,
    /// Their SQL types.
    pub key_types: Vec<String>,
    /// Which column is computed from which.
    pub direction: Direction,
    /// The pairs.
    pub pairs: Vec<Pair>,
    /// Target time per chunk.
    pub target_chunk: Duration,
    /// Rows per second at most.
    pub max_rows_per_second: Option<u64>,
    /// `lock_timeout` per chunk.
    pub lock_timeout: Duration,
    /// Replica-lag and session limits from the spec.
    pub limits: Limits,
}

/// Which way a backfill copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Direction {
    /// new = forward(legacy): the backfill.
    Forward,
    /// legacy = backward(new): restoring a dropped legacy column.
    Backward,
}
