//! `wire`: pgbench `-S` against PostgreSQL directly, through Switchyard and
//! through PgBouncer (session mode), side by side in one run.
//!
//! Each round runs every path for every cell back to back, so that the noise
//! of a shared machine hits all paths alike; the median round is reported.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use switchyard::app::App;
use switchyard_tests::tools::run as run_cmd;
use switchyard_tests::Cluster;

use crate::pgbench::run_pgbench;
use crate::report::{self, Cell, Sample};
use crate::Options;

/// Runs the wire comparison.
pub fn run(options: Options) -> anyhow::Result<()> {
    let runtime = crate::runtime()?;
    let cluster = Cluster::start()?;
    run_cmd(Command::new("pgbench").args([
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

    let config = crate::serve::local(cluster.addr(), None);
    // The same two proxies again, reaching the server through its Unix
    // socket, as a proxy on the database host would.
    let unix_config = crate::serve::local(cluster.socket_path().display().to_string(), None);
    let app = runtime.block_on(App::start(config))?;
    let unix_app = runtime.block_on(App::start(unix_config))?;
    let bouncer = switchyard_tests::pgbouncer::PgBouncer::start(&cluster)?;
    let unix_bouncer = switchyard_tests::pgbouncer::PgBouncer::start_unix(&cluster)?;

    let paths = [
        ("direct", cluster.port),
        ("switchyard", app.proxy_addr.port()),
        ("pgbouncer", bouncer.port),
        ("switchyard-unix", unix_app.proxy_addr.port()),
        ("pgbouncer-unix", unix_bouncer.port),
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
                let s = run_pgbench(
                    port,
                    mode,
                    *clients,
                    options.seconds,
                    &logdir,
                    &["-S".to_string()],
                )?;
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
    println!(
        "{}",
        report::render(
            &table,
            "direct",
            "pgbouncer",
            &[
                "direct",
                "switchyard",
                "pgbouncer",
                "switchyard-unix",
                "pgbouncer-unix"
            ]
        )
    );
    if let Some(dir) = Path::new(&options.out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &options.out,
        serde_json::to_string_pretty(&report::to_json(&samples, &table))?,
    )?;
    eprintln!("raw numbers written to {}", options.out);
    drop(bouncer);
    drop(unix_bouncer);
    runtime.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(5), app.shutdown()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), unix_app.shutdown()).await;
    });
    Ok(())
}
