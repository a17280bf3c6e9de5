//! `dualwrite`: keeping a new column in step with a legacy one, three ways,
//! side by side: Switchyard rewriting `UPDATE ... SET email = ...` in the
//! wire path, the same dual-write SQL hand-written and sent directly, and a
//! pgroll-style PL/pgSQL BEFORE trigger. The hand-written SQL is also sent
//! through the proxy, to separate the cost of the hop from the rewrite's.
//! `switchyard+guard` is Switchyard on an identical table that carries the
//! migration's guard trigger (whose WHEN clause keeps proxied writes out of
//! its function).

use std::time::Duration;

use switchyard::app::App;
use switchyard_rules::{Phase, RuleSet};
use switchyard_tests::rules::{install, single_pair, table_facts};
use switchyard_tests::Cluster;

use crate::pgbench::run_pgbench;
use crate::report::{self, Cell, Sample};
use crate::Options;

const SETUP: &str = "
    create table users(id int primary key, email varchar(320), name text, email_address varchar(320));
    insert into users select g, 'User' || g || '@Example.com', 'n' || g, 'user' || g || '@example.com'
      from generate_series(1, :rows) g;
    create table users_guard (like users including all);
    insert into users_guard select * from users;
    create schema if not exists switchyard;
    create table users_trg (like users including all);
    insert into users_trg select * from users;
    create function users_trg_sync() returns trigger language plpgsql as $$
      begin new.email_address := lower(new.email); return new; end $$;
    create trigger users_trg_sync before insert or update on users_trg
      for each row execute function users_trg_sync();
    create table users_floor (like users including all);
    insert into users_floor select * from users;
    create function users_floor_noop() returns trigger language plpgsql as $$
      begin return new; end $$;
    create trigger users_floor_noop before update of email, email_address on users_floor
      for each row when (false) execute function users_floor_noop();";

/// The routed tables (`users`; `users_guard` with the guard trigger;
/// `users_floor` with the least a row trigger costs, one whose WHEN is
/// `false`) and the rule set that routes them, on a fresh cluster.
pub(crate) struct Tables {
    /// The throwaway cluster.
    pub cluster: Cluster,
    /// Rows per table.
    pub rows: u32,
    /// Dual-write rules for `users`, `users_guard` and `users_floor`.
    pub rules: RuleSet,
}

/// Creates the tables, installs the guard on `users_guard` and builds the
/// rules that dual-write them.
pub(crate) fn tables(runtime: &tokio::runtime::Runtime, scale: u32) -> anyhow::Result<Tables> {
    let cluster = Cluster::start()?;
    let rows = scale * 10_000;
    cluster.psql_admin(&SETUP.replace(":rows", &rows.to_string()))?;
    cluster.psql_admin("vacuum analyze")?;
    let rules = runtime.block_on(async {
        let direct =
            switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres")).await?;
        let pair = |facts| {
            single_pair(
                1,
                "postgres",
                facts,
                "email",
                "email_address",
                "lower(email)",
                "email_address",
                Phase::DualWrite,
            )
        };
        let mut set = pair(table_facts(&direct, "public", "users").await?);
        let mut guarded = pair(table_facts(&direct, "public", "users_guard").await?);
        guarded.tables[0].mappings[0].guarded = true;
        set.tables.append(&mut guarded.tables);
        let mut floor = pair(table_facts(&direct, "public", "users_floor").await?);
        set.tables.append(&mut floor.tables);
        let guard = switchyard_control::guard_statements(
            "public.users_guard",
            "users_guard-email",
            &[switchyard_control::catalog::Pair {
                legacy: "email".into(),
                legacy_type: "character varying(320)".into(),
                new: "email_address".into(),
                new_type: "character varying(320)".into(),
                forward: "lower(email)".into(),
                backward: "email_address".into(),
                not_null: false,
                legacy_position: 1,
                default: None,
                group: None,
                forward_takes_literals: false,
            }],
        )?;
        direct.batch_execute(&guard).await?;
        anyhow::Ok(set)
    })?;
    Ok(Tables {
        cluster,
        rows,
        rules,
    })
}

/// A pgbench script file: a random key, then `sql`.
pub(crate) fn script(
    cluster: &Cluster,
    rows: u32,
    name: &str,
    sql: &str,
) -> anyhow::Result<Vec<String>> {
    let dir = cluster.scratch().join("scripts");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    std::fs::write(&path, format!("\\set id random(1, {rows})\n{sql}\n"))?;
    Ok(vec!["-f".to_string(), path.display().to_string()])
}

