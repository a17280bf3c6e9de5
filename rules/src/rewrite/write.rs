//! Writes: INSERT, UPDATE, ON CONFLICT DO UPDATE and MERGE set both columns of a
//! pair under `both` routing, and the new column alone once the legacy one
//! is gone. Text is inserted at the front of lists (before the first column,
//! after a row's opening parenthesis), where parser locations are exact.

use sqlparser::ast::{
    Assignment, AssignmentTarget, Expr, Ident, Insert, Merge, MergeAction, MergeInsertKind,
    MergeUpdateKind, ObjectName, OnConflictAction, OnInsert, Query, SetExpr, Spanned, TableFactor,
    TableObject, Update, Values,
};

use super::{column_name, quoted, regroup, Ctx};
use crate::active::{CompiledMapping, CompiledTable};
use crate::bare_literal::{cast, forward_arg};
use crate::model::{TypedColumn, WriteRoute};
use crate::template::Template;

/// A column a computed value reads, and where the statement gives it.
struct Input<'t> {
    /// Its index among the statement's columns, if named.
    given: Option<usize>,
    column: &'t TypedColumn,
    /// Its default, for an INSERT that leaves it out or says DEFAULT.
    default: Option<&'t str>,
}

/// A value to add for a column the statement did not name.
enum Source<'t> {
    /// `forward` or `backward` over the statement's values; a source the
    /// statement leaves out (a split's or merge's other column) is the
    /// row's current value in a SET list, its default in an INSERT.
    Computed {
        template: &'t Template,
        inputs: Vec<Input<'t>>,
        /// How long a string literal may go in without its cast (`forward`
        /// of a plain pair whose catalog proof held).
        literal_bound: Option<usize>,
    },
    /// A constant expression (from column defaults).
    Fixed(String),
}

struct Addition<'t> {
    column: String,
    source: Source<'t>,
}

/// What one pair needs from a statement.
enum Step<'t> {
    /// Add a column the statement did not name.
    Add(Addition<'t>),
    /// The legacy column is gone: write the new one instead, through
    /// `forward`, at the legacy column's place.
    Redirect {
        index: usize,
        mapping: &'t CompiledMapping,
    },
    /// A split's or merge's legacy column is gone: the whole group is
    /// rewritten (see [`super::regroup`]).
    Regroup,
}

pub(super) fn is_default(expr: &Expr) -> bool {
    matches!(expr, Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"))
}

fn null_or(default: Option<&str>) -> String {
    default
        .map(str::to_owned)
        .unwrap_or_else(|| "NULL".to_owned())
}

fn default_of<'t>(table: &'t CompiledTable, column: &str) -> Option<&'t str> {
    table
        .rules
        .facts
        .column(column)
        .and_then(|c| c.default.as_deref())
}

fn inputs<'t>(
    table: &'t CompiledTable,
    sources: &'t [TypedColumn],
    columns: &[String],
) -> Vec<Input<'t>> {
    sources
        .iter()
        .map(|column| Input {
            given: columns.iter().position(|c| *c == column.name),
            column,
            default: default_of(table, &column.name),
        })
        .collect()
}

