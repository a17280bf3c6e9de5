//! `switchyard ctl` against a real control API.

use switchyard::ctl::{run, CtlArgs, CtlCommand};
use switchyard_tests::{Cluster, TestProxy, TestProxyOptions};

fn args(proxy: &TestProxy, command: CtlCommand) -> CtlArgs {
    CtlArgs {
        url: format!("http://{}", proxy.control_addr),
        token: Some("t0ken".into()),
        json: false,
        command,
    }
}

fn verb(words: &[&str]) -> CtlCommand {
    CtlCommand::Verb(words.iter().map(|w| w.to_string()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drives_a_migration_and_exits_non_zero_on_refusal() {
    let cluster = Cluster::start().unwrap();
    cluster
        .psql_admin("create table accounts(id int primary key, status int); insert into accounts select g, g % 2 from generate_series(1, 1000) g")
        .unwrap();
    let proxy = TestProxy::start(&cluster, TestProxyOptions::control("t0ken"))
        .await
        .unwrap();
    let spec = cluster.scratch().join("spec.toml");
    std::fs::write(
        &spec,
        "name = \"accounts-status\"\ntable = \"accounts\"\n[[columns]]\nlegacy = \"status\"\nnew = \"status_code\"\ntype = \"bigint\"\n",
    )
    .unwrap();
    assert_eq!(
        run(args(&proxy, CtlCommand::Apply { file: spec }))
            .await
            .unwrap(),
        0
    );
    for step in ["expand", "dual-write"] {
        assert_eq!(
            run(args(&proxy, verb(&[step, "accounts-status"])))
                .await
                .unwrap(),
            0,
            "{step}"
        );
    }
    assert_eq!(
        run(args(
            &proxy,
            verb(&["backfill", "accounts-status", "--follow"])
        ))
        .await
        .unwrap(),
        0
    );
    let filled: i64 = cluster
        .psql_admin("select count(*) from accounts where status_code = status")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(filled, 1000);
    // The gate refuses without a verify: exit code 1.
    assert_eq!(
        run(args(&proxy, verb(&["switch-reads", "accounts-status"])))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        run(args(
            &proxy,
            verb(&["switch-reads", "accounts-status", "--force"])
        ))
        .await
        .unwrap(),
        0
    );
    assert_eq!(
        run(args(
            &proxy,
            CtlCommand::Revert {
                name: None,
                all: true
            }
        ))
        .await
        .unwrap(),
        0
    );
    assert_eq!(
        run(args(
            &proxy,
            CtlCommand::Status {
                name: None,
                watch: false
            }
        ))
        .await
        .unwrap(),
        0
    );
    assert_eq!(run(args(&proxy, CtlCommand::Events)).await.unwrap(), 0);
    // Throttles change through ctl (persisted in the migration's state).
    let throttle = |rows: &str, sessions: &str| CtlCommand::Throttle {
        name: "accounts-status".into(),
        max_rows_per_second: Some(rows.into()),
        target_chunk_ms: Some(20),
        max_replica_lag_ms: Some("250".into()),
        max_active_sessions: Some(sessions.into()),
        max_app_p99_pct: Some("150".into()),
    };
    assert_eq!(
        run(args(&proxy, throttle("5000", "none"))).await.unwrap(),
        0
    );
    let live = cluster
        .psql_admin(
            "select state->'settings' from switchyard.migrations where name = 'accounts-status'",
        )
        .unwrap();
    assert!(live.contains("\"max_replica_lag_ms\": 250"), "{live}");
    assert!(live.contains("\"max_rows_per_second\": 5000"), "{live}");
    assert!(live.contains("\"max_active_sessions\": null"), "{live}");
    assert!(live.contains("\"max_app_p99_pct\": 150"), "{live}");
    assert!(run(args(&proxy, throttle("fast", "none"))).await.is_err());
    // A wrong token is refused.
    let mut bad = args(
        &proxy,
        CtlCommand::Status {
            name: None,
            watch: false,
        },
    );
    bad.token = Some("nope".into());
    assert_eq!(run(bad).await.unwrap(), 1);
}
