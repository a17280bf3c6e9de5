//! Inline string literals dual-written to a `varchar(n)` legacy column,
//! through the control API and the proxy, against real PostgreSQL: a
//! literal short enough to be stored unchanged goes into `forward` without
//! its cast, but only where the catalog proved at creation that `forward`
//! resolves the same for it (no `lower(varchar)` overload); a long one
//! keeps the cast, so the new column gets `forward` of what the legacy
//! column stored. What the server ran is read back with `current_query()`
//! from a trigger; whether the cache spliced a statement or rewrote it
//! cold, the text is the same. pgjdbc's simple query mode, which inlines
//! each parameter in parentheses, gets the same for its strings and NULLs.

use serde_json::json;
use switchyard_tests::api::Api;
use switchyard_tests::{Cluster, TestProxy, TestProxyOptions};
use tokio_postgres::{Client, SimpleQueryMessage};

const TOKEN: &str = "literals-token";

const SCHEMA: &str = "
    create table seen(n bigserial, tab text, q text);
    create function note() returns trigger language plpgsql as
      $$ begin insert into seen (tab, q) values (tg_table_name, current_query()); return new; end $$;
    create table a(id int primary key, email varchar(16));
    create table b(id int primary key, email varchar(16));
    create table c(id int primary key, email varchar(16));
    create trigger note before insert or update on a for each row execute function note();
    create trigger note before insert or update on b for each row execute function note();
    create trigger note before insert or update on c for each row execute function note();";

/// A `lower(varchar)` that `forward` over the `varchar` column resolves to
/// instead of `lower(text)`.
const OVERLOAD: &str = "create function public.lower(character varying) returns text
    language sql immutable as $$ select upper($1::text) $$";

/// `LONG` is 19 bytes: stored as its first 16 (the rest are spaces).
const SHORT: &str = "Short@X.io";
const LONG: &str = "ABCDEFGHIJKL@XYZ   ";

