//! The audit records of statements whose response is arriving: each is started when its
//! response begins, and a response that releases protected values is held until its record
//! is durable (a write's record goes on in the background).

use std::sync::Arc;

use super::{Backend, Message};
use crate::net::backend::BackendMessage;
use crate::net::frontend::result_format;
use crate::session::protected::audit::recording;
use crate::session::protected::cursors::{fetch_row_types, Fetch};
use crate::session::protected::state::{Portal, State};
use crate::session::recording::Identity;
use crate::session::relay::{Action, Audited};
use crate::sql::StatementPlan;

impl Backend<'_> {
    pub(super) fn identity(&self) -> &Identity {
        // Only called while recording, which needs an audit sink and so an identity.
        static NOBODY: std::sync::OnceLock<Identity> = std::sync::OnceLock::new();
        self.session
            .audit
            .as_ref()
            .map(|(_, identity)| identity)
            .unwrap_or_else(|| {
                NOBODY.get_or_init(|| Identity {
                    session: String::new(),
                    client: String::new(),
                    user: String::new(),
                    roles: Vec::new(),
                    application: String::new(),
                })
            })
    }

    /// Starts the record of the statement whose response is arriving: a simple query's
    /// statement or an Execute. `row_types` is the row layout when already known.
    pub(super) fn begin_recording(
        &mut self,
        plan: Option<&StatementPlan>,
        fingerprint: String,
        refused: bool,
        row_types: Option<(Vec<(u32, i16)>, usize)>,
        state: &State,
    ) {
        let mut recording = recording(self.session, state, plan, fingerprint, refused);
        if let Some((types, injected)) = row_types {
            recording.set_row_types(types, injected);
        }
        self.recording = Some(recording);
    }

    /// Starts the record of an Execute of a statement in scope.
    pub(super) fn begin_execute(&mut self, portal: &Portal, state: &State) {
        let prepared = &portal.prepared;
        let Some(fingerprint) = &prepared.fingerprint else {
            return;
        };
        let row_types = prepared.row.get().map(|info| {
            let types = info
                .types
                .iter()
                .enumerate()
                .map(|(i, oid)| (*oid, result_format(&portal.result_formats, i)))
                .collect();
            (types, prepared.injected)
        });
        self.begin_recording(
            prepared.plan(),
            fingerprint.clone(),
            false,
            row_types,
            state,
        );
    }

    /// Starts the record of an Execute of a FETCH, with the plan of its cursor.
    pub(super) fn begin_fetch(&mut self, fetch: &Fetch, portal: &Portal, state: &State) {
        let Some(fingerprint) = &fetch.fingerprint else {
            return;
        };
        let described = portal.prepared.row.get().map(|row| row.types.as_slice());
        let row_types = fetch_row_types(&fetch.source, described, &portal.result_formats);
        let plan = fetch.source.plan();
        self.begin_recording(plan, fingerprint.clone(), false, row_types, state);
    }

    /// Routes a frame of a recorded statement into its held response; at the statement's
    /// end, the response leaves with its record.
    pub(super) fn record(
        &mut self,
        action: Action,
        (frame, message): Message<'_>,
        ends: bool,
    ) -> Action {
        let Some(recording) = self.recording.as_mut() else {
            return action;
        };
        if self.copy_out.is_some()
            && matches!(
                message,
                BackendMessage::CopyOutResponse(_) | BackendMessage::CopyData(_)
            )
        {
            // A COPY streams: holding a whole table would take unbounded memory. Its end
            // (CopyDone, CommandComplete) still waits for the record.
            return action;
        }
        if !recording.discloses() {
            // Nothing protected is released (a write without RETURNING, a refusal): the
            // response need not wait for the record, which is written in the background.
            // While the log is failing, writes are refused before they run.
            if ends {
                if let (Some(recording), Some(sink)) = (self.recording.take(), self.session.sink())
                {
                    let audited = recording.finish(self.identity(), &message);
                    let sink = Arc::clone(sink);
                    tokio::spawn(async move {
                        let Audited { draft, context, .. } = *audited;
                        if let Err(e) = sink.append(draft, context).await {
                            tracing::error!(error = %e, "audit record of a write not written");
                        }
                    });
                }
            }
            return action;
        }
        recording.hold(action, frame);
        if !ends {
            return Action::Drop;
        }
        match self.recording.take() {
            Some(recording) => Action::Audited(recording.finish(self.identity(), &message)),
            None => Action::Drop,
        }
    }
}
