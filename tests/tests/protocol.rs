//! Protocol features through the proxy: cancel, COPY, large results,
//! LISTEN/NOTIFY, pipelines with errors, FunctionCall, version negotiation.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use switchyard_tests::raw::{bind, cstrs, execute, parse, put_msg, tags, RawConn};
use switchyard_tests::{Cluster, TestProxy, TestProxyOptions};
use tokio_postgres::AsyncMessage;

async fn setup() -> (Cluster, TestProxy) {
    let cluster = Cluster::start().expect("cluster");
    let proxy = TestProxy::start(&cluster, TestProxyOptions::default())
        .await
        .expect("proxy");
    (cluster, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_cancel_and_pg_cancel_backend_both_work() {
    let (_cluster, proxy) = setup().await;
    let c = proxy.connect("scram_user").await.unwrap();

    // Client-side: tokio-postgres sends a CancelRequest on a new connection,
    // as psql does on Ctrl-C.
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move {
        let r = c.simple_query("select pg_sleep(30)").await;
        (c, r)
    });
    let other = proxy.connect("trust_user").await.unwrap();
    wait_for_sleeper(&other).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sleeper.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the cancel request had no effect"
        );
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (c, r) = sleeper.await.unwrap();
    assert_eq!(r.unwrap_err().code().unwrap().code(), "57014");
    let forwarded = proxy.metrics.cancels.get();
    assert!(forwarded >= 1);

    // Server-side: pg_cancel_backend from another session through the proxy.
    let sleeper = tokio::spawn(async move { c.simple_query("select pg_sleep(30)").await });
    let pid = wait_for_sleeper(&other).await;
    // A signal that lands while the backend is still starting the query can
    // be lost inside PostgreSQL; repeat it until the query ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sleeper.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "pg_cancel_backend had no effect"
        );
        let sent: bool = other
            .query_one("select pg_cancel_backend($1)", &[&pid])
            .await
            .unwrap()
            .get(0);
        assert!(sent || sleeper.is_finished(), "no such backend {pid}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = sleeper.await.unwrap();
    assert_eq!(r.unwrap_err().code().unwrap().code(), "57014");

    // A cancel naming a backend we do not serve is not forwarded.
    let mut raw = RawConn::connect(proxy.port()).await.unwrap();
    let mut packet = BytesMut::new();
    packet.put_u32(16);
    packet.put_u32(80877102);
    packet.put_i32(pid);
    packet.put_i32(12345);
    raw.send_raw(&packet).await.unwrap();
    assert!(raw.recv().await.unwrap().is_none());
    assert_eq!(proxy.metrics.cancels.get(), forwarded);
}

