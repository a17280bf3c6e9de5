//! Switchyard's control plane: the HTTP API, the migration engine (spec
//! validation against the catalog, safe DDL, routing publication, audit
//! log) and its state in the database's `switchyard` schema.

pub mod catalog;
pub mod chunks;
mod contract;
pub mod ddl;
mod ddl_verbs;
pub mod dependencies;
pub mod engine;
pub mod error;
pub mod fleet;
pub mod http;
pub mod indexes;
pub mod jobs;
pub mod latency;
pub mod lifecycle;
pub mod metrics;
pub mod operator;
mod publication;
mod rollback;
pub mod store;
pub mod throttle;

pub use engine::{Engine, RulesSink};
pub use error::ControlError;
