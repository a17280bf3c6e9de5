//! Phase transitions as functions: the next phase, or a typed refusal that
//! the API answers with 409. Gates look at parity results; `force` passes a
//! gate (never a wrong phase) and is reported so the caller can audit it.

use serde::{Deserialize, Serialize};

use super::verb::Verb;
use crate::model::Phase;

/// A completed parity pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parity {
    /// Rows where new IS DISTINCT FROM forward(legacy).
    pub mismatches: u64,
    /// The phase the migration was in when the pass completed.
    pub phase: Phase,
    /// Unrewritten writes were seen after this pass started.
    #[serde(default)]
    pub stale: bool,
    /// The migration's count of unrewritten writes when the pass started;
    /// a higher count later makes the pass stale.
    #[serde(default)]
    pub writes_seen: u64,
}

impl Parity {
    fn clean(&self) -> bool {
        self.mismatches == 0 && !self.stale
    }
}

/// What a verb leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The phase after the step (for `backfill` and `verify`, after the job
    /// completes).
    pub next: Phase,
    /// A gate was overridden with `force`.
    pub forced: Option<String>,
}

/// Why a step is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The verb does not apply in this phase.
    #[error("cannot {verb} a migration in phase {phase:?}; {hint}")]
    WrongPhase {
        /// The verb.
        verb: &'static str,
        /// The current phase.
        phase: Phase,
        /// What would be valid.
        hint: &'static str,
    },
    /// A gate is closed and `force` was not given.
    #[error("gate closed for {verb}: {reason} (use ?force=true to override; it is audited)")]
    Gate {
        /// The verb.
        verb: &'static str,
        /// Why the gate is closed.
        reason: String,
    },
}

/// The next phase for `verb` from `phase`, given the last parity pass.
pub fn step(
    phase: Phase,
    verb: Verb,
    parity: Option<&Parity>,
    force: bool,
) -> Result<Outcome, TransitionError> {
    use Phase as P;
    let wrong = |hint| TransitionError::WrongPhase {
        verb: verb.as_str(),
        phase,
        hint,
    };
    let ok = |next| Ok(Outcome { next, forced: None });
    let gate = |reason: String, next| {
        if force {
            Ok(Outcome {
                next,
                forced: Some(reason),
            })
        } else {
            Err(TransitionError::Gate {
                verb: verb.as_str(),
                reason,
            })
        }
    };
    match (verb, phase) {
        (Verb::Expand, P::Planned) => ok(P::Expanded),
        (Verb::Expand, _) => Err(wrong("expand applies to a planned migration")),
        (Verb::DualWrite, P::Expanded) => ok(P::DualWrite),
        (Verb::DualWrite, _) => Err(wrong("dual-write follows expand")),
        (Verb::Backfill, P::DualWrite | P::Backfilled | P::Verified) => ok(P::Backfilled),
        (Verb::Backfill, _) => Err(wrong("backfill needs dual-write routing first")),
        (Verb::Verify, P::Backfilled | P::Verified) => ok(P::Verified),
        (Verb::Verify, P::ReadsSwitched) => ok(P::ReadsSwitched),
        (Verb::Verify, _) => Err(wrong("verify needs a completed backfill")),
        (Verb::SwitchReads, P::Verified | P::Backfilled) => match parity {
            Some(p) if p.clean() => ok(P::ReadsSwitched),
            Some(p) if p.stale => gate(
                "writes escaped dual-write since the last parity pass; backfill and verify again"
                    .into(),
                P::ReadsSwitched,
            ),
            Some(p) => gate(
                format!(
                    "the last parity pass found {} mismatched rows",
                    p.mismatches
                ),
                P::ReadsSwitched,
            ),
            None => gate("no parity pass has completed".into(), P::ReadsSwitched),
        },
        (Verb::SwitchReads, _) => Err(wrong("switch-reads follows a backfill and a clean verify")),
        (Verb::Contract, P::ReadsSwitched) => match parity {
            Some(p) if p.clean() && p.phase == P::ReadsSwitched => ok(P::Contracted),
            Some(p) if p.phase != P::ReadsSwitched => gate(
                "contract needs a parity pass completed after reads switched".into(),
                P::Contracted,
            ),
            Some(p) => gate(
                format!(
                    "the last parity pass found {} mismatched rows",
                    p.mismatches
                ),
                P::Contracted,
            ),
            None => gate("no parity pass has completed".into(), P::Contracted),
        },
        (Verb::Contract, _) => Err(wrong("contract follows switch-reads")),
        (Verb::Complete, P::Contracted) => ok(P::Completed),
        (Verb::Complete, _) => Err(wrong("complete follows contract")),
        (Verb::Rollback, P::Planned) => Err(wrong("a planned migration has nothing to roll back")),
        (Verb::Rollback, P::Completed) => Err(wrong("a completed migration's rules are retired")),
        (Verb::Rollback, p) => ok(previous(p)),
    }
}

