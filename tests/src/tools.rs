//! Running real client programs: psql, pgbench, and Python drivers from a
//! virtualenv the harness sets up from PyPI.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use anyhow::{bail, Context};

/// Runs a command and returns its output, failing with its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}):\n{}\n{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// A `psql` command against `port` as `user` (password via PGPASSWORD).
pub fn psql(port: u16, user: &str, extra_env: &[(&str, &str)]) -> Command {
    let password = crate::cluster::USERS
        .iter()
        .find(|u| u.0 == user)
        .map(|u| u.1)
        .unwrap_or("");
    let mut cmd = Command::new("psql");
    cmd.args([
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        user,
        "-d",
        "postgres",
    ])
    .env("PGPASSWORD", password)
    .env("PGCONNECT_TIMEOUT", "10");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd
}

/// A `pgbench` command against `port` as `user`.
pub fn pgbench(port: u16, user: &str) -> Command {
    let password = crate::cluster::USERS
        .iter()
        .find(|u| u.0 == user)
        .map(|u| u.1)
        .unwrap_or("");
    let mut cmd = Command::new("pgbench");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user])
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "disable");
    cmd
}

static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The Python interpreter of a virtualenv with psycopg and asyncpg, created
/// once under the target directory and reused by later runs.
pub fn python() -> anyhow::Result<PathBuf> {
    VENV.get_or_init(|| make_venv().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn make_venv() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-venv");
    let python = dir.join("bin/python");
    // The marker names what is installed, so that a venv from an older
    // list is completed.
    let marker = dir.join(".switchyard-ready-2");
    if marker.exists() {
        return Ok(python);
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "psycopg[binary]>=3.1",
        "asyncpg>=0.29",
        "SQLAlchemy>=2",
        "Django>=4.2",
        "psycopg2-binary>=2.9",
    ]))?;
    std::fs::write(&marker, "ok")?;
    Ok(python)
}

/// A minimal HTTP/1.1 GET, returning status code and body text.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    raw_http(addr, "GET", path, "", None).await
}

/// A control API call with an optional JSON body and a bearer token;
/// transport errors panic (the test fails there).
pub async fn api(
    addr: std::net::SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let body = body.map(|b| b.to_string());
    http(addr, method, path, body.as_deref(), Some(token))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// A minimal HTTP/1.1 request with an optional JSON body and bearer token;
/// returns the status and the parsed JSON body (`null` if not JSON).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let (status, text) = raw_http(addr, method, path, body.unwrap_or(""), token).await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    ))
}

async fn raw_http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let text = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, text))
}

static NODE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
static BROWSER: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// A directory with node-postgres installed (`npm install pg` once, under
/// the target directory), for `NODE_PATH`.
pub fn node_modules() -> anyhow::Result<PathBuf> {
    NODE.get_or_init(|| npm_install("e2e-node", "pg@8", "pg").map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// A directory with `playwright-core` installed (it drives Debian's
/// chromium; it downloads no browser), for `NODE_PATH`.
pub fn playwright_modules() -> anyhow::Result<PathBuf> {
    BROWSER
        .get_or_init(|| {
            npm_install("e2e-browser", "playwright-core@1", "playwright-core")
                .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// `npm install spec` once into `target/<dir>`; answers its node_modules.
fn npm_install(dir: &str, spec: &str, name: &str) -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(dir);
    let modules = dir.join("node_modules");
    if modules.join(name).join("package.json").exists() {
        return Ok(modules);
    }
    std::fs::create_dir_all(&dir)?;
    run(Command::new("npm")
        .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .arg(spec))?;
    Ok(modules)
}
