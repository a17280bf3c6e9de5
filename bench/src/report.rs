//! Medians over rounds and the ratio table.

use std::collections::BTreeMap;

/// A pgbench cell: query mode and client count.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cell {
    /// `simple` or `prepared`.
    pub mode: String,
    /// Concurrent clients.
    pub clients: u32,
}

/// One pgbench run.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Round number.
    pub round: usize,
    /// `direct`, `switchyard` or `pgbouncer`.
    pub path: String,
    /// The cell.
    pub cell: Cell,
    /// Transactions per second.
    pub tps: f64,
    /// Mean latency in microseconds.
    pub avg_us: f64,
    /// 99th percentile latency in microseconds.
    pub p99_us: f64,
}

/// Median figures per (cell, path).
pub type Table = BTreeMap<(Cell, String), (f64, f64, f64)>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Medians of tps, avg and p99 over rounds.
pub fn summarise(samples: &[Sample]) -> Table {
    let mut groups: BTreeMap<(Cell, String), Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        groups
            .entry((s.cell.clone(), s.path.clone()))
            .or_default()
            .push(s);
    }
    groups
        .into_iter()
        .map(|(k, v)| {
            let tps = median(v.iter().map(|s| s.tps).collect());
            let avg = median(v.iter().map(|s| s.avg_us).collect());
            let p99 = median(v.iter().map(|s| s.p99_us).collect());
            (k, (tps, avg, p99))
        })
        .collect()
}

/// A Markdown table of `paths` with throughput ratios against `baseline`
/// and `reference`, and the latency added over `baseline`.
pub fn render(table: &Table, baseline: &str, reference: &str, paths: &[&str]) -> String {
    let mut out = format!(
        "| mode | c | path | tps | avg µs | p99 µs | tps vs {baseline} | tps vs {reference} | avg added µs |\n|---|---|---|---|---|---|---|---|---|\n"
    );
    let mut cells: Vec<Cell> = table.keys().map(|(c, _)| c.clone()).collect();
    cells.dedup();
    for cell in cells {
        let get = |p: &str| table.get(&(cell.clone(), p.to_string())).copied();
        let (Some(base), Some(refr)) = (get(baseline), get(reference)) else {
            continue;
        };
        for path in paths {
            let Some((tps, avg, p99)) = get(path) else {
                continue;
            };
            out.push_str(&format!(
                "| {} | {} | {path} | {tps:.0} | {avg:.1} | {p99:.1} | {:.2} | {:.2} | {:+.1} |\n",
                cell.mode,
                cell.clients,
                tps / base.0,
                tps / refr.0,
                avg - base.1
            ));
        }
    }
    out
}

/// Raw samples and medians as JSON.
pub fn to_json(samples: &[Sample], table: &Table) -> serde_json::Value {
    let raw: Vec<_> = samples
        .iter()
        .map(|s| {
            serde_json::json!({"round": s.round, "path": s.path, "mode": s.cell.mode, "clients": s.cell.clients,
                "tps": s.tps, "avg_us": s.avg_us, "p99_us": s.p99_us})
        })
        .collect();
    let medians: Vec<_> = table
        .iter()
        .map(|((cell, path), (tps, avg, p99))| {
            serde_json::json!({"path": path, "mode": cell.mode, "clients": cell.clients, "tps": tps, "avg_us": avg, "p99_us": p99})
        })
        .collect();
    serde_json::json!({"samples": raw, "medians": medians})
}
