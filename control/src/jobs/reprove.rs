//! The bare-literal proof again, before each parity pass. It was taken at
//! creation; an overload created since (`lower(varchar)`) changes what
//! `forward` means over the column but not over a bare literal. Where the
//! proof no longer holds, the pair's literals keep their cast from a new
//! rules version on, which the pass then waits for like any other; the
//! rows written bare before it are what the pass counts.

use serde_json::json;
use switchyard_rules::TypedColumn;
use tracing::warn;

use crate::engine::Engine;
use crate::error::ControlError;
use crate::literal_proof::forward_takes_literals;
use crate::store::{self, Event, StoredMigration};

impl Engine {
    /// Withdraws the proof from `m`'s pairs where it no longer holds,
    /// audited as `literal-proof` by `actor`, and publishes the change.
    pub(super) async fn reprove_literals(
        &self,
        m: &StoredMigration,
        actor: &str,
    ) -> Result<(), ControlError> {
        let proved: Vec<_> = (m.state.pairs.iter())
            .filter(|p| p.forward_takes_literals)
            .collect();
        if proved.is_empty() {
            return Ok(());
        }
        let mut client = self.db.dedicated().await?;
        let mut withdrawn = Vec::new();
        for pair in proved {
            let legacy = TypedColumn::new(&pair.legacy, &pair.legacy_type);
            if !forward_takes_literals(&mut client, &pair.forward, &legacy).await {
                withdrawn.push(pair.legacy.clone());
            }
        }
        if withdrawn.is_empty() {
            return Ok(());
        }
        let tx = client.transaction().await?;
        store::update_in(&tx, &m.name, |now| {
            Ok((now.state.with_literal_proof_withdrawn(&withdrawn), ()))
        })
        .await?;
        let why = "forward no longer resolves over a bare literal as over the legacy column";
        let event = Event {
            actor,
            migration: Some(&m.name),
            action: "literal-proof",
            detail: json!({"withdrawn": withdrawn, "why": why}),
        };
        store::record(&tx, event).await?;
        store::bump_rules_version(&tx, 0).await?;
        tx.commit().await?;
        self.publisher.sync(&client).await?;
        warn!(migration = %m.name, columns = ?withdrawn, "{why}: literals keep their cast");
        Ok(())
    }
}
