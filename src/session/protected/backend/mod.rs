//! The server half: each frame of a response is matched with the client message it answers
//! (the front of the [`Expect`] queue), and rewritten where it carries protected columns:
//! logical types shown in RowDescription and ParameterDescription, values decrypted and
//! masked in DataRow, pgveil's own subject columns removed. Statements in the audit log's
//! scope have their response held until their record is written.
//!
//! Beside this file: `describe.rs` the answers to Describe (and which result columns are
//! protected), `hold.rs` the audit records of responses and the holding of them.

mod describe;
mod hold;

use bytes::Bytes;
use describe::{fields_of, portal_rows};

use super::context::ContextOp;
use super::copy_in::take_copy_error;
use super::copy_out::CopyOut;
use super::cursors::{fetch_rows, unattributed};
use super::state::{lock, plan_at, Expect, State};
use super::values::{decrypt_row, RowPlan};
use super::Session;
use crate::context::Setting;
use crate::metrics::{self, ErrorKind};
use crate::net::backend::{BackendMessage, CommandComplete, DataRow};
use crate::pgerror::{sqlstate, PgError};
use crate::session::introspect::Collector;
use crate::session::recording::Recording;
use crate::session::relay::Action;
use crate::sql;
use crate::veil::Database;

pub(super) struct Backend<'a> {
    session: &'a Session,
    rows: Option<RowPlan>,
    /// After an error pgveil raised mid-response: drop everything up to ReadyForQuery.
    suppress: bool,
    pub upstream_said_fatal: bool,
    refreshed: Vec<Collector>,
    /// The client's ReadyForQuery, held until pgveil's own query that follows it has been
    /// answered, so the client's next statement is analysed with what that query learned.
    held_ready: Option<Bytes>,
    /// The statement in flight whose response waits for its audit record.
    recording: Option<Recording>,
    /// A `COPY … TO STDOUT` of protected columns in flight.
    copy_out: Option<CopyOut>,
}

/// One frame and its decoded message.
type Message<'f> = (&'f [u8], BackendMessage<'f>);

impl<'a> Backend<'a> {
    pub fn new(session: &'a Session) -> Self {
        Self {
            session,
            rows: None,
            suppress: false,
            upstream_said_fatal: false,
            refreshed: Vec::new(),
            held_ready: None,
            recording: None,
            copy_out: None,
        }
    }

    pub fn frame(&mut self, frame: &[u8]) -> Action {
        let message = BackendMessage::decode(frame);
        // Asynchronous messages can arrive at any point.
        match message {
            BackendMessage::NoticeResponse | BackendMessage::NotificationResponse => {
                return Action::Forward
            }
            BackendMessage::ParameterStatus(parameter) => {
                self.parameter_status(parameter.name, parameter.value);
                return Action::Forward;
            }
            BackendMessage::Authentication(request) => {
                return request
                    .without_channel_binding()
                    .map_or(Action::Forward, Action::Replace)
            }
            BackendMessage::ErrorResponse(error) => {
                self.upstream_said_fatal |= error.is_fatal();
                let aborted = take_copy_error(&mut lock(&self.session.state));
                if let Some(cleaned) = aborted {
                    // The database's answer to pgveil's CopyFail: the client gets why.
                    metrics::get().error(ErrorKind::Refused);
                    return self.statement_error(cleaned, (frame, message));
                }
                if let Some(cleaned) = crate::pgerror::without_raise_context(frame) {
                    metrics::get().error(ErrorKind::Refused);
                    return self.statement_error(cleaned, (frame, message));
                }
                metrics::get().error(ErrorKind::Database);
            }
            _ => {}
        }
        self.statement_frame((frame, message))
    }

    /// pgveil's own raised error, cleaned: it still ends the statement it stands for.
    fn statement_error(&mut self, cleaned: Bytes, original: Message<'_>) -> Action {
        match self.statement_frame(original) {
            Action::Forward | Action::Replace(_) => Action::Replace(cleaned),
            Action::Audited(mut audited) => {
                if let Some(last) = audited.frames.last_mut() {
                    *last = cleaned;
                }
                Action::Audited(audited)
            }
            Action::Drop => Action::Drop,
        }
    }

