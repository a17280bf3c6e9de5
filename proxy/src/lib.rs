//! Switchyard's wire path: a PostgreSQL protocol proxy that forwards frames
//! untouched unless a routing rule applies.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod error;
pub mod filters;
pub mod frame;
pub mod metrics;
pub mod pgcluster;
pub mod relay;
pub mod routing;
pub mod server;
pub mod session;
pub mod startup;
pub mod stream;
pub mod tls;
pub mod upstream;

pub use config::{ProxyConfig, ServeArgs};
pub use server::{Proxy, ProxyHandle};
