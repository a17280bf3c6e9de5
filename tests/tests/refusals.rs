//! A statement the proxy cannot route after the read switch is refused
//! with a real ErrorResponse (SQLSTATE 0A000 naming the migration) in the
//! extended protocol too, and the server aborts the pipeline up to Sync
//! exactly as for an error of the client's own: an earlier write in the
//! same pipeline is rolled back.

use bytes::BytesMut;
use switchyard_rules::Phase;
use switchyard_tests::raw::{bind, execute, parse, put_msg, tags, RawConn};
use switchyard_tests::rules::{install, single_pair, table_facts};
use switchyard_tests::{Cluster, TestProxy, TestProxyOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_prepared_statement_gets_0a000_and_aborts_its_pipeline() {
    let cluster = Cluster::start().unwrap();
    let proxy = TestProxy::start(&cluster, TestProxyOptions::default())
        .await
        .unwrap();
    let direct = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
        .await
        .unwrap();
    direct
        .batch_execute(
            "create table users(id serial primary key, email text, email_address text);
             create table orders(id int, total int);
             insert into users(email, email_address) values ('A@x', 'a@x');",
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
            Phase::ReadsSwitched,
        ),
    );
    let refused = "select * from users join orders using (id) where users.id = $1";

    // A driver's prepare: a proper 0A000 with the reason, not 42P18.
    let app = proxy.connect("trust_user").await.unwrap();
    let err = app.prepare(refused).await.unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "0A000", "{db:?}");
    assert!(db.message().contains("users-email"), "{}", db.message());
    assert!(
        db.message().contains("name the columns"),
        "{}",
        db.message()
    );
    // The session goes on.
    assert_eq!(
        app.query_one("select 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );

    // In a pipeline, the write before it rolls back with it.
    let (mut conn, _) = RawConn::login(proxy.port(), "trust_user", 0, &[])
        .await
        .unwrap();
    let mut out = BytesMut::new();
    put_msg(
        &mut out,
        b'P',
        &parse("", "insert into users(email) values ('Rolled@x')"),
    );
    put_msg(&mut out, b'B', &bind("", &[]));
    put_msg(&mut out, b'E', &execute());
    put_msg(&mut out, b'P', &parse("", refused));
    put_msg(&mut out, b'B', &bind("", &["1"]));
    put_msg(&mut out, b'E', &execute());
    put_msg(&mut out, b'S', &[]);
    conn.send_raw(&out).await.unwrap();
    let msgs = conn.until_ready().await.unwrap();
    assert_eq!(tags(&msgs), "12CEZ");
    assert_eq!(msgs[3].sqlstate().as_deref(), Some("0A000"));
    let n: i64 = direct
        .query_one("select count(*) from users where email = 'Rolled@x'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the pipeline's implicit transaction rolled back");
}
