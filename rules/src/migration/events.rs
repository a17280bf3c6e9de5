//! State changes that are not verb decisions: a decision carried out, a
//! job's life (start, progress, end), the steps of contract, a revert, and
//! writes that escaped dual-write. Each checks that the state is still the
//! one it was meant for (another actor may have moved it first) and returns
//! the next state or says why not.

use super::job::{Job, JobKind, JobStatus, Progress, Settings};
use super::state::{IndexReport, LegacyColumn, MigrationState, Parity, Stage, SwitchedReads};
use super::transition::Refusal;

/// A change that no longer applies: another actor moved the state first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Moved(pub String);

/// The state once a decision's effect is done: the stage moves, and what
/// the move undoes is forgotten (a rollback below `verified` forgets the
/// parity pass, below `backfilled` the rebuilt indexes, below `expanded`
/// the created columns).
pub fn arrive(state: &MigrationState, next: Stage) -> MigrationState {
    let mut s = state.clone();
    let from = state.stage;
    s.stage = next;
    match (from, next) {
        (Stage::Verified, Stage::Backfilled) => s.parity = None,
        (Stage::Backfilled, Stage::DualWrite) => {
            s.parity = None;
            s.created.indexes.clear();
            s.reports.indexes.clear();
        }
        (Stage::Expanded, Stage::Planned) => s.created.columns.clear(),
        (Stage::Contracted { .. }, Stage::ReadsSwitched { .. }) => s.parity = None,
        _ => {}
    }
    s
}

/// Takes the job slot for `kind`; returns the state and the job's id.
pub fn start_job(
    state: &MigrationState,
    kind: JobKind,
    actor: &str,
    force: bool,
) -> Result<(MigrationState, u64), Refusal> {
    if let Some(job) = state.running_job() {
        return Err(Refusal::Busy {
            verb: kind.as_str(),
            job: job.kind,
            hint: "wait for it; GET the migration follows it",
        });
    }
    let mut s = state.clone();
    s.jobs_started += 1;
    let id = s.jobs_started;
    s.job = Some(Job {
        id,
        kind,
        state: if kind == JobKind::Backfill && s.settings.paused {
            JobStatus::Paused
        } else {
            JobStatus::Running
        },
        actor: actor.to_owned(),
        force,
        writes_seen: s.unrewritten_writes,
        progress: Progress::default(),
        error: None,
    });
    Ok((s, id))
}

fn running(state: &MigrationState, id: u64) -> Result<&Job, Moved> {
    match state.running_job() {
        Some(job) if job.id == id => Ok(job),
        Some(job) => Err(Moved(format!(
            "job {id} was replaced by a {} job",
            job.kind.as_str()
        ))),
        None => Err(Moved(format!("job {id} is no longer running"))),
    }
}

/// Records a running job's progress.
pub fn progress(
    state: &MigrationState,
    id: u64,
    progress: &Progress,
    paused: bool,
) -> Result<MigrationState, Moved> {
    running(state, id)?;
    let mut s = state.clone();
    if let Some(job) = s.job.as_mut() {
        job.progress = progress.clone();
        job.state = if paused {
            JobStatus::Paused
        } else {
            JobStatus::Running
        };
    }
    Ok(s)
}

/// How a long job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    /// The backfill walked the table; indexes were rebuilt.
    Backfill {
        /// Its progress at the end.
        progress: Progress,
        /// What happened to each index.
        indexes: Vec<IndexReport>,
    },
    /// A parity pass.
    Verify {
        /// Its progress; `rows_changed` counts mismatches.
        progress: Progress,
    },
    /// The re-added legacy column is refilled.
    Restore {
        /// Its progress at the end.
        progress: Progress,
        /// What happened to each index.
        indexes: Vec<IndexReport>,
    },
}

/// A long job's end: the stage it completes into, and its report.
pub fn finish(state: &MigrationState, id: u64, end: Finished) -> Result<MigrationState, Moved> {
    let job = running(state, id)?.clone();
    let mut s = state.clone();
    let progress = match end {
        Finished::Backfill { progress, indexes } => {
            s.stage = match s.stage {
                Stage::DualWrite | Stage::Backfilled | Stage::Verified => Stage::Backfilled,
                other => other,
            };
            for r in &indexes {
                if r.outcome == "created" && !s.created.indexes.contains(&r.index) {
                    s.created.indexes.push(r.index.clone());
                }
            }
            s.reports.indexes = indexes;
            s.reports.backfill = Some(progress.clone());
            progress
        }
        Finished::Verify { progress } => {
            let clean = progress.rows_changed == 0;
            if clean && s.stage == Stage::Backfilled {
                s.stage = Stage::Verified;
            }
            s.parity = Some(Parity {
                mismatches: progress.rows_changed,
                phase: s.stage.phase(),
                writes_seen: job.writes_seen,
            });
            s.reports.verify = Some(progress.clone());
            progress
        }
        Finished::Restore { progress, indexes } => {
            if s.stage
                == (Stage::ReadsSwitched {
                    reads: SwitchedReads::Restoring,
                })
            {
                s.stage = Stage::ReadsSwitched {
                    reads: SwitchedReads::New,
                };
            }
            s.reports.restore = Some(progress.clone());
            s.reports.indexes.extend(indexes);
            progress
        }
    };
    s.job = Some(Job {
        state: JobStatus::Done,
        progress,
        ..job
    });
    Ok(s)
}

