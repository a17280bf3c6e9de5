//! PgBouncer in session mode, as the reference proxy.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cluster::{free_port, is_root};
use crate::Cluster;
use anyhow::{bail, Context};

/// A running PgBouncer, stopped on drop.
pub struct PgBouncer {
    child: Child,
    /// Its pid file: under `runuser`, the child is runuser, and PgBouncer
    /// is runuser's child, which killing runuser leaves running.
    pidfile: std::path::PathBuf,
    /// Its listen port.
    pub port: u16,
}

impl PgBouncer {
    /// Starts PgBouncer in front of `cluster` (trust auth, session pooling).
    pub fn start(cluster: &Cluster) -> anyhow::Result<Self> {
        Self::start_for(cluster, cluster.port)
    }

    /// Starts PgBouncer in front of `upstream_port` on 127.0.0.1 (e.g. a
    /// Switchyard proxy), using `cluster`'s scratch directory.
    pub fn start_for(cluster: &Cluster, upstream_port: u16) -> anyhow::Result<Self> {
        Self::start_with(
            cluster,
            &format!("host=127.0.0.1 port={upstream_port}"),
            "session",
        )
    }

    /// Like [`PgBouncer::start_for`], with `pool_mode` `session` or
    /// `transaction`.
    pub fn start_pooling(
        cluster: &Cluster,
        upstream_port: u16,
        pool_mode: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(
            cluster,
            &format!("host=127.0.0.1 port={upstream_port}"),
            pool_mode,
        )
    }

    /// Starts PgBouncer in front of `cluster` through its Unix socket.
    pub fn start_unix(cluster: &Cluster) -> anyhow::Result<Self> {
        let socket = cluster.socket_path();
        let dir = socket.parent().context("socket directory")?;
        Self::start_with(
            cluster,
            &format!("host={} port={}", dir.display(), cluster.port),
            "session",
        )
    }

    /// Starts PgBouncer in front of `cluster` (session pooling) under
    /// `wrapper` (e.g. `valgrind --tool=callgrind ...`), which runs it in
    /// place. As root it runs as `postgres`, which must be able to write
    /// wherever the wrapper writes.
    pub fn start_wrapped(cluster: &Cluster, wrapper: &[String]) -> anyhow::Result<Self> {
        let server = format!("host=127.0.0.1 port={}", cluster.port);
        Self::start_full(cluster, &server, "session", wrapper)
    }

    /// The process id of PgBouncer (under a wrapper started as root, of
    /// `runuser`, whose only child it is).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts PgBouncer with `server` as its libpq-style target.
    fn start_with(cluster: &Cluster, server: &str, pool_mode: &str) -> anyhow::Result<Self> {
        Self::start_full(cluster, server, pool_mode, &[])
    }

    fn start_full(
        cluster: &Cluster,
        server: &str,
        pool_mode: &str,
        wrapper: &[String],
    ) -> anyhow::Result<Self> {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .context("pgbouncer not found: apt-get install pgbouncer")?;
        let port = free_port()?;
        let dir = cluster.scratch().join(format!("pgbouncer-{port}"));
        std::fs::create_dir_all(&dir)?;
        let users = dir.join("users.txt");
        std::fs::write(&users, "\"trust_user\" \"\"\n")?;
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\npostgres = {server}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {}\npool_mode = {pool_mode}\nmax_client_conn = 200\n\
                 default_pool_size = 40\nlogfile = {}\npidfile = {}\nignore_startup_parameters = extra_float_digits\n",
                users.display(),
                dir.join("pgbouncer.log").display(),
                dir.join("pgbouncer.pid").display(),
            ),
        )?;
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()?;
        let mut cmd = match (wrapper.split_first(), is_root()) {
            // The wrapper runs as postgres too, so that it can be talked to
            // (callgrind_control) by that user.
            (Some((program, args)), true) => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--", program])
                    .args(args)
                    .arg(bin);
                c
            }
            (Some((program, args)), false) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            (None, root) => {
                let mut c = Command::new(bin);
                if root {
                    c.args(["-u", "postgres"]);
                }
                c
            }
        };
        let child = cmd
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pidfile = dir.join("pgbouncer.pid");
        let bouncer = PgBouncer {
            child,
            pidfile,
            port,
        };
        // Under valgrind start-up takes seconds.
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(bouncer);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "pgbouncer did not start; see {}",
            dir.join("pgbouncer.log").display()
        )
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // PgBouncer itself first (it writes its pid file once it runs), so
        // that no wrapped one outlives the test or benchmark.
        if let Ok(pid) = std::fs::read_to_string(&self.pidfile) {
            let _ = Command::new("kill")
                .args(["-KILL", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
