//! Every state reachable by any sequence of verbs (forced or not), reverts,
//! escaped writes and job outcomes, and every verb from each: each has a
//! defined outcome, and none drops a column that routing uses or routes to
//! a column that does not exist.

use std::collections::{HashMap, VecDeque};

use super::events::{self, Finished};
use super::job::{JobKind, Progress};
use super::state::{used_by, Columns, LegacyColumn, MigrationState, Pair, Stage, SwitchedReads};
use super::transition::{decide, Decision, Effect, Refusal};
use super::verb::Verb;
use crate::model::Phase;

const VERBS: [Verb; 8] = [
    Verb::Expand,
    Verb::DualWrite,
    Verb::Backfill,
    Verb::Verify,
    Verb::SwitchReads,
    Verb::Contract,
    Verb::Complete,
    Verb::Rollback,
];

fn pair() -> Pair {
    Pair {
        legacy: "email".into(),
        legacy_type: "text".into(),
        new: "email_address".into(),
        new_type: "text".into(),
        forward: "lower(email)".into(),
        backward: "email_address".into(),
        not_null: true,
        legacy_position: 1,
        default: None,
        group: None,
        forward_takes_literals: false,
    }
}

/// What decisions depend on; states equal under it behave the same.
type Key = (
    Stage,
    Option<(bool, Phase, bool)>,
    Option<JobKind>,
    bool,
    bool,
);

fn key(s: &MigrationState) -> Key {
    (
        s.stage,
        s.parity
            .as_ref()
            .map(|p| (p.mismatches > 0, p.phase, s.parity_stale())),
        s.running_job().map(|j| j.kind),
        s.created.columns.is_empty(),
        s.created.indexes.is_empty(),
    )
}

fn subset(used: Columns, exists: Columns) -> bool {
    (!used.legacy || exists.legacy) && (!used.new || exists.new)
}

/// A step of the control plane carried out, with the columns it drops.
struct Step {
    label: String,
    state: MigrationState,
    drops: Columns,
}

fn none() -> Columns {
    Columns {
        legacy: false,
        new: false,
    }
}

/// The states a decision leads to, including the ones in between that a
/// crash can leave behind.
fn carry_out(s: &MigrationState, verb: Verb, force: bool, d: &Decision) -> Vec<Step> {
    let label = format!("{} force={force}", verb.as_str());
    let s = match d.cancels {
        Some(_) => events::cancel(s),
        None => s.clone(),
    };
    let step = |state, drops| Step {
        label: label.clone(),
        state,
        drops,
    };
    match d.effect {
        Effect::Route | Effect::DropRebuiltIndexes => {
            vec![step(events::arrive(&s, d.next), none())]
        }
        Effect::DropNewColumns => vec![step(
            events::arrive(&s, d.next),
            Columns {
                legacy: false,
                new: !s.created.columns.is_empty(),
            },
        )],
        Effect::StartJob(kind) => {
            let (started, _) = events::start_job(&s, kind, "t", force).expect("slot free");
            vec![step(started, none())]
        }
        Effect::AddNewColumns => {
            let (started, _) = events::start_job(&s, JobKind::Expand, "t", force).unwrap();
            vec![step(started, none())]
        }
        Effect::Contract => {
            let (started, _) = events::start_job(&s, JobKind::Contract, "t", force).unwrap();
            vec![step(started, none())]
        }
        Effect::RestoreLegacy => {
            let (started, _) = events::start_job(&s, JobKind::Rollback, "t", force).unwrap();
            vec![step(started, none())]
        }
    }
}

