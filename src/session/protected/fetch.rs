//! The gate's step for statements that open, read or close cursors by name. A simple
//! Query's statements take effect here in order, so a FETCH sees the DECLARE before it in
//! the same text; an extended-protocol statement takes effect when a portal of it is
//! executed (it may be bound and executed many times, and the cursor it names may be closed
//! and declared again meanwhile). Both protocols admit a FETCH with the same step,
//! [`super::gate::admit_fetch`].

use std::sync::Arc;

use super::cursors::{CursorSource, Fetch};
use super::gate::{admit_fetch, Admission, AdmittedStatement, Protocol};
use super::refusal::cannot_analyse;
use super::state::{Prepared, PreparedCursor, State};
use super::Session;
use crate::pgerror::PgError;
use crate::sql::{self, CursorOp, CursorStatement};

/// The cursor statements of an admitted text.
pub(super) fn admit_cursors(
    admission: Admission,
    raw: &[u8],
    protocol: Protocol,
    session: &Session,
    state: &mut State,
) -> Admission {
    if matches!(admission, Admission::Refuse { .. }) {
        return admission;
    }
    let Some(text) = std::str::from_utf8(raw)
        .ok()
        .filter(|_| state.encoding_readable)
    else {
        // Text pgveil cannot read cannot say which cursor it fetches.
        let lossy = String::from_utf8_lossy(raw);
        return if sql::mentions_cursor(&lossy) {
            refuse_whole(cannot_analyse(), &lossy, session, state)
        } else {
            admission
        };
    };
    if !sql::mentions_cursor(text) {
        return admission;
    }
    let Some(statements) = sql::cursor_statements(text) else {
        return refuse_whole(cannot_analyse(), text, session, state);
    };
    if let Admission::Analysed(admitted) = &admission {
        let analysed = admitted.analysis.as_ref().as_ref().map_or(0, Vec::len);
        if analysed != statements.len() {
            // pgveil would attribute a FETCH to the wrong statement: fail closed.
            return refuse_whole(cannot_analyse(), text, session, state);
        }
    }
    match protocol {
        Protocol::Simple => apply(admission, text, &statements, session, state),
        Protocol::Extended => match statements.first().map(|s| &s.op) {
            Some(CursorOp::Unreadable) => refuse_whole(cannot_analyse(), text, session, state),
            _ => admission,
        },
    }
}

/// The cursors and portals before a text's statements took effect.
type Saved = (super::cursors::Cursors, super::state::Portals);

/// A whole text refused.
fn refuse_whole(error: PgError, text: &str, session: &Session, state: &State) -> Admission {
    Admission::Refuse {
        error,
        fingerprint: session.sink().map(|_| state.database.fingerprint(text)),
    }
}

/// A simple Query's cursor statements, in order, up to the first one that does not run.
fn apply(
    admission: Admission,
    text: &str,
    statements: &[CursorStatement],
    session: &Session,
    state: &mut State,
) -> Admission {
    let runs = match &admission {
        Admission::Analysed(a) => a.refused.as_ref().map_or(a.statements.len(), |(i, _)| *i),
        _ => statements.len(),
    };
    // When a FETCH is refused and the text is refused whole, nothing before it runs either.
    let saved = (state.cursors.clone(), state.portals.clone());
    let mut fetches = Vec::new();
    for (index, statement) in statements.iter().enumerate().take(runs) {
        let own_text = &text[statement.byte_range.clone()];
        let refusal = match &statement.op {
            CursorOp::Declare { name, holdable } => {
                let source = match &admission {
                    Admission::Analysed(a) => Arc::new(CursorSource {
                        analysis: Some(a.analysis.clone()),
                        index,
                        injected: a.statements.get(index).map_or(0, |s| s.injected),
                        types: None,
                    }),
                    _ => CursorSource::plain(),
                };
                state.cursors.declare(name.clone(), *holdable, source);
                None
            }
            CursorOp::Fetch { name } => {
                let fingerprint = || state.database.fingerprint(own_text);
                match admit_fetch(name, fingerprint, session, state) {
                    Ok(fetch) => {
                        fetches.push((index, Arc::new(fetch)));
                        None
                    }
                    Err(error) => Some(error),
                }
            }
            CursorOp::Unreadable => Some(cannot_analyse()),
            CursorOp::Close { name } => {
                state.cursors.close(name, &mut state.portals);
                None
            }
            CursorOp::CloseAll => {
                state.cursors.close_all(&mut state.portals);
                None
            }
            CursorOp::Move | CursorOp::Other => None,
        };
        if let Some(error) = refusal {
            let done = (saved, fetches);
            return refuse_at(admission, index, own_text, error, done, session, state);
        }
    }
    let mut admission = admission;
    match &mut admission {
        Admission::Forward { fetches: slot, .. } => *slot = fetches,
        Admission::Analysed(admitted) => admitted.fetches = fetches,
        Admission::Refuse { .. } => {}
    }
    admission
}

