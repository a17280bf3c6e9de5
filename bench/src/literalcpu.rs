//! `literalcpu`: the proxy's CPU (user and system) per transaction of
//! inline-literal statements on the routed table against its unrouted
//! twin, at a fixed rate (issue 12, goal 2, in the issue's own terms: the
//! proxy's CPU as `/proc` counts it).
//!
//! `literals` counts user-space instructions with callgrind, repeatable
//! but blind to the kernel work each statement makes the proxy do (its
//! reads, writes and polls), which both tables pay alike. This counts
//! both: `serve` runs alone (no valgrind) with the `literals` set-up, and
//! pgbench sends each table's workload at the same fixed rate, tables
//! taking turns in every round. The proxy's CPU is the sum over its
//! threads of `/proc/PID/task/TID/schedstat`'s time on CPU (nanoseconds;
//! its threads live as long as it does).

use switchyard_tests::Cluster;

use crate::literals::{start_migrated, workloads};
use crate::proc_cpu::{cpu_ns, fixed_rate};
use crate::Options;

/// Runs the comparison.
pub fn run(options: Options) -> anyhow::Result<()> {
    let runtime = crate::runtime()?;
    let cluster = Cluster::start()?;
    let (serve, port) = start_migrated(&runtime, &cluster, &[])?;
    let pid = serve.0.id();
    let loads = workloads(&cluster.scratch().join("scripts"))?;
    let rate = options.rate;
    let seconds = options.seconds.max(5);
    // Warm: every shape of every table seen once.
    for (_, workload) in &loads {
        fixed_rate(port, "simple", rate, 2, workload)?;
    }
    let mut per_tx: Vec<Vec<f64>> = vec![Vec::new(); loads.len()];
    let mut ratios = Vec::new();
    for round in 0..options.rounds.max(1) {
        let mut this = Vec::new();
        for (i, (table, workload)) in loads.iter().enumerate() {
            let before = cpu_ns(pid)?;
            let n = fixed_rate(port, "simple", rate, seconds, workload)?;
            let us = (cpu_ns(pid)? - before) as f64 / 1000.0 / n as f64;
            eprintln!("round {round} {table:>6}: {n} transactions, {us:.2} µs of proxy CPU each");
            per_tx[i].push(us);
            this.push(us);
        }
        ratios.push(this[0] / this[1]);
    }
    println!("| table | proxy CPU per transaction, µs (median) | per round |");
    println!("| --- | --- | --- |");
    for ((table, _), v) in loads.iter().zip(&per_tx) {
        let rounds: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
        println!(
            "| {table} | {:.2} | {} |",
            crate::proc_cpu::median(v.clone()),
            rounds.join(", ")
        );
    }
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    let ratio = crate::proc_cpu::median(ratios.clone());
    println!("| ratio users / plain | {ratio:.3} | {} |", each.join(", "));
    std::fs::write(
        &options.out,
        serde_json::to_string_pretty(&serde_json::json!({"ratio": ratio, "ratios": ratios,
            "per_transaction_us": per_tx, "rate": rate, "seconds": seconds}))?,
    )?;
    drop(serve);
    Ok(())
}
