//! The session context (DESIGN.md "Session context"): who is reading and why, followed as
//! PostgreSQL follows a setting, transactions included.
//!
//! Design. pgveil keeps the authoritative context itself; the database keeps a copy (the
//! placeholder settings `current_setting` reads), never what `SHOW` answers. Each
//! `SET`/`RESET`/`set_config` of a `pgveil.*` setting is recognised by
//! [`crate::sql::setting_statements`], checked here (value, token, break-glass role) and
//! forwarded upstream as itself, so the client gets the database's own answer
//! (CommandComplete `SET`, or the `set_config` row) in protocol order, in either protocol
//! and in pipelines; a token's literal is replaced by [`TOKEN_PLACEHOLDER`] first, so the
//! token never leaves pgveil. `SHOW pgveil.name` is answered from the authoritative copy
//! (below): it goes upstream as a `SELECT` of the same response shape, so it always runs and
//! keeps its place in the response order, and the backend puts pgveil's value and the `SHOW`
//! tag in its answer. A refused setting statement is replaced by a statement raising
//! pgveil's error (as every refusal is), so it aborts the transaction as the database's own
//! errors do and the connection stays usable.
//!
//! Two copies of the [`ContextModel`] are kept:
//! - `State::context`, the authoritative one, changes only as the database confirms: a
//!   setting statement takes effect at its CommandComplete, transactions end at `COMMIT`
//!   (or the `ROLLBACK` tag the database answers a failed transaction's `COMMIT` with),
//!   `ROLLBACK`, or at a ReadyForQuery that says idle (an implicit transaction: committed
//!   unless an error came). Audit records, break-glass masking and the backstop purpose check
//!   on rows read it.
//! - `State::context_sent`, a projection: every statement already sent, assumed to succeed.
//!   The gate's decisions (`require_purpose`, savepoints) read it, as they are taken before
//!   the statements ahead have been answered. It is reset to the authoritative one whenever
//!   nothing is in flight; where it was too optimistic (a `SET` that then failed), rows are
//!   still withheld by the authoritative check.
//!
//! Savepoints: a `pgveil.*` setting changed after a `SAVEPOINT` in the same transaction is
//! refused (0A000), so `ROLLBACK TO SAVEPOINT` never has a setting of pgveil's to undo.

use std::ops::Range;

use super::gate::{Admission, Protocol};
use super::state::State;
use super::Session;
use crate::context::{check_value, ContextError, SessionContext, Setting, TokenVerifier};
use crate::pgerror::{sqlstate, PgError};
use crate::sql::{self, SettingOp};

/// What replaces a token's literal in the text sent upstream.
pub const TOKEN_PLACEHOLDER: &str = "'(signed context token)'";

/// What all sessions share for the context: the token key. (`[policy]`'s rules,
/// `require_purpose` and `break_glass_roles`, live in the session's [`crate::policy::Policy`],
/// which a reload replaces.)
#[derive(Debug, Default)]
pub struct ContextRules {
    pub verifier: Option<TokenVerifier>,
}

/// A checked setting statement or a transaction boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ContextOp {
    /// `value: None` resets the setting (`RESET`, `= DEFAULT`).
    Set {
        setting: Setting,
        local: bool,
        value: Option<String>,
    },
    /// A verified token: all three settings at once.
    Token {
        local: bool,
        context: SessionContext,
        expires_at: u64,
    },
    ResetAll,
    Begin,
    Commit {
        chain: bool,
    },
    Rollback {
        chain: bool,
    },
    Savepoint,
    RollbackTo,
    Release,
    Prepare,
    /// `SHOW pgveil.name`: sent upstream as [`show_sql`], answered with [`show_value`].
    Show(Setting),
}

impl ContextOp {
    fn changes_setting(&self) -> bool {
        matches!(self, Self::Set { .. } | Self::Token { .. } | Self::ResetAll)
    }
}

/// The setting statements of an admitted text: by statement index, and the replacements of
/// token literals.
#[derive(Default)]
pub(super) struct Settings {
    pub ops: Vec<(usize, ContextOp)>,
    pub replacements: Vec<(Range<usize>, String)>,
}

