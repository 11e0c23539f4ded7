//! Tamper-evident audit log: records, the writer with group commit, verification, search
//! and the accounting of disclosures.
//!
//! - [`record`]: the JSON-lines record and checkpoint formats and the hashed/signed bytes.
//! - [`writer`]: [`AuditLog`], the durable appender used by proxy sessions; it reports each
//!   durable record to an optional [`RecordObserver`] (the alert rules).
//! - [`verify`]: [`verify_dir`], checks the chain, the segments and the signed checkpoints.
//! - [`search`] / [`report`]: `pgveil audit search` and `pgveil audit report`.
//! - [`cli`]: the functions the command line calls (argument parsing and rendering).
//!
//! # Directory layout
//!
//! Segment files `segment-000001.jsonl`, `segment-000002.jsonl`, … numbered without gaps from 1.
//! Other files in the directory are ignored (`writer.lock`, and `segment-next.prep`, the next
//! segment while it is prepared). A segment's content is its bytes up to the first NUL: the
//! open segment has zeros ahead of its content (preallocation, see [`segment`]), cut off when
//! the segment is closed. A segment is closed by a signed `rotate` checkpoint as its last
//! line, and the next segment is put in place (zero-filled, no content) before that checkpoint
//! is written, so a crash between the two never looks like a removed segment. After a
//! restart the writer continues the newest segment unless it was closed by `rotate`.

pub(crate) mod active;
pub mod cli;
pub mod observer;
pub mod record;
pub mod report;
pub mod search;
pub(crate) mod segment;
pub mod sink;
pub mod subjects;
pub mod verify;
pub mod writer;

#[cfg(test)]
mod context_tests;
#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod tests;

pub use observer::RecordObserver;
pub use record::{
    Access, AuditRecord, Checkpoint, CheckpointReason, ColumnAccess, Outcome, RecordContext,
    RecordDraft, StatementKind, Subjects, GENESIS,
};
pub use report::{report, DisclosureReport, ReportEntry};
pub use search::{search, SearchFilter};
pub use sink::AuditSink;
pub use subjects::SubjectIds;
pub use verify::{verify_dir, VerifyFailure, VerifySummary};
pub use writer::{AuditLog, AuditOptions, AuditStats};

/// Errors of the audit module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The log cannot be written (disk full, read-only, directory gone, permissions).
    /// Statements in scope must be refused with SQLSTATE 58030.
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    /// The log was shut down.
    #[error("audit log is shut down")]
    Closed,
    /// The log on disk is damaged in a way that needs an operator (see `pgveil audit verify`).
    #[error("audit log damaged: {0}")]
    Corrupt(String),
    /// Reading the log failed.
    #[error("cannot read audit log: {0}")]
    Io(String),
    /// A bad argument (filter, subject, time).
    #[error("{0}")]
    InvalidArgument(String),
}

impl AuditError {
    /// The SQLSTATE a session reports when an append fails (`58030`, io_error).
    pub fn sqlstate(&self) -> &'static str {
        crate::pgerror::sqlstate::IO_ERROR
    }
}
