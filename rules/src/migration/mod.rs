//! The migration model: the spec an operator submits, the verbs, and the
//! phase transitions with their gates. Pure; the control plane persists and
//! executes it.

pub mod spec;
pub mod transition;
pub mod verb;

pub use spec::{BackfillSettings, ColumnSpec, MigrationSpec, SpecError};
pub use transition::{previous, step, Outcome, Parity, TransitionError};
pub use verb::Verb;
