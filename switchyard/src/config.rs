//! `serve` configuration: command-line flags over a TOML file over defaults,
//! for the wire proxy and the control API together.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use switchyard_proxy::tls::UpstreamTlsMode;
use switchyard_proxy::ProxyConfig;

/// Flags of `switchyard serve`; each overrides the same key in `--config`.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where applications connect (PostgreSQL wire protocol) [default: 127.0.0.1:6432].
    #[arg(long)]
    pub listen: Option<String>,
    /// The PostgreSQL server: HOST:PORT, or the path of its Unix socket (file or directory) [default: 127.0.0.1:5432].
    #[arg(long)]
    pub upstream: Option<String>,
    /// TLS to the server: disable, prefer, require, verify-full [default: prefer].
    #[arg(long)]
    pub upstream_tls: Option<UpstreamTlsMode>,
    /// CA certificate (PEM) for --upstream-tls verify-full.
    #[arg(long)]
    pub upstream_ca: Option<PathBuf>,
    /// Certificate (PEM) for TLS on application connections.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for TLS on application connections.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// HTTP control API address [default: 127.0.0.1:7432].
    #[arg(long)]
    pub control_listen: Option<String>,
    /// The database whose tables are migrated (state lives in its `switchyard` schema).
    #[arg(long, env = "SWITCHYARD_DATABASE_URL")]
    pub database_url: Option<String>,
    /// File holding the control API bearer token (or set SWITCHYARD_CONTROL_TOKEN).
    #[arg(long)]
    pub control_token_file: Option<PathBuf>,
    /// Largest message accepted from a client, in bytes (COPY data is streamed) [default: 134217728].
    #[arg(long)]
    pub max_message_bytes: Option<usize>,
    /// Seconds a client may take to start up and authenticate [default: 60].
    #[arg(long)]
    pub startup_timeout_secs: Option<u64>,
    /// Seconds to let sessions finish after SIGTERM before closing them [default: 30].
    #[arg(long)]
    pub drain_timeout_secs: Option<u64>,
    /// Seconds to wait for the upstream server to accept a connection [default: 10].
    #[arg(long)]
    pub connect_timeout_secs: Option<u64>,
    /// Relay threads, and as many session threads [default: one of each per core].
    #[arg(long)]
    pub threads: Option<NonZeroUsize>,
}

/// The same settings as read from a TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    upstream: Option<String>,
    upstream_tls: Option<UpstreamTlsMode>,
    upstream_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    control_listen: Option<String>,
    database_url: Option<String>,
    control_token_file: Option<PathBuf>,
    max_message_bytes: Option<usize>,
    startup_timeout_secs: Option<u64>,
    drain_timeout_secs: Option<u64>,
    connect_timeout_secs: Option<u64>,
    threads: Option<NonZeroUsize>,
}

/// The resolved configuration of one `serve` process.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The wire proxy's.
    pub proxy: ProxyConfig,
    /// Control API address.
    pub control_listen: String,
    /// Target database URL.
    pub database_url: Option<String>,
    /// Control API bearer token.
    pub control_token: Option<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            proxy: ProxyConfig::default(),
            control_listen: "127.0.0.1:7432".into(),
            database_url: None,
            control_token: None,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The file is not valid TOML for these settings.
    #[error("{0}: {1}")]
    Parse(PathBuf, toml::de::Error),
    /// Settings contradict each other.
    #[error("{0}")]
    Invalid(String),
}

impl ServeConfig {
    /// Resolves flags over the optional file over defaults; `token_env` is
    /// `SWITCHYARD_CONTROL_TOKEN` if set.
    pub fn resolve(args: &ServeArgs, token_env: Option<String>) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Read(path.clone(), e))?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse(path.clone(), e))?
            }
            None => FileConfig::default(),
        };
        let d = ProxyConfig::default();
        let control_default = ServeConfig::default().control_listen;
        let tls = match (
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "tls_cert and tls_key go together".into(),
                ))
            }
        };
        let token_file = args.control_token_file.clone().or(file.control_token_file);
        let control_token = match token_file {
            Some(path) => {
                let token = std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError::Read(path.clone(), e))?
                    .trim()
                    .to_owned();
                // An empty token would let the API bind anywhere unguarded.
                if token.is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "{}: the control token file is empty",
                        path.display()
                    )));
                }
                Some(token)
            }
            None => token_env.filter(|t| !t.is_empty()),
        };
        let secs = |flag: Option<u64>, file: Option<u64>, default: Duration| {
            flag.or(file).map(Duration::from_secs).unwrap_or(default)
        };
        let upstream = args
            .upstream
            .clone()
            .or(file.upstream)
            .unwrap_or(d.upstream);
        let upstream_tls = args
            .upstream_tls
            .or(file.upstream_tls)
            .unwrap_or(d.upstream_tls);
        let upstream = unix_socket(upstream, upstream_tls)?;
        let proxy = ProxyConfig {
            listen: args.listen.clone().or(file.listen).unwrap_or(d.listen),
            upstream,
            upstream_tls,
            upstream_ca: args.upstream_ca.clone().or(file.upstream_ca),
            tls,
            max_message_bytes: args
                .max_message_bytes
                .or(file.max_message_bytes)
                .unwrap_or(d.max_message_bytes),
            startup_timeout: secs(
                args.startup_timeout_secs,
                file.startup_timeout_secs,
                d.startup_timeout,
            ),
            drain_timeout: secs(
                args.drain_timeout_secs,
                file.drain_timeout_secs,
                d.drain_timeout,
            ),
            connect_timeout: secs(
                args.connect_timeout_secs,
                file.connect_timeout_secs,
                d.connect_timeout,
            ),
            threads: args.threads.or(file.threads),
        };
        Ok(ServeConfig {
            proxy,
            control_listen: args
                .control_listen
                .clone()
                .or(file.control_listen)
                .unwrap_or(control_default),
            database_url: args.database_url.clone().or(file.database_url),
            control_token,
        })
    }
}