/// What to add for one pair, given the columns the statement names.
fn plan<'t>(
    m: &'t CompiledMapping,
    table: &'t CompiledTable,
    columns: &[String],
) -> Result<Option<Step<'t>>, String> {
    let map = &m.mapping;
    let legacy = columns.iter().position(|c| *c == map.legacy);
    let new = columns.iter().position(|c| *c == map.new);
    // A split or merge the statement writes through another of its
    // columns is that pair's to complete.
    let group_named = m.is_group()
        && (m.forward_sources.iter())
            .chain(&m.backward_sources)
            .any(|c| columns.contains(&c.name));
    let add = |column: &str, template, sources, literal_bound| {
        Some(Step::Add(Addition {
            column: column.to_owned(),
            source: Source::Computed {
                template,
                inputs: inputs(table, sources, columns),
                literal_bound,
            },
        }))
    };
    Ok(match (map.routing.writes, legacy, new) {
        (WriteRoute::Legacy, _, _) | (WriteRoute::Both, Some(_), Some(_)) => None,
        (WriteRoute::Both, Some(_), None) => {
            add(&map.new, &m.forward, &m.forward_sources, m.literal_bound)
        }
        (WriteRoute::Both, None, Some(_)) => {
            add(&map.legacy, &m.backward, &m.backward_sources, None)
        }
        (WriteRoute::Both, None, None) if group_named => None,
        (WriteRoute::Both, None, None) => {
            let defaults = inputs(table, &m.forward_sources, columns);
            defaults.iter().any(|i| i.default.is_some()).then(|| {
                let values: Vec<String> = defaults
                    .iter()
                    .map(|i| cast(&null_or(i.default), &i.column.sql_type))
                    .collect();
                Step::Add(Addition {
                    column: map.new.clone(),
                    source: Source::Fixed(m.forward.fill_each(&values)),
                })
            })
        }
        (WriteRoute::New, Some(_), _) if m.is_group() => Some(Step::Regroup),
        (WriteRoute::New, Some(index), None) => Some(Step::Redirect { index, mapping: m }),
        (WriteRoute::New, Some(_), Some(_)) => {
            return Err(format!(
                "the statement writes both {} (dropped by migration {}) and {}",
                map.legacy, map.migration, map.new
            ))
        }
        (WriteRoute::New, None, _) => None,
    })
}

/// Adds `a` unless the column is already added: the pairs of a split or
/// merge compute the same value (a computed one wins over a default).
fn push_addition<'t>(additions: &mut Vec<Addition<'t>>, a: Addition<'t>) {
    match additions.iter_mut().find(|b| b.column == a.column) {
        Some(b) if matches!(b.source, Source::Fixed(_)) => *b = a,
        Some(_) => {}
        None => additions.push(a),
    }
}

/// The value of an addition for one row of given value texts; `current`
/// qualifies the row's own columns in a SET list (`None` in an INSERT).
fn value_for(
    add: &Addition<'_>,
    row: &[String],
    row_exprs: Option<&[Expr]>,
    current: Option<&str>,
) -> String {
    match &add.source {
        Source::Fixed(text) => text.clone(),
        Source::Computed {
            template,
            inputs,
            literal_bound,
        } => {
            let values: Vec<String> = inputs
                .iter()
                .map(|i| {
                    let ty = &i.column.sql_type;
                    match (i.given, current) {
                        (Some(index), _)
                            if row_exprs.and_then(|r| r.get(index)).is_some_and(is_default) =>
                        {
                            cast(&null_or(i.default), ty)
                        }
                        (Some(index), _) => forward_arg(&row[index], ty, *literal_bound),
                        (None, Some(q)) => format!("{q}.{}", quoted(&i.column.name)),
                        (None, None) => cast(&null_or(i.default), ty),
                    }
                })
                .collect();
            template.fill_each(&values)
        }
    }
}

