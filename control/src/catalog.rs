//! Catalog facts and spec validation against the live database.

use switchyard_rules::ident;
use switchyard_rules::migration::{ColumnSpec, MigrationSpec, PerColumn};
use switchyard_rules::template::Template;
use switchyard_rules::{ColumnFact, Group, QualifiedName, TableFacts, TypedColumn, UniqueKey};
use tokio_postgres::Client;

use crate::error::ControlError;

pub use switchyard_rules::migration::Pair;

/// Reads a table's columns and key; 400 if the table does not exist.
pub async fn table_facts(
    client: &impl tokio_postgres::GenericClient,
    table: &QualifiedName,
) -> Result<TableFacts, ControlError> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), pg_get_expr(d.adbin, d.adrelid)
             FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
               AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&table.schema, &table.name],
        )
        .await?;
    if rows.is_empty() {
        return Err(ControlError::BadRequest(format!("table: no table {table}")));
    }
    let columns = rows
        .iter()
        .map(|r| ColumnFact {
            name: r.get(0),
            sql_type: r.get(1),
            default: r.get(2),
        })
        .collect();
    // The primary key, else the narrowest unique NOT NULL key without
    // expressions or predicate.
    let key = client
        .query_opt(
            "SELECT ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                          WHERE k.ord <= i.indnkeyatts ORDER BY k.ord)
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND i.indisvalid
               AND i.indpred IS NULL AND i.indexprs IS NULL
               AND NOT EXISTS (SELECT 1 FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                               WHERE k.ord <= i.indnkeyatts AND NOT a.attnotnull)
             ORDER BY i.indisprimary DESC, i.indnkeyatts, i.indexrelid LIMIT 1",
            &[&table.schema, &table.name],
        )
        .await?
        .map(|r| r.get(0))
        .unwrap_or_default();
    let unique = client
        .query(
            "SELECT c2.relname::text,
                    (SELECT co.conname::text FROM pg_constraint co
                     WHERE co.conindid = i.indexrelid AND co.conrelid = i.indrelid LIMIT 1),
                    ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                          WHERE k.ord <= i.indnkeyatts ORDER BY k.ord)
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_class c2 ON c2.oid = i.indexrelid
             WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND i.indisvalid
               AND i.indpred IS NULL AND i.indexprs IS NULL
             ORDER BY 1",
            &[&table.schema, &table.name],
        )
        .await?
        .iter()
        .map(|r| UniqueKey {
            index: r.get(0),
            constraint: r.get(1),
            columns: r.get(2),
        })
        .collect();
    Ok(TableFacts {
        name: table.clone(),
        columns,
        key,
        unique,
    })
}

/// Checks a spec against the catalog and fills in defaults; errors name
/// the field.
pub async fn validate(
    client: &mut Client,
    spec: &MigrationSpec,
) -> Result<(TableFacts, Vec<Pair>), ControlError> {
    let table = spec
        .validate()
        .map_err(|e| ControlError::BadRequest(e.to_string()))?;
    let facts = table_facts(client, &table).await?;
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    // Without a key the jobs walk ctid ranges, which need TID range scans.
    if facts.key.is_empty() && version < 140000 {
        return Err(ControlError::BadRequest(format!(
            "table: {table} has neither a primary key nor a unique NOT NULL key, and this \
             server (before PostgreSQL 14) cannot walk it by ctid ranges; add a key first"
        )));
    }
    let mut pairs = Vec::new();
    for (i, c) in spec.columns.iter().enumerate() {
        pairs.extend(entry(client, &facts, i, c).await?);
    }
    Ok((facts, pairs))
}

fn bad(field: String, message: impl std::fmt::Display) -> ControlError {
    ControlError::BadRequest(format!("{field}: {message}"))
}

