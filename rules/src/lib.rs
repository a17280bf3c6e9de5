//! Migration and routing model for Switchyard (pure logic, no I/O): the
//! phases and routing modes, versioned rule sets, the pre-filter, the SQL
//! rewriter and the rewrite cache.

pub mod active;
pub mod bare_literal;
pub mod cache;
pub mod fixtures;
pub mod ident;
mod known_shape;
pub mod latency;
pub mod legacy_use;
pub mod migration;
mod model;
pub mod normalize;
mod prefilter;
pub mod rewrite;
pub mod swar;
pub mod template;

pub use active::ActiveRules;
pub use model::{
    ColumnFact, ColumnMapping, Group, Phase, QualifiedName, ReadRoute, Routing, RuleSet,
    TableFacts, TableRules, TypedColumn, UniqueKey, UnsupportedPolicy, WriteRoute,
};
pub use rewrite::{Rewrite, Unsupported};
