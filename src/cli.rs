//! What each command does, so `main.rs` stays a parser. Every failure is one line on
//! stderr and a non-zero exit code.
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{Config, LogFormat};

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("pgveil: {message}");
    ExitCode::FAILURE
}

pub fn serve(config_path: &Path, log_format: Option<LogFormat>) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            for line in e.lines() {
                eprintln!("pgveil: {line}");
            }
            return ExitCode::FAILURE;
        }
    };
    crate::logging::init(
        log_format.unwrap_or(config.server.log_format),
        &config.server.log_level,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format_args!("cannot start the runtime: {e}")),
    };
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
        tracing::info!(listen = %local, upstream = %config.upstream_addr(), "pgveil is ready");
        match crate::server::serve(listener, Arc::new(config), shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        }
    })
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

pub fn check(config_path: &Path, live: bool) -> ExitCode {
    match Config::load(config_path) {
        Ok(config) => {
            if live {
                return fail("--live is not available yet");
            }
            println!(
                "{}: valid ({} protected column(s), {} table rule(s))",
                config_path.display(),
                config.columns.len(),
                config.tables.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for line in e.lines() {
                println!("{line}");
            }
            ExitCode::FAILURE
        }
    }
}
