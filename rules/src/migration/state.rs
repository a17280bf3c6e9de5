//! A migration's persisted state, typed: where it stands (`Stage`, with what
//! only that stage has), the parity record, the job slot, the counters, the
//! operator's settings, what it created, and its reports.
//!
//! The control plane stores this as JSONB (with [`STATE_SCHEMA`]) and
//! changes it only through the pure functions of this module's siblings,
//! so the combinations that must not exist cannot be written: a revert is a
//! way of being in `reads_switched`, not a flag beside any phase.

use serde::{Deserialize, Serialize};

use super::job::{Job, Progress, Settings};
use crate::model::{Group, Phase, ReadRoute, Routing, TypedColumn, WriteRoute};

/// The version of the persisted shape; older rows are upgraded at start.
pub const STATE_SCHEMA: u32 = 2;

/// Where reads go while the migration is in `reads_switched`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchedReads {
    /// Served from the new column.
    New,
    /// An incident responder sent them back to the legacy column.
    Reverted,
    /// Rolled back from `contracted`: the re-added legacy column is being
    /// refilled, so reads must stay on the new column until that is done.
    Restoring,
}

/// The legacy column once the migration is `contracted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegacyColumn {
    /// Routing names only the new column; the drop waits for every
    /// instance to acknowledge that (resumed after a crash).
    Dropping,
    /// Dropped.
    Dropped,
}

/// Where a migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Stage {
    /// Created; nothing changed in the database.
    Planned,
    /// New column added, nullable.
    Expanded,
    /// Writes set both columns.
    DualWrite,
    /// Every existing row was backfilled.
    Backfilled,
    /// A parity pass found no mismatch.
    Verified,
    /// Reads of the legacy name are served from the new column (or not,
    /// as `reads` says).
    ReadsSwitched {
        /// Where reads go.
        reads: SwitchedReads,
    },
    /// The legacy column is (being) dropped.
    Contracted {
        /// Whether the drop is done.
        legacy: LegacyColumn,
    },
    /// Rules retired.
    Completed,
}

/// Which columns of a pair exist in the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns {
    /// The legacy column exists.
    pub legacy: bool,
    /// The new column exists.
    pub new: bool,
}

impl Stage {
    /// The phase the API shows.
    pub fn phase(self) -> Phase {
        match self {
            Stage::Planned => Phase::Planned,
            Stage::Expanded => Phase::Expanded,
            Stage::DualWrite => Phase::DualWrite,
            Stage::Backfilled => Phase::Backfilled,
            Stage::Verified => Phase::Verified,
            Stage::ReadsSwitched { .. } => Phase::ReadsSwitched,
            Stage::Contracted { .. } => Phase::Contracted,
            Stage::Completed => Phase::Completed,
        }
    }

    /// The routing in force (`None` once the rules are retired).
    pub fn routing(self) -> Option<Routing> {
        let reads = match self {
            Stage::ReadsSwitched {
                reads: SwitchedReads::Reverted,
            } => ReadRoute::Legacy,
            _ => self.phase().routing()?.reads,
        };
        Some(Routing {
            reads,
            writes: self.phase().routing()?.writes,
        })
    }

    /// Which columns exist in this stage.
    pub fn columns(self) -> Columns {
        match self {
            Stage::Planned => Columns {
                legacy: true,
                new: false,
            },
            Stage::Contracted {
                legacy: LegacyColumn::Dropped,
            }
            | Stage::Completed => Columns {
                legacy: false,
                new: true,
            },
            _ => Columns {
                legacy: true,
                new: true,
            },
        }
    }

    /// The stage a rollback leads to, when it has one.
    pub fn previous(self) -> Option<Stage> {
        Some(match self {
            Stage::Planned | Stage::Completed => return None,
            Stage::Expanded => Stage::Planned,
            Stage::DualWrite => Stage::Expanded,
            Stage::Backfilled => Stage::DualWrite,
            Stage::Verified => Stage::Backfilled,
            Stage::ReadsSwitched { .. } => Stage::Verified,
            Stage::Contracted { .. } => Stage::ReadsSwitched {
                reads: SwitchedReads::Restoring,
            },
        })
    }
}

/// The columns a routing reads or writes.
pub fn used_by(routing: Option<Routing>) -> Columns {
    match routing {
        None => Columns {
            legacy: false,
            new: false,
        },
        Some(r) => Columns {
            legacy: r.reads == ReadRoute::Legacy || r.writes != WriteRoute::New,
            new: r.reads == ReadRoute::New || r.writes != WriteRoute::Legacy,
        },
    }
}

/// A completed parity pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parity {
    /// Rows where new IS DISTINCT FROM forward(legacy).
    pub mismatches: u64,
    /// The phase the migration was in when the pass completed.
    pub phase: Phase,
    /// The migration's count of unrewritten writes when the pass started;
    /// a higher count later makes the pass stale.
    #[serde(default)]
    pub writes_seen: u64,
}

/// One column pair, resolved against the catalog at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    /// Legacy column.
    pub legacy: String,
    /// Its type, as `format_type` prints it.
    pub legacy_type: String,
    /// New column.
    pub new: String,
    /// Its type.
    pub new_type: String,
    /// Forward expression (defaulted).
    pub forward: String,
    /// Backward expression (defaulted).
    pub backward: String,
    /// NOT NULL at contract.
    pub not_null: bool,
    /// Position of the legacy column among the table's columns.
    pub legacy_position: usize,
    /// Non-volatile default of the new column.
    #[serde(default)]
    pub default: Option<String>,
    /// The split or merge this pair belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
    /// `forward` resolves over a string literal as over the literal cast
    /// to the legacy type (proved at creation; see
    /// [`crate::bare_literal`]).
    #[serde(default)]
    pub forward_takes_literals: bool,
}

