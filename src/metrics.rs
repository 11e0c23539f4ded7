//! Prometheus metrics: handles are resolved once, so the hot path only touches atomics.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Why a connection or statement failed, as a metric label (never a value or a name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Protocol,
    Tls,
    UpstreamConnect,
    UpstreamLost,
    Database,
    Refused,
    Audit,
    /// A login pgveil terminated (`auth = "scram"`) failed.
    Auth,
}

impl ErrorKind {
    const ALL: [ErrorKind; 8] = [
        ErrorKind::Protocol,
        ErrorKind::Tls,
        ErrorKind::UpstreamConnect,
        ErrorKind::UpstreamLost,
        ErrorKind::Database,
        ErrorKind::Refused,
        ErrorKind::Audit,
        ErrorKind::Auth,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Protocol => "protocol",
            Self::Tls => "tls",
            Self::UpstreamConnect => "upstream_connect",
            Self::UpstreamLost => "upstream_lost",
            Self::Database => "database",
            Self::Refused => "refused",
            Self::Audit => "audit",
            Self::Auth => "auth",
        }
    }
}

pub struct Metrics {
    pub connections_open: Gauge,
    pub connections_total: Counter,
    pub bytes_from_client: Counter,
    pub bytes_from_server: Counter,
    pub queries: Counter,
    pub query_seconds: Histogram,
    /// Analyses answered from the cache by exact text, by shape (literal values aside).
    pub plan_cache_hits_exact: Counter,
    pub plan_cache_hits_shape: Counter,
    pub plan_cache_misses: Counter,
    pub fingerprint_cache_hits: Counter,
    pub fingerprint_cache_misses: Counter,
    /// Statements pgveil prepared again after a migration changed their columns.
    pub statements_renewed: Counter,
    errors: Vec<Counter>,
}

impl Metrics {
    pub fn error(&self, kind: ErrorKind) {
        if let Some(counter) = self.errors.get(kind as usize) {
            counter.increment(1);
        }
    }
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns the handle that renders it.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("pgveil_query_duration_seconds".into()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5, 10.0,
                    ],
                )
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            // Histogram samples pile up until drained; without this, a proxy that is never
            // scraped would grow by a few bytes per query forever.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("pgveil-metrics".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .ok()?;
            Some(handle)
        })
        .clone()
}

/// The handles; the recorder must be installed first for them to record anything.
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(|| {
        let _ = install();
        metrics::describe_gauge!("pgveil_connections_open", "Client connections currently open");
        metrics::describe_counter!("pgveil_connections_total", "Client connections accepted");
        metrics::describe_counter!("pgveil_bytes_total", "Bytes relayed, by direction");
        metrics::describe_counter!("pgveil_queries_total", "Queries and extended-protocol syncs relayed");
        metrics::describe_histogram!("pgveil_query_duration_seconds", "Time from a query (or Sync) to ReadyForQuery");
        metrics::describe_counter!("pgveil_errors_total", "Errors by kind");
        metrics::describe_counter!(
            "pgveil_statements_renewed_total",
            "Prepared statements pgveil prepared again after a migration changed their columns"
        );
        describe_alerts();
        describe_caches();
        Metrics {
            connections_open: metrics::gauge!("pgveil_connections_open"),
            connections_total: metrics::counter!("pgveil_connections_total"),
            bytes_from_client: metrics::counter!("pgveil_bytes_total", "direction" => "client_to_server"),
            bytes_from_server: metrics::counter!("pgveil_bytes_total", "direction" => "server_to_client"),
            queries: metrics::counter!("pgveil_queries_total"),
            query_seconds: metrics::histogram!("pgveil_query_duration_seconds"),
            plan_cache_hits_exact: metrics::counter!("pgveil_plan_cache_hits_total", "key" => "exact"),
            plan_cache_hits_shape: metrics::counter!("pgveil_plan_cache_hits_total", "key" => "shape"),
            plan_cache_misses: metrics::counter!("pgveil_plan_cache_misses_total"),
            fingerprint_cache_hits: metrics::counter!("pgveil_fingerprint_cache_hits_total"),
            fingerprint_cache_misses: metrics::counter!("pgveil_fingerprint_cache_misses_total"),
            statements_renewed: metrics::counter!("pgveil_statements_renewed_total"),
            errors: ErrorKind::ALL
                .iter()
                .map(|k| metrics::counter!("pgveil_errors_total", "kind" => k.label()))
                .collect(),
        }
    })
}

/// A minimal HTTP/1.x endpoint: `/metrics` and `/healthz`, one request per connection.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut shutdown = shutdown;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
                continue;
            }
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut request = vec![0u8; 2048];
            let read =
                tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request)).await;
            let Ok(Ok(n)) = read else { return };
            let head = String::from_utf8_lossy(&request[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, content_type, body) = match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", handle.render()),
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// One alert raised by the `[[alert]]` rule `rule` (its configured name, never a value).
pub fn alert_raised(rule: &str) {
    metrics::counter!("pgveil_alerts_total", "rule" => rule.to_string()).increment(1);
}

/// A durable record the alert rules never saw because their queue was full.
pub fn alert_evaluation_dropped() {
    metrics::counter!("pgveil_alert_evaluations_dropped_total").increment(1);
}

/// A failed attempt to deliver alerts (`target`: `file` or `alertmanager`), and alerts given
/// up on (`alertmanager_dropped`).
pub fn alert_delivery_failed(target: &'static str) {
    metrics::counter!("pgveil_alert_delivery_failures_total", "target" => target).increment(1);
}

/// Describes the cache metrics (once, with the others).
fn describe_caches() {
    metrics::describe_counter!(
        "pgveil_plan_cache_hits_total",
        "Statement analyses answered from the cache, by key (exact text, or shape: literal values aside)"
    );
    metrics::describe_counter!(
        "pgveil_plan_cache_misses_total",
        "Statement analyses made (not found in the cache)"
    );
    metrics::describe_counter!(
        "pgveil_fingerprint_cache_hits_total",
        "Audit fingerprints answered from the cache"
    );
    metrics::describe_counter!(
        "pgveil_fingerprint_cache_misses_total",
        "Audit fingerprints computed (not found in the cache)"
    );
}

/// Describes the alert metrics (once, with the others).
fn describe_alerts() {
    metrics::describe_counter!(
        "pgveil_alerts_total",
        "Alerts raised, by [[alert]] rule name"
    );
    metrics::describe_counter!(
        "pgveil_alert_evaluations_dropped_total",
        "Audit records not evaluated by the alert rules because their queue was full"
    );
    metrics::describe_counter!(
        "pgveil_alert_delivery_failures_total",
        "Failed alert deliveries, by target"
    );
}
