//! The listener: accepts clients, runs their handshake, connects each to the database,
//! and shuts down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::alerts::AlertService;
use crate::audit::AuditSink;
use crate::audit::{AuditLog, AuditOptions};
use crate::auth::Terminator;
use crate::config::Config;
use crate::crypto::keyring::{KeyRing, MasterSource};
use crate::metrics::{self, ErrorKind};
use crate::net::handshake::{Accepted, Handshake};
use crate::net::stream::{MaybeTls, SplitConnection};
use crate::net::tls::{self, TlsError};
use crate::net::upstream::{Connector, UpstreamError};
use crate::pgerror::{sqlstate, PgError};
use crate::policy::Policy;
use crate::session::{self, SessionConfig};
use crate::veil::Veil;
use arc_swap::ArcSwap;
use tokio::sync::mpsc;

/// How long a client may take to get from connect to a startup message.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("client TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("upstream: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Keys(#[from] crate::crypto::keys::KeyError),
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("alerts: {0}")]
    Alerts(#[from] crate::alerts::AlertError),
    #[error("{0}")]
    Context(#[from] crate::context::ContextError),
}

/// Opens the audit log of `[audit]`, if configured, with the `[[alert]]` rules evaluated
/// beside its writer.
pub async fn open_audit(
    config: &Config,
) -> Result<(Option<Arc<AuditSink>>, Option<AlertService>), ServeError> {
    let Some(audit) = &config.audit else {
        return Ok((None, None));
    };
    let key = crate::crypto::keys::load_signing_key(&audit.signing_key_file)?;
    let mut options = AuditOptions::new(audit.dir.clone(), key);
    options.segment_max_bytes = audit.segment_max_bytes;
    options.checkpoint_every = audit.checkpoint_every;
    options.checkpoint_interval = audit.checkpoint_interval;
    let alerts = match crate::alerts::start(&config.alert_rules, &config.alerts)? {
        Some((sink, service)) => {
            options.observer = Some(Box::new(sink));
            Some(service)
        }
        None => None,
    };
    let log = tokio::task::spawn_blocking(move || AuditLog::open(options))
        .await
        .map_err(|e| crate::audit::AuditError::Io(e.to_string()))??;
    Ok((Some(Arc::new(AuditSink::new(log, audit.scope))), alerts))
}

/// How long shutdown waits for alerts still being delivered.
const ALERTS_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The key ring (current and previous master keys), when columns are configured (a plain
/// relay needs none).
pub fn load_key_ring(config: &Config) -> Result<Option<KeyRing>, crate::crypto::keys::KeyError> {
    if config.columns.is_empty() {
        return Ok(None);
    }
    let env = std::env::var("PGVEIL_MASTER_KEY").ok();
    let current = match (&config.keys.pkcs11, &config.keys.master_key_file, &env) {
        (Some(pkcs11), _, _) => MasterSource::Pkcs11(pkcs11),
        (None, Some(file), _) => MasterSource::File(file),
        (None, None, Some(value)) => MasterSource::Environment(value),
        (None, None, None) => return Err(crate::crypto::keys::KeyError::NoMasterKey),
    };
    KeyRing::open(current, &config.keys.previous_master_key_files).map(Some)
}

/// Session threads when `[server] workers` is not set: one per CPU, so pgveil can use every
/// core it is given. On a small machine shared with the database and the clients, fewer
/// threads cost less CPU per statement (fewer wake-ups) but take a smaller share of the CPUs:
/// bench/README.md, "Relay runtime", measured both; `workers = 1` there is an operator's choice.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Sessions run on current-thread runtimes: every wakeup of a session (its two
/// sockets and its task) stays on one thread, which on a loaded machine costs far fewer
/// context switches than a work-stealing pool.
struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    next: usize,
}

impl Workers {
    fn start(count: usize) -> std::io::Result<Self> {
        let mut workers = Workers {
            handles: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
            next: 0,
        };
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            workers.stops.push(stop_tx);
            workers.threads.push(
                std::thread::Builder::new()
                    .name(format!("pgveil-worker-{index}"))
                    .spawn(move || {
                        runtime.block_on(async {
                            let _ = stop_rx.await;
                        });
                    })?,
            );
        }
        Ok(workers)
    }

    fn next(&mut self) -> &tokio::runtime::Handle {
        let handle = &self.handles[self.next % self.handles.len()];
        self.next = self.next.wrapping_add(1);
        handle
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

struct Proxy {
    /// What new sessions use; a reload may replace it (same master key, new columns).
    veil: ArcSwap<Veil>,
    /// The live policy, followed by open sessions too.
    policy: Arc<ArcSwap<Policy>>,
    /// Kept so a reload can derive keys for new columns; never replaced by a reload.
    master: Option<KeyRing>,
    audit: Option<Arc<AuditSink>>,
    handshake: Handshake,
    connector: Connector,
    /// `auth = "scram"`: pgveil authenticates clients and logs in for them.
    terminator: Option<Terminator>,
    max_message_size: usize,
    /// The token key, for every session (`[policy]`'s context rules are in `policy`).
    context: Arc<session::protected::ContextRules>,
}

/// Serves clients from `listener` until `shutdown` resolves, then stops accepting, lets
/// busy sessions finish their current work (idle ones are closed at once), and closes
/// whatever is left after `[server] shutdown_timeout_secs`.
pub async fn serve(
    listener: TcpListener,
    config: Arc<Config>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (_keep, reloads) = mpsc::unbounded_channel();
    serve_with_reload(listener, config, shutdown, reloads).await
}

/// [`serve`], also applying each configuration that arrives on `reloads` (already
/// validated): the policy applies to open sessions from their next statement, new columns
/// to new sessions. Settings that need a restart (listener, upstream, TLS, keys, audit) are
/// kept and a warning says so.
pub async fn serve_with_reload(
    listener: TcpListener,
    config: Arc<Config>,
    shutdown: impl Future<Output = ()>,
    mut reloads: mpsc::UnboundedReceiver<Config>,
) -> Result<(), ServeError> {
    let server_tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => Some(tls::ServerTls::load(cert, key)?),
        _ => None,
    };
    if server_tls.as_ref().is_some_and(|t| t.end_point.is_none()) {
        tracing::warn!("the client-facing certificate's signature algorithm names no hash for tls-server-end-point: SCRAM-SHA-256-PLUS is not offered");
    }
    let connector = Connector::new(&config.upstream)?;
    let terminator = (config.upstream.auth == crate::config::AuthMode::Scram)
        .then(|| Terminator::new(&config.upstream, connector.clone()));
    let master = load_key_ring(&config)?;
    let veil =
        Veil::new(&config, master.as_ref()).ok_or(crate::crypto::keys::KeyError::NoMasterKey)?;
    let (audit, alerts) = open_audit(&config).await?;
    let proxy = Arc::new(Proxy {
        audit: audit.clone(),
        veil: ArcSwap::from_pointee(veil),
        policy: Arc::new(ArcSwap::from_pointee(config.access_policy())),
        master,
        handshake: Handshake::new(server_tls, config.server.require_tls),
        connector,
        terminator,
        max_message_size: config.server.max_message_size,
        context: Arc::new(session::protected::ContextRules {
            verifier: crate::context::TokenVerifier::from_config(&config.context)?,
        }),
    });
    let (stop_tx, stop_rx) = watch::channel(false);

    if let Some(addr) = &config.server.metrics_listen {
        let metrics_listener =
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen {
                    addr: addr.clone(),
                    source,
                })?;
        if let Some(handle) = metrics::install() {
            tokio::spawn(metrics::serve(metrics_listener, handle, stop_rx.clone()));
        }
    }
    let _ = metrics::get();

    let worker_count = config.server.workers.unwrap_or_else(default_workers);
    let mut workers = Workers::start(worker_count).map_err(|source| ServeError::Listen {
        addr: "worker threads".into(),
        source,
    })?;
    if let Some(reuse) = proxy
        .terminator
        .as_ref()
        .map(|_| config.upstream.reuse)
        .filter(|r| r.enabled)
    {
        tokio::spawn(reap_idle(proxy.clone(), reuse, stop_rx.clone()));
    }
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, addr)) => {
                    // Re-registered with the worker's own I/O driver inside the task.
                    let Ok(tcp) = tcp.into_std() else { continue };
                    let proxy = proxy.clone();
                    let stop = stop_rx.clone();
                    sessions.spawn_on(
                        async move {
                            if let Ok(tcp) = TcpStream::from_std(tcp) {
                                handle_client(tcp, addr, proxy, stop).await;
                            }
                        },
                        workers.next(),
                    );
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(new) = reloads.recv() => proxy.reload(&config, new),
            _ = &mut shutdown => break,
        }
        while sessions.try_join_next().is_some() {}
    }
    drop(listener);
    tracing::info!(
        sessions = sessions.len(),
        "shutting down: no longer accepting connections"
    );
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(config.server.shutdown_timeout, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            sessions = sessions.len(),
            "shutdown deadline passed; closing remaining sessions"
        );
        sessions.shutdown().await;
    }
    if let Some(terminator) = &proxy.terminator {
        // Before the workers stop: the kept connections' sockets are theirs.
        terminator.reap(true).await;
    }
    drop(workers);
    if let Some(audit) = audit {
        audit.log.shutdown().await;
    }
    if let Some(alerts) = alerts {
        alerts.finish(ALERTS_SHUTDOWN_TIMEOUT).await;
    }
    tracing::info!("shutdown complete");
    Ok(())
}

