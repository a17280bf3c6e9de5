//! Split and merge against real PostgreSQL: `full_name → first_name,
//! last_name` and `street, city → address`, two migrations on one table,
//! walked from expand to complete while an old application (legacy names
//! only) and a new one (new names only) write and read back through the
//! proxy. Every read is checked against what was written; no statement may
//! fail. Creation refuses a mapping that does not round-trip, unless
//! `lossy`.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use switchyard_tests::api::Api;
use switchyard_tests::process::ServeProcess;
use switchyard_tests::Cluster;
use tokio::sync::watch;
use tokio_postgres::Client;

const TOKEN: &str = "split-token";
const SPLIT: &str = "people-split";
const MERGE: &str = "people-merge";

fn split_spec() -> Value {
    json!({"name": SPLIT, "table": "people", "complete_quiet_minutes": 0,
        "columns": [{"legacy": "full_name", "new": ["first_name", "last_name"],
            "forward": {"first_name": "split_part(full_name, ' ', 1)",
                        "last_name": "split_part(full_name, ' ', 2)"},
            "backward": {"full_name": "first_name || ' ' || last_name"},
            "not_null": true}]})
}

fn merge_spec() -> Value {
    json!({"name": MERGE, "table": "people", "complete_quiet_minutes": 0,
        "columns": [{"legacy": ["street", "city"], "new": "address",
            "type": {"address": "text"},
            "forward": {"address": "street || ', ' || city"},
            "backward": {"street": "split_part(address, ', ', 1)",
                         "city": "split_part(address, ', ', 2)"}}]})
}

async fn start() -> (Cluster, ServeProcess, Api) {
    let cluster = Cluster::start().unwrap();
    cluster
        .psql_admin(
            "create table people(id serial primary key, full_name text not null, street text, city text);
             create unique index people_full_name_key on people(full_name);
             insert into people(full_name, street, city)
               select 'F' || g || ' L' || g, 'S' || g, 'C' || g from generate_series(1, 2000) g;",
        )
        .unwrap();
    let serve = ServeProcess::start(&cluster, TOKEN).await.unwrap();
    let api = Api::new(serve.control_addr, TOKEN);
    (cluster, serve, api)
}

async fn connect(serve: &ServeProcess) -> Client {
    let url = format!(
        "host=127.0.0.1 port={} user=trust_user dbname=postgres",
        serve.addr.port()
    );
    switchyard_tests::proxy::connect(&url).await.unwrap()
}

type Errors = Arc<Mutex<Vec<String>>>;

/// Columns `from..to` of `row` as text (`NULL` and other types shown).
fn texts(row: &tokio_postgres::Row, columns: std::ops::Range<usize>) -> Vec<String> {
    columns
        .map(|i| match row.try_get::<_, Option<String>>(i) {
            Ok(Some(v)) => v,
            Ok(None) => "NULL".into(),
            Err(e) => format!("{e:#}"),
        })
        .collect()
}

fn check(errors: &Errors, what: &str, got: Vec<String>, want: &[&str]) {
    if got != want {
        let step = STEP.lock().unwrap().clone();
        errors.lock().unwrap().push(format!(
            "{what} during {step}: read {got:?}, wrote {want:?}"
        ));
    }
}

/// Legacy names only: prepared and simple statements, partial updates,
/// `*`, each write read back.
async fn old_app(client: &Client, n: i64, errors: &Errors) -> anyhow::Result<()> {
    let insert = client
        .prepare("INSERT INTO people (full_name, street, city) VALUES ($1, $2, $3) RETURNING id")
        .await?;
    let read = client
        .prepare("SELECT full_name, street, city FROM people WHERE id = $1")
        .await?;
    let (first, last, street, city) = (
        format!("A{n}"),
        format!("B{n}"),
        format!("S{n}"),
        format!("C{n}"),
    );
    let full = format!("{first} {last}");
    let id: i32 = client
        .query_one(&insert, &[&full, &street, &city])
        .await?
        .get(0);
    let row = client.query_one(&read, &[&id]).await?;
    let got = texts(&row, 0..3);
    check(errors, "old insert", got, &[&full, &street, &city]);
    // A merge's column alone: the other comes from the row.
    let city2 = format!("D{n}");
    client
        .execute("UPDATE people SET city = $1 WHERE id = $2", &[&city2, &id])
        .await?;
    let full2 = format!("{first} M{n}");
    client
        .batch_execute(&format!(
            "UPDATE people SET full_name = '{full2}' WHERE id = {id}"
        ))
        .await?;
    let row = client
        .query_one(&format!("SELECT * FROM people WHERE id = {id}"), &[])
        .await?;
    let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
    if names != ["id", "full_name", "street", "city"] {
        errors
            .lock()
            .unwrap()
            .push(format!("old `*` shape: {names:?}"));
    }
    let got = texts(&row, 1..4);
    check(errors, "old update", got, &[&full2, &street, &city2]);
    Ok(())
}