    /// A frame that belongs to the response of a client message: handed to the method for
    /// the response expected first.
    fn statement_frame(&mut self, message: Message<'_>) -> Action {
        let session = self.session;
        let mut state = lock(&session.state);
        if let BackendMessage::ReadyForQuery(status) = message.1 {
            let ready = self.ready_for_query(message.0, status, &mut state);
            return match self.recording.take() {
                // A response that never completed (the connection state moved on): its record
                // still goes first.
                Some(mut recording) => {
                    recording.hold(ready, message.0);
                    Action::Audited(recording.finish(self.identity(), &message.1))
                }
                None => ready,
            };
        }
        match message.1 {
            BackendMessage::ErrorResponse(_) => {
                state.cursors.error();
                super::context::failed(&mut state);
            }
            BackendMessage::CommandComplete(complete) => {
                let tag = complete.tag().unwrap_or_default();
                if tag.starts_with(b"ROLLBACK") {
                    state.cursors.rolled_back()
                }
                let op = context_op(&state);
                super::context::completed(&mut state, tag, op.as_ref());
            }
            _ => {}
        }
        if self.suppress {
            return Action::Drop;
        }
        match state.expect.front() {
            None => Action::Forward,
            Some(Expect::Refresh(_)) => refresh(&mut state, &message.1),
            Some(Expect::Parse(_)) => parse_response(&mut state, &message.1),
            Some(Expect::Bind) => complete(
                &mut state,
                matches!(message.1, BackendMessage::BindComplete),
            ),
            Some(Expect::Close) => complete(
                &mut state,
                matches!(message.1, BackendMessage::CloseComplete),
            ),
            Some(Expect::Injected(_)) => self.injected_response(&mut state, message),
            Some(Expect::DescribeStatement { .. }) => self.describe_statement(&mut state, message),
            Some(Expect::DescribePortal(..)) => self.describe_portal(&mut state, message),
            Some(Expect::DescribeOwed(_)) => self.describe_owed(&mut state, message),
            Some(Expect::Execute(..)) => self.execute_response(&mut state, message),
            Some(Expect::Query { .. }) => self.query_response(&mut state, message),
            Some(Expect::Sync(_) | Expect::Function(_)) => Action::Forward,
            Some(Expect::Silent) => silent(&mut state, &message.1),
        }
    }

    /// The response to a refused Parse or Bind replaced by a raising statement.
    fn injected_response(&mut self, state: &mut State, (frame, message): Message<'_>) -> Action {
        match message {
            BackendMessage::ParseComplete | BackendMessage::BindComplete => Action::Drop,
            BackendMessage::ErrorResponse(_) => {
                let context = state.context.current().record_context();
                if let Some(Expect::Injected(recording)) = state.expect.front_mut() {
                    if let Some(mut recording) = recording.take() {
                        // In order now: the context the refused message met.
                        recording.context = context;
                        self.recording = Some(*recording);
                    }
                }
                self.record(Action::Forward, (frame, message), true)
            }
            _ => Action::Forward,
        }
    }

    fn execute_response(&mut self, state: &mut State, (frame, message): Message<'_>) -> Action {
        let Some(Expect::Execute(portal, fetch)) = state.expect.front() else {
            return Action::Forward;
        };
        let (portal, fetch) = (portal.clone(), fetch.clone());
        let is_row = matches!(
            message,
            BackendMessage::DataRow(_) | BackendMessage::CopyOutResponse(_)
        );
        if self.recording.is_none() && (is_row || message.ends_statement()) {
            match (portal.as_deref(), fetch.as_deref()) {
                (Some(portal), Some(fetch)) => self.begin_fetch(fetch, portal, state),
                (Some(portal), None) => self.begin_execute(portal, state),
                _ => {}
            }
        }
        let show = match portal.as_deref().and_then(|p| p.prepared.context.as_ref()) {
            Some(ContextOp::Show(setting)) => Some(*setting),
            _ => None,
        };
        let (action, ends) = match message {
            BackendMessage::DataRow(_) if show.is_some() => (show_row(show, state), false),
            BackendMessage::DataRow(row) => {
                if self.rows.is_none() {
                    let rows = match (fetch.as_deref(), portal.as_deref()) {
                        (Some(fetch), Some(portal)) => {
                            Ok(fetch_rows(&fetch.source, &portal.result_formats))
                        }
                        _ => portal_rows(portal.as_deref()),
                    };
                    match rows {
                        Ok(rows) => self.rows = Some(rows),
                        Err(error) => return self.raise(error),
                    }
                }
                (self.data_row(&row, state), false)
            }
            BackendMessage::CopyOutResponse(body) => {
                let prepared = portal.as_deref().map(|p| &p.prepared);
                match prepared.and_then(|p| Some((p.plan()?.copy.as_ref()?, p.injected))) {
                    Some((copy, strip)) if copy.is_protected() => {
                        (self.start_copy_out(body, copy, strip), false)
                    }
                    _ => (Action::Forward, false),
                }
            }
            BackendMessage::CopyData(payload) if self.copy_out.is_some() => {
                (self.copy_data(payload, state), false)
            }
            BackendMessage::CopyInResponse(_) => {
                copy_in_started(state);
                (Action::Forward, false)
            }
            BackendMessage::CommandComplete(_)
            | BackendMessage::PortalSuspended
            | BackendMessage::EmptyQueryResponse => {
                state.expect.pop_front();
                self.rows = None;
                self.copy_out = None;
                state.copy_in_started = false;
                let complete = matches!(message, BackendMessage::CommandComplete(_));
                match show {
                    Some(_) if complete => (show_complete(), true),
                    _ => (Action::Forward, true),
                }
            }
            BackendMessage::ErrorResponse(_) => {
                self.rows = None;
                self.copy_out = None;
                state.copy_in_started = false;
                (Action::Forward, true)
            }
            _ => (Action::Forward, false),
        };
        self.record(action, (frame, message), ends)
    }