impl Proxy {
    fn reload(&self, running: &Config, new: Config) {
        let restart_needed = [
            (
                running.server.listen != new.server.listen,
                "[server] listen",
            ),
            (
                running.server.require_tls != new.server.require_tls
                    || (running.server.tls_cert.is_some() && new.server.tls_cert.is_none()),
                "[server] require_tls, or turning TLS off",
            ),
            (
                running.upstream_addr() != new.upstream_addr()
                    || running.upstream.tls != new.upstream.tls
                    || running.upstream.auth != new.upstream.auth
                    || running.upstream.auth_user != new.upstream.auth_user
                    || running.upstream.auth_query != new.upstream.auth_query,
                "[upstream]",
            ),
            (
                running.keys.master_key_file != new.keys.master_key_file
                    || running.keys.previous_master_key_files != new.keys.previous_master_key_files
                    || running.keys.pkcs11 != new.keys.pkcs11,
                "[keys]",
            ),
            (
                running.audit.as_ref().map(|a| &a.dir) != new.audit.as_ref().map(|a| &a.dir),
                "[audit]",
            ),
            (
                running.alerts != new.alerts || running.alert_rules != new.alert_rules,
                "[alerts] and [[alert]]",
            ),
        ];
        for (changed, what) in restart_needed {
            if changed {
                tracing::warn!(
                    setting = what,
                    "reload: this setting takes effect only after a restart"
                );
            }
        }
        self.reload_tls(&new);
        let current = self.veil.load();
        if new.protected_columns() != current.protection.columns() {
            if !new.columns.is_empty() && self.master.is_none() {
                tracing::error!("reload rejected: columns are configured but pgveil started without a master key; restart to add keys");
                return;
            }
            match Veil::new(&new, self.master.as_ref()) {
                Some(veil) => {
                    self.veil.store(Arc::new(veil));
                    tracing::info!(
                        columns = new.columns.len(),
                        "reload: protected columns apply to new sessions"
                    );
                }
                None => {
                    tracing::error!(
                        "reload rejected: the keys of the configured columns cannot be derived"
                    );
                    return;
                }
            }
        }
        self.policy.store(Arc::new(new.access_policy()));
        tracing::info!(
            "configuration reloaded: the policy applies to open sessions from their next statement"
        );
    }
}

