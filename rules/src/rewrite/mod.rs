//! Statement rewriting: parse (PostgreSQL dialect), find what touches a
//! routed table, and edit the original text at the parser's locations.

mod conflict;
pub mod edits;
mod legacy;
mod locking;
mod read;
mod regroup;
pub mod scan;
mod write;

use std::sync::Arc;

use sqlparser::ast::{CopySource, Expr, ObjectName, Query, SetExpr, Spanned, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::active::{ActiveRules, CompiledTable};
use crate::ident;
use crate::model::WriteRoute;
use edits::{Edits, SourceMap};

/// sqlparser's own guard; [`STACK_LIMIT`] bounds nesting before parsing,
/// and this backs it up (each level costs at most ~48 KiB of stack).
const RECURSION_LIMIT: usize = 4096;

/// What became of a query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// Forward it as it is.
    Unchanged,
    /// Send this text instead; the statement depends on the legacy side of
    /// these migrations (it names a legacy column, or takes a migrated
    /// table's shape). Shared: every statement of a cached shape has the
    /// same list.
    Rewritten(String, Arc<[String]>),
    /// It touches a routed table in a way we cannot rewrite.
    Unsupported(Unsupported),
}

/// A statement that touches a routed table but cannot be rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// The migrations whose tables it touches.
    pub migrations: Vec<String>,
    /// Why.
    pub reason: String,
}

pub(crate) struct Ctx<'a> {
    pub rules: &'a ActiveRules,
    pub search_path: &'a [String],
    pub map: SourceMap<'a>,
    /// The text's tokens, which bound every re-parse (see [`Ctx::range`]).
    pub scan: &'a scan::Scan,
    pub edits: Edits,
    pub unsupported: Option<Unsupported>,
}

