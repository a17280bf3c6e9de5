//! The statement corpus (tests/corpus/statements.txt) through the proxy in
//! every routing: writes keep the new column mirrored, reads return what
//! the same read returned against the legacy column before any rule.

use switchyard_rules::Phase;
use switchyard_tests::rules::{install, single_pair, table_facts};
use switchyard_tests::{Cluster, TestProxy, TestProxyOptions};
use tokio_postgres::{Client, SimpleQueryMessage};

struct Entry {
    source: String,
    kind: char,
    sql: String,
}

fn corpus() -> Vec<Entry> {
    let text = include_str!("../corpus/statements.txt");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut parts = l.splitn(3, " | ");
            let source = parts.next().unwrap().trim().to_string();
            let kind = parts.next().unwrap().trim().chars().next().unwrap();
            let sql = parts.next().unwrap().trim().to_string();
            Entry { source, kind, sql }
        })
        .collect()
}

/// Column names and text values of every row of every result.
async fn results(
    c: &Client,
    sql: &str,
) -> Result<Vec<Vec<(String, Option<String>)>>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for m in c.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            out.push(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| (col.name().to_string(), r.get(i).map(str::to_owned)))
                    .collect(),
            );
        }
    }
    Ok(out)
}

const SCHEMA: &str = "
    create table users(id serial primary key, email varchar(320), name text, status int default 0,
                       created_at timestamptz default now());
    create table orders(id serial primary key, user_id int references users, email text, total numeric);
    insert into users(email, name, status)
      select 'User' || g || '@Example.com', 'user' || g, g % 3 from generate_series(1, 10) g;
    insert into users(email, name) values (null, 'nomail');
    insert into orders(user_id, email, total) values (1, 'o1@shop.io', 10.5), (1, 'o2@shop.io', 3), (2, null, 7);";

/// The migration's expand and backfill, after the baseline: what reads
/// return before the migration began is what they must return in every
/// phase (`*` keeps the table's shape until complete).
const EXPAND: &str = "
    alter table users add column email_address text;
    update users set email_address = email;";

async fn run_phase(phase: Phase) {
    let cluster = Cluster::start().unwrap();
    let proxy = TestProxy::start(&cluster, TestProxyOptions::default())
        .await
        .unwrap();
    let direct = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
        .await
        .unwrap();
    direct.batch_execute(SCHEMA).await.unwrap();
    let entries = corpus();
    let mut baseline = Vec::new();
    for e in entries.iter().filter(|e| e.kind != 'w') {
        baseline.push(
            results(&direct, &e.sql)
                .await
                .unwrap_or_else(|err| panic!("{} baseline: {err}: {}", e.source, e.sql)),
        );
    }
    direct.batch_execute(EXPAND).await.unwrap();
    if phase == Phase::Contracted {
        direct
            .batch_execute("alter table users drop column email")
            .await
            .unwrap();
    }
    let facts = table_facts(&direct, "public", "users").await.unwrap();
    let mut facts_full = facts.clone();
    if facts_full.column("email").is_none() {
        facts_full.columns.insert(
            1,
            switchyard_rules::ColumnFact {
                name: "email".into(),
                sql_type: "character varying(320)".into(),
                default: None,
            },
        );
    }
    let mut set = single_pair(
        1,
        "postgres",
        facts_full,
        "email",
        "email_address",
        "email",
        "email_address",
        phase,
    );
    set.tables[0].facts = facts;
    install(&proxy.rules(), set);
    let c = proxy.connect("trust_user").await.unwrap();

    // Reads first, while the data is as the baseline saw it.
    for (e, expected) in entries.iter().filter(|e| e.kind != 'w').zip(baseline) {
        let got = results(&c, &e.sql)
            .await
            .unwrap_or_else(|err| panic!("{:?} {}: {err:?}: {}", phase, e.source, e.sql));
        assert_eq!(got, expected, "{:?} {}: {}", phase, e.source, e.sql);
    }
    // Then writes, each followed by the parity check.
    for e in entries.iter().filter(|e| e.kind == 'w') {
        c.simple_query(&e.sql)
            .await
            .unwrap_or_else(|err| panic!("{:?} {}: {err:?}: {}", phase, e.source, e.sql));
        if phase != Phase::Contracted {
            let bad: i64 = direct
                .query_one(
                    "select count(*) from users where email_address is distinct from email",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(bad, 0, "{:?} {}: {}", phase, e.source, e.sql);
        }
    }
    if phase == Phase::Contracted {
        // What the writes said about the legacy name landed in the new column.
        let n: i64 = direct
            .query_one("select count(*) from users where email_address in ('Alias@Example.com', 'Hx@Example.com', 'Sx2@Example.com')", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_under_dual_write() {
    run_phase(Phase::DualWrite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_after_reads_switch() {
    run_phase(Phase::ReadsSwitched).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_after_contract() {
    run_phase(Phase::Contracted).await;
}