/// The phase one step back.
pub fn previous(phase: Phase) -> Phase {
    use Phase as P;
    match phase {
        P::Planned | P::Expanded => P::Planned,
        P::DualWrite => P::Expanded,
        P::Backfilled => P::DualWrite,
        P::Verified => P::Backfilled,
        P::ReadsSwitched => P::Verified,
        P::Contracted => P::ReadsSwitched,
        P::Completed => P::Contracted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parity(mismatches: u64, phase: Phase) -> Parity {
        Parity {
            mismatches,
            phase,
            stale: false,
            writes_seen: 0,
        }
    }

    #[test]
    fn the_happy_path_walks_every_phase() {
        let clean = parity(0, Phase::Verified);
        let after_switch = parity(0, Phase::ReadsSwitched);
        let mut phase = Phase::Planned;
        for (verb, p) in [
            (Verb::Expand, None),
            (Verb::DualWrite, None),
            (Verb::Backfill, None),
            (Verb::Verify, None),
            (Verb::SwitchReads, Some(&clean)),
            (Verb::Contract, Some(&after_switch)),
            (Verb::Complete, None),
        ] {
            phase = step(phase, verb, p, false).unwrap().next;
        }
        assert_eq!(phase, Phase::Completed);
    }

    #[test]
    fn gates_refuse_without_force_and_report_when_forced() {
        let err = step(Phase::Backfilled, Verb::SwitchReads, None, false).unwrap_err();
        assert!(matches!(err, TransitionError::Gate { .. }));
        let dirty = parity(3, Phase::Verified);
        let out = step(Phase::Verified, Verb::SwitchReads, Some(&dirty), true).unwrap();
        assert_eq!(out.next, Phase::ReadsSwitched);
        assert!(out.forced.unwrap().contains("3 mismatched"));
        // A clean pass from before the switch does not open the contract gate.
        let old = parity(0, Phase::Verified);
        assert!(step(Phase::ReadsSwitched, Verb::Contract, Some(&old), false).is_err());
        let stale = Parity {
            stale: true,
            ..parity(0, Phase::Verified)
        };
        assert!(step(Phase::Verified, Verb::SwitchReads, Some(&stale), false).is_err());
    }

    #[test]
    fn wrong_phases_are_refused_even_with_force() {
        assert!(matches!(
            step(Phase::Planned, Verb::Contract, None, true),
            Err(TransitionError::WrongPhase { .. })
        ));
        assert!(step(Phase::Completed, Verb::Rollback, None, true).is_err());
        assert_eq!(
            step(Phase::Contracted, Verb::Rollback, None, false)
                .unwrap()
                .next,
            Phase::ReadsSwitched
        );
        assert_eq!(Verb::parse("switch-reads"), Some(Verb::SwitchReads));
        assert_eq!(Verb::parse("nope"), None);
    }
}
