//! Two `serve` processes against one database: a flip through one is
//! acknowledged by both (and the other's proxy writes under it), and
//! `kill -9` of the job holder moves the backfill to the other instance,
//! which resumes from the checkpoint.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_tests::process::ServeProcess;
use switchyard_tests::tools::api;
use switchyard_tests::Cluster;

const TOKEN: &str = "fleet-token";

async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    api(addr, TOKEN, method, path, body).await
}

/// Polls `path` on `addr` until `done` holds.
async fn wait_until(
    addr: std::net::SocketAddr,
    path: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = call(addr, "GET", path, None).await;
        if done(&body) {
            return body;
        }
        assert_ne!(body["job"]["state"], "failed", "{body}");
        assert!(Instant::now() < deadline, "timed out: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn all_acknowledged(status: &Value, live: usize) -> bool {
    let version = status["rules_version"].as_u64().unwrap_or(u64::MAX);
    let instances: Vec<&Value> = status["instances"]
        .as_array()
        .map(|a| a.iter().filter(|i| i["live"] == true).collect())
        .unwrap_or_default();
    instances.len() == live
        && instances
            .iter()
            .all(|i| i["acknowledged_version"].as_u64().unwrap_or(0) >= version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_flips_and_the_job_survives_its_holder() {
    let cluster = Cluster::start().unwrap();
    let db = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
        .await
        .unwrap();
    db.batch_execute(
        "create table users(id serial primary key, email text, name text);
         insert into users(email, name) select 'U' || g || '@X.io', 'n' from generate_series(1, 30000) g;",
    )
    .await
    .unwrap();
    let mut a = ServeProcess::start(&cluster, TOKEN).await.unwrap();
    let b = ServeProcess::start(&cluster, TOKEN).await.unwrap();
    let status = wait_until(b.control_addr, "/v1/status", |s| all_acknowledged(s, 2)).await;
    assert_eq!(status["instances"].as_array().unwrap().len(), 2, "{status}");
    // Each instance exports the acknowledgement lag of every instance.
    let (_, metrics) = switchyard_tests::tools::http_get(b.control_addr, "/metrics")
        .await
        .unwrap();
    for i in status["instances"].as_array().unwrap() {
        let line = format!(
            "switchyard_control_instance_acknowledgement_lag{{instance=\"{}\"}}",
            i["id"].as_str().unwrap()
        );
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }

    let spec = json!({"name": "users-email", "table": "public.users",
        "columns": [{"legacy": "email", "new": "email_address", "forward": "lower(email)"}]});
    assert_eq!(
        call(b.control_addr, "POST", "/v1/migrations", Some(spec))
            .await
            .0,
        201
    );
    let post = |verb: &str| format!("/v1/migrations/users-email/{verb}");
    assert_eq!(
        call(b.control_addr, "POST", &post("expand"), None).await.0,
        200
    );
    // The expand, requested through B, ran on A, which started first and
    // holds the job lock.
    let (_, status) = call(a.control_addr, "GET", "/v1/status", None).await;
    let a_id = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["control_addr"] == a.control_addr.to_string())
        .unwrap()["id"]
        .clone();
    let (_, events) = call(b.control_addr, "GET", "/v1/events", None).await;
    let ddl = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "ddl")
        .unwrap_or_else(|| panic!("no DDL event: {events}"));
    assert_eq!(ddl["detail"]["instance"], a_id, "{ddl}");
    // A rollback through B runs its DDL on A too; then expand again.
    assert_eq!(
        call(b.control_addr, "POST", &post("rollback"), None)
            .await
            .0,
        200
    );
    let (_, events) = call(b.control_addr, "GET", "/v1/events", None).await;
    let ran_on: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "ddl")
        .map(|e| &e["detail"]["instance"])
        .collect();
    assert!(
        ran_on.len() >= 2 && ran_on.iter().all(|i| **i == a_id),
        "{events}"
    );
    assert_eq!(
        call(b.control_addr, "POST", &post("expand"), None).await.0,
        200
    );

    // A flip through A is acknowledged by both, and B's proxy dual-writes.
    let (status, _) = call(a.control_addr, "POST", &post("dual-write"), None).await;
    assert_eq!(status, 200);
    wait_until(b.control_addr, "/v1/status", |s| all_acknowledged(s, 2)).await;
    let app = switchyard_tests::proxy::connect(&format!(
        "host=127.0.0.1 port={} user=scram_user password=scrampass dbname=postgres sslmode=disable",
        b.addr.port()
    ))
    .await
    .unwrap();
    app.execute("update users set email = 'Via@B.io' where id = 7", &[])
        .await
        .unwrap();
    let row = db
        .query_one("select email_address from users where id = 7", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("via@b.io"));

    // The backfill, requested through B, runs on the holder of the job lock.
    let slow = json!({"max_rows_per_second": 3000, "target_chunk_ms": 10});
    assert_eq!(
        call(
            b.control_addr,
            "PATCH",
            "/v1/migrations/users-email/backfill",
            Some(slow)
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(b.control_addr, "POST", &post("backfill"), None)
            .await
            .0,
        202
    );
    wait_until(b.control_addr, "/v1/migrations/users-email", |d| {
        d["job"]["rows_done"].as_u64().unwrap_or(0) >= 3000
    })
    .await;
    let (_, status) = call(a.control_addr, "GET", "/v1/status", None).await;
    let holder = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["job_holder"] == true)
        .unwrap_or_else(|| panic!("A started first and holds the job lock: {status}"));
    assert_eq!(holder["control_addr"], a.control_addr.to_string());

    // kill -9 of the holder: B takes the lock and resumes from the checkpoint.
    a.kill();
    let at_kill: i64 = db
        .query_one(
            "select rows_done from switchyard.checkpoints where migration = 'users-email'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!((3000..30000).contains(&at_kill), "checkpoint at {at_kill}");
    let fast = json!({"max_rows_per_second": null, "target_chunk_ms": 100});
    assert_eq!(
        call(
            b.control_addr,
            "PATCH",
            "/v1/migrations/users-email/backfill",
            Some(fast)
        )
        .await
        .0,
        200
    );
    let d = wait_until(b.control_addr, "/v1/migrations/users-email", |d| {
        d["phase"] == "backfilled"
    })
    .await;
    // Every row once: the resumed count continued the checkpoint's.
    assert_eq!(d["state"]["reports"]["backfill"]["rows_done"], 30000, "{d}");
    let started: Vec<Value> = d["recent_events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "backfill")
        .cloned()
        .collect();
    assert!(!started.is_empty(), "{d}");
    let bad: i64 = db
        .query_one(
            "select count(*) from users where email_address is distinct from lower(email)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 0);
    let (_, status) = call(b.control_addr, "GET", "/v1/status", None).await;
    let me = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["this"] == true)
        .cloned()
        .unwrap();
    assert_eq!(me["job_holder"], true, "{status}");

    // The dead instance drops out of the acknowledgement set once its
    // heartbeat is stale, and flips are acknowledged without it.
    wait_until(b.control_addr, "/v1/status", |s| {
        s["instances"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["live"] == false))
    })
    .await;
    assert_eq!(
        call(b.control_addr, "POST", &post("verify"), None).await.0,
        202
    );
    let d = wait_until(b.control_addr, "/v1/migrations/users-email", |d| {
        d["phase"] == "verified"
    })
    .await;
    assert_eq!(d["state"]["parity"]["mismatches"], 0, "{d}");
    wait_until(b.control_addr, "/v1/status", |s| all_acknowledged(s, 1)).await;
}
