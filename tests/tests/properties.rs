//! Property tests against real PostgreSQL: random INSERT, UPDATE and SELECT
//! shapes over a routed table (`email` → `email_address = lower(email)`).
//! Every write keeps the new column mirrored; every read returns what the
//! legacy column says before reads switch, and what `backward(new)` says
//! (lower-case addresses) after, so a read that was not redirected fails.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use switchyard_rules::Phase;
use switchyard_tests::rules::{install, single_pair, table_facts};
use switchyard_tests::{Cluster, TestProxy, TestProxyOptions};
use tokio_postgres::SimpleQueryMessage;

fn quote(qualifier: &str, col: &str) -> String {
    match qualifier {
        "" => col.to_string(),
        "\"" => format!("\"{col}\""),
        q => format!("{q}.{col}"),
    }
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z]{1,6}@[A-Z]x\\.io".prop_map(|s| format!("'{s}'")),
        Just("NULL".to_string()),
        Just("upper(name)".to_string()),
        Just("'k' || name".to_string()),
    ]
}

fn qualifier() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just(""), Just("\""), Just("users"), Just("public.users")]
}

#[derive(Debug, Clone)]
enum Stmt {
    Insert {
        cols: Vec<&'static str>,
        email: String,
        name: String,
    },
    Update {
        set_email: Option<String>,
        set_name: Option<String>,
        q: &'static str,
        key: i32,
    },
    Select {
        q: &'static str,
        alias: bool,
        filter: Option<String>,
        order_by_email: bool,
    },
}

impl Stmt {
    /// The statement; `lowered` gives the reference form of a read after
    /// the switch, with every `email` read through `lower()`.
    fn sql(&self, lowered: bool) -> String {
        match self {
            Stmt::Insert { cols, email, name } => {
                let email = if email.contains("name") {
                    "'x@y'".to_string()
                } else {
                    email.clone()
                };
                let vals: Vec<String> = cols
                    .iter()
                    .map(|c| match *c {
                        "email" => email.clone(),
                        "name" => name.clone(),
                        _ => "1".to_string(),
                    })
                    .collect();
                format!(
                    "insert into users({}) values ({})",
                    cols.join(", "),
                    vals.join(", ")
                )
            }
            Stmt::Update {
                set_email,
                set_name,
                q,
                key,
            } => {
                let q = if *q == "public.users" { "users" } else { q };
                let mut sets = Vec::new();
                if let Some(v) = set_name {
                    sets.push(format!("name = {v}"));
                }
                if let Some(v) = set_email {
                    sets.push(format!("email = {v}"));
                }
                if sets.is_empty() {
                    sets.push("status = status + 1".into());
                }
                format!(
                    "update users set {} where {} > {key}",
                    sets.join(", "),
                    quote(q, "id")
                )
            }
            Stmt::Select {
                q,
                alias,
                filter,
                order_by_email,
            } => {
                let q = if *q == "public.users" { "users" } else { q };
                let email = if lowered {
                    format!("lower({})", quote(q, "email"))
                } else {
                    quote(q, "email")
                };
                let proj = if *alias {
                    format!("{email} as e")
                } else {
                    email.clone()
                };
                let mut sql = format!("select {}, {proj} from users", quote(q, "id"));
                if let Some(f) = filter {
                    sql.push_str(&format!(" where {email} {f}"));
                }
                sql.push_str(if *order_by_email {
                    " order by 2, 1"
                } else {
                    " order by 1"
                });
                sql
            }
        }
    }
}

fn stmt() -> impl Strategy<Value = Stmt> {
    prop_oneof![
        (
            proptest::sample::subsequence(vec!["email", "name", "status"], 1..=3),
            value(),
            "'[a-z]{1,4}'"
        )
            .prop_map(|(cols, email, name)| Stmt::Insert { cols, email, name }),
        (
            proptest::option::of(value()),
            proptest::option::of(value()),
            qualifier(),
            0..20i32
        )
            .prop_map(|(set_email, set_name, q, key)| Stmt::Update {
                set_email,
                set_name,
                q,
                key
            }),
        (
            qualifier(),
            any::<bool>(),
            proptest::option::of(prop_oneof![
                Just("is null".to_string()),
                Just("like '%x.io'".to_string()),
                Just("> 'M'".to_string()),
                Just("in ('a@Bx.io', 'K')".to_string())
            ]),
            any::<bool>()
        )
            .prop_map(|(q, alias, filter, order_by_email)| Stmt::Select {
                q,
                alias,
                filter,
                order_by_email
            }),
    ]
}

async fn rows(
    c: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    Ok(c.simple_query(sql)
        .await?
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect())
}

async fn check(phase: Phase) {
    let cluster = Cluster::start().unwrap();
    let proxy = TestProxy::start(&cluster, TestProxyOptions::default())
        .await
        .unwrap();
    let direct = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
        .await
        .unwrap();
    direct
        .batch_execute(
            "create table users(id serial primary key, email varchar(320), name text, status int default 0);
             insert into users(email, name) select 'U' || g || '@Ax.io', 'n' || g from generate_series(1, 20) g;
             alter table users add column email_address text; update users set email_address = lower(email);",
        )
        .await
        .unwrap();
    let facts = table_facts(&direct, "public", "users").await.unwrap();
    install(
        &proxy.rules(),
        single_pair(
            1,
            "postgres",
            facts,
            "email",
            "email_address",
            "lower(email)",
            "email_address",
            phase,
        ),
    );
    let via = proxy.connect("trust_user").await.unwrap();
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: 150,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&stmt(), |s| {
        let sql = s.sql(false);
        let reference = s.sql(phase == Phase::ReadsSwitched);
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                match &s {
                    Stmt::Select { .. } => {
                        let legacy = rows(&direct, &reference)
                            .await
                            .map_err(|e| TestCaseError::fail(format!("{reference}: {e}")))?;
                        let routed = rows(&via, &sql).await.map_err(|e| TestCaseError::fail(format!("{sql}: {e:?}")))?;
                        prop_assert_eq!(routed, legacy, "{}", sql);
                    }
                    _ => {
                        via.simple_query(&sql).await.map_err(|e| TestCaseError::fail(format!("{sql}: {e:?}")))?;
                        let bad: i64 = direct
                            .query_one("select count(*) from users where email_address is distinct from lower(email)", &[])
                            .await
                            .unwrap()
                            .get(0);
                        prop_assert_eq!(bad, 0, "{}", sql);
                    }
                }
                Ok(())
            })
        })
    });
    if let Err(e) = result {
        panic!("{phase:?}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_statements_under_dual_write() {
    check(Phase::DualWrite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_statements_after_reads_switch() {
    check(Phase::ReadsSwitched).await;
}
