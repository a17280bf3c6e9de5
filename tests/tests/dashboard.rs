//! The operator's console in a real browser (Debian's chromium driven by
//! playwright-core) against a real `serve` and PostgreSQL: the token
//! prompt, the migration's phase, and the revert button, checked through
//! the API and through a proxied query. The screenshot is saved as
//! `target/dashboard.png`.

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;
use switchyard_tests::api::Api;
use switchyard_tests::process::ServeProcess;
use switchyard_tests::Cluster;

const TOKEN: &str = "dashboard-token";
const M: &str = "users-email";

#[tokio::test]
async fn the_dashboard_shows_the_migration_and_its_revert_button_reverts() {
    let cluster = Cluster::start().unwrap();
    cluster
        .psql_admin(
            "create table users(id serial primary key, email text not null);
             insert into users(email) select 'User' || g || '@Example.com' from generate_series(1, 200) g;",
        )
        .unwrap();
    let serve = ServeProcess::start(&cluster, TOKEN).await.unwrap();
    let api = Api::new(serve.control_addr, TOKEN);
    let spec = json!({"name": M, "table": "users",
        "columns": [{"legacy": "email", "new": "email_address", "forward": "lower(email)"}]});
    let (status, body) = api.call("POST", "/v1/migrations", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    for (verb, status) in [
        ("expand", 200),
        ("dual-write", 200),
        ("backfill", 202),
        ("verify", 202),
        ("switch-reads", 200),
    ] {
        api.step(M, verb, status).await;
    }
    let url = format!(
        "host=127.0.0.1 port={} user=trust_user dbname=postgres",
        serve.addr.port()
    );
    let app = switchyard_tests::proxy::connect(&url).await.unwrap();
    let read = || async {
        let row = app
            .query_one("SELECT email FROM users WHERE id = 1", &[])
            .await
            .unwrap();
        row.get::<_, String>(0)
    };
    assert_eq!(
        read().await,
        "user1@example.com",
        "reads come from the new column"
    );
    // The page is public; the API behind it is not.
    let unauthorized = Api::new(serve.control_addr, "");
    assert_eq!(unauthorized.call("GET", "/v1/status", None).await.0, 401);
    let (status, _) = switchyard_tests::tools::http_get(serve.control_addr, "/")
        .await
        .unwrap();
    assert_eq!(status, 200);

    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: scripts/setup installs Debian's chromium"
    );
    let modules = switchyard_tests::tools::playwright_modules().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let shot = root.join("target/dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = Command::new("node")
        .arg(root.join("tests/browser/dashboard.js"))
        .arg(format!("http://{}/", serve.control_addr))
        .args([TOKEN, M])
        .arg(&shot)
        .env("NODE_PATH", &modules)
        .env("CHROMIUM", &chromium)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shot.exists(), "no screenshot");

    let d = api.detail(M).await;
    assert_eq!(d["state"]["stage"]["reads"], "reverted", "{d}");
    assert_eq!(
        read().await,
        "User1@Example.com",
        "reads are back on the legacy column"
    );
    let events = api.call("GET", "/v1/events", None).await.1;
    let by_dashboard = events.as_array().unwrap().iter().any(|e| {
        e["actor"] == "dashboard" && e["action"].as_str().unwrap_or("").contains("revert")
    });
    assert!(
        by_dashboard,
        "the revert is audited as the dashboard's: {events}"
    );
}