/// Creates, expands and dual-writes `table`'s `email → email_address` migration.
async fn dual_write(api: &Api, table: &str) {
    let spec = json!({
        "name": table,
        "table": format!("public.{table}"),
        "columns": [{"legacy": "email", "new": "email_address",
                     "forward": "lower(email)", "backward": "email_address"}]
    });
    let (status, body) = api.call("POST", "/v1/migrations", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    for verb in ["expand", "dual-write"] {
        let (status, body) = api.verb(table, verb).await;
        assert_eq!(status, 200, "{verb}: {body}");
    }
}

/// Writes rows through `app`, shape after shape, and returns the text the
/// server ran for each, with whether its literal was the long one.
async fn write(app: &Client, direct: &Client, table: &str) -> Vec<(bool, String)> {
    let mut ran = Vec::new();
    for id in 1..=6 {
        let long = id % 3 == 2;
        let value = if long { LONG } else { SHORT };
        let sql = match id % 2 {
            0 => format!("insert into {table} (id, email) values ({id}, '{value}')"),
            _ => format!("insert into {table} (id, email) values ({id}, 'x'); update {table} set email = '{value}' where id = {id}"),
        };
        app.simple_query(&sql).await.unwrap();
        let q: String = direct
            .query_one(
                "select q from seen where tab = $1 order by n desc limit 1",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        ran.push((long, q));
    }
    ran
}

/// Rows whose new column is not `forward` of the stored legacy value, as
/// the database resolves it for the `varchar` column.
async fn mismatches(direct: &Client, table: &str) -> Vec<String> {
    let sql = format!(
        "select coalesce(email, 'NULL') || ' -> ' || coalesce(email_address, 'NULL') from {table}
         where email_address is distinct from lower(email)"
    );
    let rows = direct.simple_query(&sql).await.unwrap();
    rows.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// A cluster with [`SCHEMA`], a proxy in front of it, a direct client and
/// the control API.
async fn setup() -> (Cluster, TestProxy, Client, Api) {
    let cluster = Cluster::start().unwrap();
    let direct = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
        .await
        .unwrap();
    direct.batch_execute(SCHEMA).await.unwrap();
    let proxy = TestProxy::start(&cluster, TestProxyOptions::control(TOKEN))
        .await
        .unwrap();
    let api = Api::new(proxy.control_addr, TOKEN);
    (cluster, proxy, direct, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_literal_skips_its_cast_only_where_the_catalog_proves_it_changes_nothing() {
    let (_cluster, proxy, direct, api) = setup().await;
    let app = proxy.connect("trust_user").await.unwrap();

    // Proved: short literals go bare, the long one keeps its cast.
    dual_write(&api, "a").await;
    for (long, q) in write(&app, &direct, "a").await {
        let cast = q.contains("::character varying(16)");
        assert_eq!(cast, long, "{q}");
        assert!(q.contains("email_address"), "not dual-written: {q}");
    }
    assert_eq!(mismatches(&direct, "a").await, Vec::<String>::new());
    let stored: String = direct
        .query_one("select email_address from a where id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored,
        LONG.trim_end().to_lowercase(),
        "truncated, then lowered"
    );

    // A `lower(varchar)` overload: `forward` over the varchar column is no
    // longer `lower(text)`, so b's literals keep their casts.
    direct.batch_execute(OVERLOAD).await.unwrap();
    dual_write(&api, "b").await;
    for (_, q) in write(&app, &direct, "b").await {
        assert!(q.contains("::character varying(16)"), "{q}");
    }
    assert_eq!(mismatches(&direct, "b").await, Vec::<String>::new());
    let overloaded: i64 = direct
        .query_one(
            "select count(*) from b where email_address = upper(email::text)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(overloaded, 6);
}

/// Runs `SimpleModeWrites` (pgjdbc, `preferQueryMode=simple`) with `ops`.
fn pgjdbc_simple_mode(cluster: &Cluster, port: u16, table: &str, ops: &[String]) {
    let jar = "/usr/share/java/postgresql.jar";
    assert!(
        std::path::Path::new(jar).exists(),
        "JDBC driver missing: apt-get install libpostgresql-jdbc-java"
    );
    let dir = cluster.scratch().join("java");
    std::fs::create_dir_all(&dir).unwrap();
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/SimpleModeWrites.java");
    let javac = std::process::Command::new("javac")
        .args(["-cp", jar, "-d"])
        .arg(&dir)
        .arg(src)
        .status()
        .unwrap();
    assert!(javac.success(), "javac failed");
    let url =
        format!("jdbc:postgresql://127.0.0.1:{port}/postgres?user=trust_user&sslmode=disable");
    let out = std::process::Command::new("java")
        .arg("-cp")
        .arg(format!("{jar}:{}", dir.display()))
        .arg("SimpleModeWrites")
        .arg(url)
        .arg(table)
        .args(ops)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "SimpleModeWrites: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_simple_mode_strings_and_nulls_skip_the_cast_too() {
    let (cluster, proxy, direct, api) = setup().await;
    dual_write(&api, "c").await;
    // `None` is NULL. Inserts then updates: each shape runs cold first,
    // then spliced from the cache, with short and long values both ways.
    let values = [Some(SHORT), Some(LONG), None, Some("Other@X.io")];
    let mut ops = Vec::new();
    for (kind, shift) in [("i", 0), ("u", 1)] {
        for id in 1..=values.len() {
            let value = values[(id - 1 + shift) % values.len()];
            ops.push((kind, id, value));
        }
    }
    let args: Vec<String> = ops
        .iter()
        .map(|(kind, id, v)| format!("{kind}:{id}:{}", v.unwrap_or("\\N")))
        .collect();
    tokio::task::block_in_place(|| pgjdbc_simple_mode(&cluster, proxy.port(), "c", &args));
    let ran: Vec<String> = direct
        .query("select q from seen where tab = 'c' order by n", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ran.len(), ops.len(), "{ran:#?}");
    for ((_, _, value), q) in ops.iter().zip(&ran) {
        assert!(q.contains("email_address"), "not dual-written: {q}");
        let inlined = match value {
            Some(v) => format!("('{v}')"),
            None => "(NULL)".to_string(),
        };
        assert!(q.contains(&inlined), "pgjdbc inlined otherwise: {q}");
        let cast = q.contains("::character varying(16)");
        assert_eq!(cast, *value == Some(LONG), "{q}");
    }
    assert_eq!(mismatches(&direct, "c").await, Vec::<String>::new());
}

/// The proof is taken at creation: an overload created later changes what
/// `forward` means over the column but not over a bare literal. Rows
/// written bare after it are then not `forward` of their legacy value, and
/// the parity pass counts each of them: the switch-reads gate stays shut.
/// The pass takes the proof again first: it withdraws it, audited, and
/// from then on literals keep their cast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parity_counts_the_rows_an_overload_created_after_the_proof_leaves_behind() {
    let (_cluster, proxy, direct, api) = setup().await;
    let app = proxy.connect("trust_user").await.unwrap();
    let proved = |d: &serde_json::Value| d["state"]["pairs"][0]["forward_takes_literals"].clone();
    dual_write(&api, "a").await;
    api.step("a", "backfill", 202).await;
    // While the catalog is unchanged the proof holds again.
    let d = api.step("a", "verify", 202).await;
    assert_eq!(d["phase"], "verified", "{d}");
    assert_eq!(proved(&d), true, "{d}");
    direct.batch_execute(OVERLOAD).await.unwrap();
    let ran = write(&app, &direct, "a").await;
    let bare = ran.iter().filter(|(long, _)| !long).count();
    assert!(ran
        .iter()
        .any(|(long, q)| !long && !q.contains("::character varying")));
    // What a bare write stored is now not forward of the legacy column.
    let off = mismatches(&direct, "a").await;
    assert_eq!(off.len(), bare, "{off:?}");
    let d = api.step("a", "verify", 202).await;
    assert_eq!(d["state"]["parity"]["mismatches"], bare, "{d}");
    let (status, body) = api.verb("a", "switch-reads").await;
    assert_eq!(status, 409, "{body}");
    // The pass withdrew the proof, in the audit log, before it counted.
    assert_eq!(proved(&d), false, "{d}");
    let (_, events) = api.call("GET", "/v1/events", None).await;
    let withdrawn = events.to_string();
    assert!(withdrawn.contains("literal-proof"), "{withdrawn}");
    // Every instance acknowledged it before the pass: literals are cast now.
    direct.batch_execute("delete from a").await.unwrap();
    for (_, q) in write(&app, &direct, "a").await {
        assert!(q.contains("::character varying(16)"), "{q}");
    }
    assert_eq!(mismatches(&direct, "a").await, Vec::<String>::new());
    // The runbook's way back from rows written bare: roll back to
    // dual-write, backfill again (it rewrites the rows that differ), verify.
    direct
        .batch_execute("update a set email_address = lower(email::text) where id < 4")
        .await
        .unwrap();
    assert_eq!(mismatches(&direct, "a").await.len(), 3);
    for phase in ["backfilled", "dual_write"] {
        let d = api.step("a", "rollback", 200).await;
        assert_eq!(d["phase"], phase, "{d}");
    }
    api.step("a", "backfill", 202).await;
    let d = api.step("a", "verify", 202).await;
    assert_eq!(d["phase"], "verified", "{d}");
    assert_eq!(d["state"]["parity"]["mismatches"], 0, "{d}");
    assert_eq!(proved(&d), false, "{d}");
}
