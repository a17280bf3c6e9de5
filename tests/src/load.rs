//! The application of the zero-downtime proof: tokio-postgres workers, each
//! owning a range of ids and a shadow model of them, running a mix of
//! prepared and simple INSERT, UPDATE (some reading the old value), upserts,
//! DELETE and SELECT by key and by the migrating column through the proxy.
//! Every read is checked against the shadow model. A lost connection is an
//! injected fault: the worker reconnects, re-reads the row whose write was
//! in flight, and goes on; any other error is a failure.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

/// Ids each worker owns.
const RANGE: i32 = 300;

/// What one worker saw.
#[derive(Debug, Default)]
pub struct WorkerReport {
    /// First id of its range.
    pub base: i32,
    /// Statements that succeeded.
    pub ops: u64,
    /// Connections lost (injected faults) and reconnects.
    pub connection_losses: u64,
    /// Errors other than a lost connection, and wrong reads.
    pub failures: Vec<String>,
    /// Latency of successful statements, in µs, per phase label.
    pub latencies: BTreeMap<String, Vec<u32>>,
    /// The rows it owns, as it believes they are: id → qty.
    pub shadow: HashMap<i32, i32>,
}

/// Running workers.
pub struct Load {
    stop: Arc<AtomicBool>,
    label: Arc<Mutex<String>>,
    workers: Vec<tokio::task::JoinHandle<WorkerReport>>,
}

impl Load {
    /// Starts `workers` workers connecting with `conn` (through the proxy).
    pub fn start(conn: &str, workers: usize, first_base: i32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let label = Arc::new(Mutex::new("start".to_owned()));
        let workers = (0..workers)
            .map(|w| {
                let worker = Worker {
                    conn: conn.to_owned(),
                    stop: stop.clone(),
                    label: label.clone(),
                    report: WorkerReport {
                        base: first_base + w as i32 * RANGE,
                        ..Default::default()
                    },
                    uncertain: HashSet::new(),
                    rng: 0x9E37_79B9 ^ ((w as u64 + 1) * 0x1234_5678_9ABC),
                };
                tokio::spawn(worker.run())
            })
            .collect();
        Load {
            stop,
            label,
            workers,
        }
    }

    /// Names the phase that following statements' latencies belong to.
    pub fn label(&self, label: &str) {
        *self.label.lock().unwrap_or_else(|e| e.into_inner()) = label.to_owned();
    }

    /// Stops the workers and returns what they saw.
    pub async fn stop(self) -> Vec<WorkerReport> {
        self.stop.store(true, Ordering::SeqCst);
        let mut reports = Vec::new();
        for w in self.workers {
            reports.push(w.await.expect("worker panicked"));
        }
        reports
    }
}

struct Worker {
    conn: String,
    stop: Arc<AtomicBool>,
    label: Arc<Mutex<String>>,
    report: WorkerReport,
    /// Ids whose last write's outcome is unknown (connection lost).
    uncertain: HashSet<i32>,
    rng: u64,
}

/// A lost connection: the server or the proxy went away.
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.as_db_error().is_none()
        || e.code().is_some_and(|c| {
            let c = c.code();
            c.starts_with("08") || c.starts_with("57P")
        })
}

impl Worker {
    fn next(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n
    }

