//! The proxy instances sharing one database. Each instance keeps one
//! dedicated session that:
//! - `LISTEN`s for rule publications, job changes, relayed DDL requests and
//!   their answers, and acknowledgements (a one-second tick covers a lost
//!   notification and ages heartbeats);
//! - writes its heartbeat and acknowledged rules version to
//!   `switchyard.instances`, at once when the acknowledgement moves (the
//!   proxy's rules hub says so on a watch channel: nothing polls it);
//! - tries to hold the job advisory lock. The holder alone runs jobs and
//!   DDL; when it dies its session ends, the lock is released, and another
//!   instance takes over from the recorded state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tracing::{info, warn};

use crate::engine::Engine;
use crate::error::ControlError;
use crate::store;
use switchyard_rules::legacy_use::LegacyUse;

/// One live instance's statements that depend on a migration's legacy side.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct InstanceUse {
    /// The instance.
    pub instance: String,
    /// What it saw.
    #[serde(flatten)]
    pub seen: LegacyUse,
    /// How long ago the last one was.
    pub seconds_ago: f64,
}

/// How often an instance proves it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// An instance whose heartbeat is older drops out of the acknowledgement set.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// The advisory lock whose holder runs jobs.
const JOB_LOCK: &str = "SELECT pg_try_advisory_lock(hashtext('switchyard.jobs'))";
/// Channel of rule publications.
pub const RULES_CHANNEL: &str = "switchyard_rules";
/// Channel of job changes (started, cancelled, settings).
pub const JOBS_CHANNEL: &str = "switchyard_jobs";
/// Channel of acknowledgements that moved.
const ACKS_CHANNEL: &str = "switchyard_acks";

/// Who this instance is, as `GET /v1/status` shows it.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Unique per process: host, pid and start time.
    pub id: String,
    /// Where applications connect to it.
    pub proxy_addr: Option<String>,
    /// Where its control API listens.
    pub control_addr: Option<String>,
}

impl Instance {
    /// A new identity for this process.
    pub fn new(proxy_addr: Option<String>, control_addr: Option<String>) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "switchyard".into());
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Instance {
            id: format!("{host}-{}-{started:x}", std::process::id()),
            proxy_addr,
            control_addr,
        }
    }
}

/// An instance that has not acknowledged a version yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Behind {
    /// Its id.
    pub instance: String,
    /// The version it acknowledges.
    pub acknowledged: u64,
}

/// Instances behind `version`, in words.
pub(crate) fn describe(version: u64, behind: &[Behind]) -> String {
    let who: Vec<String> = behind
        .iter()
        .map(|b| format!("{} is at v{}", b.instance, b.acknowledged))
        .collect();
    format!(
        "waiting for every instance to acknowledge rules v{version} (no session in a transaction under an older version): {}",
        who.join(", ")
    )
}

/// This instance's membership: identity, the job lock, what it reported.
pub(crate) struct Fleet {
    pub instance: Instance,
    holder: AtomicBool,
    /// Unrewritten writes already added to the database's counters.
    reported: Mutex<HashMap<String, u64>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Ticks whenever an acknowledgement may have moved on any instance.
    acks: watch::Sender<u64>,
    /// Ids of relayed requests that were answered.
    pub answers: broadcast::Sender<i64>,
}

impl Fleet {
    pub(crate) fn new(instance: Instance) -> Self {
        Fleet {
            instance,
            holder: AtomicBool::new(false),
            reported: Mutex::default(),
            task: Mutex::default(),
            acks: watch::Sender::new(0),
            answers: broadcast::Sender::new(64),
        }
    }

    /// Whether this instance holds the job lock.
    pub(crate) fn is_holder(&self) -> bool {
        self.holder.load(Ordering::SeqCst)
    }

    fn poke_acks(&self) {
        self.acks.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// The dedicated session and its notifications.
struct Session {
    client: Client,
    notifications: mpsc::UnboundedReceiver<(String, String)>,
}

impl Session {
    async fn open(url: &str) -> Result<Self, ControlError> {
        let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
        let (tx, notifications) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, "fleet session closed");
                        break;
                    }
                }
            }
        });
        let channels = [
            RULES_CHANNEL,
            JOBS_CHANNEL,
            ACKS_CHANNEL,
            store::REQUESTS_CHANNEL,
            store::ANSWERS_CHANNEL,
        ];
        let listen: Vec<String> = channels.iter().map(|c| format!("LISTEN {c}")).collect();
        client.batch_execute(&listen.join("; ")).await?;
        Ok(Session {
            client,
            notifications,
        })
    }
}