impl<'a> Ctx<'a> {
    /// The routed table an object name resolves to.
    pub(crate) fn resolve(&self, name: &ObjectName) -> Option<&'a CompiledTable> {
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident())
            .map(fold_ident)
            .collect();
        match parts.as_slice() {
            [table] => self.rules.resolve(None, table, self.search_path),
            [schema, table] => self.rules.resolve(Some(schema), table, self.search_path),
            [_db, schema, table] => self.rules.resolve(Some(schema), table, self.search_path),
            _ => None,
        }
    }

    /// The migrated table (and the view's name) a view name resolves to,
    /// when the view uses a migrated column.
    pub(crate) fn view(&self, name: &ObjectName) -> Option<(&'a CompiledTable, String)> {
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident())
            .map(fold_ident)
            .collect();
        let (schema, bare) = match parts.as_slice() {
            [bare] => (None, bare),
            [schema, bare] | [_, schema, bare] => (Some(schema.as_str()), bare),
            _ => return None,
        };
        self.rules.tables.iter().find_map(|t| {
            t.rules
                .views
                .iter()
                .find(|v| {
                    &v.name == bare
                        && match schema {
                            Some(s) => v.schema == s,
                            None => self.search_path.contains(&v.schema),
                        }
                })
                .map(|v| (t, v.to_string()))
        })
    }

    /// The exact source range of an expression. sqlparser's spans can stop
    /// short (a call's closing parenthesis, `CASE`'s `END`), so the
    /// expression is parsed again from its start and the range ends at the
    /// last token that parse consumed; `None` if that parse disagrees.
    pub(crate) fn range(&self, expr: &Expr) -> Option<std::ops::Range<usize>> {
        self.reparse(expr.span(), expr, |p| p.parse_expr())
    }

    /// The exact source range of a query, found the same way.
    pub(crate) fn query_range(&self, query: &Query) -> Option<std::ops::Range<usize>> {
        self.reparse(query.span(), query, |p| p.parse_query().map(|q| *q))
    }

    fn reparse<T: PartialEq>(
        &self,
        span: sqlparser::tokenizer::Span,
        expected: &T,
        parse: impl Fn(&mut Parser<'_>) -> Result<T, sqlparser::parser::ParserError>,
    ) -> Option<std::ops::Range<usize>> {
        let start = self.map.offset(span.start)?;
        let reaches = self.map.offset(span.end).unwrap_or(start).max(start);
        if let Some(r) = self.reparse_at(start, reaches, expected, &parse) {
            return Some(r);
        }
        // Some spans start inside their expression (a parenthesised
        // sub-select, `TRIM(...)`): try the nearest earlier token starts.
        let text = self.map.text();
        let floor = start.saturating_sub(64);
        let mut at = start;
        while at > floor {
            at -= 1;
            if !text.is_char_boundary(at) {
                continue;
            }
            let c = text[at..].chars().next()?;
            let prev = text[..at].chars().next_back();
            let token_start = !c.is_whitespace()
                && prev.is_none_or(|p| p.is_whitespace() || matches!(p, '(' | ',' | '='));
            if token_start {
                if let Some(r) = self.reparse_at(at, reaches, expected, &parse) {
                    return Some(r);
                }
            }
        }
        None
    }

    /// Parses from `start` up to where an expression reaching `reaches`
    /// must end (its list separator or enclosing group), so that each
    /// re-parse costs the expression's length, not the rest of the text.
    fn reparse_at<T: PartialEq>(
        &self,
        start: usize,
        reaches: usize,
        expected: &T,
        parse: &impl Fn(&mut Parser<'_>) -> Result<T, sqlparser::parser::ParserError>,
    ) -> Option<std::ops::Range<usize>> {
        let text = self.map.text();
        let end = self.scan.bound(start, reaches).unwrap_or(text.len());
        let rest = &text[start..end.max(start)];
        let dialect = PostgreSqlDialect {};
        let mut parser = Parser::new(&dialect)
            .with_recursion_limit(RECURSION_LIMIT)
            .try_with_sql(rest)
            .ok()?;
        let reparsed = parse(&mut parser).ok()?;
        if &reparsed != expected {
            return None;
        }
        let end = SourceMap::new(rest).offset(parser.get_current_token().span.end)?;
        Some(start..start + end)
    }

    /// The source text of an expression (re-printed if its range is unknown).
    pub(crate) fn text(&self, expr: &Expr) -> String {
        match self.range(expr) {
            Some(r) => self.map.text()[r].to_owned(),
            None => expr.to_string(),
        }
    }

    /// Marks the whole string as not rewritable, for `table`'s migrations.
    pub(crate) fn refuse(&mut self, table: &CompiledTable, reason: impl Into<String>) {
        self.refuse_migrations(migrations_of(table), reason);
    }

    /// Marks the whole string as not rewritable, for `migrations`.
    pub(crate) fn refuse_migrations(&mut self, migrations: Vec<String>, reason: impl Into<String>) {
        if self.unsupported.is_none() {
            self.unsupported = Some(Unsupported {
                migrations,
                reason: reason.into(),
            });
        }
    }
}

fn migrations_of(table: &CompiledTable) -> Vec<String> {
    let mut m: Vec<String> = table
        .mappings
        .iter()
        .map(|m| m.mapping.migration.clone())
        .collect();
    m.dedup();
    m
}

/// Rewrites `sql` under `rules`.
pub fn rewrite(rules: &ActiveRules, sql: &str, search_path: &[String]) -> Rewrite {
    if !rules.may_rewrite(sql) {
        return Rewrite::Unchanged;
    }
    let scanned = scan::scan(sql);
    rewrite_scanned(rules, sql, &scanned, search_path)
}

/// Parses `sql` as the rewriter does (PostgreSQL dialect, the same
/// recursion limit, the locking clauses it knows), for checks of its
/// output. Run it where [`rewrite`] would run for that text.
pub fn parse(sql: &str) -> Result<Vec<Statement>, sqlparser::parser::ParserError> {
    let masked = locking::mask(sql);
    Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(masked.as_deref().unwrap_or(sql))
        .and_then(|mut p| p.parse_statements())
}

/// The most stack a rewrite may be given ([`STACK`]) less a margin: a
/// statement that may need more is not parsed at all.
pub const STACK_LIMIT: usize = STACK - 16 * 1024 * 1024;
/// The stack a thread that rewrites any statement must have.
pub const STACK: usize = 256 * 1024 * 1024;
/// What a statement may need to be rewritten on an ordinary thread (a
/// 2 MiB tokio worker); more must go to a thread with [`STACK`].
pub const INLINE_LIMIT: usize = 1024 * 1024;

/// [`rewrite`] with the text already scanned (see [`scan::Scan::stack_bound`]
/// for where to run it).
pub fn rewrite_scanned(
    rules: &ActiveRules,
    sql: &str,
    scanned: &scan::Scan,
    search_path: &[String],
) -> Rewrite {
    if scanned.stack_bound() > STACK_LIMIT {
        let migrations: Vec<String> = rules
            .tables
            .iter()
            .filter(|t| scanned.mentions(sql, &t.rules.facts.name.name))
            .flat_map(migrations_of)
            .collect();
        if migrations.is_empty() {
            return Rewrite::Unchanged;
        }
        return Rewrite::Unsupported(Unsupported {
            migrations,
            reason: "the statement nests deeper than Switchyard rewrites (PostgreSQL would answer it with 54001, stack depth limit exceeded, or close to it)".into(),
        });
    }
    let dialect = PostgreSqlDialect {};
    // The parser does not know `FOR NO KEY UPDATE` / `FOR KEY SHARE`; it
    // reads a copy where they are `FOR UPDATE` / `FOR SHARE`, padded so
    // that every location is the same in both texts.
    let masked = locking::mask(sql);
    let parse_text = masked.as_deref().unwrap_or(sql);
    let parsed = Parser::new(&dialect)
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(parse_text)
        .and_then(|mut p| p.parse_statements());
    let statements = match parsed {
        Ok(s) => s,
        Err(e) => {
            let mut migrations: Vec<String> = rules
                .tables
                .iter()
                .filter(|t| {
                    t.is_active()
                        && crate::prefilter::TableFilter::new([t.rules.facts.name.name.as_str()])
                            .may_touch(sql)
                })
                .flat_map(migrations_of)
                .collect();
            migrations.dedup();
            return Rewrite::Unsupported(Unsupported {
                migrations,
                reason: format!("the statement cannot be parsed: {e}"),
            });
        }
    };
    let mut ctx = Ctx {
        rules,
        search_path,
        map: SourceMap::new(parse_text),
        scan: scanned,
        edits: Edits::default(),
        unsupported: None,
    };
    for statement in &statements {
        visit_statement(&mut ctx, statement);
        if let Some(mut reads) = read::Reads::new(&mut ctx) {
            reads.statement(statement);
        }
    }
    if let Some(u) = ctx.unsupported {
        return Rewrite::Unsupported(u);
    }
    if ctx.edits.is_empty() {
        return Rewrite::Unchanged;
    }
    match std::mem::take(&mut ctx.edits).apply(sql) {
        Ok(text) => Rewrite::Rewritten(text, legacy::uses(rules, sql, scanned, &statements).into()),
        Err(overlap) => Rewrite::Unsupported(Unsupported {
            migrations: rules.tables.iter().flat_map(migrations_of).collect(),
            reason: format!(
                "two rewrites of this statement overlap (at byte {}); name the columns plainly",
                overlap.at
            ),
        }),
    }
}

fn visit_statement(ctx: &mut Ctx<'_>, statement: &Statement) {
    match statement {
        Statement::Insert(insert) => write::insert(ctx, insert),
        Statement::Update(update) => write::update(ctx, update),
        Statement::Query(query) => visit_query(ctx, query),
        Statement::Prepare { statement, .. } => visit_statement(ctx, statement),
        Statement::Copy {
            source: CopySource::Table { table_name, .. },
            to: false,
            ..
        } => {
            if let Some(table) = ctx.resolve(table_name) {
                let legacy_only = table
                    .mappings
                    .iter()
                    .all(|m| m.mapping.routing.writes == WriteRoute::Legacy);
                if !legacy_only && !table.guarded() {
                    ctx.refuse(
                        table,
                        format!(
                            "COPY into {} cannot be dual-written",
                            table.rules.facts.name
                        ),
                    );
                }
            }
        }
        Statement::Merge(merge) => write::merge(ctx, merge),
        // EXPLAIN ANALYZE runs the statement: it is rewritten like it.
        Statement::Explain { statement, .. } => visit_statement(ctx, statement),
        _ => {}
    }
    // A write through a view over a migrated table cannot be dual-written.
    let target = match statement {
        Statement::Insert(i) => match &i.table {
            sqlparser::ast::TableObject::TableName(n) => Some(n),
            _ => None,
        },
        Statement::Update(u) => match &u.table.relation {
            sqlparser::ast::TableFactor::Table { name, .. } => Some(name),
            _ => None,
        },
        Statement::Merge(m) => match &m.table {
            sqlparser::ast::TableFactor::Table { name, .. } => Some(name),
            _ => None,
        },
        _ => None,
    };
    if let Some((table, view)) = target
        .and_then(|n| ctx.view(n))
        .filter(|(t, _)| !t.guarded())
    {
        ctx.refuse(
            table,
            format!(
                "a write through view {view}, which uses a migrated column of {}; write to the table, or let the guard trigger heal it",
                table.rules.facts.name
            ),
        );
    }
}

/// Finds data-modifying statements inside queries (CTEs, set operations).
fn visit_query(ctx: &mut Ctx<'_>, query: &Query) {
    if let Some(with) = &query.with {
        for cte in &with.cte_tables {
            visit_query(ctx, &cte.query);
        }
    }
    visit_set_expr(ctx, &query.body);
}

fn visit_set_expr(ctx: &mut Ctx<'_>, body: &SetExpr) {
    match body {
        SetExpr::Query(q) => visit_query(ctx, q),
        SetExpr::SetOperation { left, right, .. } => {
            visit_set_expr(ctx, left);
            visit_set_expr(ctx, right);
        }
        SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Merge(s) => visit_statement(ctx, s),
        _ => {}
    }
}

/// An identifier as PostgreSQL reads it: as written when quoted, in lower
/// case when not.
pub(crate) fn fold_ident(i: &sqlparser::ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

/// The folded column name an object name in a column list refers to.
pub(crate) fn column_name(name: &ObjectName) -> Option<String> {
    name.0.last()?.as_ident().map(fold_ident)
}

/// `name` quoted for SQL text.
pub(crate) fn quoted(name: &str) -> String {
    ident::quote(name)
}