async fn wait_for_sleeper(other: &tokio_postgres::Client) -> i32 {
    loop {
        let rows = other
            .query("select pid from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'", &[])
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            return row.get(0);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_of_100k_rows_byte_for_byte() {
    let (cluster, proxy) = setup().await;
    let direct = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
        .await
        .unwrap();
    let via = proxy.connect("trust_user").await.unwrap();
    via.batch_execute("create table src(id int, payload text, n numeric)")
        .await
        .unwrap();

    let mut input = Vec::new();
    for i in 0..100_000 {
        input.extend_from_slice(
            format!("{i}\tpayload-{i}-\\\\tab\t{}.{}\n", i * 7, i % 100).as_bytes(),
        );
    }
    let sink = via.copy_in("copy src from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in input.chunks(64 * 1024) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 100_000);

    let mut through_proxy = Vec::new();
    let stream = via.copy_out("copy src to stdout").await.unwrap();
    futures_util::pin_mut!(stream);
    while let Some(chunk) = stream.next().await {
        through_proxy.extend_from_slice(&chunk.unwrap());
    }
    let mut straight = Vec::new();
    let stream = direct.copy_out("copy src to stdout").await.unwrap();
    futures_util::pin_mut!(stream);
    while let Some(chunk) = stream.next().await {
        straight.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(through_proxy.len(), input.len());
    assert!(
        through_proxy == input,
        "COPY OUT through the proxy differs from what went in"
    );
    assert!(
        through_proxy == straight,
        "COPY OUT through the proxy differs from direct"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabyte_results_stream_through() {
    let (_cluster, proxy) = setup().await;
    let c = proxy.connect("trust_user").await.unwrap();
    // Many rows.
    let rows = c
        .query(
            "select g, repeat(md5(g::text), 32) from generate_series(1, 50000) g",
            &[],
        )
        .await
        .unwrap();
    let total: usize = rows.iter().map(|r| r.get::<_, &str>(1).len()).sum();
    assert_eq!(total, 50_000 * 1024);
    assert_eq!(rows[49_999].get::<_, i32>(0), 50_000);
    // One 50 MB value: a DataRow far larger than the proxy's read buffer.
    let row = c
        .query_one(
            "select repeat('ab', 25 * 1024 * 1024), md5(repeat('ab', 25 * 1024 * 1024))",
            &[],
        )
        .await
        .unwrap();
    let big: &str = row.get(0);
    assert_eq!(big.len(), 50 * 1024 * 1024);
    assert!(big
        .bytes()
        .enumerate()
        .all(|(i, b)| b == if i % 2 == 0 { b'a' } else { b'b' }));
    // And the other way: a 20 MB parameter.
    let param = "z".repeat(20 * 1024 * 1024);
    let len: i32 = c
        .query_one("select length($1::text)", &[&param])
        .await
        .unwrap()
        .get(0);
    assert_eq!(len as usize, param.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify() {
    let (_cluster, proxy) = setup().await;
    let (listener, mut connection) = tokio_postgres::connect(
        &proxy.conn_str("trust_user", "postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(stream.for_each(move |m| {
        if let Ok(AsyncMessage::Notification(n)) = m {
            let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
        }
        futures_util::future::ready(())
    }));
    listener.batch_execute("listen jobs").await.unwrap();
    let sender = proxy.connect("md5_user").await.unwrap();
    for i in 0..5 {
        sender
            .execute("select pg_notify('jobs', $1)", &[&format!("job {i}")])
            .await
            .unwrap();
    }
    for i in 0..5 {
        let (channel, payload) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((channel.as_str(), payload), ("jobs", format!("job {i}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_in_the_middle_of_a_pipeline_then_recovery() {
    let (_cluster, proxy) = setup().await;
    let (mut conn, _) = RawConn::login(proxy.port(), "trust_user", 0, &[])
        .await
        .unwrap();
    let mut out = BytesMut::new();
    for sql in ["select 1", "select * from no_such_table", "select 3"] {
        put_msg(&mut out, b'P', &parse("", sql));
        put_msg(&mut out, b'B', &bind("", &[]));
        put_msg(&mut out, b'E', &execute());
    }
    put_msg(&mut out, b'S', &[]);
    conn.send_raw(&out).await.unwrap();
    let msgs = conn.until_ready().await.unwrap();
    // The first statement runs, the second fails, the rest is skipped to Sync.
    assert_eq!(tags(&msgs), "12DCEZ");
    assert_eq!(msgs[4].sqlstate().as_deref(), Some("42P01"));

    // Flush without Sync returns what is done so far.
    let mut out = BytesMut::new();
    put_msg(&mut out, b'P', &parse("s1", "select $1::int + 1"));
    put_msg(&mut out, b'H', &[]);
    conn.send_raw(&out).await.unwrap();
    assert_eq!(conn.recv().await.unwrap().unwrap().tag, b'1');
    conn.send(b'S', &[]).await.unwrap();
    assert_eq!(tags(&conn.until_ready().await.unwrap()), "Z");

    // The session is usable again, with the named statement.
    conn.send(b'Q', &cstrs(&["select 42"])).await.unwrap();
    let msgs = conn.until_ready().await.unwrap();
    assert_eq!(tags(&msgs), "TDCZ");
    assert!(msgs[1].body.ends_with(b"42"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_call_message() {
    let (_cluster, proxy) = setup().await;
    let (mut conn, _) = RawConn::login(proxy.port(), "trust_user", 0, &[])
        .await
        .unwrap();
    conn.send(
        b'Q',
        &cstrs(&["select 'int4pl(int4,int4)'::regprocedure::oid"]),
    )
    .await
    .unwrap();
    let msgs = conn.until_ready().await.unwrap();
    let oid: u32 = std::str::from_utf8(&msgs[1].body[6..])
        .unwrap()
        .parse()
        .unwrap();
    let mut body = BytesMut::new();
    body.put_u32(oid);
    body.put_i16(1);
    body.put_i16(1); // binary arguments
    body.put_i16(2);
    for v in [40i32, 2] {
        body.put_i32(4);
        body.put_i32(v);
    }
    body.put_i16(1); // binary result
    conn.send(b'F', &body).await.unwrap();
    let msgs = conn.until_ready().await.unwrap();
    assert_eq!(tags(&msgs), "VZ");
    assert_eq!(&msgs[0].body[..], &[0, 0, 0, 4, 0, 0, 0, 42]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_3_2_is_negotiated_by_the_server_and_gss_is_refused() {
    let (_cluster, proxy) = setup().await;
    let (mut conn, msgs) = RawConn::login(
        proxy.port(),
        "trust_user",
        2,
        &[("_pq_.made_up_option", "on")],
    )
    .await
    .unwrap();
    // PostgreSQL 15 speaks 3.0 and says so; the proxy passes it through.
    assert_eq!(msgs[0].tag, b'v', "{}", tags(&msgs));
    assert!(msgs.iter().any(|m| m.tag == b'R'));
    conn.send(b'Q', &cstrs(&["select 1"])).await.unwrap();
    assert_eq!(tags(&conn.until_ready().await.unwrap()), "TDCZ");

    let mut raw = RawConn::connect(proxy.port()).await.unwrap();
    raw.send_raw(&[0, 0, 0, 8, 4, 210, 22, 48]).await.unwrap();
    let mut answer = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut raw.stream, &mut answer)
        .await
        .unwrap();
    assert_eq!(&answer, b"N");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_own_session() {
    let cluster = Cluster::start().unwrap();
    let proxy = TestProxy::start(
        &cluster,
        TestProxyOptions {
            max_message_bytes: 1 << 20,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let bystander = proxy.connect("scram_user").await.unwrap();
    bystander
        .batch_execute("begin; create temp table b(x int); insert into b values (1)")
        .await
        .unwrap();

    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "garbage startup",
            b"\x16\x03\x01 this is not postgres at all".to_vec(),
            false,
        ),
        (
            "absurd startup length",
            vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
            false,
        ),
        ("unknown protocol", vec![0, 0, 0, 8, 0, 9, 0, 0], false),
        ("length below 4", vec![b'Q', 0, 0, 0, 2], true),
        (
            "oversize message",
            [&[b'Q', 0x40, 0, 0, 0][..], &[b'x'; 64]].concat(),
            true,
        ),
        ("huge length", vec![b'P', 0xff, 0xff, 0xff, 0xff], true),
    ];
    for (name, bytes, after_login) in cases {
        let mut conn = if after_login {
            RawConn::login(proxy.port(), "trust_user", 0, &[])
                .await
                .unwrap()
                .0
        } else {
            RawConn::connect(proxy.port()).await.unwrap()
        };
        conn.send_raw(&bytes).await.unwrap();
        let reply = conn
            .recv()
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: closed without an error"));
        assert_eq!(reply.tag, b'E', "{name}");
        assert_eq!(
            reply.sqlstate().as_deref(),
            Some("08P01"),
            "{name}: {:?}",
            reply.field(b'M')
        );
        assert!(
            conn.recv().await.unwrap().is_none(),
            "{name}: session must close"
        );
    }
    // A client that connects and never speaks is timed out, not kept forever:
    // covered by the startup timeout; here the bystander must be unaffected.
    let n: i64 = bystander
        .query_one("select count(*) from b", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    bystander.batch_execute("commit").await.unwrap();
    let fresh = proxy.connect("md5_user").await.unwrap();
    assert_eq!(
        fresh
            .query_one("select 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}
