//! What still depends on a column before it is dropped: views and rules,
//! triggers, foreign keys, check constraints, generated columns and
//! functions. `DROP COLUMN` would either fail on these or silently take
//! them with it, so contract refuses with the list instead.

use tokio_postgres::Client;

use crate::error::ControlError;

/// Objects that depend on `column` of `table` (quoted, qualified), one
/// human-readable line each. Constraints, indexes and triggers that
/// Switchyard itself manages (`switchyard_*` checks, the guard trigger,
/// indexes) are not listed.
pub(crate) async fn of_column(
    client: &Client,
    table: &str,
    column: &str,
) -> Result<Vec<String>, ControlError> {
    // Functions record column dependencies only for SQL-standard bodies;
    // other bodies are searched for the table and column as whole words.
    let rows = client
        .query(
            "WITH col AS (
               SELECT a.attrelid AS rel, a.attnum AS num FROM pg_attribute a
               WHERE a.attrelid = $1::text::regclass AND a.attname = $2 AND NOT a.attisdropped),
             word AS (
               SELECT '\\m' || regexp_replace($2, '([^[:alnum:]_])', '\\\\\\1', 'g') || '\\M' AS col_re,
                      '\\m' || regexp_replace(c.relname, '([^[:alnum:]_])', '\\\\\\1', 'g') || '\\M' AS tab_re
               FROM pg_class c WHERE c.oid = $1::text::regclass)
             SELECT DISTINCT 'view ' || r.ev_class::regclass::text
             FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid, col
             WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = col.rel AND d.refobjsubid = col.num
               AND r.ev_class <> col.rel
             UNION
             SELECT 'trigger ' || t.tgname::text FROM pg_trigger t, col, word
             WHERE t.tgrelid = col.rel AND NOT t.tgisinternal
               AND t.tgname NOT LIKE 'switchyard\\_guard\\_%'
               AND (col.num = ANY (t.tgattr::int2[])
                    OR EXISTS (SELECT 1 FROM pg_proc p WHERE p.oid = t.tgfoid AND p.prosrc ~* word.col_re)
                    OR EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_trigger'::regclass
                               AND d.objid = t.oid AND d.refobjid = col.rel AND d.refobjsubid = col.num))
             UNION
             SELECT 'foreign key ' || co.conname::text || ' on ' || co.conrelid::regclass::text
             FROM pg_constraint co, col
             WHERE co.contype = 'f' AND ((co.conrelid = col.rel AND col.num = ANY (co.conkey))
                                         OR (co.confrelid = col.rel AND col.num = ANY (co.confkey)))
             UNION
             SELECT 'check constraint ' || co.conname::text FROM pg_constraint co, col
             WHERE co.contype = 'c' AND co.conrelid = col.rel AND col.num = ANY (co.conkey)
               AND co.conname NOT LIKE 'switchyard\\_%'
             UNION
             SELECT 'generated column ' || a.attname::text FROM pg_attrdef ad
             JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
             JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid, col
             WHERE ad.adrelid = col.rel AND d.refobjid = col.rel AND d.refobjsubid = col.num
               AND a.attnum <> col.num
             UNION
             SELECT 'function ' || p.oid::regprocedure::text
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace, col, word
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'switchyard')
               AND (EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                            AND d.objid = p.oid AND d.refobjid = col.rel AND d.refobjsubid = col.num)
                    OR (p.prosrc ~* word.col_re AND p.prosrc ~* word.tab_re))
             ORDER BY 1",
            &[&table, &column],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Views that use any of `columns` of `table` (a write through one of them
/// would not be dual-written).
pub(crate) async fn views_using(
    client: &impl tokio_postgres::GenericClient,
    table: &switchyard_rules::QualifiedName,
    columns: &[String],
) -> Result<Vec<switchyard_rules::QualifiedName>, ControlError> {
    let rows = client
        .query(
            "SELECT DISTINCT vn.nspname::text, v.relname::text
             FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.refobjid = a.attrelid
                              AND d.refobjsubid = a.attnum
             JOIN pg_rewrite r ON r.oid = d.objid
             JOIN pg_class v ON v.oid = r.ev_class JOIN pg_namespace vn ON vn.oid = v.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = ANY($3)
               AND NOT a.attisdropped AND v.oid <> c.oid
             ORDER BY 1, 2",
            &[&table.schema, &table.name, &columns],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| switchyard_rules::QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}
