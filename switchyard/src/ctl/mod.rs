//! `switchyard ctl`: a thin client of the control API for operators and
//! incident responders. Human output by default, `--json` for scripts; the
//! exit code is non-zero when the API refused.

pub mod client;

use std::time::Duration;

use hyper::Method;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use client::Api;

/// `switchyard ctl` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Phase verbs: switchyard ctl VERB NAME [--force] [--follow]\n  \
    VERB is expand, dual-write, backfill, verify, switch-reads, contract, complete, rollback,\n  \
    pause or resume;\n  \
    --force passes a gate (audited); --follow shows backfill/verify progress until done.\n\
    The exit code is 1 when the API refused."
)]
pub struct CtlArgs {
    /// Control API base URL.
    #[arg(long, env = "SWITCHYARD_URL", default_value = "http://127.0.0.1:7432")]
    pub url: String,
    /// Bearer token (or SWITCHYARD_CONTROL_TOKEN).
    #[arg(long, env = "SWITCHYARD_CONTROL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The verbs.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlCommand {
    /// Rules version, instances, migrations; or one migration in detail.
    Status {
        /// A migration.
        name: Option<String>,
        /// Refresh every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Create a migration from a JSON or TOML spec file.
    Apply {
        /// The spec.
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
    },
    /// Run a phase verb: expand, dual-write, backfill, verify, switch-reads,
    /// contract, complete, rollback.
    #[command(external_subcommand)]
    Verb(Vec<String>),
    /// Revert routing of one migration, or of all with --all.
    Revert {
        /// The migration.
        name: Option<String>,
        /// Every active migration.
        #[arg(long)]
        all: bool,
    },
    /// Change a running backfill's throttles (`none` lifts a limit).
    Throttle {
        /// The migration.
        name: String,
        /// Rows per second at most, or `none`.
        #[arg(long)]
        max_rows_per_second: Option<String>,
        /// Target time per chunk.
        #[arg(long)]
        target_chunk_ms: Option<u64>,
        /// Hold chunks while a replica lags more than this, or `none`.
        #[arg(long)]
        max_replica_lag_ms: Option<String>,
        /// Hold chunks while more client sessions are active, or `none`.
        #[arg(long)]
        max_active_sessions: Option<String>,
        /// Pace chunks while the application's p99 exceeds this percentage
        /// of its p99 before the backfill, or `none`.
        #[arg(long)]
        max_app_p99_pct: Option<String>,
    },
    /// The audit log.
    Events,
    /// Sessions holding or waiting for locks on migrating tables.
    Blockers,
    /// Cancel the query of a blocking session.
    Cancel {
        /// Its pid.
        pid: i32,
    },
    /// Terminate a blocking session.
    Terminate {
        /// Its pid.
        pid: i32,
    },
}

/// Runs `ctl`; returns the process exit code.
pub async fn run(args: CtlArgs) -> anyhow::Result<i32> {
    let api = Api {
        url: args.url.clone(),
        token: args.token.clone(),
        actor: format!(
            "ctl:{}",
            std::env::var("USER").unwrap_or_else(|_| "unknown".into())
        ),
    };
    let (status, body) = match &args.command {
        CtlCommand::Status { name, watch } => {
            let path = name
                .as_ref()
                .map(|n| format!("/v1/migrations/{n}"))
                .unwrap_or_else(|| "/v1/status".into());
            loop {
                let (status, body) = api.call(Method::GET, &path, None).await?;
                if !*watch || status >= 400 {
                    break (status, body);
                }
                print!("\x1b[2J\x1b[H");
                print(&body, args.json);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        CtlCommand::Apply { file } => {
            let text = std::fs::read_to_string(file)?;
            let spec: Value = if file.extension().is_some_and(|e| e == "toml") {
                toml::from_str(&text)?
            } else {
                serde_json::from_str(&text)?
            };
            api.call(Method::POST, "/v1/migrations", Some(&spec))
                .await?
        }
        CtlCommand::Revert { name, all } => match (name, all) {
            (Some(n), false) => {
                api.call(Method::POST, &format!("/v1/migrations/{n}/revert"), None)
                    .await?
            }
            (None, true) => api.call(Method::POST, "/v1/revert", None).await?,
            _ => anyhow::bail!("revert takes a migration name or --all"),
        },
        CtlCommand::Throttle {
            name,
            max_rows_per_second,
            target_chunk_ms,
            max_replica_lag_ms,
            max_active_sessions,
            max_app_p99_pct,
        } => {
            let mut patch = serde_json::Map::new();
            for (key, value) in [
                ("max_rows_per_second", max_rows_per_second),
                ("max_replica_lag_ms", max_replica_lag_ms),
                ("max_active_sessions", max_active_sessions),
                ("max_app_p99_pct", max_app_p99_pct),
            ] {
                if let Some(v) = value {
                    patch.insert(key.into(), limit(key, v)?);
                }
            }
            if let Some(ms) = target_chunk_ms {
                patch.insert("target_chunk_ms".into(), Value::from(*ms));
            }
            anyhow::ensure!(!patch.is_empty(), "throttle needs at least one setting");
            let path = format!("/v1/migrations/{name}/backfill");
            api.call(Method::PATCH, &path, Some(&Value::Object(patch)))
                .await?
        }
        CtlCommand::Events => api.call(Method::GET, "/v1/events", None).await?,
        CtlCommand::Blockers => api.call(Method::GET, "/v1/blockers", None).await?,
        CtlCommand::Cancel { pid } => {
            api.call(Method::POST, &format!("/v1/blockers/{pid}/cancel"), None)
                .await?
        }
        CtlCommand::Terminate { pid } => {
            api.call(Method::POST, &format!("/v1/blockers/{pid}/terminate"), None)
                .await?
        }
        CtlCommand::Verb(words) => {
            let (verb, rest) = words
                .split_first()
                .ok_or_else(|| anyhow::anyhow!("missing verb"))?;
            let name = rest
                .iter()
                .find(|w| !w.starts_with("--"))
                .ok_or_else(|| anyhow::anyhow!("{verb} needs a migration name"))?;
            let force = rest.iter().any(|w| w == "--force");
            let follow = rest.iter().any(|w| w == "--follow");
            let path = format!(
                "/v1/migrations/{name}/{verb}{}",
                if force { "?force=true" } else { "" }
            );
            let (status, body) = api.call(Method::POST, &path, None).await?;
            if status == 202 && follow {
                follow_job(&api, name).await?
            } else {
                (status, body)
            }
        }
    };
    print(&body, args.json);
    Ok(if status >= 400 { 1 } else { 0 })
}

/// A limit as JSON: a number, or `null` for `none`.
fn limit(key: &str, value: &str) -> anyhow::Result<Value> {
    if value == "none" {
        return Ok(Value::Null);
    }
    let n: u64 = value
        .parse()
        .map_err(|_| anyhow::anyhow!("--{}: a number or none", key.replace('_', "-")))?;
    Ok(Value::from(n))
}

/// Follows a backfill or verify with a progress bar until it ends.
async fn follow_job(api: &Api, name: &str) -> anyhow::Result<(u16, Value)> {
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("[{bar:40}] {pos}/{len} rows {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    loop {
        let (status, d) = api
            .call(Method::GET, &format!("/v1/migrations/{name}"), None)
            .await?;
        if status >= 400 {
            return Ok((status, d));
        }
        let job = &d["job"];
        let done = job["rows_done"].as_u64().unwrap_or(0);
        bar.set_length(
            job["rows_total_estimate"]
                .as_u64()
                .unwrap_or(0)
                .max(done)
                .max(1),
        );
        bar.set_position(done);
        bar.set_message(format!(
            "{:.0} rows/s {}",
            job["rows_per_second"].as_f64().unwrap_or(0.0),
            job["throttled"].as_str().unwrap_or("")
        ));
        match job["state"].as_str() {
            Some("done") => {
                bar.finish();
                return Ok((200, d));
            }
            Some("failed") => {
                bar.abandon();
                return Ok((500, d));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn print(body: &Value, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(body).unwrap_or_default());
        return;
    }
    if let Some(err) = body.get("error") {
        println!(
            "refused ({}): {}",
            err["code"].as_str().unwrap_or("?"),
            err["message"].as_str().unwrap_or("")
        );
        return;
    }
    if let Some(migrations) = body.get("migrations").and_then(Value::as_array) {
        println!("rules version {}", body["rules_version"]);
        for i in body["instances"].as_array().into_iter().flatten() {
            let mut notes = Vec::new();
            if i["this"] == true {
                notes.push("answering");
            }
            if i["job_holder"] == true {
                notes.push("runs jobs");
            }
            if i["live"] == false {
                notes.push("STALE: no heartbeat, left out of acknowledgements");
            }
            println!(
                "instance {} ({}) acknowledged v{}{}",
                i["id"].as_str().unwrap_or("?"),
                i["proxy_addr"].as_str().unwrap_or("?"),
                i["acknowledged_version"],
                if notes.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", notes.join(", "))
                }
            );
        }
        for m in migrations {
            println!(
                "{:<24} {:<15} {:<16} reads {} / writes {}",
                m["name"].as_str().unwrap_or(""),
                m["table"].as_str().unwrap_or(""),
                m["phase"].as_str().unwrap_or(""),
                m["routing"]["reads"],
                m["routing"]["writes"]
            );
        }
    } else if body.get("phase").is_some() {
        let stage = &body["stage"];
        let detail = match (stage["reads"].as_str(), stage["legacy"].as_str()) {
            (Some(reads), _) => format!(" (reads {reads})"),
            (_, Some(legacy)) => format!(" (legacy column {legacy})"),
            _ => String::new(),
        };
        println!(
            "{} on {}: phase {}{detail}",
            body["name"].as_str().unwrap_or(""),
            body["table"].as_str().unwrap_or(""),
            body["phase"].as_str().unwrap_or("")
        );
        if body["job"].is_object() {
            let j = &body["job"];
            println!(
                "  {} job {}: {} rows done, {} changed/mismatched, {:.0} rows/s",
                j["kind"].as_str().unwrap_or(""),
                j["state"].as_str().unwrap_or(""),
                j["rows_done"],
                j["rows_changed"],
                j["rows_per_second"].as_f64().unwrap_or(0.0)
            );
            for (key, label) in [("throttled", "waiting"), ("error", "error")] {
                if let Some(text) = j[key].as_str() {
                    println!("  {label}: {text}");
                }
            }
        }
        for u in body["legacy_uses"].as_array().into_iter().flatten() {
            println!(
                "  legacy name still used via instance {}: {} statements, last {:.0} s ago: {}",
                u["instance"].as_str().unwrap_or("?"),
                u["count"],
                u["seconds_ago"].as_f64().unwrap_or(0.0),
                u["statement"].as_str().unwrap_or("")
            );
        }
    } else if let Some(v) = body.get("rules_version") {
        println!(
            "routing reverted: rules v{v}, swap {} µs, {:?}",
            body["swap_micros"], body["reverted"]
        );
        for s in body["skipped"].as_array().into_iter().flatten() {
            println!(
                "  not reverted: {}: {}",
                s["migration"].as_str().unwrap_or(""),
                s["reason"].as_str().unwrap_or("")
            );
        }
    } else if let Some(events) = body.as_array() {
        for e in events {
            println!(
                "{} {:<10} {:<16} {:<8} {}",
                e["id"],
                e["actor"].as_str().unwrap_or(""),
                e["migration"].as_str().unwrap_or("-"),
                e["action"].as_str().unwrap_or(""),
                e["detail"]
            );
        }
    } else {
        println!("{body}");
    }
}
