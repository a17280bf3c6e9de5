//! `inserts`: multi-row INSERTs of 10, 100, 1,000 and 10,000 rows with
//! inline values into a routed table (dual-write), through Switchyard
//! against the same rows with the dual-write hand-written and sent direct,
//! end to end (the proxy rewrites every one: each text is new). Meanwhile another session through the same proxy runs `SELECT 1`
//! in a loop; its slowest round trip shows whether the rewrite held it up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use switchyard::app::App;
use switchyard_rules::Phase;
use switchyard_tests::rules::{install, single_pair, table_facts};
use switchyard_tests::Cluster;
use tokio_postgres::Client;

use crate::Options;

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

/// The application's INSERT (legacy column only), or with `dual` the
/// same rows with the new column written by hand, as sent direct.
fn statement(rows: usize, first: usize, dual: bool) -> String {
    let values: Vec<String> = (first..first + rows)
        .map(|i| match dual {
            false => format!("({i}, 'User{i}@Example.com', 'n{i}')"),
            true => format!("({i}, 'User{i}@Example.com', 'n{i}', lower('User{i}@Example.com'))"),
        })
        .collect();
    let columns = if dual {
        "id, email, name, email_address"
    } else {
        "id, email, name"
    };
    format!("INSERT INTO users ({columns}) VALUES {}", values.join(", "))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `rows`-row INSERTs `rounds` times on `client` (hand-written
/// dual-write SQL when `dual`), each with new ids; answers the median
/// milliseconds.
async fn time_inserts(
    (client, dual): (&Client, bool),
    rows: usize,
    rounds: usize,
    next_id: &mut usize,
) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for _ in 0..rounds {
        let sql = statement(rows, *next_id, dual);
        *next_id += rows;
        let started = Instant::now();
        client.batch_execute(&sql).await?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(times))
}

/// Runs the comparison.
pub fn run(options: Options) -> anyhow::Result<()> {
    let runtime = crate::runtime()?;
    let cluster = Cluster::start()?;
    cluster.psql_admin(
        "create table users(id int primary key, email varchar(320), name text, email_address varchar(320))",
    )?;
    let config = crate::serve::local(cluster.addr(), None);
    let app = runtime.block_on(App::start(config))?;
    let rounds = options.rounds.max(3);
    let rows = runtime.block_on(async {
        let direct =
            switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres")).await?;
        let facts = table_facts(&direct, "public", "users").await?;
        let set = single_pair(
            1,
            "postgres",
            facts,
            "email",
            "email_address",
            "lower(email)",
            "email_address",
            Phase::DualWrite,
        );
        install(&app.rules, set);
        let url = format!(
            "host=127.0.0.1 port={} user=trust_user dbname=postgres",
            app.proxy_addr.port()
        );
        let proxied = switchyard_tests::proxy::connect(&url).await?;
        let probe = switchyard_tests::proxy::connect(&url).await?;
        // The other session's slowest `SELECT 1`, in microseconds.
        let stop = Arc::new(AtomicBool::new(false));
        let worst = Arc::new(AtomicU64::new(0));
        let prober = {
            let (stop, worst) = (stop.clone(), worst.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    probe.simple_query("SELECT 1").await?;
                    let took = started.elapsed().as_micros() as u64;
                    worst.fetch_max(took, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                anyhow::Ok(())
            })
        };
        let mut next_id = 1;
        let mut rows = Vec::new();
        for size in SIZES {
            // Warm both paths once.
            let (hand, app) = ((&direct, true), (&proxied, false));
            time_inserts(hand, size, 1, &mut next_id).await?;
            time_inserts(app, size, 1, &mut next_id).await?;
            let direct_ms = time_inserts(hand, size, rounds, &mut next_id).await?;
            worst.store(0, Ordering::Relaxed);
            let proxy_ms = time_inserts(app, size, rounds, &mut next_id).await?;
            let probe_ms = worst.load(Ordering::Relaxed) as f64 / 1e3;
            eprintln!(
                "{size:>6} rows: direct {direct_ms:>8.2} ms, through Switchyard {proxy_ms:>8.2} ms ({:.2}x), other session's worst SELECT 1 {probe_ms:.2} ms",
                proxy_ms / direct_ms
            );
            rows.push(json!({"rows": size, "direct_ms": direct_ms, "switchyard_ms": proxy_ms,
                             "ratio": proxy_ms / direct_ms, "probe_worst_ms": probe_ms}));
        }
        stop.store(true, Ordering::Relaxed);
        prober.await??;
        let off: i64 = direct
            .query_one(
                "SELECT count(*) FROM users WHERE email_address IS DISTINCT FROM lower(email)",
                &[],
            )
            .await?
            .get(0);
        eprintln!("rows out of step after the run: {off}");
        anyhow::ensure!(off == 0, "{off} rows were not dual-written");
        anyhow::Ok(rows)
    })?;
    println!("| rows | direct ms | Switchyard ms | ratio | other session's worst `SELECT 1` ms |");
    println!("| --- | --- | --- | --- | --- |");
    for r in &rows {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r["rows"],
            r["direct_ms"].as_f64().unwrap_or(0.0),
            r["switchyard_ms"].as_f64().unwrap_or(0.0),
            r["ratio"].as_f64().unwrap_or(0.0),
            r["probe_worst_ms"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(parent) = std::path::Path::new(&options.out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&options.out, serde_json::to_string_pretty(&rows)?)?;
    Ok(())
}
