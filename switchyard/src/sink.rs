//! Where the control plane publishes rules: this process's proxy. The
//! adapter lives here so that neither the wire path nor the control plane
//! depends on the other.

use std::sync::Arc;
use std::time::Duration;

use switchyard_control::RulesSink;
use switchyard_proxy::routing::RulesHub;
use switchyard_rules::latency::Histogram;
use switchyard_rules::legacy_use::LegacyUse;
use switchyard_rules::RuleSet;

/// The proxy's rules hub, seen by the control plane.
pub(crate) struct HubSink(pub(crate) Arc<RulesHub>);

impl RulesSink for HubSink {
    fn install(&self, set: RuleSet) -> Result<Duration, String> {
        self.0.install(set).map_err(|e| e.to_string())
    }

    fn acknowledged(&self) -> u64 {
        self.0.acknowledged()
    }

    fn watch_acknowledged(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.watch_acknowledged()
    }

    fn unrewritten_writes(&self) -> Vec<(String, u64)> {
        self.0.resync_needed()
    }

    fn legacy_uses(&self) -> Vec<(String, LegacyUse)> {
        self.0.legacy_uses()
    }

    fn latency(&self) -> Histogram {
        self.0.latency.snapshot()
    }
}