#[derive(Debug, Clone)]
struct Txn {
    /// The session value when the transaction began (restored by a rollback).
    at_begin: SessionContext,
    explicit: bool,
    savepoint: bool,
    failed: bool,
}

/// A session's context as PostgreSQL would keep a setting: the value in effect and the
/// value that survives the transaction's commit.
#[derive(Debug, Clone, Default)]
pub(super) struct ContextModel {
    session: SessionContext,
    current: SessionContext,
    txn: Option<Txn>,
}

impl ContextModel {
    pub fn current(&self) -> &SessionContext {
        &self.current
    }

    pub fn in_savepoint(&self) -> bool {
        self.txn.as_ref().is_some_and(|t| t.savepoint)
    }

    fn begin(&mut self, explicit: bool) {
        match &mut self.txn {
            Some(txn) => txn.explicit |= explicit,
            None => {
                self.txn = Some(Txn {
                    at_begin: self.session.clone(),
                    explicit,
                    savepoint: false,
                    failed: false,
                })
            }
        }
    }

    fn commit(&mut self) {
        self.txn = None;
        self.current = self.session.clone();
    }

    fn rollback(&mut self) {
        if let Some(txn) = self.txn.take() {
            self.session = txn.at_begin;
        }
        self.current = self.session.clone();
    }

    /// `op` succeeded; `rolled_back`: the database answered it with a `ROLLBACK` tag (a
    /// `COMMIT` of a failed transaction).
    pub fn apply(&mut self, op: &ContextOp, rolled_back: bool) {
        if op.changes_setting() {
            self.begin(false);
        }
        match op {
            ContextOp::Set {
                setting,
                local,
                value,
            } => {
                set_field(&mut self.current, *setting, value.clone());
                if !local {
                    set_field(&mut self.session, *setting, value.clone());
                }
            }
            ContextOp::Token { local, context, .. } => {
                self.current = context.clone();
                if !local {
                    self.session = context.clone();
                }
            }
            ContextOp::ResetAll => {
                self.current = SessionContext::default();
                self.session = SessionContext::default();
            }
            ContextOp::Begin => self.begin(true),
            ContextOp::Commit { chain } | ContextOp::Rollback { chain } => {
                if rolled_back || matches!(op, ContextOp::Rollback { .. }) {
                    self.rollback();
                } else {
                    self.commit();
                }
                if *chain {
                    self.begin(true);
                }
            }
            ContextOp::Prepare => {
                if rolled_back {
                    self.rollback();
                } else {
                    self.commit();
                }
            }
            ContextOp::Savepoint => {
                if let Some(txn) = &mut self.txn {
                    txn.savepoint = true;
                }
            }
            ContextOp::RollbackTo => {
                if let Some(txn) = &mut self.txn {
                    txn.failed = false;
                }
            }
            ContextOp::Release | ContextOp::Show(_) => {}
        }
    }

    /// An error ended a statement: its transaction will be rolled back.
    pub fn error(&mut self) {
        if let Some(txn) = &mut self.txn {
            txn.failed = true;
        }
    }

    /// A ReadyForQuery with transaction `status`: idle ends whatever transaction was open
    /// (committed unless it failed); in a block, the block is explicit.
    pub fn ready(&mut self, status: u8) {
        match status {
            b'I' => {
                if self.txn.as_ref().is_some_and(|t| t.failed) {
                    self.rollback();
                } else if self.txn.is_some() {
                    self.commit();
                }
            }
            _ => {
                self.begin(true);
                if status == b'E' {
                    self.error();
                }
            }
        }
    }

    /// The projection's end of a Query or Sync: an implicit transaction commits (assumed).
    pub fn end_of_cycle(&mut self) {
        if self.txn.as_ref().is_some_and(|t| !t.explicit) {
            self.commit();
        }
    }
}

