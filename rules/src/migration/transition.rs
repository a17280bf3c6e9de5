//! Verbs as functions of the state: what a verb does from where the
//! migration stands, or a typed refusal that says what to do instead (the
//! API answers it with 409). Gates look at the parity record; `force`
//! passes a gate and is reported for the audit log, but never a wrong
//! phase, a busy job slot, or a step that would break applications.

use super::job::JobKind;
use super::state::{LegacyColumn, MigrationState, Stage, SwitchedReads};
use super::verb::Verb;
use crate::model::Phase;

/// What the control plane must do for a verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Only the stage (and so the routing) changes.
    Route,
    /// Add the new columns, then move to the next stage.
    AddNewColumns,
    /// Drop the new columns the migration created.
    DropNewColumns,
    /// Drop the indexes the backfill built on the new columns.
    DropRebuiltIndexes,
    /// Start a job; the stage moves when it completes.
    StartJob(JobKind),
    /// Contract: NOT NULL, route to the new column only, acknowledge, drop
    /// the legacy column. Also finishes a contract whose drop is pending.
    Contract,
    /// Re-add the legacy column, route writes to both columns, refill it.
    RestoreLegacy,
}

/// A verb's decided outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What to do.
    pub effect: Effect,
    /// The stage once the effect is done (a job's completion may refine it).
    pub next: Stage,
    /// A gate overridden with `force`, to audit.
    pub forced: Option<String>,
    /// A running job the verb cancels first (a rollback undoes its work).
    pub cancels: Option<JobKind>,
}

/// Why a verb is refused. Each says what to do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The verb does not apply where the migration stands.
    #[error("cannot {verb} a migration in phase {phase:?}: {hint}")]
    WrongPhase {
        /// The verb.
        verb: &'static str,
        /// Where the migration stands.
        phase: Phase,
        /// What to do instead.
        hint: &'static str,
    },
    /// A gate is closed; `force` passes it.
    #[error(
        "gate closed for {verb}: {reason}; {hint} (or ?force=true to override; it is audited)"
    )]
    Gate {
        /// The verb.
        verb: &'static str,
        /// Why.
        reason: String,
        /// What to do instead.
        hint: &'static str,
    },
    /// The verb would break applications; `force` does not pass.
    #[error("cannot {verb}: {reason}; {hint}")]
    Unsafe {
        /// The verb.
        verb: &'static str,
        /// Why.
        reason: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// A job holds the slot.
    #[error("cannot {verb}: a {} job is running; {hint}", job.as_str())]
    Busy {
        /// The verb.
        verb: &'static str,
        /// The running job.
        job: JobKind,
        /// What to do instead.
        hint: &'static str,
    },
}

impl Refusal {
    /// What the operator should do next.
    pub fn hint(&self) -> &str {
        match self {
            Refusal::WrongPhase { hint, .. }
            | Refusal::Gate { hint, .. }
            | Refusal::Unsafe { hint, .. }
            | Refusal::Busy { hint, .. } => hint,
        }
    }
}

/// What `verb` does from `state`.
pub fn decide(state: &MigrationState, verb: Verb, force: bool) -> Result<Decision, Refusal> {
    let cancels = match state.running_job() {
        None => None,
        Some(job) if verb == Verb::Rollback && cancellable(job.kind) => Some(job.kind),
        Some(job) => {
            return Err(Refusal::Busy {
                verb: verb.as_str(),
                job: job.kind,
                hint: busy_hint(job.kind),
            })
        }
    };
    let mut d = decide_idle(state, verb, force)?;
    d.cancels = cancels;
    Ok(d)
}

/// A rollback cancels long work it undoes anyway, and a contract (whose
/// every column change checks, in its own transaction, that it still runs).
fn cancellable(kind: JobKind) -> bool {
    matches!(
        kind,
        JobKind::Backfill | JobKind::Verify | JobKind::Contract
    )
}

