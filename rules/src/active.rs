//! A rule set compiled for the hot path: templates parsed, the pre-filter
//! built, and name lookups indexed. Built once per rules version.

use std::sync::Arc;

use crate::model::{ColumnMapping, QualifiedName, RuleSet, TableRules, TypedColumn, WriteRoute};
use crate::prefilter::TableFilter;
use crate::rewrite::{self, Rewrite};
use crate::template::{Template, TemplateError};

/// One column pair with its compiled expressions.
#[derive(Debug, Clone)]
pub struct CompiledMapping {
    /// The pair as configured.
    pub mapping: ColumnMapping,
    /// `forward`, with holes for the legacy column(s).
    pub forward: Template,
    /// `backward`, with holes for the new column(s).
    pub backward: Template,
    /// The columns `forward` reads: the legacy column, or a merge's.
    pub forward_sources: Vec<TypedColumn>,
    /// The columns `backward` reads: the new column, or a split's.
    pub backward_sources: Vec<TypedColumn>,
    /// The longest string literal that goes into `forward` without the
    /// cast to the legacy type, if any may.
    pub literal_bound: Option<usize>,
}

impl CompiledMapping {
    fn compile(m: &ColumnMapping) -> Result<Self, TemplateError> {
        let (forward_sources, backward_sources) = m.sources();
        fn names(cols: &[TypedColumn]) -> Vec<&str> {
            cols.iter().map(|c| c.name.as_str()).collect()
        }
        let literal_bound = (m.forward_takes_literals && m.group.is_none())
            .then(|| crate::bare_literal::length_bound(&m.legacy_type))
            .flatten();
        Ok(CompiledMapping {
            literal_bound,
            forward: Template::compile_over(&m.forward, &names(&forward_sources))?,
            backward: Template::compile_over(&m.backward, &names(&backward_sources))?,
            forward_sources,
            backward_sources,
            mapping: m.clone(),
        })
    }

    /// Whether this pair is part of a split or merge.
    pub fn is_group(&self) -> bool {
        self.mapping.group.is_some()
    }

    /// The legacy value read from a row whose new columns are `qualifier.`
    /// (or bare, with an empty qualifier): `backward` cast to the legacy
    /// type.
    pub fn backward_read(&self, qualifier: &str) -> String {
        let refs: Vec<String> = self
            .backward_sources
            .iter()
            .map(|c| match qualifier {
                "" => crate::rewrite::quoted(&c.name),
                q => format!("{q}.{}", crate::rewrite::quoted(&c.name)),
            })
            .collect();
        format!(
            "{}::{}",
            self.backward.fill_each(&refs),
            self.mapping.legacy_type
        )
    }
}

/// One routed table.
#[derive(Debug, Clone)]
pub struct CompiledTable {
    /// Rules and catalog facts.
    pub rules: TableRules,
    /// Its active pairs.
    pub mappings: Vec<CompiledMapping>,
}

impl CompiledTable {
    /// Writes are dual and the guard trigger heals any row written on one
    /// side only: nothing the proxy cannot rewrite can leave a row
    /// inconsistent.
    pub fn guarded(&self) -> bool {
        self.mappings
            .iter()
            .all(|m| m.mapping.guarded && m.mapping.routing.writes == WriteRoute::Both)
    }

    /// The columns as applications knew them before any contract: the
    /// catalog's columns with each dropped legacy column back in its place.
    pub fn legacy_view(&self) -> Vec<String> {
        let mut columns: Vec<String> = self
            .rules
            .facts
            .columns
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let mut dropped: Vec<(usize, &str)> = self
            .mappings
            .iter()
            .filter(|m| !m.mapping.routing.legacy_exists() && !columns.contains(&m.mapping.legacy))
            .filter_map(|m| Some((m.mapping.legacy_position?, m.mapping.legacy.as_str())))
            .collect();
        dropped.sort();
        dropped.dedup();
        for (at, name) in dropped {
            columns.insert(at.min(columns.len()), name.to_owned());
        }
        columns
    }

    /// Whether any pair rewrites something.
    pub fn is_active(&self) -> bool {
        self.mappings.iter().any(|m| m.mapping.routing.is_active())
    }

    /// The columns `*` stands for while the table is migrated: its columns
    /// as they were before (the legacy ones in their places, the new ones
    /// left out), so that no expand, rollback, flip or contract changes
    /// what a prepared `*` returns. The new columns join `*` at `complete`.
    pub fn pinned_view(&self) -> Vec<String> {
        self.legacy_view()
            .into_iter()
            .filter(|c| !self.mappings.iter().any(|m| m.mapping.new == *c))
            .collect()
    }

