//! `switchyard demo` end to end, at a size that fits CI.

use switchyard::demo::{run, DemoArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_walks_every_phase_without_a_client_error() {
    let summary = run(DemoArgs {
        rows: 20_000,
        duration: 1,
        sessions: 2,
        verbose: false,
        panic_under_load: false,
    })
    .await
    .expect("the demo completes");
    assert_eq!(
        summary.client_errors, 0,
        "first error: {:?}",
        summary.first_error
    );
    assert!(summary.statements > 100, "{summary:?}");
    assert!(summary.backfill_rows_per_second > 0.0, "{summary:?}");
    assert_eq!(
        summary.final_columns,
        vec![("state".to_string(), "NO".to_string())]
    );
}

/// The `switchyard` command line built for the tests.
/// `switchyard demo` on a small table with one application session,
/// holding the load `duration` seconds around each step.
fn demo(duration: &str) -> std::process::Command {
    let mut command = std::process::Command::new(binary());
    command.args([
        "demo",
        "--rows",
        "20000",
        "--duration",
        duration,
        "--sessions",
        "1",
    ]);
    command
}

fn binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("switchyard-e2e")
}

#[test]
fn an_interrupted_demo_stops_its_postgresql_and_exits() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    for signal in ["INT", "TERM"] {
        let mut child = demo("30")
            .env("SWITCHYARD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        // "PostgreSQL on 127.0.0.1:PORT ...", then wait for the load to run.
        let port: u16 = loop {
            let line = lines.next().expect("the demo printed its cluster").unwrap();
            if let Some(rest) = line.trim().strip_prefix("PostgreSQL on ") {
                let addr = rest.split_whitespace().next().unwrap();
                break addr.rsplit(':').next().unwrap().parse().unwrap();
            }
        };
        loop {
            let line = lines.next().expect("the demo went on").unwrap();
            if line.starts_with("3/4") || line.starts_with("4/4") {
                break;
            }
        }
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        let exit = loop {
            if let Some(exit) = child.try_wait().unwrap() {
                break exit;
            }
            assert!(
                Instant::now() < deadline,
                "SIG{signal} did not end the demo"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(!exit.success(), "SIG{signal}: {exit:?}");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "SIG{signal}: the demo's PostgreSQL on port {port} still runs"
        );
    }
}

#[test]
fn without_a_terminal_the_demo_still_reports_its_jobs() {
    let out = demo("1").env("SWITCHYARD_LOG", "warn").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for job in ["backfill", "verify"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(job) && l.contains("rows/s")),
            "no progress line for {job}:\n{stdout}"
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(job) && l.contains("→ ")),
            "no end line for {job}:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("final catalog       users.state NOT NULL (users.status dropped)"),
        "{stdout}"
    );
    // No log line in the narrative: the logs are in the file it names.
    let logged = stdout.lines().find(|l| {
        [" WARN ", " INFO ", " ERROR ", " DEBUG "]
            .iter()
            .any(|k| l.contains(k))
    });
    assert_eq!(logged, None, "{stdout}");
    let log = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Logs: "))
        .unwrap_or_else(|| panic!("no Logs: line:\n{stdout}"));
    // SWITCHYARD_LOG=warn here: the file holds what was logged, if anything.
    assert!(std::path::Path::new(log).exists(), "{log} is missing");
    let _ = std::fs::remove_file(log);
}

#[test]
fn a_cluster_left_by_a_killed_demo_is_removed_at_the_next_start() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let mut child = demo("30")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = loop {
        let line = lines.next().expect("the demo printed its cluster").unwrap();
        if let Some(rest) = line.trim().strip_prefix("PostgreSQL on ") {
            let addr = rest.split_whitespace().next().unwrap();
            break addr.rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    loop {
        let line = lines.next().expect("the demo went on").unwrap();
        if line.starts_with("3/4") {
            break;
        }
    }
    let killed = child.id();
    child.kill().unwrap(); // SIGKILL: no cleanup at all
    child.wait().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "the killed demo's PostgreSQL should still run until the next demo"
    );
    let leftover = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|d| {
            std::fs::read_to_string(d.join("demo.pid")).ok().as_deref() == Some(&killed.to_string())
        })
        .expect("the killed demo's directory carries its pid");

    let out = Command::new(binary())
        .args([
            "demo",
            "--rows",
            "2000",
            "--duration",
            "1",
            "--sessions",
            "1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!leftover.exists(), "{} is still there", leftover.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the leftover PostgreSQL on {port} still runs"
    );
}

#[test]
fn a_panicking_demo_stops_its_postgresql_and_removes_its_files() {
    let child = demo("1")
        .arg("--panic-under-load")
        .env("SWITCHYARD_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "{stdout}\n{stderr}");
    assert!(stderr.contains("--panic-under-load"), "{stderr}");
    let port: u16 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("PostgreSQL on "))
        .and_then(|rest| {
            rest.split_whitespace()
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no cluster line:\n{stdout}"));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the panicked demo's PostgreSQL on port {port} still runs"
    );
    let left = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .any(|e| std::fs::read_to_string(e.path().join("demo.pid")).ok() == Some(pid.clone()));
    assert!(!left, "the panicked demo's directory is still there");
}
