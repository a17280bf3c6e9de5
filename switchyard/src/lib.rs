//! The `switchyard` binary as a library: `serve` (the wire proxy and the
//! control API in one process), `ctl`, `demo` and the operator's console.
//! End-to-end tests run the very same entry points.

pub mod app;
pub mod cli;
mod config;
mod console;
pub mod ctl;
pub mod demo;
mod sink;

pub use config::{ServeArgs, ServeConfig};