impl Pair {
    /// The columns `forward` reads, then those `backward` reads.
    pub fn sources(&self) -> (Vec<TypedColumn>, Vec<TypedColumn>) {
        Group::sources(
            self.group.as_ref(),
            TypedColumn::new(&self.legacy, &self.legacy_type),
            TypedColumn::new(&self.new, &self.new_type),
        )
    }
}

/// Each name once, in first-seen order: the pairs of a split share their
/// legacy column and those of a merge their new one.
pub fn distinct<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// What the migration created, so that a rollback drops exactly that and
/// never a column or index it found already there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    /// New columns added by expand.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Indexes built on the new columns after the backfill.
    #[serde(default)]
    pub indexes: Vec<String>,
    /// Legacy columns re-added by a rollback of contract.
    #[serde(default)]
    pub legacy_columns: Vec<String>,
    /// The guard trigger is installed.
    #[serde(default)]
    pub guard: bool,
}

/// How one DDL step went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DdlReport {
    /// The statements.
    pub sql: String,
    /// Tries made (1 = first try succeeded).
    pub tries: u32,
    /// Wall time including backoff.
    pub millis: u64,
    /// Sessions seen blocking us, per failed try.
    pub blockers: Vec<Vec<i32>>,
    /// Why it stopped, when it did not complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What happened to one index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexReport {
    /// The index acted on.
    pub index: String,
    /// The statement run, if any.
    pub sql: Option<String>,
    /// `created`, `exists`, `dropped`, `moved_constraint` or `skipped`.
    pub outcome: String,
    /// Why it was skipped.
    pub reason: Option<String>,
}

/// What the migration's steps reported, for operators (no decision reads
/// these).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reports {
    /// Expand's DDL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expand: Vec<DdlReport>,
    /// The last backfill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<Progress>,
    /// The last parity pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Progress>,
    /// The last refill of a re-added legacy column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<Progress>,
    /// Indexes rebuilt on the new columns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<IndexReport>,
    /// Legacy indexes retired at contract.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_indexes: Vec<IndexReport>,
    /// Indexes dropped by a rollback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped_indexes: Vec<String>,
}

/// A migration's whole state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationState {
    /// [`STATE_SCHEMA`] when written.
    pub schema: u32,
    /// Where it stands.
    pub stage: Stage,
    /// The pairs, resolved at creation.
    pub pairs: Vec<Pair>,
    /// The last completed parity pass.
    #[serde(default)]
    pub parity: Option<Parity>,
    /// The job slot: the running job, or the last one to show.
    #[serde(default)]
    pub job: Option<Job>,
    /// Writes forwarded without the dual-write rewrite, over every instance.
    #[serde(default)]
    pub unrewritten_writes: u64,
    /// Operator settings of the backfill (pause, throttles).
    #[serde(default)]
    pub settings: Settings,
    /// What it created.
    #[serde(default)]
    pub created: Created,
    /// Step reports.
    #[serde(default)]
    pub reports: Reports,
    /// The last job id handed out.
    #[serde(default)]
    pub jobs_started: u64,
}

impl MigrationState {
    /// A new migration of `pairs`, planned.
    pub fn planned(pairs: Vec<Pair>) -> Self {
        MigrationState {
            schema: STATE_SCHEMA,
            stage: Stage::Planned,
            pairs,
            parity: None,
            job: None,
            unrewritten_writes: 0,
            settings: Settings::default(),
            created: Created::default(),
            reports: Reports::default(),
            jobs_started: 0,
        }
    }

    /// The routing in force.
    pub fn routing(&self) -> Option<Routing> {
        self.stage.routing()
    }

    /// The same state with the bare-literal proof of the pairs over the
    /// `legacy` columns withdrawn: their literals keep the cast from now on.
    pub fn with_literal_proof_withdrawn(&self, legacy: &[String]) -> Self {
        let mut next = self.clone();
        for pair in next.pairs.iter_mut().filter(|p| legacy.contains(&p.legacy)) {
            pair.forward_takes_literals = false;
        }
        next
    }

    /// The running job, if any.
    pub fn running_job(&self) -> Option<&Job> {
        self.job.as_ref().filter(|j| j.is_running())
    }

    /// Whether writes escaped dual-write after the last parity pass began.
    pub fn parity_stale(&self) -> bool {
        self.parity
            .as_ref()
            .is_some_and(|p| self.unrewritten_writes > p.writes_seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reverted_stage_reads_legacy_and_a_contracted_one_never_does() {
        let reverted = Stage::ReadsSwitched {
            reads: SwitchedReads::Reverted,
        };
        assert_eq!(reverted.routing().unwrap().reads, ReadRoute::Legacy);
        assert_eq!(reverted.phase(), Phase::ReadsSwitched);
        for legacy in [LegacyColumn::Dropping, LegacyColumn::Dropped] {
            let r = Stage::Contracted { legacy }.routing().unwrap();
            assert_eq!((r.reads, r.writes), (ReadRoute::New, WriteRoute::New));
        }
        assert_eq!(Stage::Completed.routing(), None);
    }

    #[test]
    fn the_stage_serialises_with_its_phase() {
        let json = serde_json::to_value(Stage::ReadsSwitched {
            reads: SwitchedReads::Reverted,
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"phase": "reads_switched", "reads": "reverted"})
        );
        let back: Stage =
            serde_json::from_value(serde_json::json!({"phase": "dual_write"})).unwrap();
        assert_eq!(back, Stage::DualWrite);
    }
}
