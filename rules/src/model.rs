//! The migration and routing model: phases, routing modes, column mappings
//! and the versioned rule set the proxy reads.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where reads of the legacy column name are served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadRoute {
    /// From the legacy column (no rewrite).
    Legacy,
    /// From the new column, through `backward`.
    New,
}

/// Which columns a write sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteRoute {
    /// Only the legacy column (no rewrite).
    Legacy,
    /// Both columns, whichever one the statement named.
    Both,
    /// Only the new column (the legacy column is gone).
    New,
}

/// The routing of one column pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Routing {
    /// Read routing.
    pub reads: ReadRoute,
    /// Write routing.
    pub writes: WriteRoute,
}

impl Routing {
    /// Legacy reads and writes: nothing is rewritten.
    pub const LEGACY: Routing = Routing {
        reads: ReadRoute::Legacy,
        writes: WriteRoute::Legacy,
    };

    /// Whether the legacy column still exists under this routing.
    pub fn legacy_exists(&self) -> bool {
        self.writes != WriteRoute::New
    }

    /// Whether any statement can be rewritten under this routing.
    pub fn is_active(&self) -> bool {
        *self != Routing::LEGACY
    }
}

/// The phases of a migration, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Created; nothing changed in the database.
    Planned,
    /// New column added, nullable.
    Expanded,
    /// Writes set both columns.
    DualWrite,
    /// Every existing row has new = forward(legacy).
    Backfilled,
    /// A parity pass found no mismatch.
    Verified,
    /// Reads of the legacy name come from the new column.
    ReadsSwitched,
    /// The legacy column is dropped.
    Contracted,
    /// Rules retired.
    Completed,
}

impl Phase {
    /// The routing the proxy applies in this phase (`None`: no rule at all).
    pub fn routing(self) -> Option<Routing> {
        use ReadRoute as R;
        use WriteRoute as W;
        let (reads, writes) = match self {
            Phase::Planned | Phase::Expanded => (R::Legacy, W::Legacy),
            Phase::DualWrite | Phase::Backfilled | Phase::Verified => (R::Legacy, W::Both),
            Phase::ReadsSwitched => (R::New, W::Both),
            Phase::Contracted => (R::New, W::New),
            Phase::Completed => return None,
        };
        Some(Routing { reads, writes })
    }
}

/// A schema-qualified name, stored as PostgreSQL folds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QualifiedName {
    /// Schema, e.g. `public`.
    pub schema: String,
    /// Relation name.
    pub name: String,
}

impl QualifiedName {
    /// Builds a name from its parts.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualifiedName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Parses `schema.table` or `table` (schema `public`), folding unquoted
    /// parts to lower case as PostgreSQL does.
    pub fn parse(text: &str) -> Option<Self> {
        let parts = crate::ident::split_qualified(text)?;
        match parts.as_slice() {
            [name] => Some(QualifiedName::new("public", name.clone())),
            [schema, name] => Some(QualifiedName::new(schema.clone(), name.clone())),
            _ => None,
        }
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            crate::ident::quote(&self.schema),
            crate::ident::quote(&self.name)
        )
    }
}

/// One column of a table as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnFact {
    /// Column name.
    pub name: String,
    /// SQL type as `format_type` prints it.
    pub sql_type: String,
    /// Default expression, if any.
    pub default: Option<String>,
}

/// Catalog facts of a routed table, loaded by whoever builds the rule set, so
/// that the hot path never queries the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableFacts {
    /// The table.
    pub name: QualifiedName,
    /// Columns in attribute order (dropped columns left out).
    pub columns: Vec<ColumnFact>,
    /// Primary key (or unique NOT NULL key) columns.
    pub key: Vec<String>,
    /// Unique indexes over plain columns, without predicates: what an
    /// `ON CONFLICT` target can name.
    #[serde(default)]
    pub unique: Vec<UniqueKey>,
}

/// A unique index an `ON CONFLICT` can use as its arbiter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UniqueKey {
    /// The index.
    pub index: String,
    /// The constraint it backs, if any.
    pub constraint: Option<String>,
    /// Its columns, in order.
    pub columns: Vec<String>,
}

impl TableFacts {
    /// The column named `name`, if the table has it.
    pub fn column(&self, name: &str) -> Option<&ColumnFact> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// A column of a split or merge, with its type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TypedColumn {
    /// Column name.
    pub name: String,
    /// SQL type as `format_type` prints it.
    pub sql_type: String,
}

impl TypedColumn {
    /// A column `name` of type `sql_type`.
    pub fn new(name: impl Into<String>, sql_type: impl Into<String>) -> Self {
        TypedColumn {
            name: name.into(),
            sql_type: sql_type.into(),
        }
    }
}

/// The columns of a split (one legacy, several new) or a merge (several
/// legacy, one new). The entry is stored as one pair per column of the
/// wider side; each pair's `forward` reads every legacy column of the
/// group and its `backward` every new one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Group {
    /// The legacy columns, in the spec's order.
    pub legacy: Vec<TypedColumn>,
    /// The new columns, in the spec's order.
    pub new: Vec<TypedColumn>,
}

impl Group {
    /// The sources of `forward` and `backward` of a pair: the group's
    /// columns, or the pair's own two for a plain pair.
    pub fn sources(
        group: Option<&Group>,
        legacy: TypedColumn,
        new: TypedColumn,
    ) -> (Vec<TypedColumn>, Vec<TypedColumn>) {
        match group {
            Some(g) => (g.legacy.clone(), g.new.clone()),
            None => (vec![legacy], vec![new]),
        }
    }
}

