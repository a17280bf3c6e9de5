//! A throwaway PostgreSQL cluster: `initdb` in a temp dir, a free port, TLS
//! on, and one login role per authentication method.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context};

use crate::certs::TestCerts;

/// Roles the cluster creates, one per authentication method.
pub const USERS: [(&str, &str, &str); 3] = [
    ("trust_user", "", "trust"),
    ("md5_user", "md5pass", "md5"),
    ("scram_user", "scrampass", "scram-sha-256"),
];

/// Settings for a new cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Extra `postgresql.conf` lines.
    pub extra_conf: Vec<String>,
}

/// A running throwaway cluster, stopped and removed on drop.
pub struct Cluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// The server's TLS files.
    pub certs: TestCerts,
    run_as: Option<String>,
}

impl Cluster {
    /// Starts a cluster with default options.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(ClusterOptions::default())
    }

    /// Starts a cluster.
    pub fn start_with(options: ClusterOptions) -> anyhow::Result<Self> {
        let bindir = find_bindir()?;
        let dir = tempfile::Builder::new()
            .prefix("switchyard-pg-")
            .tempdir()?;
        let run_as = is_root().then(|| "postgres".to_string());
        let certs = TestCerts::generate(dir.path(), "server")?;
        let mut cluster = Cluster {
            dir,
            bindir,
            port: 0,
            certs,
            run_as,
        };
        if cluster.run_as.is_some() {
            chown_to_postgres(cluster.dir.path())?;
        }
        let data = cluster.data_dir();
        cluster.run_checked(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        let sock = cluster.dir.path().display().to_string();
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("unix_socket_directories = '{sock}'"),
            "ssl = on".to_string(),
            format!("ssl_cert_file = '{}'", cluster.certs.cert.display()),
            format!("ssl_key_file = '{}'", cluster.certs.key.display()),
            "max_connections = 300".to_string(),
            "fsync = off".to_string(),
            "synchronous_commit = off".to_string(),
            "full_page_writes = off".to_string(),
            "shared_buffers = 128MB".to_string(),
            "password_encryption = 'scram-sha-256'".to_string(),
            "log_min_messages = warning".to_string(),
        ];
        conf.extend(options.extra_conf);
        append(&data.join("postgresql.conf"), &conf.join("\n"))?;
        let mut hba = vec!["local all all trust".to_string()];
        for (user, _, method) in USERS {
            hba.push(format!("host all {user} 127.0.0.1/32 {method}"));
        }
        hba.push("host all all 127.0.0.1/32 trust".to_string());
        std::fs::write(data.join("pg_hba.conf"), hba.join("\n") + "\n")?;
        if cluster.run_as.is_some() {
            chown_to_postgres(cluster.dir.path())?;
        }

        // Another process may take the port between our probe and the
        // server's bind; retry a few times with a fresh one.
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            let opts = format!("-p {}", cluster.port);
            let log = cluster.dir.path().join("server.log");
            let out = cluster.run(
                "pg_ctl",
                &[
                    "-D",
                    path_str(&data),
                    "-l",
                    path_str(&log),
                    "-o",
                    &opts,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            )?;
            if out.status.success() {
                cluster.create_roles()?;
                return Ok(cluster);
            }
            last = Some(format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        bail!("pg_ctl start failed: {}", last.unwrap_or_default())
    }

    fn create_roles(&self) -> anyhow::Result<()> {
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
        self.psql_admin(&sql)?;
        Ok(())
    }

    /// Runs SQL as the superuser over the Unix socket (bypassing any proxy).
    pub fn psql_admin(&self, sql: &str) -> anyhow::Result<String> {
        let out = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h"])
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A tokio-postgres / libpq connection string for `user` directly to the server.
    pub fn conn_str(&self, user: &str, dbname: &str) -> String {
        let password = USERS
            .iter()
            .find(|u| u.0 == user)
            .map(|u| u.1)
            .unwrap_or("");
        format!("host=127.0.0.1 port={} user={user} password='{password}' dbname={dbname} sslmode=disable", self.port)
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A scratch directory that is removed with the cluster.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// `pg_ctl restart -m fast`: every session is terminated with 57P01.
    pub fn restart(&self) -> anyhow::Result<()> {
        let data = self.data_dir();
        let opts = format!("-p {}", self.port);
        let log = self.dir.path().join("server.log");
        self.run_checked(
            "pg_ctl",
            &[
                "-D",
                path_str(&data),
                "-l",
                path_str(&log),
                "-o",
                &opts,
                "-m",
                "fast",
                "-w",
                "restart",
            ],
        )?;
        Ok(())
    }

    /// `pg_ctl stop -m fast`.
    pub fn stop(&self) -> anyhow::Result<()> {
        let data = self.data_dir();
        self.run_checked(
            "pg_ctl",
            &["-D", path_str(&data), "-m", "fast", "-w", "stop"],
        )?;
        Ok(())
    }

    /// Path of a server binary (initdb, pg_ctl, postgres).
    pub fn server_bin(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    fn run(&self, bin: &str, args: &[&str]) -> anyhow::Result<Output> {
        let program = self.bindir.join(bin);
        let out = match &self.run_as {
            Some(user) => Command::new("runuser")
                .args(["-u", user, "--"])
                .arg(&program)
                .args(args)
                .output(),
            None => Command::new(&program).args(args).output(),
        };
        out.with_context(|| format!("running {}", program.display()))
    }

    fn run_checked(&self, bin: &str, args: &[&str]) -> anyhow::Result<Output> {
        let out = self.run(bin, args)?;
        if !out.status.success() {
            bail!(
                "{bin} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self.run(
            "pg_ctl",
            &["-D", path_str(&data), "-m", "immediate", "-w", "stop"],
        );
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    writeln!(f, "\n{text}")?;
    Ok(())
}

/// A port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether this process runs as root (then servers run as `postgres`).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn chown_to_postgres(dir: &Path) -> anyhow::Result<()> {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()?;
    if !status.success() {
        bail!("chown of {} failed", dir.display());
    }
    Ok(())
}

/// Finds the server binaries: PATH, `pg_config --bindir`, then Debian's layout.
pub fn find_bindir() -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev());
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() && dir.join("postgres").is_file())
        .context("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install them, e.g. `apt-get install postgresql`")
}
