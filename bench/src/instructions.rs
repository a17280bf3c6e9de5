//! `instructions`: user-space instructions per transaction of Switchyard
//! (as a plain proxy: no control plane, no rules) and of PgBouncer (session
//! mode), side by side, counted by valgrind's callgrind, which gives the
//! same count however busy the machine is.
//!
//! Each proxy runs under callgrind in front of the same cluster. For each
//! protocol, pgbench `-S` with 4 clients runs `SHORT` and then `LONG`
//! transactions per client, the counters zeroed before and dumped after
//! each run; the difference divided by the extra transactions cancels
//! connection start-up and teardown.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;
use switchyard_tests::pgbouncer::PgBouncer;
use switchyard_tests::tools::run as exec;
use switchyard_tests::Cluster;

use crate::Options;

pub(crate) const CLIENTS: u64 = 4;
const SHORT: u64 = 250;
const LONG: u64 = 1250;

/// Where a proxy's dumps go: `CALLGRIND_DIR/name` when set (kept for
/// `callgrind_annotate`), else `scratch/name`, gone with the cluster.
pub(crate) fn dump_dir(scratch: &Path, name: &str) -> PathBuf {
    std::env::var_os("CALLGRIND_DIR")
        .map_or_else(|| scratch.to_path_buf(), PathBuf::from)
        .join(name)
}

pub(crate) fn callgrind(out: &Path) -> Vec<String> {
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        "--compress-strings=no".into(),
        "--compress-pos=no".into(),
        format!("--callgrind-out-file={}", out.join("cg.%p").display()),
    ]
}

/// The `switchyard` binary next to this one (or `SWITCHYARD_BIN`).
pub(crate) fn binary() -> anyhow::Result<PathBuf> {
    if let Ok(bin) = std::env::var("SWITCHYARD_BIN") {
        return Ok(bin.into());
    }
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("switchyard");
    anyhow::ensure!(
        bin.exists(),
        "{} is not built: cargo build --release -p switchyard",
        bin.display()
    );
    Ok(bin)
}