/// What a running job can lead to: its steps, its end, its failure.
fn job_steps(s: &MigrationState) -> Vec<Step> {
    let Some(job) = s.running_job() else {
        return vec![];
    };
    let (id, kind) = (job.id, job.kind);
    let mut out = vec![Step {
        label: format!("{} fails", kind.as_str()),
        state: events::fail(s, id, "boom").unwrap(),
        drops: none(),
    }];
    let mut push = |label: &str, state: MigrationState, drops| {
        out.push(Step {
            label: label.into(),
            state,
            drops,
        })
    };
    let progress = |mismatches| Progress {
        rows_done: 10,
        rows_changed: mismatches,
        ..Progress::default()
    };
    match kind {
        JobKind::Backfill => push(
            "backfill done",
            events::finish(
                s,
                id,
                Finished::Backfill {
                    progress: progress(3),
                    indexes: vec![],
                },
            )
            .unwrap(),
            none(),
        ),
        JobKind::Verify => {
            for m in [0, 2] {
                let end = Finished::Verify {
                    progress: progress(m),
                };
                push("verify done", events::finish(s, id, end).unwrap(), none());
            }
        }
        JobKind::Restore => {
            let end = Finished::Restore {
                progress: progress(5),
                indexes: vec![],
            };
            push("restore done", events::finish(s, id, end).unwrap(), none());
        }
        JobKind::Expand => {
            let next = events::ddl_done(s, id, Stage::Planned, Stage::Expanded, |s| {
                s.created.columns = vec!["email_address".into()]
            })
            .unwrap();
            push("expand DDL", next, none());
        }
        JobKind::Rollback => {
            // The rollback whose DDL runs as a job re-adds the legacy column.
            let next =
                events::ddl_done(s, id, s.stage, s.stage.previous().unwrap(), |_| {}).unwrap();
            let (restoring, _) = events::start_job(&next, JobKind::Restore, "t", false).unwrap();
            push("rollback DDL, restore starts", restoring, none());
        }
        JobKind::Contract => match s.stage {
            Stage::ReadsSwitched { .. } => {
                if let Ok(next) = events::contract_routed(s, id) {
                    push("contract routes", next, none());
                }
            }
            Stage::Contracted {
                legacy: LegacyColumn::Dropping,
            } => push(
                "legacy dropped",
                events::legacy_dropped(s, id, vec![]).unwrap(),
                Columns {
                    legacy: true,
                    new: false,
                },
            ),
            other => panic!("a contract job in {other:?}"),
        },
    }
    out
}

fn explore() -> (HashMap<Key, MigrationState>, usize) {
    let start = MigrationState::planned(vec![pair()]);
    let mut seen = HashMap::from([(key(&start), start.clone())]);
    let mut queue = VecDeque::from([start]);
    let mut outcomes = 0;
    while let Some(s) = queue.pop_front() {
        let mut next: Vec<Step> = Vec::new();
        for verb in VERBS {
            let plain = decide(&s, verb, false);
            let forced = decide(&s, verb, true);
            outcomes += 2;
            check_refusal(&s, verb, &plain, &forced);
            for (force, d) in [(false, plain), (true, forced)] {
                if let Ok(d) = d {
                    next.extend(carry_out(&s, verb, force, &d));
                }
            }
        }
        match events::revert(&s) {
            Ok(Some(reverted)) => next.push(Step {
                label: "revert".into(),
                state: reverted,
                drops: none(),
            }),
            Ok(None) => {}
            Err(r) => assert!(!r.hint().is_empty()),
        }
        next.push(Step {
            label: "a write escapes".into(),
            state: events::escaped_writes(&s, 1),
            drops: none(),
        });
        next.extend(job_steps(&s));
        for step in next {
            check_step(&s, &step);
            if let std::collections::hash_map::Entry::Vacant(e) = seen.entry(key(&step.state)) {
                e.insert(step.state.clone());
                queue.push_back(step.state);
            }
        }
    }
    (seen, outcomes)
}

fn check_refusal(
    s: &MigrationState,
    verb: Verb,
    plain: &Result<Decision, Refusal>,
    forced: &Result<Decision, Refusal>,
) {
    if let Err(r) = plain {
        assert!(!r.hint().is_empty(), "{verb:?} from {:?}: {r}", s.stage);
        if !matches!(r, Refusal::Gate { .. }) {
            assert_eq!(plain, forced, "force passed a non-gate refusal: {r}");
        }
    }
    if let (Ok(p), Ok(f)) = (plain, forced) {
        assert_eq!(p, f, "force changed an open gate's outcome");
    }
}

