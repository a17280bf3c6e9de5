//! `guardcpu`: what the guard trigger costs a proxied dual-write, as CPU
//! per transaction at a fixed rate, the whole machine counted.
//!
//! Throughput on two shared cores moves by ±10% from round to round, more
//! than the effect measured. At a fixed rate below saturation the machine
//! does the same work whatever its neighbours do, and the CPU it spends per
//! transaction (every process: pgbench, the proxy, PostgreSQL's backends,
//! WAL writer and checkpointer, and the kernel's network and disk work) is
//! what bounds throughput once saturated: a throughput ratio of 0.95 is a
//! CPU-per-transaction ratio of 1/0.95 = 1.053.
//!
//! CPU is read from `/proc/stat` (user, nice, system, irq and softirq of
//! every core) around each pgbench run; the tables take turns in every
//! round, so slow drifts of the machine fall on all of them. Besides the
//! guard, a table with the least any row trigger costs (`WHEN (false)`)
//! shows how much of the guard's cost is PostgreSQL's trigger machinery.
//! The same update with the dual-write written by hand, sent through the
//! proxy, measures the rewrite's own cost (issue 12, goal 4).

use std::time::Duration;

use anyhow::Context;
use switchyard::app::App;
use switchyard_tests::rules::install;

use crate::dualwrite::{out_of_step, routed_update, script, tables, Tables, HAND_UPDATE};
use crate::Options;

/// Non-idle jiffies of the whole machine so far: user, nice, system, irq,
/// softirq (steal and guest are not this machine's work, or are counted in
/// user already).
fn busy_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    anyhow::ensure!(fields.len() >= 7, "unexpected /proc/stat: {line}");
    Ok(fields[0] + fields[1] + fields[2] + fields[5] + fields[6])
}

/// One fixed-rate run: (transactions, CPU microseconds per transaction).
fn fixed_rate(
    port: u16,
    mode: &str,
    rate: u32,
    seconds: u32,
    workload: &[String],
) -> anyhow::Result<(u64, f64)> {
    let before = busy_ticks()?;
    let transactions = crate::proc_cpu::fixed_rate(port, mode, rate, seconds, workload)?;
    let ticks = busy_ticks()? - before;
    // USER_HZ is 100 on Linux: a tick is 10 ms.
    Ok((transactions, ticks as f64 * 10_000.0 / transactions as f64))
}

/// Runs the comparison at `--rate` transactions per second (default 4,000).
pub fn run(options: Options) -> anyhow::Result<()> {
    let rate = options.rate;
    let runtime = crate::runtime()?;
    let Tables {
        cluster,
        rows,
        rules,
    } = tables(&runtime, options.scale)?;
    let app = runtime.block_on(App::start(crate::serve::local(cluster.addr(), None)))?;
    install(&app.rules, rules);
    let port = app.proxy_addr.port();
    let paths = [
        (
            "switchyard",
            script(&cluster, rows, "routed.sql", &routed_update("users"))?,
        ),
        (
            "switchyard+guard",
            script(&cluster, rows, "guarded.sql", &routed_update("users_guard"))?,
        ),
        (
            "switchyard+when-false",
            script(&cluster, rows, "floor.sql", &routed_update("users_floor"))?,
        ),
        // Issue 12's goal 4: the rewrite against the same dual-write
        // written by hand, both through the proxy.
        (
            "hand+proxy",
            script(&cluster, rows, "hand.sql", HAND_UPDATE)?,
        ),
    ];
    let mut json = Vec::new();
    let mut rewrites = Vec::new();
    println!("| mode | table | CPU µs per transaction, per round | ratio to no trigger, per round | median ratio |");
    println!("| --- | --- | --- | --- | --- |");
    for mode in ["prepared", "simple"] {
        // Warm the proxy's caches, the backends and the tables.
        for (_, workload) in &paths {
            fixed_rate(port, mode, rate, 2, workload)?;
        }
        let mut per_path: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        for round in 0..options.rounds {
            // Rotate which table goes first, so none always follows
            // another's checkpoint or vacuum.
            for k in 0..paths.len() {
                let i = (round + k) % paths.len();
                let (name, workload) = &paths[i];
                let (n, us) = fixed_rate(port, mode, rate, options.seconds, workload)?;
                eprintln!(
                    "round {round} {mode:>8} {name:<21} {n:>7} transactions {us:>7.1} µs CPU each"
                );
                per_path[i].push(us);
            }
        }
        let show = |v: &[f64], digits: usize| {
            v.iter()
                .map(|x| format!("{x:.digits$}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (i, (name, _)) in paths.iter().enumerate() {
            // No trigger / this table: the throughput ratio once saturated.
            let ratios: Vec<f64> = (per_path[0].iter().zip(&per_path[i]))
                .map(|(plain, this)| plain / this)
                .collect();
            let med = crate::proc_cpu::median(ratios.clone());
            println!(
                "| {mode} | {name} | {} | {} | {med:.3} |",
                show(&per_path[i], 1),
                show(&ratios, 3)
            );
            json.push(serde_json::json!({
                "mode": mode, "path": name, "rate": rate, "cpu_us": per_path[i],
                "ratios": ratios, "median_ratio": med,
            }));
        }
        // Hand-written / rewritten CPU: the rewrite's throughput ratio
        // once saturated (goal 4 of issue 12).
        let hand = paths.len() - 1;
        let rewrite: Vec<f64> = (per_path[hand].iter().zip(&per_path[0]))
            .map(|(hand, rewritten)| hand / rewritten)
            .collect();
        rewrites.push(format!(
            "| {mode} | {} | {:.3} |",
            show(&rewrite, 3),
            crate::proc_cpu::median(rewrite.clone())
        ));
    }
    println!();
    println!("| mode | rewritten dual-write vs hand-written, both through the proxy (hand CPU / rewritten CPU), per round | median |");
    println!("| --- | --- | --- |");
    for line in rewrites {
        println!("{line}");
    }
    let mismatches = out_of_step(&cluster)?;
    println!("rows where email_address is distinct from lower(email) after the run: {mismatches}");
    if let Some(dir) = std::path::Path::new(&options.out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&options.out, serde_json::to_string_pretty(&json)?)?;
    runtime.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(5), app.shutdown()).await;
    });
    Ok(())
}
