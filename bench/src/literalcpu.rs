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

use std::process::Command;

use anyhow::Context;
use switchyard_tests::{tools, Cluster};

use crate::literals::{start_migrated, workloads};
use crate::Options;

/// Nanoseconds on CPU of every thread of process `pid` so far.
fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        let on_cpu: u64 = stat
            .split_whitespace()
            .next()
            .and_then(|f| f.parse().ok())
            .context("unexpected schedstat")?;
        total += on_cpu;
    }
    Ok(total)
}

/// One fixed-rate run: transactions done.
fn fixed_rate(port: u16, rate: u32, seconds: u32, workload: &[String]) -> anyhow::Result<u64> {
    let out = tools::run(
        Command::new("pgbench")
            .args(workload)
            .args([
                "-n",
                "-M",
                "simple",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .args(["-U", "trust_user", "-c", "8", "-j", "2"])
            .args(["-R", &rate.to_string(), "-T", &seconds.to_string()])
            .arg("postgres")
            .env("PGSSLMODE", "disable"),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let n: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no transaction count in pgbench output: {stdout}"))?;
    anyhow::ensure!(n > 0, "pgbench processed nothing: {stdout}");
    Ok(n)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

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
        fixed_rate(port, rate, 2, workload)?;
    }
    let mut per_tx: Vec<Vec<f64>> = vec![Vec::new(); loads.len()];
    let mut ratios = Vec::new();
    for round in 0..options.rounds.max(1) {
        let mut this = Vec::new();
        for (i, (table, workload)) in loads.iter().enumerate() {
            let before = cpu_ns(pid)?;
            let n = fixed_rate(port, rate, seconds, workload)?;
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
            median(v.clone()),
            rounds.join(", ")
        );
    }
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    let ratio = median(ratios.clone());
    println!("| ratio users / plain | {ratio:.3} | {} |", each.join(", "));
    std::fs::write(
        &options.out,
        serde_json::to_string_pretty(&serde_json::json!({"ratio": ratio, "ratios": ratios,
            "per_transaction_us": per_tx, "rate": rate, "seconds": seconds}))?,
    )?;
    drop(serve);
    Ok(())
}
