//! The operator's verbs and what each one asks of the migration's phase.

use serde::{Deserialize, Serialize};

/// A step an operator (or the API) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verb {
    /// Add the new column.
    Expand,
    /// Route writes to both columns.
    DualWrite,
    /// Start the backfill job (completes into `backfilled`).
    Backfill,
    /// Run a parity pass.
    Verify,
    /// Serve reads from the new column.
    SwitchReads,
    /// Drop the legacy column.
    Contract,
    /// Retire the rules.
    Complete,
    /// One phase back.
    Rollback,
}

impl Verb {
    /// Parses the verb as it appears in `POST /v1/migrations/{name}/{verb}`.
    pub fn parse(s: &str) -> Option<Verb> {
        Some(match s {
            "expand" => Verb::Expand,
            "dual-write" => Verb::DualWrite,
            "backfill" => Verb::Backfill,
            "verify" => Verb::Verify,
            "switch-reads" => Verb::SwitchReads,
            "contract" => Verb::Contract,
            "complete" => Verb::Complete,
            "rollback" => Verb::Rollback,
            _ => return None,
        })
    }

    /// The verb as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Expand => "expand",
            Verb::DualWrite => "dual-write",
            Verb::Backfill => "backfill",
            Verb::Verify => "verify",
            Verb::SwitchReads => "switch-reads",
            Verb::Contract => "contract",
            Verb::Complete => "complete",
            Verb::Rollback => "rollback",
        }
    }
}
