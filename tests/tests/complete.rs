//! A safe `complete`, against real PostgreSQL with two `serve` instances:
//! each counts the statements that still depend on a migration's legacy
//! side, publishes the count with its heartbeat (detail, `/metrics`), and
//! `complete` answers 409 naming the instance and the statement while one
//! was seen within `complete_quiet_minutes`; `?force=true` passes, audited.
//! Applications that use only the new name do not hold it back.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_tests::api::Api;
use switchyard_tests::process::ServeProcess;
use switchyard_tests::Cluster;
use tokio_postgres::Client;

const TOKEN: &str = "complete-token";
const M: &str = "users-email";

async fn start() -> (Cluster, ServeProcess, ServeProcess) {
    let cluster = Cluster::start().unwrap();
    cluster
        .psql_admin(
            "create table users(id serial primary key, email text not null, name text);
             insert into users(email, name) select 'U' || g || '@X.io', 'n' from generate_series(1, 500) g;",
        )
        .unwrap();
    let a = ServeProcess::start(&cluster, TOKEN).await.unwrap();
    let b = ServeProcess::start(&cluster, TOKEN).await.unwrap();
    let api = Api::new(a.control_addr, TOKEN);
    let spec = json!({"name": M, "table": "public.users",
        "columns": [{"legacy": "email", "new": "email_address",
                     "forward": "lower(email)", "backward": "email_address"}]});
    let (status, body) = api.call("POST", "/v1/migrations", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    (cluster, a, b)
}

/// Walks the migration to `contracted`.
async fn contract(api: &Api) {
    for (verb, status) in [
        ("expand", 200),
        ("dual-write", 200),
        ("backfill", 202),
        ("verify", 202),
        ("switch-reads", 200),
        ("verify", 202),
    ] {
        api.step(M, verb, status).await;
    }
    let (status, body) = api.verb(M, "contract").await;
    assert!(status == 200 || status == 202, "{body}");
    api.wait(M, |d| d["stage"]["legacy"] == "dropped").await;
}

async fn app(cluster: &Cluster, serve: &ServeProcess) -> Client {
    let url = format!(
        "host=127.0.0.1 port={} user=trust_user dbname=postgres",
        serve.addr.port()
    );
    let _ = cluster;
    switchyard_tests::proxy::connect(&url).await.unwrap()
}

async fn instance_id(serve: &ServeProcess) -> String {
    let api = Api::new(serve.control_addr, TOKEN);
    let (_, status) = api.call("GET", "/v1/status", None).await;
    status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["this"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// New-name statements of every kind, dual-written or not.
async fn new_name_traffic(app: &Client) {
    app.batch_execute(
        "insert into users (email_address, name) values ('fresh@x.io', 'f');
         update users set email_address = 'fresher@x.io' where email_address = 'fresh@x.io';
         select id, email_address from users where email_address = 'fresher@x.io';",
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_waits_for_every_instance_to_stop_seeing_the_legacy_name() {
    let (cluster, a, b) = start().await;
    let api = Api::new(a.control_addr, TOKEN);
    contract(&api).await;
    new_name_traffic(&app(&cluster, &a).await).await;
    new_name_traffic(&app(&cluster, &b).await).await;
    let d = api.detail(M).await;
    assert_eq!(d["legacy_uses"], json!([]), "{d}");

    // An old application version through instance b.
    let old = app(&cluster, &b).await;
    for _ in 0..3 {
        old.query("select id, email from users where id = $1", &[&7])
            .await
            .unwrap();
    }
    let b_id = instance_id(&b).await;
    // a learns of it from b's heartbeat.
    let d = api
        .wait(M, |d| {
            d["legacy_uses"]
                .as_array()
                .is_some_and(|u| u.iter().any(|u| u["instance"] == b_id.as_str()))
        })
        .await;
    let seen = &d["legacy_uses"][0];
    assert!(seen["count"].as_u64().unwrap() >= 1, "{d}");
    assert!(
        seen["statement"]
            .as_str()
            .unwrap()
            .contains("select id, email from users"),
        "{d}"
    );

    let (status, body) = api.verb(M, "complete").await;
    assert_eq!(status, 409, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&b_id), "{message}");
    assert!(message.contains("select id, email from users"), "{message}");
    assert!(message.contains("complete_quiet_minutes"), "{message}");

    // b's metrics carry its count.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = switchyard_tests::tools::http_get(b.control_addr, "/metrics")
            .await
            .unwrap();
        if metrics.contains("switchyard_control_legacy_statements{migration=\"users-email\"} 3") {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Forced, it passes and the override is audited with what was seen.
    let (status, body) = api.verb(M, "complete?force=true").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["phase"], "completed");
    let (_, events) = api.call("GET", "/v1/events", None).await;
    let forced: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "force" && e["detail"]["verb"] == "complete")
        .collect();
    assert_eq!(forced.len(), 1, "{events}");
    assert_eq!(forced[0]["detail"]["legacy_uses"][0]["instance"], b_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_name_applications_do_not_hold_complete_back() {
    let (cluster, a, b) = start().await;
    let api = Api::new(a.control_addr, TOKEN);
    api.step(M, "expand", 200).await;
    api.step(M, "dual-write", 200).await;
    // New-name writes are rewritten (dual-written) here, and still do not
    // count.
    new_name_traffic(&app(&cluster, &b).await).await;
    api.step(M, "backfill", 202).await;
    api.step(M, "verify", 202).await;
    api.step(M, "switch-reads", 200).await;
    new_name_traffic(&app(&cluster, &a).await).await;
    api.step(M, "verify", 202).await;
    let (status, body) = api.verb(M, "contract").await;
    assert!(status == 200 || status == 202, "{body}");
    api.wait(M, |d| d["stage"]["legacy"] == "dropped").await;
    new_name_traffic(&app(&cluster, &b).await).await;
    let (status, body) = api.verb(M, "complete").await;
    assert_eq!(status, 200, "{body}");
}