/// Where an INSERT's rows come from.
#[derive(Clone, Copy)]
enum RowSource<'s> {
    /// `VALUES (...), (...)`.
    Values(&'s Values),
    /// `INSERT ... SELECT` (any query that is not plain VALUES).
    Select(&'s Query),
    /// `DEFAULT VALUES`.
    Defaults,
}

pub(crate) fn insert(ctx: &mut Ctx<'_>, ins: &Insert) {
    let TableObject::TableName(name) = &ins.table else {
        return;
    };
    let Some(table) = ctx.resolve(name) else {
        return;
    };
    if let Some(OnInsert::OnConflict(oc)) = &ins.on {
        if let Some(target) = &oc.conflict_target {
            super::conflict::target(ctx, table, target);
        }
        if let OnConflictAction::DoUpdate(du) = &oc.action {
            let alias = ins.table_alias.as_ref().map(|a| &a.alias);
            assignments(ctx, table, &du.assignments, &row_name(name, alias));
        }
    }
    let rows = match &ins.source {
        None => RowSource::Defaults,
        Some(q) => match q.body.as_ref() {
            SetExpr::Values(v) => RowSource::Values(v),
            _ => RowSource::Select(q),
        },
    };
    // A column list the statement lacks goes right after the target.
    let end = match &ins.table_alias {
        Some(alias) => alias.alias.span.end,
        None => name.span().end,
    };
    let list_at = ctx.map.offset(end);
    insert_rows(ctx, table, &ins.columns, list_at, rows);
}

/// MERGE: its UPDATE actions are SET lists and its INSERT actions are
/// one-row INSERTs, each handled like the plain statement.
pub(crate) fn merge(ctx: &mut Ctx<'_>, merge: &Merge) {
    let TableFactor::Table { name, alias, .. } = &merge.table else {
        return;
    };
    let Some(table) = ctx.resolve(name) else {
        return;
    };
    let current = row_name(name, alias.as_ref().map(|a| &a.name));
    for clause in &merge.clauses {
        match &clause.action {
            MergeAction::Update(update) => match &update.kind {
                MergeUpdateKind::Set(list) => assignments(ctx, table, list, &current),
                _ => return ctx.refuse(table, "a MERGE UPDATE without a SET list"),
            },
            MergeAction::Insert(insert) => {
                let MergeInsertKind::Values(values) = &insert.kind else {
                    return ctx.refuse(table, "a MERGE INSERT without VALUES");
                };
                let list_at = ctx.map.offset(insert.insert_token.0.span.end);
                insert_rows(
                    ctx,
                    table,
                    &insert.columns,
                    list_at,
                    RowSource::Values(values),
                );
            }
            MergeAction::Delete { .. } | MergeAction::DoNothing { .. } => {}
        }
    }
}

/// The pair logic of an INSERT: `column_list` as written (maybe empty),
/// `list_at` where a missing column list would go.
fn insert_rows(
    ctx: &mut Ctx<'_>,
    table: &CompiledTable,
    column_list: &[ObjectName],
    list_at: Option<usize>,
    rows: RowSource<'_>,
) {
    let facts = &table.rules.facts;
    let values = match rows {
        RowSource::Values(v) => Some(v),
        _ => None,
    };
    let explicit: Vec<String> = column_list.iter().filter_map(column_name).collect();
    let implicit = explicit.is_empty();
    let columns: Vec<String> = if !implicit {
        explicit
    } else if table.view_unknown() {
        return ctx.refuse(
            table,
            "an INSERT without a column list into a contracted table",
        );
    } else {
        let width = match rows {
            RowSource::Values(v) => v.rows.first().map(|r| r.content.len()).unwrap_or(0),
            RowSource::Select(_) => facts.columns.len(),
            RowSource::Defaults => 0,
        };
        table.legacy_view().into_iter().take(width).collect()
    };
    // Rows of another length than the target list are PostgreSQL's to
    // refuse (42601); nothing here may index past them (found by fuzzing).
    if let Some(v) = values {
        if v.rows.iter().any(|r| r.content.len() != columns.len()) {
            return;
        }
    }

    let mut additions = Vec::new();
    let mut redirects = Vec::new();
    let mut regrouped = false;
    for m in &table.mappings {
        match plan(m, table, &columns) {
            Ok(Some(Step::Add(a))) => push_addition(&mut additions, a),
            Ok(Some(Step::Redirect { index, mapping })) => redirects.push((index, mapping)),
            Ok(Some(Step::Regroup)) => regrouped = true,
            Ok(None) => {}
            Err(reason) => return ctx.refuse(table, reason),
        }
    }
    let groups = match regrouped.then(|| regroup::named(table, &columns)) {
        None => Vec::new(),
        Some(Ok(groups)) => groups,
        Some(Err(reason)) => return ctx.refuse(table, reason),
    };
    if !groups.is_empty() {
        let Some(v) = values else {
            return ctx.refuse(
                table,
                "INSERT ... SELECT or DEFAULT VALUES naming a split or merged column that contract dropped",
            );
        };
        if !implicit {
            for g in &groups {
                if let Err(reason) = regroup::splice_columns(ctx, column_list, g) {
                    return ctx.refuse(table, reason);
                }
            }
        }
        for row in &v.rows {
            for g in &groups {
                if let Err(reason) = regroup::splice_row(ctx, &row.content, g) {
                    return ctx.refuse(table, reason);
                }
            }
        }
    }
    if (!redirects.is_empty() || !groups.is_empty()) && implicit {
        // Name the columns, with the new ones in the legacy ones' place.
        let Some(at) = list_at else {
            return ctx.refuse(table, "no source location for the INSERT target");
        };
        let named: Vec<String> = columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                if let Some(g) = groups.iter().find(|g| g.names(i)) {
                    return (g.first() == i).then(|| g.new_list());
                }
                Some(
                    match redirects.iter().find(|(_, m)| m.mapping.legacy == *c) {
                        Some((_, m)) => quoted(&m.mapping.new),
                        None => quoted(c),
                    },
                )
            })
            .collect();
        if !additions.is_empty() {
            return ctx.refuse(
                table,
                "a column-less INSERT mixing contracted and dual-written pairs",
            );
        }
        ctx.edits.insert(at, format!(" ({})", named.join(", ")));
        for row in values.iter().flat_map(|v| &v.rows) {
            for (index, mapping) in &redirects {
                if let Some(value) = row.content.get(*index) {
                    if let Err(reason) = wrap_forward(ctx, mapping, value) {
                        return ctx.refuse(table, reason);
                    }
                }
            }
        }
        if values.is_none() {
            return ctx.refuse(
                table,
                "INSERT ... SELECT without a column list into a contracted table",
            );
        }
        return;
    }
    if !redirects.is_empty() {
        for (index, mapping) in &redirects {
            let Some(col) = column_list.get(*index) else {
                return;
            };
            let Some(range) = ctx.map.range(col.span()).filter(|r| !r.is_empty()) else {
                return ctx.refuse(table, "no source location for the INSERT column list");
            };
            ctx.edits.replace(range, quoted(&mapping.mapping.new));
            for row in values.iter().flat_map(|v| &v.rows) {
                // (INSERT ... SELECT is wrapped below instead.)
                if let Some(value) = row.content.get(*index) {
                    if let Err(reason) = wrap_forward(ctx, mapping, value) {
                        return ctx.refuse(table, reason);
                    }
                }
            }
        }
    }
    if additions.is_empty() && (redirects.is_empty() || values.is_some()) {
        return;
    }
    if let RowSource::Defaults = rows {
        return ctx.refuse(
            table,
            "INSERT ... DEFAULT VALUES with a column default to mirror",
        );
    }
    if implicit && values.is_none() {
        return ctx.refuse(table, "INSERT ... SELECT without a column list");
    }

    // The column list.
    let added_columns: Vec<String> = additions.iter().map(|a| quoted(&a.column)).collect();
    if implicit {
        let Some(at) = list_at else {
            return ctx.refuse(table, "no source location for the INSERT target");
        };
        let all: Vec<String> = added_columns
            .into_iter()
            .chain(columns.iter().map(|c| quoted(c)))
            .collect();
        ctx.edits.insert(at, format!(" ({})", all.join(", ")));
    } else if !added_columns.is_empty() {
        let Some(at) = column_list
            .first()
            .and_then(|c| ctx.map.offset(c.span().start))
        else {
            return ctx.refuse(table, "no source location for the INSERT column list");
        };
        ctx.edits
            .insert(at, format!("{}, ", added_columns.join(", ")));
    }

    // The values.
    match rows {
        RowSource::Values(v) => {
            for row in &v.rows {
                let texts: Vec<String> = row.content.iter().map(|e| ctx.text(e)).collect();
                let Some(at) = ctx.map.offset(row.opening_token.0.span.end) else {
                    return ctx.refuse(table, "no source location for a VALUES row");
                };
                let vals: Vec<String> = additions
                    .iter()
                    .map(|a| value_for(a, &texts, Some(&row.content), None))
                    .collect();
                ctx.edits.insert(at, format!("{}, ", vals.join(", ")));
            }
        }
        RowSource::Defaults => {}
        RowSource::Select(source) => {
            // INSERT ... SELECT: wrap the query (with two insertions, so
            // that rewrites inside it still apply) and compute from its
            // columns.
            let Some(range) = ctx.query_range(source) else {
                return ctx.refuse(table, "no source location for INSERT ... SELECT");
            };
            let names: Vec<String> = (1..=columns.len()).map(|i| format!("_sy_{i}")).collect();
            let refs: Vec<String> = names.iter().map(|n| format!("_sy.{n}")).collect();
            let mut outputs: Vec<String> = additions
                .iter()
                .map(|a| value_for(a, &refs, None, None))
                .collect();
            for (i, r) in refs.iter().enumerate() {
                match redirects.iter().find(|(index, _)| *index == i) {
                    Some((_, m)) => outputs.push(m.forward.fill(&cast(r, &m.mapping.legacy_type))),
                    None => outputs.push(r.clone()),
                }
            }
            ctx.edits
                .insert(range.start, format!("SELECT {} FROM (", outputs.join(", ")));
            ctx.edits
                .insert(range.end, format!(") AS _sy({})", names.join(", ")));
        }
    }
}