impl Proxy {
    /// Re-reads the client-facing certificate and key (rotation without a restart). A pair
    /// that does not load is refused and the one in use stays.
    fn reload_tls(&self, new: &Config) {
        let (Some(cert), Some(key)) = (&new.server.tls_cert, &new.server.tls_key) else {
            return;
        };
        match tls::ServerTls::load(cert, key) {
            Ok(loaded) => {
                if loaded.end_point.is_none() {
                    tracing::warn!("the new certificate's signature algorithm names no hash for tls-server-end-point: SCRAM-SHA-256-PLUS is not offered");
                }
                self.handshake.set_tls(loaded);
                tracing::info!("reload: new connections get the TLS certificate and key just read");
            }
            Err(e) => {
                metrics::get().error(ErrorKind::Tls);
                tracing::error!(error = %e, "reload: the TLS certificate or key does not load; the pair in use stays");
            }
        }
    }
}

/// Closes kept database connections as they pass their idle time or lifetime.
async fn reap_idle(
    proxy: Arc<Proxy>,
    reuse: crate::config::ServerReuse,
    mut stop: watch::Receiver<bool>,
) {
    let every = (reuse.idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(15));
    let Some(terminator) = &proxy.terminator else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => terminator.reap(false).await,
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

/// Decrements the open-connections gauge however the session ends.
struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        let m = metrics::get();
        m.connections_total.increment(1);
        m.connections_open.increment(1.0);
        Self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::get().connections_open.decrement(1.0);
    }
}

