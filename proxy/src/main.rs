//! The `switchyard` binary: `serve`, `demo` and `ctl`.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::{Parser, Subcommand};
use prometheus_client::registry::Registry;
use switchyard::server::State;
use switchyard::{Proxy, ProxyConfig, ServeArgs};
use switchyard_control::http;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

/// Safe expand/contract column migrations through a PostgreSQL wire proxy.
#[derive(Parser)]
#[command(name = "switchyard", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the wire proxy and the control API.
    Serve(ServeArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = ProxyConfig::resolve(&args, std::env::var("SWITCHYARD_CONTROL_TOKEN").ok())?;
    let mut registry = Registry::default();
    let metrics = switchyard::metrics::ProxyMetrics::new(&mut registry);
    let control = http::bind(&config.control_listen, config.control_token.is_some()).await?;
    let proxy = Proxy::bind(config, metrics).await.context("starting the proxy")?;
    let handle = proxy.spawn();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let api = Arc::new(http::ApiState {
        registry: Mutex::new(registry),
    });
    let api_task = tokio::spawn(http::serve(control, api, stop_rx));

    let drainer = handle.drainer();
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        info!("shutdown requested; draining sessions (signal again to close them now)");
        drainer.send_replace(State::Draining);
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        drainer.send_replace(State::Closing);
    });
    handle.wait().await;
    let _ = stop_tx.send(true);
    let _ = api_task.await;
    Ok(())
}
