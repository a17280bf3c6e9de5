//! The proxy instances sharing one database. Each instance keeps one
//! dedicated session that:
//! - `LISTEN`s for rule publications and job requests (a periodic poll
//!   covers a lost notification);
//! - writes its heartbeat and acknowledged rules version to
//!   `switchyard.instances` (at once when the acknowledgement moves);
//! - tries to hold the job advisory lock. The holder alone runs long jobs
//!   (backfill, verify, restore); when it dies its session ends, the lock
//!   is released, and another instance takes over from the checkpoint.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tracing::{info, warn};

use crate::engine::Engine;
use crate::error::ControlError;

/// How often an instance proves it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// An instance whose heartbeat is older drops out of the acknowledgement set.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// How often the published version and the job list are polled.
const POLL: Duration = Duration::from_secs(1);
/// How often the local acknowledgement is compared with the last written.
const ACK_CHECK: Duration = Duration::from_millis(5);
/// The advisory lock whose holder runs jobs.
const JOB_LOCK: &str = "SELECT pg_try_advisory_lock(hashtext('switchyard.jobs'))";
/// Channel of rule publications.
pub const RULES_CHANNEL: &str = "switchyard_rules";
/// Channel of job requests.
pub const JOBS_CHANNEL: &str = "switchyard_jobs";

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

/// The dedicated session and its notifications.
struct Session {
    client: Client,
    notifications: mpsc::UnboundedReceiver<String>,
}

impl Session {
    async fn open(url: &str) -> Result<Self, ControlError> {
        let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
        let (tx, notifications) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        let _ = tx.send(n.channel().to_owned());
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, "fleet session closed");
                        break;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {RULES_CHANNEL}; LISTEN {JOBS_CHANNEL}"))
            .await?;
        Ok(Session {
            client,
            notifications,
        })
    }
}

impl Engine {
    /// Joins the fleet: registers this instance, takes the job lock if it
    /// is free (resuming interrupted jobs), and keeps all of it up to date
    /// in the background until [`Engine::leave`].
    pub async fn join(self: &Arc<Self>) -> Result<(), ControlError> {
        let session = Session::open(&self.url).await?;
        // A predecessor on this host and address is dead: we hold its
        // listening socket now. Do not wait for its heartbeat to go stale.
        let host = self.instance.id.rsplitn(3, '-').nth(2).unwrap_or_default();
        if let Some(addr) = self.instance.proxy_addr.as_ref().filter(|a| {
            a.parse::<std::net::SocketAddr>()
                .is_ok_and(|s| !s.ip().is_unspecified())
        }) {
            session
                .client
                .execute(
                    "DELETE FROM switchyard.instances WHERE proxy_addr = $1 AND id <> $2 AND id LIKE $3",
                    &[addr, &self.instance.id, &format!("{host}-%")],
                )
                .await?;
        }
        self.beat(&session.client).await?;
        self.try_hold(&session.client).await?;
        let engine = self.clone();
        let task = tokio::spawn(async move { engine.run_fleet(Some(session)).await });
        *self.fleet.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(())
    }

    /// Leaves the fleet: stops jobs (they resume on the next holder) and
    /// removes this instance so that no flip waits for it.
    pub async fn leave(&self) {
        if let Some(task) = self.fleet.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        self.holder.store(false, Ordering::SeqCst);
        self.stop_jobs();
        if let Ok(client) = self.db().await {
            let _ = client
                .execute(
                    "DELETE FROM switchyard.instances WHERE id = $1",
                    &[&self.instance.id],
                )
                .await;
        }
    }

    async fn run_fleet(self: Arc<Self>, mut session: Option<Session>) {
        let mut written = self.sink.acknowledged();
        let mut beat = Instant::now();
        let mut poll = Instant::now();
        loop {
            let Some(s) = session.as_mut() else {
                // The session died: whatever we held is released.
                if self.holder.swap(false, Ordering::SeqCst) {
                    warn!("lost the job lock with the fleet session; jobs stop here");
                    self.stop_jobs();
                }
                tokio::time::sleep(POLL).await;
                session = Session::open(&self.url).await.ok();
                continue;
            };
            let woke = tokio::select! {
                n = s.notifications.recv() => match n {
                    Some(channel) => Some(channel),
                    None => {
                        session = None;
                        continue;
                    }
                },
                _ = tokio::time::sleep(ACK_CHECK) => None,
            };
            let result = async {
                match woke.as_deref() {
                    Some(RULES_CHANNEL) => self.sync().await?,
                    Some(_) if self.holder.load(Ordering::SeqCst) => self.scan_jobs().await?,
                    _ => {}
                }
                let ack = self.sink.acknowledged();
                if ack != written || beat.elapsed() >= HEARTBEAT {
                    self.beat(&s.client).await?;
                    written = ack;
                    beat = Instant::now();
                }
                if poll.elapsed() >= POLL {
                    poll = Instant::now();
                    self.sample_latency();
                    self.sync().await?;
                    self.instances().await?;
                    if !self.holder.load(Ordering::SeqCst) {
                        self.try_hold(&s.client).await?;
                    } else {
                        self.scan_jobs().await?;
                        self.save_progress().await?;
                    }
                }
                Ok::<_, ControlError>(())
            }
            .await;
            if let Err(e) = result {
                warn!(error = %e, "fleet upkeep failed");
                if s.client.is_closed() {
                    session = None;
                }
            }
        }
    }

