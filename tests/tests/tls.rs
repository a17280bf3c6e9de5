//! TLS at both hops: terminated at the proxy, and to the upstream server.

use switchyard_proxy::tls::UpstreamTlsMode;
use switchyard_tests::tools::psql;
use switchyard_tests::{Cluster, TestCerts, TestProxy, TestProxyOptions};

const UPSTREAM_SSL: &str = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";

fn psql_tls(
    proxy: &TestProxy,
    ca: &TestCerts,
    user: &str,
    sql: &str,
    extra: &[(&str, &str)],
) -> std::process::Output {
    let ca = ca.ca.display().to_string();
    let mut env = vec![("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca.as_str())];
    env.extend_from_slice(extra);
    psql(proxy.port(), user, &env)
        .args(["-At", "-c", sql])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_over_tls_terminated_at_the_proxy_with_default_channel_binding() {
    let cluster = Cluster::start().unwrap();
    let client_certs = TestCerts::generate(cluster.scratch(), "proxy").unwrap();
    for (mode, upstream_ssl) in [
        (UpstreamTlsMode::Disable, "f"),
        (UpstreamTlsMode::Prefer, "f"),
    ] {
        let proxy = TestProxy::start(
            &cluster,
            TestProxyOptions {
                client_tls: Some(client_certs.clone()),
                upstream_tls: mode,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        // libpq's default channel_binding=prefer sends gs2 flag `y`; under
        // `prefer` the proxy finishes that login over plain TCP upstream.
        let out = tokio::task::spawn_blocking({
            let proxy_port = proxy.port();
            let certs = client_certs.clone();
            move || {
                let ca = certs.ca.display().to_string();
                psql(
                    proxy_port,
                    "scram_user",
                    &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &ca)],
                )
                .args([
                    "-At",
                    "-c",
                    &format!("select current_user, ({UPSTREAM_SSL})"),
                ])
                .output()
                .unwrap()
            }
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("scram_user|{upstream_ssl}")
        );

        // md5 and channel_binding=disable keep upstream TLS under prefer.
        let expect = if mode == UpstreamTlsMode::Prefer {
            "t"
        } else {
            "f"
        };
        for (user, extra) in [
            ("md5_user", vec![]),
            ("scram_user", vec![("PGCHANNELBINDING", "disable")]),
        ] {
            let out = psql_tls(&proxy, &client_certs, user, UPSTREAM_SSL, &extra);
            assert!(
                out.status.success(),
                "{user}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                expect,
                "{user} under {mode}"
            );
        }
        proxy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_under_required_upstream_tls_is_refused_clearly() {
    let cluster = Cluster::start().unwrap();
    let client_certs = TestCerts::generate(cluster.scratch(), "proxy").unwrap();
    let proxy = TestProxy::start(
        &cluster,
        TestProxyOptions {
            client_tls: Some(client_certs.clone()),
            upstream_tls: UpstreamTlsMode::Require,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let out = psql_tls(&proxy, &client_certs, "scram_user", "select 1", &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("channel_binding=disable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = psql_tls(
        &proxy,
        &client_certs,
        "scram_user",
        UPSTREAM_SSL,
        &[("PGCHANNELBINDING", "disable")],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "t",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verify_full_checks_the_server_certificate() {
    let cluster = Cluster::start().unwrap();
    let proxy = TestProxy::start(
        &cluster,
        TestProxyOptions {
            upstream_tls: UpstreamTlsMode::VerifyFull,
            verify_upstream: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let c = proxy.connect("scram_user").await.unwrap();
    let ssl: bool = c.query_one(UPSTREAM_SSL, &[]).await.unwrap().get(0);
    assert!(ssl, "the upstream connection must be TLS");

    // A CA that did not sign the server's certificate is refused.
    let other = TestCerts::generate(cluster.scratch(), "other").unwrap();
    let bad = switchyard::ServeConfig {
        proxy: switchyard_proxy::ProxyConfig {
            listen: "127.0.0.1:0".into(),
            upstream: format!("localhost:{}", cluster.port),
            upstream_tls: UpstreamTlsMode::VerifyFull,
            upstream_ca: Some(other.ca.clone()),
            ..Default::default()
        },
        control_listen: "127.0.0.1:0".into(),
        ..Default::default()
    };
    let app = switchyard::app::App::start(bad).await.unwrap();
    let err = switchyard_tests::proxy::connect(&format!(
        "host=127.0.0.1 port={} user=trust_user dbname=postgres",
        app.proxy_addr.port()
    ))
    .await
    .unwrap_err();
    let db = err
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error())
        .expect("a server error");
    assert_eq!(db.code().code(), "08001");
    assert!(db.message().contains("TLS handshake"), "{}", db.message());
    app.shutdown().await;
}
