//! Clusters left behind by a demo that was killed (`kill -9` gives it no
//! chance to clean up). Each demo writes its process id into its cluster's
//! directory before `initdb`; at the next start, a directory whose demo is
//! gone has its PostgreSQL stopped and is removed. Clusters of tests and of
//! running demos carry no such file or a live process, and are left alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The file naming the demo that owns a cluster directory.
pub(crate) const OWNER_FILE: &str = "demo.pid";

/// Marks `dir` as owned by this process.
pub(crate) fn claim(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join(OWNER_FILE), std::process::id().to_string())
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Stops and removes every cluster a dead demo left in the temp directory;
/// answers the directories removed.
pub(crate) fn reap() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        let ours = entry
            .file_name()
            .to_string_lossy()
            .starts_with("switchyard-pg-");
        let Some(owner) = ours.then(|| read_pid(&dir.join(OWNER_FILE))).flatten() else {
            continue;
        };
        if alive(owner) {
            continue;
        }
        if let Some(server) = read_pid(&dir.join("data/postmaster.pid")) {
            stop(server);
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}

/// Immediate shutdown (SIGQUIT to the postmaster), then SIGKILL if it
/// lingers; waits at most ten seconds.
fn stop(server: u32) {
    let signal = |sig: &str| {
        let _ = std::process::Command::new("kill")
            .args([sig, &server.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    };
    signal("-QUIT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(server) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        if Instant::now() + Duration::from_secs(5) > deadline {
            signal("-KILL");
        }
    }
}
