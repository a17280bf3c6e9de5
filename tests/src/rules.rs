//! Building rule sets from a live catalog for tests that install rules
//! directly, without the control plane.

use switchyard_proxy::routing::RulesHub;
use switchyard_rules::{ColumnMapping, Phase, QualifiedName, RuleSet, TableFacts, TableRules};

/// Reads a table's columns (in order, with types and defaults) and key,
/// the same way the control plane does.
pub async fn table_facts(
    client: &tokio_postgres::Client,
    schema: &str,
    table: &str,
) -> anyhow::Result<TableFacts> {
    Ok(
        switchyard_control::catalog::table_facts(client, &QualifiedName::new(schema, table))
            .await?,
    )
}

/// A single-pair rule set for `database` at `phase`.
#[allow(clippy::too_many_arguments)]
pub fn single_pair(
    version: u64,
    database: &str,
    facts: TableFacts,
    legacy: &str,
    new: &str,
    forward: &str,
    backward: &str,
    phase: Phase,
) -> RuleSet {
    let ty = |c: &str| {
        facts
            .column(c)
            .map(|c| c.sql_type.clone())
            .unwrap_or_else(|| "text".into())
    };
    let mapping = ColumnMapping {
        migration: format!("{}-{legacy}", facts.name.name),
        legacy: legacy.into(),
        legacy_type: ty(legacy),
        new: new.into(),
        new_type: ty(new),
        forward: forward.into(),
        backward: backward.into(),
        routing: phase.routing().unwrap_or(switchyard_rules::Routing::LEGACY),
        legacy_position: facts.columns.iter().position(|c| c.name == legacy),
        on_unsupported: Default::default(),
        guarded: false,
        group: None,
        forward_takes_literals: false,
    };
    RuleSet {
        version,
        database: database.into(),
        tables: vec![TableRules {
            facts,
            mappings: vec![mapping],
            views: vec![],
        }],
        shadows: vec![],
        local_base: None,
        retired: vec![],
    }
}

/// Installs `set` and panics on a bad rule set (tests only).
pub fn install(hub: &RulesHub, set: RuleSet) {
    hub.install(set).expect("valid rule set");
}
