//! The rewriter on arbitrary SQL (seeded from tests/corpus) under every
//! phase's rules, run where the proxy would run it (deep statements on a
//! big stack). Invariants: no panic and no stack overflow; a rewritten
//! statement parses; its parameters are the same; a SELECT's output
//! columns keep their names; a write that sets the legacy column while
//! writes are dual sets the new one too; the shape cache answers as a cold
//! rewrite does, for the text and for the text with other literals.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlparser::ast::{
    Expr, Insert, SelectItem, SetExpr, Statement, TableFactor, TableObject,
};
use switchyard_rules::fixtures::users;
use switchyard_rules::cache::{RewriteCache, SearchPath};
use switchyard_rules::normalize::normalize;
use switchyard_rules::rewrite::{self, scan, INLINE_LIMIT, STACK};
use switchyard_rules::{ActiveRules, Phase, Rewrite, WriteRoute};

const PHASES: [Phase; 7] = [
    Phase::Planned,
    Phase::Expanded,
    Phase::DualWrite,
    Phase::Backfilled,
    Phase::Verified,
    Phase::ReadsSwitched,
    Phase::Contracted,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    let Ok(sql) = std::str::from_utf8(text) else {
        return;
    };
    let phase = PHASES[selector as usize % PHASES.len()];
    let scanned = scan::scan(sql);
    let check = || check(phase, sql);
    if scanned.stack_bound() > INLINE_LIMIT {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .stack_size(STACK)
                .spawn_scoped(s, check)
                .unwrap()
                .join()
                .unwrap()
        })
    } else {
        check()
    }
});

/// The shape cache against cold rewrites: the text itself, then the same
/// shape with other literals (strings and numbers swapped for fixed ones).
fn shapes(rules: &ActiveRules, sql: &str) {
    let cache = RewriteCache::new(16);
    let path = SearchPath::new(vec!["public".into()]);
    let mut texts = vec![sql.to_owned()];
    if let Some(n) = normalize(sql) {
        texts.push(n.relabel(sql, |i, text| match text.starts_with(|c: char| c.is_ascii_digit()) {
            true => (i + 7).to_string(),
            false => format!("'v{i}'"),
        }));
    }
    for text in texts {
        let cached = cache.rewrite(rules, &text, &path);
        let cold = rules
            .may_rewrite(&text)
            .then(|| rules.rewrite(&text, path.schemas()));
        assert_eq!(cached.as_deref(), cold.as_ref(), "the shape cache differs\n{sql}\n{text}");
    }
}

fn check(phase: Phase, sql: &str) {
    for bare in [false, true] {
        check_under(phase, sql, bare);
    }
}

/// `check` under the fixture's rules, or (`bare`) with string literals of
/// up to 4 bytes going into `forward` without their cast.
fn check_under(phase: Phase, sql: &str, bare: bool) {
    let routing = phase.routing().unwrap();
    let mut set = users(routing);
    if bare {
        let m = &mut set.tables[0].mappings[0];
        m.forward_takes_literals = true;
        m.legacy_type = "character varying(4)".into();
    }
    let rules = ActiveRules::compile(set).unwrap();
    shapes(&rules, sql);
    let out = match rules.rewrite(sql, &["public".to_string()]) {
        Rewrite::Rewritten(out, _) => out,
        Rewrite::Unchanged | Rewrite::Unsupported(_) => return,
    };
    let before = rewrite::parse(sql).expect("a rewritten statement parsed");
    let after = rewrite::parse(&out)
        .unwrap_or_else(|e| panic!("the rewrite does not parse: {e}\n{sql}\n=> {out}"));
    assert_eq!(params(sql), params(&out), "parameters changed\n{sql}\n=> {out}");
    assert_eq!(before.len(), after.len(), "statement count changed");
    for (b, a) in before.iter().zip(&after) {
        if let (Some(nb), Some(na)) = (names(b), names(a)) {
            assert_eq!(nb, na, "output columns changed\n{sql}\n=> {out}");
        }
        if routing.writes == WriteRoute::Both && sets(b, "email") {
            assert!(
                sets(a, "email_address"),
                "a legacy write is not dual-written\n{sql}\n=> {out}"
            );
        }
    }
}

/// The highest `$n` in the text.
fn params(sql: &str) -> u32 {
    let s = scan::scan(sql);
    s.tokens
        .iter()
        .filter_map(|t| sql[t.start..t.end].strip_prefix('$')?.parse().ok())
        .max()
        .unwrap_or(0)
}

fn fold(i: &sqlparser::ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

/// The output names of a plain SELECT over `users` (or `None` when they
/// cannot be told without the catalog).
fn names(s: &Statement) -> Option<Vec<String>> {
    let Statement::Query(q) = s else { return None };
    let SetExpr::Select(select) = q.body.as_ref() else {
        return None;
    };
    let [from] = select.from.as_slice() else {
        return None;
    };
    if !from.joins.is_empty() {
        return None;
    }
    let TableFactor::Table { name, .. } = &from.relation else {
        return None;
    };
    if name.0.last()?.as_ident().map(fold)? != "users" {
        return None;
    }
    let mut out = Vec::new();
    for item in &select.projection {
        match item {
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                out.extend(["id", "email", "name", "status"].map(String::from))
            }
            SelectItem::ExprWithAlias { alias, .. } => out.push(fold(alias)),
            SelectItem::UnnamedExpr(Expr::Identifier(i)) => out.push(fold(i)),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(p)) => out.push(fold(p.last()?)),
            _ => return None,
        }
    }
    Some(out)
}

/// Whether the statement writes `column` of `users` (INSERT column list,
/// UPDATE SET list).
fn sets(s: &Statement, column: &str) -> bool {
    match s {
        Statement::Insert(Insert {
            table: TableObject::TableName(name),
            columns,
            ..
        }) => {
            name.0.last().and_then(|p| p.as_ident()).map(fold).as_deref() == Some("users")
                && columns.iter().any(|c| {
                    c.0.last().and_then(|p| p.as_ident()).map(fold).as_deref() == Some(column)
                })
        }
        Statement::Update(u) => {
            let TableFactor::Table { name, .. } = &u.table.relation else {
                return false;
            };
            name.0.last().and_then(|p| p.as_ident()).map(fold).as_deref() == Some("users")
                && u.assignments.iter().any(|a| match &a.target {
                    sqlparser::ast::AssignmentTarget::ColumnName(n) => {
                        n.0.last().and_then(|p| p.as_ident()).map(fold).as_deref() == Some(column)
                    }
                    sqlparser::ast::AssignmentTarget::Tuple(ns) => ns.iter().any(|n| {
                        n.0.last().and_then(|p| p.as_ident()).map(fold).as_deref() == Some(column)
                    }),
                })
        }
        _ => false,
    }
}
