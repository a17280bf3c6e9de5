//! The rules every session of this proxy reads, swapped atomically, and the
//! acknowledgement the control plane waits for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use switchyard_rules::active::RuleError;
use switchyard_rules::cache::RewriteCache;
use switchyard_rules::latency::LatencyRecorder;
use switchyard_rules::legacy_use::{LegacyUse, Sightings};
use switchyard_rules::{ActiveRules, RuleSet};
use tracing::{info, warn};

/// A pin that holds no version.
const IDLE: u64 = u64::MAX;

/// One session's pinned rules version (see [`RulesHub::pin`]).
#[derive(Debug)]
pub struct Pin {
    id: u64,
    held: Arc<AtomicU64>,
}

/// Shared routing state of one proxy instance.
pub struct RulesHub {
    current: ArcSwap<ActiveRules>,
    /// Rewrites shared by all sessions.
    pub cache: RewriteCache,
    /// Every session's pin: the published version its rules stand for
    /// while it is inside a transaction or pipeline, [`IDLE`] otherwise.
    /// The map changes only when sessions come and go; a pin is one atomic
    /// store, so the per-transaction path hashes nothing.
    pins: DashMap<u64, Arc<AtomicU64>>,
    /// The acknowledged version, for the control plane to wait on.
    acknowledged: tokio::sync::watch::Sender<u64>,
    next_session: AtomicU64,
    logged: DashMap<String, ()>,
    resync: DashMap<String, u64>,
    /// Touched by every statement that names a legacy column: foldhash.
    legacy: DashMap<String, Sightings, foldhash::fast::RandomState>,
    /// Round trips of every session, for the backfill's latency guard.
    pub latency: LatencyRecorder,
}

impl Default for RulesHub {
    fn default() -> Self {
        RulesHub {
            current: ArcSwap::from_pointee(ActiveRules::default()),
            cache: RewriteCache::new(10_000),
            pins: DashMap::new(),
            acknowledged: tokio::sync::watch::Sender::new(0),
            next_session: AtomicU64::new(1),
            logged: DashMap::new(),
            resync: DashMap::new(),
            legacy: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            latency: LatencyRecorder::default(),
        }
    }
}

impl RulesHub {
    /// Compiles and installs a rule set: one atomic swap. Returns the time
    /// the swap itself took.
    pub fn install(&self, set: RuleSet) -> Result<Duration, RuleError> {
        let version = set.version;
        let active = Arc::new(ActiveRules::compile(set)?);
        let started = Instant::now();
        self.current.store(active);
        let took = started.elapsed();
        self.refresh_acknowledged();
        info!(
            version,
            swap_us = took.as_micros() as u64,
            "rules installed"
        );
        Ok(took)
    }

    /// The rules new transactions run under.
    pub fn current(&self) -> Arc<ActiveRules> {
        self.current.load_full()
    }

    /// The lowest published version any open transaction of this instance
    /// still runs under (the current one when none lags behind).
    pub fn acknowledged(&self) -> u64 {
        let current = self.current.load().acknowledges();
        self.pins
            .iter()
            .map(|e| e.value().load(Ordering::SeqCst))
            .fold(current, u64::min)
    }

    /// Follows [`RulesHub::acknowledged`] as it moves.
    pub fn watch_acknowledged(&self) -> tokio::sync::watch::Receiver<u64> {
        self.acknowledged.subscribe()
    }

    fn refresh_acknowledged(&self) {
        let now = self.acknowledged();
        self.acknowledged.send_if_modified(|old| {
            let moved = *old != now;
            *old = now;
            moved
        });
    }

    /// A new session's pin, idle.
    pub fn register(&self) -> Pin {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let held = Arc::new(AtomicU64::new(IDLE));
        self.pins.insert(id, held.clone());
        Pin { id, held }
    }

    /// Records that the session runs under rules acknowledging `version`
    /// until `unpin`.
    pub fn pin(&self, pin: &Pin, version: u64) {
        pin.held.store(version, Ordering::SeqCst);
    }

    /// The session is idle: it holds no version. Only a session that held
    /// an older version than the current one can move the acknowledgement.
    pub fn unpin(&self, pin: &Pin) {
        let held = pin.held.swap(IDLE, Ordering::SeqCst);
        if held != IDLE && held < self.current.load().acknowledges() {
            self.refresh_acknowledged();
        }
    }

    /// The session has ended.
    pub fn release(&self, pin: &Pin) {
        self.unpin(pin);
        self.pins.remove(&pin.id);
    }

    /// Records that writes of `migrations` escaped the rewrite, so their
    /// tables need another backfill pass before parity can pass.
    pub fn note_resync(&self, migrations: &[String]) {
        for m in migrations {
            *self.resync.entry(m.clone()).or_insert(0) += 1;
        }
    }

    /// Records that `sql` still depends on the legacy side of `migrations`.
    pub fn note_legacy(&self, migrations: &[String], sql: &str) {
        for m in migrations {
            match self.legacy.get(m) {
                Some(u) => u.again(sql),
                None => match self.legacy.entry(m.clone()) {
                    dashmap::Entry::Occupied(u) => u.get().again(sql),
                    dashmap::Entry::Vacant(v) => {
                        v.insert(Sightings::first(sql));
                    }
                },
            }
        }
    }

    /// Statements per migration that depended on its legacy side.
    pub fn legacy_uses(&self) -> Vec<(String, LegacyUse)> {
        self.legacy
            .iter()
            .map(|e| (e.key().clone(), e.value().snapshot()))
            .collect()
    }

    /// Unrewritten writes per migration since start.
    pub fn resync_needed(&self) -> Vec<(String, u64)> {
        self.resync
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect()
    }

    /// Logs a statement that could not be rewritten, once per text.
    pub fn log_unsupported(&self, sql: &str, reason: &str) {
        if self.logged.len() < 10_000 && self.logged.insert(sql.to_owned(), ()).is_none() {
            warn!(statement = %sql, reason, "statement touches a routed table but cannot be rewritten");
        }
    }
}
