//! `switchyard-bench`: end-to-end benchmarks against a throwaway cluster.
//!
//! - `wire`: pgbench `-S` direct vs Switchyard vs PgBouncer.
//! - `dualwrite`: updates of a routed table through Switchyard vs the same
//!   dual-write SQL hand-written, vs a trigger doing it.
//! - `backfill`: the backfill against one whole-table UPDATE, and the p99
//!   of a concurrent workload before and during it.
//! - `flip`: a routing change's time to every instance's acknowledgement.
//! - `idle`: the CPU an idle `serve` uses with its control plane on.
//! - `instructions`: instructions per transaction, Switchyard vs PgBouncer,
//!   counted by callgrind.
//! - `guardcpu`: CPU per proxied dual-write at a fixed rate, with and
//!   without the guard trigger, the whole machine counted.
//! - `inserts`: multi-row INSERTs through Switchyard vs direct, with
//!   another session's worst round trip meanwhile.
//! - `literals`: inline-literal statements on a routed table vs an
//!   identical unrouted one, instructions per transaction by callgrind.
//! - `literalcpu`: the same, as the proxy's CPU (user and system) per
//!   transaction at a fixed rate.
//! - `proxycpu`: Switchyard's and PgBouncer's own CPU per transaction at a
//!   fixed rate.

mod backfill;
mod dualwrite;
mod dualwriteinstr;
mod flip;
mod guardcpu;
mod idle;
mod inserts;
mod instructions;
mod literalcpu;
mod literals;
mod pgbench;
mod proc_cpu;
mod proxycpu;
mod report;
mod serve;
mod wire;

use anyhow::{bail, Context};

/// Command-line options shared by the benchmarks.
pub struct Options {
    /// Seconds per pgbench run.
    pub seconds: u32,
    /// Rounds (medians are reported).
    pub rounds: usize,
    /// pgbench scale (wire) or thousands of rows (dualwrite).
    pub scale: u32,
    /// Where raw numbers go.
    pub out: String,
    /// Transactions per second of a fixed-rate run (guardcpu).
    pub rate: u32,
}

const USAGE: &str =
    "usage: switchyard-bench wire|dualwrite|guardcpu|backfill|flip|idle|instructions|literals|dualwriteinstr|literalcpu|proxycpu|inserts [--seconds N] [--rounds N] [--scale N] [--rate N] [--out FILE]";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_default();
    let mut o = Options {
        seconds: 10,
        rounds: 3,
        scale: 10,
        out: format!("bench/out/{which}.json"),
        rate: 4000,
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seconds" => o.seconds = value.parse()?,
            "--rounds" => o.rounds = value.parse()?,
            "--scale" => o.scale = value.parse()?,
            "--out" => o.out = value,
            "--rate" => o.rate = value.parse()?,
            other => bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    match which.as_str() {
        "wire" => wire::run(o),
        "dualwrite" => dualwrite::run(o),
        "guardcpu" => guardcpu::run(o),
        "flip" => flip::run(o),
        "backfill" => backfill::run(o),
        "idle" => idle::run(o),
        "instructions" => instructions::run(o),
        "literals" => literals::run(o),
        "dualwriteinstr" => dualwriteinstr::run(o),
        "literalcpu" => literalcpu::run(o),
        "proxycpu" => proxycpu::run(o),
        "inserts" => inserts::run(o),
        _ => bail!(USAGE),
    }
}

/// A tokio runtime for the in-process proxy's accept loop and control plane
/// (`SWITCHYARD_WORKERS`, default 2); its sessions run on their own threads.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let workers: usize = std::env::var("SWITCHYARD_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?)
}