impl Engine {
    /// Joins the fleet: registers this instance, takes the job lock if it
    /// is free (resuming recorded jobs), and keeps all of it up to date in
    /// the background until [`Engine::leave`].
    pub async fn join(self: &Arc<Self>) -> Result<(), ControlError> {
        let session = Session::open(self.db.url()).await?;
        self.retire_predecessor(&session.client).await?;
        self.beat(&session.client, false).await?;
        self.try_hold(&session.client).await?;
        let engine = self.clone();
        let task = tokio::spawn(async move { engine.run_fleet(Some(session)).await });
        *self.fleet.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(())
    }

    /// A predecessor on this host and address is dead: we hold its
    /// listening socket now. Do not wait for its heartbeat to go stale.
    async fn retire_predecessor(&self, client: &Client) -> Result<(), ControlError> {
        let me = &self.fleet.instance;
        let host = me.id.rsplitn(3, '-').nth(2).unwrap_or_default();
        if let Some(addr) = me.proxy_addr.as_ref().filter(|a| {
            a.parse::<std::net::SocketAddr>()
                .is_ok_and(|s| !s.ip().is_unspecified())
        }) {
            client
                .execute(
                    "DELETE FROM switchyard.instances WHERE proxy_addr = $1 AND id <> $2 AND id LIKE $3",
                    &[addr, &me.id, &format!("{host}-%")],
                )
                .await?;
        }
        Ok(())
    }

    /// Leaves the fleet: stops jobs (they resume on the next holder) and
    /// removes this instance so that no flip waits for it.
    pub async fn leave(&self) {
        if let Some(task) = self
            .fleet
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
        self.fleet.holder.store(false, Ordering::SeqCst);
        self.runner.stop_all();
        if let Ok(client) = self.db.session().await {
            let _ = client
                .execute(
                    "DELETE FROM switchyard.instances WHERE id = $1",
                    &[&self.fleet.instance.id],
                )
                .await;
        }
    }

