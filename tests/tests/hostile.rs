//! Hostile input against the real `serve` binary: nothing one client sends
//! takes the process down or stalls the other sessions.

use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_tests::api::Api;
use switchyard_tests::process::ServeProcess;
use switchyard_tests::Cluster;

const TOKEN: &str = "hostile-token";

struct Env {
    _cluster: Cluster,
    serve: ServeProcess,
    db: tokio_postgres::Client,
}

impl Env {
    /// A `users` table whose `email` migration is walked to `to`.
    async fn new(to: &[(&str, u16)]) -> Env {
        Env::with_flags(to, &[]).await
    }

    /// [`Env::new`] with more `serve` flags.
    async fn with_flags(to: &[(&str, u16)], flags: &[&str]) -> Env {
        let cluster = Cluster::start().unwrap();
        let db = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
            .await
            .unwrap();
        db.batch_execute(
            "create table users(id bigserial primary key, email text, note text);
             insert into users(email) select 'U' || g || '@X' from generate_series(1, 100) g;",
        )
        .await
        .unwrap();
        let serve = ServeProcess::start_with(&cluster, TOKEN, flags)
            .await
            .unwrap();
        let api = Api::new(serve.control_addr, TOKEN);
        let spec = json!({"name": "users-email", "table": "users",
            "columns": [{"legacy": "email", "new": "email_address", "forward": "lower(email)"}]});
        assert_eq!(api.call("POST", "/v1/migrations", Some(spec)).await.0, 201);
        for (verb, status) in to {
            api.step("users-email", verb, *status).await;
        }
        Env {
            _cluster: cluster,
            serve,
            db,
        }
    }

    async fn app(&self) -> tokio_postgres::Client {
        switchyard_tests::proxy::connect(&format!(
            "host=127.0.0.1 port={} user=trust_user dbname=postgres sslmode=disable",
            self.serve.addr.port()
        ))
        .await
        .unwrap()
    }
}

const SWITCHED: &[(&str, u16)] = &[
    ("expand", 200),
    ("dual-write", 200),
    ("backfill", 202),
    ("verify", 202),
    ("switch-reads", 200),
];