    /// Writes this instance's heartbeat and acknowledged version.
    async fn beat(&self, client: &Client) -> Result<(), ControlError> {
        let ack = self.sink.acknowledged() as i64;
        client
            .execute(
                "INSERT INTO switchyard.instances (id, heartbeat, acknowledged, proxy_addr, control_addr)
                 VALUES ($1, now(), $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET heartbeat = now(), acknowledged = excluded.acknowledged",
                &[
                    &self.instance.id,
                    &ack,
                    &self.instance.proxy_addr,
                    &self.instance.control_addr,
                ],
            )
            .await?;
        self.flush_unrewritten(client).await?;
        Ok(())
    }

    async fn try_hold(self: &Arc<Self>, client: &Client) -> Result<(), ControlError> {
        let held: bool = client.query_one(JOB_LOCK, &[]).await?.get(0);
        if held {
            info!(instance = %self.instance.id, "holding the job lock; this instance runs jobs");
            self.holder.store(true, Ordering::SeqCst);
            self.scan_jobs().await?;
        }
        Ok(())
    }

    /// Waits until every live instance runs the installed version in all
    /// of its open transactions, so that nothing writes under older rules.
    pub(crate) async fn await_acknowledgement(&self) {
        loop {
            // The published version may be newer than ours (published by
            // another instance, notification not yet handled).
            if let Err(e) = self.sync().await {
                warn!(error = %e, "cannot read the published version");
            }
            let version = self.installed_version();
            if self.sink.acknowledged() >= version {
                match self.lagging(version).await {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "cannot read acknowledgements"),
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Live instances that have not acknowledged `version`.
    async fn lagging(&self, version: u64) -> Result<i64, ControlError> {
        let client = self.db().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM switchyard.instances
                 WHERE heartbeat > now() - make_interval(secs => $2) AND acknowledged < $1 AND id <> $3",
                &[&(version as i64), &STALE_AFTER.as_secs_f64(), &self.instance.id],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Adds the writes this instance forwarded unrewritten since its last
    /// report to each migration's persistent counter
    /// (`state.unrewritten_writes`), which parity passes are compared with.
    pub(crate) async fn flush_unrewritten(&self, client: &Client) -> Result<(), ControlError> {
        for (migration, total) in self.sink.unrewritten_writes() {
            let reported = self
                .reported
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&migration)
                .copied()
                .unwrap_or(0);
            if total <= reported {
                continue;
            }
            client
                .execute(
                    "UPDATE switchyard.migrations
                     SET state = jsonb_set(state, '{unrewritten_writes}',
                         to_jsonb(coalesce((state->>'unrewritten_writes')::bigint, 0) + $2))
                     WHERE name = $1",
                    &[&migration, &((total - reported) as i64)],
                )
                .await?;
            self.reported
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(migration, total);
        }
        Ok(())
    }

    /// Every instance, with its acknowledgement and whether it is live; also
    /// refreshes the per-instance acknowledgement-lag metric.
    pub(crate) async fn instances(&self) -> Result<Vec<Value>, ControlError> {
        let client = self.db().await?;
        let rows = client
            .query(
                "SELECT id, acknowledged, proxy_addr, control_addr,
                        extract(epoch FROM now() - heartbeat)::float8,
                        heartbeat > now() - make_interval(secs => $1)
                 FROM switchyard.instances ORDER BY id",
                &[&STALE_AFTER.as_secs_f64()],
            )
            .await?;
        let version = self.installed_version();
        Ok(rows
            .iter()
            .map(|r| {
                let id: String = r.get(0);
                let this = id == self.instance.id;
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
                json!({
                    "id": id,
                    "acknowledged_version": acknowledged,
                    "proxy_addr": r.get::<_, Option<String>>(2),
                    "control_addr": r.get::<_, Option<String>>(3),
                    "heartbeat_age_seconds": r.get::<_, f64>(4),
                    "live": this || r.get::<_, bool>(5),
                    "this": this,
                    "job_holder": this && self.holder.load(Ordering::SeqCst),
                })
            })
            .collect())
    }
}
