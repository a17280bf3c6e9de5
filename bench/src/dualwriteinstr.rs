//! `dualwriteinstr`: the rewrite's own cost (issue 12, goal 4) in
//! instructions on the whole path: the proxy's and PostgreSQL's backends',
//! per transaction, both counted by callgrind (the same count however busy
//! the machine is). The whole-machine CPU of `guardcpu` moves by ±7% per
//! round on this machine; this does not.
//!
//! The server runs under callgrind (a backend's counts are dumped when it
//! exits, which it does when its pgbench client leaves), and so does
//! `serve`. Two tables are migrated, `email → email_address` by
//! `lower(email)`: `users` with `text` columns and `users_vc` with
//! `varchar(320)` ones (the rewritten write casts the value to the legacy
//! column's type, unless it is a literal short enough to be stored
//! unchanged). For each, one UPDATE per transaction, routed (the proxy
//! adds the dual-write) or with the dual-write written by hand, both
//! through the proxy: a literal value in the simple protocol (also in
//! parentheses, as pgjdbc's simple query mode sends it), an expression in
//! the simple and the prepared protocol; each run twice
//! (`SHORT` and `LONG` transactions per client), the difference divided by
//! the extra transactions.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;
use switchyard_tests::Cluster;

use crate::instructions::{callgrind, counted, dump_dir, pgbench_with, CLIENTS};
use crate::literals::start_with;
use crate::Options;

const SHORT: u64 = 100;
const LONG: u64 = 400;
const ROWS: u32 = 1000;
/// Backends per pgbench run: one per client, and pgbench's first
/// connection (its start-up only; it cancels out like theirs).
const BACKENDS: usize = CLIENTS as usize + 1;

const SETUP: &str = "
    create table users(id int primary key, email text, name text);
    insert into users select g, 'User' || g || '@Example.com', 'n' || g from generate_series(1, 1000) g;
    create table users_vc(id int primary key, email varchar(320), name text);
    insert into users_vc select g, 'User' || g || '@Example.com', 'n' || g from generate_series(1, 1000) g;";

/// How the application gives the new value: one literal (what drivers
/// that inline values send; pgbench fills `:id` in, simple protocol only)
/// or an expression.
const LITERAL: &str = "'U:id@X.io'";
/// A literal as pgjdbc's simple query mode inlines it.
const PARENTHESISED: &str = "('U:id@X.io')";
const EXPRESSION: &str = "'U' || :id || '@X.io'";

/// The statements compared for one value: the application's (which the
/// proxy dual-writes), the dual-write by hand, and for `varchar(320)` by
/// hand with the cast that keeps it exact for values over 320 characters.
fn forms(table: &str, value: &str) -> Vec<(&'static str, String)> {
    let set = |extra: String| format!("UPDATE {table} SET email = {value}{extra} WHERE id = :id;");
    let mut out = vec![
        ("rewritten", set(String::new())),
        ("hand", set(format!(", email_address = lower({value})"))),
    ];
    if table == "users_vc" && value == EXPRESSION {
        let cast = format!(", email_address = lower(({value})::character varying(320))");
        out.push(("hand+cast", set(cast)));
    }
    out
}

