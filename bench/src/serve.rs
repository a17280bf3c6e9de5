//! The `serve` configuration every benchmark starts from: both listeners on
//! free loopback ports, plain TCP (or a Unix socket) to the cluster.

use switchyard::ServeConfig;
use switchyard_proxy::tls::UpstreamTlsMode;
use switchyard_proxy::ProxyConfig;

/// A `serve` in front of `upstream`, with the control plane on
/// `database_url` if given.
pub(crate) fn local(upstream: String, database_url: Option<String>) -> ServeConfig {
    ServeConfig {
        proxy: ProxyConfig {
            listen: "127.0.0.1:0".into(),
            upstream,
            upstream_tls: UpstreamTlsMode::Disable,
            ..ProxyConfig::default()
        },
        control_listen: "127.0.0.1:0".into(),
        database_url,
        control_token: None,
    }
}