    fn query_response(&mut self, state: &mut State, (frame, message): Message<'_>) -> Action {
        let Some(Expect::Query {
            analysis,
            statement,
            audit,
            fetches,
            settings,
            ..
        }) = state.expect.front_mut()
        else {
            return Action::Forward;
        };
        let (analysis, index, audit) = (analysis.clone(), *statement, audit.clone());
        let show = settings.iter().find_map(|(at, op)| match op {
            ContextOp::Show(setting) if *at == index => Some(*setting),
            _ => None,
        });
        let fetch = fetches
            .iter()
            .find(|(at, _)| *at == index)
            .map(|(_, fetch)| fetch.clone());
        if matches!(
            message,
            BackendMessage::CommandComplete(_) | BackendMessage::EmptyQueryResponse
        ) {
            *statement += 1;
        }
        // A FETCH returns the rows of its cursor's statement, and is recorded with its plan.
        let plan = match &fetch {
            Some(fetch) => fetch.source.plan(),
            None => plan_at(analysis.as_ref(), index),
        };
        let recorded = match &fetch {
            Some(fetch) => fetch
                .fingerprint
                .clone()
                .map(|f| (f, fetch.source.injected)),
            None => audit
                .as_ref()
                .and_then(|a| a.statements.get(index).cloned().flatten()),
        };
        let starts = matches!(
            message,
            BackendMessage::RowDescription(_)
                | BackendMessage::DataRow(_)
                | BackendMessage::CopyOutResponse(_)
        ) || message.ends_statement();
        if self.recording.is_none() && starts {
            if let Some((fingerprint, _)) = &recorded {
                let refused = audit.as_ref().is_some_and(|a| a.refused == Some(index));
                self.begin_recording(plan, fingerprint.clone(), refused, None, state);
            }
        }
        let injected = match &fetch {
            Some(fetch) => fetch.source.injected,
            None => recorded.map_or(0, |(_, injected)| injected),
        };
        let (action, ends) = match message {
            BackendMessage::RowDescription(_) => {
                let fields = fields_of(&message);
                if let Some(recording) = self.recording.as_mut() {
                    recording.set_row_types(
                        fields.iter().map(|f| (f.type_oid, f.format)).collect(),
                        injected,
                    );
                }
                let cursor = fetch.as_ref().map(|f| f.source.as_ref());
                let columns = match self.columns(&fields, plan, cursor, state) {
                    // A statement pgveil let pass unanalysed (it names no protected table)
                    // whose rows carry a protected column came by a way pgveil did not see
                    // (EXECUTE of a statement prepared in a function, say): not released.
                    Ok(columns) if analysis.is_none() && fetch.is_none() => {
                        if columns.iter().any(Option::is_some) {
                            return self.raise(unattributed());
                        }
                        columns
                    }
                    Ok(columns) => columns,
                    Err(error) => return self.raise(error),
                };
                let (action, rows) = self.describe_rows(&fields, &columns, &[], injected, state);
                // A simple query's rows follow its RowDescription directly.
                self.rows = rows;
                (action, false)
            }
            BackendMessage::DataRow(_) if show.is_some() => (show_row(show, state), false),
            BackendMessage::DataRow(row) => (self.data_row(&row, state), false),
            BackendMessage::CommandComplete(_) if show.is_some() => {
                self.rows = None;
                (show_complete(), true)
            }
            BackendMessage::CopyOutResponse(body) => match plan.and_then(|p| p.copy.as_ref()) {
                Some(copy) if copy.is_protected() => {
                    (self.start_copy_out(body, copy, injected), false)
                }
                _ => (Action::Forward, false),
            },
            BackendMessage::CopyData(payload) if self.copy_out.is_some() => {
                (self.copy_data(payload, state), false)
            }
            BackendMessage::CommandComplete(_)
            | BackendMessage::EmptyQueryResponse
            | BackendMessage::ErrorResponse(_) => {
                self.rows = None;
                self.copy_out = None;
                (Action::Forward, true)
            }
            _ => (Action::Forward, false),
        };
        self.record(action, (frame, message), ends)
    }

