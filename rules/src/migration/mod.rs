//! The migration model: the spec an operator submits, the typed state it
//! moves through, the verbs with their gates, and the events of its jobs.
//! Pure; the control plane persists the state and carries out the effects.

pub mod events;
pub mod job;
pub mod spec;
pub mod state;
pub mod transition;
pub mod verb;

#[cfg(test)]
mod machine_tests;

pub use job::{Job, JobKind, JobStatus, Progress, Settings};
pub use spec::{BackfillSettings, ColumnSpec, MigrationSpec, Names, PerColumn, SpecError};
pub use state::{
    distinct, Columns, Created, DdlReport, IndexReport, LegacyColumn, MigrationState, Pair, Parity,
    Reports, Stage, SwitchedReads, STATE_SCHEMA,
};
pub use transition::{decide, Decision, Effect, Refusal};
pub use verb::Verb;