/// New names only, from dual-write on.
async fn new_app(client: &Client, n: i64, errors: &Errors) -> anyhow::Result<()> {
    let (first, last, address) = (format!("N{n}"), format!("O{n}"), format!("T{n}, U{n}"));
    let id: i32 = client
        .query_one(
            "INSERT INTO people (first_name, last_name, address) VALUES ($1, $2, $3) RETURNING id",
            &[&first, &last, &address],
        )
        .await?
        .get(0);
    let last2 = format!("P{n}");
    client
        .execute(
            "UPDATE people SET last_name = $1 WHERE id = $2",
            &[&last2, &id],
        )
        .await?;
    let row = client
        .query_one(
            "SELECT first_name, last_name, address FROM people WHERE id = $1",
            &[&id],
        )
        .await?;
    let got = texts(&row, 0..3);
    check(errors, "new write", got, &[&first, &last2, &address]);
    Ok(())
}

#[derive(Clone, Copy)]
enum AppVersion {
    Old,
    New,
}

/// Runs one application version in a loop on its own connections until
/// told to stop; every failed statement is an error. Answers the runs.
fn spawn_app(
    serve: &ServeProcess,
    errors: &Errors,
    mut stop: watch::Receiver<bool>,
    version: AppVersion,
    base: i64,
) -> tokio::task::JoinHandle<i64> {
    let url = format!(
        "host=127.0.0.1 port={} user=trust_user dbname=postgres",
        serve.addr.port()
    );
    let errors = errors.clone();
    tokio::spawn(async move {
        let mut runs = 0;
        while !*stop.borrow_and_update() {
            let client = match switchyard_tests::proxy::connect(&url).await {
                Ok(client) => client,
                Err(e) => {
                    errors.lock().unwrap().push(format!("connect: {e:#}"));
                    break;
                }
            };
            // A fresh connection now and then, so that statements are
            // prepared under every rules version.
            for _ in 0..20 {
                let n = base + runs;
                let result = match version {
                    AppVersion::Old => old_app(&client, n, &errors).await,
                    AppVersion::New => new_app(&client, n, &errors).await,
                };
                if let Err(e) = result {
                    errors.lock().unwrap().push(format!("run {n}: {e:#}"));
                }
                runs += 1;
                if *stop.borrow() {
                    break;
                }
            }
        }
        runs
    })
}

/// The last verb started, for error messages.
static STEP: Mutex<String> = Mutex::new(String::new());

