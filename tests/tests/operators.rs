//! Operator sequences that used to break applications, through the real
//! API against real PostgreSQL: after a revert, contract is refused until
//! reads switch again; a contracted migration cannot be reverted (rollback
//! is the way back); a state stored by an earlier version is upgraded at
//! start-up with its revert intact.

use serde_json::{json, Value};
use switchyard_tests::api::Api;
use switchyard_tests::{Cluster, TestProxy, TestProxyOptions};

const TOKEN: &str = "operator-token";

const ACCOUNTS: &str = "
    create table accounts(id bigserial primary key, email text not null, note text);
    insert into accounts(email, note) select 'Seed' || g || '@Example.COM', 'n' from generate_series(1, 2000) g;";

fn spec() -> Value {
    json!({"name": "accounts-email", "table": "public.accounts",
           "columns": [{"legacy": "email", "new": "email_address", "type": "text",
                        "forward": "lower(email)", "backward": "email_address"}]})
}

async fn setup() -> (Cluster, TestProxy, tokio_postgres::Client, Api) {
    let cluster = Cluster::start().unwrap();
    let direct = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
        .await
        .unwrap();
    direct.batch_execute(ACCOUNTS).await.unwrap();
    let proxy = TestProxy::start(&cluster, TestProxyOptions::control(TOKEN))
        .await
        .unwrap();
    let api = Api::new(proxy.control_addr, TOKEN);
    (cluster, proxy, direct, api)
}

/// What an old application version reads through the proxy.
async fn legacy_read(app: &tokio_postgres::Client) -> String {
    app.query_one("select email from accounts where id = 7", &[])
        .await
        .expect("the legacy name keeps working")
        .get(0)
}

async fn walk_to_reads_switched(api: &Api) {
    let m = "accounts-email";
    assert_eq!(
        api.call("POST", "/v1/migrations", Some(spec())).await.0,
        201
    );
    for (verb, status) in [
        ("expand", 200),
        ("dual-write", 200),
        ("backfill", 202),
        ("verify", 202),
        ("switch-reads", 200),
    ] {
        api.step(m, verb, status).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_after_a_revert_is_refused_until_reads_switch_again() {
    let (_cluster, proxy, direct, api) = setup().await;
    let m = "accounts-email";
    walk_to_reads_switched(&api).await;
    let app = proxy.connect("trust_user").await.unwrap();
    assert_eq!(legacy_read(&app).await, "seed7@example.com");

    // The sequence from issue 10: revert, verify (passes), contract.
    let (status, body) = api.call("POST", "/v1/revert", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reverted"], json!([m]));
    assert_eq!(legacy_read(&app).await, "Seed7@Example.COM");
    let d = api.step(m, "verify", 202).await;
    assert_eq!(
        d["stage"],
        json!({"phase": "reads_switched", "reads": "reverted"})
    );
    for path in ["contract", "contract?force=true"] {
        let (status, body) = api.verb(m, path).await;
        assert_eq!(status, 409, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("switch-reads first"), "{message}");
    }
    // Nothing was dropped; the application still reads the legacy column.
    assert_eq!(legacy_read(&app).await, "Seed7@Example.COM");
    let (_, d) = api.call("GET", &format!("/v1/migrations/{m}"), None).await;
    assert_eq!(d["routing"], json!({"reads": "legacy", "writes": "both"}));

    // switch-reads puts reads back; then contract runs and reads survive.
    api.step(m, "switch-reads", 200).await;
    assert_eq!(legacy_read(&app).await, "seed7@example.com");
    api.step(m, "verify", 202).await;
    api.step(m, "contract", 200).await;
    assert_eq!(legacy_read(&app).await, "seed7@example.com");
    let gone: i64 = direct
        .query_one(
            "select count(*) from information_schema.columns where table_name = 'accounts' and column_name = 'email'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gone, 0);

    // Contracted: a revert of it is refused and points to rollback; a
    // revert of all lists it as skipped; the application is untouched.
    let (status, body) = api.verb(m, "revert").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rollback"),
        "{body}"
    );
    let (status, body) = api.call("POST", "/v1/revert", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reverted"], json!([]));
    assert_eq!(body["skipped"][0]["migration"], m, "{body}");
    assert_eq!(legacy_read(&app).await, "seed7@example.com");
    let (_, d) = api.call("GET", &format!("/v1/migrations/{m}"), None).await;
    assert_eq!(d["routing"], json!({"reads": "new", "writes": "new"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_1_state_is_upgraded_at_start_with_its_revert() {
    let (cluster, proxy, direct, api) = setup().await;
    let m = "accounts-email";
    walk_to_reads_switched(&api).await;
    proxy.shutdown().await;
    // The shape an earlier version stored: untyped keys beside the phase.
    direct
        .batch_execute(
            r#"update switchyard.migrations set state = jsonb_build_object(
                 'pairs', state->'pairs', 'reverted', true, 'unrewritten_writes', 2,
                 'parity', jsonb_build_object('mismatches', 0, 'phase', 'verified', 'stale', false, 'writes_seen', 2),
                 'live', '{"paused": true}'::jsonb, 'job', '{"state": "done", "rows_done": 2000}'::jsonb)
               where name = 'accounts-email'"#,
        )
        .await
        .unwrap();
    let proxy = TestProxy::start(&cluster, TestProxyOptions::control(TOKEN))
        .await
        .unwrap();
    let api = Api::new(proxy.control_addr, TOKEN);
    let d = api.detail(m).await;
    assert_eq!(d["state"]["schema"], 2, "{d}");
    assert_eq!(
        d["stage"],
        json!({"phase": "reads_switched", "reads": "reverted"})
    );
    assert_eq!(d["state"]["unrewritten_writes"], 2);
    assert_eq!(d["state"]["settings"]["paused"], true);
    assert_eq!(d["routing"], json!({"reads": "legacy", "writes": "both"}));
    let app = proxy.connect("trust_user").await.unwrap();
    assert_eq!(legacy_read(&app).await, "Seed7@Example.COM");
    let (status, body) = api.verb(m, "contract").await;
    assert_eq!(status, 409, "{body}");
    api.step(m, "switch-reads", 200).await;
    assert_eq!(legacy_read(&app).await, "seed7@example.com");
}
