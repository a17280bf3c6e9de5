//! `proxycpu`: the CPU (user and system) Switchyard as a plain proxy and
//! PgBouncer (session mode) each spend per transaction, at the same fixed
//! rate, side by side (issue 12: callgrind's count is user space only,
//! and most of what a relayed round trip costs is the kernel's work for
//! the proxy's reads, writes and polls).
//!
//! pgbench `-S`, 8 clients, through each proxy in turn in every round;
//! each proxy's CPU is read from its threads' `schedstat` around the run.

use std::process::Command;

use switchyard_tests::pgbouncer::PgBouncer;
use switchyard_tests::tools::run as exec;
use switchyard_tests::Cluster;

use crate::instructions::spawn_serve;
use crate::proc_cpu::{cpu_ns, fixed_rate, median};
use crate::Options;

/// Runs the comparison.
pub fn run(options: Options) -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    exec(
        Command::new("pgbench")
            .args(["-i", "-s", "1", "-h", "127.0.0.1", "-U", "trust_user"])
            .args(["-p", &cluster.port.to_string(), "postgres"])
            .env("PGSSLMODE", "disable"),
    )?;
    let (switchyard, port, _) = spawn_serve(&cluster, &[], &[], &[])?;
    let bouncer = PgBouncer::start(&cluster)?;
    // Without a wrapper, PgBouncer runs in place (as `postgres` by its own
    // `-u` when we are root).
    let bouncer_pid = bouncer.pid();
    let proxies = [
        ("switchyard", switchyard.0.id(), port),
        ("pgbouncer", bouncer_pid, bouncer.port),
    ];
    let select = ["-S".to_string()];
    let seconds = options.seconds.max(5);
    println!("| protocol | Switchyard µs per transaction | PgBouncer µs | ratio per round | median ratio |");
    println!("| --- | --- | --- | --- | --- |");
    for mode in ["simple", "prepared"] {
        let mut cells = [Vec::new(), Vec::new()];
        for (_, _, port) in &proxies {
            fixed_rate(*port, mode, options.rate, 2, &select)?;
        }
        for round in 0..options.rounds.max(1) {
            for (i, (name, pid, port)) in proxies.iter().enumerate() {
                let before = cpu_ns(*pid)?;
                let n = fixed_rate(*port, mode, options.rate, seconds, &select)?;
                let us = (cpu_ns(*pid)? - before) as f64 / 1000.0 / n as f64;
                eprintln!("round {round} {mode:>8} {name:<10} {n} transactions, {us:.2} µs each");
                cells[i].push(us);
            }
        }
        let ratios: Vec<f64> = cells[0].iter().zip(&cells[1]).map(|(s, b)| s / b).collect();
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
        println!(
            "| {mode} | {:.2} | {:.2} | {} | {:.3} |",
            median(cells[0].clone()),
            median(cells[1].clone()),
            each.join(", "),
            median(ratios)
        );
    }
    drop(bouncer);
    drop(switchyard);
    Ok(())
}