    /// A COPY TO of protected columns begins: the client is told of the columns it gets.
    fn start_copy_out(&mut self, body: &[u8], copy: &sql::CopyPlan, strip: usize) -> Action {
        match CopyOut::start(body, copy, strip) {
            Ok((copy_out, response)) => {
                if let Some(recording) = self.recording.as_mut() {
                    recording.set_row_types(copy_out.row_types(), strip);
                }
                self.copy_out = Some(copy_out);
                Action::Replace(response)
            }
            Err(error) => self.raise(error),
        }
    }

    /// A chunk of a COPY TO: its whole rows, counted for the audit log, then decrypted.
    fn copy_data(&mut self, payload: &[u8], state: &State) -> Action {
        let Some(copy_out) = self.copy_out.as_mut() else {
            return Action::Forward;
        };
        match copy_out.data(payload, &self.session.veil, state, self.recording.as_mut()) {
            Ok(Some(data)) => Action::Replace(data),
            Ok(None) => Action::Drop,
            Err(error) => self.raise(error),
        }
    }

    fn parameter_status(&mut self, name: &[u8], value: &[u8]) {
        let value = || String::from_utf8_lossy(value).into_owned();
        let mut state = lock(&self.session.state);
        match name {
            b"TimeZone" => state.set_time(Some(value()), None),
            b"DateStyle" => state.set_time(None, Some(value())),
            b"standard_conforming_strings" => state.standard_strings = value() == "on",
            b"client_encoding" => state.encoding_readable = !sql::is_refused_encoding(&value()),
            _ => {}
        }
    }

    fn ready_for_query(&mut self, frame: &[u8], status: u8, state: &mut State) -> Action {
        let metrics = metrics::get();
        let raised = std::mem::take(&mut self.suppress);
        self.rows = None;
        self.copy_out = None;
        let mut answered = false;
        // Whatever precedes the message that ends this cycle was skipped by the server after
        // an error.
        while let Some(expect) = state.expect.pop_front() {
            if expect.ends_cycle() {
                match expect {
                    Expect::Sync(sent) | Expect::Query { sent, .. } | Expect::Function(sent) => {
                        metrics.query_seconds.record(sent.elapsed().as_secs_f64());
                        answered = true;
                    }
                    Expect::Refresh(collector) => {
                        self.refreshed.push(collector);
                        super::context::ready(state, status);
                        return self.held_ready.take().map_or(Action::Drop, Action::Replace);
                    }
                    _ => {}
                }
                break;
            }
        }
        state.status = status;
        super::context::ready(state, status);
        if raised {
            // pgveil's own error: the transaction must not keep what it opened.
            state.cursors.error();
        }
        if answered {
            state.cursors.ready(status);
        }
        if state.status == b'I' {
            state.portals.clear();
            state.release_idle();
        }
        let mut ready = None;
        if raised && state.status == b'T' {
            // The error came from pgveil, so the database's transaction is still open; the
            // client must see it aborted, and the database must abort it.
            state.status = b'E';
            state.abort_before_next = true;
            ready = Some(Bytes::from_static(b"Z\0\0\0\x05E"));
        }
        if matches!(state.expect.front(), Some(Expect::Refresh(_))) {
            self.held_ready = Some(ready.unwrap_or_else(|| Bytes::copy_from_slice(frame)));
            return Action::Drop;
        }
        ready.map_or(Action::Forward, Action::Replace)
    }

    /// Installs what pgveil's own queries found.
    pub fn apply_refreshes(&mut self) {
        for collector in self.refreshed.drain(..) {
            let Some(facts) = collector.finish() else {
                continue;
            };
            let session = self.session;
            let mut state = lock(&session.state);
            if let Some(catalog) = facts.catalog {
                let fresh = Database::new(catalog, &facts.views, &session.veil.protection);
                // Read again after each statement on a column being migrated: an unchanged
                // catalog keeps the database's plans.
                if fresh.tables != state.database.tables {
                    state.database = session.veil.install_database(&session.database_name, fresh);
                }
            }
            if let Some(path) = facts.search_path {
                state.search_path = path;
                state.search_path_in_txn = state.status != b'I';
            }
        }
    }

