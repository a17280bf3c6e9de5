//! Reads under `new` routing: every reference that resolves to a routed
//! table's legacy column is served from the new column through `backward`,
//! cast to the legacy type, and a projected column keeps its output name.
//!
//! Names resolve by scope as PostgreSQL would: qualified names through the
//! FROM items' aliases, unqualified names through the innermost query whose
//! FROM items could own them. Expression forms the walker does not know are
//! refused if they mention a legacy column, never passed over silently.

use std::collections::HashSet;

use sqlparser::ast::{
    Delete, Expr, FromTable, FunctionArg, FunctionArgExpr, FunctionArgumentClause,
    FunctionArguments, GroupByExpr, InTarget, Insert, JoinConstraint, JoinOperator, OrderBy,
    OrderByKind, Query, Select, SelectItem, SetExpr, Spanned, TableFactor, TableWithJoins, Update,
    WindowType,
};

use super::{quoted, Ctx};
use crate::active::{CompiledMapping, CompiledTable};
use crate::model::ReadRoute;
use crate::prefilter::TableFilter;

struct Item<'a> {
    /// The range variable name: alias, or the bare table name.
    visible: String,
    table: Option<&'a CompiledTable>,
    /// `excluded` in ON CONFLICT: the proposed row, which holds the legacy
    /// value as written while the legacy column exists.
    excluded: bool,
    /// Joined with USING or NATURAL: `*` merges its columns.
    merged: bool,
}

impl<'a> Item<'a> {
    fn new(visible: String, table: Option<&'a CompiledTable>) -> Self {
        Item {
            visible,
            table,
            excluded: false,
            merged: false,
        }
    }
}

/// Walks one statement's reads.
pub(crate) struct Reads<'c, 'a> {
    ctx: &'c mut Ctx<'a>,
    scopes: Vec<Vec<Item<'a>>>,
    ctes: Vec<HashSet<String>>,
    legacy_names: TableFilter,
}

use super::fold_ident as fold;

/// Whether `*` over this table is spelled out: it is, for every table
/// being migrated, so that `*` keeps the shape the table had when the
/// migration began (see [`CompiledTable::pinned_view`]), whatever DDL and
/// flips happen until `complete`.
fn reshaped(table: &CompiledTable) -> bool {
    !table.mappings.is_empty()
}

fn switched(m: &CompiledMapping) -> bool {
    m.mapping.routing.reads == ReadRoute::New
}

impl<'c, 'a> Reads<'c, 'a> {
    /// A walker, or `None` when no table's reads are switched.
    pub(super) fn new(ctx: &'c mut Ctx<'a>) -> Option<Self> {
        let names: Vec<&str> = ctx
            .rules
            .tables
            .iter()
            .flat_map(|t| &t.mappings)
            .filter(|m| switched(m))
            .map(|m| m.mapping.legacy.as_str())
            .collect();
        // Every migrated table's `*` is spelled out, whatever its routing.
        if ctx.rules.tables.is_empty() {
            return None;
        }
        let legacy_names = TableFilter::new(names);
        Some(Reads {
            ctx,
            scopes: Vec::new(),
            ctes: Vec::new(),
            legacy_names,
        })
    }

    /// Refuses the statement, naming the migrations whose switched legacy
    /// columns the reason mentions (else every switched one).
    fn refuse(&mut self, reason: String) {
        let tables = &self.ctx.rules.tables;
        let named = |t: &&CompiledTable| {
            t.mappings.iter().any(|m| {
                switched(m) && TableFilter::new([m.mapping.legacy.as_str()]).may_touch(&reason)
            })
        };
        let mut blamed: Vec<&CompiledTable> = tables.iter().filter(named).collect();
        if blamed.is_empty() {
            blamed = tables
                .iter()
                .filter(|t| t.mappings.iter().any(switched))
                .collect();
        }
        if blamed.is_empty() {
            blamed = tables.iter().collect();
        }
        let mut migrations: Vec<String> = blamed
            .iter()
            .flat_map(|t| t.mappings.iter().map(|m| m.mapping.migration.clone()))
            .collect();
        migrations.sort();
        migrations.dedup();
        self.ctx.refuse_migrations(migrations, reason);
    }

