//! `literals`: what inline-literal statements cost the proxy on a routed
//! table against the same statements on an identical table no rule
//! concerns, in instructions per transaction counted by callgrind.
//!
//! `serve` runs with its control plane under callgrind; `users` is
//! migrated (`email → email_address`, dual-write), `plain` is its twin.
//! pgbench sends, in the simple protocol, an UPDATE, a SELECT by key and an
//! upsert per transaction, with its values inlined: every text is new.
//! The control plane's own work (heartbeats) is measured idle and taken
//! out of each run, pro rata of its wall time.

use std::time::Duration;

use serde_json::json;
use switchyard_tests::api::Api;
use switchyard_tests::Cluster;

use crate::instructions::{
    callgrind, counted, pgbench_with, spawn_serve, wait_for, Killed, CLIENTS,
};
use crate::Options;

const SHORT: u64 = 100;
const LONG: u64 = 500;
const TOKEN: &str = "bench-token";

const SETUP: &str = "
    create table users(id int primary key, email text, name text);
    insert into users select g, 'User' || g || '@Example.com', 'n' || g from generate_series(1, 1000) g;
    create table plain (like users including all);
    insert into plain select * from users;";

fn script(table: &str) -> String {
    format!(
        "\\set id random(1, 1000)\n\
         UPDATE {table} SET email = 'U' || :id || '@X.io' WHERE id = :id;\n\
         SELECT email, name FROM {table} WHERE id = :id;\n\
         INSERT INTO {table} (id, email, name) VALUES (:id, 'N' || :id || '@X.io', 'n') \
         ON CONFLICT (id) DO UPDATE SET email = excluded.email;\n"
    )
}

/// The same statements on `users` with the dual-write written by hand:
/// the rewrite's own cost is `users` against this (issue 12, goal 4).
const HAND: &str = "\\set id random(1, 1000)\n\
     UPDATE users SET email = 'U' || :id || '@X.io', email_address = lower('U' || :id || '@X.io') \
     WHERE id = :id;\n\
     SELECT email, name FROM users WHERE id = :id;\n\
     INSERT INTO users (id, email, email_address, name) \
     VALUES (:id, 'N' || :id || '@X.io', lower('N' || :id || '@X.io'), 'n') \
     ON CONFLICT (id) DO UPDATE SET email = excluded.email, email_address = excluded.email_address;\n";

/// `serve` (under `wrapper`, e.g. callgrind, if any) in front of
/// `cluster`, with `users` migrated to dual-write; and its port.
pub(crate) fn start_migrated(
    runtime: &tokio::runtime::Runtime,
    cluster: &Cluster,
    wrapper: &[String],
) -> anyhow::Result<(Killed, u16)> {
    start_with(runtime, cluster, wrapper, SETUP, &["users"])
}

/// `serve` (under `wrapper`) in front of `cluster` once `setup` ran, with
/// `email → email_address` (`lower(email)`) of each of `tables` migrated
/// to dual-write; and its port.
pub(crate) fn start_with(
    runtime: &tokio::runtime::Runtime,
    cluster: &Cluster,
    wrapper: &[String],
    setup: &str,
    tables: &[&str],
) -> anyhow::Result<(Killed, u16)> {
    cluster.psql_admin(setup)?;
    let url = cluster.conn_str("trust_user", "postgres");
    let (serve, port, control_port) = spawn_serve(
        cluster,
        wrapper,
        &["--database-url", &url],
        &[("SWITCHYARD_CONTROL_TOKEN", TOKEN)],
    )?;
    wait_for(control_port)?;
    let api = Api::new(format!("127.0.0.1:{control_port}").parse()?, TOKEN);
    runtime.block_on(async {
        for table in tables {
            let name = format!("{table}-email");
            let spec = json!({"name": name, "table": table, "guard_trigger": false,
                "columns": [{"legacy": "email", "new": "email_address",
                             "forward": "lower(email)", "backward": "email_address"}]});
            let (status, body) = api.call("POST", "/v1/migrations", Some(spec)).await;
            anyhow::ensure!(status == 201, "create: {body}");
            // A slow server (under callgrind) makes expand a job: 202.
            let (status, body) = api.verb(&name, "expand").await;
            anyhow::ensure!(status == 200 || status == 202, "expand: {body}");
            let path = format!("/v1/migrations/{name}");
            let mut tries = 0;
            while api.call("GET", &path, None).await.1["phase"] != "expanded" {
                tries += 1;
                anyhow::ensure!(tries < 1200, "{name} never expanded");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            let (status, body) = api.verb(&name, "dual-write").await;
            anyhow::ensure!(status == 200, "dual-write: {body}");
        }
        anyhow::Ok(())
    })?;
    Ok((serve, port))
}

/// The three workloads: `users` (routed), `plain`, and `users` with the
/// dual-write written by hand, as pgbench script files under `dir`.
pub(crate) fn workloads(dir: &std::path::Path) -> anyhow::Result<Vec<(&'static str, Vec<String>)>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for (table, text) in [
        ("users", script("users")),
        ("plain", script("plain")),
        ("hand", HAND.to_owned()),
    ] {
        let path = dir.join(format!("{table}.sql"));
        std::fs::write(&path, text)?;
        out.push((table, vec!["-f".to_string(), path.display().to_string()]));
    }
    Ok(out)
}

/// Runs the comparison.
pub fn run(options: Options) -> anyhow::Result<()> {
    let runtime = crate::runtime()?;
    let cluster = Cluster::start()?;
    let dir = crate::instructions::dump_dir(cluster.scratch(), "callgrind-literals");
    std::fs::create_dir_all(&dir)?;
    let (serve, port) = start_migrated(&runtime, &cluster, &callgrind(&dir))?;
    let proxy = (serve.0.id(), None);
    // The control plane's own rate, idle.
    let idle = Duration::from_secs(options.seconds.max(5) as u64);
    let (background, took) = counted(proxy, port, &dir, || {
        std::thread::sleep(idle);
        Ok(())
    })?;
    let per_second = background as f64 / took.as_secs_f64();
    eprintln!("control plane idle: {per_second:.0} instructions per second");
    let mut results = Vec::new();
    for (table, workload) in workloads(&cluster.scratch().join("scripts"))? {
        pgbench_with(port, "simple", 20, &workload)?;
        let mut totals = Vec::new();
        for n in [SHORT, LONG] {
            let (total, took) = counted(proxy, port, &dir, || {
                pgbench_with(port, "simple", n, &workload)
            })?;
            totals.push(total as f64 - per_second * took.as_secs_f64());
        }
        let per_txn = (totals[1] - totals[0]) / ((LONG - SHORT) * CLIENTS) as f64;
        eprintln!("{table:>6}: {per_txn:.0} instructions per transaction");
        results.push(per_txn);
    }
    let ratio = results[0] / results[1];
    println!("| table | instructions per transaction (3 statements) |");
    println!("| --- | --- |");
    println!("| users (routed, dual-write) | {:.0} |", results[0]);
    println!("| plain (no rule) | {:.0} |", results[1]);
    println!("| ratio | {ratio:.2} |");
    println!(
        "| users, dual-write written by hand | {:.0} (the rewrite's own cost: {:+.0}) |",
        results[2],
        results[0] - results[2]
    );
    if let Some(parent) = std::path::Path::new(&options.out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(
        &options.out,
        serde_json::to_string_pretty(
            &json!({"routed": results[0], "plain": results[1], "ratio": ratio, "hand": results[2]}),
        )?,
    )?;
    drop(serve);
    Ok(())
}
