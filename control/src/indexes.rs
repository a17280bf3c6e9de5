//! Indexes that follow a column: after the backfill, every index covering
//! the legacy column is rebuilt on the new one with `CREATE INDEX
//! CONCURRENTLY`; at contract the legacy ones are dropped concurrently (or,
//! when they back a unique constraint, the constraint moves to the new
//! index). Nothing here takes a lock that blocks reads or writes for long.

use serde::Serialize;
use switchyard_rules::ident;
use switchyard_rules::template::Template;
use tokio_postgres::Client;

use crate::error::ControlError;

/// An index whose definition references a column.
#[derive(Debug, Clone, Serialize)]
pub struct CoveringIndex {
    /// Index name (unqualified; it lives in the table's schema).
    pub name: String,
    /// The table's schema.
    pub schema: String,
    /// `pg_get_indexdef`.
    pub definition: String,
    /// A unique index.
    pub unique: bool,
    /// Built completely (an INVALID index is a failed concurrent build).
    pub valid: bool,
    /// The primary key.
    pub primary: bool,
    /// The unique or exclusion constraint it backs, if any.
    pub constraint: Option<String>,
}

pub(crate) use switchyard_rules::migration::IndexReport;

/// Indexes of `table` (quoted, qualified) that depend on `column`.
pub async fn covering(
    client: &Client,
    table: &str,
    column: &str,
) -> Result<Vec<CoveringIndex>, ControlError> {
    let rows = client
        .query(
            "SELECT c.relname::text, n.nspname::text, pg_get_indexdef(i.indexrelid), i.indisunique,
                    i.indisvalid, i.indisprimary,
                    (SELECT co.conname::text FROM pg_constraint co
                     WHERE co.conindid = i.indexrelid AND co.conrelid = i.indrelid
                       AND co.contype IN ('u', 'p', 'x') LIMIT 1)
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attname = $2
             WHERE i.indrelid = $1::text::regclass
               -- Key and INCLUDE columns; expressions and predicates are
               -- recorded in pg_depend (constraint indexes only there).
               AND (a.attnum = ANY (i.indkey::int2[])
                    OR EXISTS (SELECT 1 FROM pg_depend d
                               WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                                 AND d.refobjid = i.indrelid AND d.refobjsubid = a.attnum))
             ORDER BY 1",
            &[&table, &column],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| CoveringIndex {
            name: r.get(0),
            schema: r.get(1),
            definition: r.get(2),
            unique: r.get(3),
            valid: r.get(4),
            primary: r.get(5),
            constraint: r.get(6),
        })
        .collect())
}

pub(crate) use switchyard_rules::ident::renamed;

/// `CREATE [UNIQUE] INDEX CONCURRENTLY` for `index` with column `from`
/// replaced by `to`, or why it cannot be rebuilt.
pub fn rebuild_statement(
    index: &CoveringIndex,
    table: &str,
    from: &str,
    to: &str,
) -> Result<String, String> {
    // pg_get_indexdef: CREATE [UNIQUE] INDEX name ON [ONLY] table USING am (...) ...
    let using = index
        .definition
        .find(" USING ")
        .ok_or("unexpected index definition")?;
    let tail = &index.definition[using + " USING ".len()..];
    let tail = Template::compile(tail, from)
        .map_err(|e| e.to_string())?
        .splice(&ident::quote(to));
    Ok(format!(
        "CREATE {}INDEX CONCURRENTLY IF NOT EXISTS {} ON {table} USING {tail}",
        if index.unique { "UNIQUE " } else { "" },
        ident::quote(&renamed(&index.name, from, to)),
    ))
}

/// Whether an index with this name exists in `schema`, and if it is valid.
async fn existing(client: &Client, schema: &str, name: &str) -> Result<Option<bool>, ControlError> {
    Ok(client
        .query_opt(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &name],
        )
        .await?
        .map(|r| r.get(0)))
}

fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident::quote(schema), ident::quote(name))
}

/// Rebuilds every index covering `from` on `to`, concurrently. An INVALID
/// index left by an earlier failed try is dropped first. A build that
/// fails (a unique index over values that collide after `forward`) is
/// cleaned up and reported as an error naming the index.
pub async fn rebuild(
    client: &Client,
    table: &str,
    from: &str,
    to: &str,
) -> Result<Vec<IndexReport>, ControlError> {
    // Concurrent builds only wait; they block no reads or writes.
    client
        .batch_execute("SET lock_timeout = 0; SET statement_timeout = 0")
        .await?;
    let mut reports = Vec::new();
    for index in covering(client, table, from).await? {
        if !index.valid {
            continue;
        }
        let new_name = renamed(&index.name, from, to);
        let sql = match rebuild_statement(&index, table, from, to) {
            Ok(sql) => sql,
            Err(reason) => {
                reports.push(IndexReport {
                    index: index.name,
                    sql: None,
                    outcome: "skipped".into(),
                    reason: Some(reason),
                });
                continue;
            }
        };
        match existing(client, &index.schema, &new_name).await? {
            Some(true) => {
                reports.push(IndexReport {
                    index: new_name,
                    sql: None,
                    outcome: "exists".into(),
                    reason: None,
                });
                continue;
            }
            Some(false) => {
                let drop = format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS {}",
                    qualified(&index.schema, &new_name)
                );
                client.batch_execute(&drop).await?;
            }
            None => {}
        }
        if let Err(e) = client.batch_execute(&sql).await {
            let drop = format!(
                "DROP INDEX CONCURRENTLY IF EXISTS {}",
                qualified(&index.schema, &new_name)
            );
            let _ = client.batch_execute(&drop).await;
            let msg = e
                .as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_else(|| e.to_string());
            return Err(ControlError::Conflict(format!(
                "rebuilding index {} on {to} failed: {msg}",
                index.name
            )));
        }
        reports.push(IndexReport {
            index: new_name,
            sql: Some(sql),
            outcome: "created".into(),
            reason: None,
        });
    }
    client
        .batch_execute("RESET lock_timeout; RESET statement_timeout")
        .await?;
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(definition: &str, unique: bool) -> CoveringIndex {
        CoveringIndex {
            name: "users_email_key".into(),
            schema: "public".into(),
            definition: definition.into(),
            unique,
            valid: true,
            primary: false,
            constraint: None,
        }
    }

    #[test]
    fn rebuilds_keep_method_expressions_include_and_predicate() {
        let i = index(
            "CREATE UNIQUE INDEX users_email_key ON public.users USING btree (lower(email), id DESC) INCLUDE (name) WHERE (email IS NOT NULL)",
            true,
        );
        assert_eq!(
            rebuild_statement(&i, "public.users", "email", "email_address").unwrap(),
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS users_email_address_key ON public.users USING btree (lower(email_address), id DESC) INCLUDE (name) WHERE (email_address IS NOT NULL)"
        );
    }

    #[test]
    fn names_move_with_the_column_within_63_bytes() {
        assert_eq!(
            renamed("users_email_idx", "email", "mail"),
            "users_mail_idx"
        );
        assert_eq!(renamed("by_addr", "email", "mail"), "by_addr_mail");
        assert_eq!(renamed(&"x".repeat(60), "email", "mail").len(), 63);
    }
}
