//! A throwaway PostgreSQL cluster from the local server binaries: `initdb`
//! in a temp dir, a free port on 127.0.0.1, stopped and removed on drop.
//! Used by `switchyard demo` and by the test harness.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

/// Why a cluster could not be started or used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClusterError(pub String);

fn err(e: impl std::fmt::Display) -> ClusterError {
    ClusterError(e.to_string())
}

/// How to set a cluster up.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Extra `postgresql.conf` lines.
    pub extra_conf: Vec<String>,
    /// `pg_hba.conf` lines tried before the final `host all all trust`.
    pub hba: Vec<String>,
    /// Server certificate and key for `ssl = on`.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A running throwaway cluster.
pub struct Cluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    run_as: Option<String>,
}

impl Cluster {
    /// Starts a cluster; files to keep with it may be written to `prepare`'s
    /// directory argument before `initdb` runs.
    pub fn start(
        options: ClusterOptions,
        prepare: impl FnOnce(&Path) -> Result<ClusterOptions, ClusterError>,
    ) -> Result<Self, ClusterError> {
        let bindir = find_bindir()?;
        let dir = tempfile::Builder::new()
            .prefix("switchyard-pg-")
            .tempdir()
            .map_err(err)?;
        let extra = prepare(dir.path())?;
        let options = ClusterOptions {
            extra_conf: [options.extra_conf, extra.extra_conf].concat(),
            hba: [options.hba, extra.hba].concat(),
            tls: options.tls.or(extra.tls),
        };
        let run_as = is_root().then(|| "postgres".to_string());
        let mut cluster = Cluster {
            dir,
            bindir,
            port: 0,
            run_as,
        };
        cluster.chown()?;
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
            "max_connections = 300".to_string(),
            "fsync = off".to_string(),
            "synchronous_commit = off".to_string(),
            "full_page_writes = off".to_string(),
            "shared_buffers = 128MB".to_string(),
            "password_encryption = 'scram-sha-256'".to_string(),
            "log_min_messages = warning".to_string(),
        ];
        if let Some((cert, key)) = &options.tls {
            conf.push("ssl = on".into());
            conf.push(format!("ssl_cert_file = '{}'", cert.display()));
            conf.push(format!("ssl_key_file = '{}'", key.display()));
        }
        conf.extend(options.extra_conf);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .map_err(err)?;
        use std::io::Write;
        writeln!(f, "\n{}", conf.join("\n")).map_err(err)?;
        // Options first, so that a `local` line for one user beats the
        // catch-all trust below.
        let mut hba = options.hba;
        hba.push("local all all trust".to_string());
        hba.push("host all all 127.0.0.1/32 trust".to_string());
        std::fs::write(data.join("pg_hba.conf"), hba.join("\n") + "\n").map_err(err)?;
        cluster.chown()?;

        // Another process may take the port between our probe and the
        // server's bind; retry with a fresh one.
        let mut last = String::new();
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
                return Ok(cluster);
            }
            last = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Err(ClusterError(format!("pg_ctl start failed: {last}")))
    }

    fn chown(&self) -> Result<(), ClusterError> {
        if self.run_as.is_none() {
            return Ok(());
        }
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(self.dir.path())
            .status()
            .map_err(err)?;
        if !status.success() {
            return Err(ClusterError(format!(
                "chown of {} failed",
                self.dir.path().display()
            )));
        }
        Ok(())
    }

    /// Runs SQL as the superuser over the Unix socket (bypassing any proxy).
    pub fn psql_admin(&self, sql: &str) -> Result<String, ClusterError> {
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
            .output()
            .map_err(|e| ClusterError(format!("running psql: {e}")))?;
        if !out.status.success() {
            return Err(ClusterError(format!(
                "psql failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's Unix socket file.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join(format!(".s.PGSQL.{}", self.port))
    }

    /// A libpq-style connection string directly to the server.
    pub fn url(&self, user: &str, password: &str, dbname: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} password='{password}' dbname={dbname} sslmode=disable", self.port)
    }

    /// The postmaster's process id.
    pub fn server_pid(&self) -> Option<u32> {
        let pid = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        pid.lines().next()?.trim().parse().ok()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A scratch directory removed with the cluster.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server and starts it again as a child of `wrapper` (a
    /// program that runs the arguments after it, e.g. valgrind), with
    /// `args` added; once it answers. Port and settings stay; dropping the
    /// cluster stops it as before. Files made under [`Cluster::scratch`]
    /// since the start become the server user's.
    pub fn restart_under(&self, wrapper: &[String], args: &[&str]) -> Result<Child, ClusterError> {
        self.stop()?;
        self.chown()?;
        let data = self.data_dir();
        let port = self.port.to_string();
        let mut argv: Vec<String> = wrapper.to_vec();
        argv.push(self.bindir.join("postgres").display().to_string());
        argv.extend(["-D", path_str(&data), "-p", &port].map(String::from));
        argv.extend(args.iter().map(|a| a.to_string()));
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).args(&argv);
                c
            }
            None => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        let log = std::fs::File::create(self.dir.path().join("server-wrapped.log")).map_err(err)?;
        let child = command
            .stdout(log.try_clone().map_err(err)?)
            .stderr(log)
            .spawn()
            .map_err(err)?;
        // Under valgrind start-up takes seconds.
        for _ in 0..1200 {
            if self.psql_admin("select 1").is_ok() {
                return Ok(child);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Err(ClusterError("the wrapped server never answered".into()))
    }

    /// `pg_ctl restart -m fast`.
    pub fn restart(&self) -> Result<(), ClusterError> {
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
    pub fn stop(&self) -> Result<(), ClusterError> {
        let data = self.data_dir();
        self.run_checked(
            "pg_ctl",
            &["-D", path_str(&data), "-m", "fast", "-w", "stop"],
        )?;
        Ok(())
    }

    fn run(&self, bin: &str, args: &[&str]) -> Result<Output, ClusterError> {
        let program = self.bindir.join(bin);
        let out = match &self.run_as {
            Some(user) => Command::new("runuser")
                .args(["-u", user, "--"])
                .arg(&program)
                .args(args)
                .output(),
            None => Command::new(&program).args(args).output(),
        };
        out.map_err(|e| ClusterError(format!("running {}: {e}", program.display())))
    }

    fn run_checked(&self, bin: &str, args: &[&str]) -> Result<Output, ClusterError> {
        let out = self.run(bin, args)?;
        if !out.status.success() {
            return Err(ClusterError(format!(
                "{bin} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
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

/// A port that was free a moment ago.
pub fn free_port() -> Result<u16, ClusterError> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(err)?
        .port())
}

/// Whether this process runs as root (then the server runs as `postgres`).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Finds the server binaries: `pg_config --bindir`, Debian's layout, PATH.
pub fn find_bindir() -> Result<PathBuf, ClusterError> {
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
        .ok_or_else(|| {
            ClusterError(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install them, e.g. `apt-get install postgresql` (or run scripts/setup)".into(),
            )
        })
}
