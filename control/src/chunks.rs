//! The SQL of one backfill or parity chunk: keyset ranges over the key
//! (composite keys too) or, for a table without one, `ctid` page ranges.
//! Pure text building; the jobs run it.

use crate::jobs::{Direction, Target};

/// Each written column once (the pairs of a split share their legacy
/// column, those of a merge their new one), with its type, the expression
/// computing it and the columns that expression reads.
fn copies(t: &Target) -> Vec<(&str, &str, &str, Vec<String>)> {
    let mut out: Vec<(&str, &str, &str, Vec<String>)> = Vec::new();
    for p in &t.pairs {
        let (forward_sources, backward_sources) = p.sources();
        let (target, ty, expr, sources) = match t.direction {
            Direction::Forward => (&p.new, &p.new_type, &p.forward, forward_sources),
            Direction::Backward => (&p.legacy, &p.legacy_type, &p.backward, backward_sources),
        };
        if out.iter().any(|(written, ..)| written == target) {
            continue;
        }
        let sources = sources.into_iter().map(|c| c.name).collect();
        out.push((target, ty, expr, sources));
    }
    out
}

fn set_clause(t: &Target) -> String {
    copies(t)
        .iter()
        .map(|(target, ty, expr, _)| {
            format!(
                "{} = ({expr})::{ty}",
                switchyard_rules::ident::quote(target)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn mismatch(t: &Target, alias: &str) -> String {
    copies(t)
        .iter()
        .map(|(target, ty, expr, sources)| {
            let expr = qualify(expr, sources, alias);
            format!(
                "{alias}.{} IS DISTINCT FROM ({expr})::{ty}",
                switchyard_rules::ident::quote(target)
            )
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// `(k1, k2)` qualified by `alias`.
fn key_row(t: &Target, alias: &str) -> String {
    let cols: Vec<String> = t.key.iter().map(|k| format!("{alias}.{k}")).collect();
    format!("({})", cols.join(", "))
}

/// `($n[1]::type1, $n[2]::type2)`: a key passed as a text array, typed.
fn key_param(t: &Target, n: usize) -> String {
    let vals: Vec<String> = t
        .key_types
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("(${n}::text[])[{}]::{ty}", i + 1))
        .collect();
    format!("({})", vals.join(", "))
}

/// Keyset order over the key, ascending or descending.
fn key_order(t: &Target, alias: &str, desc: bool) -> String {
    let dir = if desc { " DESC" } else { "" };
    t.key
        .iter()
        .map(|k| format!("{alias}.{k}{dir}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One backfill chunk: the rows after checkpoint `$1` (a text array, NULL
/// at the start) up to the `$2`-th key after it, or up to the end key `$3`
/// (the last key when the backfill started: later rows were dual-written
/// from their first write) if fewer are left; updated where they differ.
/// Answers the last key (NULL when nothing is left), the rows visited and
/// the rows changed.
///
/// The update is one index range scan between two keys: a join with the
/// chunk's keys let PostgreSQL merge-join from the table's first key, so
/// that each chunk read every row before it (quadratic over a backfill).
pub(crate) fn chunk_sql(t: &Target) -> String {
    if t.key.is_empty() {
        return ctid_chunk_sql(t);
    }
    let key_text: Vec<String> = t.key.iter().map(|k| format!("s.{k}::text")).collect();
    // Keys after checkpoint `$1` (all of them at the start).
    let after = |alias| {
        format!(
            "($1::text[] IS NULL OR {} > {})",
            key_row(t, alias),
            key_param(t, 1)
        )
    };
    let rest = format!(
        "{} AND {} <= {}",
        after("s"),
        key_row(t, "s"),
        key_param(t, 3)
    );
    let upper: Vec<String> = t
        .key_types
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("(SELECT k[{}] FROM bound)::{ty}", i + 1))
        .collect();
    format!(
        "WITH hi AS (SELECT ARRAY[{key_text}] AS k FROM {table} AS s WHERE {rest}
                     ORDER BY {order} OFFSET $2::bigint - 1 LIMIT 1),
              bound AS (SELECT coalesce((SELECT k FROM hi), $3::text[]) AS k),
              upd AS (UPDATE {table} AS t SET {set}
                      WHERE {after_t} AND {row_t} <= ({upper})
                        AND ({mismatch}) RETURNING 1)
         SELECT coalesce((SELECT k FROM hi),
                         (SELECT ARRAY[{key_text}] FROM {table} AS s WHERE {rest} ORDER BY {desc} LIMIT 1)),
                CASE WHEN EXISTS (SELECT FROM hi) THEN $2::bigint
                     ELSE (SELECT count(*) FROM {table} AS s WHERE {rest}) END,
                (SELECT count(*) FROM upd)",
        key_text = key_text.join(", "),
        table = t.table,
        order = key_order(t, "s", false),
        desc = key_order(t, "s", true),
        set = set_clause(t),
        after_t = after("t"),
        row_t = key_row(t, "t"),
        upper = upper.join(", "),
        mismatch = mismatch(t, "t"),
    )
}

/// The page range of a chunk over a table without a key: from checkpoint
/// `$1` (a one-element text array: the next page) for about `$2` rows'
/// worth of pages. The bounds are scalar subqueries so that PostgreSQL
/// (14+) runs a TID range scan, never a sequential one.
fn ctid_range(t: &Target) -> String {
    let table = t.table.replace('\'', "''");
    format!(
        "r AS (SELECT coalesce(($1::text[])[1]::bigint, 0) AS lo,
                      greatest(1, $2::bigint / greatest(1, (SELECT (reltuples / greatest(relpages, 1))::bigint
                                                            FROM pg_class WHERE oid = '{table}'::regclass))) AS pages,
                      pg_relation_size('{table}'::regclass) / current_setting('block_size')::bigint AS relpages),
         b AS (SELECT lo, pages, relpages, format('(%s,0)', lo)::tid AS lo_tid,
                      format('(%s,0)', lo + pages)::tid AS hi_tid FROM r)"
    )
}

/// [`chunk_sql`] for a table without a key: a page range by `ctid`. The
/// checkpoint is the next page; rows an update moved behind it are already
/// in step, and rows it moved ahead are skipped by the mismatch filter.
/// `$3` holds the table's page count when the backfill started.
fn ctid_chunk_sql(t: &Target) -> String {
    format!(
        "WITH {range},
              upd AS (UPDATE {table} AS t SET {set}
                      WHERE t.ctid >= (SELECT lo_tid FROM b) AND t.ctid < (SELECT hi_tid FROM b)
                        AND ({mismatch}) RETURNING 1)
         SELECT CASE WHEN (SELECT lo FROM b) < least((SELECT relpages FROM b), coalesce(($3::text[])[1]::bigint, (SELECT relpages FROM b)))
                     THEN ARRAY[(SELECT lo + pages FROM b)::text] END,
                (SELECT count(*) FROM {table} AS s
                 WHERE s.ctid >= (SELECT lo_tid FROM b) AND s.ctid < (SELECT hi_tid FROM b)),
                (SELECT count(*) FROM upd)",
        range = ctid_range(t),
        table = t.table,
        set = set_clause(t),
        mismatch = mismatch(t, "t"),
    )
}

/// [`verify_sql`] for a table without a key; sample keys are `ctid`s.
fn ctid_verify_sql(t: &Target) -> String {
    format!(
        "WITH {range},
              c AS (SELECT t.ctid::text AS k, ({mismatch}) AS bad FROM {table} AS t
                    WHERE t.ctid >= (SELECT lo_tid FROM b) AND t.ctid < (SELECT hi_tid FROM b))
         SELECT CASE WHEN (SELECT lo FROM b) < (SELECT relpages FROM b)
                     THEN ARRAY[(SELECT lo + pages FROM b)::text] END,
                (SELECT count(*) FROM c), (SELECT count(*) FROM c WHERE bad),
                (SELECT array_agg(k) FROM (SELECT k FROM c WHERE bad LIMIT 5) s)",
        range = ctid_range(t),
        table = t.table,
        mismatch = mismatch(t, "t"),
    )
}

/// Where a backfill started now ends (answers a text array or NULL).
pub(crate) fn end_sql(t: &Target) -> String {
    if t.key.is_empty() {
        let table = t.table.replace('\'', "''");
        return format!(
            "SELECT ARRAY[(pg_relation_size('{table}'::regclass) / current_setting('block_size')::bigint)::text]"
        );
    }
    let key_text: Vec<String> = t.key.iter().map(|k| format!("t.{k}::text")).collect();
    format!(
        "SELECT ARRAY[{}] FROM {} AS t ORDER BY {} LIMIT 1",
        key_text.join(", "),
        t.table,
        key_order(t, "t", true)
    )
}

/// One parity chunk: the last key, rows seen, mismatches and up to five
/// sample keys.
pub(crate) fn verify_sql(t: &Target) -> String {
    if t.key.is_empty() {
        return ctid_verify_sql(t);
    }
    let key_text: Vec<String> = t.key.iter().map(|k| format!("t.{k}::text")).collect();
    format!(
        "WITH c AS (SELECT ARRAY[{key_text}] AS k, row_number() OVER (ORDER BY {order}) AS n, ({mismatch}) AS bad
                    FROM (SELECT * FROM {table} AS t WHERE $1::text[] IS NULL OR {row} > {param}
                          ORDER BY {order} LIMIT $2) AS t)
         SELECT (SELECT k FROM c ORDER BY n DESC LIMIT 1), (SELECT count(*) FROM c),
                (SELECT count(*) FROM c WHERE bad),
                (SELECT array_agg(array_to_string(k, ',')) FROM (SELECT k FROM c WHERE bad ORDER BY n LIMIT 5) s)",
        key_text = key_text.join(", "),
        mismatch = mismatch(t, "t"),
        table = t.table,
        row = key_row(t, "t"),
        param = key_param(t, 1),
        order = key_order(t, "t", false),
    )
}

/// An expression with its source columns qualified by `alias`.
fn qualify(expr: &str, columns: &[String], alias: &str) -> String {
    let names: Vec<&str> = columns.iter().map(String::as_str).collect();
    match switchyard_rules::template::Template::compile_over(expr, &names) {
        Ok(t) => {
            let refs: Vec<String> = (columns.iter())
                .map(|c| format!("{alias}.{}", switchyard_rules::ident::quote(c)))
                .collect();
            t.fill_each(&refs)
        }
        Err(_) => expr.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_predicates_qualify_the_legacy_column() {
        assert_eq!(
            qualify("lower(email)", &["email".into()], "t"),
            "(lower((t.email)))"
        );
        assert_eq!(
            qualify("a || b", &["a".into(), "b".into()], "t"),
            "((t.a) || (t.b))"
        );
    }
}