/// The instructions in the dumps of pgbench's backends that ended since
/// `seen` (waiting for `count` of them), and the dumps now seen. A backend
/// is pgbench's if the server's log says so when it connected (others, the
/// control plane's, come and go too).
fn ended_backends(
    dir: &Path,
    log: &Path,
    seen: &BTreeSet<PathBuf>,
    count: usize,
) -> anyhow::Result<(u64, BTreeSet<PathBuf>)> {
    for _ in 0..600 {
        let now: BTreeSet<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        let pgbench = pgbench_pids(log)?;
        let new: Vec<&PathBuf> = now
            .difference(seen)
            .filter(|p| dump_pid(p).is_some_and(|pid| pgbench.contains(&pid)))
            .collect();
        let totals: Vec<Option<u64>> = new.iter().map(|p| summary(p)).collect();
        if new.len() >= count && totals.iter().all(Option::is_some) {
            anyhow::ensure!(
                new.len() == count,
                "{} backends ended, not {count}",
                new.len()
            );
            return Ok((totals.into_iter().flatten().sum(), now));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the backends' dumps never came")
}

/// The process ids the server logged connections of pgbench for.
fn pgbench_pids(log: &Path) -> anyhow::Result<BTreeSet<u32>> {
    Ok(std::fs::read_to_string(log)?
        .lines()
        .filter(|l| l.contains("connection authorized") && l.contains("application_name=pgbench"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect())
}

/// The process id in a dump's name (`cg.<pid>`).
fn dump_pid(path: &Path) -> Option<u32> {
    path.file_name()?
        .to_str()?
        .strip_prefix("cg.")?
        .parse()
        .ok()
}

/// A finished dump's instruction total.
fn summary(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("summary: "))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs the measurement.
pub fn run(options: Options) -> anyhow::Result<()> {
    let runtime = crate::runtime()?;
    let cluster = Cluster::start()?;
    let server_dir = dump_dir(cluster.scratch(), "callgrind-server");
    let proxy_dir = dump_dir(cluster.scratch(), "callgrind-proxy");
    std::fs::create_dir_all(&server_dir)?;
    std::fs::create_dir_all(&proxy_dir)?;
    let server_args = [
        "-c",
        "autovacuum=off",
        "-c",
        "log_connections=on",
        "-c",
        "log_line_prefix=%p ",
    ];
    let _server = cluster.restart_under(&callgrind(&server_dir), &server_args)?;
    let log = cluster.scratch().join("server-wrapped.log");
    let (serve, port) = start_with(
        &runtime,
        &cluster,
        &callgrind(&proxy_dir),
        SETUP,
        &["users", "users_vc"],
    )?;
    // Backfilled, as a dual-write mostly runs: every UPDATE then replaces
    // a value of about its own size, whichever form runs first.
    cluster.psql_admin(
        "update users set email_address = lower(email);
         update users_vc set email_address = lower(email)",
    )?;
    cluster.psql_admin("vacuum full users, users_vc")?;
    let proxy = (serve.0.id(), None);
    let scripts = cluster.scratch().join("scripts");
    std::fs::create_dir_all(&scripts)?;
    let mut seen: BTreeSet<PathBuf> = std::fs::read_dir(&server_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let mut rows = Vec::new();
    for table in ["users", "users_vc"] {
        for (mode, value) in [
            ("simple", LITERAL),
            ("simple", PARENTHESISED),
            ("simple", EXPRESSION),
            ("prepared", EXPRESSION),
        ] {
            let mut per_form = Vec::new();
            for (form, sql) in forms(table, value) {
                let path = scripts.join(format!("{table}-{form}.sql"));
                std::fs::write(&path, format!("\\set id random(1, {ROWS})\n{sql}\n"))?;
                let workload = vec!["-f".to_string(), path.display().to_string()];
                // Warm the caches (rewrite and server) once.
                pgbench_with(port, mode, 20, &workload)?;
                (_, seen) = ended_backends(&server_dir, &log, &seen, BACKENDS)?;
                let mut totals = Vec::new();
                for n in [SHORT, LONG] {
                    // Autovacuum is off (it would run under callgrind too):
                    // each run starts from a pruned table, not from the dead
                    // rows the runs before it left.
                    cluster.psql_admin(&format!("vacuum {table}"))?;
                    let (in_proxy, _) = counted(proxy, port, &proxy_dir, || {
                        pgbench_with(port, mode, n, &workload)
                    })?;
                    let in_server;
                    (in_server, seen) = ended_backends(&server_dir, &log, &seen, BACKENDS)?;
                    totals.push((in_proxy as f64, in_server as f64));
                }
                let extra = ((LONG - SHORT) * CLIENTS) as f64;
                let proxy_tx = (totals[1].0 - totals[0].0) / extra;
                let server_tx = (totals[1].1 - totals[0].1) / extra;
                eprintln!(
                    "{table} {mode} {value} {form}: proxy {proxy_tx:.0}, server {server_tx:.0}"
                );
                per_form.push((form, proxy_tx, server_tx));
            }
            let value = match value {
                LITERAL => "literal",
                PARENTHESISED => "literal in parentheses",
                _ => "expression",
            };
            rows.push((table, mode, value, per_form));
        }
    }
    print(&rows);
    let raw: Vec<_> = rows
        .iter()
        .map(|(table, mode, value, f)| {
            let forms: serde_json::Map<String, serde_json::Value> = f
                .iter()
                .map(|(form, p, s)| (form.to_string(), json!({"proxy": p, "server": s})))
                .collect();
            json!({"table": table, "mode": mode, "value": value, "forms": forms})
        })
        .collect();
    if let Some(parent) = Path::new(&options.out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&options.out, serde_json::to_string_pretty(&raw)?)
        .context("writing the results")?;
    drop(serve);
    Ok(())
}

type Row<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, f64, f64)>);

fn print(rows: &[Row<'_>]) {
    println!("| legacy column | protocol | value | rewritten: proxy + server | by hand: proxy + server | by hand / rewritten |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (table, mode, value, f) in rows {
        let ty = if *table == "users" {
            "text"
        } else {
            "varchar(320)"
        };
        let (_, rp, rs) = f[0];
        for (form, hp, hs) in &f[1..] {
            let hand = if *form == "hand+cast" {
                "by hand, cast"
            } else {
                "by hand"
            };
            println!(
                "| {ty} | {mode} | {value} | {rp:.0} + {rs:.0} = {:.0} | {hand}: {hp:.0} + {hs:.0} = {:.0} | {:.3} |",
                rp + rs,
                hp + hs,
                (hp + hs) / (rp + rs)
            );
        }
    }
}