/// Checks a Unix-socket upstream: PostgreSQL offers no TLS on one, and a
/// directory means its default socket file, as libpq reads `host=/dir`.
fn unix_socket(upstream: String, tls: UpstreamTlsMode) -> Result<String, ConfigError> {
    if !upstream.starts_with('/') {
        return Ok(upstream);
    }
    if matches!(tls, UpstreamTlsMode::Require | UpstreamTlsMode::VerifyFull) {
        return Err(ConfigError::Invalid(format!(
            "upstream {upstream} is a Unix socket, which carries no TLS; use --upstream-tls disable or prefer"
        )));
    }
    let path = std::path::Path::new(&upstream);
    if path.is_dir() {
        return Ok(path.join(".s.PGSQL.5432").display().to_string());
    }
    Ok(upstream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_defaults_fill_the_rest() {
        let dir = std::env::temp_dir().join(format!("sy-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:1\"\nupstream = \"db:5433\"\nupstream_tls = \"verify-full\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:2".into()),
            ..Default::default()
        };
        let c = ServeConfig::resolve(&args, Some("tok".into())).unwrap();
        assert_eq!(c.proxy.listen, "127.0.0.1:2");
        assert_eq!(c.proxy.upstream, "db:5433");
        assert_eq!(c.proxy.upstream_host(), "db");
        assert_eq!(c.proxy.upstream_tls, UpstreamTlsMode::VerifyFull);
        assert_eq!(c.control_listen, "127.0.0.1:7432");
        assert_eq!(c.control_token.as_deref(), Some("tok"));
        // Threads: one per core unless set, a flag over the file.
        assert_eq!(c.proxy.threads, None);
        assert!(c.proxy.thread_count() >= 1);
        std::fs::write(&path, "threads = 3\n").unwrap();
        let c = ServeConfig::resolve(&args, None).unwrap();
        assert_eq!(c.proxy.thread_count(), 3);
        let flagged = ServeArgs {
            threads: NonZeroUsize::new(2),
            ..args
        };
        let c = ServeConfig::resolve(&flagged, None).unwrap();
        assert_eq!(c.proxy.thread_count(), 2);
        // Zero threads is no setting.
        std::fs::write(&path, "threads = 0\n").unwrap();
        assert!(matches!(
            ServeConfig::resolve(&flagged, None),
            Err(ConfigError::Parse(..))
        ));
    }

    #[test]
    fn an_empty_token_file_is_refused() {
        let path = std::env::temp_dir().join(format!("sy-token-{}", std::process::id()));
        std::fs::write(&path, " \n").unwrap();
        let args = ServeArgs {
            control_token_file: Some(path.clone()),
            ..Default::default()
        };
        let err = ServeConfig::resolve(&args, None).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_unix_socket_upstream_refuses_tls_and_reads_a_directory_as_libpq_does() {
        let dir = std::env::temp_dir();
        let args = |tls| ServeArgs {
            upstream: Some(dir.display().to_string()),
            upstream_tls: Some(tls),
            ..Default::default()
        };
        let c = ServeConfig::resolve(&args(UpstreamTlsMode::Prefer), None).unwrap();
        assert!(c.proxy.upstream_is_unix());
        assert_eq!(
            c.proxy.upstream,
            dir.join(".s.PGSQL.5432").display().to_string()
        );
        let err = ServeConfig::resolve(&args(UpstreamTlsMode::VerifyFull), None).unwrap_err();
        assert!(err.to_string().contains("carries no TLS"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("sy-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        assert!(matches!(
            ServeConfig::resolve(&args, None),
            Err(ConfigError::Parse(..))
        ));
    }
}
