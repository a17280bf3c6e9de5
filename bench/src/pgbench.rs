//! One pgbench run, measured from its output and per-transaction log.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use switchyard_tests::tools::run;

use crate::report::{Cell, Sample};

/// Runs pgbench and reads TPS and latencies from its output and log.
pub fn run_pgbench(
    port: u16,
    mode: &str,
    clients: u32,
    seconds: u32,
    logdir: &Path,
    workload: &[String],
) -> anyhow::Result<Sample> {
    let threads = clients.min(2);
    let prefix = logdir.join("tx");
    let out = run(Command::new("pgbench")
        .args(workload)
        .args([
            "-n",
            "-M",
            mode,
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "trust_user",
        ])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &threads.to_string(),
            "-T",
            &seconds.to_string(),
        ])
        .arg("--log")
        .arg(format!("--log-prefix={}", prefix.display()))
        .arg("postgres")
        .env("PGSSLMODE", "disable"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tps = stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no tps in pgbench output: {stdout}"))?;
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(logdir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        for line in text.lines() {
            if let Some(us) = line
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<u64>().ok())
            {
                latencies.push(us);
            }
        }
    }
    if latencies.is_empty() {
        bail!("pgbench wrote no transaction log");
    }
    latencies.sort_unstable();
    let avg_us = latencies.iter().sum::<u64>() as f64 / latencies.len() as f64;
    let p99_us = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)] as f64;
    Ok(Sample {
        round: 0,
        path: String::new(),
        cell: Cell::default(),
        tps,
        avg_us,
        p99_us,
    })
}
