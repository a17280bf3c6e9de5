//! The demo's built-in application: a few sessions of prepared INSERT,
//! UPDATE and SELECT through the proxy, with latency kept per phase.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Latencies and errors, per phase label.
#[derive(Default)]
pub struct Stats {
    latencies: Mutex<BTreeMap<String, Vec<u32>>>,
    /// Statements that succeeded.
    pub statements: AtomicU64,
    /// Statements that failed.
    pub errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    phase: Mutex<String>,
}

impl Stats {
    /// Labels what follows with `phase`.
    pub fn set_phase(&self, phase: &str) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase.to_owned();
    }

    fn record(&self, micros: u32) {
        let phase = self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(phase)
            .or_default()
            .push(micros);
        self.statements.fetch_add(1, Ordering::Relaxed);
    }

    fn error(&self, e: &tokio_postgres::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(
                e.as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_else(|| e.to_string()),
            );
        }
    }

    /// The first client error, if any.
    pub fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// (phase, statements, p50 µs, p99 µs) in the order phases started.
    pub fn per_phase(&self, order: &[&str]) -> Vec<(String, usize, u32, u32)> {
        let mut map = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
        order
            .iter()
            .filter_map(|p| {
                let v = map.get_mut(*p)?;
                v.sort_unstable();
                let pct = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
                Some((p.to_string(), v.len(), pct(0.5), pct(0.99)))
            })
            .collect()
    }
}

/// Runs `sessions` application sessions against `conn` until `stop`.
pub async fn run(
    conn: String,
    sessions: usize,
    rows: i64,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
) {
    let mut tasks = Vec::new();
    for s in 0..sessions {
        let (conn, stats, stop) = (conn.clone(), stats.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let Ok((client, connection)) =
                tokio_postgres::connect(&conn, tokio_postgres::NoTls).await
            else {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                return;
            };
            tokio::spawn(connection);
            let (Ok(insert), Ok(update), Ok(select)) = (
                client
                    .prepare(
                        "INSERT INTO users (email, name, status) VALUES ($1, $2, $3) RETURNING id",
                    )
                    .await,
                client
                    .prepare("UPDATE users SET status = $1 WHERE id = $2")
                    .await,
                client
                    .prepare("SELECT email, status FROM users WHERE id = $1")
                    .await,
            ) else {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let mut i: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let id = 1 + (i * 7919 + s as i64 * 104_729) % rows;
                let status = (i % 3) as i32;
                let started = Instant::now();
                let result = match i % 4 {
                    0 => client
                        .query_one(
                            &insert,
                            &[&format!("Demo{s}x{i}@Example.com"), &"demo", &status],
                        )
                        .await
                        .map(|_| ()),
                    1 => client.execute(&update, &[&status, &id]).await.map(|_| ()),
                    _ => client.query_opt(&select, &[&id]).await.map(|_| ()),
                };
                match result {
                    Ok(()) => {
                        stats.record(started.elapsed().as_micros().min(u32::MAX as u128) as u32)
                    }
                    Err(e) => {
                        stats.error(&e);
                        // A closed connection fails at once, without
                        // yielding: this session is over.
                        if client.is_closed() {
                            return;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
