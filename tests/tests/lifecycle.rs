//! Start, drain, shutdown, upstream failures, and observability.

use std::time::Duration;

use switchyard_tests::raw::{cstrs, RawConn};
use switchyard_tests::tools::http_get;
use switchyard_tests::{Cluster, TestProxy, TestProxyOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_open_sessions_then_stops() {
    let cluster = Cluster::start().unwrap();
    let mut proxy = TestProxy::start(&cluster, TestProxyOptions::default())
        .await
        .unwrap();
    let port = proxy.port();
    let c = proxy.connect("trust_user").await.unwrap();
    c.batch_execute("create table d(x int); begin; insert into d values (1)")
        .await
        .unwrap();

    let app = proxy.take_app().unwrap();
    let stopping = tokio::spawn(app.shutdown());
    // New connections are refused once the listener is closed.
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "listener still accepting while draining");
    // The open transaction finishes normally.
    c.batch_execute("insert into d values (2); commit")
        .await
        .unwrap();
    assert_eq!(
        c.query_one("select count(*) from d", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        2
    );
    assert!(!stopping.is_finished());
    drop(c);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown after last session")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_closes_remaining_sessions_with_57p01() {
    let cluster = Cluster::start().unwrap();
    let mut proxy = TestProxy::start(
        &cluster,
        TestProxyOptions {
            drain_timeout: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (mut conn, _) = RawConn::login(proxy.port(), "trust_user", 0, &[])
        .await
        .unwrap();
    let stopping = tokio::spawn(proxy.take_app().unwrap().shutdown());
    let msg = conn.recv().await.unwrap().expect("an error before close");
    assert_eq!(msg.sqlstate().as_deref(), Some("57P01"));
    assert!(conn.recv().await.unwrap().is_none());
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_restart_and_crash_give_clean_errors() {
    let cluster = Cluster::start().unwrap();
    let proxy = TestProxy::start(&cluster, TestProxyOptions::default())
        .await
        .unwrap();

    // pg_ctl restart -m fast: the server says 57P01 itself; we pass it on.
    let (mut conn, _) = RawConn::login(proxy.port(), "trust_user", 0, &[])
        .await
        .unwrap();
    cluster.restart().unwrap();
    let msg = conn.recv().await.unwrap().expect("the server's error");
    assert_eq!(msg.sqlstate().as_deref(), Some("57P01"));
    assert!(
        conn.recv().await.unwrap().is_none(),
        "no second error after FATAL"
    );

    // A backend killed outright sends nothing: the proxy says 08006.
    let (mut conn, _) = RawConn::login(proxy.port(), "trust_user", 0, &[])
        .await
        .unwrap();
    conn.send(b'Q', &cstrs(&["select pg_backend_pid()"]))
        .await
        .unwrap();
    let msgs = conn.until_ready().await.unwrap();
    let pid: i32 = std::str::from_utf8(&msgs[1].body[6..])
        .unwrap()
        .parse()
        .unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let msg = conn.recv().await.unwrap().expect("an error from the proxy");
    assert_eq!(msg.sqlstate().as_deref(), Some("08006"));
    assert!(conn.recv().await.unwrap().is_none());

    // After crash recovery, new sessions work again.
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(c) = proxy.connect("scram_user").await {
            if c.query_one("select 1", &[]).await.is_ok() {
                ok = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "proxy did not recover after the server restarted");

    // Upstream down: a clear connect error, not a hang.
    cluster.stop().unwrap();
    let err = proxy.connect("trust_user").await.unwrap_err();
    let db = err
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error())
        .expect("a server error");
    assert_eq!(db.code().code(), "08001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics() {
    let cluster = Cluster::start().unwrap();
    let proxy = TestProxy::start(&cluster, TestProxyOptions::default())
        .await
        .unwrap();
    let (status, body) = http_get(proxy.control_addr, "/healthz").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("ok"));
    for _ in 0..3 {
        let c = proxy.connect("md5_user").await.unwrap();
        c.query_one("select 1", &[]).await.unwrap();
    }
    let mut bad = RawConn::connect(proxy.port()).await.unwrap();
    bad.send_raw(&[0, 0, 0, 2]).await.unwrap();
    assert!(bad.recv().await.unwrap().is_some());
    // Give the closing sessions' tasks a moment to record themselves.
    let mut body = String::new();
    for _ in 0..100 {
        body = http_get(proxy.control_addr, "/metrics").await.unwrap().1;
        if body.contains("switchyard_proxy_errors_total{kind=\"protocol\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(body.contains("switchyard_proxy_sessions_total 4"), "{body}");
    assert!(
        body.contains("switchyard_proxy_errors_total{kind=\"protocol\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("switchyard_proxy_bytes_total{direction=\"server_to_client\"}"),
        "{body}"
    );
    assert!(
        body.contains("switchyard_proxy_frames_total{direction=\"client_to_server\"}"),
        "{body}"
    );
    assert!(
        body.contains("switchyard_proxy_upstream_connect_seconds_count 3"),
        "{body}"
    );
    let (status, body) = http_get(proxy.control_addr, "/nope").await.unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("\"code\":\"not_found\""));
}