fn set_field(context: &mut SessionContext, setting: Setting, value: Option<String>) {
    match setting {
        Setting::EndUser => context.end_user = value,
        Setting::Purpose => context.purpose = value,
        Setting::BreakGlass => context.break_glass = value,
        Setting::Context => *context = SessionContext::default(),
    }
}

fn pg_error(error: &ContextError) -> PgError {
    PgError::error(error.sqlstate(), format!("pgveil: {error}"))
}

/// What a checked statement takes effect with, and the replacement of a token's literal.
type Resolved = (Option<ContextOp>, Option<(Range<usize>, String)>);

/// Checks one recognised statement: the op it takes effect with (`None`: nothing to
/// follow), the replacement of a token's literal, or the error it must raise instead.
fn resolve(op: SettingOp, rules: &ContextRules, state: &State) -> Result<Resolved, PgError> {
    let resolved = match op {
        SettingOp::Other => return Ok((None, None)),
        SettingOp::Show(setting) => ContextOp::Show(setting),
        SettingOp::Unknown(error) => return Err(pg_error(&error)),
        SettingOp::Unprovable(why) => {
            return Err(PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("pgveil: {why}"),
            ))
        }
        SettingOp::Set {
            setting: Setting::Context,
            local,
            value: Some(token),
            literal,
        } => {
            let Some(verifier) = &rules.verifier else {
                return Err(pg_error(&ContextError::BadValue {
                    setting: Setting::Context.name(),
                    why: "cannot be verified: no [context] token_public_key_file is configured",
                }));
            };
            let claims = verifier.verify(&token).map_err(|e| pg_error(&e))?;
            let expires_at = claims.expires_at;
            let context = SessionContext::from_token(claims);
            check_break_glass(&context, state)?;
            let replacement = literal.map(|range| (range, TOKEN_PLACEHOLDER.to_string()));
            return Ok((
                Some(ContextOp::Token {
                    local,
                    context,
                    expires_at,
                }),
                replacement,
            ));
        }
        SettingOp::Set {
            setting,
            local,
            value,
            ..
        } => {
            if let Some(value) = &value {
                SessionContext::check_plain_set(setting, rules.verifier.is_some())
                    .map_err(|e| pg_error(&e))?;
                check_value(setting, value).map_err(|e| pg_error(&e))?;
                if setting == Setting::BreakGlass {
                    let asks = SessionContext {
                        break_glass: Some(value.clone()),
                        ..SessionContext::default()
                    };
                    check_break_glass(&asks, state)?;
                }
            }
            ContextOp::Set {
                setting,
                local,
                value,
            }
        }
        SettingOp::ResetAll => ContextOp::ResetAll,
        SettingOp::Begin => ContextOp::Begin,
        SettingOp::Commit { chain } => ContextOp::Commit { chain },
        SettingOp::Rollback { chain } => ContextOp::Rollback { chain },
        SettingOp::Savepoint => ContextOp::Savepoint,
        SettingOp::RollbackTo => ContextOp::RollbackTo,
        SettingOp::Release => ContextOp::Release,
        SettingOp::Prepare => ContextOp::Prepare,
    };
    Ok((Some(resolved), None))
}

/// Break-glass asked for by a session whose roles are not in the live policy's
/// `break_glass_roles` is refused.
fn check_break_glass(context: &SessionContext, state: &State) -> Result<(), PgError> {
    context
        .check_break_glass(&state.roles, state.policy.break_glass_roles())
        .map_err(|e| pg_error(&e))
}

/// The savepoint rule, checked against the projection before a setting changes.
fn check_savepoint(op: &ContextOp, state: &State) -> Result<(), PgError> {
    if op.changes_setting() && state.context_sent.in_savepoint() {
        return Err(PgError::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "pgveil: pgveil settings cannot be changed after a SAVEPOINT in the same transaction; set them before the first SAVEPOINT",
        ));
    }
    Ok(())
}

