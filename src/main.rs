//! The `licensegate` command line.
#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::todo,
    clippy::await_holding_lock
)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use licensegate::config::{Config, Settings};
use licensegate::licenses::IssuerActor;
use licensegate::oauth::client_auth::NewClient;
use licensegate::oauth::Role;
use licensegate::telemetry::init_logging;
use licensegate::App;

/// licensegate: the trusted authorization access system for electronic licenses.
///
/// Settings come from built-in defaults, then the TOML file given with
/// --config, then LICENSEGATE_* environment variables, then flags.
#[derive(Parser)]
#[command(name = "licensegate", version, about, long_about)]
struct Cli {
    /// TOML configuration file (keys as the long flags, with `_` for `-`).
    #[arg(long, short, env = "LICENSEGATE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply database migrations, then serve the HTTP API until SIGTERM/SIGINT.
    Serve {
        /// Load the demo data set first (idempotent) and write its credentials
        /// to DATA_DIR/demo-credentials.json.
        #[arg(long)]
        demo: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Load the demo data set (idempotent) and exit.
    Demo,
    /// Bulk-import licenses (one JSON publication per line) for an issuing
    /// unit; prints a per-line report. Exits 2 when some line was refused.
    Import {
        /// The JSONL file.
        file: PathBuf,
        /// Unified social credit code of the issuing unit.
        #[arg(long)]
        issuer: String,
    },
    /// Register an OAuth client and print its credentials (e.g. the first operator).
    CreateClient {
        /// Display name.
        #[arg(long)]
        name: String,
        /// operator, issuer, entity or regulator.
        #[arg(long)]
        role: String,
        /// For issuers: the issuing unit's unified social credit code.
        #[arg(long)]
        issuer: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let file = match cli.config.as_deref().map(Config::read_file).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => {
            eprintln!("licensegate: {e}");
            return ExitCode::from(78);
        }
    };
    let config = match Config::resolve(cli.settings, file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("licensegate: {e}");
            return ExitCode::from(78);
        }
    };
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("licensegate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "licensegate failed");
            eprintln!("licensegate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> licensegate::Result<ExitCode> {
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "effective configuration");
    let app = App::build(config).await?;
    match command {
        Command::Migrate => {
            println!("migrations applied");
        }
        Command::Serve { demo } => {
            if demo {
                licensegate::demo::load(&app.services).await?;
            }
            app.serve().await?;
        }
        Command::Demo => {
            licensegate::demo::load(&app.services).await?;
        }
        Command::Import { file, issuer } => {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                licensegate::Error::BadRequest(format!("cannot read {}: {e}", file.display()))
            })?;
            if app.services.store.issuer(&issuer).await?.is_none() {
                return Err(licensegate::Error::BadRequest(format!(
                    "no issuing unit {issuer}"
                )));
            }
            let actor = IssuerActor {
                client_id: "cli:import".into(),
                issuer_id: issuer,
            };
            let report = app.services.library.import(&actor, &text).await;
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            if report.refused > 0 {
                return Ok(ExitCode::from(2));
            }
        }
        Command::CreateClient { name, role, issuer } => {
            let role = Role::parse(&role).map_err(|_| {
                licensegate::Error::BadRequest(
                    "role must be operator, issuer, entity or regulator".into(),
                )
            })?;
            let created = app
                .services
                .clients
                .create(NewClient {
                    name,
                    role,
                    issuer_id: issuer,
                    jwks: None,
                })
                .await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&created).unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
