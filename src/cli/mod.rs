//! What each command does, one file per command, so `main.rs` stays a parser.
//!
//! Streams and exit codes are one contract for every command (DESIGN.md "Command line"):
//! results (summaries, search output, the SQL of `apply`) go to stdout, problems to stderr,
//! one line each, never a panic or a backtrace. Exit 0 success; [`EXIT_INVALID`] (1) when
//! the input is invalid (a bad argument, an invalid configuration, a damaged audit log);
//! [`EXIT_CANNOT_RUN`] (2) when the command could not run (a file it needs cannot be read,
//! the database cannot be reached, a port cannot be bound).
#![allow(clippy::print_stdout, clippy::print_stderr)]

pub mod apply;
mod audit;
mod check;
pub mod defense;
mod fdlimit;
mod keys;
pub mod live;
mod migrate;
mod pidfile;
mod reload;
mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{Config, ConfigError};

pub use apply::apply;
pub use audit::{audit_report, audit_search, audit_verify, AuditSource};
pub use check::check;
pub use keys::{keys_init, keys_rotate};
pub use migrate::migrate;
pub use reload::reload;
pub use serve::serve;

/// Exit code of an invalid input: a bad argument, an invalid configuration, a damaged log.
pub const EXIT_INVALID: u8 = 1;
/// Exit code of a command that could not run: a file it needs cannot be read, the database
/// cannot be reached.
pub const EXIT_CANNOT_RUN: u8 = 2;

/// Why a command failed; [`finish`] prints it on stderr and picks the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A configuration that cannot be read (exit 2) or is invalid (exit 1), for commands
    /// other than `check`: summarized as its first problem and how many more there are.
    #[error("{error}")]
    Config { path: PathBuf, error: ConfigError },
    /// Problems located in the configuration (`file:line:column: message`), printed as they
    /// are, one a line (exit 1).
    #[error("{}", .0.join("\n"))]
    Problems(Vec<String>),
    /// An invalid input that is not the configuration: an argument's value, a damaged
    /// audit log, key files that are already there (exit 1).
    #[error("{0}")]
    Invalid(String),
    /// The command could not run (exit 2).
    #[error("{0}")]
    CannotRun(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config {
                error: ConfigError::Read { .. },
                ..
            }
            | Self::CannotRun(_) => EXIT_CANNOT_RUN,
            Self::Config {
                error: ConfigError::Invalid(_),
                ..
            }
            | Self::Problems(_)
            | Self::Invalid(_) => EXIT_INVALID,
        }
    }

    /// What goes to stderr, one line each: located problems as they are, everything else
    /// prefixed `pgveil: `.
    pub fn lines(&self) -> Vec<String> {
        match self {
            Self::Problems(problems) => problems.iter().map(|p| one_line(p)).collect(),
            Self::Config { path, error } => {
                vec![format!(
                    "pgveil: {}",
                    one_line(&config_error_line(path, error))
                )]
            }
            Self::Invalid(m) | Self::CannotRun(m) => vec![format!("pgveil: {}", one_line(m))],
        }
    }
}

/// A command's outcome as the process's: problems on stderr, the exit code.
pub fn finish(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            for line in e.lines() {
                eprintln!("{line}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// A warning: on stderr, prefixed `pgveil: warning: `; the exit status is not changed.
fn warn(message: &str) {
    eprintln!("pgveil: warning: {}", one_line(message));
}

/// Folds a possibly multi-line message (database errors carry DETAIL/HINT lines) into one.
pub(crate) fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Loads the configuration for a command that is not `check`.
fn load_config(path: &Path) -> Result<Config, CliError> {
    Config::load(path).map_err(|error| CliError::Config {
        path: path.to_path_buf(),
        error,
    })
}

/// The first problem of an invalid configuration, and how many more there are.
fn config_error_line(path: &Path, e: &ConfigError) -> String {
    match e {
        ConfigError::Read { .. } => e.to_string(),
        ConfigError::Invalid(problems) => match problems.as_slice() {
            [] => "invalid configuration".to_string(),
            [only] => only.to_string(),
            [first, rest @ ..] => format!(
                "{first} (and {} more problem(s); run pgveil check --config {})",
                rest.len(),
                path.display()
            ),
        },
    }
}

/// A single-threaded runtime for a command that talks to the database.
fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::CannotRun(format!("cannot start the runtime: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_messages_become_one() {
        assert_eq!(
            one_line("FATAL: no\nDETAIL: why\n\n  HINT: fix"),
            "FATAL: no; DETAIL: why; HINT: fix"
        );
    }

    #[test]
    fn public_key_is_beside_the_signing_key() {
        assert_eq!(
            audit::public_key_beside(Path::new("/etc/pgveil/keys/audit.key")),
            Path::new("/etc/pgveil/keys/audit.pub")
        );
    }

    #[test]
    fn invalid_config_is_summarized_in_one_line() {
        let err = Config::parse("[server]\nlisten = 1\nx = 2\n", "p.toml", Path::new("."))
            .err()
            .unwrap();
        let e = CliError::Config {
            path: "p.toml".into(),
            error: err,
        };
        assert_eq!(e.exit_code(), EXIT_INVALID);
        let lines = e.lines();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("pgveil: p.toml:2:"), "{lines:?}");
        assert!(lines[0].ends_with("(and 1 more problem(s); run pgveil check --config p.toml)"));
    }

    #[test]
    fn exit_codes_follow_the_contract() {
        let missing = Config::load(Path::new("/nonexistent/pgveil.toml"))
            .err()
            .unwrap();
        let e = CliError::Config {
            path: "/nonexistent/pgveil.toml".into(),
            error: missing,
        };
        assert_eq!(e.exit_code(), EXIT_CANNOT_RUN);
        assert_eq!(CliError::Problems(vec![]).exit_code(), EXIT_INVALID);
        assert_eq!(CliError::Invalid("x".into()).exit_code(), EXIT_INVALID);
        assert_eq!(CliError::CannotRun("x".into()).exit_code(), EXIT_CANNOT_RUN);
    }
}
