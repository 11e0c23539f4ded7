//! What each command does, so `main.rs` stays a parser. Every failure is one line on
//! stderr (prefixed `pgveil: `) and a non-zero exit code; nothing here panics.
//!
//! Exit codes: 0 success; 1 the thing checked is not valid (configuration problems, a
//! damaged audit log) or the command failed; 2 a bad argument or an unusable input (a key
//! file that cannot be read, an upstream that cannot be reached by `check --live`).
#![allow(clippy::print_stdout)]

mod audit;
pub mod live;
mod pidfile;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{Config, ConfigError, LogFormat};

pub use audit::{audit_report, audit_search, audit_verify, AuditSource};
pub use pidfile::reload;

/// Exit code of a bad argument or an unusable input.
pub const EXIT_USAGE: u8 = 2;

/// Prints `pgveil: MESSAGE` (on one line) to stderr and returns exit code 1.
fn fail(message: impl std::fmt::Display) -> ExitCode {
    fail_with(1, message)
}

fn fail_with(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("pgveil: {}", one_line(&message.to_string()));
    ExitCode::from(code)
}

/// Folds a possibly multi-line message (database errors carry DETAIL/HINT lines) into one.
pub(crate) fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Loads the configuration for a command that is not `check`: an invalid file is reported
/// as one line (the first problem, and how many more there are).
fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| fail(config_error_line(path, &e)))
}

fn config_error_line(path: &Path, e: &ConfigError) -> String {
    let lines = e.lines();
    match lines.as_slice() {
        [] => format!("{}: invalid configuration", path.display()),
        [only] => only.clone(),
        [first, rest @ ..] => format!(
            "{first} (and {} more problem(s); run pgveil check --config {})",
            rest.len(),
            path.display()
        ),
    }
}

pub fn serve(config_path: &Path, log_format: Option<LogFormat>) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    crate::logging::init(
        log_format.unwrap_or(config.server.log_format),
        &config.server.log_level,
    );
    // The accept loop only; sessions run on their own per-core threads.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format_args!("cannot start the runtime: {e}")),
    };
    let pid_file = config.server.pid_file.clone();
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&config.server.listen).await {
            Ok(listener) => listener,
            Err(e) => {
                return fail(format_args!(
                    "cannot listen on {}: {e}",
                    config.server.listen
                ))
            }
        };
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let pid_guard = pidfile::PidFile::write(&pid_file);
        tracing::info!(listen = %local, upstream = %config.upstream_addr(), "pgveil is ready");
        let (reload_tx, reloads) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(watch_reloads(config_path.to_path_buf(), reload_tx));
        let result = crate::server::serve_with_reload(
            listener,
            Arc::new(config),
            shutdown_signal(),
            reloads,
        )
        .await;
        drop(pid_guard);
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        }
    })
}

/// On each SIGHUP, re-reads the configuration: a valid one goes to the server, an invalid
/// one is rejected with every problem logged, and the running configuration stays.
async fn watch_reloads(
    path: std::path::PathBuf,
    reloads: tokio::sync::mpsc::UnboundedSender<Config>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload needs a restart");
        return;
    };
    while hangups.recv().await.is_some() {
        match Config::load(&path) {
            Ok(config) => {
                if reloads.send(config).is_err() {
                    return;
                }
            }
            Err(e) => {
                for line in e.lines() {
                    tracing::error!(problem = %line, "reload rejected; the running configuration stays in force");
                }
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// `pgveil check`: every problem on its own line on stdout (`file:line:column: message`),
/// exit 1 when there is any. With `live`, a statically valid configuration is then checked
/// against the upstream database's catalog (see [`live`]).
/// The files the configuration names, loaded the way `serve` loads them: keys (present,
/// owner-only, the right length) and TLS material.
fn referenced_file_problems(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = crate::server::load_master_key(config) {
        problems.push(format!("[keys] {e}"));
    }
    if let Some(audit) = &config.audit {
        if let Err(e) = crate::crypto::keys::load_signing_key(&audit.signing_key_file) {
            problems.push(format!("[audit] {e}"));
        }
    }
    if let Some(path) = &config.context.token_public_key_file {
        if let Err(e) = crate::context::load_token_key(path) {
            problems.push(e.to_string());
        }
    }
    if let Some(file) = &config.alerts.file {
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            problems.push(format!(
                "[alerts] file {}: directory {} does not exist",
                file.display(),
                dir.display()
            ));
        }
    }
    if let (Some(cert), Some(key)) = (&config.server.tls_cert, &config.server.tls_key) {
        if let Err(e) = crate::net::tls::server_config(cert, key) {
            problems.push(format!("[server] {e}"));
        }
    }
    if config.upstream.tls == crate::config::UpstreamTls::VerifyFull {
        if let Err(e) = crate::net::tls::upstream_config(config.upstream.ca_file.as_deref()) {
            problems.push(format!("[upstream] {e}"));
        }
    }
    problems
}

pub fn check(config_path: &Path, live: bool) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(e @ ConfigError::Read { .. }) => return fail(e),
        Err(e) => {
            for line in e.lines() {
                println!("{}", one_line(&line));
            }
            return ExitCode::FAILURE;
        }
    };
    let file_problems = referenced_file_problems(&config);
    if !file_problems.is_empty() {
        for problem in file_problems {
            println!("{}: {}", config_path.display(), one_line(&problem));
        }
        return ExitCode::FAILURE;
    }
    let summary = format!(
        "{}: valid ({} protected column(s), {} table rule(s))",
        config_path.display(),
        config.columns.len(),
        config.tables.len()
    );
    if !live {
        println!("{summary}");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format_args!("cannot start the runtime: {e}")),
    };
    let login = live::Login::from_env();
    let text = std::fs::read_to_string(config_path).unwrap_or_default();
    let locator = live::Locator::new(&config_path.display().to_string(), &text);
    let outcome = runtime.block_on(async {
        let client = live::connect(&config.upstream, &login).await?;
        live::check(&client, &config, &locator).await
    });
    match outcome {
        Err(e) => fail_with(EXIT_USAGE, e),
        Ok(problems) if problems.is_empty() => {
            println!(
                "{summary}; every table, column and role exists in {} as {}",
                config.upstream_addr(),
                login.user
            );
            ExitCode::SUCCESS
        }
        Ok(problems) => {
            for p in problems {
                println!("{}", one_line(&p));
            }
            ExitCode::FAILURE
        }
    }
}

/// `pgveil keys init --dir DIR`: prints each file created, one per line.
pub fn keys_init(dir: &Path) -> ExitCode {
    match crate::crypto::keys::init_key_dir(dir) {
        Ok(paths) => {
            for path in paths {
                println!("created {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
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
        let line = config_error_line(Path::new("p.toml"), &err);
        assert!(line.starts_with("p.toml:2:"), "{line}");
        assert!(line.ends_with("(and 1 more problem(s); run pgveil check --config p.toml)"));
        assert!(!line.contains('\n'));
    }
}
