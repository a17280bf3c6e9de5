//! revert: the incident responder's one call. Reads go back to the legacy
//! column at once on this instance (a local swap that does not wait for the
//! database), then the revert is recorded for each migration the state
//! allows and published, so that every instance follows.
//!
//! What a revert does where (the README's table):
//! - `reads_switched` (reads on the new column): reads go back to the
//!   legacy column; writes stay dual. `switch-reads` puts them back;
//!   `contract` is refused until then.
//! - before `reads_switched`: nothing to do (reads are on the legacy
//!   column already).
//! - `reads_switched` while the legacy column is refilled after a rollback
//!   of contract, and `contracted`: refused (409 for one migration,
//!   listed under `skipped` for all), since the legacy column is not in
//!   step or not there; `rollback` is the way back.

use std::time::Instant;

use serde_json::{json, Value};
use switchyard_rules::migration::events;
use tracing::info;

use crate::engine::Engine;
use crate::error::ControlError;
use crate::store::{self, Event};

/// What the revert did to one migration.
enum Outcome {
    Reverted,
    Unchanged,
    Refused(String),
}

impl Engine {
    /// Reverts the routing of `name`, or of every migration.
    pub async fn revert(&self, name: Option<&str>, actor: &str) -> Result<Value, ControlError> {
        let started = Instant::now();
        let local = self.publisher.revert_locally(name)?;
        let local_ms = started.elapsed().as_secs_f64() * 1000.0;
        if !local.reverted.is_empty() {
            info!(version = local.version, reverted = ?local.reverted,
                  swap_us = local.swap.as_micros() as u64, "routing reverted locally");
        }
        let recorded = self.record_revert(name, actor, local.version).await;
        let (version, outcomes) = match recorded {
            Ok(r) => r,
            Err(e) if !local.reverted.is_empty() => {
                return Err(ControlError::Unavailable(format!(
                    "reads of {:?} are reverted on this instance only: the database did not answer ({e}); other instances keep their routing, and this one follows the database again at its next publication",
                    local.reverted
                )))
            }
            Err(e) => return Err(e),
        };
        let mut reverted = Vec::new();
        let mut skipped = Vec::new();
        for (migration, outcome) in outcomes {
            match outcome {
                Outcome::Reverted => reverted.push(migration),
                Outcome::Unchanged => {}
                Outcome::Refused(reason) if name.is_some() => {
                    return Err(ControlError::Conflict(reason))
                }
                Outcome::Refused(reason) => {
                    skipped.push(json!({"migration": migration, "reason": reason}))
                }
            }
        }
        Ok(json!({
            "rules_version": version,
            "reverted": reverted,
            "skipped": skipped,
            "swap_micros": local.swap.as_micros() as u64,
            "local_millis": local_ms,
        }))
    }

    /// Records the revert of each migration its state allows, publishing a
    /// version above the local one.
    async fn record_revert(
        &self,
        name: Option<&str>,
        actor: &str,
        local_version: u64,
    ) -> Result<(u64, Vec<(String, Outcome)>), ControlError> {
        let mut client = self.db.session().await?;
        let names: Vec<String> = match name {
            Some(n) => vec![store::get(&*client, n).await?.name],
            None => store::list(&*client)
                .await?
                .into_iter()
                .filter(|m| m.state.routing().is_some())
                .map(|m| m.name)
                .collect(),
        };
        let tx = client.transaction().await?;
        let mut outcomes = Vec::new();
        for migration in names {
            let (_, outcome) = store::update_in(&tx, &migration, |m| {
                Ok(match events::revert(&m.state) {
                    Ok(Some(s)) => (s, Outcome::Reverted),
                    Ok(None) => (m.state.clone(), Outcome::Unchanged),
                    Err(r) => (m.state.clone(), Outcome::Refused(r.to_string())),
                })
            })
            .await?;
            if let Outcome::Reverted = outcome {
                let event = Event {
                    actor,
                    migration: Some(&migration),
                    action: "revert",
                    detail: json!({"local_version": local_version}),
                };
                store::record(&tx, event).await?;
            }
            outcomes.push((migration, outcome));
        }
        // Always above the local version, so that every instance (this one
        // included) replaces a local swap with what the database says.
        let version = store::bump_rules_version(&tx, local_version + 1).await?;
        tx.commit().await?;
        self.publisher.sync(&*client).await?;
        Ok((version, outcomes))
    }
}