/// The gate's step for setting statements. A simple Query's statements take effect on the
/// projection here, in order, up to the first that does not run; a Parse's statement is
/// checked now and takes effect when a portal of it is executed ([`execute`]).
pub(super) fn admit_settings(
    admission: Admission,
    raw: &[u8],
    protocol: Protocol,
    session: &Session,
    state: &mut State,
) -> Admission {
    if matches!(admission, Admission::Refuse { .. }) {
        return admission;
    }
    let readable = std::str::from_utf8(raw)
        .ok()
        .filter(|_| state.encoding_readable);
    let Some(text) = readable else {
        // Text pgveil cannot read cannot be split as the database splits it: refused when it
        // may name a pgveil setting; a transaction statement in it is still followed by the
        // database's answers (tags, ReadyForQuery).
        let lossy = String::from_utf8_lossy(raw);
        if names_pgveil(&lossy) {
            return refuse_whole(super::refusal::cannot_analyse(), &lossy, session, state);
        }
        if protocol == Protocol::Simple {
            state.context_sent.end_of_cycle();
        }
        return admission;
    };
    if !sql::mentions_setting(text) {
        if protocol == Protocol::Simple {
            state.context_sent.end_of_cycle();
        }
        return admission;
    }
    let Some(statements) = sql::setting_statements(text, state.standard_strings) else {
        // The database rejects text it cannot lex too.
        return refuse_whole(super::refusal::cannot_analyse(), text, session, state);
    };
    if let Admission::Analysed(admitted) = &admission {
        let analysed = admitted.analysis.as_ref().as_ref().map_or(0, Vec::len);
        let follows = statements.iter().any(|s| s.op != SettingOp::Other);
        if follows && analysed != statements.len() {
            // pgveil would attribute a setting to the wrong statement: fail closed.
            return refuse_whole(super::refusal::cannot_analyse(), text, session, state);
        }
    }
    let runs = match &admission {
        Admission::Analysed(a) => a.refused.as_ref().map_or(a.statements.len(), |(i, _)| *i),
        _ => statements.len(),
    };
    let saved = state.context_sent.clone();
    let mut settings = Settings::default();
    let take = match protocol {
        Protocol::Simple => runs,
        Protocol::Extended => runs.min(1),
    };
    for (index, statement) in statements.into_iter().enumerate().take(take) {
        let own_text = &text[statement.byte_range.clone()];
        let checked = resolve(statement.op, &session.rules, state).and_then(|resolved| {
            if let Some(op) = &resolved.0 {
                check_savepoint(op, state)?;
            }
            Ok(resolved)
        });
        match checked {
            Ok((op, replacement)) => {
                if let Some(ContextOp::Show(setting)) = &op {
                    settings
                        .replacements
                        .push((statement.byte_range.clone(), show_sql(*setting)));
                }
                if let Some(op) = op {
                    if protocol == Protocol::Simple {
                        state.context_sent.apply(&op, false);
                    }
                    settings.ops.push((index, op));
                }
                settings.replacements.extend(replacement);
            }
            Err(error) => {
                state.context_sent = saved;
                return refuse_at(admission, index, own_text, error, settings, session, state);
            }
        }
    }
    if protocol == Protocol::Simple {
        state.context_sent.end_of_cycle();
    }
    with_settings(admission, settings)
}

/// Whether unreadable text may name a pgveil setting (ASCII case ignored).
fn names_pgveil(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("pgveil") || lower.contains("set_config")
}

fn with_settings(mut admission: Admission, settings: Settings) -> Admission {
    match &mut admission {
        Admission::Forward { settings: slot, .. } => *slot = settings,
        Admission::Analysed(admitted) => admitted.settings = settings,
        Admission::Refuse { .. } => {}
    }
    admission
}

fn refuse_whole(error: PgError, text: &str, session: &Session, state: &State) -> Admission {
    Admission::Refuse {
        error,
        fingerprint: session.sink().map(|_| state.database.fingerprint(text)),
    }
}

