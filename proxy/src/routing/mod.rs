//! Routing rules in the wire path: the shared hub, the per-session router
//! and the messages they read and write.

pub mod hub;
pub mod messages;
mod offload;
pub mod router;
pub mod search_path;
pub mod session_sql;

pub use hub::RulesHub;
pub use router::SessionRouter;
