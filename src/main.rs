//! The `pgveil` command line. Parsing only: every command lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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
    Serve {
        #[arg(long, default_value = "pgveil.toml")]
        config: PathBuf,
        /// Overrides [server] log_format.
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
    },
    /// Validate the configuration.
    Check {
        #[arg(long, default_value = "pgveil.toml")]
        config: PathBuf,
        /// Also connect upstream and check tables, columns and roles.
        #[arg(long)]
        live: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Human,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, log_format } => {
            let format = log_format.map(|f| match f {
                LogFormatArg::Human => pgveil::config::LogFormat::Human,
                LogFormatArg::Json => pgveil::config::LogFormat::Json,
            });
            pgveil::cli::serve(&config, format)
        }
        Command::Check { config, live } => pgveil::cli::check(&config, live),
    }
}
