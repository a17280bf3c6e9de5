//! Routing publication. The rule set is a pure function of the stored
//! migrations, so every instance builds the same set for a version: a state
//! change bumps the version (with a NOTIFY) in its own transaction, and
//! every instance `sync`s on the notification, or on its periodic poll when
//! a notification was lost.
//!
//! A revert swaps locally first, before the database answers: the swapped
//! set is *local* (`RuleSet::local_base`), acknowledging only the published
//! version it came from, until the published revert replaces it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_rules::migration::{Stage, SwitchedReads};
use switchyard_rules::{ColumnMapping, QualifiedName, ReadRoute, RuleSet, TableRules};
use tokio_postgres::GenericClient;
use tracing::info;

use crate::catalog;
use crate::error::ControlError;
use crate::metrics::ControlMetrics;
use crate::store::{self, StoredMigration};
use crate::RulesSink;

/// What this instance runs.
struct Installed {
    set: RuleSet,
    /// Migrations whose reads a local revert may send back now.
    revertible: HashSet<String>,
}

/// Builds, installs and follows published rule sets.
pub(crate) struct Publisher {
    sink: Arc<dyn RulesSink>,
    database: String,
    installed: Mutex<Installed>,
    metrics: ControlMetrics,
}

/// A local revert's result.
pub(crate) struct LocalRevert {
    /// The local set's version.
    pub version: u64,
    /// The migrations whose reads went back to the legacy column.
    pub reverted: Vec<String>,
    /// How long the swap itself took.
    pub swap: Duration,
}

impl Publisher {
    pub(crate) fn new(sink: Arc<dyn RulesSink>, database: String, metrics: ControlMetrics) -> Self {
        Publisher {
            sink,
            database,
            installed: Mutex::new(Installed {
                set: RuleSet::default(),
                revertible: HashSet::new(),
            }),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Installed> {
        self.installed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The version this instance runs.
    pub(crate) fn installed_version(&self) -> u64 {
        self.lock().set.version
    }

    /// The published version this instance's rules stand for.
    pub(crate) fn installed_acknowledges(&self) -> u64 {
        self.lock().set.acknowledges()
    }

    /// Installs the published version if it is newer than ours (or replaces
    /// a local revert of the same number).
    pub(crate) async fn sync(&self, client: &impl GenericClient) -> Result<u64, ControlError> {
        let version = store::rules_version(client).await?;
        let (current, local) = {
            let i = self.lock();
            (i.set.version, i.set.local_base.is_some())
        };
        if version < current || (version == current && !local) {
            return Ok(version);
        }
        let (set, revertible) = self.build(client, version).await?;
        self.install(set, revertible)?;
        info!(version, "rules synchronised from the database");
        Ok(version)
    }

    /// The rule set the stored migrations describe, as `version`, and the
    /// migrations a local revert may touch.
    async fn build(
        &self,
        client: &impl GenericClient,
        version: u64,
    ) -> Result<(RuleSet, HashSet<String>), ControlError> {
        let all = store::list(client).await?;
        let mut tables: Vec<TableRules> = Vec::new();
        let mut revertible = HashSet::new();
        let mut retired = Vec::new();
        for m in &all {
            self.metrics.set_phase(&m.name, m.phase());
            if let Some(p) = &m.state.parity {
                self.metrics.set_parity(&m.name, p.mismatches);
            }
            let Some(routing) = m.state.routing() else {
                retired.push(table_of(m)?);
                continue;
            };
            if m.state.stage
                == (Stage::ReadsSwitched {
                    reads: SwitchedReads::New,
                })
            {
                revertible.insert(m.name.clone());
            }
            let table = table_of(m)?;
            let facts = catalog::table_facts(client, &table).await?;
            let mappings = m.state.pairs.iter().map(|p| ColumnMapping {
                migration: m.name.clone(),
                legacy: p.legacy.clone(),
                legacy_type: p.legacy_type.clone(),
                new: p.new.clone(),
                new_type: p.new_type.clone(),
                forward: p.forward.clone(),
                backward: p.backward.clone(),
                routing,
                legacy_position: Some(p.legacy_position),
                on_unsupported: Default::default(),
                guarded: m.state.created.guard,
                group: p.group.clone(),
                forward_takes_literals: p.forward_takes_literals,
            });
            let legacy: Vec<String> = m.state.pairs.iter().map(|p| p.legacy.clone()).collect();
            let views = crate::dependencies::views_using(client, &table, &legacy).await?;
            match tables.iter_mut().find(|t| t.facts.name == table) {
                Some(t) => {
                    t.mappings.extend(mappings);
                    t.views.extend(views);
                }
                None => tables.push(TableRules {
                    facts,
                    mappings: mappings.collect(),
                    views,
                }),
            }
        }
        let set = RuleSet {
            version,
            database: self.database.clone(),
            tables,
            shadows: vec![],
            local_base: None,
            retired,
        };
        Ok((set, revertible))
    }

    fn install(&self, set: RuleSet, revertible: HashSet<String>) -> Result<(), ControlError> {
        let mut installed = self.lock();
        // Two publishers may finish out of order; never go back (but a
        // published set replaces a local one of the same number).
        let current = &installed.set;
        if set.version < current.version
            || (set.version == current.version && current.local_base.is_none())
        {
            return Ok(());
        }
        self.sink
            .install(set.clone())
            .map_err(ControlError::Internal)?;
        self.metrics.rules_version.set(set.version as i64);
        *installed = Installed { set, revertible };
        Ok(())
    }

    /// Swaps in a local set with the reads of `name` (or of every migration)
    /// back on the legacy column, where the published state allows it.
    pub(crate) fn revert_locally(&self, name: Option<&str>) -> Result<LocalRevert, ControlError> {
        let mut installed = self.lock();
        let mut set = installed.set.clone();
        set.local_base = Some(set.acknowledges());
        set.version += 1;
        let mut reverted = Vec::new();
        for t in &mut set.tables {
            for m in &mut t.mappings {
                if name.is_some_and(|n| n != m.migration)
                    || !installed.revertible.contains(&m.migration)
                {
                    continue;
                }
                m.routing.reads = ReadRoute::Legacy;
                if !reverted.contains(&m.migration) {
                    reverted.push(m.migration.clone());
                }
            }
        }
        if reverted.is_empty() {
            return Ok(LocalRevert {
                version: installed.set.version,
                reverted,
                swap: Duration::ZERO,
            });
        }
        let swap = self
            .sink
            .install(set.clone())
            .map_err(ControlError::Internal)?;
        for r in &reverted {
            installed.revertible.remove(r);
        }
        let version = set.version;
        installed.set = set;
        Ok(LocalRevert {
            version,
            reverted,
            swap,
        })
    }
}

/// The migrated table, as stored with the migration.
pub(crate) fn table_of(m: &StoredMigration) -> Result<QualifiedName, ControlError> {
    QualifiedName::parse(&m.spec.table)
        .ok_or_else(|| ControlError::Internal(format!("stored table of {}", m.name)))
}
