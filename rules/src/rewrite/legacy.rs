//! Which migrations a statement still depends on the legacy side of: it
//! names a legacy column, or takes the table's shape as the application
//! knew it (`*`, an INSERT without a column list). `complete` waits until
//! no proxy has seen such a statement for a while.
//!
//! Lexical and conservative: a statement that mentions a migrated table
//! and one of those counts for every migration of that table whose legacy
//! column it names (or for all of them for `*` and positional INSERTs).

use sqlparser::ast::{SetExpr, Statement};

use super::scan::Scan;
use crate::active::ActiveRules;

/// The migrations (deduplicated, in rule order) that `statements`, parsed
/// from `sql`, depend on the legacy side of.
pub(crate) fn uses(
    rules: &ActiveRules,
    sql: &str,
    scanned: &Scan,
    statements: &[Statement],
) -> Vec<String> {
    let shaped = scanned.tokens.iter().any(|t| &sql[t.start..t.end] == "*")
        || statements.iter().any(positional_insert);
    let mut out: Vec<String> = Vec::new();
    for table in rules.tables.iter().filter(|t| t.is_active()) {
        if !scanned.mentions(sql, &table.rules.facts.name.name) {
            continue;
        }
        for m in &table.mappings {
            let named = shaped || scanned.mentions(sql, &m.mapping.legacy);
            if named && !out.contains(&m.mapping.migration) {
                out.push(m.mapping.migration.clone());
            }
        }
    }
    out
}

/// `INSERT INTO t VALUES ...` / `SELECT ...`: the values go by position.
fn positional_insert(statement: &Statement) -> bool {
    match statement {
        Statement::Insert(i) => i.columns.is_empty(),
        Statement::Query(q) => match q.body.as_ref() {
            SetExpr::Insert(s) => positional_insert(s),
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::fixtures::users;
    use crate::{ActiveRules, Phase, Rewrite};

    fn uses(phase: Phase, sql: &str) -> Vec<String> {
        let rules = ActiveRules::compile(users(phase.routing().unwrap())).unwrap();
        match rules.rewrite(sql, &["public".to_string()]) {
            Rewrite::Rewritten(_, uses) => uses.to_vec(),
            _ => vec![],
        }
    }

    #[test]
    fn the_legacy_name_star_and_positional_inserts_count() {
        let m = vec!["users-email".to_string()];
        for sql in [
            "select email from users where id = 1",
            "select * from users",
            "insert into users values (1, 'a@x')",
            "update users set email = $1 where id = $2",
        ] {
            assert_eq!(uses(Phase::Contracted, sql), m, "{sql}");
        }
        assert_eq!(uses(Phase::ReadsSwitched, "select u.email from users u"), m);
    }

    #[test]
    fn the_new_name_alone_does_not() {
        for sql in [
            "insert into users (id, email_address) values (1, 'a@x')",
            "update users set email_address = $1 where id = $2",
        ] {
            assert!(uses(Phase::ReadsSwitched, sql).is_empty(), "{sql}");
        }
    }
}
