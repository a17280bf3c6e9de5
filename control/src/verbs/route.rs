//! dual-write, switch-reads and complete: the verbs that only move routing.
//! The decision, the new stage, its audit and the rules version bump
//! commit together; this instance then installs the new rules, and every
//! other one follows the notification.

use serde_json::Value;
use switchyard_rules::migration::{decide, events, Effect, Verb};

use super::{audit_force, audit_phase};
use crate::engine::Engine;
use crate::error::ControlError;
use crate::store;

impl Engine {
    /// A routing verb.
    pub(super) async fn route(
        &self,
        name: &str,
        verb: Verb,
        force: bool,
        actor: &str,
    ) -> Result<Value, ControlError> {
        let mut client = self.db.session().await?;
        let tx = client.transaction().await?;
        let (m, (before, decision)) = store::update_in(&tx, name, |m| {
            let d = decide(&m.state, verb, force)?;
            if d.effect != Effect::Route {
                return Err(ControlError::Internal(format!(
                    "{} decided {:?}",
                    verb.as_str(),
                    d.effect
                )));
            }
            Ok((events::arrive(&m.state, d.next), (m.state.stage, d)))
        })
        .await?;
        audit_phase(&tx, name, verb.as_str(), (before, m.state.stage), actor).await?;
        if let Some(reason) = &decision.forced {
            audit_force(&tx, name, verb, reason, actor).await?;
        }
        store::bump_rules_version(&tx, 0).await?;
        tx.commit().await?;
        self.publisher.sync(&*client).await?;
        drop(client);
        self.detail(name).await
    }
}