/// Statement `index` must raise `error`: an analysed text runs up to it, a text on the fast
/// path (which pgveil cannot cut) is refused whole and its earlier cursor statements undone.
fn refuse_at(
    admission: Admission,
    index: usize,
    statement: &str,
    error: PgError,
    (saved, fetches): (Saved, Vec<(usize, Arc<Fetch>)>),
    session: &Session,
    state: &mut State,
) -> Admission {
    match admission {
        Admission::Analysed(mut admitted) => {
            admitted.statements.truncate(index);
            admitted.statements.push(AdmittedStatement {
                replacements: Vec::new(),
                fingerprint: session
                    .sink()
                    .map(|_| state.database.fingerprint(statement)),
                injected: 0,
            });
            admitted.refused = Some((index, error));
            admitted.fetches = fetches;
            Admission::Analysed(admitted)
        }
        _ => {
            (state.cursors, state.portals) = saved;
            Admission::Refuse {
                error,
                fingerprint: session
                    .sink()
                    .map(|_| state.database.fingerprint(statement)),
            }
        }
    }
}

/// What a prepared statement does to cursors, recognised once at Parse.
pub(super) fn prepared_cursor(raw: &[u8], state: &State) -> Option<PreparedCursor> {
    let text = std::str::from_utf8(raw).ok()?;
    if !sql::mentions_cursor(text) {
        return None;
    }
    let statement = sql::cursor_statements(text)?.into_iter().next()?;
    match statement.op {
        CursorOp::Move | CursorOp::Other => None,
        op => Some(PreparedCursor {
            op,
            fingerprint: state.database.fingerprint(text),
        }),
    }
}

/// An Execute of a portal of `prepared`: its cursor statement takes effect; a FETCH is
/// admitted (or refused) with the cursor as it is now.
pub(super) fn execute_cursor(
    prepared: &Prepared,
    session: &Session,
    state: &mut State,
) -> Result<Option<Arc<Fetch>>, PgError> {
    let Some(cursor) = &prepared.cursor else {
        return Ok(None);
    };
    match &cursor.op {
        CursorOp::Declare { name, holdable } => {
            let source = CursorSource::of_prepared(prepared);
            state.cursors.declare(name.clone(), *holdable, source);
        }
        CursorOp::Fetch { name } => {
            let fetch = admit_fetch(name, || cursor.fingerprint.clone(), session, state)?;
            return Ok(Some(Arc::new(fetch)));
        }
        CursorOp::Close { name } => state.cursors.close(name, &mut state.portals),
        CursorOp::CloseAll => state.cursors.close_all(&mut state.portals),
        CursorOp::Unreadable => return Err(cannot_analyse()),
        CursorOp::Move | CursorOp::Other => {}
    }
    Ok(None)
}

/// An Execute of a portal pgveil did not bind: a cursor opened by SQL `DECLARE` or by a
/// function, which the database lets the extended protocol run like a FETCH. It passes only
/// when pgveil knows the cursor returns nothing protected; the rows of one with a plan are
/// read by FETCH, whose rows pgveil can lay out.
pub(super) fn execute_unbound(
    name: &[u8],
    session: &Session,
    state: &State,
) -> Result<(), PgError> {
    let name = String::from_utf8_lossy(name);
    let fetch = admit_fetch(&name, String::new, session, state)?;
    match fetch.source.plan() {
        None => Ok(()),
        Some(_) => Err(PgError::error(
            crate::pgerror::sqlstate::FEATURE_NOT_SUPPORTED,
            "pgveil: a cursor over a protected table is read with FETCH, not by executing its portal",
        )),
    }
}
