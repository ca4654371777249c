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

/// mimalloc instead of glibc malloc: requests allocate on one thread and free
/// on another (tokio workers, sqlx's SQLite threads), which glibc serves
/// slowly (see Cargo.toml for the figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// The Cedar policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The audit log: verify, checkpoint, export.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
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

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate the schema and every policy in the policy directory; prints
    /// the first problem as FILE:LINE: message and exits 1.
    Check,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain and every checkpoint signature, in the database or,
    /// with --file, in an exported JSONL file without any database. Prints the
    /// report and names the first record that fails; exits 1 on failure.
    Verify {
        /// An export made with `audit export` or GET /audit/v1/export.
        #[arg(long)]
        file: Option<PathBuf>,
        /// An archive directory made by `audit archive`: verifies every segment
        /// as one chain, without a database.
        #[arg(long, conflicts_with = "file")]
        archive: Option<PathBuf>,
        /// JWKS to verify checkpoint signatures with (instead of the keys in the file).
        #[arg(long)]
        jwks: Option<PathBuf>,
    },
    /// Write every record of past months not archived yet into immutable
    /// monthly segment files with a manifest, for long-term (20-year) storage.
    Archive {
        /// Archive directory (created if needed; extended on later runs).
        #[arg(long)]
        out: PathBuf,
        /// Archive records older than this RFC 3339 time [default: start of this month].
        #[arg(long)]
        until: Option<String>,
    },
    /// Sign a checkpoint over everything recorded so far and print it.
    Checkpoint,
    /// Write the whole log to a file: JSONL (verifiable offline) or CSV.
    Export {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// jsonl or csv.
        #[arg(long, default_value = "jsonl")]
        format: String,
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
    let runtime = match licensegate::app::runtime(config.worker_threads) {
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
            if let licensegate::Error::Invalid { errors, .. } = &e {
                for fe in errors {
                    eprintln!("  {}: {}", fe.field, fe.message);
                }
            }
            ExitCode::FAILURE
        }
    }
}

fn print_report(report: &licensegate::audit::verify::VerifyReport) -> ExitCode {
    println!(
        "{}",
        serde_json::to_string_pretty(report).unwrap_or_default()
    );
    match &report.failure {
        None => ExitCode::SUCCESS,
        Some(f) => {
            eprintln!("audit verification FAILED: {f}");
            ExitCode::FAILURE
        }
    }
}

fn read_json(path: &std::path::Path) -> licensegate::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        licensegate::Error::BadRequest(format!("cannot read {}: {e}", path.display()))
    })?;
    serde_json::from_str(&text)
        .map_err(|e| licensegate::Error::BadRequest(format!("{} is not JSON: {e}", path.display())))
}

async fn run(command: Command, config: Config) -> licensegate::Result<ExitCode> {
    if let Command::Policy {
        command: PolicyCommand::Check,
    } = &command
    {
        return Ok(
            match licensegate::policy::PolicyEngine::load(&config.policy_dir) {
                Ok(engine) => {
                    println!(
                        "{} policies in {} are valid",
                        engine.len(),
                        config.policy_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            },
        );
    }
    // Verifying an export or an archive needs no database.
    if let Command::Audit {
        command:
            AuditCommand::Verify {
                archive: Some(dir),
                jwks,
                ..
            },
    } = &command
    {
        let trusted = jwks.as_deref().map(read_json).transpose()?;
        let report = licensegate::audit::archive::verify_archive(dir, trusted.as_ref())?;
        return Ok(print_report(&report));
    }
    if let Command::Audit {
        command:
            AuditCommand::Verify {
                file: Some(file),
                jwks,
                ..
            },
    } = &command
    {
        let trusted = jwks.as_deref().map(read_json).transpose()?;
        let reader = std::fs::File::open(file)
            .map(std::io::BufReader::new)
            .map_err(|e| {
                licensegate::Error::BadRequest(format!("cannot open {}: {e}", file.display()))
            })?;
        let report = licensegate::audit::verify::verify_file(reader, trusted.as_ref())?;
        return Ok(print_report(&report));
    }
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "effective configuration");
    // The audit tools work whatever state the policy files are in.
    let policies_required = !matches!(command, Command::Audit { .. });
    let app = App::build_with(config, policies_required).await?;
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
        Command::Audit { command } => return audit_command(&app, command).await,
        Command::Policy { .. } => {}
        Command::CreateClient { name, role, issuer } => {
            let role = Role::parse(&role).map_err(|_| {
                licensegate::Error::BadRequest(
                    "role must be operator, issuer, entity or regulator".into(),
                )
            })?;
            let created = app
                .services
                .clients
                .create(
                    &licensegate::audit::Actor::system("cli"),
                    NewClient {
                        name,
                        role,
                        issuer_id: issuer,
                        jwks: None,
                        jwks_uri: None,
                    },
                )
                .await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&created).unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn audit_command(app: &App, command: AuditCommand) -> licensegate::Result<ExitCode> {
    use licensegate::audit::export::{self, Format};
    use licensegate::audit::verify::{keys_from_jwks, verify_store};
    let services = &app.services;
    match command {
        AuditCommand::Verify { jwks, .. } => {
            let keys = match jwks {
                Some(path) => keys_from_jwks(&read_json(&path)?),
                None => keys_from_jwks(&services.keys.jwks(licensegate::keys::BROKER).await?),
            };
            let report =
                verify_store(&services.store, services.checkpoints.all().await?, keys).await?;
            services
                .store
                .insert_verification(&licensegate::store::audit::VerificationRow {
                    time: report.time.clone(),
                    ok: report.ok,
                    records: report.records,
                    checkpoints: report.checkpoints,
                    failure: report.failure.clone(),
                })
                .await?;
            Ok(print_report(&report))
        }
        AuditCommand::Archive { out, until } => {
            let added = licensegate::audit::archive::archive(services, &out, until).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&added).unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Checkpoint => {
            let cp = services.checkpoints.create().await?;
            println!("{}", serde_json::to_string_pretty(&cp).unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export { out, format } => {
            use futures_util::StreamExt;
            use std::io::Write;
            let format = match format.as_str() {
                "jsonl" => Format::Jsonl,
                "csv" => Format::Csv,
                other => {
                    return Err(licensegate::Error::BadRequest(format!(
                        "format must be jsonl or csv, not {other:?}"
                    )))
                }
            };
            let prepared = export::prepare(services, Default::default(), true, format).await?;
            let file = std::fs::File::create(&out).map_err(|e| {
                licensegate::Error::BadRequest(format!("cannot create {}: {e}", out.display()))
            })?;
            let mut writer = std::io::BufWriter::new(file);
            let mut stream =
                std::pin::pin!(export::stream(services.store.clone(), format, prepared));
            while let Some(chunk) = stream.next().await {
                writer
                    .write_all(&chunk?)
                    .map_err(licensegate::Error::internal)?;
            }
            writer.flush().map_err(licensegate::Error::internal)?;
            println!("exported to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
