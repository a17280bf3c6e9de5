//! `idle`: the CPU an idle `serve` uses with its control plane on. The
//! `switchyard` binary next to this one runs against a throwaway cluster
//! with one migration in `reads_switched` and no application traffic; its
//! user and system time are read from `/proc/PID/stat` over `--seconds`
//! (after a warm-up), so the number does not depend on how busy the
//! machine is. `SWITCHYARD_BIN` names another binary to measure (an older
//! build, for comparison).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_tests::tools::http;
use switchyard_tests::Cluster;

use crate::Options;

/// User + system CPU of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat (11 and 12 after `)`).
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn clock_ticks() -> u64 {
    // sysconf(_SC_CLK_TCK) is 100 on Linux everywhere this runs.
    100
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn binary() -> anyhow::Result<std::path::PathBuf> {
    if let Ok(bin) = std::env::var("SWITCHYARD_BIN") {
        return Ok(bin.into());
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no directory above {}", exe.display()))?;
    Ok(dir.join("switchyard"))
}

/// Runs the measurement.
pub fn run(options: Options) -> anyhow::Result<()> {
    let runtime = crate::runtime()?;
    let cluster = Cluster::start()?;
    cluster.psql_admin(
        "create table users(id bigserial primary key, email text not null);
         insert into users(email) select 'U' || g || '@X' from generate_series(1, 1000) g;",
    )?;
    let port = switchyard_testkit::free_port()?;
    let control = switchyard_testkit::free_port()?;
    let child = Command::new(binary()?)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", &cluster.addr(), "--upstream-tls", "disable"])
        .args(["--control-listen", &format!("127.0.0.1:{control}")])
        .args([
            "--database-url",
            &cluster.conn_str("trust_user", "postgres"),
        ])
        .env("SWITCHYARD_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()?;
    let serve = Serve(child);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{control}").parse()?;
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while http(addr, "GET", "/healthz", None, None).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "serve did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let spec = json!({"name": "users-email", "table": "users",
            "columns": [{"legacy": "email", "new": "email_address", "forward": "lower(email)"}]});
        let post = |path: String, body: Option<String>| async move {
            let (status, value) = http(addr, "POST", &path, body.as_deref(), None).await?;
            anyhow::ensure!(status < 300, "{path}: {status} {value}");
            Ok::<_, anyhow::Error>(value)
        };
        post("/v1/migrations".into(), Some(spec.to_string())).await?;
        for verb in ["expand", "dual-write", "backfill", "verify", "switch-reads"] {
            post(format!("/v1/migrations/users-email/{verb}"), None).await?;
            loop {
                let (_, d) = http(addr, "GET", "/v1/migrations/users-email", None, None).await?;
                if d["job"]["state"] != "running" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    std::thread::sleep(Duration::from_secs(5));
    let pid = serve.0.id();
    let before = cpu_ticks(pid)?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(u64::from(options.seconds)));
    let ticks = cpu_ticks(pid)? - before;
    let wall = started.elapsed().as_secs_f64();
    let cpu = ticks as f64 / clock_ticks() as f64;
    let line = json!({
        "binary": binary()?.display().to_string(),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "cpu_percent": 100.0 * cpu / wall,
        "cpu_ms_per_second": 1000.0 * cpu / wall,
    });
    println!("{line}");
    if let Some(dir) = std::path::Path::new(&options.out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&options.out, format!("{line}\n"))?;
    Ok(())
}
