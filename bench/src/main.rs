//! `switchyard-bench wire`: pgbench `-S` against PostgreSQL directly, through
//! Switchyard and through PgBouncer (session mode), side by side in one run.
//!
//! Each round runs every path for every cell back to back, so that the noise
//! of a shared machine hits all paths alike; the median round is reported.

mod report;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use switchyard::app::App;
use switchyard::ProxyConfig;
use switchyard_tests::tools::run;
use switchyard_tests::Cluster;

use crate::report::{Cell, Sample};

struct Options {
    seconds: u32,
    rounds: usize,
    scale: u32,
    out: String,
}

fn parse_args() -> anyhow::Result<Options> {
    let mut o = Options {
        seconds: 10,
        rounds: 3,
        scale: 10,
        out: "bench/out/wire.json".into(),
    };
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("wire") => {}
        _ => bail!(
            "usage: switchyard-bench wire [--seconds N] [--rounds N] [--scale N] [--out FILE]"
        ),
    }
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seconds" => o.seconds = value.parse()?,
            "--rounds" => o.rounds = value.parse()?,
            "--scale" => o.scale = value.parse()?,
            "--out" => o.out = value,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(o)
}

fn main() -> anyhow::Result<()> {
    let options = parse_args()?;
    let workers: usize = std::env::var("SWITCHYARD_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    let cluster = Cluster::start()?;
    run(Command::new("pgbench").args([
        "-i",
        "-q",
        "-s",
        &options.scale.to_string(),
        "-h",
        "127.0.0.1",
        "-p",
        &cluster.port.to_string(),
        "-U",
        "trust_user",
        "postgres",
    ]))?;

    let config = ProxyConfig {
        listen: "127.0.0.1:0".into(),
        control_listen: "127.0.0.1:0".into(),
        upstream: cluster.addr(),
        upstream_tls: switchyard::tls::UpstreamTlsMode::Disable,
        ..ProxyConfig::default()
    };
    let app = runtime.block_on(App::start(config))?;
    let bouncer = switchyard_tests::pgbouncer::PgBouncer::start(&cluster)?;

    let paths = [
        ("direct", cluster.port),
        ("switchyard", app.proxy_addr.port()),
        ("pgbouncer", bouncer.port),
    ];
    let cells: Vec<(&str, u32)> = vec![
        ("simple", 1),
        ("prepared", 1),
        ("simple", 16),
        ("prepared", 16),
    ];
    let mut samples: Vec<Sample> = Vec::new();
    for round in 0..options.rounds {
        for (mode, clients) in &cells {
            for (path, port) in paths {
                let logdir = cluster
                    .scratch()
                    .join(format!("log-{round}-{path}-{mode}-{clients}"));
                std::fs::create_dir_all(&logdir)?;
                let s = pgbench_run(port, mode, *clients, options.seconds, &logdir)?;
                eprintln!(
                    "round {round} {mode:>8} c={clients:<2} {path:<10} tps={:>9.0} avg={:>7.1}us p99={:>7.1}us",
                    s.tps, s.avg_us, s.p99_us
                );
                samples.push(Sample {
                    round,
                    path: path.to_string(),
                    cell: Cell {
                        mode: mode.to_string(),
                        clients: *clients,
                    },
                    ..s
                });
            }
        }
    }
    let table = report::summarise(&samples);
    println!("{}", report::render(&table));
    if let Some(dir) = Path::new(&options.out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &options.out,
        serde_json::to_string_pretty(&report::to_json(&samples, &table))?,
    )?;
    eprintln!("raw numbers written to {}", options.out);
    drop(bouncer);
    runtime.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(5), app.shutdown()).await;
    });
    Ok(())
}

fn pgbench_run(
    port: u16,
    mode: &str,
    clients: u32,
    seconds: u32,
    logdir: &Path,
) -> anyhow::Result<Sample> {
    let threads = clients.min(2);
    let prefix = logdir.join("tx");
    let out = run(Command::new("pgbench")
        .args([
            "-n",
            "-S",
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