    /// Whether a dropped legacy column has no recorded position.
    pub fn view_unknown(&self) -> bool {
        self.mappings.iter().any(|m| {
            !m.mapping.routing.legacy_exists()
                && m.mapping.legacy_position.is_none()
                && self.rules.facts.column(&m.mapping.legacy).is_none()
        })
    }
}

/// Why a rule set cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A forward or backward expression is unusable.
    #[error("migration {migration}: {source}")]
    Template {
        /// The migration.
        migration: String,
        /// What is wrong.
        source: TemplateError,
    },
}

/// The rules the proxy applies, ready for rewriting.
#[derive(Debug, Clone, Default)]
pub struct ActiveRules {
    /// The source rule set.
    pub set: Arc<RuleSet>,
    /// The routed tables with active mappings.
    pub tables: Vec<CompiledTable>,
    /// The pre-filter over their names.
    pub filter: TableFilter,
    /// The pre-filter over tables whose migrations route nothing yet
    /// (`planned`, `expanded`): only a `*` over them is rewritten.
    pub pinned: TableFilter,
    /// Tables whose migrations completed: statements prepared before keep
    /// their rewritten text (see [`RuleSet::retired`]).
    pub retired: TableFilter,
    /// No name or expression of the rules looks like a literal placeholder
    /// (see [`crate::normalize`]), so statements may be cached by shape.
    pub normalizable: bool,
}

impl ActiveRules {
    /// Compiles `set`. Tables whose pairs route nothing yet are kept for
    /// `*` (see [`CompiledTable::pinned_view`]).
    pub fn compile(set: RuleSet) -> Result<Self, RuleError> {
        let mut tables = Vec::new();
        for table in &set.tables {
            let mut mappings = Vec::new();
            for m in &table.mappings {
                let err = |source| RuleError::Template {
                    migration: m.migration.clone(),
                    source,
                };
                mappings.push(CompiledMapping::compile(m).map_err(err)?);
            }
            if !mappings.is_empty() {
                tables.push(CompiledTable {
                    rules: table.clone(),
                    mappings,
                });
            }
        }
        // Views over a migrated column count as the table: a write through
        // one must be looked at.
        let names = |active: bool| {
            TableFilter::new(
                tables
                    .iter()
                    .filter(|t: &&CompiledTable| t.is_active() == active)
                    .flat_map(|t| {
                        std::iter::once(t.rules.facts.name.name.as_str())
                            .chain(t.rules.views.iter().map(|v| v.name.as_str()))
                    }),
            )
        };
        let (filter, pinned) = (names(true), names(false));
        let retired = TableFilter::new(set.retired.iter().map(|t| t.name.as_str()));
        let normalizable = tables.iter().flat_map(|t| &t.mappings).all(|m| {
            let m = &m.mapping;
            [
                &m.legacy,
                &m.new,
                &m.forward,
                &m.backward,
                &m.legacy_type,
                &m.new_type,
            ]
            .iter()
            .all(|s| crate::normalize::is_clean(s))
        });
        Ok(ActiveRules {
            set: Arc::new(set),
            tables,
            filter,
            pinned,
            retired,
            normalizable,
        })
    }

    /// The rules version.
    pub fn version(&self) -> u64 {
        self.set.version
    }

    /// The published version running these rules acknowledges.
    pub fn acknowledges(&self) -> u64 {
        self.set.acknowledges()
    }

    /// Whether `sql` may need a rewrite: it names a table with active
    /// rules, or has a `*` and names a table whose migration routes
    /// nothing yet (its `*` is spelled out).
    pub fn may_rewrite(&self, sql: &str) -> bool {
        self.filter.may_touch(sql) || (sql.contains('*') && self.pinned.may_touch(sql))
    }

    /// Rewrites one query string (possibly several statements) for
    /// `search_path` (schemas in order, `$user` already resolved).
    pub fn rewrite(&self, sql: &str, search_path: &[String]) -> Rewrite {
        rewrite::rewrite(self, sql, search_path)
    }

    /// The routed table `name` resolves to under `search_path`.
    pub fn resolve(
        &self,
        schema: Option<&str>,
        name: &str,
        search_path: &[String],
    ) -> Option<&CompiledTable> {
        match schema {
            Some(schema) => self.find(&QualifiedName::new(schema, name)),
            None => {
                // pg_catalog and pg_temp come first implicitly; a routed
                // table is never there.
                for schema in search_path {
                    let qn = QualifiedName::new(schema.as_str(), name);
                    if let Some(t) = self.find(&qn) {
                        return Some(t);
                    }
                    if self.set.shadows.contains(&qn) {
                        return None;
                    }
                }
                None
            }
        }
    }

    fn find(&self, name: &QualifiedName) -> Option<&CompiledTable> {
        self.tables.iter().find(|t| &t.rules.facts.name == name)
    }
}
