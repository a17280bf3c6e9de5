//! The guard trigger against real PostgreSQL through the control API:
//! writers that bypass the proxy (direct INSERT/UPDATE, COPY direct or
//! through the proxy) leave every row consistent in every phase before
//! contract, parity stays clean without a second backfill, proxied writes
//! never call the trigger's function, and the trigger follows contract and
//! rollback.

use futures_util::SinkExt;
use serde_json::json;
use switchyard_tests::api::Api;
use switchyard_tests::{Cluster, TestProxy, TestProxyOptions};
use tokio_postgres::Client;

const TOKEN: &str = "guard-token";
const M: &str = "users-email";

const USERS: &str = "
    create table users(id bigserial primary key, email varchar(320) not null, name text);
    insert into users(email, name) select 'User' || g || '@X.io', 'n' from generate_series(1, 2000) g;";

struct Env {
    _cluster: Cluster,
    proxy: TestProxy,
    api: Api,
    direct: Client,
}

impl Env {
    async fn start(guard: bool) -> Env {
        let cluster = Cluster::start().unwrap();
        let direct = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
            .await
            .unwrap();
        direct.batch_execute(USERS).await.unwrap();
        // Function call counts, for the sessions opened from now on.
        direct
            .batch_execute("alter database postgres set track_functions = 'pl'")
            .await
            .unwrap();
        let proxy = TestProxy::start(&cluster, TestProxyOptions::control(TOKEN))
            .await
            .unwrap();
        let api = Api::new(proxy.control_addr, TOKEN);
        let spec = json!({
            "name": M,
            "table": "public.users",
            "guard_trigger": guard,
            "columns": [{"legacy": "email", "new": "email_address", "type": "varchar(320)",
                         "forward": "lower(email)", "backward": "email_address", "not_null": true}]
        });
        let (status, body) = api.call("POST", "/v1/migrations", Some(spec)).await;
        assert_eq!(status, 201, "{body}");
        Env {
            _cluster: cluster,
            proxy,
            api,
            direct,
        }
    }

    async fn other_session(&self) -> Client {
        switchyard_tests::proxy::connect(&self._cluster.conn_str("trust_user", "postgres"))
            .await
            .unwrap()
    }

    async fn count(&self, sql: &str) -> i64 {
        self.direct.query_one(sql, &[]).await.unwrap().get(0)
    }

    async fn inconsistent(&self) -> i64 {
        self.count("select count(*) from users where email_address is distinct from lower(email)")
            .await
    }

