//! Building rule sets from a live catalog, as the control plane will.

use switchyard::routing::RulesHub;
use switchyard_rules::{
    ColumnFact, ColumnMapping, Phase, QualifiedName, RuleSet, TableFacts, TableRules,
};

/// Reads a table's columns (in order, with types and defaults) and key.
pub async fn table_facts(
    client: &tokio_postgres::Client,
    schema: &str,
    table: &str,
) -> anyhow::Result<TableFacts> {
    let rows = client
        .query(
            "select a.attname::text, format_type(a.atttypid, a.atttypmod), pg_get_expr(d.adbin, d.adrelid)
             from pg_attribute a
             join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
             left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
             where n.nspname = $1 and c.relname = $2 and a.attnum > 0 and not a.attisdropped
             order by a.attnum",
            &[&schema, &table],
        )
        .await?;
    let columns = rows
        .iter()
        .map(|r| ColumnFact {
            name: r.get(0),
            sql_type: r.get(1),
            default: r.get(2),
        })
        .collect();
    let key = client
        .query(
            "select a.attname::text from pg_index i
             join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
             where i.indrelid = ($1 || '.' || $2)::regclass and i.indisprimary",
            &[&schema, &table],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(TableFacts {
        name: QualifiedName::new(schema, table),
        columns,
        key,
    })
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
    };
    RuleSet {
        version,
        database: database.into(),
        tables: vec![TableRules {
            facts,
            mappings: vec![mapping],
        }],
        shadows: vec![],
    }
}

/// Installs `set` and panics on a bad rule set (tests only).
pub fn install(hub: &RulesHub, set: RuleSet) {
    hub.install(set).expect("valid rule set");
}
