//! Indexes that follow a column: after the backfill, every index covering
//! the legacy column is rebuilt on the new one with `CREATE INDEX
//! CONCURRENTLY`; at contract the legacy ones are dropped concurrently (or,
//! when they back a unique constraint, the constraint moves to the new
//! index). Nothing here takes a lock that blocks reads or writes for long.

use serde::Serialize;
use switchyard_rules::ident;
use switchyard_rules::migration::Pair;
use switchyard_rules::template::Template;
use switchyard_rules::Group;
use tokio_postgres::Client;

use crate::error::ControlError;

/// An index whose definition references a column.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CoveringIndex {
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
pub(crate) async fn covering(
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
pub(crate) fn rebuild_statement(
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
pub(crate) async fn rebuild(
    client: &Client,
    table: &str,
    from: &str,
    to: &str,
) -> Result<Vec<IndexReport>, ControlError> {
    let found = covering(client, table, from).await?;
    build(client, found, to, |index| {
        let sql = rebuild_statement(index, table, from, to)?;
        Ok((renamed(&index.name, from, to), sql))
    })
    .await
}

/// A split's or merge's legacy column as the rebuilt index reads it:
/// `backward` over the new columns, cast to the legacy type (the very
/// expression reads of the legacy name are rewritten to, so that the
/// planner uses the index for them).
#[derive(Debug, Clone)]
pub(crate) struct Derived {
    /// The legacy column.
    pub legacy: String,
    /// `(backward)::legacy_type` over the new columns, unqualified.
    pub expression: String,
}

/// Rebuilds every index covering a legacy column of a split or merge as an
/// expression index over the new columns, concurrently; each index once,
/// with every legacy column of the group in it replaced.
pub(crate) async fn rebuild_group(
    client: &Client,
    table: &str,
    derived: &[Derived],
    label: &str,
) -> Result<Vec<IndexReport>, ControlError> {
    let mut found: Vec<CoveringIndex> = Vec::new();
    for d in derived {
        for index in covering(client, table, &d.legacy).await? {
            if !found.iter().any(|f| f.name == index.name) {
                found.push(index);
            }
        }
    }
    build(client, found, label, |index| {
        let sql = derive_statement(index, table, derived, label)?;
        Ok((derived_name(&index.name, derived, label), sql))
    })
    .await
}

/// Per split or merge among `pairs`: a label for index names (the new
/// columns' names) and each legacy column's derived expression.
pub(crate) fn derived_of(pairs: &[Pair]) -> Vec<(String, Vec<Derived>)> {
    let mut out: Vec<(Option<&Group>, String, Vec<Derived>)> = Vec::new();
    for p in pairs {
        let Some(group) = &p.group else { continue };
        let new: Vec<&str> = group.new.iter().map(|c| c.name.as_str()).collect();
        let Ok(backward) = Template::compile_over(&p.backward, &new) else {
            continue;
        };
        let quoted: Vec<String> = new.iter().map(|n| ident::quote(n)).collect();
        let d = Derived {
            legacy: p.legacy.clone(),
            expression: format!("{}::{}", backward.fill_each(&quoted), p.legacy_type),
        };
        match out.iter_mut().find(|(g, ..)| *g == Some(group)) {
            Some((_, _, ds)) if ds.iter().any(|x| x.legacy == d.legacy) => {}
            Some((_, _, ds)) => ds.push(d),
            None => out.push((Some(group), new.join("_"), vec![d])),
        }
    }
    out.into_iter().map(|(_, label, ds)| (label, ds)).collect()
}

fn derived_name(index: &str, derived: &[Derived], label: &str) -> String {
    let first = derived.first().map(|d| d.legacy.as_str()).unwrap_or("");
    renamed(index, first, label)
}

/// `CREATE [UNIQUE] INDEX CONCURRENTLY` for `index` with the legacy
/// columns of `derived` replaced by their expressions.
pub(crate) fn derive_statement(
    index: &CoveringIndex,
    table: &str,
    derived: &[Derived],
    label: &str,
) -> Result<String, String> {
    let using = index
        .definition
        .find(" USING ")
        .ok_or("unexpected index definition")?;
    let tail = &index.definition[using + " USING ".len()..];
    let names: Vec<&str> = derived.iter().map(|d| d.legacy.as_str()).collect();
    let values: Vec<String> = derived
        .iter()
        .map(|d| format!("({})", d.expression))
        .collect();
    let tail = Template::compile_over(tail, &names)
        .map_err(|e| e.to_string())?
        .splice_each(&values);
    Ok(format!(
        "CREATE {}INDEX CONCURRENTLY IF NOT EXISTS {} ON {table} USING {tail}",
        if index.unique { "UNIQUE " } else { "" },
        ident::quote(&derived_name(&index.name, derived, label)),
    ))
}

/// Builds `found`'s replacements, concurrently; `plan` gives each one's
/// new name and statement, or why it is skipped.
async fn build(
    client: &Client,
    found: Vec<CoveringIndex>,
    to: &str,
    plan: impl Fn(&CoveringIndex) -> Result<(String, String), String>,
) -> Result<Vec<IndexReport>, ControlError> {
    // Concurrent builds only wait; they block no reads or writes.
    client
        .batch_execute("SET lock_timeout = 0; SET statement_timeout = 0")
        .await?;
    let mut reports = Vec::new();
    for index in found {
        if !index.valid {
            continue;
        }
        let (new_name, sql) = match plan(&index) {
            Ok(planned) => planned,
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
    fn a_split_column_is_rebuilt_as_its_backward_expression() {
        let mut i = index(
            "CREATE UNIQUE INDEX people_full_name_key ON public.people USING btree (full_name)",
            true,
        );
        i.name = "people_full_name_key".into();
        let derived = [Derived {
            legacy: "full_name".into(),
            expression: "((first_name || ' ' || last_name))::text".into(),
        }];
        assert_eq!(
            derive_statement(&i, "public.people", &derived, "first_name_last_name").unwrap(),
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS people_first_name_last_name_key ON public.people USING btree ((((first_name || ' ' || last_name))::text))"
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