/// The first line of a PostgreSQL error.
fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// Resolves one `columns` entry into its pairs: one for a plain pair, one
/// per new column of a split, one per legacy column of a merge.
async fn entry(
    client: &mut Client,
    facts: &TableFacts,
    i: usize,
    c: &ColumnSpec,
) -> Result<Vec<Pair>, ControlError> {
    let field = |f: &str| format!("columns[{i}].{f}");
    let table = &facts.name;
    let mut legacy = Vec::new();
    for name in c.legacy.list() {
        let position = (facts.columns.iter())
            .position(|col| col.name == name)
            .ok_or_else(|| bad(field("legacy"), format!("{table} has no column {name:?}")))?;
        if facts.key.iter().any(|k| k == name) {
            return Err(bad(
                field("legacy"),
                format!(
                    "{name:?} is part of the key {:?} that the backfill walks; it cannot be migrated",
                    facts.key
                ),
            ));
        }
        let ty = facts.columns[position].sql_type.clone();
        legacy.push((TypedColumn::new(name, ty), position));
    }
    let mut new = Vec::new();
    for name in c.new.list() {
        let ty = match c.sql_type.as_ref().and_then(|t| t.of(name)) {
            Some(t) => canonical_type(client, t)
                .await
                .map_err(|e| bad(field("type"), e))?,
            None if legacy
                .iter()
                .all(|(l, _)| l.sql_type == legacy[0].0.sql_type) =>
            {
                legacy[0].0.sql_type.clone()
            }
            None => return Err(bad(field("type"), format!("give the type of {name:?}"))),
        };
        // The migration adds its new column itself and drops it on
        // rollback; a column already there holds someone's data, which
        // dual-writes and the backfill would overwrite.
        if let Some(existing) = facts.column(name) {
            return Err(bad(
                field("new"),
                format!(
                    "{table} already has a column {name:?} ({}); a migration adds its new column itself, so name one that does not exist",
                    existing.sql_type
                ),
            ));
        }
        new.push(TypedColumn::new(name, ty));
    }
    let legacy_cols: Vec<TypedColumn> = legacy.iter().map(|(l, _)| l.clone()).collect();
    let forward = expressions(&c.forward, &new, &legacy_cols);
    let backward = expressions(&c.backward, &legacy_cols, &new);
    for (name, exprs, targets, sources) in [
        ("forward", &forward, &new, &legacy_cols),
        ("backward", &backward, &legacy_cols, &new),
    ] {
        check_expressions(client, facts, exprs, targets, sources)
            .await
            .map_err(|e| bad(field(name), e))?;
    }
    let default = match c.default.as_deref().map(str::trim) {
        None => None,
        Some(d) if d.eq_ignore_ascii_case("null") => None,
        Some(d) => {
            check_default(client, &new[0].sql_type, d)
                .await
                .map_err(|e| bad(field("default"), e))?;
            Some(d.to_owned())
        }
    };
    let group = c.is_group().then(|| Group {
        legacy: legacy_cols.clone(),
        new: new.clone(),
    });
    if group.is_some() && !c.lossy {
        round_trip(client, facts, &forward, &backward, &legacy_cols, &new)
            .await
            .map_err(|e| bad(format!("columns[{i}]"), e))?;
    }
    // A split is one pair per new column, a merge one per legacy column.
    let mut pairs = Vec::new();
    for (n, new_col) in new.iter().enumerate() {
        for (l, (legacy_col, position)) in legacy.iter().enumerate() {
            if n > 0 && l > 0 {
                continue;
            }
            let forward_takes_literals = group.is_none()
                && crate::literal_proof::forward_takes_literals(client, &forward[n], legacy_col)
                    .await;
            pairs.push(Pair {
                legacy: legacy_col.name.clone(),
                legacy_type: legacy_col.sql_type.clone(),
                new: new_col.name.clone(),
                new_type: new_col.sql_type.clone(),
                forward: forward[n].clone(),
                backward: backward[l].clone(),
                not_null: c.not_null,
                legacy_position: *position,
                default: default.clone(),
                group: group.clone(),
                forward_takes_literals,
            });
        }
    }
    Ok(pairs)
}

/// Each target column's expression as given, or for a plain pair the
/// cast of its one source column.
fn expressions(
    given: &Option<PerColumn>,
    targets: &[TypedColumn],
    sources: &[TypedColumn],
) -> Vec<String> {
    targets
        .iter()
        .map(|t| match given.as_ref().and_then(|g| g.of(&t.name)) {
            Some(e) => e.to_owned(),
            None => format!("{}::{}", ident::quote(&sources[0].name), t.sql_type),
        })
        .collect()
}

