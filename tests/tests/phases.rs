//! Phase effects beyond the happy path, against a real database through the
//! control API: rollback from every phase (contract included, with the
//! legacy column refilled), indexes following the column, the dependency
//! check before contract, and backfills over composite and unique keys.

use serde_json::{json, Value};
use switchyard_tests::tools::{api, http};
use switchyard_tests::{Cluster, TestProxy, TestProxyOptions};
use tokio_postgres::Client;

const TOKEN: &str = "phase-token";

async fn setup(ddl: &str) -> (Cluster, TestProxy, Client) {
    let cluster = Cluster::start().unwrap();
    let direct = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
        .await
        .unwrap();
    direct.batch_execute(ddl).await.unwrap();
    let proxy = TestProxy::start(&cluster, TestProxyOptions::control(TOKEN))
        .await
        .unwrap();
    (cluster, proxy, direct)
}

async fn call(proxy: &TestProxy, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    api(proxy.control_addr, TOKEN, method, path, body).await
}

/// Posts `verb`, asserts the status, and for a job waits until it is done.
async fn step(proxy: &TestProxy, name: &str, verb: &str, status: u16) -> Value {
    let (got, body) = call(
        proxy,
        "POST",
        &format!("/v1/migrations/{name}/{verb}"),
        None,
    )
    .await;
    assert_eq!(got, status, "{verb}: {body}");
    if got != 202 {
        return body;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (_, d) = call(proxy, "GET", &format!("/v1/migrations/{name}"), None).await;
        if d["job"]["state"] == "done" {
            return d;
        }
        assert_ne!(d["job"]["state"], "failed", "{d}");
        assert!(std::time::Instant::now() < deadline, "timed out: {d}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Creates the users migration `m` and walks it through `steps`.
async fn create_and_walk(proxy: &TestProxy, m: &str, steps: &[(&str, u16)]) {
    let (status, body) = call(proxy, "POST", "/v1/migrations", Some(users_spec())).await;
    assert_eq!(status, 201, "{body}");
    walk(proxy, m, steps).await;
}

/// Walks migration `m` through `steps`.
async fn walk(proxy: &TestProxy, m: &str, steps: &[(&str, u16)]) {
    for (verb, status) in steps {
        step(proxy, m, verb, *status).await;
    }
}

async fn phase(proxy: &TestProxy, name: &str) -> String {
    let (_, d) = call(proxy, "GET", &format!("/v1/migrations/{name}"), None).await;
    d["phase"].as_str().unwrap().to_owned()
}

async fn columns(db: &Client) -> Vec<(String, String)> {
    db.query(
        "select column_name::text, is_nullable::text from information_schema.columns
         where table_name = 'users' and column_name in ('email', 'email_address') order by 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Valid indexes of `users` with their definitions.
async fn indexes(db: &Client) -> Vec<String> {
    db.query(
        "select pg_get_indexdef(indexrelid) from pg_index
         where indrelid = 'users'::regclass and indisvalid order by 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn count(db: &Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

const USERS: &str = "
    create table users(id bigserial primary key, email varchar(320) not null, name text);
    alter table users add constraint users_email_key unique (email);
    create index users_name_email_idx on users (name, email);
    insert into users(email, name) select 'User' || g || '@X.io', 'n' || (g % 10) from generate_series(1, 3000) g;";

fn users_spec() -> Value {
    json!({
        "name": "users-email",
        "table": "public.users",
        "columns": [{"legacy": "email", "new": "email_address", "type": "varchar(320)",
                     "forward": "lower(email)", "backward": "email_address", "not_null": true}],
        // Tests here complete right after legacy-name traffic; the quiet
        // window is tested in tests/complete.rs.
        "complete_quiet_minutes": 0
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_from_every_phase_keeps_the_data() {
    let (_cluster, proxy, db) = setup(USERS).await;
    let m = "users-email";
    assert_eq!(
        call(&proxy, "POST", "/v1/migrations", Some(users_spec()))
            .await
            .0,
        201
    );
    let app = proxy.connect("scram_user").await.unwrap();

    // expanded -> planned drops the new column.
    step(&proxy, m, "expand", 200).await;
    assert_eq!(columns(&db).await.len(), 2);
    step(&proxy, m, "rollback", 200).await;
    assert_eq!(phase(&proxy, m).await, "planned");
    assert_eq!(columns(&db).await, vec![("email".into(), "NO".into())]);

    // dual_write -> expanded: writes stop reaching the new column.
    step(&proxy, m, "expand", 200).await;
    step(&proxy, m, "dual-write", 200).await;
    step(&proxy, m, "rollback", 200).await;
    app.execute("insert into users(email) values ('Solo@X.io')", &[])
        .await
        .unwrap();
    assert_eq!(
        count(
            &db,
            "select count(*) from users where email = 'Solo@X.io' and email_address is null"
        )
        .await,
        1
    );

    // backfilled: the legacy column's indexes are rebuilt on the new one,
    // and rolling back drops them again.
    step(&proxy, m, "dual-write", 200).await;
    step(&proxy, m, "backfill", 202).await;
    let rebuilt = indexes(&db).await;
    assert!(
        rebuilt.contains(&"CREATE UNIQUE INDEX users_email_address_key ON public.users USING btree (email_address)".to_string()),
        "{rebuilt:?}"
    );
    assert!(
        rebuilt.contains(&"CREATE INDEX users_name_email_address_idx ON public.users USING btree (name, email_address)".to_string()),
        "{rebuilt:?}"
    );
    step(&proxy, m, "rollback", 200).await;
    assert_eq!(phase(&proxy, m).await, "dual_write");
    assert!(!indexes(&db)
        .await
        .iter()
        .any(|i| i.contains("email_address")));

    // A new backfill walks the table again (the checkpoint was forgotten).
    step(&proxy, m, "backfill", 202).await;
    assert_eq!(
        count(
            &db,
            "select count(*) from users where email_address is distinct from lower(email)"
        )
        .await,
        0
    );
    step(&proxy, m, "verify", 202).await;
    assert_eq!(phase(&proxy, m).await, "verified");
    step(&proxy, m, "rollback", 200).await;
    assert_eq!(phase(&proxy, m).await, "backfilled");
    // The parity pass is forgotten, so the gate is closed again.
    step(&proxy, m, "switch-reads", 409).await;
    step(&proxy, m, "verify", 202).await;
    step(&proxy, m, "switch-reads", 200).await;
    step(&proxy, m, "rollback", 200).await;
    assert_eq!(phase(&proxy, m).await, "verified");
    step(&proxy, m, "switch-reads", 200).await;
    step(&proxy, m, "verify", 202).await;

    // The dependency check refuses contract while a view reads the column.
    db.batch_execute("create view user_emails as select id, email from users")
        .await
        .unwrap();
    let body = step(&proxy, m, "contract", 409).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("view user_emails"), "{message}");
    assert_eq!(phase(&proxy, m).await, "reads_switched");
    db.batch_execute("drop view user_emails").await.unwrap();

    step(&proxy, m, "contract", 200).await;
    assert_eq!(
        columns(&db).await,
        vec![("email_address".into(), "NO".into())]
    );
    // The unique constraint moved to the rebuilt index; nothing else is left.
    let constraint: String = db
        .query_one(
            "select pg_get_constraintdef(oid) from pg_constraint
             where conrelid = 'users'::regclass and contype = 'u'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(constraint, "UNIQUE (email_address)");
    app.execute("insert into users(email) values ('After@X.io')", &[])
        .await
        .unwrap();
    let dup = app
        .execute("insert into users(email) values ('after@x.io')", &[])
        .await
        .unwrap_err();
    assert_eq!(
        dup.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );

    // contracted -> reads_switched: the legacy column comes back, refilled
    // from backward(new), with its indexes.
    let d = step(&proxy, m, "rollback", 202).await;
    assert_eq!(d["phase"], "reads_switched", "{d}");
    assert_eq!(d["state"]["stage"]["reads"], "new", "{d}");
    assert_eq!(
        columns(&db).await,
        vec![
            ("email".into(), "YES".into()),
            ("email_address".into(), "NO".into())
        ]
    );
    assert_eq!(
        count(
            &db,
            "select count(*) from users where email is distinct from email_address"
        )
        .await,
        0
    );
    assert!(
        indexes(&db).await.iter().any(|i| i.contains("UNIQUE INDEX users_email_key ON public.users USING btree (email)")),
        "{:?}",
        indexes(&db).await
    );
    // Writes set both columns again, and reads still come from the new one.
    app.execute("update users set email = 'Changed@X.io' where id = 1", &[])
        .await
        .unwrap();
    let row = db
        .query_one("select email, email_address from users where id = 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Changed@X.io");
    assert_eq!(row.get::<_, String>(1), "changed@x.io");
    let total = count(&db, "select count(*) from users").await;
    assert_eq!(total, 3002);

    // And forward again to the end.
    step(&proxy, m, "verify", 202).await;
    step(&proxy, m, "contract", 200).await;
    step(&proxy, m, "complete", 200).await;
    assert_eq!(count(&db, "select count(*) from users").await, total);
    let (_, events) = call(&proxy, "GET", "/v1/events", None).await;
    let rollbacks = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["detail"]["verb"] == "rollback")
        .count();
    assert_eq!(rollbacks, 6, "every rollback is audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_and_unique_keys_are_walked_in_chunks() {
    let (_cluster, proxy, db) = setup(
        "create table orders(tenant int, id int, state int not null, primary key (tenant, id));
         insert into orders select t, i, i % 3 from generate_series(1, 7) t, generate_series(1, 4000) i;
         create table events(code text not null unique, kind int);
         insert into events select 'e' || g, g % 5 from generate_series(1, 5000) g;
         create table loose(note text, level int);
         insert into loose select 'n' || g, g from generate_series(1, 20000) g;
         analyze loose;",
    )
    .await;
    let spec = json!({"name": "orders-state", "table": "public.orders",
        "columns": [{"legacy": "state", "new": "state_text", "type": "text",
                     "forward": "case state when 0 then 'new' when 1 then 'paid' else 'done' end",
                     "backward": "case state_text when 'new' then 0 when 'paid' then 1 else 2 end"}],
        "backfill": {"target_chunk_ms": 5}});
    let (status, body) = call(&proxy, "POST", "/v1/migrations", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    let spec = json!({"name": "events-kind", "table": "public.events",
        "columns": [{"legacy": "kind", "new": "kind_big", "type": "bigint"}]});
    assert_eq!(
        call(&proxy, "POST", "/v1/migrations", Some(spec)).await.0,
        201
    );
    // A key column cannot be migrated; a table without any key is walked
    // by ctid ranges (PostgreSQL 14+).
    let spec = json!({"name": "orders-id", "table": "public.orders",
        "columns": [{"legacy": "id", "new": "id_big", "type": "bigint"}]});
    let (status, body) = call(&proxy, "POST", "/v1/migrations", Some(spec)).await;
    assert_eq!(status, 400, "{body}");
    let spec = json!({"name": "loose-level", "table": "public.loose",
        "columns": [{"legacy": "level", "new": "level_big", "type": "bigint"}]});
    let (status, body) = call(&proxy, "POST", "/v1/migrations", Some(spec)).await;
    assert_eq!(status, 201, "{body}");

    for m in ["orders-state", "events-kind", "loose-level"] {
        step(&proxy, m, "expand", 200).await;
        step(&proxy, m, "dual-write", 200).await;
        let d = step(&proxy, m, "backfill", 202).await;
        assert!(
            d["state"]["reports"]["backfill"]["rows_done"]
                .as_u64()
                .unwrap()
                > 0,
            "{d}"
        );
        let d = step(&proxy, m, "verify", 202).await;
        assert_eq!(d["state"]["parity"]["mismatches"], 0, "{d}");
    }
    let (_, d) = call(&proxy, "GET", "/v1/migrations/orders-state", None).await;
    assert_eq!(
        d["state"]["reports"]["backfill"]["rows_done"], 28_000,
        "each row once: {d}"
    );
    assert_eq!(
        count(&db, "select count(*) from orders where state_text is distinct from case state when 0 then 'new' when 1 then 'paid' else 'done' end").await,
        0
    );
    assert_eq!(
        count(
            &db,
            "select count(*) from events where kind_big is distinct from kind"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &db,
            "select count(*) from loose where level_big is distinct from level"
        )
        .await,
        0
    );
    let (_, d) = call(&proxy, "GET", "/v1/migrations/loose-level", None).await;
    assert_eq!(d["state"]["reports"]["verify"]["rows_done"], 20_000, "{d}");
    // A damaged row is found by verify, with its composite key.
    db.batch_execute("update orders set state_text = 'wrong' where tenant = 3 and id = 17")
        .await
        .unwrap();
    let d = step(&proxy, "orders-state", "verify", 202).await;
    assert_eq!(d["state"]["parity"]["mismatches"], 1, "{d}");
    assert_eq!(
        d["state"]["reports"]["verify"]["sample_keys"],
        json!(["3,17"]),
        "{d}"
    );
}

/// Polls the migration until `done` holds.
async fn wait_detail(proxy: &TestProxy, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, d) = call(proxy, "GET", &format!("/v1/migrations/{name}"), None).await;
        if done(&d) {
            return d;
        }
        assert!(std::time::Instant::now() < deadline, "timed out: {d}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttles_hold_the_backfill_and_say_why() {
    let (cluster, proxy, db) = setup(USERS).await;
    let m = "users-email";
    let mut spec = users_spec();
    spec["backfill"] = json!({"max_active_sessions": 1, "target_chunk_ms": 5});
    assert_eq!(
        call(&proxy, "POST", "/v1/migrations", Some(spec)).await.0,
        201
    );
    step(&proxy, m, "expand", 200).await;
    step(&proxy, m, "dual-write", 200).await;

    // Two busy sessions exceed max_active_sessions = 1.
    let conn = cluster.conn_str("trust_user", "postgres");
    let mut sleepers = Vec::new();
    for _ in 0..2 {
        let c = switchyard_tests::proxy::connect(&conn).await.unwrap();
        sleepers.push(tokio::spawn(async move {
            c.batch_execute("select pg_sleep(60)").await
        }));
    }
    let (status, _) = call(
        &proxy,
        "POST",
        &format!("/v1/migrations/{m}/backfill"),
        None,
    )
    .await;
    assert_eq!(status, 202);
    let d = wait_detail(&proxy, m, |d| {
        d["job"]["throttled"]
            .as_str()
            .is_some_and(|r| r.contains("active sessions > max_active_sessions 1"))
    })
    .await;
    assert_eq!(d["job"]["rows_done"], 0, "{d}");
    // Lifting the limit at runtime lets it go on; a lock waiter holds it.
    let holder = switchyard_tests::proxy::connect(&conn).await.unwrap();
    holder
        .batch_execute("begin; lock table users in share mode")
        .await
        .unwrap();
    let waiter = switchyard_tests::proxy::connect(&conn).await.unwrap();
    let waiting = tokio::spawn(async move {
        waiter
            .batch_execute("begin; lock table users in exclusive mode; commit")
            .await
    });
    db.batch_execute(
        "select pg_cancel_backend(pid) from pg_stat_activity where query = 'select pg_sleep(60)'",
    )
    .await
    .unwrap();
    for s in sleepers {
        assert!(s.await.unwrap().is_err(), "cancelled");
    }
    let lift = json!({"max_active_sessions": null});
    let (status, body) = call(
        &proxy,
        "PATCH",
        &format!("/v1/migrations/{m}/backfill"),
        Some(lift),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    wait_detail(&proxy, m, |d| {
        d["job"]["throttled"]
            .as_str()
            .is_some_and(|r| r.contains("waiting for a lock on the table"))
    })
    .await;
    holder.batch_execute("commit").await.unwrap();
    waiting.await.unwrap().unwrap();
    let d = wait_detail(&proxy, m, |d| d["phase"] == "backfilled").await;
    assert_eq!(d["state"]["reports"]["backfill"]["rows_done"], 3000, "{d}");
    let (_, events) = call(&proxy, "GET", "/v1/events", None).await;
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "tune" && e["detail"]["max_active_sessions"].is_null()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocker_during_contract_is_retried_listed_and_terminated() {
    let (cluster, proxy, db) = setup(USERS).await;
    let m = "users-email";
    create_and_walk(
        &proxy,
        m,
        &[
            ("expand", 200),
            ("dual-write", 200),
            ("backfill", 202),
            ("verify", 202),
            ("switch-reads", 200),
            ("verify", 202),
        ],
    )
    .await;

    // An application keeps reading and writing through the proxy and
    // records its slowest statement.
    let app = proxy.connect("md5_user").await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let read = app.prepare("select email from users where id = $1").await?;
            let write = app
                .prepare("update users set name = $1 where id = $2")
                .await?;
            let mut slowest = std::time::Duration::ZERO;
            let mut i = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = std::time::Instant::now();
                let id = 1 + i % 3000;
                app.query_one(&read, &[&id]).await?;
                app.execute(&write, &[&format!("w{i}"), &id]).await?;
                slowest = slowest.max(started.elapsed());
                i += 1;
            }
            Ok::<_, tokio_postgres::Error>((slowest, i))
        })
    };

    // A long transaction holds a lock the contract's ALTERs need.
    let blocker = switchyard_tests::proxy::connect(&cluster.conn_str("scram_user", "postgres"))
        .await
        .unwrap();
    blocker
        .batch_execute("begin; select count(*) from users")
        .await
        .unwrap();
    let pid: i32 = blocker
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let contract = {
        let addr = proxy.control_addr;
        tokio::spawn(async move {
            http(
                addr,
                "POST",
                "/v1/migrations/users-email/contract",
                None,
                Some(TOKEN),
            )
            .await
            .unwrap()
        })
    };
    // The contract's DDL queues behind the blocker, gives up after
    // lock_timeout and tries again: /v1/blockers shows the blocker and the
    // waiting DDL, then no waiter (backing off), then the DDL again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = 0;
    loop {
        let (_, list) = call(&proxy, "GET", "/v1/blockers", None).await;
        let entries = list.as_array().unwrap();
        let listed = entries
            .iter()
            .any(|b| b["pid"] == pid && b["granted"] == true);
        let ddl_waits = entries.iter().any(|b| {
            b["granted"] == false
                && b["mode"] == "AccessExclusiveLock"
                && b["blocked_by"].as_array().unwrap().contains(&json!(pid))
        });
        assert!(listed, "the blocker is listed: {list}");
        if ddl_waits == (seen % 2 == 0) {
            seen += 1;
            if seen == 3 {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "blocker not seen: {list}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The blocker holds, so the call answers 202 and the DDL goes on; a
    // second verb meanwhile is refused.
    let (status, body) = contract.await.unwrap();
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["job"]["state"], "running", "{body}");
    assert!(
        body["job"]["throttled"]
            .as_str()
            .is_some_and(|r| r.contains("waiting for a lock")),
        "{body}"
    );
    let (status, body) = call(&proxy, "POST", &format!("/v1/migrations/{m}/verify"), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|e| e.contains("contract job is running")),
        "{body}"
    );
    let (status, body) = call(
        &proxy,
        "POST",
        &format!("/v1/blockers/{pid}/terminate"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let d = wait_detail(&proxy, m, |d| d["job"]["state"] == "done").await;
    assert_eq!(d["phase"], "contracted", "{d}");
    assert_eq!(
        columns(&db).await,
        vec![("email_address".into(), "NO".into())]
    );
    let (_, events) = call(&proxy, "GET", "/v1/events", None).await;
    let retried = events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "ddl" && e["detail"]["tries"].as_u64().unwrap_or(0) > 1);
    assert!(retried, "some DDL step needed more than one try");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (slowest, statements) = load.await.unwrap().expect("no client error");
    assert!(statements > 0);
    // Never queued behind the DDL for the blocker's lifetime: each wait is
    // bounded by lock_timeout (100 ms) plus a margin for a shared machine.
    assert!(
        slowest < std::time::Duration::from_millis(1500),
        "slowest statement {slowest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrewritten_writes_close_the_gate_until_another_pass() {
    let (_cluster, proxy, db) = setup(USERS).await;
    let m = "users-email";
    // Without the guard trigger, which would heal the row (tests/guard.rs).
    let mut spec = users_spec();
    spec["guard_trigger"] = json!(false);
    let (status, body) = call(&proxy, "POST", "/v1/migrations", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    walk(
        &proxy,
        m,
        &[
            ("expand", 200),
            ("dual-write", 200),
            ("backfill", 202),
            ("verify", 202),
        ],
    )
    .await;
    // COPY into the table cannot be rewritten: before the read switch it
    // is forwarded, and its row is left out of step.
    let app = proxy.connect("trust_user").await.unwrap();
    {
        use futures_util::SinkExt;
        let sink = app
            .copy_in("COPY users (email, name) FROM STDIN")
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from_static(b"Merged@X.io\tn\n"))
            .await
            .unwrap();
        sink.finish().await.unwrap();
    }
    assert_eq!(
        count(
            &db,
            "select count(*) from users where email_address is distinct from lower(email)"
        )
        .await,
        1
    );
    let body = step(&proxy, m, "switch-reads", 409).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("escaped dual-write"), "{message}");
    // Another pass repairs the row and reopens the gate.
    step(&proxy, m, "backfill", 202).await;
    let d = step(&proxy, m, "verify", 202).await;
    assert_eq!(d["state"]["parity"]["mismatches"], 0, "{d}");
    assert_eq!(d["state"]["unrewritten_writes"], 1, "{d}");
    step(&proxy, m, "switch-reads", 200).await;
}

/// `level integer` → `level_big bigint`, the legacy column at `position`.
fn level_pair(position: usize) -> switchyard_control::catalog::Pair {
    switchyard_control::catalog::Pair {
        legacy: "level".into(),
        legacy_type: "integer".into(),
        new: "level_big".into(),
        new_type: "bigint".into(),
        forward: "level::bigint".into(),
        backward: "level_big::integer".into(),
        not_null: false,
        legacy_position: position,
        default: None,
        group: None,
        forward_takes_literals: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_a_key_is_walked_by_tid_range_scans() {
    let (_cluster, _proxy, db) = setup(
        "create table loose(note text, level int, level_big bigint);
         insert into loose select 'n' || g, g from generate_series(1, 50000) g;
         analyze loose;",
    )
    .await;
    let pair = level_pair(1);
    let (chunk_sql, verify_sql) = switchyard_control::job_statements("public.loose", &[], &[pair]);
    let last: Option<Vec<String>> = Some(vec!["40".into()]);
    let end: Option<Vec<String>> = Some(vec!["90".into()]);
    for (sql, chunk) in [(chunk_sql, true), (verify_sql, false)] {
        let explain = format!("EXPLAIN {sql}");
        let plan = if chunk {
            db.query(&explain, &[&last, &5000i64, &end]).await
        } else {
            db.query(&explain, &[&last, &5000i64]).await
        };
        let plan: Vec<String> = plan.unwrap().iter().map(|r| r.get(0)).collect();
        let plan = plan.join("\n");
        assert!(plan.contains("Tid Range Scan on loose"), "{plan}");
        assert!(!plan.contains("Seq Scan on loose"), "{plan}");
    }
}

const CHUNK: i64 = 10_000;

/// The rows one backfill chunk reads, in its own transaction's counters
/// (rows a scan of the table returned, and index entries read).
async fn rows_read_by_chunk(
    db: &mut tokio_postgres::Client,
    sql: &str,
    last: Option<Vec<String>>,
    end: &Option<Vec<String>>,
) -> (i64, i64) {
    let tx = db.transaction().await.unwrap();
    let row = tx.query_one(sql, &[&last, &CHUNK, end]).await.unwrap();
    let changed: i64 = row.get(2);
    let read: i64 = tx
        .query_one(
            "select pg_stat_get_xact_tuples_returned('wide'::regclass)
                  + pg_stat_get_xact_tuples_returned('wide_pkey'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    tx.rollback().await.unwrap();
    (read, changed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_chunk_reads_its_own_rows_wherever_it_starts() {
    let (_cluster, _proxy, mut db) = setup(
        "create table wide(tenant int, id int, level int, level_big bigint, primary key (tenant, id));
         insert into wide select t, i, i from generate_series(1, 4) t, generate_series(1, 50000) i;
         analyze wide;",
    )
    .await;
    let pair = level_pair(2);
    let key = [
        ("tenant".to_owned(), "integer".to_owned()),
        ("id".to_owned(), "integer".to_owned()),
    ];
    let (chunk_sql, _) = switchyard_control::job_statements("public.wide", &key, &[pair]);
    let end = Some(vec!["4".to_owned(), "50000".to_owned()]);
    let first = rows_read_by_chunk(&mut db, &chunk_sql, None, &end).await;
    let late = Some(vec!["4".to_owned(), "30000".to_owned()]);
    let last = rows_read_by_chunk(&mut db, &chunk_sql, late, &end).await;
    assert_eq!(
        (first.1, last.1),
        (CHUNK, CHUNK),
        "each chunk updates its rows"
    );
    // Each reads a few times its own rows, wherever it starts (a join with
    // the chunk's keys read the whole table, or every row before the chunk
    // in a merge join from the table's first key).
    for (chunk, read) in [("first", first.0), ("late", last.0)] {
        assert!(read <= 5 * CHUNK, "the {chunk} chunk read {read} rows");
    }
    // The chunk that reaches the end says how many rows it visited; the
    // one after it finds nothing.
    let tail = Some(vec!["4".to_owned(), "45000".to_owned()]);
    let row = db
        .query_one(&chunk_sql, &[&tail, &CHUNK, &end])
        .await
        .unwrap();
    let (k, visited): (Option<Vec<String>>, i64) = (row.get(0), row.get(1));
    assert_eq!((k, visited), (end.clone(), 5000));
    let row = db
        .query_one(&chunk_sql, &[&end, &CHUNK, &end])
        .await
        .unwrap();
    let (k, visited): (Option<Vec<String>>, i64) = (row.get(0), row.get(1));
    assert_eq!((k, visited), (None, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contract_interrupted_before_the_column_drop_is_finished_on_restart() {
    let (cluster, proxy, db) = setup(USERS).await;
    let m = "users-email";
    create_and_walk(
        &proxy,
        m,
        &[
            ("expand", 200),
            ("dual-write", 200),
            ("backfill", 202),
            ("verify", 202),
            ("switch-reads", 200),
            ("verify", 202),
        ],
    )
    .await;
    // The state a crash leaves between routing to the new column only and
    // dropping the legacy one: phase `contracted`, legacy column present.
    proxy.shutdown().await;
    db.batch_execute(
        r#"alter table users alter column email drop not null;
           update switchyard.migrations set phase = 'contracted',
             state = state || '{"stage": {"phase": "contracted", "legacy": "dropping"},
                                "job": {"id": 99, "kind": "contract", "state": "running", "actor": "token"}}'
           where name = 'users-email'"#,
    )
    .await
    .unwrap();
    let proxy = TestProxy::start(&cluster, TestProxyOptions::control(TOKEN))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while columns(&db).await.len() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            columns(&db).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        columns(&db).await,
        vec![("email_address".into(), "YES".into())]
    );
    let d = wait_detail(&proxy, m, |d| {
        d["state"]["reports"]["retired_indexes"].is_array()
    })
    .await;
    assert_eq!(d["phase"], "contracted");
    // Applications keep using the legacy name through the proxy.
    let app = proxy.connect("trust_user").await.unwrap();
    let email: String = app
        .query_one("select email from users where id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(email, "user1@x.io");
}

/// The proxy times the application's round trips; while their p99 is above
/// `max_app_p99_pct`% of the p99 before the backfill, the backfill pauses
/// between chunks and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backfill_slows_down_while_the_application_is_slower() {
    let (_cluster, proxy, _db) = setup(
        "create table users(id bigserial primary key, email varchar(320) not null, name text);
         insert into users(email, name) select 'User' || g || '@X.io', 'n' from generate_series(1, 50000) g;",
    )
    .await;
    let m = "users-email";
    let mut spec = users_spec();
    spec["backfill"] = json!({"max_rows_per_second": 2500, "target_chunk_ms": 20});
    assert_eq!(
        call(&proxy, "POST", "/v1/migrations", Some(spec)).await.0,
        201
    );
    step(&proxy, m, "expand", 200).await;
    step(&proxy, m, "dual-write", 200).await;
    // The baseline: quick round trips through the proxy.
    let app = proxy.connect("trust_user").await.unwrap();
    for _ in 0..300 {
        app.simple_query("select 1").await.unwrap();
    }
    let (status, _) = call(
        &proxy,
        "POST",
        &format!("/v1/migrations/{m}/backfill"),
        None,
    )
    .await;
    assert_eq!(status, 202);
    // Now every round trip takes 20 ms.
    let slow = tokio::spawn(async move {
        loop {
            if app.simple_query("select pg_sleep(0.02)").await.is_err() {
                break;
            }
        }
    });
    let d = wait_detail(&proxy, m, |d| {
        d["job"]["throttled"]
            .as_str()
            .is_some_and(|r| r.contains("application p99") && r.contains("max_app_p99_pct 150%"))
    })
    .await;
    assert_eq!(d["job"]["state"], "running", "{d}");
    // A percentage under 100 is refused; turning the guard off (and the
    // rate cap) lets the backfill finish while the application stays slow.
    let (status, body) = call(
        &proxy,
        "PATCH",
        &format!("/v1/migrations/{m}/backfill"),
        Some(json!({"max_app_p99_pct": 50})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = call(
        &proxy,
        "PATCH",
        &format!("/v1/migrations/{m}/backfill"),
        Some(json!({"max_app_p99_pct": null, "max_rows_per_second": null})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let d = wait_detail(&proxy, m, |d| d["phase"] == "backfilled").await;
    assert_eq!(d["state"]["reports"]["backfill"]["rows_done"], 50000, "{d}");
    slow.abort();
}

/// Rows inserted after the backfill started were dual-written from their
/// first write: the backfill stops at the last key it saw when it started,
/// so that heavy inserts (or a paced backfill) never keep it chasing the
/// end of the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backfill_ends_at_the_last_key_it_saw_when_it_started() {
    let (_cluster, proxy, db) = setup(USERS).await;
    let m = "users-email";
    create_and_walk(&proxy, m, &[("expand", 200), ("dual-write", 200)]).await;
    let path = format!("/v1/migrations/{m}");
    assert_eq!(
        call(&proxy, "POST", &format!("{path}/pause"), None).await.0,
        200
    );
    assert_eq!(
        call(&proxy, "POST", &format!("{path}/backfill"), None)
            .await
            .0,
        202
    );
    wait_detail(&proxy, m, |d| d["job"]["state"] == "paused").await;
    let app = proxy.connect("trust_user").await.unwrap();
    app.batch_execute(
        "insert into users(email, name) select 'Late' || g || '@X.io', 'late' from generate_series(1, 500) g",
    )
    .await
    .unwrap();
    assert_eq!(
        call(&proxy, "POST", &format!("{path}/resume"), None)
            .await
            .0,
        200
    );
    let d = wait_detail(&proxy, m, |d| d["phase"] == "backfilled").await;
    assert_eq!(d["state"]["reports"]["backfill"]["rows_done"], 3000, "{d}");
    assert_eq!(
        count(
            &db,
            "select count(*) from users where email_address is distinct from lower(email)"
        )
        .await,
        0
    );
}
