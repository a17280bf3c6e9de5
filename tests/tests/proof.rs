//! The zero-downtime proof. Application traffic runs through `switchyard
//! serve` (the real binary, as its own process) for a whole migration,
//! `qty integer` → `qty_text text`: tokio-postgres workers with a shadow
//! model (prepared and simple INSERT, UPDATE, UPDATE reading the old value,
//! upserts, DELETE, SELECT by key and by the migrating column), a psycopg 3
//! client and a JDBC client with server-side prepared statements. The
//! control API walks every phase with assertions after each, while faults
//! are injected: a flip in the same instant as a burst of prepared writes,
//! a client dropping mid-pipeline, `kill -9` of serve mid-backfill, a
//! PostgreSQL restart, and a blocker during contract terminated through the
//! API. The only client errors allowed are lost connections at those
//! faults; every read matches the shadow model; the final schema is the
//! target.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_tests::load::Load;
use switchyard_tests::process::ServeProcess;
use switchyard_tests::raw::{cstrs, RawConn};
use switchyard_tests::tools::http;
use switchyard_tests::Cluster;
use tokio_postgres::Client;

const TOKEN: &str = "proof-token";
/// Seed rows; `SWITCHYARD_PROOF_ROWS` scales it (the long variant: 10M).
fn seed_rows() -> i64 {
    std::env::var("SWITCHYARD_PROOF_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000)
}

/// The first id the test's clients own: above every seed row.
fn owned(offset: i32) -> i32 {
    seed_rows() as i32 + 1_000_000 + offset
}

/// Load runs at least this long in each phase (`SWITCHYARD_PROOF_PHASE_SECONDS`).
fn phase_time() -> Duration {
    Duration::from_secs(
        std::env::var("SWITCHYARD_PROOF_PHASE_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    )
}
const NAME: &str = "items-qty";
const LOCK_TIMEOUT_MS: u64 = 100;

async fn api(s: &ServeProcess, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    switchyard_tests::tools::api(s.control_addr, TOKEN, method, path, body).await
}

async fn detail(s: &ServeProcess) -> Value {
    api(s, "GET", &format!("/v1/migrations/{NAME}"), None)
        .await
        .1
}

/// Posts a verb; for a job, waits until it is done.
async fn step(s: &ServeProcess, verb: &str, status: u16) -> Value {
    let (got, body) = api(s, "POST", &format!("/v1/migrations/{NAME}/{verb}"), None).await;
    assert_eq!(got, status, "{verb}: {body}");
    if got == 202 {
        return wait(s, |d| d["job"]["state"] == "done").await;
    }
    body
}

async fn wait(s: &ServeProcess, done: impl Fn(&Value) -> bool) -> Value {
    // Jobs walk the whole table: the bound grows with it.
    let deadline = Instant::now() + Duration::from_secs(300 + seed_rows() as u64 / 5_000);
    loop {
        let (status, d) = api(s, "GET", &format!("/v1/migrations/{NAME}"), None).await;
        if status == 200 && done(&d) {
            return d;
        }
        assert_ne!(d["job"]["state"], "failed", "{d}");
        assert!(Instant::now() < deadline, "timed out: {d}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Rows where the new column is not forward(legacy), while both exist.
async fn drift(db: &Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM items WHERE qty_text IS DISTINCT FROM qty::text",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

async fn direct(cluster: &Cluster) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres")).await {
            Ok(c) => return c,
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An external client reading its stop signal from stdin.
struct External {
    name: &'static str,
    child: Child,
}

impl External {
    fn spawn(name: &'static str, cmd: &mut Command) -> Self {
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        External { name, child }
    }

    /// Closes stdin and expects `ok OPS RECONNECTS` with OPS > 0.
    fn finish(mut self) -> (u64, u64) {
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{}: {} {text}", self.name, out.status);
        let mut words = text.split_whitespace().skip(1);
        let ops: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        let reconnects: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        assert!(ops > 0, "{}: {text}", self.name);
        (ops, reconnects)
    }
}

fn java_client(cluster: &Cluster, port: u16) -> External {
    let dir = cluster.scratch().join("java");
    std::fs::create_dir_all(&dir).unwrap();
    let jar = "/usr/share/java/postgresql.jar";
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/ProofClient.java");
    let status = Command::new("javac")
        .arg("-d")
        .arg(&dir)
        .args(["-cp", jar, src])
        .status()
        .unwrap();
    assert!(status.success(), "javac");
    let url = format!(
        "jdbc:postgresql://127.0.0.1:{port}/postgres?user=trust_user&sslmode=disable&prepareThreshold=1"
    );
    External::spawn(
        "jdbc",
        Command::new("java")
            .arg("-cp")
            .arg(format!("{jar}:{}", dir.display()))
            .arg("ProofClient")
            .arg(url)
            .arg(owned(2_000_000).to_string()),
    )
}

/// A rules flip issued together with a burst of prepared writes: every
/// write that starts after the flip answered is dual-written.
async fn flip_with_burst(serve: &ServeProcess, db: &Client) {
    let conn = format!(
        "host=127.0.0.1 port={} user=trust_user dbname=postgres sslmode=disable",
        serve.addr.port()
    );
    let barrier = Arc::new(tokio::sync::Barrier::new(17));
    let flipped = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut writers = Vec::new();
    for w in 0..16 {
        let c = switchyard_tests::proxy::connect(&conn).await.unwrap();
        let (barrier, flipped) = (barrier.clone(), flipped.clone());
        writers.push(tokio::spawn(async move {
            let insert = c
                .prepare("INSERT INTO items (id, qty, note) VALUES ($1, $2, 'burst')")
                .await?;
            barrier.wait().await;
            let mut after = Vec::new();
            for n in 0..25 {
                let id = owned(3_000_000) + w * 100 + n;
                let started = Instant::now();
                c.execute(&insert, &[&id, &n]).await?;
                if flipped.get().is_some_and(|f| *f <= started) {
                    after.push(id);
                }
            }
            Ok::<_, tokio_postgres::Error>(after)
        }));
    }
    barrier.wait().await;
    let (status, body) = api(
        serve,
        "POST",
        &format!("/v1/migrations/{NAME}/dual-write"),
        None,
    )
    .await;
    let _ = flipped.set(Instant::now());
    assert_eq!(status, 200, "{body}");
    let mut after = Vec::new();
    for w in writers {
        after.extend(w.await.unwrap().expect("burst writes succeed"));
    }
    let missed: i64 = db
        .query_one(
            "SELECT count(*) FROM items WHERE id = ANY($1) AND qty_text IS DISTINCT FROM qty::text",
            &[&after],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(missed, 0, "{} writes after the flip", after.len());
}

/// A client that sends Parse/Bind/Execute of a write and disconnects
/// before Sync: nothing is committed and nobody else notices.
async fn disconnect_mid_pipeline(serve: &ServeProcess, db: &Client) {
    let dropped = owned(4_000_000);
    let (mut raw, _) = RawConn::login(serve.addr.port(), "trust_user", 0, &[])
        .await
        .unwrap();
    raw.send(
        b'P',
        &[
            cstrs(&[
                "",
                "INSERT INTO items (id, qty, note) VALUES (5000000, 1, 'dropped')",
            ]),
            vec![0, 0],
        ]
        .concat(),
    )
    .await
    .unwrap();
    raw.send(b'B', &[cstrs(&["", ""]), vec![0, 0, 0, 0, 0, 0]].concat())
        .await
        .unwrap();
    raw.send(b'E', &[cstrs(&[""]), vec![0, 0, 0, 0]].concat())
        .await
        .unwrap();
    drop(raw);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: i64 = db
            .query_one(
                &format!("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{dropped}, 1, ''dropped''%' AND pid <> pg_backend_pid()"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the dropped session lingers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let written: i64 = db
        .query_one("SELECT count(*) FROM items WHERE id = $1", &[&dropped])
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, 0, "an unsynced write was not committed");
}

/// Names the next phase, after letting the load run in the previous one
/// for the configured phase time.
async fn enter(load: &Load, label: &str, since: &mut Instant) {
    let hold = phase_time();
    if let Some(left) = hold.checked_sub(since.elapsed()) {
        tokio::time::sleep(left).await;
    }
    load.label(label);
    *since = Instant::now();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_migration_under_load_survives_every_fault() {
    let cluster = Cluster::start().unwrap();
    let mut db = direct(&cluster).await;
    db.batch_execute(
        "CREATE TABLE items (id integer PRIMARY KEY, qty integer NOT NULL, note text);
         CREATE INDEX items_qty_idx ON items (qty);",
    )
    .await
    .unwrap();
    db.batch_execute(&format!(
        "INSERT INTO items SELECT g, g % 1000, 'seed' FROM generate_series(1, {}) g; ANALYZE items",
        seed_rows()
    ))
    .await
    .unwrap();
    let mut serve = ServeProcess::start(&cluster, TOKEN).await.unwrap();
    let port = serve.addr.port();
    let conn =
        format!("host=127.0.0.1 port={port} user=trust_user dbname=postgres sslmode=disable");
    let load = Load::start(&conn, 4, owned(0));
    let mut since = Instant::now();
    let started = Instant::now();
    let python = switchyard_tests::tools::python().unwrap();
    let py = External::spawn(
        "psycopg",
        Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/clients/proof_psycopg.py"
            ))
            .arg(port.to_string())
            .arg(owned(1_000_000).to_string()),
    );
    let java = java_client(&cluster, port);

    let spec = json!({"name": NAME, "table": "public.items",
        "columns": [{"legacy": "qty", "new": "qty_text", "type": "text",
                     "forward": "qty::text", "backward": "qty_text::integer", "not_null": true}],
        "backfill": {"lock_timeout_ms": LOCK_TIMEOUT_MS},
        // The clients used the legacy name until just before complete.
        "complete_quiet_minutes": 0});
    let (status, body) = api(&serve, "POST", "/v1/migrations", Some(spec)).await;
    assert_eq!(status, 201, "{body}");

    // 1. expand.
    enter(&load, "expand", &mut since).await;
    step(&serve, "expand", 200).await;
    // 2. dual-write, and back, and again at the same instant as a burst.
    enter(&load, "dual-write", &mut since).await;
    step(&serve, "dual-write", 200).await;
    step(&serve, "rollback", 200).await;
    flip_with_burst(&serve, &db).await;
    disconnect_mid_pipeline(&serve, &db).await;

    // 3. backfill, with serve killed (-9) in the middle and restarted.
    enter(&load, "backfill", &mut since).await;
    let slow = json!({"max_rows_per_second": 5000});
    api(
        &serve,
        "PATCH",
        &format!("/v1/migrations/{NAME}/backfill"),
        Some(slow),
    )
    .await;
    let (status, _) = api(
        &serve,
        "POST",
        &format!("/v1/migrations/{NAME}/backfill"),
        None,
    )
    .await;
    assert_eq!(status, 202);
    wait(&serve, |d| {
        d["job"]["rows_done"].as_u64().unwrap_or(0) >= 5000
    })
    .await;
    serve.restart(&cluster, TOKEN).await.unwrap();
    let fast = json!({"max_rows_per_second": null});
    let (status, _) = api(
        &serve,
        "PATCH",
        &format!("/v1/migrations/{NAME}/backfill"),
        Some(fast),
    )
    .await;
    assert_eq!(status, 200);
    let d = wait(&serve, |d| d["phase"] == "backfilled").await;
    assert_eq!(
        d["state"]["reports"]["indexes"][0]["outcome"], "created",
        "{d}"
    );
    let backfill_rate = d["state"]["reports"]["backfill"]["rows_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        .round();
    assert_eq!(drift(&db).await, 0, "after backfill");

    // PostgreSQL restarts under the load.
    enter(&load, "postgres-restart", &mut since).await;
    cluster.restart().unwrap();
    db = direct(&cluster).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while api(&serve, "GET", "/v1/status", None).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the control plane did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(drift(&db).await, 0, "after the restart");

    // 4. verify.
    enter(&load, "verify", &mut since).await;
    let d = step(&serve, "verify", 202).await;
    assert_eq!(d["phase"], "verified", "{d}");
    assert_eq!(d["state"]["parity"]["mismatches"], 0);
    // 5. switch-reads; 6. revert and switch again.
    enter(&load, "reads", &mut since).await;
    step(&serve, "switch-reads", 200).await;
    let (status, body) = api(
        &serve,
        "POST",
        &format!("/v1/migrations/{NAME}/revert"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(detail(&serve).await["routing"]["reads"], "legacy");
    step(&serve, "switch-reads", 200).await;
    assert_eq!(detail(&serve).await["routing"]["reads"], "new");
    let d = step(&serve, "verify", 202).await;
    assert_eq!(d["state"]["parity"]["mismatches"], 0, "{d}");
    assert_eq!(drift(&db).await, 0, "after the read switch");

    // 7. contract, held up by a long transaction that is terminated
    // through the API.
    let blocker = direct(&cluster).await;
    blocker
        .batch_execute("BEGIN; SELECT count(*) FROM items")
        .await
        .unwrap();
    let pid: i32 = blocker
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    enter(&load, "contract", &mut since).await;
    let contract = {
        let addr = serve.control_addr;
        tokio::spawn(async move {
            http(
                addr,
                "POST",
                &format!("/v1/migrations/{NAME}/contract"),
                None,
                Some(TOKEN),
            )
            .await
            .unwrap()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, list) = api(&serve, "GET", "/v1/blockers", None).await;
        let waiting = list.as_array().unwrap().iter().any(|b| {
            b["granted"] == false && b["blocked_by"].as_array().unwrap().contains(&json!(pid))
        });
        if waiting {
            break;
        }
        assert!(Instant::now() < deadline, "the DDL never queued: {list}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The blocker holds: the call answers 202 and the DDL goes on.
    let (status, body) = contract.await.unwrap();
    assert_eq!(status, 202, "{body}");
    let (status, body) = api(
        &serve,
        "POST",
        &format!("/v1/blockers/{pid}/terminate"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    wait(&serve, |d| d["phase"] == "contracted").await;
    enter(&load, "contracted", &mut since).await;
    // Some traffic under the contracted routing before the clients stop.
    let (py_ops, py_reconnects) = py.finish();
    let (java_ops, java_reconnects) = java.finish();
    let reports = load.stop().await;

    // 8. complete (the application has moved to the new name by now).
    step(&serve, "complete", 200).await;

    let mut failures = Vec::new();
    let mut ops = 0;
    let mut losses = 0;
    for r in &reports {
        failures.extend(r.failures.iter().cloned());
        ops += r.ops;
        losses += r.connection_losses;
        assert!(r.ops > 0, "worker at {} did nothing", r.base);
        let rows = db
            .query(
                "SELECT id, qty_text::integer FROM items WHERE id >= $1 AND id < $2",
                &[&r.base, &(r.base + 300)],
            )
            .await
            .unwrap();
        let actual: std::collections::HashMap<i32, i32> =
            rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        assert_eq!(actual, r.shadow, "worker at {}: database vs shadow", r.base);
    }
    assert!(failures.is_empty(), "client errors: {failures:#?}");
    // Lost connections happen only at the injected faults (serve killed,
    // PostgreSQL restarted, the blocker terminated is not a client).
    assert!(losses > 0, "the faults were felt");
    // Statements during the DDL steps waited at most lock_timeout plus a
    // margin for this shared machine.
    for label in ["expand", "contract"] {
        let worst = reports
            .iter()
            .flat_map(|r| r.latencies.get(label).into_iter().flatten())
            .max()
            .copied()
            .unwrap_or(0);
        assert!(
            u64::from(worst) < (LOCK_TIMEOUT_MS + 1500) * 1000,
            "{label}: slowest statement {worst} µs"
        );
    }
    let columns: Vec<(String, String, String)> = db
        .query(
            "SELECT column_name::text, is_nullable::text, data_type::text FROM information_schema.columns
             WHERE table_name = 'items' AND column_name IN ('qty', 'qty_text')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        columns,
        vec![("qty_text".to_string(), "NO".to_string(), "text".to_string())]
    );
    let mut summary = std::io::stderr();
    let _ = writeln!(
        summary,
        "proof: {} seed rows, {:.0} s; {ops} tokio-postgres statements, 0 client errors, {losses} lost connections at injected faults; psycopg {py_ops} ops ({py_reconnects} reconnects); jdbc {java_ops} ops ({java_reconnects} reconnects); backfill {} rows/s",
        seed_rows(),
        started.elapsed().as_secs_f64(),
        backfill_rate
    );
    let mut labels: std::collections::BTreeMap<&str, Vec<u32>> = Default::default();
    for r in &reports {
        for (label, lat) in &r.latencies {
            labels.entry(label).or_default().extend(lat);
        }
    }
    for (label, mut lat) in labels {
        lat.sort_unstable();
        let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
        let p50 = lat[lat.len() / 2];
        let _ = writeln!(
            summary,
            "proof phase {label:<16} statements {:>7}  p50 {:>6} µs  p99 {:>7} µs  max {:>7} µs",
            lat.len(),
            p50,
            p99,
            lat.last().copied().unwrap_or(0)
        );
    }
}
