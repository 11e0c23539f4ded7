//! A seam for what watches the log as it is written (the alert rules, `crate::alerts`),
//! kept out of the writer: the writer only reports each durable statement record.

use super::record::{RecordContext, RecordDraft};

/// Told about each statement record once it is durable (never about maintenance records),
/// on the writer thread, after the appenders were answered. It must return at once: hand
/// the record to another thread or drop it, never block or do I/O.
pub trait RecordObserver: Send + 'static {
    fn durable(&self, seq: u64, draft: &RecordDraft, context: &RecordContext);
}