/// Statement `index` must raise `error`: an analysed text runs up to it, a text on the fast
/// path (which pgveil cannot cut) is refused whole.
fn refuse_at(
    admission: Admission,
    index: usize,
    statement: &str,
    error: PgError,
    mut settings: Settings,
    session: &Session,
    state: &mut State,
) -> Admission {
    match admission {
        Admission::Analysed(mut admitted) if index > 0 => {
            admitted.statements.truncate(index);
            admitted.statements.push(super::gate::AdmittedStatement {
                replacements: Vec::new(),
                fingerprint: session
                    .sink()
                    .map(|_| state.database.fingerprint(statement)),
                injected: 0,
            });
            admitted.refused = Some((index, error));
            admitted.fetches.retain(|(at, _)| *at < index);
            // What runs before the refused statement takes effect on the projection.
            for (_, op) in &settings.ops {
                state.context_sent.apply(op, false);
            }
            settings.ops.retain(|(at, _)| *at < index);
            admitted.settings = settings;
            Admission::Analysed(admitted)
        }
        _ => refuse_whole(error, statement, session, state),
    }
}

/// An Execute of a portal whose statement sets a pgveil setting: a token is checked again
/// for expiry, then the projection follows it.
pub(super) fn execute(op: &ContextOp, state: &mut State) -> Result<(), PgError> {
    if let ContextOp::Token { expires_at, .. } = op {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if *expires_at <= now {
            return Err(pg_error(&ContextError::TokenExpired));
        }
    }
    check_savepoint(op, state)?;
    state.context_sent.apply(op, false);
    Ok(())
}

/// The database completed a statement (`tag`) that carried `op`: the authoritative context
/// follows; break-glass raises or lowers the session's access.
pub(super) fn completed(state: &mut State, tag: &[u8], op: Option<&ContextOp>) {
    let rolled_back = tag.starts_with(b"ROLLBACK");
    let op = match op {
        Some(op) => op.clone(),
        // A transaction statement pgveil did not see as one still ends or opens it.
        None if tag == b"COMMIT" => ContextOp::Commit { chain: false },
        None if tag == b"BEGIN" => ContextOp::Begin,
        None if tag == b"SAVEPOINT" => ContextOp::Savepoint,
        None => return,
    };
    state.context.apply(&op, rolled_back);
    state.follow_break_glass();
}

/// The database answered with an error.
pub(super) fn failed(state: &mut State) {
    state.context.error();
}

/// A ReadyForQuery: the authoritative context follows the transaction status; when nothing
/// more is in flight the projection is the authoritative context again.
pub(super) fn ready(state: &mut State, status: u8) {
    state.context.ready(status);
    if state.expect.is_empty() {
        state.context_sent = state.context.clone();
    }
    state.follow_break_glass();
}

/// What goes upstream for `SHOW pgveil.name`: a statement that always runs (the database
/// may have no copy of the setting) and is answered as `SHOW` is, one text column named after
/// the setting and one row; the backend puts [`show_value`] in that row and [`SHOW_TAG`] in
/// its CommandComplete.
fn show_sql(setting: Setting) -> String {
    format!("SELECT NULL::text AS \"{}\"", setting.name())
}

/// The CommandComplete tag PostgreSQL gives `SHOW`.
pub(super) const SHOW_TAG: &[u8] = b"SHOW";

/// What `SHOW pgveil.name` answers: pgveil's confirmed context as of that statement (the
/// statements before it in the same response have been confirmed by now). A setting not set
/// shows an empty string, as PostgreSQL shows a placeholder setting that was reset;
/// `pgveil.context` always shows an empty string (a token is never shown; the three settings
/// show what it set).
pub(super) fn show_value(state: &State, setting: Setting) -> String {
    let current = state.context.current();
    let value = match setting {
        Setting::EndUser => &current.end_user,
        Setting::Purpose => &current.purpose,
        Setting::BreakGlass => &current.break_glass,
        Setting::Context => &None,
    };
    value.clone().unwrap_or_default()
}

/// `require_purpose` (the caller checked it is on), for rows about to carry protected
/// columns: read from the confirmed context (the backstop behind the gate's check).
pub(super) fn check_rows_purpose(state: &State) -> Result<(), PgError> {
    if state.context.current().purpose.is_none() {
        return Err(pg_error(&ContextError::PurposeRequired));
    }
    Ok(())
}

