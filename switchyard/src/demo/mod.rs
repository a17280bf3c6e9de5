//! `switchyard demo`: a throwaway cluster, a `users` table, the proxy with
//! its control plane, a built-in application load through it, and one
//! type-changing migration (`status int` → `state text`) walked through
//! every phase with live progress, a revert drill, and a summary.

mod leftovers;
pub mod load;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use switchyard_control::Engine;
use switchyard_rules::migration::{MigrationSpec, Verb};

use crate::app::App;
use crate::ServeConfig;
use switchyard_proxy::tls::UpstreamTlsMode;
use switchyard_proxy::ProxyConfig;
use switchyard_testkit::{Cluster, ClusterOptions};

/// Demo settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Rows in the demo table.
    #[arg(long, default_value_t = 300_000)]
    pub rows: i64,
    /// Seconds of application load before and after each step.
    #[arg(long, default_value_t = 3)]
    pub duration: u64,
    /// Concurrent application sessions.
    #[arg(long, default_value_t = 4)]
    pub sessions: usize,
    /// Logs to stderr instead of a file.
    #[arg(long)]
    pub verbose: bool,
    /// Panics once the load runs: how the tests check that a panicking
    /// demo still stops its PostgreSQL and removes its files.
    #[arg(long, hide = true)]
    pub panic_under_load: bool,
}

const PHASES: [&str; 10] = [
    "baseline",
    "expand",
    "dual-write",
    "backfill",
    "verify",
    "switch-reads",
    "revert drill",
    "verify again",
    "contract",
    "after contract",
];

fn spec() -> MigrationSpec {
    serde_json::from_value(json!({
        "name": "users-status",
        "table": "public.users",
        "columns": [{
            "legacy": "status", "new": "state", "type": "text", "not_null": true,
            "forward": "CASE status WHEN 0 THEN 'new' WHEN 1 THEN 'active' WHEN 2 THEN 'closed' END",
            "backward": "CASE state WHEN 'new' THEN 0 WHEN 'active' THEN 1 WHEN 'closed' THEN 2 END"
        }],
        "backfill": {"target_chunk_ms": 50, "max_rows_per_second": null, "lock_timeout_ms": 100},
        // The demo's old version stops a moment before complete; a real
        // rollout waits complete_quiet_minutes (default 10) after it.
        "complete_quiet_minutes": 0
    }))
    .expect("the demo spec is valid")
}

/// What the demo prints at the end (and tests check).
#[derive(Debug, Clone)]
pub struct Summary {
    /// Statements the application completed.
    pub statements: u64,
    /// Statements that failed (must be 0).
    pub client_errors: u64,
    /// The first error, if any.
    pub first_error: Option<String>,
    /// Backfill rows per second.
    pub backfill_rows_per_second: f64,
    /// DDL tries beyond the first (lock waits).
    pub ddl_retries: u64,
    /// Columns of `users` named status/state after contract, with nullability.
    pub final_columns: Vec<(String, String)>,
    /// Revert swap time in microseconds.
    pub revert_swap_micros: u64,
}

