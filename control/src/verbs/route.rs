//! dual-write, switch-reads and complete: the verbs that only move routing.
//! The decision, the new stage, its audit and the rules version bump
//! commit together; this instance then installs the new rules, and every
//! other one follows the notification.
//!
//! dual-write also installs the guard trigger (unless the spec turns it
//! off), with the safe DDL runner, in the same transaction as the stage
//! change: the trigger exists exactly when writes are dual.

use std::time::Duration;

use serde_json::Value;
use switchyard_rules::migration::{decide, events, Decision, Effect, MigrationState, Verb};

use super::{audit_force, audit_phase};
use crate::ddl::{Mode, Record, Step};
use crate::engine::Engine;
use crate::error::ControlError;
use crate::jobs::Reporter;
use crate::publisher::table_of;
use crate::store;

/// The routing decision of `verb` in `state`, with its next state.
fn next_state(
    state: &MigrationState,
    verb: Verb,
    force: bool,
) -> Result<(MigrationState, Decision), ControlError> {
    let d = decide(state, verb, force)?;
    if d.effect != Effect::Route {
        return Err(ControlError::Internal(format!(
            "{} decided {:?}",
            verb.as_str(),
            d.effect
        )));
    }
    Ok((events::arrive(state, d.next), d))
}

impl Engine {
    /// A routing verb.
    pub(super) async fn route(
        &self,
        name: &str,
        verb: Verb,
        force: bool,
        actor: &str,
    ) -> Result<Value, ControlError> {
        if verb == Verb::Complete {
            let m = store::get(&*self.db.session().await?, name).await?;
            // A wrong phase is refused first, for its own reason.
            next_state(&m.state, verb, force)?;
            self.quiet_gate(&m, force, actor).await?;
        }
        let mut client = self.db.session().await?;
        if verb == Verb::DualWrite {
            let m = store::get(&*client, name).await?;
            if m.spec.guard_trigger {
                // Refused early, before any DDL is tried.
                next_state(&m.state, verb, force)?;
                drop(client);
                return self.dual_write_guarded(&m, force, actor).await;
            }
        }
        let tx = client.transaction().await?;
        let (m, (before, decision)) = store::update_in(&tx, name, |m| {
            let (next, d) = next_state(&m.state, verb, force)?;
            Ok((next, (m.state.stage, d)))
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

    /// complete: 409 while a live instance saw, within the spec's quiet
    /// window, a statement that still depends on the legacy side; forced,
    /// the override is audited with what was seen.
    async fn quiet_gate(
        &self,
        m: &store::StoredMigration,
        force: bool,
        actor: &str,
    ) -> Result<(), ControlError> {
        let minutes = m.spec.complete_quiet_minutes;
        if minutes == 0 {
            return Ok(());
        }
        let window = f64::from(minutes) * 60.0;
        let client = self.db.session().await?;
        let recent: Vec<_> = self
            .legacy_uses_of(&*client, &m.name)
            .await?
            .into_iter()
            .filter(|u| u.seconds_ago <= window)
            .collect();
        if recent.is_empty() {
            return Ok(());
        }
        if force {
            let event = store::Event {
                actor,
                migration: Some(&m.name),
                action: "force",
                detail: serde_json::json!({
                    "verb": Verb::Complete.as_str(),
                    "legacy_uses": recent,
                }),
            };
            return store::record(&*client, event).await;
        }
        let legacy: Vec<&str> = m.state.pairs.iter().map(|p| p.legacy.as_str()).collect();
        let seen: Vec<String> = recent
            .iter()
            .map(|u| {
                format!(
                    "instance {} saw {} such statements, the last {:.0} s ago: {:?}",
                    u.instance, u.seen.count, u.seconds_ago, u.seen.statement
                )
            })
            .collect();
        Err(ControlError::Conflict(format!(
            "cannot complete {}: applications still use the legacy column {} within the last {minutes} minutes (complete_quiet_minutes): {}; move them to the new name and wait, or ?force=true (audited)",
            m.name,
            legacy.join(", "),
            seen.join("; ")
        )))
    }

    /// dual-write with the guard trigger installed in the same transaction.
    async fn dual_write_guarded(
        &self,
        m: &store::StoredMigration,
        force: bool,
        actor: &str,
    ) -> Result<Value, ControlError> {
        let table = table_of(m)?.to_string();
        let sql = crate::guard::install_sql(&table, &m.name, &m.state.pairs)?;
        let step = Step {
            table: &table,
            sql: &sql,
            lock_timeout: Duration::from_millis(m.spec.backfill.lock_timeout_ms),
            mode: Mode::Transaction,
        };
        let forced = std::sync::Mutex::new(None);
        let change = |state: &MigrationState| {
            let (mut next, d) = next_state(state, Verb::DualWrite, force)?;
            next.created.guard = true;
            *forced.lock().unwrap_or_else(|e| e.into_inner()) = d.forced;
            Ok(next)
        };
        let record = Record {
            migration: &m.name,
            change: &change,
            audit: Some((Verb::DualWrite.as_str(), actor)),
            notify_jobs: false,
        };
        let mut ddl = self.db.dedicated().await?;
        self.ddl_step(
            &mut ddl,
            step,
            (&m.name, actor),
            &Reporter::default(),
            Some(&record),
        )
        .await?;
        let client = self.db.session().await?;
        let forced = forced.into_inner().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = &forced {
            audit_force(&*client, &m.name, Verb::DualWrite, reason, actor).await?;
        }
        self.publisher.sync(&*client).await?;
        drop(client);
        self.detail(&m.name).await
    }
}
