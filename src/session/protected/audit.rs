//! The audit hooks of the protected relay: what a simple query's audit needs per statement,
//! and the one place a statement's [`Recording`] is started, whether it ran (a simple query's
//! statement, an Execute) or was refused.

use std::sync::Arc;

use super::state::State;
use super::Session;
use crate::session::recording::Recording;
use crate::sql::StatementPlan;

/// What the audit log needs of a simple query: per statement, its fingerprint and how many
/// subject columns were appended to it (`None`: not recorded).
pub(super) struct QueryAudit {
    pub statements: Vec<Option<(String, usize)>>,
    /// The statement replaced by pgveil's raised error, if any.
    pub refused: Option<usize>,
}

impl QueryAudit {
    /// A query recorded as one statement (not analysed, or refused whole).
    pub fn single(fingerprint: String, refused: bool) -> Arc<Self> {
        Arc::new(Self {
            statements: vec![Some((fingerprint, 0))],
            refused: refused.then_some(0),
        })
    }
}

/// Starts the record of one statement.
pub(super) fn recording(
    session: &Session,
    state: &State,
    plan: Option<&StatementPlan>,
    fingerprint: String,
    refused: bool,
) -> Recording {
    let mut recording = Recording::new(plan, fingerprint, &session.veil.protection, &state.access);
    recording.refused = refused;
    recording.context = state.context.current().record_context();
    recording
}

/// The record of a statement pgveil refuses, when the session is audited.
pub(super) fn refusal_recording(
    session: &Session,
    state: &State,
    plan: Option<&StatementPlan>,
    fingerprint: impl FnOnce() -> String,
) -> Option<Box<Recording>> {
    session.sink()?;
    Some(Box::new(recording(
        session,
        state,
        plan,
        fingerprint(),
        true,
    )))
}
