//! The audit log as the sessions share it: where records go, which statements are in
//! scope, and whether the log is healthy (writes in scope are refused while it is not).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{AuditError, AuditLog, RecordContext, RecordDraft};
use crate::config::AuditScope;
use crate::sql::{Protection, StatementPlan};

/// The audit log as the sessions share it.
pub struct AuditSink {
    pub log: AuditLog,
    pub scope: AuditScope,
    /// False after an append failed, until one that started after the failure succeeds.
    pub healthy: AtomicBool,
    /// Counts failed appends: an append that was already under way when another failed
    /// must not mark the log healthy again when it completes late.
    failures: AtomicU64,
}

impl AuditSink {
    pub fn new(log: AuditLog, scope: AuditScope) -> Self {
        Self {
            log,
            scope,
            healthy: AtomicBool::new(true),
            failures: AtomicU64::new(0),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether a statement is recorded.
    pub fn in_scope(&self, plan: Option<&StatementPlan>, protection: &Protection) -> bool {
        match self.scope {
            AuditScope::All => true,
            AuditScope::Protected => {
                plan.is_some_and(|p| p.tables.iter().any(|t| protection.is_protected_table(t)))
            }
        }
    }

    /// Appends a record with the session context it ran in; the outcome also marks the
    /// log's health for later statements.
    pub async fn append(
        &self,
        draft: RecordDraft,
        context: RecordContext,
    ) -> Result<u64, AuditError> {
        let failures_before = self.failures.load(Ordering::SeqCst);
        let result = self.log.append_in_context(draft, context).await;
        match &result {
            Err(_) => {
                self.failures.fetch_add(1, Ordering::SeqCst);
                self.healthy.store(false, Ordering::SeqCst);
            }
            Ok(_) => {
                if self.failures.load(Ordering::SeqCst) == failures_before {
                    self.healthy.store(true, Ordering::SeqCst);
                    // A failure that landed between the check and the store wins.
                    if self.failures.load(Ordering::SeqCst) != failures_before {
                        self.healthy.store(false, Ordering::SeqCst);
                    }
                }
            }
        }
        result
    }
}
