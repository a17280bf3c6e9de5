//! The test cluster: Switchyard's throwaway cluster (`switchyard_testkit`)
//! with TLS on, certificates generated at test time, and one login role per
//! authentication method.

use std::ops::Deref;

use switchyard_testkit::ClusterOptions;

use crate::certs::TestCerts;

pub use switchyard_testkit::{free_port, is_root};

/// Roles the cluster creates, one per authentication method.
pub const USERS: [(&str, &str, &str); 3] = [
    ("trust_user", "", "trust"),
    ("md5_user", "md5pass", "md5"),
    ("scram_user", "scrampass", "scram-sha-256"),
];

/// A running throwaway cluster for tests, stopped and removed on drop.
pub struct Cluster {
    inner: switchyard_testkit::Cluster,
    /// The server's TLS files.
    pub certs: TestCerts,
}

impl Deref for Cluster {
    type Target = switchyard_testkit::Cluster;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl Cluster {
    /// Starts a cluster with TLS and the test roles.
    pub fn start() -> anyhow::Result<Self> {
        let mut certs = None;
        let inner = switchyard_testkit::Cluster::start(
            ClusterOptions {
                hba: USERS
                    .iter()
                    .flat_map(|(user, _, method)| {
                        [
                            format!("host all {user} 127.0.0.1/32 {method}"),
                            format!("local all {user} {method}"),
                        ]
                    })
                    .collect(),
                ..Default::default()
            },
            |dir| {
                let c = TestCerts::generate(dir, "server")
                    .map_err(|e| switchyard_testkit::ClusterError(e.to_string()))?;
                let tls = Some((c.cert.clone(), c.key.clone()));
                certs = Some(c);
                Ok(ClusterOptions {
                    tls,
                    ..Default::default()
                })
            },
        )?;
        let cluster = Cluster {
            inner,
            certs: certs.expect("certificates were generated"),
        };
        let mut sql = String::new();
        for (user, password, method) in USERS {
            let enc = if method == "md5" {
                "md5"
            } else {
                "scram-sha-256"
            };
            sql.push_str(&format!(
                "SET password_encryption = '{enc}'; CREATE ROLE {user} LOGIN SUPERUSER PASSWORD '{password}';\n"
            ));
        }
        cluster.psql_admin(&sql)?;
        Ok(cluster)
    }

    /// A tokio-postgres / libpq connection string for a test role, directly
    /// to the server.
    pub fn conn_str(&self, user: &str, dbname: &str) -> String {
        let password = USERS
            .iter()
            .find(|u| u.0 == user)
            .map(|u| u.1)
            .unwrap_or("");
        self.inner.url(user, password, dbname)
    }
}