    async fn run(mut self) -> WorkerReport {
        while !self.stop.load(Ordering::Relaxed) {
            let client = match crate::proxy::connect(&self.conn).await {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.session(&client).await {
                Ok(()) => break,
                Err(e) if connection_lost(&e) => {
                    self.report.connection_losses += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    self.report.failures.push(format!("session: {e}"));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        self.report
    }

    /// One connection's life: resync what is uncertain, then run the mix.
    async fn session(&mut self, c: &Client) -> Result<(), tokio_postgres::Error> {
        let read = c.prepare("SELECT qty FROM items WHERE id = $1").await?;
        for id in std::mem::take(&mut self.uncertain) {
            match c.query_opt(&read, &[&id]).await {
                Ok(row) => {
                    match row {
                        Some(r) => self.report.shadow.insert(id, r.get(0)),
                        None => self.report.shadow.remove(&id),
                    };
                }
                Err(e) => {
                    self.uncertain.insert(id);
                    return Err(e);
                }
            }
        }
        let insert = c
            .prepare("INSERT INTO items (id, qty, note) VALUES ($1, $2, 'rs')")
            .await?;
        let update = c.prepare("UPDATE items SET qty = $1 WHERE id = $2").await?;
        let bump = c
            .prepare("UPDATE items SET qty = qty + 1 WHERE id = $1")
            .await?;
        let upsert = c
            .prepare(
                "INSERT INTO items AS i (id, qty, note) VALUES ($1, $2, 'up')
                 ON CONFLICT (id) DO UPDATE SET qty = i.qty + excluded.qty",
            )
            .await?;
        let delete = c.prepare("DELETE FROM items WHERE id = $1").await?;
        let by_qty = c
            .prepare("SELECT id FROM items WHERE qty = $1 AND id >= $2 AND id < $3 ORDER BY id")
            .await?;
        while !self.stop.load(Ordering::Relaxed) {
            let id = self.report.base + self.next(RANGE as u64) as i32;
            let q = self.next(1_000_000) as i32;
            let op = self.next(9);
            let started = Instant::now();
            // The write's outcome is unknown until it answers.
            self.uncertain.insert(id);
            let known = self.report.shadow.get(&id).copied();
            let result: Result<(), tokio_postgres::Error> = async {
                match op {
                    0 if known.is_none() => {
                        c.execute(&insert, &[&id, &q]).await?;
                        self.report.shadow.insert(id, q);
                    }
                    1 if known.is_none() => {
                        let sql = format!(
                            "INSERT INTO items (id, qty, note) VALUES ({id}, {q}, 'simple')"
                        );
                        c.simple_query(&sql).await?;
                        self.report.shadow.insert(id, q);
                    }
                    0..=2 => {
                        let n = c.execute(&update, &[&q, &id]).await?;
                        self.expect_rows(id, n, known);
                        if known.is_some() {
                            self.report.shadow.insert(id, q);
                        }
                    }
                    3 => {
                        let n = c.execute(&bump, &[&id]).await?;
                        self.expect_rows(id, n, known);
                        if let Some(v) = known {
                            self.report.shadow.insert(id, v + 1);
                        }
                    }
                    4 => {
                        c.execute(&upsert, &[&id, &q]).await?;
                        self.report.shadow.insert(id, known.map_or(q, |v| v + q));
                    }
                    5 => {
                        let n = c.execute(&delete, &[&id]).await?;
                        self.expect_rows(id, n, known);
                        self.report.shadow.remove(&id);
                    }
                    6 => {
                        let got: Option<i32> = c.query_opt(&read, &[&id]).await?.map(|r| r.get(0));
                        self.check(id, got, known);
                    }
                    7 => {
                        let Some(v) = known else { return Ok(()) };
                        let end = self.report.base + RANGE;
                        let rows = c.query(&by_qty, &[&v, &self.report.base, &end]).await?;
                        let got: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
                        let mut want: Vec<i32> = self
                            .report
                            .shadow
                            .iter()
                            .filter(|(_, qty)| **qty == v)
                            .map(|(id, _)| *id)
                            .collect();
                        want.sort_unstable();
                        if got != want {
                            self.report
                                .failures
                                .push(format!("rows with qty {v}: got {got:?}, shadow {want:?}"));
                        }
                    }
                    _ => {
                        let sql = format!("SELECT qty FROM items WHERE id = {id}");
                        let got = c.simple_query(&sql).await?.iter().find_map(|m| match m {
                            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
                            _ => None,
                        });
                        self.check(id, got, known);
                    }
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) => {
                    self.uncertain.remove(&id);
                    self.report.ops += 1;
                    let label = self.label.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    self.report.latencies.entry(label).or_default().push(us);
                }
                Err(e) if connection_lost(&e) => return Err(e),
                Err(e) => {
                    self.uncertain.remove(&id);
                    self.report.failures.push(format!("op {op} on {id}: {e}"));
                }
            }
        }
        Ok(())
    }

    fn check(&mut self, id: i32, got: Option<i32>, want: Option<i32>) {
        if got != want {
            self.report
                .failures
                .push(format!("read of {id}: got {got:?}, shadow {want:?}"));
        }
    }

    fn expect_rows(&mut self, id: i32, n: u64, known: Option<i32>) {
        let want = u64::from(known.is_some());
        if n != want {
            self.report.failures.push(format!(
                "write of {id} touched {n} rows, shadow says {want}"
            ));
        }
    }
}
