//! The `allot` binary: `allot serve` (the default), `allot migrate`,
//! `allot healthcheck`, `allot openapi`.

use std::path::PathBuf;
use std::process::ExitCode;

use allot::app::{self, Application};
use allot::config::{self, LogFormat, Overrides, Settings};
use allot::telemetry;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "allot",
    version,
    about = "Deterministic experiment assignment and participant routing over HTTP"
)]
struct Cli {
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The settings the command line can give; each wins over the file and the
/// environment. Accepted before or after the subcommand.
#[derive(Args)]
struct SettingsArgs {
    /// TOML file of settings (instead of ALLOT_CONFIG's).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Address and port to serve HTTP on (wins over ALLOT_LISTEN).
    #[arg(long, value_name = "ADDR", global = true)]
    listen: Option<String>,
    /// postgres:// or sqlite: URL of the store (wins over ALLOT_DATABASE_URL).
    /// Other local users can read a password given here in the process list;
    /// ALLOT_DATABASE_URL keeps it out of sight.
    #[arg(long, value_name = "URL", global = true)]
    database_url: Option<String>,
    /// Log output: pretty for people, json for log collectors (wins over
    /// ALLOT_LOG_FORMAT).
    #[arg(long, value_name = "FORMAT", global = true)]
    log_format: Option<LogFormatArg>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Pretty,
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(arg: LogFormatArg) -> Self {
        match arg {
            LogFormatArg::Pretty => LogFormat::Pretty,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

impl From<SettingsArgs> for Overrides {
    fn from(args: SettingsArgs) -> Self {
        Overrides {
            config: args.config,
            listen: args.listen,
            database_url: args.database_url,
            log_format: args.log_format.map(LogFormat::from),
        }
    }
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

/// Parses the command line; `--help` ends with every environment variable
/// and its default, taken from the defaults themselves.
fn parse_command_line() -> Cli {
    let environment = config::environment_help();
    let matches = Cli::command()
        .after_help(environment.clone())
        .mut_subcommand("serve", |serve| serve.after_help(environment.clone()))
        .mut_subcommand("migrate", |migrate| migrate.after_help(environment))
        .get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = parse_command_line();
    let command = cli.command.unwrap_or(Command::Serve);
    let (settings, ignored) = match Settings::load(&cli.settings.into()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("allot: {}", app::error_chain(&e));
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
        Command::Openapi => serde_json::to_string_pretty(&allot::http::openapi_document())
            .map(|json| println!("{json}"))
            .map_err(anyhow::Error::from),
        Command::Healthcheck => allot::app::healthcheck(&settings.listen)
            .await
            .map_err(anyhow::Error::msg),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Once, on stderr, as one line: the logs (on stdout) do not repeat it.
        Err(e) => {
            eprintln!("allot: {}", app::error_chain(e.as_ref()));
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
