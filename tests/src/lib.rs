//! The end-to-end harness: throwaway PostgreSQL clusters, test certificates,
//! an in-process proxy, and helpers to run real client programs.
//!
//! Nothing here mocks the database; every test talks to a real server it
//! started itself and stops when the handle drops, even on panic.

pub mod api;
pub mod apps;
pub mod certs;
pub mod cluster;
pub mod load;
pub mod pgbouncer;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod rules;
pub mod tools;

pub use certs::TestCerts;
pub use cluster::Cluster;
pub use proxy::{TestProxy, TestProxyOptions};