    /// Refuses the statement for `table`'s migrations.
    fn refuse_for(&mut self, table: &CompiledTable, reason: &str) {
        self.ctx.refuse(table, reason);
    }

    pub(super) fn query(&mut self, q: &Query) {
        let mut names = HashSet::new();
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.query(&cte.query);
                names.insert(fold(&cte.alias.name));
            }
        }
        self.ctes.push(names);
        self.set_expr(&q.body, q.order_by.as_ref());
        self.ctes.pop();
    }

    fn set_expr(&mut self, body: &SetExpr, order_by: Option<&OrderBy>) {
        match body {
            SetExpr::Select(s) => self.select(s, order_by),
            SetExpr::Query(q) => self.query(q),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left, None);
                self.set_expr(right, None);
            }
            SetExpr::Values(v) => {
                for row in &v.rows {
                    row.content.iter().for_each(|e| self.expr(e));
                }
            }
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
                self.statement(s)
            }
            _ => {}
        }
    }

    /// Reads inside a data-modifying statement.
    pub(super) fn statement(&mut self, s: &sqlparser::ast::Statement) {
        use sqlparser::ast::Statement;
        match s {
            Statement::Query(q) => self.query(q),
            Statement::Insert(i) => self.insert(i),
            Statement::Update(u) => self.update(u),
            Statement::Delete(d) => self.delete(d),
            Statement::Merge(m) => self.merge(m),
            Statement::Prepare { statement, .. } | Statement::Explain { statement, .. } => {
                self.statement(statement)
            }
            Statement::Declare { stmts, .. } => {
                for d in stmts {
                    if let Some(q) = &d.for_query {
                        self.query(q);
                    }
                }
            }
            Statement::Copy {
                source, to: true, ..
            } => self.copy_out(source),
            _ => {}
        }
    }

    /// `COPY (query) TO` reads like the query; `COPY t [(cols)] TO` of a
    /// table whose reads are switched becomes `COPY (SELECT ...) TO`, so
    /// that the legacy column comes from the new one.
    fn copy_out(&mut self, source: &sqlparser::ast::CopySource) {
        use sqlparser::ast::CopySource;
        let (table_name, columns) = match source {
            CopySource::Query(q) => return self.query(q),
            CopySource::Table {
                table_name,
                columns,
            } => (table_name, columns),
        };
        let Some(table) = self
            .ctx
            .resolve(table_name)
            .filter(|t| t.mappings.iter().any(switched))
        else {
            return;
        };
        let Some(start) = self.ctx.map.offset(table_name.span().start) else {
            return self.refuse_for(table, "no source location for COPY");
        };
        let end = match columns.last() {
            None => self.ctx.map.offset(table_name.span().end),
            Some(last) => self.ctx.map.offset(last.span.end).and_then(|at| {
                let rest = &self.ctx.map.text()[at..];
                rest.find(')').map(|p| at + p + 1)
            }),
        };
        let Some(end) = end else {
            return self.refuse_for(table, "no source location for COPY");
        };
        let visible = table.rules.facts.name.name.clone();
        let names: Vec<String> = if columns.is_empty() {
            table.pinned_view()
        } else {
            columns.iter().map(fold).collect()
        };
        let list: Vec<String> = names
            .iter()
            .map(|c| column_text(table, &visible, c))
            .collect();
        let from = &self.ctx.map.text()
            [start..self.ctx.map.offset(table_name.span().end).unwrap_or(start)];
        let text = format!("(SELECT {} FROM {from})", list.join(", "));
        self.ctx.edits.replace(start..end, text);
    }

    fn insert(&mut self, ins: &Insert) {
        if let Some(source) = &ins.source {
            self.query(source);
        }
        let sqlparser::ast::TableObject::TableName(name) = &ins.table else {
            return;
        };
        let visible = match &ins.table_alias {
            Some(a) => fold(&a.alias),
            None => name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(fold)
                .unwrap_or_default(),
        };
        let table = self.ctx.resolve(name);
        // ON CONFLICT sees the proposed row as `excluded`.
        let excluded = Item {
            excluded: true,
            ..Item::new("excluded".into(), table)
        };
        self.scopes
            .push(vec![Item::new(visible.clone(), table), excluded]);
        if let Some(sqlparser::ast::OnInsert::OnConflict(oc)) = &ins.on {
            if let sqlparser::ast::OnConflictAction::DoUpdate(du) = &oc.action {
                du.assignments.iter().for_each(|a| self.expr(&a.value));
                if let Some(sel) = &du.selection {
                    self.expr(sel);
                }
            }
        }
        self.scopes.pop();
        // RETURNING sees the target alone.
        if let Some(items) = &ins.returning {
            self.scopes.push(vec![Item::new(visible, table)]);
            self.projection(items);
            self.scopes.pop();
        }
    }

    fn update(&mut self, upd: &Update) {
        let mut items = Vec::new();
        self.table_with_joins(&upd.table, &mut items);
        if let Some(
            sqlparser::ast::UpdateTableFromKind::AfterSet(from)
            | sqlparser::ast::UpdateTableFromKind::BeforeSet(from),
        ) = &upd.from
        {
            for t in from {
                self.table_with_joins(t, &mut items);
            }
        }
        self.scopes.push(items);
        upd.assignments.iter().for_each(|a| self.expr(&a.value));
        if let Some(sel) = &upd.selection {
            self.expr(sel);
        }
        if let Some(r) = &upd.returning {
            self.projection(r);
        }
        self.scopes.pop();
    }

    /// MERGE reads the target and the source in ON, in each WHEN condition
    /// and in the values it sets or inserts.
    fn merge(&mut self, merge: &sqlparser::ast::Merge) {
        use sqlparser::ast::{MergeAction, MergeInsertKind, MergeUpdateKind};
        let mut items = Vec::new();
        self.factor(&merge.table, &mut items);
        self.factor(&merge.source, &mut items);
        self.scopes.push(items);
        self.expr(&merge.on);
        for clause in &merge.clauses {
            if let Some(p) = &clause.predicate {
                self.expr(p);
            }
            match &clause.action {
                MergeAction::Update(u) => {
                    if let MergeUpdateKind::Set(list) = &u.kind {
                        list.iter().for_each(|a| self.expr(&a.value));
                    }
                }
                MergeAction::Insert(i) => {
                    if let MergeInsertKind::Values(v) = &i.kind {
                        for row in &v.rows {
                            row.content.iter().for_each(|e| self.expr(e));
                        }
                    }
                }
                MergeAction::Delete { .. } | MergeAction::DoNothing { .. } => {}
            }
        }
        self.scopes.pop();
    }

    fn delete(&mut self, del: &Delete) {
        let mut items = Vec::new();
        let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &del.from;
        for t in from {
            self.table_with_joins(t, &mut items);
        }
        for t in del.using.iter().flatten() {
            self.table_with_joins(t, &mut items);
        }
        self.scopes.push(items);
        if let Some(sel) = &del.selection {
            self.expr(sel);
        }
        if let Some(r) = &del.returning {
            self.projection(r);
        }
        self.scopes.pop();
    }

    fn select(&mut self, s: &Select, order_by: Option<&OrderBy>) {
        let mut items = Vec::new();
        for t in &s.from {
            self.table_with_joins(t, &mut items);
        }
        self.scopes.push(items);
        self.projection(&s.projection);
        for t in &s.from {
            for j in &t.joins {
                self.join_constraint(&j.join_operator);
            }
        }
        for e in s
            .selection
            .iter()
            .chain(s.having.iter())
            .chain(s.qualify.iter())
        {
            self.expr(e);
        }
        if let GroupByExpr::Expressions(exprs, _) = &s.group_by {
            exprs.iter().for_each(|e| self.expr(e));
        }
        if let Some(OrderBy {
            kind: OrderByKind::Expressions(list),
            ..
        }) = order_by
        {
            list.iter().for_each(|o| self.expr(&o.expr));
        }
        self.scopes.pop();
    }

    fn projection(&mut self, items: &[SelectItem]) {
        for item in items {
            match item {
                SelectItem::UnnamedExpr(e) => match self.column_ref(e) {
                    Some((replacement, name)) => {
                        self.replace(e, format!("{replacement} AS {}", quoted(&name)))
                    }
                    None => {
                        let before = self.ctx.edits.len();
                        self.expr(e);
                        // PostgreSQL names some expressions after a column
                        // inside them (`x::text`, `CASE ... ELSE x END`):
                        // keep the legacy name if that column was replaced.
                        let name = output_name(e).filter(|n| self.legacy_names.may_touch(n));
                        if let (true, Some(name)) = (self.ctx.edits.len() > before, name) {
                            match self.ctx.range(e) {
                                Some(r) => self
                                    .ctx
                                    .edits
                                    .insert(r.end, format!(" AS {}", quoted(&name))),
                                None => self.refuse(format!("no source location for {e}")),
                            }
                        }
                    }
                },
                SelectItem::ExprWithAlias { expr, .. }
                | SelectItem::ExprWithAliases { expr, .. } => self.expr(expr),
                // `* alias` is a syntax error in PostgreSQL: left for it to say.
                SelectItem::Wildcard(opts) if opts.opt_alias.is_some() => {}
                SelectItem::Wildcard(opts) => self.wildcard(opts.wildcard_token.0.span),
                SelectItem::QualifiedWildcard(kind, opts) => {
                    let sqlparser::ast::SelectItemQualifiedWildcardKind::ObjectName(name) = kind
                    else {
                        continue;
                    };
                    let Some(q) = name.0.last().and_then(|p| p.as_ident()).map(fold) else {
                        continue;
                    };
                    let item = self
                        .scopes
                        .iter()
                        .rev()
                        .find_map(|s| s.iter().find(|i| i.visible == q));
                    if let Some(Item {
                        visible,
                        table: Some(table),
                        ..
                    }) = item
                    {
                        if reshaped(table) {
                            let (visible, table) = (visible.clone(), *table);
                            // PostgreSQL ignores an alias after `t.*`; the
                            // expansion replaces it too.
                            let mut span = name.span().union(&opts.wildcard_token.0.span);
                            if let Some(alias) = &opts.opt_alias {
                                span = span.union(&alias.span);
                            }
                            self.expand(span, &[(visible, Some(table))]);
                        }
                    }
                }
            }
        }
    }

    /// `*` over the current FROM items: spelled out when a legacy column
    /// among them is served from the new one.
    fn wildcard(&mut self, at: sqlparser::tokenizer::Span) {
        let scope: Vec<(String, Option<&'a CompiledTable>, bool)> = self
            .scopes
            .last()
            .into_iter()
            .flatten()
            .map(|i| (i.visible.clone(), i.table, i.merged))
            .collect();
        if !scope.iter().any(|(_, t, _)| t.is_some_and(reshaped)) {
            return;
        }
        if scope.iter().any(|(v, _, merged)| *merged || v.is_empty()) {
            let table = scope
                .iter()
                .find_map(|(_, t, _)| t.filter(|t| reshaped(t)))
                .expect("a reshaped table is in scope");
            return self.refuse_for(
                table,
                "`*` over a join with USING or NATURAL, or an unnamed subquery, with a migrated table; name the columns",
            );
        }
        let items: Vec<(String, Option<&'a CompiledTable>)> =
            scope.into_iter().map(|(v, t, _)| (v, t)).collect();
        self.expand(at, &items);
    }

    /// Replaces `*` (or `t.*`) by the columns of `items` as the
    /// application knew them, each switched legacy column served from the
    /// new one in its place.
    fn expand(
        &mut self,
        span: sqlparser::tokenizer::Span,
        items: &[(String, Option<&'a CompiledTable>)],
    ) {
        // `(*)` is no select item PostgreSQL accepts, and `(t.*)` is one
        // composite value: a list in its place would not parse or would
        // change the shape (found by fuzzing).
        let opened = self
            .ctx
            .map
            .offset(span.start)
            .is_some_and(|at| self.ctx.map.text()[..at].trim_end().ends_with('('));
        if opened {
            return;
        }
        let mut columns = Vec::new();
        for (visible, table) in items {
            match table {
                Some(table) if reshaped(table) => {
                    if table.view_unknown() {
                        return self.refuse_for(
                            table,
                            "`*` over a contracted table whose legacy column position is unknown",
                        );
                    }
                    columns.extend(
                        table
                            .pinned_view()
                            .iter()
                            .map(|c| column_text(table, visible, c)),
                    );
                }
                _ => columns.push(format!("{}.*", quoted(visible))),
            }
        }
        match self.ctx.map.range(span) {
            Some(r) if !r.is_empty() => self.ctx.edits.replace(r, columns.join(", ")),
            _ => self.refuse("no source location for `*`".into()),
        }
    }

    fn join_constraint(&mut self, op: &JoinOperator) {
        use JoinOperator as J;
        let c = match op {
            J::Join(c)
            | J::Inner(c)
            | J::Left(c)
            | J::LeftOuter(c)
            | J::Right(c)
            | J::RightOuter(c)
            | J::FullOuter(c)
            | J::CrossJoin(c)
            | J::Semi(c)
            | J::LeftSemi(c)
            | J::RightSemi(c)
            | J::Anti(c)
            | J::LeftAnti(c)
            | J::RightAnti(c)
            | J::StraightJoin(c) => c,
            _ => return,
        };
        match c {
            JoinConstraint::On(e) => self.expr(e),
            JoinConstraint::Using(cols) | JoinConstraint::UsingAlias(cols, _) => {
                let text: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
                if self.legacy_names.may_touch(&text.join(" ")) {
                    self.refuse("JOIN ... USING a legacy column".into());
                }
            }
            _ => {}
        }
    }

    fn table_with_joins(&mut self, t: &TableWithJoins, items: &mut Vec<Item<'a>>) {
        self.factor(&t.relation, items);
        for j in &t.joins {
            let before = items.len();
            self.factor(&j.relation, items);
            if merges(&j.join_operator) {
                items[before..].iter_mut().for_each(|i| i.merged = true);
            }
        }
    }

    fn factor(&mut self, f: &TableFactor, items: &mut Vec<Item<'a>>) {
        match f {
            TableFactor::Table { name, alias, .. } => {
                let bare = name
                    .0
                    .last()
                    .and_then(|p| p.as_ident())
                    .map(fold)
                    .unwrap_or_default();
                let is_cte = name.0.len() == 1 && self.ctes.iter().any(|c| c.contains(&bare));
                let table = if is_cte { None } else { self.ctx.resolve(name) };
                let visible = alias.as_ref().map(|a| fold(&a.name)).unwrap_or(bare);
                items.push(Item::new(visible, table));
            }
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                self.query(subquery);
                items.push(Item::new(
                    alias.as_ref().map(|a| fold(&a.name)).unwrap_or_default(),
                    None,
                ));
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.table_with_joins(table_with_joins, items),
            other => {
                if self.legacy_names.may_touch(&other.to_string()) {
                    self.refuse(format!(
                        "a FROM item of this form mentions a legacy column: {other}"
                    ));
                }
                items.push(Item::new(String::new(), None));
            }
        }
    }

    fn replace(&mut self, e: &Expr, text: String) {
        match self.ctx.map.range(e.span()) {
            Some(r) if !r.is_empty() => self.ctx.edits.replace(r, text),
            _ => self.refuse(format!("no source location for {e}")),
        }
    }

    /// If `e` is a column reference to a switched legacy column: the
    /// replacement text and the output name.
    fn column_ref(&mut self, e: &Expr) -> Option<(String, String)> {
        let (qualifier, column) = match e {
            Expr::Identifier(i) => (None, fold(i)),
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => (
                Some(fold(&parts[parts.len() - 2])),
                fold(&parts[parts.len() - 1]),
            ),
            _ => return None,
        };
        let (item_name, mapping) = self.resolve(qualifier.as_deref(), &column)?;
        let text = mapping.backward_read(&quoted(&item_name));
        Some((format!("({text})"), column))
    }

    fn resolve(
        &mut self,
        qualifier: Option<&str>,
        column: &str,
    ) -> Option<(String, &'a CompiledMapping)> {
        let find = |item: &Item<'a>| -> Option<&'a CompiledMapping> {
            item.table?.mappings.iter().find(|m| {
                m.mapping.legacy == column
                    && switched(m)
                    && !(item.excluded && m.mapping.routing.legacy_exists())
            })
        };
        match qualifier {
            Some(q) => {
                for scope in self.scopes.iter().rev() {
                    if let Some(item) = scope.iter().find(|i| i.visible == q) {
                        return find(item).map(|m| (item.visible.clone(), m));
                    }
                }
                None
            }
            None => {
                for (depth, scope) in self.scopes.iter().enumerate().rev() {
                    if let Some((item, m)) = scope.iter().find_map(|i| find(i).map(|m| (i, m))) {
                        return Some((item.visible.clone(), m));
                    }
                    if scope.iter().any(|i| i.table.is_none()) {
                        // Owned by an unknown FROM item here, or an outer
                        // reference to a routed table. While the legacy
                        // column exists, reading it as written is safe (it
                        // is dual-written); once dropped, refuse.
                        let dropped = self.scopes[..depth]
                            .iter()
                            .flatten()
                            .filter_map(&find)
                            .any(|m| !m.mapping.routing.legacy_exists());
                        if dropped {
                            self.refuse(format!("ambiguous reference to {column}; qualify it"));
                        }
                        return None;
                    }
                }
                None
            }
        }
    }

    fn expr(&mut self, e: &Expr) {
        if let Some((replacement, _)) = self.column_ref(e) {
            return self.replace(e, replacement);
        }
        match e {
            Expr::Identifier(_)
            | Expr::CompoundIdentifier(_)
            | Expr::Value(_)
            | Expr::TypedString(_) => {}
            Expr::BinaryOp { left, right, .. }
            | Expr::AnyOp { left, right, .. }
            | Expr::AllOp { left, right, .. }
            | Expr::IsDistinctFrom(left, right)
            | Expr::IsNotDistinctFrom(left, right) => {
                self.expr(left);
                self.expr(right);
            }
            Expr::UnaryOp { expr, .. }
            | Expr::Nested(expr)
            | Expr::IsNull(expr)
            | Expr::IsNotNull(expr)
            | Expr::IsTrue(expr)
            | Expr::IsNotTrue(expr)
            | Expr::IsFalse(expr)
            | Expr::IsNotFalse(expr)
            | Expr::IsUnknown(expr)
            | Expr::IsNotUnknown(expr)
            | Expr::Cast { expr, .. }
            | Expr::Collate { expr, .. }
            | Expr::Extract { expr, .. }
            | Expr::AtTimeZone {
                timestamp: expr, ..
            } => self.expr(expr),
            Expr::Between {
                expr, low, high, ..
            } => {
                self.expr(expr);
                self.expr(low);
                self.expr(high);
            }
            Expr::Like { expr, pattern, .. }
            | Expr::ILike { expr, pattern, .. }
            | Expr::SimilarTo { expr, pattern, .. } => {
                self.expr(expr);
                self.expr(pattern);
            }
            Expr::In { expr, target, .. } => {
                self.expr(expr);
                match target {
                    InTarget::List(list) => list.iter().for_each(|e| self.expr(e)),
                    InTarget::Subquery(q) => self.query(q),
                    other => self.unknown(&other.to_string()),
                }
            }
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                if let Some(o) = operand {
                    self.expr(o);
                }
                for c in conditions {
                    self.expr(&c.condition);
                    self.expr(&c.result);
                }
                if let Some(e) = else_result {
                    self.expr(e);
                }
            }
            Expr::Function(f) => {
                match &f.args {
                    FunctionArguments::List(list) => {
                        for arg in &list.args {
                            let (FunctionArg::Unnamed(a)
                            | FunctionArg::Named { arg: a, .. }
                            | FunctionArg::ExprNamed { arg: a, .. }) = arg;
                            if let FunctionArgExpr::Expr(e) = a {
                                self.expr(e);
                            }
                        }
                    }
                    FunctionArguments::Subquery(q) => self.query(q),
                    FunctionArguments::None => {}
                }
                if let FunctionArguments::List(list) = &f.args {
                    for clause in &list.clauses {
                        match clause {
                            FunctionArgumentClause::OrderBy(list) => {
                                list.iter().for_each(|o| self.expr(&o.expr))
                            }
                            FunctionArgumentClause::Where(e) | FunctionArgumentClause::Limit(e) => {
                                self.expr(e)
                            }
                            other => self.unknown(&other.to_string()),
                        }
                    }
                }
                if let Some(filter) = &f.filter {
                    self.expr(filter);
                }
                f.within_group.iter().for_each(|o| self.expr(&o.expr));
                match &f.over {
                    Some(WindowType::WindowSpec(spec)) => {
                        spec.partition_by.iter().for_each(|e| self.expr(e));
                        spec.order_by.iter().for_each(|o| self.expr(&o.expr));
                        if let Some(frame) = &spec.window_frame {
                            self.unknown(&format!("{frame:?}"));
                        }
                    }
                    Some(WindowType::NamedWindow(_)) | None => {}
                }
            }
            Expr::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => {
                self.expr(expr);
                for e in substring_from.iter().chain(substring_for.iter()) {
                    self.expr(e);
                }
            }
            Expr::Trim {
                expr,
                trim_what,
                trim_characters,
                ..
            } => {
                self.expr(expr);
                if let Some(w) = trim_what {
                    self.expr(w);
                }
                trim_characters.iter().flatten().for_each(|e| self.expr(e));
            }
            Expr::Position { expr, r#in } => {
                self.expr(expr);
                self.expr(r#in);
            }
            Expr::Overlay {
                expr,
                overlay_what,
                overlay_from,
                overlay_for,
            } => {
                self.expr(expr);
                self.expr(overlay_what);
                self.expr(overlay_from);
                if let Some(e) = overlay_for {
                    self.expr(e);
                }
            }
            Expr::Array(a) => a.elem.iter().for_each(|e| self.expr(e)),
            Expr::Exists { subquery, .. } | Expr::Subquery(subquery) => self.query(subquery),
            Expr::Tuple(list) => list.iter().for_each(|e| self.expr(e)),
            other => self.unknown(&other.to_string()),
        }
    }

    /// A form the walker does not descend into: refuse if it mentions a
    /// switched legacy column.
    fn unknown(&mut self, text: &str) {
        if self.legacy_names.may_touch(text) {
            self.refuse(format!("cannot route the legacy column inside: {text}"));
        }
    }
}

/// Column `c` of `table` (seen as `visible`) as the application knew it:
/// a switched legacy column is `backward(new)` cast to its type.
fn column_text(table: &CompiledTable, visible: &str, c: &str) -> String {
    match table
        .mappings
        .iter()
        .find(|m| m.mapping.legacy == c && switched(m))
    {
        Some(m) => format!("({}) AS {}", m.backward_read(&quoted(visible)), quoted(c)),
        None => format!("{}.{}", quoted(visible), quoted(c)),
    }
}

/// Whether a join merges its columns (USING, NATURAL).
fn merges(op: &JoinOperator) -> bool {
    use JoinOperator as J;
    let c = match op {
        J::Join(c)
        | J::Inner(c)
        | J::Left(c)
        | J::LeftOuter(c)
        | J::Right(c)
        | J::RightOuter(c)
        | J::FullOuter(c) => c,
        _ => return false,
    };
    matches!(
        c,
        JoinConstraint::Using(_) | JoinConstraint::UsingAlias(..) | JoinConstraint::Natural
    )
}

/// The output column name PostgreSQL gives an unaliased expression when it
/// derives it from a column reference (FigureColname); `None` otherwise.
fn output_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(fold(i)),
        Expr::CompoundIdentifier(parts) => parts.last().map(fold),
        Expr::Nested(inner)
        | Expr::Cast { expr: inner, .. }
        | Expr::Collate { expr: inner, .. } => output_name(inner),
        Expr::Case { else_result, .. } => else_result.as_deref().and_then(output_name),
        _ => None,
    }
}
