//! Writes that name a split's or merge's legacy columns after contract
//! dropped them. The named legacy columns give way to the group's new
//! columns, each computed by its `forward` from the values given; a legacy
//! column the statement leaves out reads as NULL in an INSERT and, in a SET
//! list, as its `backward` over the row's current new columns. The first
//! named legacy item becomes the new columns; the others are removed with
//! the comma before them. Values are copied as text, so a value that holds
//! another rewrite is refused by the edit overlap check, never garbled.

use std::ops::Range;

use sqlparser::ast::{Expr, ObjectName, Spanned};

use super::write::is_default;
use super::{quoted, Ctx};
use crate::active::{CompiledMapping, CompiledTable};
use crate::bare_literal::cast;
use crate::model::{TypedColumn, WriteRoute};

/// One contracted split or merge that a statement writes by legacy names.
pub(crate) struct Named<'t> {
    /// The group's pairs.
    pairs: Vec<&'t CompiledMapping>,
    /// Where the statement's columns name the group's legacy columns,
    /// ascending.
    at: Vec<usize>,
    /// Per legacy column of the group: its index among the statement's
    /// columns, if named.
    given: Vec<Option<usize>>,
}

impl Named<'_> {
    /// Whether the statement's column `i` is one of the group's.
    pub(crate) fn names(&self, i: usize) -> bool {
        self.at.contains(&i)
    }

    /// The first of the statement's columns that is the group's.
    pub(crate) fn first(&self) -> usize {
        self.at[0]
    }

    /// The group's new columns, quoted, as a list.
    pub(crate) fn new_list(&self) -> String {
        let names: Vec<String> = self.new_columns().iter().map(|c| quoted(&c.name)).collect();
        names.join(", ")
    }

    fn legacy_columns(&self) -> &[TypedColumn] {
        &self.pairs[0].forward_sources
    }

    fn new_columns(&self) -> &[TypedColumn] {
        &self.pairs[0].backward_sources
    }

    /// The new columns' values, given the statement's value texts and
    /// expressions; `current` names the target row in a SET list.
    fn values(&self, texts: &[String], exprs: &[&Expr], current: Option<&str>) -> Vec<String> {
        let inputs: Vec<String> = self
            .legacy_columns()
            .iter()
            .zip(&self.given)
            .map(|(column, given)| match (given, current) {
                (Some(i), _) if exprs.get(*i).is_some_and(|e| is_default(e)) => {
                    cast("NULL", &column.sql_type)
                }
                (Some(i), _) => cast(&texts[*i], &column.sql_type),
                (None, Some(q)) => {
                    match self.pairs.iter().find(|p| p.mapping.legacy == column.name) {
                        Some(p) => format!("({})", p.backward_read(q)),
                        None => cast("NULL", &column.sql_type),
                    }
                }
                (None, None) => cast("NULL", &column.sql_type),
            })
            .collect();
        self.new_columns()
            .iter()
            .map(
                |n| match self.pairs.iter().find(|p| p.mapping.new == n.name) {
                    Some(p) => p.forward.fill_each(&inputs),
                    None => "NULL".to_owned(),
                },
            )
            .collect()
    }
}

/// The contracted groups of `table` whose legacy columns `columns` names.
pub(crate) fn named<'t>(
    table: &'t CompiledTable,
    columns: &[String],
) -> Result<Vec<Named<'t>>, String> {
    let mut groups: Vec<Named<'t>> = Vec::new();
    let contracted = table
        .mappings
        .iter()
        .filter(|m| m.is_group() && m.mapping.routing.writes == WriteRoute::New);
    for m in contracted {
        let same = |g: &&mut Named<'t>| {
            let first = &g.pairs[0].mapping;
            first.migration == m.mapping.migration && first.group == m.mapping.group
        };
        match groups.iter_mut().find(same) {
            Some(g) => g.pairs.push(m),
            None => groups.push(Named {
                pairs: vec![m],
                at: Vec::new(),
                given: Vec::new(),
            }),
        }
    }
    for g in &mut groups {
        g.given = (g.legacy_columns().iter())
            .map(|l| columns.iter().position(|c| *c == l.name))
            .collect();
        g.at = g.given.iter().flatten().copied().collect();
        g.at.sort_unstable();
    }
    groups.retain(|g| !g.at.is_empty());
    for g in &groups {
        if let Some(n) = g.new_columns().iter().find(|n| columns.contains(&n.name)) {
            return Err(format!(
                "the statement writes both {} (dropped by migration {}) and {}",
                columns[g.first()],
                g.pairs[0].mapping.migration,
                n.name
            ));
        }
    }
    Ok(groups)
}

/// Replaces the group's first item with `replacement` and removes its
/// other items; `items` are the list's item ranges in order.
fn splice(
    ctx: &mut Ctx<'_>,
    items: &[Option<Range<usize>>],
    g: &Named<'_>,
    replacement: String,
) -> Result<(), String> {
    let missing = || "no source location for a split or merged column".to_owned();
    let first = items
        .get(g.first())
        .cloned()
        .flatten()
        .ok_or_else(missing)?;
    ctx.edits.replace(first, replacement);
    for &i in &g.at[1..] {
        let prev = items.get(i - 1).cloned().flatten().ok_or_else(missing)?;
        let this = items.get(i).cloned().flatten().ok_or_else(missing)?;
        ctx.edits.replace(prev.end..this.end, "");
    }
    Ok(())
}

/// An INSERT's column list.
pub(crate) fn splice_columns(
    ctx: &mut Ctx<'_>,
    list: &[ObjectName],
    g: &Named<'_>,
) -> Result<(), String> {
    let items: Vec<Option<Range<usize>>> = list
        .iter()
        .map(|c| ctx.map.range(c.span()).filter(|r| !r.is_empty()))
        .collect();
    splice(ctx, &items, g, g.new_list())
}

/// One VALUES row.
pub(crate) fn splice_row(ctx: &mut Ctx<'_>, row: &[Expr], g: &Named<'_>) -> Result<(), String> {
    let texts: Vec<String> = row.iter().map(|e| ctx.text(e)).collect();
    let items: Vec<Option<Range<usize>>> = row.iter().map(|e| ctx.range(e)).collect();
    let exprs: Vec<&Expr> = row.iter().collect();
    let values = g.values(&texts, &exprs, None);
    splice(ctx, &items, g, values.join(", "))
}

/// A SET list flattened to `(column, value)`; `items` holds each one's
/// range (`None` inside a tuple assignment).
pub(crate) struct SetList<'s> {
    pub columns: &'s [String],
    pub texts: &'s [String],
    pub exprs: &'s [&'s Expr],
    pub items: &'s [Option<Range<usize>>],
}

/// A SET list, whose expressions see the target row as `current`.
pub(crate) fn assignments(
    ctx: &mut Ctx<'_>,
    table: &CompiledTable,
    set: &SetList<'_>,
    current: &str,
) -> Result<(), String> {
    for g in named(table, set.columns)? {
        if g.at.iter().any(|&i| set.items[i].is_none()) {
            return Err("a multi-column SET of a split or merged column".into());
        }
        let values = g.values(set.texts, set.exprs, Some(current));
        let list: Vec<String> = (g.new_columns().iter())
            .zip(values)
            .map(|(n, v)| format!("{} = {v}", quoted(&n.name)))
            .collect();
        splice(ctx, set.items, &g, list.join(", "))?;
    }
    Ok(())
}