    async fn run_fleet(self: Arc<Self>, mut session: Option<Session>) {
        let mut acknowledged = self.sink.watch_acknowledged();
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let Some(s) = session.as_mut() else {
                // The session died: whatever we held is released.
                if self.fleet.holder.swap(false, Ordering::SeqCst) {
                    warn!("lost the job lock with the fleet session; jobs stop here");
                    self.runner.stop_all();
                }
                tick.tick().await;
                session = Session::open(self.db.url()).await.ok();
                continue;
            };
            let result = tokio::select! {
                n = s.notifications.recv() => match n {
                    Some((channel, payload)) => self.on_notification(&channel, &payload).await,
                    None => {
                        session = None;
                        continue;
                    }
                },
                moved = acknowledged.changed() => match moved {
                    Ok(()) => self.beat(&s.client, true).await,
                    Err(_) => Ok(()),
                },
                _ = tick.tick() => self.upkeep(&s.client).await,
            };
            if let Err(e) = result {
                warn!(error = %e, "fleet upkeep failed");
                if s.client.is_closed() {
                    session = None;
                }
            }
        }
    }

    async fn on_notification(
        self: &Arc<Self>,
        channel: &str,
        payload: &str,
    ) -> Result<(), ControlError> {
        match channel {
            RULES_CHANNEL => {
                let client = self.db.session().await?;
                self.publisher.sync(&*client).await?;
            }
            ACKS_CHANNEL => self.fleet.poke_acks(),
            store::ANSWERS_CHANNEL => {
                if let Ok(id) = payload.parse() {
                    let _ = self.fleet.answers.send(id);
                }
            }
            store::REQUESTS_CHANNEL if self.fleet.is_holder() => self.take_requests().await?,
            JOBS_CHANNEL if self.fleet.is_holder() => self.scan_jobs().await?,
            _ => {}
        }
        Ok(())
    }

    /// Once a second: heartbeat, a poll for lost notifications, the job
    /// lock, and (on the holder) recorded jobs and their progress.
    async fn upkeep(self: &Arc<Self>, client: &Client) -> Result<(), ControlError> {
        self.beat(client, false).await?;
        self.latency.sample(self.sink.latency());
        {
            let shared = self.db.session().await?;
            self.publisher.sync(&*shared).await?;
        }
        self.instances().await?;
        // Heartbeats age: a dead instance stops counting.
        self.fleet.poke_acks();
        if self.fleet.is_holder() {
            self.take_requests().await?;
            self.scan_jobs().await?;
            self.save_progress().await?;
        } else {
            self.try_hold(client).await?;
        }
        Ok(())
    }

    /// Writes this instance's heartbeat and acknowledged version (and says
    /// so to waiters when it moved), then its unrewritten-write counts.
    async fn beat(&self, client: &Client, moved: bool) -> Result<(), ControlError> {
        let ack = self.sink.acknowledged() as i64;
        let me = &self.fleet.instance;
        let uses = self.sink.legacy_uses();
        let now = switchyard_rules::legacy_use::now_unix_ms();
        for (m, u) in &uses {
            let age = (now - u.last_seen_unix_ms).max(0) as f64 / 1000.0;
            self.metrics.set_legacy(m, u.count, age);
        }
        let uses: serde_json::Map<String, serde_json::Value> = uses
            .into_iter()
            .map(|(m, u)| (m, serde_json::json!(u)))
            .collect();
        let uses = serde_json::Value::Object(uses);
        client
            .execute(
                "INSERT INTO switchyard.instances (id, heartbeat, acknowledged, proxy_addr, control_addr, legacy_uses)
                 VALUES ($1, now(), $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET heartbeat = now(), acknowledged = excluded.acknowledged,
                   legacy_uses = excluded.legacy_uses",
                &[&me.id, &ack, &me.proxy_addr, &me.control_addr, &uses],
            )
            .await?;
        if moved {
            client
                .execute("SELECT pg_notify($1, $2)", &[&ACKS_CHANNEL, &me.id])
                .await?;
            self.fleet.poke_acks();
        }
        self.flush_unrewritten().await
    }

    async fn try_hold(self: &Arc<Self>, client: &Client) -> Result<(), ControlError> {
        let held: bool = client.query_one(JOB_LOCK, &[]).await?.get(0);
        if held {
            info!(instance = %self.fleet.instance.id, "holding the job lock; this instance runs jobs");
            self.fleet.holder.store(true, Ordering::SeqCst);
            self.take_requests().await?;
            self.scan_jobs().await?;
        }
        Ok(())
    }

    /// Waits until every live instance runs rules acknowledging `version`
    /// in all of its open transactions, so that nothing writes under older
    /// rules; `waiting` hears who is behind meanwhile. Gives up at
    /// `deadline` naming them.
    pub(crate) async fn await_acknowledgement(
        &self,
        version: u64,
        deadline: Duration,
        mut waiting: impl FnMut(&[Behind]),
    ) -> Result<(), ControlError> {
        let give_up = Instant::now() + deadline;
        let mut local = self.sink.watch_acknowledged();
        let mut remote = self.fleet.acks.subscribe();
        loop {
            {
                let client = self.db.session().await?;
                self.publisher.sync(&*client).await?;
            }
            let behind = self.behind(version).await?;
            if behind.is_empty() {
                return Ok(());
            }
            waiting(&behind);
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ControlError::Conflict(format!(
                    "gave up after {} s {}; end the long transaction there (or wait for it), then issue the verb again",
                    deadline.as_secs(),
                    describe(version, &behind).replacen("waiting ", "", 1)
                )));
            }
            let _ = tokio::time::timeout(left.min(HEARTBEAT), async {
                tokio::select! {
                    _ = local.changed() => {}
                    _ = remote.changed() => {}
                }
            })
            .await;
        }
    }

    /// Live instances (this one included) that do not acknowledge `version`.
    pub(crate) async fn behind(&self, version: u64) -> Result<Vec<Behind>, ControlError> {
        let me = &self.fleet.instance.id;
        let mut behind = Vec::new();
        let ours = self.sink.acknowledged();
        if ours < version {
            behind.push(Behind {
                instance: me.clone(),
                acknowledged: ours,
            });
        }
        let client = self.db.session().await?;
        let rows = client
            .query(
                "SELECT id, acknowledged FROM switchyard.instances
                 WHERE heartbeat > now() - make_interval(secs => $2) AND acknowledged < $1 AND id <> $3
                 ORDER BY id",
                &[&(version as i64), &STALE_AFTER.as_secs_f64(), me],
            )
            .await?;
        behind.extend(rows.iter().map(|r| Behind {
            instance: r.get(0),
            acknowledged: r.get::<_, i64>(1) as u64,
        }));
        Ok(behind)
    }

    /// Per live instance (this one from its own counters, the others from
    /// their last heartbeat): statements that still depend on the legacy
    /// side of `migration`.
    pub(crate) async fn legacy_uses_of(
        &self,
        client: &impl tokio_postgres::GenericClient,
        migration: &str,
    ) -> Result<Vec<InstanceUse>, ControlError> {
        let me = &self.fleet.instance.id;
        let now = switchyard_rules::legacy_use::now_unix_ms();
        let mut uses: Vec<(String, LegacyUse)> = self
            .sink
            .legacy_uses()
            .into_iter()
            .filter(|(m, _)| m == migration)
            .map(|(_, u)| (me.clone(), u))
            .collect();
        let rows = client
            .query(
                "SELECT id, legacy_uses -> $1 FROM switchyard.instances
                 WHERE heartbeat > now() - make_interval(secs => $2) AND id <> $3
                   AND legacy_uses ? $1
                 ORDER BY id",
                &[&migration, &STALE_AFTER.as_secs_f64(), me],
            )
            .await?;
        for r in &rows {
            let value: serde_json::Value = r.get(1);
            if let Ok(u) = serde_json::from_value::<LegacyUse>(value) {
                uses.push((r.get(0), u));
            }
        }
        Ok(uses
            .into_iter()
            .map(|(instance, u)| InstanceUse {
                instance,
                seconds_ago: (now - u.last_seen_unix_ms).max(0) as f64 / 1000.0,
                seen: u,
            })
            .collect())
    }

    /// Adds the writes this instance forwarded unrewritten since its last
    /// report to each migration's counter, which parity passes compare with.
    pub(crate) async fn flush_unrewritten(&self) -> Result<(), ControlError> {
        for (migration, total) in self.sink.unrewritten_writes() {
            let reported = self
                .fleet
                .reported
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&migration)
                .copied()
                .unwrap_or(0);
            if total <= reported {
                continue;
            }
            let mut client = self.db.session().await?;
            let added = total - reported;
            let result = store::update(&mut client, &migration, |m| {
                Ok((
                    switchyard_rules::migration::events::escaped_writes(&m.state, added),
                    (),
                ))
            })
            .await;
            match result {
                Ok(_) | Err(ControlError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            self.fleet
                .reported
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(migration, total);
        }
        Ok(())
    }

    /// Every instance, with its acknowledgement and whether it is live; also
    /// refreshes the per-instance acknowledgement-lag metric.
    pub(crate) async fn instances(&self) -> Result<Vec<serde_json::Value>, ControlError> {
        let client = self.db.session().await?;
        let rows = client
            .query(
                "SELECT id, acknowledged, proxy_addr, control_addr,
                        extract(epoch FROM now() - heartbeat)::float8,
                        heartbeat > now() - make_interval(secs => $1)
                 FROM switchyard.instances ORDER BY id",
                &[&STALE_AFTER.as_secs_f64()],
            )
            .await?;
        let version = self.publisher.installed_acknowledges();
        Ok(rows
            .iter()
            .map(|r| {
                let id: String = r.get(0);
                let this = id == self.fleet.instance.id;
                let acknowledged = if this {
                    self.sink.acknowledged() as i64
                } else {
                    r.get(1)
                };
                let label = crate::metrics::InstanceLabel {
                    instance: id.clone(),
                };
                self.metrics
                    .instance_acknowledgement_lag
                    .get_or_create(&label)
                    .set((version as i64 - acknowledged).max(0));
                serde_json::json!({
                    "id": id,
                    "acknowledged_version": acknowledged,
                    "proxy_addr": r.get::<_, Option<String>>(2),
                    "control_addr": r.get::<_, Option<String>>(3),
                    "heartbeat_age_seconds": r.get::<_, f64>(4),
                    "live": this || r.get::<_, bool>(5),
                    "this": this,
                    "job_holder": this && self.fleet.is_holder(),
                })
            })
            .collect())
    }
}
