//! A message batch adopts the newest rules version whatever message leads
//! it. Drivers start batches with Close (pgjdbc closes evicted statements
//! first), Describe, Sync, Flush, FunctionCall, Execute or Query; whichever it
//! is, the writes after it must run under the version in force when the
//! batch began, and statements prepared earlier must be re-prepared.

use bytes::BytesMut;
use switchyard_rules::Phase;
use switchyard_tests::raw::{bind, cstrs, execute, parse, put_msg, tags, target, RawConn};
use switchyard_tests::rules::{install, single_pair, table_facts};
use switchyard_tests::{Cluster, TestProxy, TestProxyOptions};

const INSERT: &str = "insert into accounts(email) values ($1)";

/// The messages that lead a batch, as (tag, body); each case ends its
/// leader with a Sync where the leader fails on its own.
/// Messages as (tag, body).
type Batch = Vec<(u8, Vec<u8>)>;

fn leaders(function_oid: u32) -> Vec<(&'static str, Batch)> {
    let mut call = Vec::new();
    call.extend_from_slice(&function_oid.to_be_bytes());
    call.extend_from_slice(&0i16.to_be_bytes());
    call.extend_from_slice(&1i16.to_be_bytes());
    call.extend_from_slice(&2i32.to_be_bytes());
    call.extend_from_slice(b"40");
    call.extend_from_slice(&0i16.to_be_bytes());
    vec![
        ("close statement", vec![(b'C', target(b'S', "other"))]),
        ("close portal", vec![(b'C', target(b'P', ""))]),
        ("describe statement", vec![(b'D', target(b'S', "other"))]),
        (
            "describe missing portal",
            vec![(b'D', target(b'P', "nope")), (b'S', vec![])],
        ),
        ("flush", vec![(b'H', vec![])]),
        ("sync", vec![(b'S', vec![])]),
        ("function call", vec![(b'F', call)]),
        (
            "execute without portal",
            vec![(b'E', execute()), (b'S', vec![])],
        ),
        ("query", vec![(b'Q', cstrs(&["select 1"]))]),
        ("copy done outside copy", vec![(b'c', vec![])]),
        ("copy data outside copy", vec![(b'd', b"x".to_vec())]),
    ]
}

/// `body` with the C string `from` replaced by `to`.
fn rename(body: &[u8], from: &str, to: &str) -> Vec<u8> {
    let needle = cstrs(&[from]);
    match body.windows(needle.len()).position(|w| w == needle) {
        Some(at) => [&body[..at], &cstrs(&[to]), &body[at + needle.len()..]].concat(),
        None => body.to_vec(),
    }
}

/// The ReadyForQuery messages a batch gets back.
fn readies(batch: &[(u8, Vec<u8>)]) -> usize {
    batch
        .iter()
        .filter(|(tag, _)| matches!(tag, b'S' | b'Q' | b'F'))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_leading_message_type_adopts_the_new_version() {
    let cluster = Cluster::start().unwrap();
    let proxy = TestProxy::start(&cluster, TestProxyOptions::default())
        .await
        .unwrap();
    let direct = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
        .await
        .unwrap();
    direct
        .batch_execute(
            "create table accounts(id serial primary key, email text, email_address text)",
        )
        .await
        .unwrap();
    let function_oid: u32 = direct
        .query_one("select 'int4abs(int4)'::regprocedure::oid::int8", &[])
        .await
        .unwrap()
        .get::<_, i64>(0) as u32;
    let hub = proxy.rules();
    let (mut conn, _) = RawConn::login(proxy.port(), "trust_user", 0, &[])
        .await
        .unwrap();
    let mut version = 0;
    let mut failures = Vec::new();
    for (case, leader) in leaders(function_oid) {
        for fresh_parse in [false, true] {
            // Prepare under the expanded rules (legacy writes only).
            version += 1;
            let facts = table_facts(&direct, "public", "accounts").await.unwrap();
            let at = version;
            let rules = |phase| {
                single_pair(
                    at,
                    "postgres",
                    facts.clone(),
                    "email",
                    "email_address",
                    "lower(email)",
                    "email_address",
                    phase,
                )
            };
            install(&hub, rules(Phase::Expanded));
            let mut out = BytesMut::new();
            // A batch led by Parse adopts the expanded version.
            for name in [format!("ins{version}"), format!("other{version}")] {
                put_msg(&mut out, b'P', &parse(&name, INSERT));
            }
            put_msg(&mut out, b'S', &[]);
            conn.send_raw(&out).await.unwrap();
            assert_eq!(tags(&conn.until_ready().await.unwrap()), "11Z");
            let names = (format!("ins{version}"), format!("other{version}"));

            // Flip to dual-write, then the batch.
            version += 1;
            let mut dual = rules(Phase::DualWrite);
            dual.version = version;
            install(&hub, dual);
            let email = format!("{case} {fresh_parse}@X.COM").replace(' ', "_");
            let mut batch: Batch = leader
                .iter()
                .map(|(tag, body)| (*tag, rename(body, "other", &names.1)))
                .collect();
            if fresh_parse {
                batch.push((b'P', parse("", INSERT)));
                batch.push((b'B', bind("", &[&email])));
            } else {
                batch.push((b'B', bind(&names.0, &[&email])));
            }
            batch.push((b'E', execute()));
            batch.push((b'S', vec![]));
            let mut out = BytesMut::new();
            for (tag, body) in &batch {
                put_msg(&mut out, *tag, body);
            }
            conn.send_raw(&out).await.unwrap();
            let mut seen = String::new();
            for _ in 0..readies(&batch) {
                seen.push_str(&tags(&conn.until_ready().await.unwrap()));
            }
            assert!(seen.ends_with("2CZ"), "{case}: replies {seen}");
            let row = direct
                .query_one(
                    "select email_address from accounts where email = $1",
                    &[&email],
                )
                .await
                .unwrap();
            let mirrored: Option<String> = row.get(0);
            if mirrored.as_deref() != Some(email.to_lowercase().as_str()) {
                failures.push(format!(
                    "{case} (fresh Parse: {fresh_parse}): new column {mirrored:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "writes missed dual-write: {failures:#?}"
    );
    // The session is still in step with the server.
    conn.send(b'Q', &cstrs(&["select count(*) from accounts"]))
        .await
        .unwrap();
    let msgs = conn.until_ready().await.unwrap();
    assert_eq!(tags(&msgs), "TDCZ");
    assert!(msgs[1].body.ends_with(b"22"));
}
