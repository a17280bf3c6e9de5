//! Rollback: one phase back, undoing that phase's effect.
//!
//! - expanded → planned drops the new column;
//! - dual_write → expanded routes writes to the legacy column only;
//! - backfilled → dual_write drops the indexes rebuilt on the new column
//!   and forgets the checkpoint (a running backfill is cancelled);
//! - verified → backfilled forgets the parity pass;
//! - reads_switched → verified routes reads back to the legacy column;
//! - contracted → reads_switched re-adds the legacy column (nullable),
//!   routes writes to both columns again, and refills the legacy column
//!   from `backward(new)` as a job; until that job is done, reads stay on
//!   the new column and cannot be reverted.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use switchyard_rules::migration::{Outcome, Verb};
use switchyard_rules::{ident, Phase};

use crate::ddl::{Mode, Step};
use crate::engine::{pairs_of, table_of, Engine};
use crate::error::ControlError;
use crate::indexes;
use crate::store::{self, StoredMigration};

impl Engine {
    /// Rolls `m` back to `outcome.next`.
    pub(crate) async fn rollback(
        self: &Arc<Self>,
        m: StoredMigration,
        outcome: Outcome,
        actor: &str,
    ) -> Result<Value, ControlError> {
        let table = table_of(&m)?;
        let t = table.to_string();
        let lock_timeout = Duration::from_millis(m.spec.backfill.lock_timeout_ms);
        let pairs = pairs_of(&m)?;
        // DDL on its own session, so the API stays responsive meanwhile.
        let mut ddl = crate::jobs::connect(&self.url).await?;
        let state = match m.phase {
            Phase::Expanded => {
                for p in &pairs {
                    let sql = format!(
                        "ALTER TABLE {t} DROP COLUMN IF EXISTS {}",
                        ident::quote(&p.new)
                    );
                    self.run_ddl(&mut ddl, &t, &sql, lock_timeout, &m.name, actor)
                        .await?;
                }
                json!({})
            }
            Phase::DualWrite => json!({}),
            Phase::Backfilled => {
                let mut dropped = Vec::new();
                for p in &pairs {
                    for index in indexes::covering(&ddl, &t, &p.new).await? {
                        let sql = format!(
                            "DROP INDEX CONCURRENTLY IF EXISTS {}.{}",
                            ident::quote(&index.schema),
                            ident::quote(&index.name)
                        );
                        let step = Step {
                            table: &t,
                            sql: &sql,
                            lock_timeout,
                            mode: Mode::Concurrently,
                        };
                        self.run_ddl_step(&mut ddl, step, &m.name, actor).await?;
                        dropped.push(index.name);
                    }
                }
                ddl.execute(
                    "DELETE FROM switchyard.checkpoints WHERE migration = $1",
                    &[&m.name],
                )
                .await?;
                json!({"backfill": null, "indexes": null, "dropped_indexes": dropped})
            }
            Phase::Verified => json!({"parity": null, "verify": null}),
            Phase::ReadsSwitched => json!({"reverted": false}),
            Phase::Contracted => {
                for p in &pairs {
                    let sql = format!(
                        "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {} {} NULL",
                        ident::quote(&p.legacy),
                        p.legacy_type
                    );
                    self.run_ddl(&mut ddl, &t, &sql, lock_timeout, &m.name, actor)
                        .await?;
                }
                json!({"parity": null, "reverted": false, "legacy_incomplete": true})
            }
            Phase::Planned | Phase::Completed => {
                return Err(ControlError::Internal(format!(
                    "rollback from {:?} passed the transition check",
                    m.phase
                )))
            }
        };
        let client = self.db().await?;
        store::set_phase(&client, &m.name, m.phase, outcome.next, &state).await?;
        self.record_transition(&client, &m, "rollback", &outcome, actor)
            .await?;
        drop(client);
        self.publish().await?;
        if m.phase != Phase::Contracted {
            return self.detail(&m.name).await;
        }
        // Writes set both columns again before the refill starts.
        self.await_acknowledgement().await;
        let restored = {
            let client = self.db().await?;
            store::get(&client, &m.name).await?
        };
        let refill = Outcome {
            next: Phase::ReadsSwitched,
            forced: None,
        };
        self.start_job(restored, Verb::Rollback, refill, actor)
            .await
    }
}