/// Runs the demo end to end; prints as it goes.
pub async fn run(args: DemoArgs) -> anyhow::Result<Summary> {
    for dir in tokio::task::spawn_blocking(leftovers::reap).await? {
        println!(
            "     Removed a cluster left by a killed demo: {}",
            dir.display()
        );
    }
    println!("1/4  Starting a throwaway PostgreSQL cluster from the local server binaries…");
    let cluster = tokio::task::spawn_blocking(|| {
        Cluster::start(ClusterOptions::default(), |dir| {
            leftovers::claim(dir).map_err(|e| switchyard_testkit::ClusterError(e.to_string()))?;
            Ok(ClusterOptions::default())
        })
    })
    .await??;
    println!(
        "     PostgreSQL on {} (data in a temp dir, removed at exit)",
        cluster.addr()
    );
    println!("2/4  Creating users with {} rows…", args.rows);
    cluster.psql_admin(&format!(
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL, name text, status int NOT NULL DEFAULT 0,
                             created_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO users (email, name, status)
           SELECT 'user' || g || '@example.com', 'User ' || g, g % 3 FROM generate_series(1, {}) g;",
        args.rows
    ))?;
    cluster.psql_admin("VACUUM ANALYZE users")?;

    let config = ServeConfig {
        proxy: ProxyConfig {
            listen: "127.0.0.1:0".into(),
            upstream: cluster.addr(),
            upstream_tls: UpstreamTlsMode::Disable,
            ..ProxyConfig::default()
        },
        control_listen: "127.0.0.1:0".into(),
        database_url: Some(cluster.url("postgres", "", "postgres")),
        ..ServeConfig::default()
    };
    let app = App::start(config).await?;
    let engine = app
        .engine
        .clone()
        .ok_or_else(|| anyhow::anyhow!("control plane did not start"))?;
    println!(
        "3/4  Switchyard on {} (control API on {}); {} application sessions running through it",
        app.proxy_addr, app.control_addr, args.sessions
    );

    let stats = Arc::new(load::Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    stats.set_phase(PHASES[0]);
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
        app.proxy_addr.port()
    );
    let load = tokio::spawn(load::run(
        conn,
        args.sessions,
        args.rows,
        stats.clone(),
        stop.clone(),
    ));
    let hold = Duration::from_secs(args.duration);
    tokio::time::sleep(hold).await;
    if args.panic_under_load {
        panic!("--panic-under-load");
    }

    println!("4/4  Migrating users.status (int) → users.state (text), under load:");
    let name = "users-status";
    engine.create(spec(), "demo").await?;
    let mut backfill_rate = 0.0;
    let mut revert_swap = 0;
    for (phase, verb) in [
        ("expand", Verb::Expand),
        ("dual-write", Verb::DualWrite),
        ("backfill", Verb::Backfill),
        ("verify", Verb::Verify),
        ("switch-reads", Verb::SwitchReads),
    ] {
        stats.set_phase(phase);
        let detail = step(&engine, name, verb).await?;
        if verb == Verb::Backfill {
            backfill_rate = detail["state"]["reports"]["backfill"]["rows_per_second"]
                .as_f64()
                .unwrap_or(0.0);
        }
        tokio::time::sleep(hold).await;
    }
    stats.set_phase("revert drill");
    let started = Instant::now();
    let revert = engine.revert(Some(name), "demo").await?;
    revert_swap = revert["swap_micros"].as_u64().unwrap_or(revert_swap);
    println!(
        "     revert drill: reads back on the legacy column in {:.2} ms (rules v{}, swap {} µs)",
        started.elapsed().as_secs_f64() * 1000.0,
        revert["rules_version"],
        revert_swap
    );
    tokio::time::sleep(hold).await;
    step(&engine, name, Verb::SwitchReads).await?;
    stats.set_phase("verify again");
    step(&engine, name, Verb::Verify).await?;
    stats.set_phase("contract");
    step(&engine, name, Verb::Contract).await?;
    stats.set_phase("after contract");
    tokio::time::sleep(hold).await;
    // The application is "redeployed" onto the new column before the rules
    // retire: stop the old version's load, then complete.
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    step(&engine, name, Verb::Complete).await?;

    let events = engine.events().await?;
    let ddl_retries = events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["action"] == "ddl")
        .map(|e| e["detail"]["tries"].as_u64().unwrap_or(1).saturating_sub(1))
        .sum();
    let columns = cluster.psql_admin(
        "SELECT column_name || ':' || is_nullable FROM information_schema.columns
         WHERE table_name = 'users' AND column_name IN ('status', 'state') ORDER BY 1",
    )?;
    let final_columns = columns
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(c, n)| (c.to_owned(), n.to_owned()))
        .collect::<Vec<_>>();
    let summary = Summary {
        statements: stats.statements.load(Ordering::Relaxed),
        client_errors: stats.errors.load(Ordering::Relaxed),
        first_error: stats.first_error(),
        backfill_rows_per_second: backfill_rate,
        ddl_retries,
        final_columns,
        revert_swap_micros: revert_swap,
    };
    println!("\nSummary");
    println!("  statements served   {}", summary.statements);
    println!(
        "  client errors       {}{}",
        summary.client_errors,
        summary
            .first_error
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    println!(
        "  backfill rate       {:.0} rows/s",
        summary.backfill_rows_per_second
    );
    println!("  DDL lock waits      {} retries", summary.ddl_retries);
    println!("  revert swap         {} µs", summary.revert_swap_micros);
    println!("  latency per phase");
    println!(
        "    {:<15} {:>10} {:>9} {:>9}",
        "phase", "statements", "p50 ms", "p99 ms"
    );
    for (phase, n, p50, p99) in stats.per_phase(&PHASES) {
        println!(
            "    {phase:<15} {n:>10} {:>9.2} {:>9.2}",
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0
        );
    }
    let catalog: Vec<String> = summary
        .final_columns
        .iter()
        .map(|(column, nullable)| match nullable.as_str() {
            "NO" => format!("users.{column} NOT NULL"),
            _ => format!("users.{column} nullable"),
        })
        .collect();
    let status_gone = !summary.final_columns.iter().any(|(c, _)| c == "status");
    println!(
        "  final catalog       {}{}",
        catalog.join(", "),
        if status_gone {
            " (users.status dropped)"
        } else {
            ""
        }
    );
    app.shutdown().await;
    drop(cluster);
    Ok(summary)
}

