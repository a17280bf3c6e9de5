//! Rule-driven rewriting in the wire path, against real PostgreSQL.

use std::sync::Arc;

use switchyard_proxy::routing::RulesHub;
use switchyard_rules::Phase;
use switchyard_tests::rules::{install, single_pair, table_facts};
use switchyard_tests::{Cluster, TestProxy, TestProxyOptions};

struct Env {
    _cluster: Cluster,
    proxy: TestProxy,
    direct: tokio_postgres::Client,
    hub: Arc<RulesHub>,
    version: u64,
}

impl Env {
    async fn new() -> Env {
        let cluster = Cluster::start().unwrap();
        let proxy = TestProxy::start(&cluster, TestProxyOptions::default())
            .await
            .unwrap();
        let direct = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
            .await
            .unwrap();
        direct
            .batch_execute(
                "create table users(id serial primary key, email varchar(320), name text, status int default 0);
                 alter table users add column email_address varchar(320);",
            )
            .await
            .unwrap();
        let hub = proxy.rules();
        Env {
            _cluster: cluster,
            proxy,
            direct,
            hub,
            version: 0,
        }
    }

    async fn phase(&mut self, phase: Phase) -> u64 {
        self.version += 1;
        let facts = table_facts(&self.direct, "public", "users").await.unwrap();
        install(
            &self.hub,
            single_pair(
                self.version,
                "postgres",
                facts,
                "email",
                "email_address",
                "lower(email)",
                "email_address",
                phase,
            ),
        );
        self.version
    }

