//! Whether a pair's `forward` may take a short string literal without the
//! cast to the legacy type (see `switchyard_rules::bare_literal`), proved
//! against the catalog when the migration is created.
//!
//! PostgreSQL keeps a view's analysed query tree (`pg_rewrite.ev_action`),
//! functions and operators resolved. Four views of `forward` over a probe
//! literal are compared, parser locations and the views' own ids left out:
//! 1. over `('p')::legacy_type` and over that cast on to `text`, whose
//!    trees differ only in how the relabelling to `text` is spelled when
//!    `forward` sees the legacy type's value as `text`;
//! 2. over `'p'` (unknown type) and over `('p')::text`, the same when the
//!    literal is resolved as `text`.
//!
//! Both hold: a literal of at most `n` bytes, which `varchar(n)` stores
//! unchanged, gives the same `forward` bare as cast. An overload for the
//! legacy type (`lower(varchar)`), a function that looks at its argument's
//! type (`pg_typeof`) or any error keeps the cast.

use switchyard_rules::bare_literal::length_bound;
use switchyard_rules::template::Template;
use switchyard_rules::TypedColumn;
use tokio_postgres::Client;

/// The probe: one character, within any length bound.
const PROBE: &str = "'p'";

/// Tree text that differs between two views of one expression.
const NOISE: &str = r":(location|stmt_location|stmt_len|relid|relabelformat) -?\d+";

/// Whether `forward` over `legacy` may take short string literals bare.
/// Never an error: what cannot be proved keeps the cast.
pub(crate) async fn forward_takes_literals(
    client: &mut Client,
    forward: &str,
    legacy: &TypedColumn,
) -> bool {
    if length_bound(&legacy.sql_type).is_none() {
        return false;
    }
    let Ok(template) = Template::compile(forward, &legacy.name) else {
        return false;
    };
    let ty = &legacy.sql_type;
    let args = [
        format!("({PROBE})::{ty}"),
        format!("(({PROBE})::{ty})::text"),
        PROBE.to_owned(),
        format!("({PROBE})::text"),
    ];
    let Ok(tx) = client.transaction().await else {
        return false;
    };
    let mut sql = String::new();
    for (i, arg) in args.iter().enumerate() {
        sql.push_str(&format!(
            "CREATE TEMP VIEW switchyard_literal_proof_{i} AS SELECT {} AS x;\n",
            template.fill(arg)
        ));
    }
    let tree = |i: usize| {
        format!(
            "(SELECT regexp_replace(ev_action::text, '{NOISE}', '', 'g') FROM pg_rewrite \
             WHERE ev_class = 'pg_temp.switchyard_literal_proof_{i}'::regclass)"
        )
    };
    let compare = format!(
        "SELECT {} = {} AND {} = {}",
        tree(0),
        tree(1),
        tree(2),
        tree(3)
    );
    let proved = match tx.batch_execute(&sql).await {
        Ok(()) => tx
            .query_one(&compare, &[])
            .await
            .is_ok_and(|row| row.get::<_, Option<bool>>(0) == Some(true)),
        Err(_) => false,
    };
    let _ = tx.rollback().await;
    proved
}