/// Runs one verb and follows a job to its end with a progress bar (on a
/// terminal) or a plain line every few seconds and whenever what holds the
/// job changes (elsewhere): a demo never goes quiet while it works.
async fn step(engine: &Arc<Engine>, name: &str, verb: Verb) -> anyhow::Result<Value> {
    let started = Instant::now();
    let detail = engine.apply(name, verb, false, "demo").await?;
    if detail["accepted"] != true {
        println!(
            "     {:<13} → {:<15} {:>8.1} ms",
            verb.as_str(),
            detail["phase"].as_str().unwrap_or("?"),
            started.elapsed().as_secs_f64() * 1000.0
        );
        return Ok(detail);
    }
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("     {prefix:<13} [{bar:30}] {pos}/{len} rows {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(verb.as_str());
    let plain = !std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut shown: Option<(Instant, Option<String>)> = None;
    loop {
        let d = engine.detail(name).await?;
        let job = &d["job"];
        let total = job["rows_total_estimate"]
            .as_u64()
            .unwrap_or(0)
            .max(job["rows_done"].as_u64().unwrap_or(0))
            .max(1);
        bar.set_length(total);
        bar.set_position(job["rows_done"].as_u64().unwrap_or(0));
        let rate = job["rows_per_second"].as_f64().unwrap_or(0.0);
        let held = job["throttled"].as_str().map(str::to_owned);
        let held_text = held
            .as_deref()
            .map(|why| format!(", held: {why}"))
            .unwrap_or_default();
        bar.set_message(format!("{rate:.0} rows/s{held_text}"));
        let due = match &shown {
            None => true,
            Some((at, before)) => at.elapsed() >= Duration::from_secs(5) || *before != held,
        };
        if plain && due && job["state"] != "done" {
            let done = job["rows_done"].as_u64().unwrap_or(0);
            let progress = match done {
                0 => "started".to_string(),
                _ => format!("{done}/{total} rows"),
            };
            println!(
                "     {:<13} {progress}, {rate:.0} rows/s{held_text}",
                verb.as_str()
            );
            shown = Some((Instant::now(), held));
        }
        match job["state"].as_str() {
            Some("done") => {
                let what = if verb == Verb::Verify {
                    "mismatched"
                } else {
                    "changed"
                };
                let end = format!(
                    "→ {} in {:.1} s ({} rows {what})",
                    d["phase"].as_str().unwrap_or("?"),
                    started.elapsed().as_secs_f64(),
                    job["rows_changed"]
                );
                if plain {
                    println!("     {:<13} {end}", verb.as_str());
                }
                bar.finish_with_message(end);
                return Ok(d);
            }
            Some("failed") => anyhow::bail!("{} failed: {}", verb.as_str(), job["error"]),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