pub(crate) fn update(ctx: &mut Ctx<'_>, upd: &Update) {
    let TableFactor::Table { name, alias, .. } = &upd.table.relation else {
        return;
    };
    let Some(table) = ctx.resolve(name) else {
        return;
    };
    let current = row_name(name, alias.as_ref().map(|a| &a.name));
    assignments(ctx, table, &upd.assignments, &current);
}

/// How a SET list's expressions name the target row: its alias, else the
/// table's own name.
fn row_name(name: &ObjectName, alias: Option<&Ident>) -> String {
    match alias {
        Some(a) => quoted(&super::fold_ident(a)),
        None => name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(|i| quoted(&super::fold_ident(i)))
            .unwrap_or_default(),
    }
}

/// SET lists (UPDATE, ON CONFLICT DO UPDATE and MERGE), whose expressions
/// see the target row as `current`.
fn assignments(ctx: &mut Ctx<'_>, table: &CompiledTable, list: &[Assignment], current: &str) {
    // Flatten `col = v` and `(a, b) = (x, y)` into (column, value) pairs.
    let mut pairs: Vec<(String, &Expr)> = Vec::new();
    // Each pair's `col = v` range (`None` inside a tuple).
    let mut items: Vec<Option<std::ops::Range<usize>>> = Vec::new();
    for a in list {
        match &a.target {
            AssignmentTarget::ColumnName(n) => {
                if let Some(c) = column_name(n) {
                    pairs.push((c, &a.value));
                    let start = ctx.map.offset(n.span().start);
                    let end = ctx.range(&a.value).map(|r| r.end);
                    items.push(start.zip(end).map(|(s, e)| s..e));
                }
            }
            AssignmentTarget::Tuple(names) => {
                let cols: Vec<String> = names.iter().filter_map(column_name).collect();
                let touches = table
                    .mappings
                    .iter()
                    .any(|m| cols.contains(&m.mapping.legacy) || cols.contains(&m.mapping.new));
                match &a.value {
                    Expr::Tuple(values) if values.len() == cols.len() => {
                        items.extend(cols.iter().map(|_| None));
                        pairs.extend(cols.into_iter().zip(values.iter()));
                    }
                    _ if touches => {
                        return ctx.refuse(table, "a multi-column SET from a sub-select")
                    }
                    _ => {}
                }
            }
        }
    }
    let columns: Vec<String> = pairs.iter().map(|(c, _)| c.clone()).collect();
    let texts: Vec<String> = pairs.iter().map(|(_, e)| ctx.text(e)).collect();
    let exprs: Vec<Expr> = pairs.iter().map(|(_, e)| (*e).clone()).collect();
    let mut additions = Vec::new();
    let mut regrouped = false;
    for m in &table.mappings {
        match plan(m, table, &columns) {
            // A SET list leaves unnamed columns alone: no default to mirror.
            Ok(Some(Step::Add(Addition {
                source: Source::Fixed(_),
                ..
            }))) => {}
            Ok(Some(Step::Add(a))) => push_addition(&mut additions, a),
            Ok(Some(Step::Regroup)) => regrouped = true,
            Ok(Some(Step::Redirect { index, mapping })) => {
                let is_legacy = |n: &&ObjectName| {
                    column_name(n).as_deref() == Some(mapping.mapping.legacy.as_str())
                };
                let target = list.iter().find_map(|a| match &a.target {
                    AssignmentTarget::ColumnName(n) => Some(n).filter(is_legacy),
                    AssignmentTarget::Tuple(names) => names.iter().find(is_legacy),
                });
                let Some(range) = target
                    .and_then(|n| ctx.map.range(n.span()))
                    .filter(|r| !r.is_empty())
                else {
                    return ctx.refuse(table, "a multi-column SET of a dropped column");
                };
                ctx.edits.replace(range, quoted(&mapping.mapping.new));
                if let Err(reason) = wrap_forward(ctx, mapping, pairs[index].1) {
                    return ctx.refuse(table, reason);
                }
            }
            Ok(None) => {}
            Err(reason) => return ctx.refuse(table, reason),
        }
    }
    if regrouped {
        let refs: Vec<&Expr> = pairs.iter().map(|(_, e)| *e).collect();
        let set = regroup::SetList {
            columns: &columns,
            texts: &texts,
            exprs: &refs,
            items: &items,
        };
        if let Err(reason) = regroup::assignments(ctx, table, &set, current) {
            return ctx.refuse(table, reason);
        }
    }
    let added: Vec<String> = additions
        .iter()
        .map(|a| {
            let value = value_for(a, &texts, Some(&exprs), Some(current));
            format!("{} = {value}", quoted(&a.column))
        })
        .collect();
    if added.is_empty() {
        return;
    }
    // Our assignments go before the first one; a tuple target starts at the
    // parenthesis just before its first name.
    let anchor = list.first().and_then(|a| match &a.target {
        AssignmentTarget::ColumnName(n) => ctx.map.offset(n.span().start),
        AssignmentTarget::Tuple(names) => {
            let at = ctx.map.offset(names.first()?.span().start)?;
            let before = ctx.map.text()[..at].trim_end();
            before.ends_with('(').then(|| before.len() - 1)
        }
    });
    match anchor {
        Some(at) => ctx.edits.insert(at, format!("{}, ", added.join(", "))),
        None => ctx.refuse(table, "no source location for the SET list"),
    }
}

