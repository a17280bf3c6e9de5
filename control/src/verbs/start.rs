//! backfill and verify: the verbs that start a job. Any instance records
//! the job (the slot is taken under the row lock, so two at once get one
//! job and one 409); the job holder runs it and the detail follows it.

use std::sync::Arc;

use serde_json::{json, Value};
use switchyard_rules::migration::{decide, events, Effect, Verb};

use super::{accepted, audit_force};
use crate::engine::Engine;
use crate::error::ControlError;
use crate::fleet::JOBS_CHANNEL;
use crate::store::{self, Event};

impl Engine {
    /// Starts a backfill or a verify and answers at once.
    pub(super) async fn start(
        self: &Arc<Self>,
        name: &str,
        verb: Verb,
        force: bool,
        actor: &str,
    ) -> Result<Value, ControlError> {
        {
            let mut client = self.db.session().await?;
            let tx = client.transaction().await?;
            let (_, decision) = store::update_in(&tx, name, |m| {
                let d = decide(&m.state, verb, force)?;
                let Effect::StartJob(kind) = d.effect else {
                    return Err(ControlError::Internal(format!(
                        "{} decided {:?}",
                        verb.as_str(),
                        d.effect
                    )));
                };
                let (state, _) = events::start_job(&m.state, kind, actor, force)?;
                Ok((state, d))
            })
            .await?;
            if verb == Verb::Backfill {
                // A new backfill walks the whole table again; only a
                // resumed one continues from the checkpoint.
                tx.execute(
                    "DELETE FROM switchyard.checkpoints WHERE migration = $1",
                    &[&name],
                )
                .await?;
            }
            if let Some(reason) = &decision.forced {
                audit_force(&tx, name, verb, reason, actor).await?;
            }
            let event = Event {
                actor,
                migration: Some(name),
                action: verb.as_str(),
                detail: json!({"state": "started", "instance": self.fleet.instance.id}),
            };
            store::record(&tx, event).await?;
            tx.execute("SELECT pg_notify($1, $2)", &[&JOBS_CHANNEL, &name])
                .await?;
            tx.commit().await?;
        }
        if self.fleet.is_holder() {
            self.scan_jobs().await?;
        }
        accepted(self.detail(name).await?)
    }
}
