//! `switchyard serve` as its own process (the same entry point as the
//! shipped binary), for what an in-process proxy cannot show: `kill -9`,
//! and several instances sharing one database.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;

/// A running `serve` process; killed when dropped.
pub struct ServeProcess {
    child: Child,
    /// Where applications connect.
    pub addr: SocketAddr,
    /// The control API.
    pub control_addr: SocketAddr,
    reaped: bool,
}

impl ServeProcess {
    /// Starts `serve` against `cluster` with the control plane on database
    /// `postgres` as `trust_user`, and waits until its API answers.
    pub async fn start(cluster: &Cluster, token: &str) -> anyhow::Result<Self> {
        Self::start_with(cluster, token, &[]).await
    }

    /// Like [`ServeProcess::start`], with more `serve` flags.
    pub async fn start_with(
        cluster: &Cluster,
        token: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let addr: SocketAddr = format!("127.0.0.1:{}", switchyard_testkit::free_port()?).parse()?;
        let control_addr: SocketAddr =
            format!("127.0.0.1:{}", switchyard_testkit::free_port()?).parse()?;
        Self::start_at(cluster, token, addr, control_addr, extra).await
    }

    /// Kills this process and starts a new one on the same addresses, as
    /// a supervisor restarting a crashed `serve` would.
    pub async fn restart(&mut self, cluster: &Cluster, token: &str) -> anyhow::Result<()> {
        self.kill();
        let fresh = Self::start_at(cluster, token, self.addr, self.control_addr, &[]).await?;
        // The old child is reaped; dropping it would kill the new pid's twin.
        let mut old = std::mem::replace(self, fresh);
        old.reaped = true;
        Ok(())
    }

    async fn start_at(
        cluster: &Cluster,
        token: &str,
        addr: SocketAddr,
        control_addr: SocketAddr,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let child = Command::new(binary()?)
            .args(["serve", "--listen", &addr.to_string()])
            .args(["--upstream", &format!("127.0.0.1:{}", cluster.port)])
            .args(["--upstream-tls", "disable"])
            .args(["--control-listen", &control_addr.to_string()])
            .args([
                "--database-url",
                &cluster.conn_str("trust_user", "postgres"),
            ])
            .args(extra)
            .env("SWITCHYARD_CONTROL_TOKEN", token)
            .env("SWITCHYARD_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()?;
        let mut process = ServeProcess {
            child,
            addr,
            control_addr,
            reaped: false,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = process.child.try_wait()? {
                anyhow::bail!("serve exited early: {status}");
            }
            if let Ok((200, _)) = crate::tools::http_get(control_addr, "/healthz").await {
                // /healthz answers once the control plane has joined.
                return Ok(process);
            }
            anyhow::ensure!(Instant::now() < deadline, "serve did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no drain, no goodbye; its database sessions just end.
    pub fn kill(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }
}

/// The package's `switchyard-e2e` binary, which cargo builds next to the
/// integration tests' `deps/` directory before running them.
fn binary() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| anyhow::anyhow!("no target directory above {}", exe.display()))?;
    let bin = dir.join("switchyard-e2e");
    anyhow::ensure!(bin.exists(), "{} is not built", bin.display());
    Ok(bin)
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