async fn handle_client(
    tcp: TcpStream,
    addr: SocketAddr,
    proxy: Arc<Proxy>,
    stop: watch::Receiver<bool>,
) {
    let _open = OpenConnection::new();
    let _ = tcp.set_nodelay(true);
    // The login steps run boxed: the task keeps this future for as long as the session is
    // open, and it should not carry room for steps long done (issue #14: idle memory).
    let accepted =
        match tokio::time::timeout(STARTUP_TIMEOUT, Box::pin(proxy.handshake.accept(tcp))).await {
            Ok(accepted) => accepted,
            Err(_) => {
                tracing::info!(client = %addr, "client did not complete startup in time");
                return;
            }
        };
    match accepted {
        Ok(Accepted::Cancel { pid, secret }) => {
            // With auth = "scram" clients hold pgveil's keys, mapped to their backends'.
            let forwarded = match &proxy.terminator {
                Some(terminator) => terminator.cancel(pid, &secret).await,
                None => proxy.connector.cancel(pid, &secret).await,
            };
            if let Err(e) = forwarded {
                tracing::warn!(client = %addr, error = %e, "could not forward cancel request");
            }
        }
        Ok(Accepted::Session {
            mut stream,
            startup,
            tls_end_point,
        }) => {
            let (connected, lease) = match &proxy.terminator {
                Some(terminator) => {
                    match Box::pin(terminator.login(
                        &mut stream,
                        &startup,
                        addr,
                        tls_end_point.as_deref(),
                    ))
                    .await
                    {
                        Some((upstream, lease)) => (Ok(upstream), Some(lease)),
                        None => return,
                    }
                }
                None => (
                    Box::pin(connect_upstream(&proxy.connector, &startup.raw))
                        .await
                        .map(|u| SplitConnection::new(u, bytes::BytesMut::new())),
                    None,
                ),
            };
            let upstream = match connected {
                Ok(upstream) => upstream,
                Err(e) => {
                    metrics::get().error(ErrorKind::UpstreamConnect);
                    tracing::error!(client = %addr, error = %e, "cannot reach the database");
                    let error =
                        PgError::fatal(sqlstate::CONNECTION_FAILURE, format!("pgveil: {e}"));
                    let _ = stream.write_all(&error.encode()).await;
                    let _ = stream.shutdown().await;
                    return;
                }
            };
            tracing::debug!(client = %addr, user = startup.user(), database = startup.database(), "session started");
            let config = SessionConfig {
                client_addr: addr,
                max_message_size: proxy.max_message_size,
                reuse: lease
                    .as_ref()
                    .is_some_and(crate::auth::reuse::ServerPool::reusable),
            };
            let veil = proxy.veil.load_full();
            let stopping = stop.clone();
            let returned = if veil.is_empty() {
                drop(startup);
                session::run(stream, upstream, config, stop).await
            } else {
                let login = session::startup::Login {
                    database: startup.database().to_string(),
                    user: startup.user().to_string(),
                    application: startup.param("application_name").unwrap_or("").to_string(),
                };
                // Not needed while the session relays: its memory goes back now.
                drop(startup);
                session::startup::run(
                    stream,
                    upstream,
                    login,
                    config,
                    session::protected::Engine {
                        veil,
                        policy: proxy.policy.clone(),
                        audit: proxy.audit.clone(),
                        context: proxy.context.clone(),
                    },
                    stop,
                )
                .await
            };
            if let (Some(terminator), Some(lease)) = (&proxy.terminator, lease) {
                let stopping = *stopping.borrow();
                terminator.release(lease, returned, stopping).await;
            }
        }
        Err((stream, error)) => {
            let kind = if matches!(error, crate::net::handshake::HandshakeError::Tls(_)) {
                ErrorKind::Tls
            } else {
                ErrorKind::Protocol
            };
            metrics::get().error(kind);
            tracing::info!(client = %addr, error = %error, "startup failed");
            if let (Some(mut stream), Some(reply)) = (stream, error.client_error()) {
                let _ = stream.write_all(&reply.encode()).await;
                let _ = stream.shutdown().await;
            }
        }
    }
}

async fn connect_upstream(
    connector: &Connector,
    startup: &[u8],
) -> Result<MaybeTls, UpstreamError> {
    let mut upstream = connector.connect().await?;
    upstream.write_all(startup).await?;
    upstream.flush().await?;
    Ok(upstream)
}
