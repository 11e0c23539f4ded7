//! How pgveil's errors arrive in order: a refused statement is replaced by one that makes the
//! database raise pgveil's error, so it arrives in protocol order and aborts the transaction
//! exactly as PostgreSQL's own errors do; an error pgveil raised on the way back is followed
//! by an abort of the database's transaction before the client's next message.

use bytes::Bytes;

use std::sync::Arc;

use super::state::{Expect, Origin, Prepared, State};
use super::Session;
use crate::net::frontend::{encode_query, Bind, Execute, Parse};
use crate::pgerror::{sqlstate, PgError};
use crate::session::introspect::{Collector, Wanted};
use crate::session::recording::Recording;
use crate::session::relay::Action;
use crate::sql::StatementPlan;

pub(super) fn cannot_analyse() -> PgError {
    PgError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        "pgveil: statement mentions a protected table but cannot be analysed, so it was refused",
    )
}

/// A FETCH of a cursor pgveil did not see opened (inside a function, by dynamic SQL): it
/// cannot tell which columns its rows carry, so they are not released.
pub(super) fn unknown_cursor(name: &str) -> PgError {
    let name: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
    PgError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!("pgveil: cursor \"{name}\" was not opened through pgveil, so the columns of its rows are unknown and FETCH is refused"),
    )
}

/// A statement that makes the database raise `error`, so it arrives in protocol order and
/// aborts the transaction as PostgreSQL's own errors do.
pub(super) fn raise_sql(error: &PgError) -> String {
    let message: String = error
        .message
        .chars()
        .filter(|c| *c != '$' && *c != '\\' && *c != '\0')
        .collect::<String>()
        .replace('\'', "''");
    let code: String = error
        .code
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("DO $pgveil$BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = '{message}'; END$pgveil$")
}

/// A simple Query that raises `error`.
pub(super) fn raising_query(error: &PgError) -> Bytes {
    encode_query(raise_sql(error).as_bytes())
}

/// Parse/Bind/Execute of a raising statement, standing in for a refused message; everything
/// the client sends up to its Sync is then dropped, as the database would skip it.
pub(super) fn injected_error(
    error: &PgError,
    state: &mut State,
    recording: Option<Box<Recording>>,
) -> Action {
    let parse = Parse {
        name: Bytes::new(),
        query: Bytes::from(raise_sql(error)),
        param_types: Vec::new(),
    };
    let bind = Bind {
        portal: Bytes::new(),
        statement: Bytes::new(),
        param_formats: Vec::new(),
        params: Vec::new(),
        result_formats: Vec::new(),
    };
    let execute = Execute {
        portal: Bytes::new(),
        max_rows: 0,
    };
    state.expect.push_back(Expect::Injected(recording));
    state.discarding = true;
    Action::Replace(join(&[&parse.encode(), &bind.encode(), &execute.encode()]))
}

/// Refuses a Parse: the database raises `error` in its place, and the name is remembered as
/// refused so later Binds to it are refused too instead of carrying parameters upstream
/// (until the catalog changes, when `origin` is given: see [`super::renew`]).
/// `fingerprint` is set when the session is audited.
pub(super) fn refuse_parse(
    session: &Session,
    state: &mut State,
    (name, origin): (Bytes, Option<Box<Origin>>),
    plan: Option<&StatementPlan>,
    fingerprint: Option<String>,
    error: PgError,
) -> Action {
    let recording = fingerprint.map(|fingerprint| {
        Box::new(super::audit::recording(
            session,
            state,
            plan,
            fingerprint,
            true,
        ))
    });
    let refused = Prepared {
        refused: Some(error.clone()),
        origin,
        ..Prepared::unprotected()
    };
    state.statements.insert(name, Arc::new(refused));
    injected_error(&error, state, recording)
}

/// Where the answer to a pending transaction abort goes in the queue, when one is pending.
pub(super) fn take_pending_abort(state: &mut State) -> Option<usize> {
    if !std::mem::take(&mut state.abort_before_next) {
        return None;
    }
    Some(state.expect.len())
}

/// Sends a raising statement ahead of the client's message, so the database's transaction is
/// aborted as pgveil already told the client; its error and ReadyForQuery are swallowed.
pub(super) fn abort_first(frame: &[u8], action: Action, at: usize, state: &mut State) -> Action {
    let error = PgError::error(
        sqlstate::IN_FAILED_SQL_TRANSACTION,
        "pgveil: aborting the transaction after an error pgveil raised",
    );
    let abort = raising_query(&error);
    let swallow = Expect::Refresh(Collector::new(Wanted {
        catalog: false,
        search_path: false,
        roles: false,
    }));
    state.expect.insert(at, swallow);
    match action {
        Action::Forward => Action::Replace(join(&[&abort, frame])),
        Action::Replace(bytes) => Action::Replace(join(&[&abort, &bytes])),
        Action::Drop => Action::Replace(abort),
        // Never produced for client messages.
        audited @ Action::Audited(_) => audited,
    }
}

pub(super) fn join(parts: &[&[u8]]) -> Bytes {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.extend_from_slice(part);
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_statement_quotes_its_message() {
        let sql = raise_sql(&PgError::error("0A000", "it's $x \\ bad"));
        assert_eq!(sql, "DO $pgveil$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = 'it''s x  bad'; END$pgveil$");
    }
}
