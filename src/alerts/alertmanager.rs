//! Delivery to Prometheus Alertmanager (`POST {url}/api/v2/alerts`), in the background:
//! alerts queue here, are posted in batches, and a failed post is retried with exponential
//! backoff (1 s doubling to 60 s). Nothing here is ever awaited by a session or by the
//! audit writer. Alerts whose active period ended before they could be delivered, and the
//! oldest ones beyond [`MAX_QUEUED`], are given up (and counted).
//!
//! The HTTP exchange is hyper's HTTP/1 client connection over a plain TCP stream: one
//! short-lived connection per post, with timeouts on connecting and on the whole exchange.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::AlertmanagerUrl;

/// One alert waiting for delivery.
#[derive(Debug, Clone)]
pub struct Pending {
    pub entry: Value,
    /// After this it is no longer worth delivering.
    pub ends_at: DateTime<Utc>,
}

/// Alerts kept for delivery at most; the oldest go first.
pub const MAX_QUEUED: usize = 1000;
/// Alerts per post at most.
const BATCH: usize = 100;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("cannot build the request: {0}")]
    Request(#[from] http::Error),
    #[error("answered {0}")]
    Status(http::StatusCode),
}

impl PostError {
    /// Whether posting the same alerts again may succeed (a rejected payload never will).
    fn retryable(&self) -> bool {
        match self {
            Self::Status(status) => {
                status.is_server_error() || *status == http::StatusCode::TOO_MANY_REQUESTS
            }
            Self::Request(_) => false,
            _ => true,
        }
    }
}

/// Posts `body` (a JSON array of alerts) once.
pub async fn post(url: &AlertmanagerUrl, body: Bytes) -> Result<(), PostError> {
    let stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((url.host.as_str(), url.port)),
    )
    .await
    .map_err(|_| PostError::Timeout)?
    .map_err(PostError::Connect)?;
    let _ = stream.set_nodelay(true);
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(connection);
        let request = http::Request::post(url.alerts_path())
            .header(http::header::HOST, &url.authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "pgveil")
            .body(Full::new(body))?;
        let result = async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            // Read the (small) answer so the exchange completes; its content is not needed.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(PostError::Status(status))
            }
        }
        .await;
        driver.abort();
        result
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| PostError::Timeout)?
}

/// The delivery loop: runs until `alerts` is closed, then makes one last attempt with what
/// is still queued.
pub async fn run(url: AlertmanagerUrl, mut alerts: mpsc::Receiver<Pending>) {
    let mut queue: VecDeque<Pending> = VecDeque::new();
    let mut backoff = FIRST_BACKOFF;
    let mut retry_at: Option<Instant> = None;
    let mut open = true;
    while open || !queue.is_empty() {
        if queue.is_empty() {
            match alerts.recv().await {
                Some(p) => queue.push_back(p),
                None => break,
            }
        } else if let Some(at) = retry_at {
            tokio::select! {
                received = alerts.recv(), if open => match received {
                    Some(p) => {
                        queue.push_back(p);
                        continue;
                    }
                    // Shutting down: one last attempt now.
                    None => open = false,
                },
                () = tokio::time::sleep_until(at) => {}
            }
        }
        while let Ok(p) = alerts.try_recv() {
            queue.push_back(p);
        }
        trim(&mut queue, Utc::now());
        if queue.is_empty() {
            continue;
        }
        let n = queue.len().min(BATCH);
        let batch: Vec<&Value> = queue.iter().take(n).map(|p| &p.entry).collect();
        let body = match serde_json::to_vec(&batch) {
            Ok(body) => Bytes::from(body),
            Err(_) => {
                queue.drain(..n);
                continue;
            }
        };
        match post(&url, body).await {
            Ok(()) => {
                queue.drain(..n);
                backoff = FIRST_BACKOFF;
                retry_at = None;
                tracing::debug!(alerts = n, "alerts delivered to Alertmanager");
            }
            Err(e) if !e.retryable() => {
                crate::metrics::alert_delivery_failed("alertmanager");
                tracing::error!(error = %e, alerts = n, url = %url, "Alertmanager refused alerts; they are dropped (they stay in the alerts file and the metric)");
                queue.drain(..n);
            }
            Err(e) => {
                crate::metrics::alert_delivery_failed("alertmanager");
                if !open {
                    tracing::warn!(error = %e, alerts = queue.len(), url = %url, "shutting down with alerts Alertmanager did not take");
                    return;
                }
                tracing::warn!(error = %e, alerts = queue.len(), retry_in = ?backoff, url = %url, "cannot deliver alerts to Alertmanager; retrying");
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        if !open {
            // The last attempt was made.
            return;
        }
    }
}

/// Drops alerts no longer active, and the oldest beyond [`MAX_QUEUED`].
fn trim(queue: &mut VecDeque<Pending>, now: DateTime<Utc>) {
    let before = queue.len();
    queue.retain(|p| p.ends_at > now);
    while queue.len() > MAX_QUEUED {
        queue.pop_front();
    }
    for _ in queue.len()..before {
        crate::metrics::alert_delivery_failed("alertmanager_dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_and_excess_alerts_are_given_up() {
        let now = Utc::now();
        let pending = |ends_in: i64| Pending {
            entry: Value::Null,
            ends_at: now + chrono::Duration::seconds(ends_in),
        };
        let mut queue: VecDeque<Pending> = (0..MAX_QUEUED + 5).map(|_| pending(60)).collect();
        queue.push_front(pending(-1));
        trim(&mut queue, now);
        assert_eq!(queue.len(), MAX_QUEUED);
        assert!(queue.iter().all(|p| p.ends_at > now));
    }

    #[test]
    fn only_failures_that_may_pass_are_retried() {
        assert!(PostError::Timeout.retryable());
        assert!(PostError::Status(http::StatusCode::SERVICE_UNAVAILABLE).retryable());
        assert!(PostError::Status(http::StatusCode::TOO_MANY_REQUESTS).retryable());
        assert!(!PostError::Status(http::StatusCode::BAD_REQUEST).retryable());
    }
}