fn check_step(from: &MigrationState, step: &Step) {
    let to = &step.state;
    let (before, after) = (from.stage, to.stage);
    assert!(
        subset(used_by(to.routing()), after.columns()),
        "{}: {before:?} -> {after:?} routes to a column that does not exist",
        step.label
    );
    for (dropped, legacy) in [(step.drops.legacy, true), (step.drops.new, false)] {
        if !dropped {
            continue;
        }
        for routing in [from.routing(), to.routing()] {
            let used = used_by(routing);
            let uses = if legacy { used.legacy } else { used.new };
            assert!(
                !uses,
                "{}: {before:?} -> {after:?} drops a column {routing:?} uses",
                step.label
            );
        }
    }
}

#[test]
fn every_reachable_state_and_verb_is_safe() {
    let (states, outcomes) = explore();
    // Every stage is reachable, with and without a job.
    for stage in [
        Stage::Planned,
        Stage::Completed,
        Stage::ReadsSwitched {
            reads: SwitchedReads::Reverted,
        },
        Stage::ReadsSwitched {
            reads: SwitchedReads::Restoring,
        },
        Stage::Contracted {
            legacy: LegacyColumn::Dropping,
        },
    ] {
        assert!(states.keys().any(|k| k.0 == stage), "{stage:?} unreachable");
    }
    assert!(states.len() > 100, "only {} states", states.len());
    assert!(outcomes > 1000, "only {outcomes} outcomes");
}

/// The sequence from issue 10: revert after the switch, verify, contract.
#[test]
fn contract_after_a_revert_is_refused_even_forced() {
    let mut s = MigrationState::planned(vec![pair()]);
    s.stage = Stage::ReadsSwitched {
        reads: SwitchedReads::New,
    };
    s = events::revert(&s).unwrap().unwrap();
    let (running, id) = events::start_job(&s, JobKind::Verify, "ops", false).unwrap();
    let end = Finished::Verify {
        progress: Progress::default(),
    };
    s = events::finish(&running, id, end).unwrap();
    assert_eq!(
        s.stage,
        Stage::ReadsSwitched {
            reads: SwitchedReads::Reverted
        }
    );
    for force in [false, true] {
        let refusal = decide(&s, Verb::Contract, force).unwrap_err();
        assert!(
            refusal.to_string().contains("switch-reads first"),
            "{refusal}"
        );
    }
    // switch-reads puts reads back; then contract passes its gate.
    let d = decide(&s, Verb::SwitchReads, false).unwrap();
    s = events::arrive(&s, d.next);
    assert_eq!(
        decide(&s, Verb::Contract, false).unwrap().effect,
        Effect::Contract
    );
}

#[test]
fn a_revert_while_contract_prepares_stops_its_routing_step() {
    let mut s = MigrationState::planned(vec![pair()]);
    s.stage = Stage::ReadsSwitched {
        reads: SwitchedReads::New,
    };
    let (running, id) = events::start_job(&s, JobKind::Contract, "ops", false).unwrap();
    let reverted = events::revert(&running).unwrap().unwrap();
    let err = events::contract_routed(&reverted, id).unwrap_err();
    assert!(err.0.contains("reverted"), "{err}");
}

#[test]
fn revert_refuses_where_the_legacy_column_is_gone_or_refilling() {
    let mut s = MigrationState::planned(vec![pair()]);
    for (stage, hint) in [
        (
            Stage::Contracted {
                legacy: LegacyColumn::Dropped,
            },
            "rollback",
        ),
        (
            Stage::ReadsSwitched {
                reads: SwitchedReads::Restoring,
            },
            "restore",
        ),
    ] {
        s.stage = stage;
        let r = events::revert(&s).unwrap_err();
        assert!(r.hint().contains(hint), "{r}");
    }
    s.stage = Stage::Verified;
    assert_eq!(events::revert(&s), Ok(None));
}

#[test]
fn withdrawing_the_literal_proof_touches_only_the_named_pairs() {
    let proved = |legacy: &str| Pair {
        legacy: legacy.into(),
        forward_takes_literals: true,
        ..pair()
    };
    let state = MigrationState::planned(vec![proved("email"), proved("name")]);
    let next = state.with_literal_proof_withdrawn(&["email".to_string()]);
    let flags: Vec<bool> = next
        .pairs
        .iter()
        .map(|p| p.forward_takes_literals)
        .collect();
    assert_eq!(flags, [false, true]);
    assert_eq!(next.stage, state.stage);
}
