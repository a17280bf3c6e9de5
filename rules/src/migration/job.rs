//! The job slot of a migration: long work (backfill, verify, the refill of a
//! re-added legacy column) and the DDL verbs (expand, contract, rollback)
//! that may wait for locks. One job at a time; while one runs, other verbs
//! are refused with what to do instead.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// new = forward(legacy), chunked; indexes rebuilt at the end.
    Backfill,
    /// A parity pass.
    Verify,
    /// legacy = backward(new) after a rollback of contract.
    Restore,
    /// Expand's DDL.
    Expand,
    /// Contract's DDL and the legacy column's drop.
    Contract,
    /// A rollback's DDL.
    Rollback,
}

impl JobKind {
    /// The verb that starts it, as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backfill => "backfill",
            JobKind::Verify => "verify",
            JobKind::Restore => "restore",
            JobKind::Expand => "expand",
            JobKind::Contract => "contract",
            JobKind::Rollback => "rollback",
        }
    }

    /// DDL verbs run on the job holder's DDL session.
    pub fn is_ddl(self) -> bool {
        matches!(
            self,
            JobKind::Expand | JobKind::Contract | JobKind::Rollback
        )
    }

    /// Whether a rollback may cancel it (long work it undoes anyway).
    pub fn cancellable(self) -> bool {
        matches!(self, JobKind::Backfill | JobKind::Verify)
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Working.
    Running,
    /// Held by the operator before its next chunk.
    Paused,
    /// Finished.
    Done,
    /// Stopped by an error; the operator issues the verb again.
    Failed,
    /// Cancelled by a rollback.
    Cancelled,
}

/// Live progress of a job, as `GET /v1/migrations/{name}` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Progress {
    /// Rows visited so far.
    pub rows_done: u64,
    /// Rows changed (backfill) or mismatched (verify).
    pub rows_changed: u64,
    /// The planner's estimate of the table's rows.
    pub rows_total_estimate: u64,
    /// Recent speed.
    pub rows_per_second: f64,
    /// Seconds left at that speed.
    pub eta_seconds: Option<f64>,
    /// Current chunk size.
    pub chunk_rows: u64,
    /// What the job waits for, if it waits: a throttle, a lock, an
    /// instance's acknowledgement.
    pub throttled: Option<String>,
    /// Sample keys of mismatched rows (verify).
    pub sample_keys: Vec<String>,
}

/// One job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Unique within the migration.
    pub id: u64,
    /// What it does.
    pub kind: JobKind,
    /// Where it is.
    pub state: JobStatus,
    /// Who started it.
    pub actor: String,
    /// Whether the verb was forced (a DDL verb resumed after a crash keeps it).
    #[serde(default)]
    pub force: bool,
    /// The migration's unrewritten writes when the job started: a parity
    /// pass is stale once more have escaped.
    #[serde(default)]
    pub writes_seen: u64,
    /// Progress.
    #[serde(flatten)]
    pub progress: Progress,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Job {
    /// Whether it occupies the slot.
    pub fn is_running(&self) -> bool {
        matches!(self.state, JobStatus::Running | JobStatus::Paused)
    }
}

/// Settings an operator can change while a backfill runs; they survive
/// restarts and apply to the next backfill too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Hold before the next chunk.
    #[serde(default)]
    pub paused: bool,
    /// Overrides the spec's cap (`Some(None)` removes it).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lifted::deserialize"
    )]
    pub max_rows_per_second: Option<Option<u64>>,
    /// Overrides the spec's target chunk time.
    #[serde(default, with = "millis", skip_serializing_if = "Option::is_none")]
    pub target_chunk: Option<Duration>,
    /// Overrides the spec's replica-lag limit (`Some(None)` removes it).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lifted::deserialize"
    )]
    pub max_replica_lag_ms: Option<Option<u64>>,
    /// Overrides the spec's active-session limit (`Some(None)` removes it).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lifted::deserialize"
    )]
    pub max_active_sessions: Option<Option<u64>>,
    /// Overrides the spec's latency guard (`Some(None)` turns it off).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lifted::deserialize"
    )]
    pub max_app_p99_pct: Option<Option<u64>>,
}

/// An override that lifts a limit (`Some(None)`) is stored as `null` and
/// must read back as such, not as "no override".
mod lifted {
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<u64>>, D::Error> {
        Option::<u64>::deserialize(d).map(Some)
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lifted_limit_survives_a_round_trip_through_json() {
        let settings = Settings {
            max_rows_per_second: Some(None),
            max_app_p99_pct: Some(Some(150)),
            target_chunk: Some(Duration::from_millis(40)),
            ..Settings::default()
        };
        let stored = serde_json::to_value(&settings).unwrap();
        assert_eq!(stored["max_rows_per_second"], serde_json::Value::Null);
        assert_eq!(stored["target_chunk"], 40);
        assert!(stored.get("max_active_sessions").is_none());
        let back: Settings = serde_json::from_value(stored).unwrap();
        assert_eq!(back, settings);
    }

    #[test]
    fn a_job_shows_its_progress_beside_its_state() {
        let job = Job {
            id: 3,
            kind: JobKind::Backfill,
            state: JobStatus::Paused,
            actor: "ops".into(),
            force: false,
            writes_seen: 0,
            progress: Progress {
                rows_done: 10,
                ..Progress::default()
            },
            error: None,
        };
        let json = serde_json::to_value(&job).unwrap();
        assert_eq!(json["state"], "paused");
        assert_eq!(json["rows_done"], 10);
        assert_eq!(json["kind"], "backfill");
        assert!(job.is_running());
        assert_eq!(serde_json::from_value::<Job>(json).unwrap(), job);
    }
}
