//! Application clients for tests that drive operators' sequences: each runs
//! a loop of statements through the proxy in a mode the test sets (off,
//! reads, reads and writes), reconnects after a lost connection, and keeps
//! every SQL error it saw. Setting a mode waits until no statement begun
//! under the previous one is still running.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// Nothing.
    Off = 0,
    /// Reads only.
    Read = 1,
    /// Reads and writes.
    Write = 2,
}

/// The statements of one application version on one table.
#[derive(Debug, Clone)]
pub struct Workload {
    /// A label for error messages.
    pub label: String,
    /// `SELECT ... WHERE id = $1` (id is bigint).
    pub read: String,
    /// `INSERT ... VALUES ($1) RETURNING id` with a text parameter.
    pub insert: String,
    /// `UPDATE ... SET col = $1 WHERE id = $2`.
    pub update: String,
    /// A value for `$1` from a counter.
    pub value: fn(u64) -> String,
    /// Ids that exist from the start.
    pub seeded: i64,
}

#[derive(Default)]
struct Shared {
    mode: AtomicU8,
    generation: AtomicU64,
    seen: AtomicU64,
    stop: AtomicBool,
    statements: AtomicU64,
    lost: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// A running client.
pub struct App {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    /// Starts a client of `conn_str` running `work`, in mode `Off`.
    pub fn spawn(conn_str: String, work: Workload) -> Self {
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(run(conn_str, work, shared.clone()));
        App { shared, task }
    }

    /// Sets the mode and waits (30 s at most) until every statement begun
    /// before is done.
    pub async fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.shared.seen.load(Ordering::SeqCst) < generation {
            assert!(Instant::now() < deadline, "an application client hangs");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// SQL errors so far (connection losses are not errors).
    pub fn errors(&self) -> Vec<String> {
        self.shared
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Statements run and connections lost so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.statements.load(Ordering::SeqCst),
            self.shared.lost.load(Ordering::SeqCst),
        )
    }

    /// Stops the loop.
    pub async fn stop(self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
    }
}

/// A lost connection rather than a statement that failed.
fn lost(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.as_db_error().is_none()
        || e.code()
            .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
}

async fn run(conn_str: String, work: Workload, shared: Arc<Shared>) {
    let mut client: Option<Client> = None;
    let mut counter = 0u64;
    let mut mine: Vec<i64> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let generation = shared.generation.load(Ordering::SeqCst);
        let mode = shared.mode.load(Ordering::SeqCst);
        if mode == Mode::Off as u8 {
            shared.seen.store(generation, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let Some(c) = client.as_ref() else {
            client = crate::proxy::connect(&conn_str).await.ok();
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            shared.seen.store(generation, Ordering::SeqCst);
            continue;
        };
        counter += 1;
        let id = match (counter % 4, mine.last()) {
            (0, Some(id)) => *id,
            _ => 1 + (counter as i64 * 7919) % work.seeded,
        };
        let value = (work.value)(counter);
        let result = match (mode, counter % 7) {
            (2, 0 | 3) => c.query_one(&work.insert, &[&value]).await.map(|row| {
                mine.push(row.get(0));
            }),
            (2, 1 | 4) => c.execute(&work.update, &[&value, &id]).await.map(|_| ()),
            // A transaction that spans a few milliseconds, so that flips
            // happen inside transactions too.
            (2, 5) => transaction(c, &work, &value, id).await,
            _ => c.query_opt(&work.read, &[&id]).await.map(|_| ()),
        };
        shared.statements.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = result {
            if lost(&e) {
                shared.lost.fetch_add(1, Ordering::SeqCst);
                client = None;
            } else {
                let message = match e.as_db_error() {
                    Some(db) => format!("{} {}: {}", work.label, db.code().code(), db.message()),
                    None => format!("{}: {e}", work.label),
                };
                shared
                    .errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(message);
            }
        }
        shared.seen.store(generation, Ordering::SeqCst);
    }
}

async fn transaction(
    c: &Client,
    work: &Workload,
    value: &str,
    id: i64,
) -> Result<(), tokio_postgres::Error> {
    c.batch_execute("BEGIN").await?;
    let body = async {
        c.execute(&work.update, &[&value, &id]).await?;
        tokio::time::sleep(Duration::from_millis(3)).await;
        c.query_opt(&work.read, &[&id]).await?;
        c.execute(&work.update, &[&value, &id]).await?;
        c.batch_execute("COMMIT").await
    };
    let result = body.await;
    if result.is_err() {
        let _ = c.batch_execute("ROLLBACK").await;
    }
    result
}
