//! Switchyard's control plane: the HTTP API and, in time, the migration
//! state machine, DDL runner, backfill and parity checks.

pub mod http;
