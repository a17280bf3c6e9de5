//! What one proxy listener needs: where applications connect, the server
//! behind it, TLS on both sides, and its limits. How these are read (flags,
//! a TOML file) is the binary's business.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use crate::tls::UpstreamTlsMode;

/// The resolved configuration of the wire proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Application listen address.
    pub listen: String,
    /// Upstream `host:port`, or an absolute Unix socket path.
    pub upstream: String,
    /// Upstream TLS mode.
    pub upstream_tls: UpstreamTlsMode,
    /// CA file for `verify-full`.
    pub upstream_ca: Option<PathBuf>,
    /// Certificate and key for client TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Client message size limit.
    pub max_message_bytes: usize,
    /// Limit on startup plus authentication.
    pub startup_timeout: Duration,
    /// Graceful shutdown window.
    pub drain_timeout: Duration,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Relay threads, and as many session threads; `None`: one of each
    /// per core this process may run on.
    pub threads: Option<NonZeroUsize>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:6432".into(),
            upstream: "127.0.0.1:5432".into(),
            upstream_tls: UpstreamTlsMode::Prefer,
            upstream_ca: None,
            tls: None,
            max_message_bytes: 128 << 20,
            startup_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            threads: None,
        }
    }
}

impl ProxyConfig {
    /// How many relay threads (and session threads) to run.
    pub fn thread_count(&self) -> usize {
        self.threads
            .or_else(|| std::thread::available_parallelism().ok())
            .map_or(1, NonZeroUsize::get)
    }

    /// Whether the upstream is a Unix socket on this host.
    pub fn upstream_is_unix(&self) -> bool {
        self.upstream.starts_with('/')
    }

    /// The upstream host name (for TLS verification).
    pub fn upstream_host(&self) -> &str {
        match self.upstream.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => &self.upstream,
        }
    }
}
