//! `switchyard serve`'s wire proxy running in the test process.

use std::net::SocketAddr;
use std::time::Duration;

use switchyard::app::App;
use switchyard::ServeConfig;
use switchyard_proxy::metrics::ProxyMetrics;
use switchyard_proxy::tls::UpstreamTlsMode;
use switchyard_proxy::ProxyConfig;

use crate::certs::TestCerts;
use crate::cluster::Cluster;

/// How to set up a test proxy.
#[derive(Debug, Clone)]
pub struct TestProxyOptions {
    /// TLS for application connections.
    pub client_tls: Option<TestCerts>,
    /// TLS to the server.
    pub upstream_tls: UpstreamTlsMode,
    /// Verify the server against the cluster's CA.
    pub verify_upstream: bool,
    /// Client message size limit.
    pub max_message_bytes: usize,
    /// Drain window on shutdown.
    pub drain_timeout: Duration,
    /// Turn the control plane on against this database (user, dbname).
    pub control_database: Option<(String, String)>,
    /// Bearer token for the control API.
    pub control_token: Option<String>,
    /// Reach the server through its Unix socket instead of TCP.
    pub unix_upstream: bool,
}

impl TestProxyOptions {
    /// The control plane on database `postgres` as `trust_user`, behind
    /// bearer `token`.
    pub fn control(token: &str) -> Self {
        TestProxyOptions {
            control_database: Some(("trust_user".into(), "postgres".into())),
            control_token: Some(token.into()),
            ..Default::default()
        }
    }
}

impl Default for TestProxyOptions {
    fn default() -> Self {
        TestProxyOptions {
            client_tls: None,
            upstream_tls: UpstreamTlsMode::Disable,
            verify_upstream: false,
            max_message_bytes: ProxyConfig::default().max_message_bytes,
            drain_timeout: Duration::from_secs(30),
            control_database: None,
            control_token: None,
            unix_upstream: false,
        }
    }
}

/// A proxy in front of a test cluster.
pub struct TestProxy {
    app: Option<App>,
    /// Where applications connect.
    pub addr: SocketAddr,
    /// The control API (healthz, metrics).
    pub control_addr: SocketAddr,
    /// Its metrics, readable by tests.
    pub metrics: ProxyMetrics,
}

impl TestProxy {
    /// Starts a proxy on a free port in front of `cluster`.
    pub async fn start(cluster: &Cluster, options: TestProxyOptions) -> anyhow::Result<Self> {
        let proxy = ProxyConfig {
            listen: "127.0.0.1:0".into(),
            upstream: if options.unix_upstream {
                cluster.socket_path().display().to_string()
            } else {
                format!(
                    "{}:{}",
                    if options.verify_upstream {
                        "localhost"
                    } else {
                        "127.0.0.1"
                    },
                    cluster.port
                )
            },
            upstream_tls: options.upstream_tls,
            upstream_ca: options.verify_upstream.then(|| cluster.certs.ca.clone()),
            tls: options.client_tls.map(|c| (c.cert, c.key)),
            max_message_bytes: options.max_message_bytes,
            drain_timeout: options.drain_timeout,
            ..ProxyConfig::default()
        };
        let config = ServeConfig {
            proxy,
            control_listen: "127.0.0.1:0".into(),
            database_url: options
                .control_database
                .as_ref()
                .map(|(user, db)| cluster.conn_str(user, db)),
            control_token: options.control_token.clone(),
        };
        let app = App::start(config).await?;
        Ok(TestProxy {
            addr: app.proxy_addr,
            control_addr: app.control_addr,
            metrics: app.metrics.clone(),
            app: Some(app),
        })
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A connection string for `user` through the proxy.
    pub fn conn_str(&self, user: &str, dbname: &str) -> String {
        let password = crate::cluster::USERS
            .iter()
            .find(|u| u.0 == user)
            .map(|u| u.1)
            .unwrap_or("");
        format!("host=127.0.0.1 port={} user={user} password='{password}' dbname={dbname} sslmode=disable", self.port())
    }

    /// Connects with tokio-postgres through the proxy, driving the
    /// connection in a background task.
    pub async fn connect(&self, user: &str) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.conn_str(user, "postgres")).await
    }

    /// The proxy's routing rules.
    pub fn rules(&self) -> std::sync::Arc<switchyard_proxy::routing::RulesHub> {
        self.app.as_ref().expect("running").rules.clone()
    }

    /// Graceful shutdown: drain, then close.
    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }

    /// Takes the running app, e.g. to drain it in a background task.
    pub fn take_app(&mut self) -> Option<App> {
        self.app.take()
    }
}

/// Connects with tokio-postgres (no TLS) and spawns the connection task.
pub async fn connect(conn_str: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}