/// Rows of the routed tables whose new column is not `lower(email)`: the
/// dual-write kept them in step if this is 0.
pub(crate) fn out_of_step(cluster: &Cluster) -> anyhow::Result<String> {
    let count = |t: &str| {
        format!("(select count(*) from {t} where email_address is distinct from lower(email))")
    };
    let sql = format!(
        "select {}",
        ["users", "users_guard", "users_floor"]
            .map(count)
            .join(" + ")
    );
    Ok(cluster.psql_admin(&sql)?.trim().to_string())
}

/// The routed UPDATE of the legacy column (the proxy dual-writes it).
/// The same update with the dual-write written by hand.
pub(crate) const HAND_UPDATE: &str = "UPDATE users SET email = 'U' || :id || '@X.io', \
     email_address = lower('U' || :id || '@X.io') WHERE id = :id;";

pub(crate) fn routed_update(table: &str) -> String {
    format!("UPDATE {table} SET email = 'U' || :id || '@X.io' WHERE id = :id;")
}

/// Runs the comparison.
pub fn run(options: Options) -> anyhow::Result<()> {
    let runtime = crate::runtime()?;
    let Tables {
        cluster,
        rows,
        rules,
    } = tables(&runtime, options.scale)?;
    let config = crate::serve::local(cluster.addr(), None);
    // The same proxy reaching the server through its Unix socket.
    let unix_config = crate::serve::local(cluster.socket_path().display().to_string(), None);
    let app = runtime.block_on(App::start(config))?;
    let unix_app = runtime.block_on(App::start(unix_config))?;
    install(&app.rules, rules.clone());
    install(&unix_app.rules, rules);

    let write = |name: &str, sql: &str| script(&cluster, rows, name, sql);
    let routed = write("routed.sql", &routed_update("users"))?;
    let hand = write("hand.sql", HAND_UPDATE)?;
    let guarded = write("guarded.sql", &routed_update("users_guard"))?;
    let trigger = write(
        "trigger.sql",
        "UPDATE users_trg SET email = 'U' || :id || '@X.io' WHERE id = :id;",
    )?;
    let paths = [
        ("handwritten", cluster.port, &hand),
        ("switchyard", app.proxy_addr.port(), &routed),
        ("switchyard+guard", app.proxy_addr.port(), &guarded),
        // The hand-written SQL through the proxy: the hop's own cost.
        ("hand+proxy", app.proxy_addr.port(), &hand),
        ("trigger", cluster.port, &trigger),
        ("switchyard-unix", unix_app.proxy_addr.port(), &routed),
    ];

    let mut samples = Vec::new();
    for round in 0..options.rounds {
        for mode in ["prepared", "simple"] {
            for (path, port, script) in &paths {
                let logdir = cluster.scratch().join(format!("dw-{round}-{path}-{mode}"));
                std::fs::create_dir_all(&logdir)?;
                let s = run_pgbench(*port, mode, 8, options.seconds, &logdir, script)?;
                eprintln!(
                    "round {round} {mode:>8} {path:<11} tps={:>8.0} avg={:>7.1}us p99={:>7.1}us",
                    s.tps, s.avg_us, s.p99_us
                );
                samples.push(Sample {
                    round,
                    path: path.to_string(),
                    cell: Cell {
                        mode: mode.to_string(),
                        clients: 8,
                    },
                    ..s
                });
            }
        }
    }
    // The routed table really was dual-written.
    let mismatches = out_of_step(&cluster)?;
    let table = report::summarise(&samples);
    println!(
        "{}",
        report::render(
            &table,
            "handwritten",
            "trigger",
            &[
                "handwritten",
                "switchyard",
                "switchyard+guard",
                "hand+proxy",
                "trigger",
                "switchyard-unix"
            ]
        )
    );
    println!(
        "rows where email_address is distinct from lower(email) after the run (routed tables): {mismatches}"
    );
    if let Some(dir) = std::path::Path::new(&options.out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &options.out,
        serde_json::to_string_pretty(&report::to_json(&samples, &table))?,
    )?;
    runtime.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(5), app.shutdown()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), unix_app.shutdown()).await;
    });
    Ok(())
}
