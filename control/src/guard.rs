//! The guard trigger: a safety net, from dual-write until contract, for
//! writers that bypass the proxy (cron jobs, psql, COPY, other services).
//!
//! Two `BEFORE` row triggers whose `WHEN` clauses are false for a row that
//! is already consistent, so the proxy's dual-writes never call the
//! function:
//! - INSERT: some new column differs from `forward(legacy)`;
//! - UPDATE (only one that sets a column of the mapping): the same test.
//!   The backfill's updates set new to `forward(legacy)` and stay out too.
//!
//! PostgreSQL rebuilds a WHEN clause from its stored node tree on every
//! execution of a statement, so it is kept to that one test: which side
//! was written is decided in the function, which proxied writes never
//! reach (see bench/RESULTS.md for the instructions each form costs).
//!
//! The function heals only a pair that is inconsistent both ways (new is
//! not `forward(legacy)` and legacy is not `backward(new)`), from the side
//! that was written: on UPDATE only if exactly one side changed, from
//! that side (an unchanged row that is not backfilled yet is left to the
//! backfill); on INSERT the legacy side unless only the new one was given.
//! Both directions are covered
//! whatever the phase: writers that know only the legacy name fill the new
//! column, writers that know only the new name fill the legacy one.
//!
//! The SQL here is pure text; the DDL runner applies it.

use switchyard_rules::ident::quote;
use switchyard_rules::migration::{distinct, Pair};
use switchyard_rules::template::Template;
use switchyard_rules::TypedColumn;

use crate::error::ControlError;

/// The dollar-quote tag of the function body.
const TAG: &str = "$switchyard_guard$";

/// Names of the guard's function and two triggers for migration `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GuardNames {
    /// `switchyard.guard_...`, quoted.
    pub function: String,
    /// The INSERT trigger, quoted.
    pub on_insert: String,
    /// The UPDATE trigger, quoted.
    pub on_update: String,
}

impl GuardNames {
    /// Names unique per migration and within 63 bytes: a readable prefix
    /// of the name and a hash of all of it.
    pub(crate) fn of(migration: &str) -> Self {
        let hash = fnv1a(migration);
        let prefix: String = migration.chars().take(32).collect();
        let base = format!("{prefix}_{hash:08x}");
        GuardNames {
            function: format!("switchyard.{}", quote(&format!("guard_{base}"))),
            on_insert: quote(&format!("switchyard_guard_{base}_i")),
            on_update: quote(&format!("switchyard_guard_{base}_u")),
        }
    }
}

fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h: u32, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// One pair's columns (quoted) and expressions over `NEW`.
struct PairSql {
    legacy_column: String,
    new_column: String,
    legacy: String,
    new: String,
    forward: String,
    backward: String,
    /// No legacy column of the pair's group changed (UPDATE).
    legacy_kept: String,
    /// No new column of the pair's group changed (UPDATE).
    new_kept: String,
    /// No legacy column of the pair's group was given (INSERT).
    legacy_absent: String,
}

