//! A process's own CPU, and fixed-rate pgbench runs to charge it to.

use std::process::Command;

use anyhow::Context;
use switchyard_tests::tools;

/// Nanoseconds on CPU (user and system) of every thread of process `pid`
/// so far, from `/proc/PID/task/*/schedstat`. A thread that ended between
/// two readings is missed: the proxies measured keep theirs.
pub(crate) fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
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

/// pgbench at `rate` transactions per second for `seconds` through `port`
/// (8 clients): the transactions done.
pub(crate) fn fixed_rate(
    port: u16,
    mode: &str,
    rate: u32,
    seconds: u32,
    workload: &[String],
) -> anyhow::Result<u64> {
    let out = tools::run(
        Command::new("pgbench")
            .args(workload)
            .args(["-n", "-M", mode, "-h", "127.0.0.1", "-p", &port.to_string()])
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

/// The middle value (the upper one of an even count).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
