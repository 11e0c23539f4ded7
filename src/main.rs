//! The `pgveil` command line. Parsing only: every command lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "pgveil",
    version,
    about = "Transparent encrypting proxy for PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    #[command(after_help = "Example:\n  pgveil serve --config /etc/pgveil/pgveil.toml")]
    Serve {
        #[arg(long, default_value = "pgveil.toml")]
        config: PathBuf,
        /// Overrides [server] log_format.
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
    },
    /// Validate the configuration (problems on stderr, one a line; exit 1 when invalid).
    #[command(
        after_help = "Example:\n  PGUSER=postgres PGDATABASE=app pgveil check --config pgveil.toml --live"
    )]
    Check {
        #[arg(long, default_value = "pgveil.toml")]
        config: PathBuf,
        /// Also connect upstream (login from PGUSER, PGPASSWORD, PGDATABASE) and check
        /// tables, columns and roles.
        #[arg(long)]
        live: bool,
    },
    /// Ask the running proxy to reload its configuration (SIGHUP to [server] pid_file).
    #[command(after_help = "Example:\n  pgveil reload --config /etc/pgveil/pgveil.toml")]
    Reload {
        #[arg(long, default_value = "pgveil.toml")]
        config: PathBuf,
    },
    /// Key files.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Encrypt plaintext columns and re-encrypt values under previous keys, online.
    Migrate {
        #[arg(long, default_value = "pgveil.toml")]
        config: PathBuf,
        /// Only this table (schema.table; without a schema: public).
        #[arg(long)]
        table: Option<String>,
        /// Only this column (with --table).
        #[arg(long, requires = "table")]
        column: Option<String>,
        /// Rows per batch (each batch is one short transaction).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
        batch_size: i64,
        /// Print what would be done, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Verify, search and report on the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Make the database enforce what it can: envelope constraints on protected columns,
    /// column privileges for denied roles. Prints the SQL; --execute runs it.
    #[command(
        after_help = "Example:\n  PGUSER=postgres PGDATABASE=app pgveil apply --config pgveil.toml --execute"
    )]
    Apply {
        #[arg(long, default_value = "pgveil.toml")]
        config: PathBuf,
        /// Run the SQL upstream (login from PGUSER, PGPASSWORD, PGDATABASE) instead of
        /// printing it.
        #[arg(long)]
        execute: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create DIR/master.key, DIR/audit.key and DIR/audit.pub; refuses to overwrite.
    #[command(after_help = "Example:\n  pgveil keys init --dir /etc/pgveil/keys")]
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Keep DIR/master.key as DIR/master-<key id>.key and write a new DIR/master.key.
    Rotate {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the whole audit log (the chain and the signed checkpoints).
    #[command(after_help = "Example:\n  pgveil audit verify --config /etc/pgveil/pgveil.toml")]
    Verify {
        /// The log is [audit] dir, the public key the .pub file beside signing_key_file.
        /// Default: pgveil.toml, unless --dir and --public-key are given.
        #[arg(long, conflicts_with_all = ["dir", "public_key"])]
        config: Option<PathBuf>,
        /// The audit log directory (with --public-key, instead of --config).
        #[arg(long, requires = "public_key")]
        dir: Option<PathBuf>,
        /// The audit public key file (base64, as `pgveil keys init` writes audit.pub).
        #[arg(long, requires = "dir")]
        public_key: Option<PathBuf>,
    },
    /// List matching audit records.
    #[command(
        after_help = "Example:\n  pgveil audit search --config pgveil.toml --user alice --since 2026-01-05T00:00:00Z"
    )]
    Search {
        #[arg(long, default_value = "pgveil.toml")]
        config: PathBuf,
        #[command(flatten)]
        filter: Box<SearchFilterArgs>,
        /// One stored record (JSON) per line.
        #[arg(long)]
        json: bool,
    },
    /// Accounting of disclosures for one data subject.
    #[command(
        after_help = "Example:\n  pgveil audit report --config pgveil.toml --subject public.patients:17"
    )]
    Report {
        #[arg(long, default_value = "pgveil.toml")]
        config: PathBuf,
        /// TABLE:ID, e.g. patients:17.
        #[arg(long)]
        subject: String,
        /// RFC 3339, e.g. 2026-01-05T10:00:00Z.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// One stored record (JSON) per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct SearchFilterArgs {
    /// Session user.
    #[arg(long)]
    user: Option<String>,
    /// One of the session's roles.
    #[arg(long)]
    role: Option<String>,
    /// Table, with or without schema.
    #[arg(long)]
    table: Option<String>,
    /// Column: column, table.column or schema.table.column.
    #[arg(long)]
    column: Option<String>,
    /// TABLE:ID, e.g. patients:17.
    #[arg(long)]
    subject: Option<String>,
    /// ok, error or refused.
    #[arg(long)]
    outcome: Option<String>,
    /// RFC 3339, e.g. 2026-01-05T10:00:00Z.
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    until: Option<String>,
    /// The end user of the session context (pgveil.end_user).
    #[arg(long = "end-user")]
    end_user: Option<String>,
    /// The declared purpose of use (pgveil.purpose).
    #[arg(long)]
    purpose: Option<String>,
    /// Only statements run under break-glass.
    #[arg(long = "break-glass")]
    break_glass: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Human,
    Json,
}

