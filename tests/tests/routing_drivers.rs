//! Real drivers with server-side prepared statements follow rule flips, and
//! many sessions writing through a hundred flips lose no write.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_proxy::routing::RulesHub;
use switchyard_rules::Phase;
use switchyard_tests::rules::{install, single_pair, table_facts};
use switchyard_tests::{Cluster, TestProxy, TestProxyOptions};

async fn setup() -> (Cluster, TestProxy, tokio_postgres::Client) {
    let cluster = Cluster::start().unwrap();
    let proxy = TestProxy::start(&cluster, TestProxyOptions::default())
        .await
        .unwrap();
    let direct = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
        .await
        .unwrap();
    direct
        .batch_execute(
            "create table users(id serial primary key, email varchar(320), name text);
             alter table users add column email_address varchar(320);",
        )
        .await
        .unwrap();
    (cluster, proxy, direct)
}

async fn flip(hub: &RulesHub, direct: &tokio_postgres::Client, version: u64, phase: Phase) {
    let facts = table_facts(direct, "public", "users").await.unwrap();
    install(
        hub,
        single_pair(
            version,
            "postgres",
            facts,
            "email",
            "email_address",
            "lower(email)",
            "email_address",
            phase,
        ),
    );
}

/// Drives a line-per-execution client: writes a value, reads the new id.
struct LineClient {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl LineClient {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        LineClient { child, out }
    }

    fn insert(&mut self, value: &str) -> i32 {
        writeln!(self.child.stdin.as_mut().unwrap(), "{value}").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line.trim()
            .parse()
            .unwrap_or_else(|_| panic!("client said {line:?}"))
    }
}

impl Drop for LineClient {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

async fn mirrored(direct: &tokio_postgres::Client, id: i32) -> bool {
    let row = direct
        .query_one("select email_address is not null, email_address is not distinct from lower(email) from users where id = $1", &[&id])
        .await
        .unwrap();
    assert!(
        !row.get::<_, bool>(0) || row.get::<_, bool>(1),
        "row {id} mirrored wrongly"
    );
    row.get(0)
}

async fn flip_between_executions(
    mut client: LineClient,
    proxy: &TestProxy,
    direct: &tokio_postgres::Client,
) {
    let hub = proxy.rules();
    let phases = [
        Phase::Expanded,
        Phase::Expanded,
        Phase::Expanded,
        Phase::Expanded,
        Phase::Expanded,
        Phase::Expanded,
        Phase::DualWrite,
        Phase::Expanded,
        Phase::DualWrite,
        Phase::ReadsSwitched,
        Phase::Expanded,
    ];
    for (i, phase) in phases.into_iter().enumerate() {
        flip(&hub, direct, i as u64 + 1, phase).await;
        let id = tokio::task::block_in_place(|| client.insert(&format!("Driver{i}@X.io")));
        let expect = phase != Phase::Expanded;
        assert_eq!(
            mirrored(direct, id).await,
            expect,
            "execution {i} under {phase:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_with_prepare_threshold_follows_flips() {
    let (cluster, proxy, direct) = setup().await;
    let dir = cluster.scratch().join("java");
    std::fs::create_dir_all(&dir).unwrap();
    let jar = "/usr/share/java/postgresql.jar";
    assert!(
        std::path::Path::new(jar).exists(),
        "JDBC driver missing: apt-get install libpostgresql-jdbc-java"
    );
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/Flip.java");
    let status = Command::new("javac")
        .args(["-d"])
        .arg(&dir)
        .args(["-cp", jar, src])
        .status()
        .unwrap();
    assert!(status.success());
    // prepareThreshold=1: a named server-side statement from the first run on.
    let url = format!("jdbc:postgresql://127.0.0.1:{}/postgres?user=trust_user&sslmode=disable&prepareThreshold=1", proxy.port());
    let client = LineClient::spawn(
        Command::new("java")
            .arg("-cp")
            .arg(format!("{jar}:{}", dir.display()))
            .arg("Flip")
            .arg(url),
    );
    flip_between_executions(client, &proxy, &direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_statement_cache_follows_flips() {
    let (_cluster, proxy, direct) = setup().await;
    let python = tokio::task::spawn_blocking(switchyard_tests::tools::python)
        .await
        .unwrap()
        .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/flip_asyncpg.py");
    let client = LineClient::spawn(
        Command::new(python)
            .arg(script)
            .arg(proxy.port().to_string()),
    );
    flip_between_executions(client, &proxy, &direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_writers_through_a_hundred_flips_lose_nothing() {
    let (_cluster, proxy, direct) = setup().await;
    let hub = proxy.rules();
    flip(&hub, &direct, 1, Phase::Expanded).await;
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..16 {
        let c = proxy.connect("trust_user").await.unwrap();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let stmt = c
                .prepare("insert into users(email, name) values ($1, $2) returning id")
                .await?;
            let mut log = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let started = epoch.elapsed();
                let id: i32 = c
                    .query_one(&stmt, &[&format!("W{w}N{n}@X.io"), &"x"])
                    .await?
                    .get(0);
                log.push((id, started, epoch.elapsed()));
                n += 1;
            }
            Ok::<_, tokio_postgres::Error>(log)
        }));
    }
    // (acknowledged at, installed at, phase) per flip.
    let cycle = [
        Phase::DualWrite,
        Phase::ReadsSwitched,
        Phase::DualWrite,
        Phase::Expanded,
    ];
    let mut flips = vec![(Duration::ZERO, Duration::ZERO, Phase::Expanded)];
    for i in 0..100u64 {
        let phase = cycle[i as usize % cycle.len()];
        let installed = epoch.elapsed();
        flip(&hub, &direct, i + 2, phase).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while hub.acknowledged() < i + 2 {
            assert!(Instant::now() < deadline, "flip {i} never acknowledged");
            tokio::task::yield_now().await;
        }
        flips.push((epoch.elapsed(), installed, phase));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    // Every writer has finished before the rows are read.
    let mut logs = Vec::new();
    for w in writers {
        logs.push(w.await.unwrap().expect("no client error"));
    }
    let mut checked = 0;
    let mut rows = std::collections::HashMap::new();
    for r in direct.query("select id, email_address is not null, email_address is not distinct from lower(email) from users", &[]).await.unwrap() {
        rows.insert(r.get::<_, i32>(0), (r.get::<_, bool>(1), r.get::<_, bool>(2)));
    }
    for log in logs {
        for (id, started, finished) in log {
            let (has_new, consistent) = rows[&id];
            assert!(!has_new || consistent, "row {id} has a wrong new value");
            // The flip acknowledged last before the write started governs it,
            // unless another flip was installed while the write was in flight.
            let governing = flips.iter().rev().find(|f| f.0 <= started).unwrap();
            let next_install = flips.iter().find(|f| f.1 > governing.1).map(|f| f.1);
            if next_install.is_some_and(|t| t <= finished) {
                continue;
            }
            assert_eq!(
                has_new,
                governing.2 != Phase::Expanded,
                "row {id} written under {:?}",
                governing.2
            );
            checked += 1;
        }
    }
    assert!(checked > 1000, "too few writes checked: {checked}");
}
