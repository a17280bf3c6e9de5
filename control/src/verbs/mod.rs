//! The operator's verbs. Each decides from the migration's state with the
//! pure gates of `switchyard_rules::migration` and carries out the effect:
//! routing flips (`route.rs`), jobs (`start.rs`), and the DDL verbs, which
//! run on the job holder (`expand.rs`, `contract.rs`, `rollback.rs`,
//! relayed by `relay.rs`). `revert.rs` and `settings.rs` are the incident
//! and operator controls beside the phases.

mod contract;
mod expand;
mod relay;
mod revert;
mod rollback;
mod route;
mod settings;
mod start;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use switchyard_rules::migration::{JobKind, Stage, Verb};
use tokio_postgres::{Client, GenericClient};

use crate::ddl::{self, DdlFailure, Record, Step};
use crate::engine::Engine;
use crate::error::ControlError;
use crate::jobs::Reporter;
use crate::store::{self, Event};
use switchyard_rules::migration::DdlReport;

pub(crate) use contract::run as run_contract;
pub(crate) use expand::run as run_expand;
pub(crate) use rollback::run as run_rollback;

/// How long a DDL verb may take before the call answers 202.
pub(crate) const ANSWER_WITHIN: Duration = Duration::from_secs(1);

impl Engine {
    /// Runs `verb` on migration `name`. Routing verbs answer when the new
    /// rules are published; backfill and verify answer 202 at once; expand,
    /// contract and rollback run on the job holder and answer 202 when
    /// their DDL still waits after [`ANSWER_WITHIN`].
    pub async fn apply(
        self: &Arc<Self>,
        name: &str,
        verb: Verb,
        force: bool,
        actor: &str,
    ) -> Result<Value, ControlError> {
        // Our own unrewritten writes count now, not at the next heartbeat.
        self.flush_unrewritten().await?;
        match verb {
            Verb::DualWrite | Verb::SwitchReads | Verb::Complete => {
                self.route(name, verb, force, actor).await
            }
            Verb::Backfill | Verb::Verify => self.start(name, verb, force, actor).await,
            Verb::Expand | Verb::Contract | Verb::Rollback => {
                if self.fleet.is_holder() {
                    self.ddl_verb(name, verb, force, actor).await
                } else {
                    self.relay(name, verb, force, actor).await
                }
            }
        }
    }

    /// Runs a DDL verb here (on the holder): takes the job slot, starts the
    /// job task, and answers with its outcome or, while it waits, 202.
    async fn ddl_verb(
        self: &Arc<Self>,
        name: &str,
        verb: Verb,
        force: bool,
        actor: &str,
    ) -> Result<Value, ControlError> {
        let kind = match verb {
            Verb::Expand => JobKind::Expand,
            Verb::Contract => JobKind::Contract,
            _ => JobKind::Rollback,
        };
        let mut client = self.db.session().await?;
        let tx = client.transaction().await?;
        let (m, (decision, id)) = store::update_in(&tx, name, |m| {
            let d = switchyard_rules::migration::decide(&m.state, verb, force)?;
            let state = match d.cancels {
                Some(_) => switchyard_rules::migration::events::cancel(&m.state),
                None => m.state.clone(),
            };
            let (state, id) =
                switchyard_rules::migration::events::start_job(&state, kind, actor, force)?;
            Ok((state, (d, id)))
        })
        .await?;
        if let Some(reason) = &decision.forced {
            audit_force(&tx, name, verb, reason, actor).await?;
        }
        tx.commit().await?;
        drop(client);
        if decision.cancels.is_some() {
            self.runner.abort(name);
        }
        let job = m.state.job.clone().expect("the job just started");
        let mut ended = self.spawn_job(m, job);
        let outcome = tokio::time::timeout(ANSWER_WITHIN, async {
            match ended.wait_for(|e| e.is_some()).await {
                Ok(e) => e.clone(),
                Err(_) => None,
            }
        })
        .await;
        match outcome {
            // A job that follows (the refill after a rollback of contract)
            // makes it a 202.
            Ok(Some(result)) => match &*result {
                Ok(()) => {
                    let detail = self.detail(name).await?;
                    if detail["job"]["state"] == "running" {
                        accepted(detail)
                    } else {
                        Ok(detail)
                    }
                }
                Err(e) => Err(e.duplicate()),
            },
            // Stopped here (the job lock was lost, or a rollback replaced
            // it): the record says what becomes of it.
            Ok(None) => Err(ControlError::Unavailable(format!(
                "job {id} of {name} stopped on this instance before it ended; GET the migration to follow it"
            ))),
            Err(_) => accepted(self.detail(name).await?),
        }
    }

    /// One DDL step with the migration's lock policy, audited; `record`
    /// commits with it (see [`ddl::run`]).
    pub(crate) async fn ddl_step(
        &self,
        client: &mut Client,
        step: Step<'_>,
        (migration, actor): (&str, &str),
        reporter: &Reporter,
        record: Option<&Record<'_>>,
    ) -> Result<DdlReport, ControlError> {
        let result = ddl::run(client, step, |w| reporter.waiting(w), record).await;
        let report = match &result {
            Ok(r) => r.clone(),
            Err(DdlFailure { report, .. }) => report.clone(),
        };
        self.metrics
            .ddl_retries
            .inc_by(u64::from(report.tries.saturating_sub(1)));
        if !report.sql.is_empty() {
            let mut detail = json!(report);
            detail["instance"] = json!(self.fleet.instance.id);
            let event = Event {
                actor,
                migration: Some(migration),
                action: "ddl",
                detail,
            };
            if let Err(e) = store::record(&*client, event).await {
                tracing::warn!(error = %e, "cannot audit a DDL step");
            }
        }
        result.map_err(|f| f.error)
    }
}

/// The body of a 202: the detail, marked accepted.
pub(crate) fn accepted(mut detail: Value) -> Result<Value, ControlError> {
    detail["accepted"] = Value::Bool(true);
    Ok(detail)
}

/// Audits a phase change.
pub(crate) async fn audit_phase(
    client: &impl GenericClient,
    name: &str,
    verb: &str,
    (before, after): (Stage, Stage),
    actor: &str,
) -> Result<(), ControlError> {
    let detail = json!({"verb": verb, "before": before.phase(), "after": after.phase(),
                        "stage_before": before, "stage_after": after});
    let event = Event {
        actor,
        migration: Some(name),
        action: "phase",
        detail,
    };
    store::record(client, event).await
}

/// Audits a gate overridden with `force`.
pub(crate) async fn audit_force(
    client: &impl GenericClient,
    name: &str,
    verb: Verb,
    reason: &str,
    actor: &str,
) -> Result<(), ControlError> {
    let event = Event {
        actor,
        migration: Some(name),
        action: "force",
        detail: json!({"verb": verb.as_str(), "gate": reason}),
    };
    store::record(client, event).await
}
