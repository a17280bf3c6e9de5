//! Catalog facts and spec validation against the live database.

use switchyard_rules::migration::MigrationSpec;
use switchyard_rules::{ColumnFact, QualifiedName, TableFacts, UniqueKey};
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
        let field = |f: &str| format!("columns[{i}].{f}");
        let legacy_position = facts
            .columns
            .iter()
            .position(|col| col.name == c.legacy)
            .ok_or_else(|| {
                ControlError::BadRequest(format!(
                    "{}: {table} has no column {:?}",
                    field("legacy"),
                    c.legacy
                ))
            })?;
        if facts.key.contains(&c.legacy) {
            return Err(ControlError::BadRequest(format!(
                "{}: {:?} is part of the key {:?} that the backfill walks; it cannot be migrated",
                field("legacy"),
                c.legacy,
                facts.key
            )));
        }
        let legacy_type = facts.columns[legacy_position].sql_type.clone();
        let new_type = match &c.sql_type {
            Some(t) => canonical_type(client, t)
                .await
                .map_err(|e| ControlError::BadRequest(format!("{}: {e}", field("type"))))?,
            None => legacy_type.clone(),
        };
        // The migration adds its new column itself and drops it on
        // rollback; a column already there holds someone's data, which
        // dual-writes and the backfill would overwrite.
        if let Some(existing) = facts.column(&c.new) {
            return Err(ControlError::BadRequest(format!(
                "{}: {table} already has a column {:?} ({}); a migration adds its new column itself, so name one that does not exist",
                field("new"),
                c.new,
                existing.sql_type
            )));
        }
        let legacy_ident = switchyard_rules::ident::quote(&c.legacy);
        let new_ident = switchyard_rules::ident::quote(&c.new);
        let forward = c
            .forward
            .clone()
            .unwrap_or_else(|| format!("{legacy_ident}::{new_type}"));
        let backward = c
            .backward
            .clone()
            .unwrap_or_else(|| format!("{new_ident}::{legacy_type}"));
        let checks = [
            ("forward", format!("SELECT ({forward})::{new_type} FROM {table}")),
            (
                "backward",
                format!("SELECT ({backward})::{legacy_type} FROM (SELECT NULL::{new_type} AS {new_ident}) AS s"),
            ),
        ];
        for (name, sql) in checks {
            let tx = client.transaction().await?;
            let result = tx.batch_execute(&format!("EXPLAIN {sql}")).await;
            tx.rollback().await?;
            if let Err(e) = result {
                let msg = e
                    .as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_else(|| e.to_string());
                return Err(ControlError::BadRequest(format!("{}: {msg}", field(name))));
            }
        }
        // The proxy needs each expression to read its own column.
        use switchyard_rules::template::Template;
        for (name, expr, column) in [
            ("forward", &forward, &c.legacy),
            ("backward", &backward, &c.new),
        ] {
            if let Err(e) = Template::compile(expr, column) {
                return Err(ControlError::BadRequest(format!("{}: {e}", field(name))));
            }
        }
        let default = match c.default.as_deref().map(str::trim) {
            None => None,
            Some(d) if d.eq_ignore_ascii_case("null") => None,
            Some(d) => {
                check_default(client, &new_type, d)
                    .await
                    .map_err(|e| ControlError::BadRequest(format!("{}: {e}", field("default"))))?;
                Some(d.to_owned())
            }
        };
        pairs.push(Pair {
            legacy: c.legacy.clone(),
            legacy_type,
            new: c.new.clone(),
            new_type,
            forward,
            backward,
            not_null: c.not_null,
            legacy_position,
            default,
        });
    }
    Ok((facts, pairs))
}

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