/// A job that stopped with an error; the operator issues the verb again.
pub fn fail(state: &MigrationState, id: u64, error: &str) -> Result<MigrationState, Moved> {
    running(state, id)?;
    let mut s = state.clone();
    if let Some(job) = s.job.as_mut() {
        job.state = JobStatus::Failed;
        job.error = Some(error.to_owned());
    }
    Ok(s)
}

/// Cancels the running job (a rollback undoes its work).
pub fn cancel(state: &MigrationState) -> MigrationState {
    let mut s = state.clone();
    if let Some(job) = s.job.as_mut().filter(|j| j.is_running()) {
        job.state = JobStatus::Cancelled;
    }
    s
}

/// A DDL verb's effect committed: the stage moves to `next` from `from`
/// (checked, so that a DDL transaction whose state moved meanwhile rolls
/// back), and `record` notes what it created or dropped.
pub fn ddl_done(
    state: &MigrationState,
    id: u64,
    from: Stage,
    next: Stage,
    record: impl FnOnce(&mut MigrationState),
) -> Result<MigrationState, Moved> {
    running(state, id)?;
    if state.stage != from {
        return Err(Moved(format!(
            "the migration moved to {:?} meanwhile",
            state.stage.phase()
        )));
    }
    let mut s = arrive(state, next);
    record(&mut s);
    if let Some(job) = s.job.as_mut() {
        job.state = JobStatus::Done;
        job.progress.throttled = None;
    }
    Ok(s)
}

/// Contract's routing step: reads and writes go to the new column only,
/// and the legacy column's drop is pending. Refused if reads were reverted
/// (or anything else moved) while contract prepared.
pub fn contract_routed(state: &MigrationState, id: u64) -> Result<MigrationState, Moved> {
    running(state, id)?;
    match state.stage {
        Stage::ReadsSwitched {
            reads: SwitchedReads::New,
        } => {
            let mut s = state.clone();
            s.stage = Stage::Contracted {
                legacy: LegacyColumn::Dropping,
            };
            Ok(s)
        }
        Stage::ReadsSwitched {
            reads: SwitchedReads::Reverted,
        } => Err(Moved(
            "reads were reverted to the legacy column while contract prepared; switch-reads, then contract again".into(),
        )),
        other => Err(Moved(format!(
            "the migration moved to {:?} while contract prepared",
            other.phase()
        ))),
    }
}

/// Contract's last step: the legacy column is dropped.
pub fn legacy_dropped(
    state: &MigrationState,
    id: u64,
    retired: Vec<IndexReport>,
) -> Result<MigrationState, Moved> {
    ddl_done(
        state,
        id,
        Stage::Contracted {
            legacy: LegacyColumn::Dropping,
        },
        Stage::Contracted {
            legacy: LegacyColumn::Dropped,
        },
        |s| s.reports.retired_indexes = retired,
    )
}

/// An incident revert: reads go back to the legacy column where it exists
/// and is in step. `Ok(None)`: reads already are on it.
pub fn revert(state: &MigrationState) -> Result<Option<MigrationState>, Refusal> {
    let unsafe_ = |reason, hint| Refusal::Unsafe {
        verb: "revert",
        reason,
        hint,
    };
    match state.stage {
        Stage::ReadsSwitched {
            reads: SwitchedReads::New,
        } => {
            let mut s = state.clone();
            s.stage = Stage::ReadsSwitched {
                reads: SwitchedReads::Reverted,
            };
            Ok(Some(s))
        }
        Stage::ReadsSwitched {
            reads: SwitchedReads::Restoring,
        } => Err(unsafe_(
            "the legacy column is being refilled after a rollback of contract; reads stay on the new column until that is done",
            "wait for the restore job to finish",
        )),
        Stage::Contracted { .. } => Err(unsafe_(
            "the legacy column is dropped; reads cannot go back to it",
            "POST rollback to re-add and refill it (reads move back once it is refilled)",
        )),
        Stage::Completed => Err(unsafe_(
            "the migration is completed and its rules are retired",
            "start a new migration to move back",
        )),
        _ => Ok(None),
    }
}

/// Writes forwarded without the dual-write rewrite.
pub fn escaped_writes(state: &MigrationState, n: u64) -> MigrationState {
    let mut s = state.clone();
    s.unrewritten_writes = s.unrewritten_writes.saturating_add(n);
    s
}

/// New operator settings for the backfill; a running backfill shows
/// whether it is paused from its next chunk on.
pub fn set_settings(state: &MigrationState, settings: Settings) -> MigrationState {
    let mut s = state.clone();
    s.settings = settings;
    s
}