/// `require_purpose` at the gate (the caller checked it is on), from the projection.
pub(super) fn check_gate_purpose(state: &State) -> Result<(), PgError> {
    if state.context_sent.current().purpose.is_none() {
        return Err(pg_error(&ContextError::PurposeRequired));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(setting: Setting, local: bool, value: &str) -> ContextOp {
        ContextOp::Set {
            setting,
            local,
            value: Some(value.to_string()),
        }
    }

    fn user(model: &ContextModel) -> Option<&str> {
        model.current().end_user.as_deref()
    }

    #[test]
    fn follows_postgres_setting_semantics() {
        let mut m = ContextModel::default();
        // Autocommit SET: an implicit transaction, committed at ReadyForQuery.
        m.apply(&set(Setting::EndUser, false, "a"), false);
        m.ready(b'I');
        assert_eq!(user(&m), Some("a"));
        // SET LOCAL lasts until the transaction ends.
        m.apply(&ContextOp::Begin, false);
        m.apply(&set(Setting::EndUser, true, "b"), false);
        assert_eq!(user(&m), Some("b"));
        m.apply(&ContextOp::Commit { chain: false }, false);
        assert_eq!(user(&m), Some("a"));
        // A SET in a rolled-back transaction is undone.
        m.apply(&ContextOp::Begin, false);
        m.apply(&set(Setting::EndUser, false, "c"), false);
        m.apply(&ContextOp::Rollback { chain: false }, false);
        assert_eq!(user(&m), Some("a"));
        // COMMIT of a failed transaction is a rollback (tag ROLLBACK).
        m.apply(&ContextOp::Begin, false);
        m.apply(&set(Setting::EndUser, false, "d"), false);
        m.error();
        m.apply(&ContextOp::Commit { chain: false }, true);
        assert_eq!(user(&m), Some("a"));
        // An implicit transaction that failed is rolled back at ReadyForQuery.
        m.apply(&set(Setting::EndUser, false, "e"), false);
        m.error();
        m.ready(b'I');
        assert_eq!(user(&m), Some("a"));
        // A session SET committed in a block survives, and RESET ALL clears.
        m.ready(b'T');
        m.apply(&set(Setting::Purpose, false, "treatment"), false);
        m.apply(&set(Setting::EndUser, true, "f"), false);
        m.ready(b'I');
        assert_eq!(user(&m), Some("a"));
        assert_eq!(m.current().purpose.as_deref(), Some("treatment"));
        m.apply(&ContextOp::ResetAll, false);
        m.ready(b'I');
        assert!(m.current().is_empty());
        // Savepoints are remembered until the transaction ends.
        m.apply(&ContextOp::Begin, false);
        m.apply(&ContextOp::Savepoint, false);
        assert!(m.in_savepoint());
        m.apply(&ContextOp::RollbackTo, false);
        assert!(m.in_savepoint());
        m.apply(&ContextOp::Commit { chain: true }, false);
        assert!(!m.in_savepoint());
        m.ready(b'T');
        m.apply(&ContextOp::Rollback { chain: false }, false);
        m.ready(b'I');
        assert!(m.txn.is_none());
    }

    #[test]
    fn a_token_sets_all_three() {
        let mut m = ContextModel::default();
        let context = SessionContext {
            end_user: Some("u".into()),
            purpose: Some("p".into()),
            break_glass: None,
        };
        m.apply(&set(Setting::BreakGlass, false, "x"), false);
        m.ready(b'I');
        m.apply(&ContextOp::Begin, false);
        m.apply(
            &ContextOp::Token {
                local: true,
                context: context.clone(),
                expires_at: 0,
            },
            false,
        );
        assert_eq!(m.current(), &context);
        m.apply(&ContextOp::Commit { chain: false }, false);
        assert_eq!(m.current().break_glass.as_deref(), Some("x"));
        m.apply(
            &ContextOp::Set {
                setting: Setting::Context,
                local: false,
                value: None,
            },
            false,
        );
        m.ready(b'I');
        assert!(m.current().is_empty());
    }
}