    /// Rows where the new column does not mirror the legacy one.
    async fn mismatches(&self) -> i64 {
        self.direct
            .query_one(
                "select count(*) from users where email_address is distinct from lower(email)",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn new_value(&self, id: i32) -> Option<String> {
        self.direct
            .query_one("select email_address from users where id = $1", &[&id])
            .await
            .unwrap()
            .get(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_write_through_simple_and_extended_protocol() {
    let mut env = Env::new().await;
    env.phase(Phase::DualWrite).await;
    let c = env.proxy.connect("trust_user").await.unwrap();
    c.batch_execute(
        "insert into users(email, name) values ('A@X.io', 'a'), ('B@x.io', 'b');
         insert into users values (default, 'C@X.io', 'c');
         update users set email = email || '.Uk' where name = 'a';",
    )
    .await
    .unwrap();
    let id: i32 = c
        .query_one(
            "insert into users(name, email) values ($1, $2) returning id",
            &[&"d", &"D@X.io"],
        )
        .await
        .unwrap()
        .get(0);
    c.execute(
        "update users set email = $1 where id = $2",
        &[&"Dd@X.io", &id],
    )
    .await
    .unwrap();
    c.execute(
        "insert into users(id, email) values ($1, $2) on conflict (id) do update set email = excluded.email",
        &[&id, &"E@X.io"],
    )
    .await
    .unwrap();
    // A newer application version that writes only the new column.
    c.execute(
        "insert into users(email_address, name) values ($1, 'f')",
        &[&"f@x.io"],
    )
    .await
    .unwrap();
    let legacy: String = env
        .direct
        .query_one("select email from users where name = 'f'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(legacy, "f@x.io");
    assert_eq!(env.new_value(id).await.as_deref(), Some("e@x.io"));
    assert_eq!(env.mismatches().await, 0);
    let n: i64 = env
        .direct
        .query_one("select count(*) from users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_statement_follows_every_flip() {
    let mut env = Env::new().await;
    env.phase(Phase::Expanded).await;
    let c = env.proxy.connect("scram_user").await.unwrap();
    let insert = c
        .prepare("insert into users(email) values ($1) returning id")
        .await
        .unwrap();
    let select = c
        .prepare("select id, email from users where id = $1")
        .await
        .unwrap();
    let mut expect_mirrored = Vec::new();
    for (i, phase) in [
        Phase::Expanded,
        Phase::DualWrite,
        Phase::Expanded,
        Phase::DualWrite,
        Phase::Backfilled,
    ]
    .into_iter()
    .enumerate()
    {
        env.phase(phase).await;
        let id: i32 = c
            .query_one(&insert, &[&format!("User{i}@X.io")])
            .await
            .unwrap()
            .get(0);
        // The result shape of other prepared statements is unchanged.
        let row = c.query_one(&select, &[&id]).await.unwrap();
        assert_eq!(row.get::<_, String>(1), format!("User{i}@X.io"));
        let mirrored = env.new_value(id).await.is_some();
        expect_mirrored.push((phase, mirrored));
    }
    assert_eq!(
        expect_mirrored,
        vec![
            (Phase::Expanded, false),
            (Phase::DualWrite, true),
            (Phase::Expanded, false),
            (Phase::DualWrite, true),
            (Phase::Backfilled, true)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_runs_under_one_rules_version() {
    let mut env = Env::new().await;
    let v1 = env.phase(Phase::Expanded).await;
    let c = env.proxy.connect("trust_user").await.unwrap();
    c.batch_execute("begin; insert into users(id, email) values (1, 'One@x')")
        .await
        .unwrap();
    assert_eq!(env.hub.acknowledged(), v1);
    let v2 = env.phase(Phase::DualWrite).await;
    // The open transaction keeps v1, and holds back the acknowledgement.
    c.batch_execute("insert into users(id, email) values (2, 'Two@x')")
        .await
        .unwrap();
    assert_eq!(env.hub.acknowledged(), v1);
    c.batch_execute("commit").await.unwrap();
    assert_eq!(env.hub.acknowledged(), v2);
    c.batch_execute("insert into users(id, email) values (3, 'Three@x')")
        .await
        .unwrap();
    assert_eq!(env.new_value(1).await, None);
    assert_eq!(env.new_value(2).await, None);
    assert_eq!(env.new_value(3).await.as_deref(), Some("three@x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrewritable_writes_are_counted_before_the_switch_and_refused_after() {
    let mut env = Env::new().await;
    env.phase(Phase::DualWrite).await;
    let c = env.proxy.connect("trust_user").await.unwrap();
    let sink = c.copy_in("copy users(id, email) from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    futures_util::SinkExt::send(&mut sink, bytes::Bytes::from_static(b"10\tCopy@x\n"))
        .await
        .unwrap();
    sink.finish().await.unwrap();
    assert_eq!(
        env.hub.resync_needed(),
        vec![("users-email".to_string(), 1)]
    );
    assert_eq!(env.mismatches().await, 1, "the COPY bypassed dual-write");

    env.phase(Phase::ReadsSwitched).await;
    let err = c
        .batch_execute("copy users(id, email) from stdin")
        .await
        .unwrap_err();
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(db.code().code(), "0A000");
    assert!(db.message().contains("users-email"), "{}", db.message());
    // The session is still usable.
    assert_eq!(
        c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );

    // An operator may choose to let such statements through.
    let facts = table_facts(&env.direct, "public", "users").await.unwrap();
    env.version += 1;
    let mut set = single_pair(
        env.version,
        "postgres",
        facts,
        "email",
        "email_address",
        "lower(email)",
        "email_address",
        Phase::ReadsSwitched,
    );
    set.tables[0].mappings[0].on_unsupported = switchyard_rules::UnsupportedPolicy::PassThrough;
    install(&env.hub, set);
    let sink = c.copy_in("copy users(id, email) from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    futures_util::SinkExt::send(&mut sink, bytes::Bytes::from_static(b"11\tPass@x\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
    assert_eq!(env.mismatches().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_switch_then_contract_keeps_the_application_working() {
    let mut env = Env::new().await;
    env.phase(Phase::DualWrite).await;
    let c = env.proxy.connect("md5_user").await.unwrap();
    c.execute(
        "insert into users(id, email, name) values (1, 'Ann@X.io', 'ann')",
        &[],
    )
    .await
    .unwrap();
    let read = c
        .prepare("select id, email, name from users where email = $1")
        .await
        .unwrap();
    let columns: Vec<(String, String)> = read
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.type_().name().to_string()))
        .collect();
    assert_eq!(c.query(&read, &[&"Ann@X.io"]).await.unwrap().len(), 1);

    // Reads now come from the new column: a value only the new column has
    // (written around the proxy) is what the application sees.
    env.phase(Phase::ReadsSwitched).await;
    env.direct
        .execute(
            "update users set email_address = 'ann@new.io' where id = 1",
            &[],
        )
        .await
        .unwrap();
    let rows = c.query(&read, &[&"ann@new.io"]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(1), "ann@new.io");
    let again = c
        .prepare("select id, email, name from users where email = $1")
        .await
        .unwrap();
    let shape: Vec<(String, String)> = again
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.type_().name().to_string()))
        .collect();
    assert_eq!(shape, columns, "output names and types must not change");

    // Contract: the legacy column is dropped; the application still reads
    // and writes it by its old name, through the proxy.
    env.direct
        .execute("alter table users drop column email", &[])
        .await
        .unwrap();
    env.phase(Phase::Contracted).await;
    c.execute(
        "insert into users(id, email, name) values (2, 'Bob@X.io', 'bob')",
        &[],
    )
    .await
    .unwrap();
    c.execute(
        "update users set email = email || '.uk' where id = $1",
        &[&2i32],
    )
    .await
    .unwrap();
    let rows = c.query(&read, &[&"bob@x.io.uk"]).await.unwrap();
    assert_eq!(
        rows.len(),
        1,
        "the prepared read follows the contract without a plan error"
    );
    assert_eq!(rows[0].get::<_, String>(2), "bob");
    let v: String = env
        .direct
        .query_one("select email_address from users where id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "bob@x.io.uk");
    // `*` after contract is refused clearly rather than answered with the
    // wrong shape.
    let err = c.query("select * from users", &[]).await.unwrap_err();
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("0A000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_path_and_sql_level_prepare_are_followed() {
    let env = Env::new().await;
    env.direct
        .batch_execute("create schema app; create table app.users(id serial primary key, email varchar(320), email_address varchar(320));")
        .await
        .unwrap();
    let facts = table_facts(&env.direct, "app", "users").await.unwrap();
    let set = |v, phase| {
        single_pair(
            v,
            "postgres",
            facts.clone(),
            "email",
            "email_address",
            "lower(email)",
            "email_address",
            phase,
        )
    };
    install(&env.hub, set(1, Phase::DualWrite));
    let c = env.proxy.connect("trust_user").await.unwrap();
    // `users` is public.users here: not routed.
    c.batch_execute("insert into users(id, email) values (1, 'P@x')")
        .await
        .unwrap();
    assert_eq!(env.new_value(1).await, None);
    c.batch_execute("SET search_path TO app, public")
        .await
        .unwrap();
    c.batch_execute("insert into users(id, email) values (1, 'A@x')")
        .await
        .unwrap();
    let app_new: Option<String> = env
        .direct
        .query_one("select email_address from app.users where id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(app_new.as_deref(), Some("a@x"));

    // SQL-level PREPARE under one version, EXECUTE under others.
    install(&env.hub, set(2, Phase::Expanded));
    c.batch_execute("PREPARE ins(int, text) AS insert into users(id, email) values ($1, $2)")
        .await
        .unwrap();
    let mut mirrored = Vec::new();
    for (i, (v, phase)) in [
        (2, Phase::Expanded),
        (3, Phase::DualWrite),
        (4, Phase::Expanded),
    ]
    .into_iter()
    .enumerate()
    {
        if v > 2 {
            install(&env.hub, set(v, phase));
        }
        let id = 10 + i as i32;
        let msgs = c
            .simple_query(&format!("EXECUTE ins({id}, 'E{id}@X')"))
            .await
            .unwrap();
        // The client sees exactly its own command's completion.
        assert_eq!(
            msgs.iter()
                .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::CommandComplete(_)))
                .count(),
            1
        );
        let new: Option<String> = env
            .direct
            .query_one("select email_address from app.users where id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        mirrored.push(new.is_some());
    }
    assert_eq!(mirrored, vec![false, true, false]);
    c.batch_execute("DEALLOCATE ins; RESET search_path")
        .await
        .unwrap();
    c.batch_execute("insert into users(id, email) values (2, 'P2@x')")
        .await
        .unwrap();
    assert_eq!(env.new_value(2).await, None, "back on public.users");

    // SET LOCAL holds until the end of its transaction only; a rolled-back
    // SET is undone; set_config() is followed too.
    install(&env.hub, set(5, Phase::DualWrite));
    let app_new = |id: i32| {
        let direct = &env.direct;
        async move {
            direct
                .query_one("select email_address from app.users where id = $1", &[&id])
                .await
                .unwrap()
                .get::<_, Option<String>>(0)
        }
    };
    c.batch_execute("BEGIN; SET LOCAL search_path TO app; insert into users(id, email) values (20, 'L@x'); COMMIT")
        .await
        .unwrap();
    assert_eq!(app_new(20).await.as_deref(), Some("l@x"));
    c.batch_execute("insert into users(id, email) values (21, 'P21@x')")
        .await
        .unwrap();
    assert_eq!(env.new_value(21).await, None, "SET LOCAL ended with COMMIT");
    c.batch_execute("BEGIN; SET search_path TO app; ROLLBACK")
        .await
        .unwrap();
    c.batch_execute("insert into users(id, email) values (22, 'P22@x')")
        .await
        .unwrap();
    assert_eq!(
        env.new_value(22).await,
        None,
        "the rolled-back SET is undone"
    );
    c.simple_query("SELECT set_config('search_path', 'app, public', false)")
        .await
        .unwrap();
    c.batch_execute("insert into users(id, email) values (23, 'C@x')")
        .await
        .unwrap();
    assert_eq!(app_new(23).await.as_deref(), Some("c@x"));
}

/// MERGE's UPDATE and INSERT actions dual-write like the plain statements,
/// and after contract write the new column through `forward`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_dual_writes_and_follows_the_contract() {
    let mut env = Env::new().await;
    env.phase(Phase::DualWrite).await;
    let c = env.proxy.connect("trust_user").await.unwrap();
    c.execute(
        "insert into users(id, email, name) values (1, 'Ann@X.io', 'ann')",
        &[],
    )
    .await
    .unwrap();
    let merge = "MERGE INTO users u USING (VALUES ($1::int, $2::text)) v(id, email) ON u.id = v.id
                 WHEN MATCHED THEN UPDATE SET email = v.email
                 WHEN NOT MATCHED THEN INSERT (id, email, name) VALUES (v.id, v.email, 'merged')";
    assert_eq!(
        c.execute(merge, &[&1i32, &"Ann@Merged.io"]).await.unwrap(),
        1
    );
    assert_eq!(
        c.execute(merge, &[&2i32, &"Bob@Merged.io"]).await.unwrap(),
        1
    );
    c.batch_execute(
        "merge into users using (select 3 as id, 'Cy@X.io' as email) s on users.id = s.id
         when not matched then insert values (s.id, s.email, 'cy', 0)",
    )
    .await
    .unwrap();
    assert_eq!(env.new_value(1).await.as_deref(), Some("ann@merged.io"));
    assert_eq!(env.new_value(2).await.as_deref(), Some("bob@merged.io"));
    assert_eq!(env.new_value(3).await.as_deref(), Some("cy@x.io"));
    assert_eq!(env.mismatches().await, 0);
    assert!(
        env.hub.resync_needed().is_empty(),
        "every MERGE was rewritten"
    );

    env.phase(Phase::ReadsSwitched).await;
    env.direct
        .execute("alter table users drop column email", &[])
        .await
        .unwrap();
    env.phase(Phase::Contracted).await;
    assert_eq!(
        c.execute(merge, &[&2i32, &"Bob@Contract.io"])
            .await
            .unwrap(),
        1
    );
    assert_eq!(c.execute(merge, &[&4i32, &"Dee@X.io"]).await.unwrap(), 1);
    assert_eq!(env.new_value(2).await.as_deref(), Some("bob@contract.io"));
    assert_eq!(env.new_value(4).await.as_deref(), Some("dee@x.io"));
}
