//! The command line of the `switchyard` binary: `serve`, `demo` and `ctl`.
//! It lives in the library so that end-to-end tests can run the very same
//! entry point as a separate process (and `kill -9` it).

use crate::app::App;
use crate::{ServeArgs, ServeConfig};
use clap::{Parser, Subcommand};
use switchyard_proxy::server::State;
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
    Serve(Box<ServeArgs>),
    /// A throwaway cluster, the proxy, a load, and one migration through every phase.
    Demo(crate::demo::DemoArgs),
    /// A client of the control API.
    Ctl(crate::ctl::CtlArgs),
}

/// Parses the command line and runs it.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    // The demo narrates on stdout; its logs go to a file it names at the
    // end (or to stderr with --verbose), never between its lines.
    let log_file = match &cli.command {
        Command::Demo(args) if !args.verbose => {
            Some(std::env::temp_dir().join(format!("switchyard-demo-{}.log", std::process::id())))
        }
        _ => None,
    };
    match &log_file {
        Some(path) => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(std::fs::File::create(path)?))
            .init(),
        None => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Ctl(args) => {
            let code = runtime.block_on(crate::ctl::run(args))?;
            std::process::exit(code)
        }
        Command::Demo(args) => {
            let result = runtime.block_on(demo(args));
            if let Some(path) = &log_file {
                println!("Logs: {}", path.display());
            }
            let summary = result?;
            if summary.client_errors > 0 {
                anyhow::bail!(
                    "the application saw {} errors during the demo",
                    summary.client_errors
                );
            }
            Ok(())
        }
    }
}

/// The demo until it ends or is interrupted (SIGINT, SIGTERM). Interrupted,
/// the demo is dropped where it stands, which stops its PostgreSQL and
/// removes its files, before the process exits.
async fn demo(args: crate::demo::DemoArgs) -> anyhow::Result<crate::demo::Summary> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let interrupted = tokio::select! {
        summary = crate::demo::run(args) => return summary,
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    eprintln!("{interrupted}: the demo stopped its PostgreSQL and removed its files");
    anyhow::bail!("interrupted by {interrupted}")
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServeConfig::resolve(&args, std::env::var("SWITCHYARD_CONTROL_TOKEN").ok())?;
    let app = App::start(config).await?;
    let drainer = app.drainer();
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        info!("shutdown requested; draining sessions (signal again to close them now)");
        drainer.send_replace(State::Draining);
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        drainer.send_replace(State::Closing);
    });
    app.wait().await;
    Ok(())
}