/// Each shape at ten times the depth that used to overflow a worker's
/// stack and abort the process (`scale` 10), or at a depth that is parsed
/// and rewritten, but only on a thread with a big stack (`scale` 1, for
/// unoptimised builds, whose frames are about ten times larger).
fn deep_statements(scale: usize) -> Vec<(&'static str, String)> {
    let nest = |open: &str, inner: &str, close: &str, n: usize| {
        format!("{}{inner}{}", open.repeat(n), close.repeat(n))
    };
    let (from, scalar, lower, case, paren, concat, chain) = if scale == 10 {
        (480, 640, 1440, 2960, 4480, 23_040, 327_680)
    } else {
        (60, 80, 200, 400, 600, 3_000, 20_000)
    };
    vec![
        (
            "FROM subqueries",
            format!(
                "select * from {} x",
                nest("(select * from ", "users", ") s", from)
            ),
        ),
        (
            "scalar subqueries",
            format!(
                "select {} from users",
                nest("(select ", "email", ")", scalar)
            ),
        ),
        (
            "IN subqueries",
            format!(
                "select 1 from users where id in {}",
                nest("(select ", "id from users", ")", scalar + scalar / 10)
            ),
        ),
        (
            "nested lower(",
            format!("select {} from users", nest("lower(", "email", ")", lower)),
        ),
        (
            "nested CASE",
            format!(
                "select {} from users",
                nest("case when true then ", "email", " end", case)
            ),
        ),
        (
            "parentheses",
            format!("select {} from users", nest("(", "email", ")", paren)),
        ),
        (
            "|| in an INSERT",
            format!(
                "insert into users(email) values ({})",
                vec!["'x'"; concat].join("||")
            ),
        ),
        (
            "+ chain",
            format!("select {} from users", vec!["1"; chain].join("+")),
        ),
        (
            "AND chain",
            format!(
                "select 1 from users where {}",
                vec!["email = 'a'"; chain].join(" and ")
            ),
        ),
        (
            "a comment naming the table",
            format!("/* users */ select {}", vec!["1"; chain].join("+")),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_statements_never_take_the_process_down() {
    let env = Env::new(SWITCHED).await;
    let other = env.app().await;
    for (shape, sql) in deep_statements(10).into_iter().chain(deep_statements(1)) {
        let app = env.app().await;
        // PostgreSQL's answer (its 54001 among them) or our refusal: an
        // error is the statement's own, never a lost connection.
        if let Err(e) = app.simple_query(&sql).await {
            assert!(e.as_db_error().is_some(), "{shape}: {e:?}");
        }
        // The process and every other session go on.
        let one: i32 = other.query_one("select 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1, "{shape}");
        assert_eq!(
            app.query_one("select 2", &[])
                .await
                .unwrap()
                .get::<_, i32>(0),
            2
        );
    }
}

/// Runs `big` on one session while another runs `SELECT 1` in a loop;
/// returns the slowest `SELECT 1` seen while `big` ran.
async fn while_running(env: &Env, big: String) -> Duration {
    let app = env.app().await;
    let other = env.app().await;
    let task = tokio::spawn(async move { app.simple_query(&big).await.map(|_| ()) });
    let mut slowest = Duration::ZERO;
    let mut rounds = 0;
    while !task.is_finished() || rounds == 0 {
        let started = Instant::now();
        other.simple_query("select 1").await.unwrap();
        slowest = slowest.max(started.elapsed());
        rounds += 1;
    }
    task.await.unwrap().unwrap();
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_statements_are_rewritten_without_stalling_others() {
    let env = Env::new(&[("expand", 200), ("dual-write", 200)]).await;
    let rows: Vec<String> = (0..10_000)
        .map(|i| format!("('Bulk{i}@X.COM', 'n{i}')"))
        .collect();
    let insert = format!("insert into users(email, note) values {}", rows.join(", "));
    let slowest = while_running(&env, insert).await;
    let (n, off): (i64, i64) = {
        let r = env
            .db
            .query_one(
                "select count(*), count(*) filter (where email_address is distinct from lower(email))
                 from users where note like 'n%'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((n, off), (10_000, 0), "every row is dual-written");
    // A liveness bound, not a speed measurement (bench/ has those): before,
    // one such INSERT held the others for tens of seconds.
    assert!(
        slowest < Duration::from_secs(3),
        "SELECT 1 waited {slowest:?}"
    );

    let statements: Vec<String> = (0..10_000)
        .map(|i| {
            format!(
                "update users set email = 'M{i}@X.COM' where id = {}",
                1 + i % 100
            )
        })
        .collect();
    let slowest = while_running(&env, statements.join("; ")).await;
    assert!(
        slowest < Duration::from_secs(3),
        "SELECT 1 waited {slowest:?}"
    );
    let off: i64 = env
        .db
        .query_one(
            "select count(*) from users where email_address is distinct from lower(email)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(off, 0);
}

fn startup_packet(user: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&3u16.to_be_bytes());
    body.extend_from_slice(&0u16.to_be_bytes());
    for (k, v) in [("user", user), ("database", "postgres")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_unauthenticated_makes_the_proxy_buffer_or_wait() {
    use switchyard_tests::raw::{cstrs, put_msg, tags, RawConn};
    let env = Env::new(&[]).await;
    let port = env.serve.addr.port();
    let before = rss_kib(env.serve.pid());
    // A SCRAM login that answers with a "password" of 128 MiB: refused at
    // its header, whatever follows.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut c = RawConn::connect(port).await.unwrap();
            c.send_raw(&startup_packet("scram_user")).await.unwrap();
            let first = c.recv().await.unwrap().unwrap();
            assert_eq!(first.tag, b'R', "an authentication request");
            let mut header = vec![b'p'];
            header.extend_from_slice(&(128u32 << 20).to_be_bytes());
            c.send_raw(&header).await.unwrap();
            let chunk = vec![b'x'; 1 << 20];
            let mut sent = 0;
            for _ in 0..16 {
                if c.send_raw(&chunk).await.is_err() {
                    break;
                }
                sent += 1;
            }
            let answer = c.recv().await.ok().flatten();
            (sent, answer.map(|m| (m.tag, m.sqlstate())))
        }));
    }
    for t in tasks {
        let (_, answer) = t.await.unwrap();
        if let Some((tag, code)) = answer {
            assert_eq!((tag, code.as_deref()), (b'E', Some("08P01")));
        }
    }
    let grown = rss_kib(env.serve.pid()).saturating_sub(before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");

    // A query sent in the same write as the startup packet is answered, as
    // PostgreSQL does.
    let mut c = RawConn::connect(port).await.unwrap();
    let mut out = bytes::BytesMut::from(&startup_packet("trust_user")[..]);
    put_msg(&mut out, b'Q', &cstrs(&["select 41 + 1"]));
    c.send_raw(&out).await.unwrap();
    let login = c.until_ready().await.unwrap();
    assert!(tags(&login).ends_with('Z'), "{}", tags(&login));
    let answer = c.until_ready().await.unwrap();
    assert_eq!(tags(&answer), "TDCZ");
    assert!(answer[1].body.ends_with(b"42"));

    // A second SSLRequest is an error, as in PostgreSQL.
    let mut c = RawConn::connect(port).await.unwrap();
    let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    c.send_raw(&ssl).await.unwrap();
    let mut n = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut c.stream, &mut n)
        .await
        .unwrap();
    assert_eq!(&n, b"N");
    c.send_raw(&ssl).await.unwrap();
    let refused = c.recv().await.unwrap().unwrap();
    assert_eq!(
        (refused.tag, refused.sqlstate().as_deref()),
        (b'E', Some("08P01"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_bounds_what_a_client_holds() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::new(&[]).await;
    let addr = env.serve.control_addr;
    let api = Api::new(addr, TOKEN);
    // Half-sent headers are closed by the header timeout.
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    // Meanwhile the API answers.
    assert_eq!(api.call("GET", "/v1/status", None).await.0, 200);
    let started = Instant::now();
    for s in &mut stalled {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a stalled connection stayed open");
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    // Bodies are capped; odd methods and pids are refused clearly.
    let big = serde_json::Value::String("x".repeat(2 << 20));
    let (status, body) = api.call("POST", "/v1/migrations", Some(big)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("too_large"))
    );
    let (status, _) = api.call("TRACE", "/v1/status", None).await;
    assert_eq!(status, 405);
    let (status, body) = api
        .call("POST", "/v1/blockers/3000000000/cancel", None)
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("out of range"),
        "{body}"
    );
}

/// A client that stops reading a large result holds only itself: the
/// proxy stops reading from the server instead of buffering the result,
/// other sessions (on every relay thread) go on, and the result comes
/// whole once the client reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_only_itself() {
    use switchyard_tests::raw::{Msg, RawConn};
    let env = Env::new(&[]).await;
    let port = env.serve.addr.port();
    let rss_before = rss_kib(env.serve.pid());
    const ROWS: usize = 100_000;
    let (mut stalled, _) = RawConn::login(port, "trust_user", 0, &[]).await.unwrap();
    let query = format!("select repeat('x', 1000) from generate_series(1, {ROWS})\0");
    stalled.send(b'Q', query.as_bytes()).await.unwrap();
    // 100 MB are owed to a client that reads nothing. Meanwhile sessions
    // dealt to every relay thread keep being served, for two seconds.
    let others = futures_util::future::join_all((0..4).map(|_| async {
        let app = env.app().await;
        let until = Instant::now() + Duration::from_secs(2);
        let mut slowest = Duration::ZERO;
        while Instant::now() < until {
            let started = Instant::now();
            app.simple_query("select 1").await.unwrap();
            slowest = slowest.max(started.elapsed());
        }
        slowest
    }))
    .await;
    for slowest in others {
        // A liveness bound, not a speed measurement.
        assert!(
            slowest < Duration::from_secs(1),
            "SELECT 1 waited {slowest:?}"
        );
    }
    let grown = rss_kib(env.serve.pid()).saturating_sub(rss_before);
    assert!(
        grown < 48 * 1024,
        "the proxy grew by {grown} KiB holding a result"
    );
    let mut rows = 0;
    loop {
        let msg: Msg = stalled.recv().await.unwrap().expect("the session ended");
        match msg.tag {
            b'D' => rows += 1,
            b'Z' => break,
            b'T' | b'C' => {}
            other => panic!("unexpected message {:?}", other as char),
        }
    }
    assert_eq!(rows, ROWS);
}

/// What held in the probe, and must keep holding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_held_keeps_holding() {
    use switchyard_tests::raw::RawConn;
    use tokio::io::AsyncWriteExt;
    let cluster = Cluster::start().unwrap();
    let db = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
        .await
        .unwrap();
    db.batch_execute(
        "create table users(id bigserial primary key, email text, note text);
         insert into users(email) select 'U' || g || '@X' from generate_series(1, 3000) g;
         create table notes(id bigserial primary key, body text);",
    )
    .await
    .unwrap();
    let serve = ServeProcess::start_with(&cluster, TOKEN, &["--startup-timeout-secs", "2"])
        .await
        .unwrap();
    let port = serve.addr.port();
    let api = Api::new(serve.control_addr, TOKEN);

    // Half-open start-ups are closed at the start-up timeout.
    let mut half = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(&[0, 0, 0, 40, 0, 3]).await.unwrap();
        half.push(s);
    }
    for s in &mut half {
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::io::AsyncReadExt::read_to_end(s, &mut buf),
        )
        .await;
        assert!(closed.is_ok(), "a half-open start-up stayed open");
    }
    // Cancel requests for sessions nobody has are ignored.
    for key in 0..50u32 {
        let mut c = RawConn::connect(port).await.unwrap();
        let mut packet = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
        packet.extend_from_slice(&key.to_be_bytes());
        packet.extend_from_slice(&(!key).to_be_bytes());
        c.send_raw(&packet).await.unwrap();
    }

    // Spec fields cannot carry SQL.
    for (field, value) in [
        ("name", json!("x'; drop table users; --")),
        ("table", json!("notes; drop table users")),
    ] {
        let mut spec = json!({"name": "m1", "table": "notes",
            "columns": [{"legacy": "body", "new": "body_text"}]});
        spec[field] = value;
        let (status, _) = api.call("POST", "/v1/migrations", Some(spec)).await;
        assert_eq!(status, 400, "{field}");
    }
    for (field, value) in [
        ("forward", "lower(body)); drop table users; --"),
        ("backward", "1; drop table users"),
        ("new", "x\"; drop table users; --"),
    ] {
        let mut spec = json!({"name": format!("m2-{field}"), "table": "notes",
            "columns": [{"legacy": "body", "new": format!("body_{field}")}]});
        spec["columns"][0][field] = json!(value);
        let (status, body) = api.call("POST", "/v1/migrations", Some(spec)).await;
        assert!(
            matches!(status, 400 | 409 | 201),
            "{field}: {status} {body}"
        );
    }
    let n: i64 = db
        .query_one("select count(*) from users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3000, "the table survived");

    // Fifty backfills at once start one job.
    let spec = json!({"name": "users-email", "table": "users",
        "columns": [{"legacy": "email", "new": "email_address", "forward": "lower(email)"}],
        "backfill": {"max_rows_per_second": 2000}});
    assert_eq!(api.call("POST", "/v1/migrations", Some(spec)).await.0, 201);
    api.step("users-email", "expand", 200).await;
    api.step("users-email", "dual-write", 200).await;
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move { api.verb("users-email", "backfill").await.0 })
        })
        .collect();
    let mut accepted = 0;
    for c in calls {
        match c.await.unwrap() {
            202 => accepted += 1,
            409 => {}
            other => panic!("backfill answered {other}"),
        }
    }
    assert_eq!(accepted, 1, "one job started");
    let (_, events) = api.call("GET", "/v1/events", None).await;
    let started = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "backfill" && e["detail"]["state"] == "started")
        .count();
    assert_eq!(started, 1);

    // PostgreSQL stopped (SIGSTOP) for a while: the process stays up and
    // answers; everything resumes when it continues.
    let pid = cluster.server_pid().unwrap();
    let stop = |signal: &str| {
        std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap()
    };
    stop("-STOP");
    let (status, _) =
        switchyard_tests::tools::http(serve.control_addr, "GET", "/healthz", None, None)
            .await
            .unwrap();
    assert_eq!(status, 200, "healthz answers while the database is stopped");
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop("-CONT");
    api.wait("users-email", |d| d["job"]["state"] == "done")
        .await;
    let app = switchyard_tests::proxy::connect(&format!(
        "host=127.0.0.1 port={port} user=trust_user dbname=postgres sslmode=disable"
    ))
    .await
    .unwrap();
    assert_eq!(
        app.query_one("select 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

/// schemathesis over the served OpenAPI document: no 5xx, whatever it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error() {
    let env = Env::new(&[("expand", 200)]).await;
    let python = switchyard_tests::tools::python().unwrap();
    let st = python.with_file_name("schemathesis");
    if !st.exists() {
        switchyard_tests::tools::run(
            std::process::Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .arg("schemathesis>=4,<5"),
        )
        .unwrap();
    }
    let base = format!("http://{}", env.serve.control_addr);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(st)
            .args(["run", &format!("{base}/openapi.json"), "--url", &base])
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
            .args(["--checks", "not_a_server_error", "-n", "30"])
            .args(["--generation-deterministic", "--request-timeout", "30"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client that pipelines statements each new to the rewrite cache holds
/// its relay thread for one slice of parsing at a time: with one relay
/// thread for every session, another session is served after a few of the
/// flood's statements, not after all it sent. PostgreSQL tells the order:
/// each flood statement takes a number from a sequence, and so does the
/// other session's query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_statements_holds_its_relay_thread_a_slice_at_a_time() {
    use switchyard_tests::raw::{put_msg, RawConn};
    let env = Env::with_flags(&[("expand", 200), ("dual-write", 200)], &["--threads", "1"]).await;
    env.db.batch_execute("create sequence flood").await.unwrap();
    const FLOOD: usize = 1000;
    let port = env.serve.addr.port();
    let (mut flooder, _) = RawConn::login(port, "trust_user", 0, &[]).await.unwrap();
    let other = env.app().await;
    // Each its own shape (its alias), about 1 KiB: parsed, never cached.
    let pad = "x".repeat(900);
    let mut flood = bytes::BytesMut::new();
    for i in 0..FLOOD {
        let sql = format!(
            "update users as u{i} set email = '{pad}' where id = 1 and nextval('flood') > 0\0"
        );
        put_msg(&mut flood, b'Q', sql.as_bytes());
    }
    let flooding = tokio::spawn(async move {
        flooder.send_raw(&flood).await.unwrap();
        for _ in 0..FLOOD {
            let msgs = flooder.until_ready().await.unwrap();
            assert!(
                msgs.iter().all(|m| m.tag != b'E'),
                "a flood statement failed"
            );
        }
    });
    // Once the flood runs, the other session asks for its number.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the flood never began");
        let row = env
            .db
            .query_one("select is_called from flood", &[])
            .await
            .unwrap();
        if row.get::<_, bool>(0) {
            break;
        }
        tokio::task::yield_now().await;
    }
    // One round trip (the simple protocol): it waits for at most a slice
    // on the way in and one on the way out.
    let reply = other.simple_query("select nextval('flood')").await.unwrap();
    let taken: i64 = reply
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
            _ => None,
        })
        .unwrap();
    flooding.await.unwrap();
    let last: i64 = env
        .db
        .query_one("select last_value from flood", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(last, FLOOD as i64 + 1, "every statement ran once");
    // A slice is 16 KiB of parsing: about 16 of these statements; a few
    // slices went by before and during the other session's round trip.
    assert!(
        taken < 200,
        "the other session waited for {taken} of {FLOOD} flood statements"
    );
}