/// One legacy → new column pair and how it is routed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnMapping {
    /// The migration that owns this pair.
    pub migration: String,
    /// The legacy column.
    pub legacy: String,
    /// The legacy column's SQL type.
    pub legacy_type: String,
    /// The new column.
    pub new: String,
    /// The new column's SQL type.
    pub new_type: String,
    /// SQL over the legacy column giving the new value.
    pub forward: String,
    /// SQL over the new column giving the legacy value.
    pub backward: String,
    /// Current routing.
    pub routing: Routing,
    /// Where the legacy column stood among the table's columns before it
    /// was dropped, so that `*` and column-less INSERTs keep their shape
    /// after contract.
    #[serde(default)]
    pub legacy_position: Option<usize>,
    /// What the proxy does, once reads are switched, with a statement that
    /// touches the table but cannot be rewritten.
    #[serde(default)]
    pub on_unsupported: UnsupportedPolicy,
    /// The migration's guard trigger is installed: a write that sets only
    /// one side (COPY, a write through a view) is healed by the database,
    /// so the proxy lets it through.
    #[serde(default)]
    pub guarded: bool,
    /// The split or merge this pair belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
    /// `forward` over a string literal resolves as over the literal cast
    /// to the legacy type (proved against the catalog at creation), so a
    /// short literal may go in without the cast: see
    /// [`crate::bare_literal`].
    #[serde(default)]
    pub forward_takes_literals: bool,
}

impl ColumnMapping {
    /// The columns `forward` reads, then those `backward` reads.
    pub fn sources(&self) -> (Vec<TypedColumn>, Vec<TypedColumn>) {
        Group::sources(
            self.group.as_ref(),
            TypedColumn::new(&self.legacy, &self.legacy_type),
            TypedColumn::new(&self.new, &self.new_type),
        )
    }
}

/// The operator's choice for unrewritable statements after the read switch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnsupportedPolicy {
    /// Refuse with SQLSTATE 0A000 (a missed write would be served stale).
    #[default]
    Refuse,
    /// Forward unchanged, counted and logged; the operator accepts the risk.
    PassThrough,
}

/// The rules of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRules {
    /// Catalog facts.
    pub facts: TableFacts,
    /// Active column pairs.
    pub mappings: Vec<ColumnMapping>,
    /// Views that use a migrated legacy column: a write through one cannot
    /// be dual-written.
    #[serde(default)]
    pub views: Vec<QualifiedName>,
}

/// A versioned, immutable set of routing rules. The proxy swaps whole rule
/// sets atomically; a transaction runs under exactly one version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSet {
    /// Monotonic version number.
    pub version: u64,
    /// The database the rules apply to (other databases pass through).
    pub database: String,
    /// Rules per table.
    pub tables: Vec<TableRules>,
    /// Other relations that share a routed table's bare name, so that an
    /// unqualified name resolves through `search_path` as PostgreSQL would.
    #[serde(default)]
    pub shadows: Vec<QualifiedName>,
    /// A revert swapped in locally before it is published: the published
    /// version it was derived from. Running it acknowledges only that one,
    /// so that no waiter mistakes it for a published version of the same
    /// number.
    #[serde(default)]
    pub local_base: Option<u64>,
    /// Tables whose migrations completed. A statement prepared while one
    /// was migrated keeps its rewritten text: it names only columns that
    /// remain, and re-preparing it would change what `*` returns under a
    /// driver that cached the old shape.
    #[serde(default)]
    pub retired: Vec<QualifiedName>,
}

impl RuleSet {
    /// An empty rule set of `version`.
    pub fn empty(version: u64) -> Self {
        RuleSet {
            version,
            ..RuleSet::default()
        }
    }

    /// Whether any table has a rule that rewrites something.
    pub fn is_active(&self) -> bool {
        self.tables
            .iter()
            .any(|t| t.mappings.iter().any(|m| m.routing.is_active()))
    }

    /// The published version running this set acknowledges.
    pub fn acknowledges(&self) -> u64 {
        self.local_base.unwrap_or(self.version)
    }

    /// The rules of `table`, if routed.
    pub fn table(&self, table: &QualifiedName) -> Option<&TableRules> {
        self.tables.iter().find(|t| &t.facts.name == table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_routing_follows_the_interface_table() {
        use ReadRoute as R;
        use WriteRoute as W;
        let expect = [
            (Phase::Planned, Some((R::Legacy, W::Legacy))),
            (Phase::Expanded, Some((R::Legacy, W::Legacy))),
            (Phase::DualWrite, Some((R::Legacy, W::Both))),
            (Phase::Backfilled, Some((R::Legacy, W::Both))),
            (Phase::Verified, Some((R::Legacy, W::Both))),
            (Phase::ReadsSwitched, Some((R::New, W::Both))),
            (Phase::Contracted, Some((R::New, W::New))),
            (Phase::Completed, None),
        ];
        for (phase, routing) in expect {
            assert_eq!(
                phase.routing().map(|r| (r.reads, r.writes)),
                routing,
                "{phase:?}"
            );
        }
        assert!(!Phase::Contracted.routing().unwrap().legacy_exists());
        assert!(Phase::ReadsSwitched.routing().unwrap().legacy_exists());
    }

    #[test]
    fn qualified_names_fold_like_postgres() {
        assert_eq!(
            QualifiedName::parse("Users"),
            Some(QualifiedName::new("public", "users"))
        );
        assert_eq!(
            QualifiedName::parse("\"App\".\"Users\""),
            Some(QualifiedName::new("App", "Users"))
        );
        assert_eq!(
            QualifiedName::new("public", "Odd Name").to_string(),
            "public.\"Odd Name\""
        );
        assert_eq!(QualifiedName::parse("a.b.c"), None);
    }
}
