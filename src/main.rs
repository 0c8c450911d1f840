//! The `allot` binary: `allot serve` (the default), `allot migrate`,
//! `allot healthcheck`, `allot openapi`.

use std::process::ExitCode;

use allot::app::{self, Application};
use allot::config::Settings;
use allot::telemetry;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "allot",
    version,
    about = "Deterministic experiment assignment and participant routing over HTTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP (the default).
    Serve,
    /// Run the store's schema migrations and exit.
    Migrate,
    /// Exit 0 when the local service's /readyz answers 200 (for container
    /// health checks in images without a shell or curl).
    Healthcheck,
    /// Print the OpenAPI 3.1 document.
    Openapi,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    let (settings, ignored) = match Settings::load() {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("allot: {e}");
            return ExitCode::FAILURE;
        }
    };
    telemetry::init(settings.log_format, &settings.log_level);
    // `allot openapi` prints a document on stdout, where the logs go too.
    if !ignored.is_empty() && !matches!(command, Command::Openapi) {
        tracing::warn!(
            "ignoring environment variables that name no setting: {}",
            ignored.describe()
        );
    }
    let result = match command {
        Command::Serve => serve(settings).await,
        Command::Migrate => migrate(settings).await,
        Command::Openapi => allot::http::openapi_document()
            .to_pretty_json()
            .map(|json| println!("{json}"))
            .map_err(anyhow::Error::from),
        Command::Healthcheck => allot::app::healthcheck(&settings.listen)
            .await
            .map_err(anyhow::Error::msg),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("allot: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    tracing::info!(store = %settings.redacted_database_url(), "starting");
    let shutdown = shutdown_signal();
    let app = Application::build(settings).await?;
    app.run_until(shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn migrate(mut settings: Settings) -> anyhow::Result<()> {
    settings.run_migrations = true;
    let store = app::open_store(&settings).await?;
    tracing::info!(store = store.backend(), "migrations are up to date");
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C (SIGINT). The handlers are installed
/// when this is called, not when the future is first polled, so a signal
/// that arrives while the service is still starting is not lost.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = int.recv() => {},
                    }
                }
                _ => {
                    tracing::warn!("cannot install signal handlers; stop the process with SIGKILL");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
