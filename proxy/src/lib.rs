//! Switchyard's wire path: a PostgreSQL protocol proxy that forwards frames
//! untouched unless a routing rule applies. It knows nothing of the control
//! plane, the command line or tests: the `switchyard` binary composes them.

mod auth;
mod closing;
mod config;
mod error;
mod filters;
pub mod frame;
pub mod metrics;
pub mod relay;
mod relay_loop;
pub mod routing;
pub mod server;
mod session;
pub mod startup;
mod stream;
pub mod tls;
mod upstream;
mod workers;

pub use config::ProxyConfig;
pub use server::{Proxy, ProxyHandle};
