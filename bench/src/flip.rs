//! `flip`: how long a routing change takes to reach every instance. Two
//! `serve` instances (each with its own proxy and control plane) share one
//! database; a migration in `reads_switched` is reverted and switched back
//! `--rounds × 50` times through instance A's API. For each call:
//! - A's own swap, for a revert (`local_millis` in its answer: in-process);
//! - the API's answer;
//! - B running the new version in every open transaction (NOTIFY, rebuild,
//!   swap), observed on B's rules hub;
//! - `switchyard.instances` showing both acknowledgements (what backfill and
//!   the gates wait for).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard::app::App;
use switchyard_tests::tools::http;
use switchyard_tests::Cluster;

use crate::Options;

async fn start(cluster: &Cluster) -> anyhow::Result<App> {
    App::start(crate::serve::local(
        cluster.addr(),
        Some(cluster.conn_str("trust_user", "postgres")),
    ))
    .await
}

async fn post(app: &App, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let body = body.map(|b| b.to_string());
    let (status, value) = http(app.control_addr, "POST", path, body.as_deref(), None).await?;
    anyhow::ensure!(status < 300, "{path}: {status} {value}");
    Ok(value)
}

/// Waits until `done` holds, polling every 50 µs; returns when it did.
async fn until(mut done: impl FnMut() -> bool) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "flip never acknowledged");
        tokio::time::sleep(Duration::from_micros(50)).await;
    }
    Instant::now()
}

fn percentile(v: &mut [f64], p: usize) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[(v.len() * p / 100).min(v.len() - 1)]
}

/// Runs the measurement.
pub fn run(options: Options) -> anyhow::Result<()> {
    let runtime = crate::runtime()?;
    let cluster = Cluster::start()?;
    cluster.psql_admin(
        "create table users(id int primary key, email text);
         insert into users select g, 'U' || g from generate_series(1, 1000) g;",
    )?;
    runtime.block_on(async {
        let a = start(&cluster).await?;
        let b = start(&cluster).await?;
        let spec = json!({"name": "flip", "table": "public.users",
            "columns": [{"legacy": "email", "new": "email_address", "forward": "lower(email)"}]});
        post(&a, "/v1/migrations", Some(spec)).await?;
        for verb in ["expand", "dual-write", "backfill"] {
            post(&a, &format!("/v1/migrations/flip/{verb}"), None).await?;
            if verb == "backfill" {
                wait_phase(&a, "backfilled").await?;
            }
        }
        post(&a, "/v1/migrations/flip/verify", None).await?;
        wait_phase(&a, "verified").await?;
        post(&a, "/v1/migrations/flip/switch-reads", None).await?;

        let db = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres")).await?;
        let mut answer = [Vec::new(), Vec::new()];
        let mut remote = [Vec::new(), Vec::new()];
        let mut recorded = [Vec::new(), Vec::new()];
        let mut local = Vec::new();
        for i in 0..options.rounds * 50 {
            let (kind, path) = if i % 2 == 0 {
                (0, "/v1/migrations/flip/revert")
            } else {
                (1, "/v1/migrations/flip/switch-reads")
            };
            let started = Instant::now();
            let body = post(&a, path, None).await?;
            let answered = started.elapsed();
            if let Some(ms) = body["local_millis"].as_f64() {
                local.push(ms);
            }
            let version = a.rules.current().version();
            let b_done = until(|| b.rules.acknowledged() >= version).await - started;
            loop {
                let lagging: i64 = db
                    .query_one(
                        "select count(*) from switchyard.instances where acknowledged < $1",
                        &[&(version as i64)],
                    )
                    .await?
                    .get(0);
                if lagging == 0 {
                    break;
                }
            }
            let both = started.elapsed();
            answer[kind].push(answered.as_secs_f64() * 1000.0);
            remote[kind].push(b_done.as_secs_f64() * 1000.0);
            recorded[kind].push(both.as_secs_f64() * 1000.0);
        }
        println!("| call | n | API answer (A swapped) p50 / p99 ms | B acknowledged p50 / p99 ms | both recorded in the database p50 / p99 ms |");
        println!("| --- | --- | --- | --- | --- |");
        for (kind, name) in [(0, "revert"), (1, "switch-reads")] {
            println!(
                "| {name} | {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} |",
                answer[kind].len(),
                percentile(&mut answer[kind], 50),
                percentile(&mut answer[kind], 99),
                percentile(&mut remote[kind], 50),
                percentile(&mut remote[kind], 99),
                percentile(&mut recorded[kind], 50),
                percentile(&mut recorded[kind], 99),
            );
        }
        println!(
            "revert: A's local swap, from the request reaching the engine (`local_millis`): p50 {:.3} ms, p99 {:.3} ms",
            percentile(&mut local, 50),
            percentile(&mut local, 99)
        );
        let _ = tokio::time::timeout(Duration::from_secs(5), a.shutdown()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), b.shutdown()).await;
        anyhow::Ok(())
    })
}

async fn wait_phase(app: &App, phase: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, d) = http(app.control_addr, "GET", "/v1/migrations/flip", None, None).await?;
        if d["phase"] == phase {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "stuck: {d}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