    /// Replaces what the database sends with pgveil's error, and drops the rest of the
    /// response up to ReadyForQuery.
    fn raise(&mut self, error: PgError) -> Action {
        metrics::get().error(if error.code == sqlstate::INSUFFICIENT_PRIVILEGE {
            ErrorKind::Refused
        } else {
            ErrorKind::Database
        });
        self.suppress = true;
        self.rows = None;
        self.copy_out = None;
        let frame = error.encode();
        match self.recording.take() {
            Some(mut recording) => {
                recording.hold(Action::Forward, &frame);
                Action::Audited(recording.finish(self.identity(), &BackendMessage::decode(&frame)))
            }
            None => Action::Replace(frame),
        }
    }

    /// A row: counted and read for subject ids when recorded, then decrypted and masked.
    fn data_row(&mut self, row: &DataRow<'_>, state: &State) -> Action {
        if let Some(recording) = self.recording.as_mut() {
            recording.observe_row(row);
        }
        let Some(rows) = &self.rows else {
            return Action::Forward;
        };
        if rows.is_plain() {
            return Action::Forward;
        }
        if state.policy.require_purpose() && rows.columns.iter().any(Option::is_some) {
            // The backstop behind the gate: the context the database confirmed.
            if let Err(error) = super::context::check_rows_purpose(state) {
                return self.raise(error);
            }
        }
        match decrypt_row(row, rows, &self.session.veil, state) {
            Ok(row) => Action::Replace(row),
            Err(error) => self.raise(error),
        }
    }
}

/// The row of a `SHOW pgveil.name` (sent upstream as a `SELECT` of one text column): the
/// value pgveil's context has now, as the statements before it were confirmed.
fn show_row(show: Option<Setting>, state: &State) -> Action {
    let value = show.map(|setting| super::context::show_value(state, setting));
    let value = value.unwrap_or_default();
    Action::Replace(DataRow::encode(std::iter::once(Some(value.as_bytes()))))
}

/// The CommandComplete of a `SHOW pgveil.name`: `SHOW`, as PostgreSQL tags it.
fn show_complete() -> Action {
    Action::Replace(CommandComplete::encode(super::context::SHOW_TAG))
}

/// The pgveil setting or transaction boundary of the statement whose CommandComplete is
/// arriving: a simple query's current statement, or an Execute's prepared statement.
fn context_op(state: &State) -> Option<super::context::ContextOp> {
    match state.expect.front()? {
        Expect::Query {
            statement,
            settings,
            ..
        } => settings
            .iter()
            .find(|(at, _)| at == statement)
            .map(|(_, op)| op.clone()),
        Expect::Execute(Some(portal), _) => portal.prepared.context.clone(),
        _ => None,
    }
}

/// An Execute started a COPY FROM STDIN: until the copy ends the database ignores Sync, so
/// the Syncs the client sent ahead of its rows get no ReadyForQuery and are not awaited
/// (and the frontend awaits none for a Sync sent before its CopyDone).
fn copy_in_started(state: &mut State) {
    state.copy_in_started = true;
    let mut first = true;
    state.expect.retain(|e| {
        let keep = first || !matches!(e, Expect::Sync(_));
        first = false;
        keep
    });
}

/// pgveil's own query: its answer is collected, never shown.
fn refresh(state: &mut State, message: &BackendMessage<'_>) -> Action {
    if let Some(Expect::Refresh(collector)) = state.expect.front_mut() {
        collector.feed(message);
    }
    Action::Drop
}

/// A Parse's answer; a failed Parse puts back the statement it replaced.
fn parse_response(state: &mut State, message: &BackendMessage<'_>) -> Action {
    match message {
        BackendMessage::ParseComplete => {
            state.expect.pop_front();
        }
        BackendMessage::ErrorResponse(_) => {
            if let Some(Expect::Parse(undo)) = state.expect.front_mut() {
                if let Some(undo) = undo.take() {
                    let (name, previous) = *undo;
                    state.statements.insert(name, previous);
                }
            }
        }
        _ => {}
    }
    Action::Forward
}

/// pgveil's own Close or Parse ahead of a client's Bind: the client never sent it, so its
/// completion is dropped; an error is the batch's and goes to the client.
fn silent(state: &mut State, message: &BackendMessage<'_>) -> Action {
    match message {
        BackendMessage::CloseComplete | BackendMessage::ParseComplete => {
            state.expect.pop_front();
            Action::Drop
        }
        _ => Action::Forward,
    }
}

/// A Bind or Close: done once its completion arrives.
fn complete(state: &mut State, completed: bool) -> Action {
    if completed {
        state.expect.pop_front();
    }
    Action::Forward
}