/// Wraps a value in `forward(...)` with two insertions, so that read
/// rewrites inside the value still apply.
fn wrap_forward(ctx: &mut Ctx<'_>, mapping: &CompiledMapping, value: &Expr) -> Result<(), String> {
    if is_default(value) {
        // The dropped column's default is gone with it: NULL, through forward.
        let range = ctx.range(value).ok_or("no source location for DEFAULT")?;
        let filled = mapping
            .forward
            .fill(&cast("NULL", &mapping.mapping.legacy_type));
        ctx.edits.replace(range, filled);
        return Ok(());
    }
    if let Some(bound) = mapping.literal_bound {
        // A literal holds nothing to rewrite: forward of it, whole.
        let range = ctx.range(value).ok_or("no source location for a value")?;
        let text = &ctx.map.text()[range.clone()];
        if crate::bare_literal::is_literal(text) {
            let ty = &mapping.mapping.legacy_type;
            let filled = mapping.forward.fill(&forward_arg(text, ty, Some(bound)));
            ctx.edits.replace(range, filled);
            return Ok(());
        }
    }
    let (before, after) = mapping.forward.around().ok_or_else(|| {
        format!(
            "forward of {} uses its column twice",
            mapping.mapping.migration
        )
    })?;
    let range = ctx.range(value).ok_or("no source location for a value")?;
    ctx.edits.insert(range.start, format!("{before}("));
    ctx.edits.insert(
        range.end,
        format!(")::{}{after}", mapping.mapping.legacy_type),
    );
    Ok(())
}