impl PairSql {
    fn of(p: &Pair) -> Result<Self, ControlError> {
        // A split's or merge's expressions read every column of its group.
        let fill = |expr: &str, sources: &[TypedColumn]| {
            let names: Vec<&str> = sources.iter().map(|c| c.name.as_str()).collect();
            let refs: Vec<String> = (sources.iter())
                .map(|c| format!("NEW.{}", quote(&c.name)))
                .collect();
            Template::compile_over(expr, &names)
                .map(|t| t.fill_each(&refs))
                .map_err(|e| ControlError::Internal(e.to_string()))
        };
        let (legacy_column, new_column) = (quote(&p.legacy), quote(&p.new));
        let legacy = format!("NEW.{legacy_column}");
        let new = format!("NEW.{new_column}");
        let (forward_sources, backward_sources) = p.sources();
        let forward = fill(&p.forward, &forward_sources)?;
        let backward = fill(&p.backward, &backward_sources)?;
        for expr in [&forward, &backward] {
            if expr.contains(TAG) {
                return Err(ControlError::BadRequest(format!(
                    "an expression contains {TAG}, which the guard trigger's body is quoted with"
                )));
            }
        }
        // The side a write came from is the group's: a merge's city
        // written alone is a legacy write for the street pair too.
        let each = |columns: &[TypedColumn], f: &dyn Fn(&str) -> String| {
            (columns.iter())
                .map(|c| f(&quote(&c.name)))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let kept = |c: &str| format!("NEW.{c} IS NOT DISTINCT FROM OLD.{c}");
        let legacy_kept = each(&forward_sources, &kept);
        let new_kept = each(&backward_sources, &kept);
        let legacy_absent = each(&forward_sources, &|c| format!("NEW.{c} IS NULL"));
        Ok(PairSql {
            legacy_column,
            new_column,
            legacy,
            new,
            forward,
            backward,
            legacy_kept,
            new_kept,
            legacy_absent,
        })
    }

    /// Pair `i`'s decisions, taken on the row as written before any pair
    /// is healed (a merge's pairs heal one after the other, so deciding
    /// later would see the first one's work):
    /// - heal: an INSERT, or an UPDATE that changed exactly one side of
    ///   the pair's group, left it inconsistent both ways;
    /// - from new: on UPDATE no legacy column of the group changed; on
    ///   INSERT none was given.
    fn decide(&self, i: usize) -> String {
        let PairSql {
            legacy,
            new,
            forward,
            backward,
            legacy_kept,
            new_kept,
            legacy_absent,
            ..
        } = self;
        format!(
            "  heal_{i} boolean := (TG_OP = 'INSERT' OR ({legacy_kept}) <> ({new_kept})) AND {new} IS DISTINCT FROM {forward} AND {legacy} IS DISTINCT FROM {backward};\n\
             \x20 from_new_{i} boolean := (TG_OP = 'UPDATE' AND {legacy_kept}) OR (TG_OP = 'INSERT' AND {legacy_absent});\n"
        )
    }

    /// Heals pair `i` from the side that was written.
    fn heal(&self, i: usize) -> String {
        let PairSql {
            legacy,
            new,
            forward,
            backward,
            ..
        } = self;
        [
            format!("  IF heal_{i} THEN"),
            format!("    IF from_new_{i} THEN"),
            format!("      {legacy} := {backward};"),
            "    ELSE".to_string(),
            format!("      {new} := {forward};"),
            "    END IF;".to_string(),
            "  END IF;\n".to_string(),
        ]
        .join("\n")
    }
}

/// The statements that (re)install the guard for `pairs` of `table`
/// (quoted, qualified). Idempotent: a retried or repeated install replaces
/// what is there.
pub(crate) fn install_sql(
    table: &str,
    migration: &str,
    pairs: &[Pair],
) -> Result<String, ControlError> {
    let names = GuardNames::of(migration);
    let pairs: Vec<PairSql> = pairs.iter().map(PairSql::of).collect::<Result<_, _>>()?;
    let declare: String = pairs.iter().enumerate().map(|(i, p)| p.decide(i)).collect();
    let body: String = pairs.iter().enumerate().map(|(i, p)| p.heal(i)).collect();
    // One test for both triggers: some new column is not what forward
    // makes of the legacy columns.
    let when = pairs
        .iter()
        .map(|p| format!("{} IS DISTINCT FROM {}", p.new, p.forward))
        .collect::<Vec<_>>()
        .join(" OR ");
    // Only UPDATEs that set a column of the mapping consider the trigger:
    // the others cost nothing.
    let columns = distinct(
        pairs
            .iter()
            .flat_map(|p| [p.legacy_column.as_str(), p.new_column.as_str()]),
    )
    .join(", ");
    let GuardNames {
        function,
        on_insert: insert_trigger,
        on_update: update_trigger,
    } = names;
    Ok(format!(
        "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS {TAG}\n\
         DECLARE\n{declare}BEGIN\n{body}  RETURN NEW;\nEND\n{TAG};\n\
         DROP TRIGGER IF EXISTS {insert_trigger} ON {table};\n\
         DROP TRIGGER IF EXISTS {update_trigger} ON {table};\n\
         CREATE TRIGGER {insert_trigger} BEFORE INSERT ON {table} FOR EACH ROW \
         WHEN ({when}) EXECUTE FUNCTION {function}();\n\
         CREATE TRIGGER {update_trigger} BEFORE UPDATE OF {columns} ON {table} FOR EACH ROW \
         WHEN ({when}) EXECUTE FUNCTION {function}()"
    ))
}

/// The statements that remove the guard of `migration` from `table`, if
/// it is there.
pub(crate) fn drop_sql(table: &str, migration: &str) -> String {
    let GuardNames {
        function,
        on_insert,
        on_update,
    } = GuardNames::of(migration);
    format!(
        "DROP TRIGGER IF EXISTS {on_insert} ON {table}; \
         DROP TRIGGER IF EXISTS {on_update} ON {table}; \
         DROP FUNCTION IF EXISTS {function}()"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> Pair {
        Pair {
            legacy: "email".into(),
            legacy_type: "text".into(),
            new: "email_address".into(),
            new_type: "text".into(),
            forward: "lower(email)".into(),
            backward: "email_address".into(),
            not_null: false,
            legacy_position: 1,
            default: None,
            group: None,
            forward_takes_literals: false,
        }
    }

    #[test]
    fn names_fit_and_differ_for_long_names_sharing_a_prefix() {
        let a = GuardNames::of(&"a".repeat(63));
        let b = GuardNames::of(&format!("{}b", "a".repeat(62)));
        assert_ne!(a, b);
        for n in [&a.on_insert, &a.on_update] {
            assert!(n.trim_matches('"').len() <= 63, "{n}");
        }
        assert!(a.function.len() <= "switchyard.".len() + 63 + 2);
    }

    #[test]
    fn both_when_clauses_test_only_new_against_forward() {
        let sql = install_sql("public.users", "users-email", &[pair()]).unwrap();
        let when = "FOR EACH ROW WHEN (NEW.email_address IS DISTINCT FROM (lower((NEW.email))))";
        assert!(
            sql.contains(&format!("BEFORE INSERT ON public.users {when}")),
            "{sql}"
        );
        assert!(
            sql.contains(&format!(
                "BEFORE UPDATE OF email, email_address ON public.users {when}"
            )),
            "{sql}"
        );
        assert!(sql.contains("(TG_OP = 'INSERT' OR (NEW.email IS NOT DISTINCT FROM OLD.email) <> (NEW.email_address IS NOT DISTINCT FROM OLD.email_address))"), "{sql}");
        assert!(sql.contains("NEW.email := ((NEW.email_address));"), "{sql}");
        assert!(
            sql.contains("NEW.email_address := (lower((NEW.email)));"),
            "{sql}"
        );
    }

    #[test]
    fn an_expression_cannot_end_the_body() {
        let mut p = pair();
        p.forward = "lower(email) || '$switchyard_guard$'".into();
        assert!(install_sql("t", "m", &[p]).is_err());
    }
}