/// Both migrations take `verb`, each with `status`.
async fn both(api: &Api, verb: &str, status: u16) {
    for m in [SPLIT, MERGE] {
        *STEP.lock().unwrap() = format!("{m} {verb}");
        api.step(m, verb, status).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_and_a_merge_run_from_expand_to_complete_under_load_without_an_error() {
    let (cluster, serve, api) = start().await;
    for spec in [split_spec(), merge_spec()] {
        let (status, body) = api.call("POST", "/v1/migrations", Some(spec)).await;
        assert_eq!(status, 201, "{body}");
    }
    let errors: Errors = Arc::default();
    let (stop_old, stopped_old) = watch::channel(false);
    let (stop_new, stopped_new) = watch::channel(false);
    let old = [
        spawn_app(&serve, &errors, stopped_old.clone(), AppVersion::Old, 0),
        spawn_app(&serve, &errors, stopped_old, AppVersion::Old, 1_000_000),
    ];
    both(&api, "expand", 200).await;
    both(&api, "dual-write", 200).await;
    let new = spawn_app(&serve, &errors, stopped_new, AppVersion::New, 2_000_000);
    both(&api, "backfill", 202).await;
    // The unique index on full_name followed as an expression index.
    let admin = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
        .await
        .unwrap();
    let defs: Vec<String> = admin
        .query(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'people'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        defs.iter().any(
            |d| d.contains("UNIQUE INDEX people_first_name_last_name_key")
                && d.contains("first_name || ' '::text) || last_name")
        ),
        "{defs:?}"
    );
    both(&api, "verify", 202).await;
    for m in [SPLIT, MERGE] {
        let d = api.detail(m).await;
        assert_eq!(d["state"]["parity"]["mismatches"], 0, "{d}");
    }
    both(&api, "switch-reads", 200).await;
    both(&api, "verify", 202).await;
    for m in [SPLIT, MERGE] {
        *STEP.lock().unwrap() = format!("{m} contract");
        let (status, body) = api.verb(m, "contract").await;
        assert!(status == 200 || status == 202, "{body}");
        api.wait(m, |d| d["stage"]["legacy"] == "dropped").await;
    }
    assert_eq!(
        columns(&admin).await,
        ["id", "first_name", "last_name", "address"]
    );
    // The old version keeps working on the contracted table a while, then
    // retires before complete.
    let errors_at_contract = errors.lock().unwrap().len();
    assert_eq!(errors_at_contract, 0, "{:?}", errors.lock().unwrap());
    let client = connect(&serve).await;
    old_app(&client, 3_000_000, &errors).await.unwrap();
    stop_old.send(true).unwrap();
    let mut old_runs = 0;
    for task in old {
        old_runs += task.await.unwrap();
    }
    both(&api, "complete", 200).await;
    new_app(&client, 4_000_000, &errors).await.unwrap();
    stop_new.send(true).unwrap();
    let new_runs = new.await.unwrap();
    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "{} errors: {errors:?}", errors.len());
    assert!(
        old_runs > 20 && new_runs > 20,
        "old {old_runs}, new {new_runs}"
    );
    // Every row, whichever version wrote it, is whole on the new side.
    let broken: i64 = admin
        .query_one(
            "SELECT count(*) FROM people WHERE first_name IS NULL OR last_name IS NULL OR address IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(broken, 0);
}

#[tokio::test]
async fn a_mapping_that_does_not_round_trip_is_refused_unless_lossy() {
    let (cluster, _serve, api) = start().await;
    cluster
        .psql_admin("insert into people(full_name) values ('Mary Ann Smith')")
        .unwrap();
    let (status, body) = api.call("POST", "/v1/migrations", Some(split_spec())).await;
    assert_eq!(status, 400, "{body}");
    let message = body.to_string();
    assert!(
        message.contains("columns[0]") && message.contains("(2001)"),
        "{message}"
    );
    let mut lossy = split_spec();
    lossy["columns"][0]["lossy"] = json!(true);
    let (status, body) = api.call("POST", "/v1/migrations", Some(lossy)).await;
    assert_eq!(status, 201, "{body}");
    // A merge needs a backward for each legacy column.
    let mut partial = merge_spec();
    partial["columns"][0]["backward"] = json!({"street": "address"});
    let (status, body) = api.call("POST", "/v1/migrations", Some(partial)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("columns[0].backward"), "{body}");
}

/// The table's columns, in order.
async fn columns(db: &Client) -> Vec<String> {
    db.query(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = 'people'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn rollback_brings_back_every_legacy_column_and_then_drops_every_new_one() {
    let (cluster, serve, api) = start().await;
    for spec in [split_spec(), merge_spec()] {
        let (status, body) = api.call("POST", "/v1/migrations", Some(spec)).await;
        assert_eq!(status, 201, "{body}");
    }
    for (verb, status) in [
        ("expand", 200),
        ("dual-write", 200),
        ("backfill", 202),
        ("verify", 202),
        ("switch-reads", 200),
        ("verify", 202),
    ] {
        both(&api, verb, status).await;
    }
    for m in [SPLIT, MERGE] {
        let (status, body) = api.verb(m, "contract").await;
        assert!(status == 200 || status == 202, "{body}");
        api.wait(m, |d| d["stage"]["legacy"] == "dropped").await;
    }
    let db = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
        .await
        .unwrap();
    assert_eq!(
        columns(&db).await,
        ["id", "first_name", "last_name", "address"]
    );
    // Written by the new side only while the legacy columns are gone.
    let app = connect(&serve).await;
    app.execute(
        "UPDATE people SET first_name = 'Zed', address = 'Elm, Rome' WHERE id = 7",
        &[],
    )
    .await
    .unwrap();
    // contracted -> reads_switched: the legacy columns come back, refilled
    // from backward over the new ones.
    both(&api, "rollback", 202).await;
    assert_eq!(
        columns(&db).await,
        [
            "id",
            "first_name",
            "last_name",
            "address",
            "full_name",
            "street",
            "city"
        ]
    );
    let row = db
        .query_one(
            "SELECT full_name, street, city FROM people WHERE id = 7",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<String> = (0..3).map(|i| row.get(i)).collect();
    assert_eq!(got, ["Zed L7", "Elm", "Rome"]);
    let off: i64 = db
        .query_one(
            "SELECT count(*) FROM people WHERE full_name IS DISTINCT FROM first_name || ' ' || last_name
               OR address IS DISTINCT FROM street || ', ' || city",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(off, 0);
    // Writes by the legacy names set every column again.
    app.execute("UPDATE people SET city = 'Oslo' WHERE id = 8", &[])
        .await
        .unwrap();
    let address: String = db
        .query_one("SELECT address FROM people WHERE id = 8", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(address, "S8, Oslo");
    // Down to planned: every column the migrations added is gone, the
    // legacy ones keep their data.
    for _ in 0..5 {
        for m in [SPLIT, MERGE] {
            let (status, body) = api.verb(m, "rollback").await;
            assert!(status == 200 || status == 202, "{body}");
            api.wait(m, |d| d["job"].is_null() || d["job"]["state"] != "running")
                .await;
        }
    }
    for m in [SPLIT, MERGE] {
        assert_eq!(api.detail(m).await["phase"], "planned", "{m}");
    }
    assert_eq!(columns(&db).await, ["id", "full_name", "street", "city"]);
    let row = db
        .query_one("SELECT full_name, city FROM people WHERE id = 8", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "F8 L8");
    assert_eq!(row.get::<_, String>(1), "Oslo");
}
