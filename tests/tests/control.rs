//! The control API against a real database and a real proxy: create,
//! expand, dual-write, gates, force, revert, audit, auth and errors.

use serde_json::{json, Value};
use switchyard_tests::tools::http;
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
    let proxy = TestProxy::start(
        &cluster,
        TestProxyOptions {
            control_database: Some(("trust_user".into(), "postgres".into())),
            control_token: Some(TOKEN.into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    (cluster, proxy, direct)
}

async fn call(proxy: &TestProxy, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    http(
        proxy.control_addr,
        method,
        path,
        body.as_deref(),
        Some(TOKEN),
    )
    .await
    .unwrap()
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
    let (status, created) = call(&proxy, "POST", "/v1/migrations", Some(spec())).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["phase"], "planned");
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
    let (status, body) = call(&proxy, "POST", "/v1/migrations/users-email/backfill", None).await;
    assert_eq!(status, 501, "{body}");

    // Revert answers with the new version and the swap time.
    let (status, body) = call(&proxy, "POST", "/v1/revert", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["rules_version"].as_u64().unwrap() > 0);
    assert!(body["swap_micros"].is_u64());

    let (status, st) = call(&proxy, "GET", "/v1/status", None).await;
    assert_eq!(status, 200);
    assert_eq!(st["migrations"][0]["phase"], "dual_write");
    assert_eq!(
        st["instances"][0]["acknowledged_version"],
        st["rules_version"]
    );

    let (_, events) = call(&proxy, "GET", "/v1/events", None).await;
    let actions: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["create", "ddl", "phase", "phase"]);

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
