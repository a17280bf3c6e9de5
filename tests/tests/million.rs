//! The whole lifecycle on a 1M-row table from the API, with the catalog
//! checked after every phase: the field guide's final integrity query
//! (`information_schema.columns`), constraints and indexes.

use serde_json::{json, Value};
use switchyard_tests::tools::{api, http};
use switchyard_tests::{Cluster, TestProxy, TestProxyOptions};
use tokio_postgres::Client;

const TOKEN: &str = "million";
const ROWS: i64 = 1_000_000;

async fn call(proxy: &TestProxy, method: &str, path: &str) -> (u16, Value) {
    api(proxy.control_addr, TOKEN, method, path, None).await
}

/// The guide's integrity check: (column, nullable, type) of both columns.
async fn columns(db: &Client) -> Vec<(String, String, String)> {
    db.query(
        "SELECT column_name::text, is_nullable::text, data_type::text FROM information_schema.columns
         WHERE table_name = 'high_traffic_table' AND column_name IN ('legacy_field', 'new_field')
         ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// Valid index definitions and constraint definitions of the table.
async fn schema(db: &Client) -> (Vec<String>, Vec<String>) {
    let indexes = db
        .query(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index
             WHERE indrelid = 'high_traffic_table'::regclass AND indisvalid ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let constraints = db
        .query(
            "SELECT conname::text || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
             WHERE conrelid = 'high_traffic_table'::regclass ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (mut indexes, mut constraints): (Vec<String>, Vec<String>) = (indexes, constraints);
    indexes.sort();
    constraints.sort();
    (indexes, constraints)
}

fn s(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    v.sort();
    v
}

fn col(name: &str, nullable: &str, ty: &str) -> (String, String, String) {
    (name.into(), nullable.into(), ty.into())
}

async fn run(proxy: &TestProxy, verb: &str, expect: u16, phase: &str) -> Value {
    let path = format!("/v1/migrations/htt-field/{verb}");
    let (status, body) = call(proxy, "POST", &path).await;
    assert_eq!(status, expect, "{verb}: {body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(900);
    loop {
        let (_, d) = call(proxy, "GET", "/v1/migrations/htt-field").await;
        if d["phase"] == phase && d["job"]["state"] != "running" {
            return d;
        }
        assert_ne!(d["job"]["state"], "failed", "{d}");
        assert!(std::time::Instant::now() < deadline, "timed out: {d}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_rows_from_expand_to_complete() {
    let cluster = Cluster::start().unwrap();
    let db = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
        .await
        .unwrap();
    db.batch_execute(&format!(
        "CREATE TABLE high_traffic_table (id bigserial PRIMARY KEY, legacy_field varchar(255), hits int NOT NULL DEFAULT 0);
         INSERT INTO high_traffic_table (legacy_field) SELECT 'Item-' || g FROM generate_series(1, {ROWS}) g;
         CREATE INDEX htt_legacy_field_idx ON high_traffic_table (legacy_field);
         ANALYZE high_traffic_table;"
    ))
    .await
    .unwrap();
    let proxy = TestProxy::start(&cluster, TestProxyOptions::control(TOKEN))
        .await
        .unwrap();
    let spec = json!({"name": "htt-field", "table": "public.high_traffic_table",
        "columns": [{"legacy": "legacy_field", "new": "new_field", "type": "text",
                     "forward": "upper(legacy_field)", "backward": "new_field", "not_null": true}],
        // The writer used the legacy name until just before complete.
        "complete_quiet_minutes": 0});
    let body = spec.to_string();
    let (status, created) = http(
        proxy.control_addr,
        "POST",
        "/v1/migrations",
        Some(&body),
        Some(TOKEN),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{created}");
    let legacy_only = vec![col("legacy_field", "YES", "character varying")];
    let legacy_index =
        "CREATE INDEX htt_legacy_field_idx ON public.high_traffic_table USING btree (legacy_field)";
    let new_index =
        "CREATE INDEX htt_new_field_idx ON public.high_traffic_table USING btree (new_field)";
    let pkey =
        "CREATE UNIQUE INDEX high_traffic_table_pkey ON public.high_traffic_table USING btree (id)";
    let pkey_con = "high_traffic_table_pkey PRIMARY KEY (id)";
    assert_eq!(columns(&db).await, legacy_only);

    // Application writes through the proxy during the whole migration.
    let app = proxy.connect("md5_user").await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let update = app
                .prepare("UPDATE high_traffic_table SET legacy_field = $1, hits = hits + 1 WHERE id = $2")
                .await?;
            let read = app
                .prepare("SELECT legacy_field FROM high_traffic_table WHERE id = $1")
                .await?;
            let mut i = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = 1 + (i * 7919) % ROWS;
                let value = format!("Fresh-{i}");
                app.execute(&update, &[&value, &id]).await?;
                let got: String = app.query_one(&read, &[&id]).await?.get(0);
                assert!(got.eq_ignore_ascii_case(&value), "{got} after {value}");
                i += 1;
            }
            Ok::<_, tokio_postgres::Error>(i)
        })
    };

    run(&proxy, "expand", 200, "expanded").await;
    let both = vec![
        col("legacy_field", "YES", "character varying"),
        col("new_field", "YES", "text"),
    ];
    assert_eq!(columns(&db).await, both);
    assert_eq!(
        schema(&db).await,
        (s(&[pkey, legacy_index]), s(&[pkey_con]))
    );

    run(&proxy, "dual-write", 200, "dual_write").await;
    let d = run(&proxy, "backfill", 202, "backfilled").await;
    assert!(
        d["state"]["reports"]["backfill"]["rows_done"]
            .as_u64()
            .unwrap()
            >= ROWS as u64,
        "{d}"
    );
    assert_eq!(columns(&db).await, both);
    assert_eq!(
        schema(&db).await,
        (s(&[pkey, legacy_index, new_index]), s(&[pkey_con])),
        "the legacy index rebuilt on the new column"
    );
    let unfilled: i64 = db
        .query_one(
            "SELECT count(*) FROM high_traffic_table WHERE new_field IS DISTINCT FROM upper(legacy_field)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unfilled, 0);

    let d = run(&proxy, "verify", 202, "verified").await;
    assert_eq!(d["state"]["parity"]["mismatches"], 0, "{d}");
    run(&proxy, "switch-reads", 200, "reads_switched").await;
    let d = run(&proxy, "verify", 202, "reads_switched").await;
    assert_eq!(d["state"]["parity"]["phase"], "reads_switched", "{d}");
    assert_eq!(columns(&db).await, both);

    run(&proxy, "contract", 200, "contracted").await;
    let target = vec![col("new_field", "NO", "text")];
    assert_eq!(columns(&db).await, target, "legacy absent, new NOT NULL");
    assert_eq!(
        schema(&db).await,
        (s(&[pkey, new_index]), s(&[pkey_con])),
        "legacy index dropped, no helper constraint left"
    );
    // The application still used the legacy name up to here; `complete`
    // retires the rules, so it must have moved to the new name first.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap().expect("no client error");
    assert!(writes > 0);
    run(&proxy, "complete", 200, "completed").await;
    assert_eq!(columns(&db).await, target);
    let rows: i64 = db
        .query_one(
            "SELECT count(*) FROM high_traffic_table WHERE new_field IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, ROWS);
}
