//! Real-time alerts (DESIGN.md "Alerts"): the `[[alert]]` rules, evaluated beside the audit
//! writer as records become durable, never on a query's path.
//!
//! - [`summary`]: [`AlertSink`], the audit writer's [`crate::audit::RecordObserver`]: it
//!   turns each durable record into a [`RecordSummary`] and queues it (bounded; a full queue
//!   drops the evaluation and counts it, it never blocks the writer).
//! - [`rules`]: [`Evaluator`], the rules over the summaries (sliding windows, one alert per
//!   user and window).
//! - [`deliver`]: the alert as a JSON line and as an Alertmanager entry.
//! - [`alertmanager`]: background delivery to Alertmanager with retries.
//!
//! [`start`] runs all of it on a thread of its own (`pgveil-alerts`). Each alert increments
//! `pgveil_alerts_total{rule="NAME"}`, is appended to `[alerts] file` and queued for
//! Alertmanager. Alerts carry rule, login, end user and audit sequence numbers: never a data
//! value or a subject id (subjects are counted as keyed hashes).

pub mod alertmanager;
pub mod deliver;
pub mod rules;
pub mod summary;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use rules::{Alert, Evaluator};
pub use summary::{AlertSink, RecordSummary};

use crate::config::{AlertRule, AlertmanagerUrl, AlertsConfig};

/// Summaries waiting for the rules, at most.
pub const EVALUATION_QUEUE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("cannot start the alert thread: {0}")]
    Start(std::io::Error),
}

/// The running alert thread. It ends when the audit writer drops its [`AlertSink`].
pub struct AlertService {
    finished: oneshot::Receiver<()>,
}

impl AlertService {
    /// Waits (at most `timeout`) for the thread to deliver what it still holds after the
    /// audit log was shut down.
    pub async fn finish(self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.finished).await;
    }
}

/// Where alerts go.
#[derive(Debug, Clone, Default)]
struct Targets {
    file: Option<PathBuf>,
    alertmanager: Option<AlertmanagerUrl>,
}

/// Starts the rules (none: `None`). The sink goes to the audit writer
/// ([`crate::audit::AuditOptions::observer`]).
pub fn start(
    rules: &[AlertRule],
    config: &AlertsConfig,
) -> Result<Option<(AlertSink, AlertService)>, AlertError> {
    if rules.is_empty() {
        return Ok(None);
    }
    let (tx, rx) = mpsc::channel(EVALUATION_QUEUE);
    let (done, finished) = oneshot::channel();
    let rules = rules.to_vec();
    let targets = Targets {
        file: config.file.clone(),
        alertmanager: config.alertmanager_url.clone(),
    };
    let sink = AlertSink::new(tx, Evaluator::counts_subjects(&rules));
    // The recorder must be installed before the rules' counters are registered.
    let _ = crate::metrics::get();
    for rule in &rules {
        // Registered at zero, so a dashboard sees every rule before it first fires.
        metrics::counter!("pgveil_alerts_total", "rule" => rule.name.clone()).increment(0);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AlertError::Start)?;
    std::thread::Builder::new()
        .name("pgveil-alerts".into())
        .spawn(move || {
            runtime.block_on(run(rules, targets, rx));
            let _ = done.send(());
        })
        .map_err(AlertError::Start)?;
    Ok(Some((sink, AlertService { finished })))
}

async fn run(
    rules: Vec<AlertRule>,
    targets: Targets,
    mut summaries: mpsc::Receiver<RecordSummary>,
) {
    let mut evaluator = Evaluator::new(&rules);
    let delivery = targets.alertmanager.map(|url| {
        let (tx, rx) = mpsc::channel(alertmanager::MAX_QUEUED);
        (tx, tokio::spawn(alertmanager::run(url, rx)))
    });
    while let Some(summary) = summaries.recv().await {
        for alert in evaluator.observe(&summary) {
            raise(
                &alert,
                targets.file.as_deref(),
                delivery.as_ref().map(|d| &d.0),
            );
        }
    }
    if let Some((tx, task)) = delivery {
        drop(tx);
        let _ = task.await;
    }
}

fn raise(
    alert: &Alert,
    file: Option<&std::path::Path>,
    alertmanager: Option<&mpsc::Sender<alertmanager::Pending>>,
) {
    crate::metrics::alert_raised(&alert.name);
    tracing::warn!(
        alert = %alert.name,
        rule = alert.rule,
        login = %alert.login,
        end_user = alert.end_user.as_deref().unwrap_or(""),
        first_seq = alert.first_seq,
        last_seq = alert.last_seq,
        "{}",
        alert.summary
    );
    let now = chrono::Utc::now();
    if let Some(path) = file {
        if let Err(e) = deliver::append_to_file(path, alert, now) {
            crate::metrics::alert_delivery_failed("file");
            tracing::error!(path = %path.display(), error = %e, "cannot write the alerts file");
        }
    }
    if let Some(queue) = alertmanager {
        let pending = alertmanager::Pending {
            entry: deliver::alertmanager_entry(alert, now),
            ends_at: deliver::ends_at(alert, now),
        };
        if queue.try_send(pending).is_err() {
            crate::metrics::alert_delivery_failed("alertmanager_dropped");
        }
    }
}