/// Each expression type-checks against the table (or, for `backward`,
/// against the new columns, which do not exist yet) and reads its sources
/// the way the proxy can substitute them.
async fn check_expressions(
    client: &mut Client,
    facts: &TableFacts,
    exprs: &[String],
    targets: &[TypedColumn],
    sources: &[TypedColumn],
) -> Result<(), String> {
    let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
    let row: Vec<String> = sources
        .iter()
        .map(|s| format!("NULL::{} AS {}", s.sql_type, ident::quote(&s.name)))
        .collect();
    let over_table = sources.iter().all(|s| facts.column(&s.name).is_some());
    for (expr, target) in exprs.iter().zip(targets) {
        let from = if over_table {
            facts.name.to_string()
        } else {
            format!("(SELECT {}) AS s", row.join(", "))
        };
        let sql = format!("EXPLAIN SELECT ({expr})::{} FROM {from}", target.sql_type);
        let tx = client.transaction().await.map_err(|e| db_message(&e))?;
        let result = tx.batch_execute(&sql).await;
        let _ = tx.rollback().await;
        result.map_err(|e| db_message(&e))?;
        Template::compile_over(expr, &names).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A split or merge must give back the legacy values: a sample of rows is
/// run through `forward` then `backward`, and mismatches are listed by key.
async fn round_trip(
    client: &mut Client,
    facts: &TableFacts,
    forward: &[String],
    backward: &[String],
    legacy: &[TypedColumn],
    new: &[TypedColumn],
) -> Result<(), String> {
    let legacy_names: Vec<&str> = legacy.iter().map(|c| c.name.as_str()).collect();
    let new_names: Vec<&str> = new.iter().map(|c| c.name.as_str()).collect();
    let refs: Vec<String> = legacy
        .iter()
        .map(|c| format!("t.{}", ident::quote(&c.name)))
        .collect();
    let mut computed = Vec::new();
    for (expr, column) in forward.iter().zip(new) {
        let t = Template::compile_over(expr, &legacy_names).map_err(|e| e.to_string())?;
        computed.push(format!("({})::{}", t.fill_each(&refs), column.sql_type));
    }
    let mut differs = Vec::new();
    for ((expr, column), r) in backward.iter().zip(legacy).zip(&refs) {
        let t = Template::compile_over(expr, &new_names).map_err(|e| e.to_string())?;
        let back = format!("({})::{}", t.fill_each(&computed), column.sql_type);
        differs.push(format!("{r} IS DISTINCT FROM {back}"));
    }
    let key = if facts.key.is_empty() {
        "t.ctid::text".to_owned()
    } else {
        let cols: Vec<String> = (facts.key.iter())
            .map(|k| format!("t.{}", ident::quote(k)))
            .collect();
        format!("ROW({})::text", cols.join(", "))
    };
    let sql = format!(
        "SELECT {key} FROM (SELECT * FROM {table} LIMIT {ROUND_TRIP_SAMPLE}) AS t WHERE {differs} LIMIT 5",
        table = facts.name,
        differs = differs.join(" OR "),
    );
    let rows = client.query(&sql, &[]).await.map_err(|e| db_message(&e))?;
    if rows.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    Err(format!(
        "forward then backward does not give back the legacy values of the rows with keys {}; fix the expressions, or say \"lossy\": true if the loss is intended",
        keys.join(", ")
    ))
}

/// Rows that the round-trip check of a split or merge reads (the first
/// ones the scan meets: the check is a guard against a wrong mapping, not a
/// proof; parity checks every row later).
const ROUND_TRIP_SAMPLE: u32 = 10_000;

/// Accepts a default only if adding a column with it is metadata-only
/// (PostgreSQL stores it as the column's "missing" value instead of
/// rewriting the table), tried on a rolled-back temporary table.
async fn check_default(client: &mut Client, ty: &str, default: &str) -> Result<(), String> {
    let msg = |e: tokio_postgres::Error| {
        e.as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_else(|| e.to_string())
    };
    if default.contains(';') {
        return Err("not an expression".into());
    }
    let tx = client.transaction().await.map_err(msg)?;
    let tried = async {
        tx.batch_execute(&format!(
            "CREATE TEMP TABLE switchyard_default_check (k int) ON COMMIT DROP;
             INSERT INTO switchyard_default_check VALUES (1);
             ALTER TABLE switchyard_default_check ADD COLUMN c {ty} DEFAULT ({default})"
        ))
        .await?;
        tx.query_one(
            "SELECT atthasmissing FROM pg_attribute
             WHERE attrelid = 'switchyard_default_check'::regclass AND attname = 'c'",
            &[],
        )
        .await
        .map(|r| r.get::<_, bool>(0))
    }
    .await;
    let _ = tx.rollback().await;
    match tried {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "{default} is volatile (or NULL): adding the column with it would rewrite the table"
        )),
        Err(e) => Err(msg(e)),
    }
}

/// The type name as `format_type` prints it (typmod included), so that
/// comparisons are exact; found through a rolled-back temporary table.
async fn canonical_type(client: &mut Client, ty: &str) -> Result<String, String> {
    let msg = |e: tokio_postgres::Error| {
        e.as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_else(|| e.to_string())
    };
    if ty.contains(';') {
        return Err("not a type".into());
    }
    let tx = client.transaction().await.map_err(msg)?;
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE switchyard_type_check (x {ty}) ON COMMIT DROP"
    ))
    .await
    .map_err(msg)?;
    let row = tx
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = 'switchyard_type_check'::regclass AND attname = 'x'",
            &[],
        )
        .await
        .map_err(msg)?;
    tx.rollback().await.map_err(msg)?;
    Ok(row.get(0))
}