fn busy_hint(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Backfill | JobKind::Verify => {
            "wait for it (GET the migration to follow it), or roll back to cancel it"
        }
        JobKind::Restore => "wait for the legacy column's refill to finish",
        JobKind::Expand | JobKind::Rollback => {
            "wait for its DDL (GET /v1/blockers shows what it waits for)"
        }
        JobKind::Contract => {
            "wait for it (GET the migration shows what it waits for), or roll back to cancel it"
        }
    }
}

fn decide_idle(state: &MigrationState, verb: Verb, force: bool) -> Result<Decision, Refusal> {
    use Stage as S;
    let stage = state.stage;
    let v = verb.as_str();
    let wrong = |hint| Refusal::WrongPhase {
        verb: v,
        phase: stage.phase(),
        hint,
    };
    let unsafe_ = |reason, hint| Refusal::Unsafe {
        verb: v,
        reason,
        hint,
    };
    let go = |effect, next| {
        Ok(Decision {
            effect,
            next,
            forced: None,
            cancels: None,
        })
    };
    let gated = |gate: Result<(), (String, &'static str)>, effect, next| match gate {
        Ok(()) => go(effect, next),
        Err((reason, _)) if force => Ok(Decision {
            effect,
            next,
            forced: Some(reason),
            cancels: None,
        }),
        Err((reason, hint)) => Err(Refusal::Gate {
            verb: v,
            reason,
            hint,
        }),
    };
    const RESTORING: &str =
        "the legacy column is being refilled after a rollback of contract, and reads must stay on the new column until that is done";
    const WAIT_RESTORE: &str = "wait for the restore job to finish";
    match (verb, stage) {
        (Verb::Expand, S::Planned) => go(Effect::AddNewColumns, S::Expanded),
        (Verb::Expand, _) => Err(wrong("expand applies to a planned migration")),

        (Verb::DualWrite, S::Expanded) => go(Effect::Route, S::DualWrite),
        (Verb::DualWrite, S::Planned) => Err(wrong("expand first: the new column must exist")),
        (Verb::DualWrite, _) => Err(wrong("writes are already dual (or past it)")),

        (Verb::Backfill, S::DualWrite | S::Backfilled | S::Verified) => {
            go(Effect::StartJob(JobKind::Backfill), S::Backfilled)
        }
        (
            Verb::Backfill,
            S::ReadsSwitched {
                reads: SwitchedReads::Reverted,
            },
        ) => go(Effect::StartJob(JobKind::Backfill), stage),
        (Verb::Backfill, S::Planned | S::Expanded) => Err(wrong(
            "dual-write first, so that new writes fill the new column",
        )),
        (Verb::Backfill, _) => Err(wrong(
            "the new column is the source of reads now; revert first if it needs another backfill",
        )),

        (Verb::Verify, S::Backfilled | S::Verified) => {
            go(Effect::StartJob(JobKind::Verify), S::Verified)
        }
        (
            Verb::Verify,
            S::ReadsSwitched {
                reads: SwitchedReads::New | SwitchedReads::Reverted,
            },
        ) => go(Effect::StartJob(JobKind::Verify), stage),
        (
            Verb::Verify,
            S::ReadsSwitched {
                reads: SwitchedReads::Restoring,
            },
        ) => Err(unsafe_(RESTORING, WAIT_RESTORE)),
        (Verb::Verify, S::Planned | S::Expanded | S::DualWrite) => {
            Err(wrong("backfill first; verify compares every row"))
        }
        (Verb::Verify, _) => Err(wrong("the legacy column is dropped; nothing to compare")),

        (Verb::SwitchReads, S::Backfilled | S::Verified) => gated(
            switch_gate(state),
            Effect::Route,
            S::ReadsSwitched {
                reads: SwitchedReads::New,
            },
        ),
        (
            Verb::SwitchReads,
            S::ReadsSwitched {
                reads: SwitchedReads::Reverted,
            },
        ) => gated(
            switch_gate(state),
            Effect::Route,
            S::ReadsSwitched {
                reads: SwitchedReads::New,
            },
        ),
        (
            Verb::SwitchReads,
            S::ReadsSwitched {
                reads: SwitchedReads::Restoring,
            },
        ) => Err(unsafe_(RESTORING, WAIT_RESTORE)),
        (
            Verb::SwitchReads,
            S::ReadsSwitched {
                reads: SwitchedReads::New,
            },
        ) => Err(wrong("reads are already on the new column")),
        (Verb::SwitchReads, S::Contracted { .. } | S::Completed) => {
            Err(wrong("reads are already on the new column"))
        }
        (Verb::SwitchReads, _) => Err(wrong("backfill and verify first")),

        (
            Verb::Contract,
            S::ReadsSwitched {
                reads: SwitchedReads::New,
            },
        ) => gated(
            contract_gate(state),
            Effect::Contract,
            S::Contracted {
                legacy: LegacyColumn::Dropped,
            },
        ),
        (
            Verb::Contract,
            S::ReadsSwitched {
                reads: SwitchedReads::Reverted,
            },
        ) => Err(unsafe_(
            "reads are reverted to the legacy column, which contract would drop",
            "switch-reads first (after a verify if writes escaped meanwhile)",
        )),
        (
            Verb::Contract,
            S::ReadsSwitched {
                reads: SwitchedReads::Restoring,
            },
        ) => Err(unsafe_(RESTORING, WAIT_RESTORE)),
        (
            Verb::Contract,
            S::Contracted {
                legacy: LegacyColumn::Dropping,
            },
        ) => go(
            Effect::Contract,
            S::Contracted {
                legacy: LegacyColumn::Dropped,
            },
        ),
        (Verb::Contract, S::Contracted { .. } | S::Completed) => {
            Err(wrong("the legacy column is already dropped"))
        }
        (Verb::Contract, _) => Err(wrong("switch-reads first (after a clean verify)")),

        (
            Verb::Complete,
            S::Contracted {
                legacy: LegacyColumn::Dropped,
            },
        ) => go(Effect::Route, S::Completed),
        (
            Verb::Complete,
            S::Contracted {
                legacy: LegacyColumn::Dropping,
            },
        ) => Err(unsafe_(
            "the legacy column's drop has not finished",
            "POST contract again to finish it",
        )),
        (Verb::Complete, S::Completed) => Err(wrong("the migration is already completed")),
        (Verb::Complete, _) => Err(wrong("contract first")),

        (Verb::Rollback, S::Planned) => Err(wrong("a planned migration has nothing to roll back")),
        (Verb::Rollback, S::Completed) => Err(wrong(
            "a completed migration's rules are retired; start a new migration to move back",
        )),
        (
            Verb::Rollback,
            S::ReadsSwitched {
                reads: SwitchedReads::Restoring,
            },
        ) => Err(unsafe_(RESTORING, WAIT_RESTORE)),
        (Verb::Rollback, stage) => {
            let next = stage.previous().expect("every other stage has one");
            let effect = match stage {
                S::Expanded => Effect::DropNewColumns,
                S::Backfilled => Effect::DropRebuiltIndexes,
                S::Contracted { .. } => Effect::RestoreLegacy,
                _ => Effect::Route,
            };
            go(effect, next)
        }
    }
}

/// Parity must be clean and fresh before reads move to the new column.
fn switch_gate(state: &MigrationState) -> Result<(), (String, &'static str)> {
    const AGAIN: &str = "backfill and verify again";
    match &state.parity {
        None => Err(("no parity pass has completed".into(), "verify first")),
        Some(_) if state.parity_stale() => Err((
            "writes escaped dual-write since the last parity pass began".into(),
            AGAIN,
        )),
        Some(p) if p.mismatches > 0 => Err((
            format!(
                "the last parity pass found {} mismatched rows",
                p.mismatches
            ),
            AGAIN,
        )),
        Some(_) => Ok(()),
    }
}

/// Contract needs a clean, fresh pass completed after reads switched.
fn contract_gate(state: &MigrationState) -> Result<(), (String, &'static str)> {
    switch_gate(state)?;
    match &state.parity {
        Some(p) if p.phase != Phase::ReadsSwitched => Err((
            "contract needs a parity pass completed after reads switched".into(),
            "verify again",
        )),
        _ => Ok(()),
    }
}