/// clap's error as one line: its first paragraph (without the `error: ` prefix), or, when a
/// subcommand is missing, the usage line.
fn usage_error(e: &clap::Error) -> ExitCode {
    let text = e.to_string();
    let usage = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage: "))
        .map(str::to_string);
    let message = match e.kind() {
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            match &usage {
                Some(u) => format!("a command is required: {u}"),
                None => "a command is required".to_string(),
            }
        }
        _ => {
            let paragraph: Vec<&str> = text
                .lines()
                .map(str::trim)
                .skip_while(|l| l.is_empty())
                .take_while(|l| !l.is_empty())
                .collect();
            let joined = paragraph.join(" ");
            let joined = joined
                .strip_prefix("error: ")
                .unwrap_or(&joined)
                .to_string();
            if joined.is_empty() {
                "invalid arguments".to_string()
            } else {
                joined
            }
        }
    };
    // `Usage: pgveil audit <COMMAND>` → `pgveil audit --help`.
    let help = usage
        .as_deref()
        .map(|u| {
            u.split_whitespace()
                .take_while(|w| !w.starts_with(['<', '[', '-']))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pgveil".to_string());
    eprintln!("pgveil: {message} (see {help} --help)");
    // A bad argument is an invalid input.
    ExitCode::from(pgveil::cli::EXIT_INVALID)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                _ => usage_error(&e),
            }
        }
    };
    pgveil::cli::finish(run(cli.command))
}

fn run(command: Command) -> Result<(), pgveil::cli::CliError> {
    match command {
        Command::Serve { config, log_format } => {
            let format = log_format.map(|f| match f {
                LogFormatArg::Human => pgveil::config::LogFormat::Human,
                LogFormatArg::Json => pgveil::config::LogFormat::Json,
            });
            pgveil::cli::serve(&config, format)
        }
        Command::Check { config, live } => pgveil::cli::check(&config, live),
        Command::Reload { config } => pgveil::cli::reload(&config),
        Command::Apply { config, execute } => pgveil::cli::apply(&config, execute),
        Command::Keys(KeysCommand::Init { dir }) => pgveil::cli::keys_init(&dir),
        Command::Keys(KeysCommand::Rotate { dir }) => pgveil::cli::keys_rotate(&dir),
        Command::Migrate {
            config,
            table,
            column,
            batch_size,
            dry_run,
        } => {
            let table = match table.as_deref().map(pgveil::schema::TableName::parse) {
                None => None,
                Some(Some(t)) => Some(t),
                Some(None) => {
                    return Err(pgveil::cli::CliError::Invalid(
                        "--table: expected schema.table or table".into(),
                    ))
                }
            };
            pgveil::cli::migrate(
                &config,
                pgveil::migrate::Options {
                    table,
                    column,
                    batch_size,
                    dry_run,
                },
            )
        }
        Command::Audit(AuditCommand::Verify {
            config,
            dir,
            public_key,
        }) => {
            let source = match (dir, public_key) {
                (Some(dir), Some(public_key)) => {
                    pgveil::cli::AuditSource::Direct { dir, public_key }
                }
                _ => pgveil::cli::AuditSource::Config(
                    config.unwrap_or_else(|| PathBuf::from("pgveil.toml")),
                ),
            };
            pgveil::cli::audit_verify(&source)
        }
        Command::Audit(AuditCommand::Search {
            config,
            filter,
            json,
        }) => {
            let args = pgveil::audit::cli::SearchArgs {
                user: filter.user,
                role: filter.role,
                table: filter.table,
                column: filter.column,
                subject: filter.subject,
                outcome: filter.outcome,
                since: filter.since,
                until: filter.until,
                end_user: filter.end_user,
                purpose: filter.purpose,
                break_glass: filter.break_glass,
            };
            pgveil::cli::audit_search(&config, &args, json)
        }
        Command::Audit(AuditCommand::Report {
            config,
            subject,
            since,
            until,
            json,
        }) => {
            pgveil::cli::audit_report(&config, &subject, since.as_deref(), until.as_deref(), json)
        }
    }
}
