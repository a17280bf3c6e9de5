//! `backfill`: the chunked, throttled backfill against its limit, one
//! `UPDATE` of the whole table, and what it does to a concurrent workload.
//! Two identical tables of `--scale × 100 000` rows: one gets the single
//! UPDATE; the other is migrated through the control API while pgbench
//! (prepared, 4 clients) updates and reads it through the proxy. pgbench
//! runs once before the backfill (baseline) and once during it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard::app::App;
use switchyard_tests::tools::http;
use switchyard_tests::Cluster;

use crate::pgbench::run_pgbench;
use crate::Options;

const TABLES: &str = "
    create table single_update(id bigint primary key, email text, email_address text);
    create table migrated(id bigint primary key, email text, name text);
    create table quiet(id bigint primary key, email text, name text);
    insert into quiet select g, 'User' || g || '@Example.com', 'n' from generate_series(1, :rows) g;
    insert into single_update select g, 'User' || g || '@Example.com' from generate_series(1, :rows) g;
    insert into migrated select g, 'User' || g || '@Example.com', 'n' from generate_series(1, :rows) g;";

async fn api(app: &App, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let body = body.map(|b| b.to_string());
    let (status, value) = http(app.control_addr, method, path, body.as_deref(), None).await?;
    anyhow::ensure!(status < 300, "{path}: {status} {value}");
    Ok(value)
}

/// Runs the measurement.
pub fn run(options: Options) -> anyhow::Result<()> {
    let runtime = crate::runtime()?;
    let cluster = Cluster::start()?;
    let rows = u64::from(options.scale) * 100_000;
    eprintln!("creating two tables of {rows} rows");
    cluster.psql_admin(&TABLES.replace(":rows", &rows.to_string()))?;
    cluster.psql_admin("vacuum analyze")?;

    let started = Instant::now();
    cluster.psql_admin("update single_update set email_address = lower(email)")?;
    let single = started.elapsed();
    cluster.psql_admin("vacuum single_update")?;
    let single_rate = rows as f64 / single.as_secs_f64();
    eprintln!("single UPDATE: {single:?}, {single_rate:.0} rows/s");

    let app = runtime.block_on(App::start(crate::serve::local(
        cluster.addr(),
        Some(cluster.conn_str("trust_user", "postgres")),
    )))?;
    let scripts = cluster.scratch().join("scripts");
    std::fs::create_dir_all(&scripts)?;
    let script = scripts.join("workload.sql");
    std::fs::write(
        &script,
        format!(
            "\\set id random(1, {rows})\nUPDATE migrated SET email = 'W' || :id || '@X.io' WHERE id = :id;\nSELECT email FROM migrated WHERE id = :id;\n"
        ),
    )?;
    let workload = vec!["-f".to_string(), script.display().to_string()];
    let port = app.proxy_addr.port();

    runtime.block_on(async {
        let chunk_ms: u64 = std::env::var("BACKFILL_CHUNK_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        // `BACKFILL_P99_PCT`: the latency guard's limit (`none` turns it off).
        let p99_pct: Value = match std::env::var("BACKFILL_P99_PCT").ok().as_deref() {
            Some("none") => Value::Null,
            Some(v) => json!(v.parse::<u64>()?),
            None => json!(150),
        };
        let spec = json!({"name": "bench", "table": "public.migrated",
            "columns": [{"legacy": "email", "new": "email_address", "forward": "lower(email)"}],
            "backfill": {"target_chunk_ms": chunk_ms, "max_app_p99_pct": p99_pct}});
        api(&app, "POST", "/v1/migrations", Some(spec)).await?;
        api(&app, "POST", "/v1/migrations/bench/expand", None).await?;
        api(&app, "POST", "/v1/migrations/bench/dual-write", None).await?;
        anyhow::Ok(())
    })?;
    // The backfill alone, on an identical table nobody else touches.
    let quiet_rate = runtime.block_on(async {
        let spec = json!({"name": "quiet", "table": "public.quiet",
            "columns": [{"legacy": "email", "new": "email_address", "forward": "lower(email)"}]});
        api(&app, "POST", "/v1/migrations", Some(spec)).await?;
        api(&app, "POST", "/v1/migrations/quiet/expand", None).await?;
        api(&app, "POST", "/v1/migrations/quiet/dual-write", None).await?;
        let started = Instant::now();
        api(&app, "POST", "/v1/migrations/quiet/backfill", None).await?;
        loop {
            let (_, d) = http(app.control_addr, "GET", "/v1/migrations/quiet", None, None).await?;
            if d["phase"] == "backfilled" {
                break;
            }
            anyhow::ensure!(d["job"]["state"] != "failed", "{d}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(rows as f64 / started.elapsed().as_secs_f64())
    })?;
    eprintln!("backfill alone: {quiet_rate:.0} rows/s");
    let before_dir = cluster.scratch().join("before");
    std::fs::create_dir_all(&before_dir)?;
    let before = run_pgbench(port, "prepared", 4, options.seconds, &before_dir, &workload)?;
    eprintln!(
        "baseline: tps {:.0}, p99 {:.0} us",
        before.tps, before.p99_us
    );

    let backfill_started = Instant::now();
    runtime.block_on(api(&app, "POST", "/v1/migrations/bench/backfill", None))?;
    let during_dir = cluster.scratch().join("during");
    std::fs::create_dir_all(&during_dir)?;
    let during = run_pgbench(port, "prepared", 4, options.seconds, &during_dir, &workload)?;
    let overlapped = backfill_started.elapsed();
    let detail = runtime.block_on(async {
        loop {
            let (_, d) = http(app.control_addr, "GET", "/v1/migrations/bench", None, None).await?;
            if d["phase"] == "backfilled" {
                return anyhow::Ok(d);
            }
            anyhow::ensure!(d["job"]["state"] != "failed", "{d}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })?;
    let took = backfill_started.elapsed();
    let done = detail["state"]["reports"]["backfill"]["rows_done"]
        .as_u64()
        .unwrap_or(0);
    let rate = done as f64 / took.as_secs_f64();
    let mismatches = cluster.psql_admin(
        "select count(*) from migrated where email_address is distinct from lower(email)",
    )?;
    eprintln!(
        "backfill: {took:?}, {rate:.0} rows/s; pgbench during: tps {:.0}, p99 {:.0} us",
        during.tps, during.p99_us
    );
    println!("| rows | single UPDATE rows/s | backfill alone rows/s | ratio | backfill under load rows/s | ratio | workload p99 before / during (µs) | p99 ratio | workload tps before / during | pgbench overlapped the backfill | mismatches after |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {rows} | {single_rate:.0} | {quiet_rate:.0} | {:.2} | {rate:.0} | {:.2} | {:.0} / {:.0} | {:.2} | {:.0} / {:.0} | {} | {} |",
        quiet_rate / single_rate,
        rate / single_rate,
        before.p99_us,
        during.p99_us,
        during.p99_us / before.p99_us,
        before.tps,
        during.tps,
        if overlapped <= took { "entirely" } else { "partly" },
        mismatches.trim(),
    );
    runtime.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(5), app.shutdown()).await;
    });
    Ok(())
}
