//! `ON CONFLICT` targets. An upsert's arbiter follows the unique index
//! that the backfill rebuilt on the new column: once that index exists,
//! `(legacy)` becomes `(new)` (the new column's uniqueness is what holds
//! from then on, `forward` may fold values the legacy index tells apart),
//! and `ON CONSTRAINT legacy_key` becomes the column target of its
//! counterpart. After contract the legacy column and its constraint are
//! gone, so the target must move.

use sqlparser::ast::{ConflictTarget, Spanned};

use super::{column_name, quoted, Ctx};
use crate::active::CompiledTable;
use crate::ident::renamed;
use crate::model::WriteRoute;
use crate::prefilter::TableFilter;

/// Rewrites the conflict target of an INSERT into `table`.
pub(crate) fn target(ctx: &mut Ctx<'_>, table: &CompiledTable, target: &ConflictTarget) {
    match target {
        ConflictTarget::Columns { columns, predicate } => {
            let names: Vec<String> = columns.iter().map(fold).collect();
            if let Some(p) = predicate {
                let legacy: Vec<&str> = moving(table).map(|(l, _)| l).collect();
                if !legacy.is_empty() && TableFilter::new(legacy).may_touch(&p.to_string()) {
                    return ctx.refuse(table, "an ON CONFLICT predicate over a migrated column");
                }
            }
            // A split's or merge's unique legacy index is rebuilt as an
            // expression index, which no column list can name.
            let contracted_group = table.mappings.iter().any(|m| {
                m.is_group()
                    && m.mapping.routing.writes == WriteRoute::New
                    && names.contains(&m.mapping.legacy)
            });
            if contracted_group {
                return ctx.refuse(
                    table,
                    "an ON CONFLICT target over a split or merged column that contract dropped",
                );
            }
            let Some(mapped) = map_columns(table, &names) else {
                return;
            };
            for (ident, (name, new)) in columns.iter().zip(names.iter().zip(&mapped)) {
                if name == new {
                    continue;
                }
                match ctx.map.range(ident.span).filter(|r| !r.is_empty()) {
                    Some(r) => ctx.edits.replace(r, quoted(new)),
                    None => {
                        return ctx.refuse(table, "no source location for the ON CONFLICT target")
                    }
                }
            }
        }
        ConflictTarget::OnConstraint(name) => {
            let Some(constraint) = column_name(name) else {
                return;
            };
            let facts = &table.rules.facts;
            let replacement = match facts
                .unique
                .iter()
                .find(|k| k.constraint.as_deref() == Some(constraint.as_str()))
            {
                // The constraint exists: move to its counterpart's columns
                // once that index is there.
                Some(key) => map_columns(table, &key.columns).map(|cols| {
                    let list: Vec<String> = cols.iter().map(|c| quoted(c)).collect();
                    format!("({})", list.join(", "))
                }),
                // Gone: contract moved it under its renamed name.
                None => moving(table)
                    .map(|(legacy, new)| renamed(&constraint, legacy, new))
                    .find(|moved| {
                        facts
                            .unique
                            .iter()
                            .any(|k| k.constraint.as_deref() == Some(moved.as_str()))
                    })
                    .map(|moved| format!("ON CONSTRAINT {}", quoted(&moved))),
            };
            let Some(replacement) = replacement else {
                return;
            };
            let Some(end) = ctx.map.offset(name.span().end) else {
                return ctx.refuse(table, "no source location for the ON CONFLICT target");
            };
            match on_constraint_start(ctx.map.text(), ctx.map.offset(name.span().start)) {
                Some(start) => ctx.edits.replace(start..end, replacement),
                None => ctx.refuse(table, "no source location for ON CONSTRAINT"),
            }
        }
    }
}

use super::fold_ident as fold;

/// The legacy → new pairs whose writes are routed (a split or merge has
/// no column-for-column counterpart).
fn moving(table: &CompiledTable) -> impl Iterator<Item = (&str, &str)> {
    table
        .mappings
        .iter()
        .filter(|m| m.mapping.routing.writes != WriteRoute::Legacy && !m.is_group())
        .map(|m| (m.mapping.legacy.as_str(), m.mapping.new.as_str()))
}

/// The conflict target to use instead of `columns`, if another: legacy
/// columns replaced by their new ones once that set is a unique key (or
/// the legacy columns are gone); or, for a newer application naming new
/// columns before their unique index exists, the legacy key they mirror.
fn map_columns(table: &CompiledTable, columns: &[String]) -> Option<Vec<String>> {
    let is_key = |cols: &[String]| {
        let mut wanted = cols.to_vec();
        wanted.sort();
        table.rules.facts.unique.iter().any(|k| {
            let mut have = k.columns.clone();
            have.sort();
            have == wanted
        })
    };
    let routed = |m: &&crate::active::CompiledMapping| {
        m.mapping.routing.writes != WriteRoute::Legacy && !m.is_group()
    };
    let mut dropped = false;
    let forward: Vec<String> = columns
        .iter()
        .map(|c| {
            match table
                .mappings
                .iter()
                .filter(routed)
                .find(|m| m.mapping.legacy == *c)
            {
                Some(m) => {
                    dropped |= m.mapping.routing.writes == WriteRoute::New;
                    m.mapping.new.clone()
                }
                None => c.clone(),
            }
        })
        .collect();
    if forward != columns && (dropped || is_key(&forward)) {
        return Some(forward);
    }
    let backward: Vec<String> = columns
        .iter()
        .map(|c| {
            match table
                .mappings
                .iter()
                .filter(routed)
                .find(|m| m.mapping.new == *c && m.mapping.routing.writes == WriteRoute::Both)
            {
                Some(m) => m.mapping.legacy.clone(),
                None => c.clone(),
            }
        })
        .collect();
    (backward != columns && !is_key(columns) && is_key(&backward)).then_some(backward)
}

/// Where `ON CONSTRAINT` begins, given where the constraint's name does.
fn on_constraint_start(text: &str, name_at: Option<usize>) -> Option<usize> {
    let before = text[..name_at?].trim_end();
    let kw = before.len().checked_sub("constraint".len())?;
    before[kw..]
        .eq_ignore_ascii_case("constraint")
        .then_some(())?;
    let before_on = before[..kw].trim_end();
    let on = before_on.len().checked_sub(2)?;
    before_on[on..].eq_ignore_ascii_case("on").then_some(on)
}
