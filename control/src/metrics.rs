//! Prometheus metrics of the control plane.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use switchyard_rules::Phase;

/// Label: one migration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MigrationLabel {
    /// Its name.
    pub migration: String,
}

/// Label: one proxy instance.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabel {
    /// Its id.
    pub instance: String,
}

/// The control plane's metrics.
#[derive(Clone, Default)]
pub struct ControlMetrics {
    /// Published rules version.
    pub rules_version: Gauge,
    /// Published version minus this instance's acknowledged version.
    pub acknowledgement_lag: Gauge,
    /// Phase per migration, as its position in the lifecycle (0 = planned … 7 = completed).
    pub phase: Family<MigrationLabel, Gauge>,
    /// Backfill rows done.
    pub backfill_rows: Family<MigrationLabel, Gauge>,
    /// Backfill speed.
    pub backfill_rows_per_second: Family<MigrationLabel, Gauge<f64, AtomicU64>>,
    /// Backfill seconds left.
    pub backfill_eta_seconds: Family<MigrationLabel, Gauge<f64, AtomicU64>>,
    /// 1 while the backfill is throttled or paused.
    pub backfill_throttled: Family<MigrationLabel, Gauge>,
    /// Mismatches found by the last parity pass.
    pub parity_mismatches: Family<MigrationLabel, Gauge>,
    /// DDL tries beyond the first.
    pub ddl_retries: Counter,
    /// Published minus acknowledged rules version, per instance (refreshed
    /// every second by the fleet upkeep).
    pub instance_acknowledgement_lag: Family<InstanceLabel, Gauge>,
    /// Statements this instance saw that still depend on the migration's
    /// legacy side (refreshed every second).
    pub legacy_statements: Family<MigrationLabel, Gauge>,
    /// Seconds since this instance last saw one.
    pub legacy_statement_age_seconds: Family<MigrationLabel, Gauge<f64, AtomicU64>>,
}

impl ControlMetrics {
    /// Creates and registers the metrics under `switchyard_control_`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = ControlMetrics::default();
        let r = registry.sub_registry_with_prefix("switchyard_control");
        r.register(
            "instance_acknowledgement_lag",
            "Published minus acknowledged rules version, per instance",
            m.instance_acknowledgement_lag.clone(),
        );
        r.register(
            "legacy_statements",
            "Statements this instance saw that still depend on the migration's legacy column",
            m.legacy_statements.clone(),
        );
        r.register(
            "legacy_statement_age_seconds",
            "Seconds since this instance last saw a statement that depends on the legacy column",
            m.legacy_statement_age_seconds.clone(),
        );
        r.register(
            "rules_version",
            "Published rules version",
            m.rules_version.clone(),
        );
        r.register(
            "acknowledgement_lag",
            "Published minus acknowledged rules version",
            m.acknowledgement_lag.clone(),
        );
        r.register(
            "phase",
            "Migration phase (0 planned .. 7 completed)",
            m.phase.clone(),
        );
        r.register(
            "backfill_rows",
            "Backfill rows done",
            m.backfill_rows.clone(),
        );
        r.register(
            "backfill_rows_per_second",
            "Backfill speed",
            m.backfill_rows_per_second.clone(),
        );
        r.register(
            "backfill_eta_seconds",
            "Backfill seconds left",
            m.backfill_eta_seconds.clone(),
        );
        r.register(
            "backfill_throttled",
            "1 while the backfill is throttled or paused",
            m.backfill_throttled.clone(),
        );
        r.register(
            "parity_mismatches",
            "Mismatches of the last parity pass",
            m.parity_mismatches.clone(),
        );
        r.register(
            "ddl_retries",
            "DDL tries beyond the first",
            m.ddl_retries.clone(),
        );
        m
    }

    /// Records a migration's phase.
    pub fn set_phase(&self, migration: &str, phase: Phase) {
        self.phase
            .get_or_create(&label(migration))
            .set(phase as i64);
    }

    /// Records this instance's legacy-side statements for `migration`.
    pub fn set_legacy(&self, migration: &str, count: u64, age_seconds: f64) {
        let l = label(migration);
        self.legacy_statements.get_or_create(&l).set(count as i64);
        self.legacy_statement_age_seconds
            .get_or_create(&l)
            .set(age_seconds);
    }

    /// Records the last parity pass's mismatches.
    pub fn set_parity(&self, migration: &str, mismatches: u64) {
        self.parity_mismatches
            .get_or_create(&label(migration))
            .set(mismatches as i64);
    }

    /// Records backfill progress.
    pub fn backfill(&self, migration: &str, p: &switchyard_rules::migration::Progress) {
        let l = label(migration);
        self.backfill_rows.get_or_create(&l).set(p.rows_done as i64);
        self.backfill_rows_per_second
            .get_or_create(&l)
            .set(p.rows_per_second);
        self.backfill_eta_seconds
            .get_or_create(&l)
            .set(p.eta_seconds.unwrap_or(0.0));
        self.backfill_throttled
            .get_or_create(&l)
            .set(p.throttled.is_some() as i64);
    }
}

fn label(migration: &str) -> MigrationLabel {
    MigrationLabel {
        migration: migration.to_owned(),
    }
}
