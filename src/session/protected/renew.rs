//! Statements prepared again after a migration changed their columns.
//!
//! A statement planned while a column was plaintext or migrating compares and writes the
//! plaintext (and its shadow); after the swap the column is `bytea` and the shadow gone, so
//! the database refuses it (42703, 42804, 42883, or 0A000 "cached plan must not change
//! result type"). A driver that keeps such a statement by name would fail on every
//! execution from then on. So when a Bind names a statement whose plan was made against a
//! catalog the session no longer has ([`Prepared::stale`]), pgveil first prepares it again
//! under the same name from the client's own Parse, analysed against the catalog as it is
//! now: a Close (when the database holds the old one) and the Parse, whose completions are
//! pgveil's own ([`Expect::Silent`]), then the Bind of the renewed statement. The client
//! sees only its Bind's answer. A Parse refused now is refused as any Parse is (the Bind
//! gets its error); one the database refuses ends the batch with its error, as a failing
//! Bind would. A statement planned before the catalog change and executed before the
//! session has read the new catalog still fails once; from then on it is renewed.

use bytes::Bytes;

use super::frontend::parse_message;
use super::refusal::join;
use super::state::{Expect, Prepared, State};
use super::Session;
use crate::net::frontend::{Parse, Target};
use crate::session::relay::Action;

/// What goes up ahead of a Bind of `name`.
pub(super) enum Renewal {
    /// The statement is current: nothing.
    Current,
    /// Close and Parse (and pgveil's Describe) of the renewed statement.
    Ahead(Bytes),
    /// Analysed again, the statement is refused: this replaces the Bind (and the rest of
    /// the batch is dropped, as after any refusal).
    Refused(Action),
}

/// Prepares statement `name` again when its plan is stale.
pub(super) fn renew(name: &[u8], session: &Session, state: &mut State) -> Renewal {
    let Some(old) = state.statements.get(name).cloned() else {
        return Renewal::Current;
    };
    let Some(origin) = old.stale(state) else {
        return Renewal::Current;
    };
    let parse = Parse {
        name: Bytes::copy_from_slice(name),
        query: origin.query.clone(),
        param_types: origin.param_types.clone(),
    };
    let as_sent = parse.encode();
    let at = state.expect.len();
    let action = parse_message(parse, session, state);
    let close = held_upstream(&old, name).then(|| {
        state.expect.insert(at, Expect::Silent);
        Target::close_statement(name)
    });
    let at = at + usize::from(close.is_some());
    if state.discarding {
        // The old statement goes too: the name now stands for the refusal.
        return Renewal::Refused(match close {
            Some(close) => after(close, action, &[]),
            None => action,
        });
    }
    // The Parse's own expectation (with its undo) is pgveil's now: the client sent none.
    if let Some(expect) = state.expect.get_mut(at) {
        *expect = Expect::Silent;
    }
    let parse_frames = match action {
        Action::Replace(frames) => frames,
        _ => as_sent,
    };
    crate::metrics::get().statements_renewed.increment(1);
    Renewal::Ahead(match close {
        Some(close) => join(&[&close, &parse_frames]),
        None => parse_frames,
    })
}

/// Whether the database holds a statement under `name` that must be closed before it is
/// parsed again: a refused Parse left nothing there (pgveil raised its error through the
/// unnamed statement), and the unnamed statement is replaced by any Parse.
fn held_upstream(old: &Prepared, name: &[u8]) -> bool {
    !name.is_empty() && old.refused.is_none()
}

/// The Bind's own action, after what went up ahead of it.
pub(super) fn after(ahead: Bytes, bind: Action, frame: &[u8]) -> Action {
    match bind {
        Action::Forward => Action::Replace(join(&[&ahead, frame])),
        Action::Replace(bytes) => Action::Replace(join(&[&ahead, &bytes])),
        Action::Drop => Action::Replace(ahead),
        // Never produced for client messages.
        audited @ Action::Audited(_) => audited,
    }
}
