//! Real client programs and drivers through the proxy.

use std::process::Command;

use futures_util::future::try_join_all;
use switchyard_tests::tools::{pgbench, psql, python, run};
use switchyard_tests::{Cluster, TestProxy, TestProxyOptions};

async fn setup() -> (Cluster, TestProxy) {
    let cluster = Cluster::start().expect("cluster");
    let proxy = TestProxy::start(&cluster, TestProxyOptions::default())
        .await
        .expect("proxy");
    (cluster, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_every_auth_method_simple_and_extended() {
    let (_cluster, proxy) = setup().await;
    for user in ["trust_user", "md5_user", "scram_user"] {
        let c = proxy.connect(user).await.unwrap();
        let row = c
            .query_one("select current_user::text, $1::int + 1", &[&41i32])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), user);
        assert_eq!(row.get::<_, i32>(1), 42);

        let msgs = c
            .simple_query(
                "create temp table t(a int); insert into t values (1),(2); select sum(a) from t",
            )
            .await
            .unwrap();
        let sums: Vec<_> = msgs
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect();
        assert_eq!(sums, vec!["3".to_string()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_and_prepared_statement_reuse() {
    let (_cluster, proxy) = setup().await;
    let c = proxy.connect("scram_user").await.unwrap();
    let stmt = c
        .prepare("select $1::int * 2, repeat('x', $1::int)")
        .await
        .unwrap();
    // tokio-postgres pipelines concurrent queries on one connection.
    let futures = (0..200).map(|i| {
        let c = &c;
        let stmt = &stmt;
        async move {
            c.query_one(stmt, &[&i])
                .await
                .map(|r| (i, r.get::<_, i32>(0), r.get::<_, String>(1)))
        }
    });
    let rows = try_join_all(futures).await.unwrap();
    for (i, doubled, xs) in rows {
        assert_eq!(doubled, i * 2);
        assert_eq!(xs.len(), i as usize);
    }
    // The same statement again, after the pipeline.
    assert_eq!(
        c.query_one(&stmt, &[&21i32])
            .await
            .unwrap()
            .get::<_, i32>(0),
        42
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_a_script() {
    let (cluster, proxy) = setup().await;
    let script = cluster.scratch().join("script.sql");
    std::fs::write(
        &script,
        "create table items(id int primary key, name text);\n\
         insert into items select g, 'item ' || g from generate_series(1, 1000) g;\n\
         begin; update items set name = upper(name) where id <= 10; commit;\n\
         \\copy (select count(*) from items where name like 'ITEM%') to stdout\n\
         select string_agg(name, ',' order by id) from items where id <= 3;\n",
    )
    .unwrap();
    let out = run(psql(proxy.port(), "md5_user", &[("PGSSLMODE", "disable")])
        .args(["-At", "-f"])
        .arg(&script))
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("INSERT")
                && !l.starts_with("CREATE")
                && !l.starts_with("BEGIN")
                && !l.starts_with("UPDATE")
                && !l.starts_with("COMMIT")
        })
        .collect();
    assert_eq!(lines, vec!["10", "ITEM 1,ITEM 2,ITEM 3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_init_and_run_in_every_query_mode() {
    let (_cluster, proxy) = setup().await;
    let port = proxy.port();
    tokio::task::spawn_blocking(move || {
        run(pgbench(port, "scram_user").args(["-i", "-s", "1", "-q", "postgres"])).unwrap();
        for mode in ["simple", "extended", "prepared"] {
            let out = run(pgbench(port, "scram_user")
                .args(["-M", mode, "-c", "4", "-j", "2", "-t", "200", "postgres"]))
            .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains("number of transactions actually processed: 800/800"),
                "{mode}: {text}"
            );
            assert!(
                text.contains("number of failed transactions: 0"),
                "{mode}: {text}"
            );
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_psycopg3_and_asyncpg() {
    let (_cluster, proxy) = setup().await;
    let python = tokio::task::spawn_blocking(python)
        .await
        .unwrap()
        .expect("python venv with psycopg and asyncpg");
    let port = proxy.port();
    let script = format!(
        r#"
import asyncio, psycopg, asyncpg
dsn = "host=127.0.0.1 port={port} user=scram_user password=scrampass dbname=postgres sslmode=disable"
with psycopg.connect(dsn) as conn:
    conn.execute("create table py(id int primary key, v text)")
    with conn.cursor() as cur:
        cur.executemany("insert into py values (%s, %s)", [(i, f"v{{i}}") for i in range(100)])
        # prepare=True forces server-side prepared statements.
        for i in range(10):
            cur.execute("select v from py where id = %s", (i,), prepare=True)
            assert cur.fetchone()[0] == f"v{{i}}"
    conn.commit()
    with conn.pipeline():
        cur = conn.execute("select count(*) from py")
    assert cur.fetchone()[0] == 100

async def main():
    conn = await asyncpg.connect(host="127.0.0.1", port={port}, user="scram_user", password="scrampass", database="postgres", ssl=False)
    stmt = await conn.prepare("select v from py where id = $1")
    for i in range(20):
        assert await stmt.fetchval(i % 100) == f"v{{i % 100}}"
    rows = await conn.fetch("select id from py where id < $1 order by id", 5)
    assert [r["id"] for r in rows] == [0, 1, 2, 3, 4]
    await conn.copy_records_to_table("py", records=[(1000 + i, "c") for i in range(50)])
    assert await conn.fetchval("select count(*) from py") == 150
    await conn.close()
asyncio.run(main())
print("python ok")
"#
    );
    let out = tokio::task::spawn_blocking(move || run(Command::new(python).arg("-c").arg(script)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "python ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_in_front_of_switchyard() {
    let (cluster, proxy) = setup().await;
    let bouncer = switchyard_tests::pgbouncer::PgBouncer::start_for(&cluster, proxy.port())
        .expect("pgbouncer");
    let port = bouncer.port;
    tokio::task::spawn_blocking(move || {
        run(pgbench(port, "trust_user").args(["-i", "-s", "1", "-q", "postgres"])).unwrap();
        for mode in ["simple", "prepared"] {
            let out = run(pgbench(port, "trust_user")
                .args(["-M", mode, "-c", "4", "-j", "2", "-t", "100", "postgres"]))
            .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains("number of transactions actually processed: 400/400"),
                "{mode}: {text}"
            );
        }
    })
    .await
    .unwrap();
    // The sessions really went through Switchyard.
    assert!(proxy.metrics.sessions_total.get() >= 1);
    let c = switchyard_tests::proxy::connect(&format!(
        "host=127.0.0.1 port={port} user=trust_user dbname=postgres"
    ))
    .await
    .unwrap();
    let n: i64 = c
        .query_one("select count(*) from pgbench_accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100_000);
    drop(bouncer);
}

/// A proxy on the database host can reach it through its Unix socket, which
/// skips the TCP stack on that leg; authentication is still relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_upstream_relays_auth_queries_and_cancel() {
    let cluster = Cluster::start().expect("cluster");
    let options = TestProxyOptions {
        unix_upstream: true,
        ..Default::default()
    };
    let proxy = TestProxy::start(&cluster, options).await.expect("proxy");
    for user in ["trust_user", "md5_user", "scram_user"] {
        let c = proxy.connect(user).await.unwrap();
        // A Unix-socket backend has no client address.
        let row = c
            .query_one(
                "select current_user::text, inet_client_addr() is null, $1::int * 2",
                &[&21i32],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), user);
        assert!(row.get::<_, bool>(1), "{user} reached the server over TCP");
        assert_eq!(row.get::<_, i32>(2), 42);
    }
    // A wrong password is refused by the server, relayed as its error.
    let wrong = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=scram_user password=nope dbname=postgres",
            proxy.port()
        ),
        tokio_postgres::NoTls,
    )
    .await;
    let err = wrong.err().expect("a wrong password must fail");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD)
    );

    let c = proxy.connect("trust_user").await.unwrap();
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move { c.simple_query("select pg_sleep(30)").await });
    let watcher = proxy.connect("trust_user").await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !sleeper.is_finished() {
        assert!(std::time::Instant::now() < deadline, "cancel had no effect");
        let sleeping: i64 = watcher
            .query_one(
                "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if sleeping > 0 {
            token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let err = sleeper.await.unwrap().expect_err("the sleep was cancelled");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
}
