//! The client matrix (issue 14): real drivers and ORMs, each as an old
//! application version (the legacy name only) and a new one (the new name
//! only), walk a migration `accounts.email` → `email_address` (`lower`,
//! NOT NULL at contract) through every phase. Each client process lives
//! across the phases, so that its prepared statements and statement caches
//! meet every flip; each round runs create, bulk create, update by filter,
//! get by unique field, an upsert (a case variant of an existing address
//! once the new unique index exists), ORDER BY, a transaction, a
//! server-side cursor, generated keys and COPY out, as the client can.
//!
//! The new version reads from `expanded` and writes from `dual_write`: a
//! write of the new column alone before writes are dual would be lost by
//! the backfill. The old version stops before `complete`. After every round
//! from `backfilled` to the second verify, every row has
//! `email_address = lower(email)`.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use switchyard_tests::api::Api;
use switchyard_tests::pgbouncer::PgBouncer;
use switchyard_tests::{Cluster, TestProxy, TestProxyOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const TOKEN: &str = "matrix-token";
const M: &str = "accounts-email";

/// How an application connects.
#[derive(Clone, Copy)]
enum Client {
    Python(&'static str),
    Node,
    Jdbc(&'static str),
}

/// A client process answering one line per round.
struct App {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    label: String,
}

impl App {
    async fn spawn(client: Client, role: &str, port: u16, java_dir: &std::path::Path) -> App {
        let clients = concat!(env!("CARGO_MANIFEST_DIR"), "/clients");
        let mut cmd = match client {
            Client::Python(name) => {
                let mut c = Command::new(switchyard_tests::tools::python().unwrap());
                c.arg(format!("{clients}/matrix.py")).arg(name);
                c
            }
            Client::Node => {
                let mut c = Command::new("node");
                c.env(
                    "NODE_PATH",
                    switchyard_tests::tools::node_modules().unwrap(),
                );
                c.arg(format!("{clients}/matrix.js"));
                c
            }
            Client::Jdbc(_) => {
                let mut c = Command::new("java");
                c.arg("-cp")
                    .arg(format!(
                        "/usr/share/java/postgresql.jar:{}",
                        java_dir.display()
                    ))
                    .arg("Matrix");
                c
            }
        };
        cmd.args([role, &port.to_string(), "accounts"]);
        if let Client::Jdbc(cache) = client {
            cmd.arg(cache);
        }
        if std::env::var("MATRIX_DEBUG").is_ok() {
            cmd.stderr(Stdio::inherit());
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        App {
            child,
            stdin,
            lines,
            label: role.to_owned(),
        }
    }

    /// Runs one round; `Err` carries the client's error line.
    async fn round(&mut self, phase: &str) -> Result<(), String> {
        self.stdin
            .write_all(format!("{phase}\n").as_bytes())
            .await
            .map_err(|e| format!("{}: {e}", self.label))?;
        let line = tokio::time::timeout(Duration::from_secs(120), self.lines.next_line())
            .await
            .map_err(|_| format!("{} timed out in {phase}", self.label))?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{} exited in {phase}", self.label))?;
        match line.as_str() {
            "ok" => Ok(()),
            other => Err(format!("{} in {phase}: {other}", self.label)),
        }
    }

    async fn quit(mut self) {
        let _ = self.stdin.write_all(b"quit\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

fn compile_java(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/Matrix.java");
    let status = std::process::Command::new("javac")
        .args(["-cp", "/usr/share/java/postgresql.jar", "-d"])
        .arg(dir)
        .arg(src)
        .status()
        .unwrap();
    assert!(status.success(), "javac failed");
}

/// Where the applications connect: the proxy, or PgBouncer in front of it.
enum Front {
    Direct,
    PgBouncer(&'static str),
}

async fn walk(client: Client, front: Front) {
    let cluster = Cluster::start().unwrap();
    let db = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
        .await
        .unwrap();
    db.batch_execute(
        "create table accounts(id bigserial primary key, email text not null unique, note text);
         insert into accounts(email, note)
           select 'Seed' || g || '@Example.COM', 'seed' from generate_series(1, 200) g;",
    )
    .await
    .unwrap();
    let proxy = TestProxy::start(&cluster, TestProxyOptions::control(TOKEN))
        .await
        .unwrap();
    let api = Api::new(proxy.control_addr, TOKEN);
    let spec = json!({"name": M, "table": "accounts",
        "columns": [{"legacy": "email", "new": "email_address", "type": "text",
                     "forward": "lower(email)", "backward": "email_address", "not_null": true}]});
    assert_eq!(api.call("POST", "/v1/migrations", Some(spec)).await.0, 201);
    let bouncer = match front {
        Front::Direct => None,
        Front::PgBouncer(mode) => {
            Some(PgBouncer::start_pooling(&cluster, proxy.port(), mode).unwrap())
        }
    };
    let port = bouncer.as_ref().map(|b| b.port).unwrap_or(proxy.port());
    let java = cluster.scratch().join("java");
    if let Client::Jdbc(_) = client {
        compile_java(&java);
    }

    let mut errors = Vec::new();
    let mut old = App::spawn(client, "old", port, &java).await;
    let mut new: Option<App> = None;
    let steps: [(&str, Option<(&str, u16)>); 9] = [
        ("planned", None),
        ("expanded", Some(("expand", 200))),
        ("dual_write", Some(("dual-write", 200))),
        ("backfilled", Some(("backfill", 202))),
        ("verified", Some(("verify", 202))),
        ("reads_switched", Some(("switch-reads", 200))),
        ("reads_verified", Some(("verify", 202))),
        ("contracted", Some(("contract", 200))),
        // The old version used the legacy name moments ago: complete waits
        // for it (409), and passes when forced.
        ("completed", Some(("complete?force=true", 200))),
    ];
    for (phase, verb) in steps {
        if phase == "completed" {
            // Old versions are gone by now: complete retires the rules.
            old.quit().await;
            old = App::spawn(client, "new", port, &java).await;
            old.label = "new (second)".into();
        }
        if phase == "completed" {
            let (status, body) = api.verb(M, "complete").await;
            assert_eq!(status, 409, "{body}");
        }
        if let Some((verb, status)) = verb {
            api.step(M, verb, status).await;
        }
        if phase == "expanded" {
            new = Some(App::spawn(client, "new", port, &java).await);
        }
        for app in std::iter::once(&mut old).chain(new.iter_mut()) {
            if let Err(e) = app.round(phase).await {
                errors.push(e);
            }
        }
        if matches!(
            phase,
            "backfilled" | "verified" | "reads_switched" | "reads_verified"
        ) {
            let off: i64 = db
                .query_one(
                    "select count(*) from accounts where email_address is distinct from lower(email)",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if off != 0 {
                errors.push(format!("{off} rows out of step in {phase}"));
            }
        }
    }
    old.quit().await;
    if let Some(n) = new {
        n.quit().await;
    }
    assert!(errors.is_empty(), "{errors:#?}");
    let (_, d) = api.call("GET", &format!("/v1/migrations/{M}"), None).await;
    assert_eq!(d["phase"], "completed", "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_on_psycopg2() {
    walk(Client::Python("django-psycopg2"), Front::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_on_psycopg3() {
    walk(Client::Python("django-psycopg3"), Front::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_on_psycopg2() {
    walk(Client::Python("sqla-psycopg2"), Front::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_on_psycopg3() {
    walk(Client::Python("sqla-psycopg3"), Front::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg() {
    walk(Client::Python("asyncpg"), Front::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres() {
    walk(Client::Node, Front::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_default_statement_cache() {
    walk(Client::Jdbc("default"), Front::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_statement_cache_of_four() {
    walk(Client::Jdbc("4"), Front::Direct).await;
}

/// PgBouncer (Debian's 1.18) in session mode in front of Switchyard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_session_mode() {
    walk(Client::Python("sqla-psycopg2"), Front::PgBouncer("session")).await;
}

/// PgBouncer in transaction mode: psycopg2 sends no named prepared
/// statements, which 1.18 cannot pool (1.21+ can).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_transaction_mode() {
    walk(
        Client::Python("sqla-psycopg2"),
        Front::PgBouncer("transaction"),
    )
    .await;
}