    async fn triggers(&self) -> Vec<String> {
        self.direct
            .query(
                "select tgname::text from pg_trigger where tgrelid = 'users'::regclass
                 and tgname like 'switchyard_guard_%' order by 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    async fn functions(&self) -> i64 {
        self.count(
            "select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace
             where n.nspname = 'switchyard' and p.proname like 'guard_%'",
        )
        .await
    }
}

/// Posts `verb` (answered 200, or 202 while its DDL or a following job
/// runs) and waits until no job runs.
async fn settle(env: &Env, verb: &str) {
    let (status, body) = env.api.verb(M, verb).await;
    assert!(status == 200 || status == 202, "{verb}: {body}");
    env.api
        .wait(M, |d| {
            assert_ne!(d["job"]["state"], "failed", "{d}");
            d["job"]["state"] != "running"
        })
        .await;
}

async fn copy_rows(client: &Client, rows: &'static [u8]) {
    let sink = client
        .copy_in("copy users (email, name) from stdin")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(rows)).await.unwrap();
    sink.finish().await.unwrap();
}

/// Direct writes that name one side only, each checked in the same
/// statement, and COPY direct and through the proxy.
async fn bypassing_writes(env: &Env, round: i64) {
    let d = &env.direct;
    let legacy = format!("Direct{round}@X.io");
    let row = d
        .query_one(
            "insert into users (email, name) values ($1, 'd') returning id, email_address",
            &[&legacy],
        )
        .await
        .unwrap();
    let id: i64 = row.get(0);
    assert_eq!(row.get::<_, Option<String>>(1), Some(legacy.to_lowercase()));
    let new = format!("newonly{round}@x.io");
    let row = d
        .query_one(
            "insert into users (email_address, name) values ($1, 'd') returning email",
            &[&new],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0), Some(new.clone()));
    let row = d
        .query_one(
            "update users set email = 'Moved' || id || '@X.io' where id = $1 returning email_address",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), format!("moved{id}@x.io"));
    let row = d
        .query_one(
            "update users set email_address = 'fromnew' || id || '@x.io' where id = $1 returning email",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), format!("fromnew{id}@x.io"));
    // Rows the backfill has not reached yet are healed by any one-sided
    // update too; an update of another column leaves them to it.
    d.execute("update users set name = 'touched' where id = 5", &[])
        .await
        .unwrap();
    // So does one that sets a column to what it was (an ORM saving every
    // field): neither side changed, so neither side is taken from the other.
    let before: Option<String> = d
        .query_one("select email from users where id = 6", &[])
        .await
        .unwrap()
        .get(0);
    let row = d
        .query_one(
            "update users set email = email, email_address = email_address where id = 6 returning email",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0), before);
    copy_rows(d, b"Copied@Direct.io\tc\nCopied2@Direct.io\tc\n").await;
    let app = env.proxy.connect("trust_user").await.unwrap();
    copy_rows(&app, b"Copied@Proxy.io\tc\n").await;
    d.execute(
        "delete from users where email in ('Copied@Direct.io', 'Copied2@Direct.io', 'Copied@Proxy.io')",
        &[],
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypassing_writers_are_healed_from_dual_write_until_contract() {
    let env = Env::start(true).await;
    env.api.step(M, "expand", 200).await;
    assert!(
        env.triggers().await.is_empty(),
        "no guard before dual-write"
    );
    env.api.step(M, "dual-write", 200).await;
    assert_eq!(env.triggers().await.len(), 2);
    assert_eq!(env.api.detail(M).await["state"]["created"]["guard"], true);

    // dual_write: rows not yet backfilled stay NULL on the new side unless
    // written; everything written is consistent.
    bypassing_writes(&env, 1).await;
    assert_eq!(
        env.count("select count(*) from users where email_address is not null and email_address is distinct from lower(email)").await,
        0
    );
    env.api.step(M, "backfill", 202).await;
    bypassing_writes(&env, 2).await;
    assert_eq!(env.inconsistent().await, 0);
    let d = env.api.step(M, "verify", 202).await;
    assert_eq!(d["state"]["parity"]["mismatches"], 0, "{d}");
    bypassing_writes(&env, 3).await;
    // No second backfill: nothing escaped, so the gate is open.
    let d = env.api.step(M, "switch-reads", 200).await;
    assert_eq!(d["state"]["unrewritten_writes"], 0, "{d}");
    bypassing_writes(&env, 4).await;
    assert_eq!(env.inconsistent().await, 0);

    // A legacy-only application through the proxy, reads switched.
    let app = env.proxy.connect("trust_user").await.unwrap();
    app.batch_execute(
        "insert into users (email, name) values ('Proxied@X.io', 'p');
         update users set email = 'Proxied2@X.io' where email = 'Proxied@X.io'",
    )
    .await
    .unwrap();
    drop(app);
    assert_eq!(env.inconsistent().await, 0);

    // Contract passes the dependency check and takes the guard with it.
    let d = env.api.step(M, "verify", 202).await;
    assert_eq!(d["state"]["parity"]["mismatches"], 0, "{d}");
    settle(&env, "contract").await;
    assert!(env.triggers().await.is_empty());
    assert_eq!(env.functions().await, 0);
    assert_eq!(env.api.detail(M).await["state"]["created"]["guard"], false);

    // A rollback of contract re-adds the legacy column with the guard.
    settle(&env, "rollback").await;
    assert_eq!(env.triggers().await.len(), 2);
    env.direct
        .execute(
            "insert into users (email_address, name) values ('afterrestore@x.io', 'r')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        env.count("select count(*) from users where email = 'afterrestore@x.io'")
            .await,
        1
    );
    assert_eq!(env.inconsistent().await, 0);
    // Back to expanded: writes are no longer dual, the guard goes.
    for _ in 0..4 {
        settle(&env, "rollback").await;
    }
    assert_eq!(env.api.detail(M).await["phase"], "expanded");
    assert!(env.triggers().await.is_empty());
    assert_eq!(env.functions().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_writes_never_call_the_guard_function() {
    let env = Env::start(true).await;
    env.api.step(M, "expand", 200).await;
    env.api.step(M, "dual-write", 200).await;
    env.api.step(M, "backfill", 202).await;
    let app = env.proxy.connect("trust_user").await.unwrap();
    for i in 0..50 {
        app.execute(
            "insert into users (email, name) values ($1, 'p')",
            &[&format!("Many{i}@X.io")],
        )
        .await
        .unwrap();
        app.execute(
            "update users set email = $1 where email = $2",
            &[&format!("Again{i}@X.io"), &format!("Many{i}@X.io")],
        )
        .await
        .unwrap();
    }
    copy_rows(&app, b"ViaCopy@X.io\tc\n").await;
    drop(app);
    // Three healing writes from another session, closed last.
    let other = env.other_session().await;
    other
        .batch_execute(
            "insert into users (email, name) values ('Heal1@X.io', 'h');
             update users set email = 'Heal2@X.io' where email = 'Heal1@X.io';
             update users set email_address = 'heal3@x.io' where email = 'Heal2@X.io'",
        )
        .await
        .unwrap();
    drop(other);
    // Each session's counts reach the statistics when it ends; the proxied
    // one ended first. The copy through the proxy is one healed row.
    let calls = || async {
        env.direct
            .batch_execute("select pg_stat_clear_snapshot()")
            .await
            .unwrap();
        env.count(
            "select coalesce(sum(calls), 0)::bigint from pg_stat_user_functions where schemaname = 'switchyard'",
        )
        .await
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while calls().await < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "function calls never reached the statistics"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        calls().await,
        4,
        "a proxied write called the guard function"
    );
    assert_eq!(env.inconsistent().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_guard_bypassing_writes_are_not_healed() {
    let env = Env::start(false).await;
    env.api.step(M, "expand", 200).await;
    env.api.step(M, "dual-write", 200).await;
    assert!(env.triggers().await.is_empty());
    env.direct
        .execute(
            "insert into users (email, name) values ('Bypass@X.io', 'b')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        env.count(
            "select count(*) from users where email = 'Bypass@X.io' and email_address is null"
        )
        .await,
        1
    );
}