pub(crate) struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `switchyard serve` in front of `cluster` (under `wrapper`, e.g.
/// callgrind, if any), with `extra` flags and `env`; once it accepts:
/// the process, its proxy port and its control port.
pub(crate) fn spawn_serve(
    cluster: &Cluster,
    wrapper: &[String],
    extra: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<(Killed, u16, u16)> {
    let port = switchyard_testkit::free_port()?;
    let control_port = switchyard_testkit::free_port()?;
    let mut command = match wrapper {
        [first, rest @ ..] => {
            let mut c = Command::new(first);
            c.args(rest).arg(binary()?);
            c
        }
        [] => Command::new(binary()?),
    };
    let serve = Killed(
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--upstream", &format!("127.0.0.1:{}", cluster.port)])
            .args(["--upstream-tls", "disable"])
            .args(["--control-listen", &format!("127.0.0.1:{control_port}")])
            .args(extra)
            .envs(env.iter().copied())
            .env("SWITCHYARD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_for(port)?;
    Ok((serve, port, control_port))
}

pub(crate) fn wait_for(port: u16) -> anyhow::Result<()> {
    for _ in 0..600 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {port}")
}

/// What pgbench runs: `-S`, or `-f script`.
pub(crate) type Workload<'a> = &'a [String];

fn pgbench(port: u16, mode: &str, transactions: u64) -> anyhow::Result<()> {
    pgbench_with(port, mode, transactions, &["-S".to_string()])
}

pub(crate) fn pgbench_with(
    port: u16,
    mode: &str,
    transactions: u64,
    workload: Workload<'_>,
) -> anyhow::Result<()> {
    exec(
        Command::new("pgbench")
            .arg("-n")
            .args(workload)
            .args(["-M", mode, "-h", "127.0.0.1", "-U", "trust_user"])
            .args([
                "-p",
                &port.to_string(),
                "-c",
                &CLIENTS.to_string(),
                "-j",
                "2",
            ])
            .args(["-t", &transactions.to_string(), "postgres"])
            .env("PGSSLMODE", "disable"),
    )?;
    Ok(())
}

/// Sends `command` to the callgrind of `pid`. Callgrind reads commands
/// only while the program runs, so an idle proxy is woken by connections
/// to `port` until the command is taken (the same few for every run).
pub(crate) fn control(
    pid: u32,
    user: Option<&str>,
    port: u16,
    command: &str,
) -> anyhow::Result<()> {
    let mut cmd = match user {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--", "callgrind_control"]);
            c
        }
        None => Command::new("callgrind_control"),
    };
    let mut child = cmd
        .args([command, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    for _ in 0..600 {
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(status.success(), "callgrind_control {command} failed");
            return Ok(());
        }
        let _ = std::net::TcpStream::connect(("127.0.0.1", port));
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    bail!("callgrind_control {command} {pid} did not finish")
}

/// The newest dump's instruction total.
pub(crate) fn last_dump(dir: &Path, pid: u32) -> anyhow::Result<u64> {
    let prefix = format!("cg.{pid}.");
    let newest = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u64 = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((n, e.path()))
        })
        .max()
        .context("no callgrind dump")?;
    let text = std::fs::read_to_string(&newest.1)?;
    text.lines()
        .find_map(|l| l.strip_prefix("summary: "))
        .and_then(|v| v.trim().parse().ok())
        .context("no summary line in the dump")
}

/// Instructions the proxy `pid` (dumps in `dir`) executes while `work`
/// runs, and how long that took: the counters are zeroed before and dumped
/// after.
pub(crate) fn counted(
    (pid, user): (u32, Option<&str>),
    port: u16,
    dir: &Path,
    work: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(u64, Duration)> {
    let before = last_dump(dir, pid).ok();
    control(pid, user, port, "--zero")?;
    let started = std::time::Instant::now();
    work()?;
    let took = started.elapsed();
    control(pid, user, port, "--dump")?;
    // The dump is written by the proxy's own thread.
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(t) = last_dump(dir, pid) {
            if before != Some(t) {
                return Ok((t, took));
            }
        }
    }
    bail!("the dump never came")
}

/// Instructions per transaction of the proxy `pid` on `port` (dumps in
/// `dir`), for `mode`.
fn per_transaction(
    proxy: (u32, Option<&str>),
    port: u16,
    dir: &Path,
    mode: &str,
) -> anyhow::Result<f64> {
    let mut totals = Vec::new();
    for n in [SHORT, LONG] {
        let (total, _) = counted(proxy, port, dir, || pgbench(port, mode, n))?;
        totals.push(total);
    }
    Ok((totals[1] as f64 - totals[0] as f64) / ((LONG - SHORT) * CLIENTS) as f64)
}

/// The only child of process `pid`.
fn child_of(pid: u32) -> anyhow::Result<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    children
        .split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("process {pid} has no child"))
}

/// Runs the measurement.
pub fn run(options: Options) -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    exec(
        Command::new("pgbench")
            .args(["-i", "-s", "1", "-h", "127.0.0.1", "-U", "trust_user"])
            .args(["-p", &cluster.port.to_string(), "postgres"])
            .env("PGSSLMODE", "disable"),
    )?;

    let dir = dump_dir(cluster.scratch(), "callgrind");
    std::fs::create_dir_all(&dir)?;
    let (switchyard, port, _) = spawn_serve(&cluster, &callgrind(&dir), &[], &[])?;
    let bouncer_out = dump_dir(cluster.scratch(), "pgbouncer-callgrind");
    std::fs::create_dir_all(&bouncer_out)?;
    // PgBouncer drops to `postgres` when started as root.
    exec(Command::new("chown").arg("postgres").arg(&bouncer_out))?;
    let bouncer = PgBouncer::start_wrapped(&cluster, &callgrind(&bouncer_out))?;
    let root = switchyard_tests::cluster::is_root();
    let bouncer_pid = match root {
        // runuser's child.
        true => child_of(bouncer.pid())?,
        false => bouncer.pid(),
    };
    let bouncer_user = root.then_some("postgres");
    let proxies = [
        ("switchyard", (switchyard.0.id(), None), port, dir.clone()),
        (
            "pgbouncer",
            (bouncer_pid, bouncer_user),
            bouncer.port,
            bouncer_out,
        ),
    ];
    let mut rows = Vec::new();
    for mode in ["simple", "prepared"] {
        let mut cells = Vec::new();
        for (name, pid, port, dir) in &proxies {
            pgbench(*port, mode, 20)?;
            let ir = per_transaction(*pid, *port, dir, mode)?;
            eprintln!("{mode:>8} {name:<10} {ir:>8.0} instructions per transaction");
            cells.push(ir);
        }
        rows.push(
            json!({"mode": mode, "switchyard": cells[0], "pgbouncer": cells[1],
                         "ratio": cells[0] / cells[1]}),
        );
    }
    println!("| protocol | Switchyard (plain proxy) | PgBouncer (session) | ratio |");
    println!("| --- | --- | --- | --- |");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.2} |",
            r["mode"].as_str().unwrap_or(""),
            r["switchyard"].as_f64().unwrap_or(0.0),
            r["pgbouncer"].as_f64().unwrap_or(0.0),
            r["ratio"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(parent) = Path::new(&options.out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&options.out, serde_json::to_string_pretty(&rows)?)?;
    drop(bouncer);
    drop(switchyard);
    Ok(())
}
