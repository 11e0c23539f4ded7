//! `pgveil serve`: run the proxy until SIGTERM or SIGINT; SIGHUP re-reads the configuration.

use std::path::Path;
use std::sync::Arc;

use super::{load_config, pidfile, CliError};
use crate::config::{Config, LogFormat};

pub fn serve(config_path: &Path, log_format: Option<LogFormat>) -> Result<(), CliError> {
    let config = load_config(config_path)?;
    crate::logging::init(
        log_format.unwrap_or(config.server.log_format),
        &config.server.log_level,
    );
    super::fdlimit::raise_open_files_limit();
    // The accept loop only; sessions run on their own worker threads (server::default_workers).
    let runtime = super::runtime()?;
    let pid_file = config.server.pid_file.clone();
    runtime.block_on(async move {
        let listener = listen(&config.server.listen).await.map_err(|e| {
            CliError::CannotRun(format!("cannot listen on {}: {e}", config.server.listen))
        })?;
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
        // Keys, the audit log, TLS material: what serve could not open, it could not run with.
        result.map_err(|e| CliError::CannotRun(e.to_string()))
    })
}

/// Room for this many connections that arrived but were not accepted yet (the kernel caps
/// it at net.core.somaxconn): many clients connecting at once, a pool filling up, should
/// wait in the queue rather than be refused. tokio's `bind` listens with 1,024.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the first address `listen` resolves to that can be bound, as `TcpListener::bind`
/// does, with [`LISTEN_BACKLOG`].
async fn listen(listen: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(listen).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As std's and tokio's bind do on Unix: a restart need not wait out TIME_WAIT.
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")
    }))
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
