//! The control API against a real database and a real proxy: create,
//! expand, dual-write, gates, force, revert, audit, auth and errors.

use serde_json::{json, Value};
use switchyard_tests::tools::{api, http};
use switchyard_tests::{Cluster, TestProxy, TestProxyOptions};

const TOKEN: &str = "s3cret-token";

async fn setup() -> (Cluster, TestProxy, tokio_postgres::Client) {
    let cluster = Cluster::start().unwrap();
    let direct = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
        .await
        .unwrap();
    direct
        .batch_execute(
            "create table users(id serial primary key, email varchar(320), name text);
             insert into users(email, name) select 'User' || g || '@X.io', 'n' from generate_series(1, 100) g;",
        )
        .await
        .unwrap();
    let proxy = TestProxy::start(&cluster, TestProxyOptions::control(TOKEN))
        .await
        .unwrap();
    (cluster, proxy, direct)
}

async fn call(proxy: &TestProxy, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    api(proxy.control_addr, TOKEN, method, path, body).await
}

fn spec() -> Value {
    json!({
        "name": "users-email",
        "table": "public.users",
        "columns": [{"legacy": "email", "new": "email_address", "type": "varchar(320)",
                     "forward": "lower(email)", "backward": "email_address", "not_null": true}],
        "backfill": {"target_chunk_ms": 100, "max_rows_per_second": null, "lock_timeout_ms": 100}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_expand_dual_write_gates_and_revert() {
    let (_cluster, proxy, direct) = setup().await;
    let mut with_default = spec();
    with_default["columns"][0]["default"] = json!("'unknown'");
    let (status, created) = call(&proxy, "POST", "/v1/migrations", Some(with_default)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["phase"], "planned");
    let file_before: u32 = direct
        .query_one(
            "select relfilenode::int8::int4 from pg_class where relname = 'users'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i32>(0) as u32;
    let (status, _) = call(&proxy, "POST", "/v1/migrations", Some(spec())).await;
    assert_eq!(status, 409, "a second migration of the same column");

    let (status, body) = call(&proxy, "POST", "/v1/migrations/users-email/expand", None).await;
    assert_eq!(status, 200, "{body}");
    let row = direct
        .query_one(
            "select data_type, character_maximum_length, is_nullable from information_schema.columns
             where table_name = 'users' and column_name = 'email_address'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "character varying");
    assert_eq!(row.get::<_, Option<i32>>(1), Some(320));
    assert_eq!(row.get::<_, String>(2), "YES");
    // The default came with the column, and the table was not rewritten.
    let (default, file_after): (Option<String>, i32) = direct
        .query_one(
            "select (select column_default::text from information_schema.columns
                     where table_name = 'users' and column_name = 'email_address'),
                    (select relfilenode::int8::int4 from pg_class where relname = 'users')",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(default.as_deref(), Some("'unknown'::character varying"));
    assert_eq!(file_after as u32, file_before, "no table rewrite");

    let (status, body) = call(
        &proxy,
        "POST",
        "/v1/migrations/users-email/dual-write",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["routing"],
        json!({"reads": "legacy", "writes": "both"})
    );
    let app = proxy.connect("trust_user").await.unwrap();
    app.execute("update users set email = 'Changed@X.io' where id = 1", &[])
        .await
        .unwrap();
    let new: Option<String> = direct
        .query_one("select email_address from users where id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        new.as_deref(),
        Some("changed@x.io"),
        "the published rules dual-write"
    );

    // Gates: no backfill or parity yet.
    let (status, body) = call(
        &proxy,
        "POST",
        "/v1/migrations/users-email/switch-reads",
        None,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");

    // Revert answers with the new version and the swap time.
    let (status, body) = call(&proxy, "POST", "/v1/revert", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["rules_version"].as_u64().unwrap() > 0);
    assert!(body["swap_micros"].is_u64());

    // The instance acknowledges the new version once no session is still
    // in flight under the old one (the driver closes its statements in the
    // background, which pins it for a moment).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let st = loop {
        let (status, st) = call(&proxy, "GET", "/v1/status", None).await;
        assert_eq!(status, 200);
        if st["instances"][0]["acknowledged_version"] == st["rules_version"] {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "{st}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(st["migrations"][0]["phase"], "dual_write");

    let (_, events) = call(&proxy, "GET", "/v1/events", None).await;
    let actions: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    // expand's DDL, then dual-write's (the guard trigger).
    assert_eq!(actions, vec!["create", "phase", "ddl", "phase", "ddl"]);

    // Rollback to expanded, then to planned (drops the new column).
    for _ in 0..2 {
        let (status, body) =
            call(&proxy, "POST", "/v1/migrations/users-email/rollback", None).await;
        assert_eq!(status, 200, "{body}");
    }
    let n: i64 = direct
        .query_one(
            "select count(*) from information_schema.columns where column_name = 'email_address'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_auth() {
    let (_cluster, proxy, _direct) = setup().await;
    let (status, body) = http(proxy.control_addr, "GET", "/v1/status", None, None)
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = http(proxy.control_addr, "GET", "/v1/status", None, Some("wrong"))
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, _) = http(proxy.control_addr, "GET", "/healthz", None, None)
        .await
        .unwrap();
    assert_eq!(status, 200, "healthz needs no token");

    let (status, body) = call(&proxy, "POST", "/v1/migrations", None).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invalid migration spec"));
    // A default must be non-volatile (a volatile one would rewrite the table).
    let mut volatile = spec();
    volatile["columns"][0]["default"] = json!("random()::text");
    let (status, body) = call(&proxy, "POST", "/v1/migrations", Some(volatile)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("columns[0].default"),
        "{body}"
    );
    let mut bad = spec();
    bad["columns"][0]["legacy"] = json!("mail");
    let (status, body) = call(&proxy, "POST", "/v1/migrations", Some(bad)).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("columns[0].legacy"),
        "{body}"
    );
    let mut bad = spec();
    bad["columns"][0]["forward"] = json!("lower(email) + 1");
    let (status, body) = call(&proxy, "POST", "/v1/migrations", Some(bad)).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("columns[0].forward"),
        "{body}"
    );
    let mut bad = spec();
    bad["table"] = json!("public.nope");
    let (status, body) = call(&proxy, "POST", "/v1/migrations", Some(bad)).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = call(&proxy, "GET", "/v1/migrations/unknown", None).await;
    assert_eq!(status, 404);
    let (status, _) = call(&proxy, "POST", "/v1/migrations/unknown/expand", None).await;
    assert_eq!(status, 404);
    // Wrong phase.
    let (status, _) = call(&proxy, "POST", "/v1/migrations", Some(spec())).await;
    assert_eq!(status, 201);
    let (status, body) = call(
        &proxy,
        "POST",
        "/v1/migrations/users-email/contract?force=true",
        None,
    )
    .await;
    assert_eq!(status, 409, "force never skips phases: {body}");
}

/// Polls the migration detail until `done` says so (bounded).
async fn wait_for(proxy: &TestProxy, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (_, detail) = call(proxy, "GET", "/v1/migrations/users-email", None).await;
        if done(&detail) {
            return detail;
        }
        assert_ne!(detail["job"]["state"], "failed", "{detail}");
        assert!(std::time::Instant::now() < deadline, "timed out: {detail}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_under_application_writes() {
    let (_cluster, proxy, direct) = setup().await;
    direct
        .batch_execute("insert into users(email, name) select 'Bulk' || g || '@X.io', 'b' from generate_series(1, 20000) g")
        .await
        .unwrap();
    let post = |verb: &str| format!("/v1/migrations/users-email/{verb}");
    assert_eq!(
        call(&proxy, "POST", "/v1/migrations", Some(spec())).await.0,
        201
    );
    assert_eq!(call(&proxy, "POST", &post("expand"), None).await.0, 200);
    assert_eq!(call(&proxy, "POST", &post("dual-write"), None).await.0, 200);

    // The application keeps writing through the proxy the whole time.
    let app = proxy.connect("scram_user").await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let update = app
                .prepare("update users set email = $1 where id = $2")
                .await?;
            let read = app.prepare("select email from users where id = $1").await?;
            let mut i = 0i32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = 1 + (i * 7919) % 20000;
                let email = format!("W{i}@X.io");
                app.execute(&update, &[&email, &id]).await?;
                let got: String = app.query_one(&read, &[&id]).await?.get(0);
                assert!(
                    got.eq_ignore_ascii_case(&email),
                    "read {got} after writing {email}"
                );
                i += 1;
            }
            Ok::<_, tokio_postgres::Error>(i)
        })
    };

    let (status, body) = call(&proxy, "POST", &post("backfill"), None).await;
    assert_eq!(status, 202, "{body}");
    let detail = wait_for(&proxy, |d| d["phase"] == "backfilled").await;
    assert!(
        detail["state"]["reports"]["backfill"]["rows_done"]
            .as_u64()
            .unwrap()
            >= 20000,
        "{detail}"
    );
    assert_eq!(call(&proxy, "POST", &post("verify"), None).await.0, 202);
    let detail = wait_for(&proxy, |d| d["phase"] == "verified").await;
    assert_eq!(detail["state"]["parity"]["mismatches"], 0);
    assert_eq!(
        call(&proxy, "POST", &post("switch-reads"), None).await.0,
        200
    );
    // Contract needs a clean pass completed after the switch.
    assert_eq!(call(&proxy, "POST", &post("contract"), None).await.0, 409);
    assert_eq!(call(&proxy, "POST", &post("verify"), None).await.0, 202);
    wait_for(&proxy, |d| {
        d["state"]["parity"]["phase"] == "reads_switched" && d["job"]["state"] == "done"
    })
    .await;
    let (status, body) = call(&proxy, "POST", &post("contract"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["phase"], "contracted");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer
        .await
        .unwrap()
        .expect("no client error during the migration");
    assert!(writes > 0);

    // The catalog after contract: legacy gone, the new column NOT NULL.
    let rows = direct
        .query(
            "select column_name::text, is_nullable::text from information_schema.columns
             where table_name = 'users' and column_name in ('email', 'email_address')",
            &[],
        )
        .await
        .unwrap();
    let cols: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(cols, vec![("email_address".to_string(), "NO".to_string())]);
    // The application still uses the legacy name; backfilled rows read lower-case.
    let app = proxy.connect("md5_user").await.unwrap();
    let email: String = app
        .query_one("select email from users where id = 20100", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(email, "bulk20000@x.io");
    // That application still uses the legacy name: complete waits for it.
    let (status, body) = call(&proxy, "POST", &post("complete"), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("select email from users where id = 20100"),
        "{body}"
    );
    assert_eq!(
        call(&proxy, "POST", &post("complete?force=true"), None)
            .await
            .0,
        200
    );

    // The control plane's metrics.
    let (_, metrics) = switchyard_tests::tools::http_get(proxy.control_addr, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("switchyard_control_phase{migration=\"users-email\"} 7"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_control_backfill_rows{migration=\"users-email\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_control_parity_mismatches{migration=\"users-email\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_control_rules_version"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_tune_resume_and_blockers() {
    let (cluster, proxy, direct) = setup().await;
    direct
        .batch_execute("insert into users(email, name) select 'P' || g || '@X.io', 'p' from generate_series(1, 5000) g")
        .await
        .unwrap();
    let post = |verb: &str| format!("/v1/migrations/users-email/{verb}");
    assert_eq!(
        call(&proxy, "POST", "/v1/migrations", Some(spec())).await.0,
        201
    );
    assert_eq!(call(&proxy, "POST", &post("expand"), None).await.0, 200);
    assert_eq!(call(&proxy, "POST", &post("dual-write"), None).await.0, 200);

    // Paused before it starts: the backfill holds before its first chunk.
    assert_eq!(call(&proxy, "POST", &post("pause"), None).await.0, 200);
    assert_eq!(call(&proxy, "POST", &post("backfill"), None).await.0, 202);
    let d = wait_for(&proxy, |d| d["job"]["state"] == "paused").await;
    assert_eq!(d["job"]["rows_done"], 0);
    let (status, body) = call(
        &proxy,
        "PATCH",
        "/v1/migrations/users-email/backfill",
        Some(json!({"max_rows_per_second": 0})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = call(
        &proxy,
        "PATCH",
        "/v1/migrations/users-email/backfill",
        Some(json!({"max_rows_per_second": 100000, "target_chunk_ms": 20})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(call(&proxy, "POST", &post("resume"), None).await.0, 200);
    let d = wait_for(&proxy, |d| d["phase"] == "backfilled").await;
    assert!(
        d["state"]["reports"]["backfill"]["rows_done"]
            .as_u64()
            .unwrap()
            >= 5100
    );

    // A session holding a lock on the migrating table is listed and can be
    // terminated through the API.
    let holder = switchyard_tests::proxy::connect(&cluster.conn_str("md5_user", "postgres"))
        .await
        .unwrap();
    holder
        .batch_execute("begin; lock table users in share mode")
        .await
        .unwrap();
    let pid: i32 = holder
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let (status, list) = call(&proxy, "GET", "/v1/blockers", None).await;
    assert_eq!(status, 200);
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["pid"] == pid)
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(entry["mode"], "ShareLock");
    let (status, _) = call(&proxy, "POST", "/v1/blockers/1/terminate", None).await;
    assert_eq!(status, 404, "only sessions locking a migrating table");
    let (status, body) = call(
        &proxy,
        "POST",
        &format!("/v1/blockers/{pid}/terminate"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        holder.query_one("select 1", &[]).await.is_err(),
        "the blocker's session is gone"
    );
    let (_, events) = call(&proxy, "GET", "/v1/events", None).await;
    let actions: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in ["pause", "tune", "resume", "terminate"] {
        assert!(actions.contains(&expected), "{actions:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_resumes_from_its_checkpoint_after_a_restart() {
    let (cluster, proxy, direct) = setup().await;
    direct
        .batch_execute("insert into users(email, name) select 'R' || g || '@X.io', 'r' from generate_series(1, 20000) g")
        .await
        .unwrap();
    let post = |verb: &str| format!("/v1/migrations/users-email/{verb}");
    assert_eq!(
        call(&proxy, "POST", "/v1/migrations", Some(spec())).await.0,
        201
    );
    assert_eq!(call(&proxy, "POST", &post("expand"), None).await.0, 200);
    assert_eq!(call(&proxy, "POST", &post("dual-write"), None).await.0, 200);
    let slow = json!({"max_rows_per_second": 4000, "target_chunk_ms": 10});
    assert_eq!(
        call(
            &proxy,
            "PATCH",
            "/v1/migrations/users-email/backfill",
            Some(slow)
        )
        .await
        .0,
        200
    );
    assert_eq!(call(&proxy, "POST", &post("backfill"), None).await.0, 202);
    wait_for(&proxy, |d| {
        d["job"]["rows_done"].as_u64().unwrap_or(0) >= 2000
    })
    .await;
    // Stop serve mid-backfill.
    proxy.shutdown().await;
    let at_stop: i64 = direct
        .query_one(
            "select rows_done from switchyard.checkpoints where migration = 'users-email'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!((2000..20100).contains(&at_stop), "checkpoint at {at_stop}");

    // A new serve resumes from the checkpoint (the throttle persisted too).
    let proxy = TestProxy::start(&cluster, TestProxyOptions::control(TOKEN))
        .await
        .unwrap();
    let fast = json!({"max_rows_per_second": null});
    assert_eq!(
        call(
            &proxy,
            "PATCH",
            "/v1/migrations/users-email/backfill",
            Some(fast)
        )
        .await
        .0,
        200
    );
    let d = wait_for(&proxy, |d| d["phase"] == "backfilled").await;
    // Each row visited once: the resumed job continued the count.
    assert_eq!(d["state"]["reports"]["backfill"]["rows_done"], 20100, "{d}");
    let bad: i64 = direct
        .query_one(
            "select count(*) from users where email_address is distinct from lower(email)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 0);
}

/// Creates `users-email` with chunks that wait up to 30 s for a row lock,
/// and walks it to dual-write.
async fn dual_write_with_patient_chunks(proxy: &TestProxy) {
    let post = |verb: &str| format!("/v1/migrations/users-email/{verb}");
    let mut waiting = spec();
    waiting["backfill"]["lock_timeout_ms"] = json!(30_000);
    assert_eq!(
        call(proxy, "POST", "/v1/migrations", Some(waiting)).await.0,
        201
    );
    assert_eq!(call(proxy, "POST", &post("expand"), None).await.0, 200);
    assert_eq!(call(proxy, "POST", &post("dual-write"), None).await.0, 200);
}

/// An application's session straight to the server, as a superuser (who
/// may set its own `deadlock_timeout`).
async fn superuser(cluster: &switchyard_tests::Cluster) -> tokio_postgres::Client {
    switchyard_tests::proxy::connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
        cluster.port
    ))
    .await
    .unwrap()
}

/// The pid of a session waiting for a lock, once one is.
async fn lock_waiter(direct: &tokio_postgres::Client) -> i32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let waiting = direct
            .query_opt("select pid from pg_locks where not granted limit 1", &[])
            .await
            .unwrap();
        if let Some(row) = waiting {
            return row.get(0);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the chunk never waited"
        );
        tokio::task::yield_now().await;
    }
}

/// An application transaction that deadlocks with a backfill chunk costs
/// the chunk a retry, not the job: PostgreSQL aborts the chunk (its
/// deadlock check is the one that runs after the cycle forms), the
/// application's statement goes through, and the backfill completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_with_an_application_costs_the_chunk_a_retry() {
    let (cluster, proxy, direct) = setup().await;
    // The chunk checks for a deadlock after 1 s of waiting; the
    // application's session (a superuser's, to set its own) after 60 s.
    cluster
        .psql_admin("alter system set deadlock_timeout = '1s'")
        .unwrap();
    cluster.psql_admin("select pg_reload_conf()").unwrap();
    let post = |verb: &str| format!("/v1/migrations/users-email/{verb}");
    dual_write_with_patient_chunks(&proxy).await;
    let deadlocks = || async {
        direct
            .query_one(
                "select deadlocks from pg_stat_database where datname = 'postgres'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let before = deadlocks().await;
    let mut app = superuser(&cluster).await;
    let tx = app.transaction().await.unwrap();
    tx.batch_execute(
        "set local deadlock_timeout = '60s'; select 1 from users where id = 50 for update",
    )
    .await
    .unwrap();
    // The first chunk (every row) locks rows 1..49 and waits for row 50.
    assert_eq!(call(&proxy, "POST", &post("backfill"), None).await.0, 202);
    lock_waiter(&direct).await;
    // Row 1 is the chunk's: a cycle, which the chunk's check finds.
    tx.execute("update users set name = 'app' where id = 1", &[])
        .await
        .expect("the application's statement goes through");
    tx.commit().await.unwrap();
    let d = wait_for(&proxy, |d| d["phase"] == "backfilled").await;
    assert_eq!(d["state"]["reports"]["backfill"]["rows_done"], 100, "{d}");
    let bad: i64 = direct
        .query_one(
            "select count(*) from users where email_address is distinct from lower(email)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 0);
    // It was a deadlock (the statistics lag a little).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while deadlocks().await == before {
        assert!(std::time::Instant::now() < deadline, "no deadlock happened");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_cancelled_by_someone_stops_the_backfill_with_its_sqlstate() {
    let (cluster, proxy, direct) = setup().await;
    let post = |verb: &str| format!("/v1/migrations/users-email/{verb}");
    dual_write_with_patient_chunks(&proxy).await;
    let mut app = superuser(&cluster).await;
    let tx = app.transaction().await.unwrap();
    tx.batch_execute("select 1 from users where id = 50 for update")
        .await
        .unwrap();
    assert_eq!(call(&proxy, "POST", &post("backfill"), None).await.0, 202);
    // The chunk waits for row 50; a DBA cancels it (long before its
    // statement timeout).
    let chunk = lock_waiter(&direct).await;
    direct
        .execute("select pg_cancel_backend($1)", &[&chunk])
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let job = loop {
        let (_, d) = call(&proxy, "GET", "/v1/migrations/users-email", None).await;
        if d["job"]["state"] == "failed" {
            break d["job"].clone();
        }
        assert_ne!(d["phase"], "backfilled", "the cancel was retried: {d}");
        assert!(std::time::Instant::now() < deadline, "timed out: {d}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let error = job["error"].as_str().unwrap_or_default();
    assert!(error.contains("57014"), "{job}");
    tx.rollback().await.unwrap();
    // Issued again, the backfill finishes.
    assert_eq!(call(&proxy, "POST", &post("backfill"), None).await.0, 202);
    wait_for(&proxy, |d| d["phase"] == "backfilled").await;
}

/// Keys of `value` that `schema` (an OpenAPI object schema) does not list.
fn undocumented(value: &Value, schema: &Value) -> Vec<String> {
    let props = &schema["properties"];
    value
        .as_object()
        .map(|o| {
            o.keys()
                .filter(|k| props.get(k.as_str()).is_none())
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_route_and_field() {
    let (_cluster, proxy, _direct) = setup().await;
    let (status, text) = switchyard_tests::tools::http_get(proxy.control_addr, "/openapi.json")
        .await
        .unwrap();
    assert_eq!(status, 200, "no token needed");
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    for path in [
        "/healthz",
        "/metrics",
        "/v1/status",
        "/v1/migrations",
        "/v1/migrations/{name}",
        "/v1/migrations/{name}/{verb}",
        "/v1/migrations/{name}/backfill",
        "/v1/revert",
        "/v1/blockers",
        "/v1/blockers/{pid}/cancel",
        "/v1/blockers/{pid}/terminate",
        "/v1/events",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
    let schemas = &doc["components"]["schemas"];
    // What the API really answers matches the documented shapes.
    let (_, created) = call(&proxy, "POST", "/v1/migrations", Some(spec())).await;
    assert_eq!(
        undocumented(&created, &schemas["Migration"]),
        Vec::<String>::new()
    );
    assert_eq!(
        undocumented(&spec(), &schemas["MigrationSpec"]),
        Vec::<String>::new()
    );
    assert_eq!(
        undocumented(&spec()["columns"][0], &schemas["ColumnPair"]),
        Vec::<String>::new()
    );
    let (_, status) = call(&proxy, "GET", "/v1/status", None).await;
    assert_eq!(
        undocumented(&status, &schemas["Status"]),
        Vec::<String>::new()
    );
    let instance_schema = &schemas["Status"]["properties"]["instances"]["items"];
    assert_eq!(
        undocumented(&status["instances"][0], instance_schema),
        Vec::<String>::new()
    );
    call(&proxy, "POST", "/v1/migrations/users-email/expand", None).await;
    call(
        &proxy,
        "POST",
        "/v1/migrations/users-email/dual-write",
        None,
    )
    .await;
    let (code, started) = call(&proxy, "POST", "/v1/migrations/users-email/backfill", None).await;
    assert_eq!(code, 202);
    assert_eq!(
        undocumented(&started["job"], &schemas["Job"]),
        Vec::<String>::new()
    );
    let (_, reverted) = call(&proxy, "POST", "/v1/revert", None).await;
    assert_eq!(
        undocumented(&reverted, &schemas["Revert"]),
        Vec::<String>::new()
    );
    let (_, events) = call(&proxy, "GET", "/v1/events", None).await;
    assert_eq!(
        undocumented(&events[0], &schemas["Event"]),
        Vec::<String>::new()
    );
}
