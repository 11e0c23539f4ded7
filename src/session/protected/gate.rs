//! The one admission step every statement passes, whether it came as a simple Query or as
//! an extended-protocol Parse: text that is not UTF-8 passes only if it cannot touch
//! protected data; text that cannot name a protected table or a view over one passes
//! unchanged (the fast path); anything else is analysed, checked
//! against the session's policy, and rewritten (literals encrypted, subject columns appended
//! for the audit log) or refused.

use std::ops::Range;
use std::sync::Arc;

use super::context::Settings;
use super::cursors::Fetch;
use super::refusal::cannot_analyse;
use super::state::State;
use super::Session;
use crate::audit::AuditSink;
use crate::config::AuditScope;
use crate::pgerror::{sqlstate, PgError};
use crate::session::recording;
use crate::sql::{self, StatementKind, StatementPlan};
use crate::veil::{Analysis, Veil};

/// Which protocol a text came by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    /// A Query message: any number of statements.
    Simple,
    /// A Parse message: at most one statement.
    Extended,
}

/// What the gate decided for one text.
pub(super) enum Admission {
    /// It goes up as sent. `fingerprint` is set when the audit log records every statement;
    /// `fetches`: its FETCH statements (by index) and the cursors they read.
    Forward {
        fingerprint: Option<String>,
        fetches: Vec<(usize, Arc<Fetch>)>,
        /// Its pgveil setting statements and the token literals they replace.
        settings: Settings,
    },
    /// None of it may run; `fingerprint` is set when the session is audited.
    Refuse {
        error: PgError,
        fingerprint: Option<String>,
    },
    /// It was analysed: each statement goes up rewritten, up to a refused one.
    Analysed(Admitted),
}

/// The statements of an analysed text.
pub(super) struct Admitted {
    pub analysis: Arc<Analysis>,
    /// One per statement up to and including the refused one.
    pub statements: Vec<AdmittedStatement>,
    /// The statement that must raise `error` instead of running; those after it never run.
    pub refused: Option<(usize, PgError)>,
    /// Its FETCH statements (by index) and the cursors they read.
    pub fetches: Vec<(usize, Arc<Fetch>)>,
    /// Its pgveil setting statements and the token literals they replace.
    pub settings: Settings,
}

pub(super) struct AdmittedStatement {
    /// Text replacements: encrypted literals, the analysis' rewrites, appended subject columns.
    pub replacements: Vec<(Range<usize>, String)>,
    /// The audit fingerprint, when the statement is recorded.
    pub fingerprint: Option<String>,
    /// How many subject columns were appended to its output.
    pub injected: usize,
}

impl Admitted {
    /// The statement's plan.
    pub fn plan(&self, index: usize) -> Option<&StatementPlan> {
        super::state::plan_at(Some(&self.analysis), index)
    }

    /// The text with every replacement applied and, from the refused statement on, a
    /// statement raising its error instead; `None` when nothing changes.
    pub fn rewrite(&self, text: &str) -> Option<String> {
        let mut replacements: Vec<(Range<usize>, String)> = self
            .statements
            .iter()
            .flat_map(|s| s.replacements.iter().cloned())
            .chain(self.settings.replacements.iter().cloned())
            .collect();
        if let Some((index, error)) = &self.refused {
            let start = self.plan(*index).map_or(0, |p| p.byte_range.start);
            replacements.push((start..text.len(), super::refusal::raise_sql(error)));
        }
        (!replacements.is_empty()).then(|| sql::rewrite(text, &replacements))
    }
}

/// Admits one query text: what it says, then what its statements do with cursors by name
/// (a simple Query's DECLARE, FETCH and CLOSE take effect here, in order).
pub(super) fn admit(
    raw: &[u8],
    protocol: Protocol,
    session: &Session,
    state: &mut State,
) -> Admission {
    let admission = admit_text(raw, protocol, session, state);
    let admission = super::fetch::admit_cursors(admission, raw, protocol, session, state);
    super::context::admit_settings(admission, raw, protocol, session, state)
}

/// A FETCH of cursor or portal `name`: its rows are the rows of the statement that opened
/// it, so that statement's plan is checked against the session's policy now, and the FETCH
/// is recorded with that plan; a cursor pgveil does not know is refused.
pub(super) fn admit_fetch(
    name: &str,
    fingerprint: impl FnOnce() -> String,
    session: &Session,
    state: &State,
) -> Result<Fetch, PgError> {
    let source = state
        .cursors
        .lookup(name, &state.portals)
        .ok_or_else(|| super::refusal::unknown_cursor(name))?;
    if let Some(plan) = source.plan() {
        check_plan(plan, state, &session.veil)?;
    }
    let recorded = session
        .sink()
        .is_some_and(|s| s.in_scope(source.plan(), &session.veil.protection));
    Ok(Fetch {
        fingerprint: recorded.then(fingerprint),
        source,
    })
}

/// The text's own admission.
fn admit_text(raw: &[u8], protocol: Protocol, session: &Session, state: &State) -> Admission {
    let veil = &session.veil;
    let sink = session.sink();
    let audit_all = sink.is_some_and(|s| s.scope == AuditScope::All);
    let Some(text) = std::str::from_utf8(raw)
        .ok()
        .filter(|_| state.encoding_readable)
    else {
        // Not UTF-8, or in an encoding pgveil cannot read: it cannot be analysed, so it may
        // pass only if it cannot touch protected data.
        let lossy = String::from_utf8_lossy(raw);
        return if state.database.may_touch_protected(&lossy, &veil.protection) {
            Admission::Refuse {
                error: cannot_analyse(),
                fingerprint: sink.map(|_| sql::fingerprint(&lossy)),
            }
        } else {
            Admission::Forward {
                fingerprint: audit_all.then(|| sql::fingerprint(&lossy)),
                fetches: Vec::new(),
                settings: Settings::default(),
            }
        };
    };
    let fingerprint = || state.database.fingerprint(text);
    let refused = sql::encoding_refusal(text).map(|r| PgError::error(r.sqlstate, r.message));
    if let Some(error) = refused {
        return Admission::Refuse {
            error,
            fingerprint: sink.map(|_| fingerprint()),
        };
    }
    if !state.database.may_touch_protected(text, &veil.protection) {
        return Admission::Forward {
            fingerprint: audit_all.then(fingerprint),
            fetches: Vec::new(),
            settings: Settings::default(),
        };
    }
    let analysis = analyze(text, state, veil);
    let plans = match analysis.as_ref() {
        Ok(plans) if plans.is_empty() => {
            return Admission::Forward {
                fingerprint: None,
                fetches: Vec::new(),
                settings: Settings::default(),
            }
        }
        Ok(plans) if protocol == Protocol::Simple || plans.len() == 1 => plans,
        _ => {
            return Admission::Refuse {
                error: cannot_analyse(),
                fingerprint: sink.map(|_| fingerprint()),
            }
        }
    };
    let copies = plans
        .iter()
        .any(|p| p.copy.as_ref().is_some_and(sql::CopyPlan::is_protected));
    if copies && plans.len() > 1 {
        // Its rows are rewritten as they stream, which pgveil does only for a Query that
        // holds nothing else (a Parse holds one statement anyway).
        return Admission::Refuse {
            error: PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "pgveil: COPY of protected columns must be the only statement of its query",
            ),
            fingerprint: sink.map(|_| fingerprint()),
        };
    }
    let (statements, refused) = admit_statements(text, plans, protocol, session, state);
    Admission::Analysed(Admitted {
        analysis: analysis.clone(),
        statements,
        refused,
        fetches: Vec::new(),
        settings: Settings::default(),
    })
}

/// Each analysed statement's replacements and audit needs, up to the first refused one.
fn admit_statements(
    text: &str,
    plans: &[StatementPlan],
    protocol: Protocol,
    session: &Session,
    state: &State,
) -> (Vec<AdmittedStatement>, Option<(usize, PgError)>) {
    let veil = &session.veil;
    let sink = session.sink();
    let mut statements = Vec::with_capacity(plans.len());
    for (index, plan) in plans.iter().enumerate() {
        let recorded = sink.filter(|s| s.in_scope(Some(plan), &veil.protection));
        // A Parse holds one statement, recorded by its whole text; a Query's statements
        // are recorded one by one.
        let fingerprint = || match protocol {
            Protocol::Simple => state.database.fingerprint(&text[plan.byte_range.clone()]),
            Protocol::Extended => state.database.fingerprint(text),
        };
        match statement_replacements(plan, state, veil, recorded.map(Arc::as_ref)) {
            Ok(mut replacements) => {
                let injections = match recorded {
                    Some(_) => recording::injections(plan),
                    None => Vec::new(),
                };
                let injected = injections.len();
                replacements.extend(injections);
                statements.push(AdmittedStatement {
                    replacements,
                    fingerprint: recorded.map(|_| fingerprint()),
                    injected,
                });
            }
            Err(error) => {
                // A refusal is recorded whenever the session is audited.
                statements.push(AdmittedStatement {
                    replacements: Vec::new(),
                    fingerprint: sink.map(|_| fingerprint()),
                    injected: 0,
                });
                return (statements, Some((index, error)));
            }
        }
    }
    (statements, None)
}

/// The session's analysis of `text`. The SQL lexer reads '…' strings as
/// standard_conforming_strings = on does; with it off a backslash escapes, so text with a
/// backslash would be split differently by the database: it cannot be analysed.
fn analyze(text: &str, state: &State, veil: &Veil) -> Arc<Analysis> {
    if !state.standard_strings && text.contains('\\') {
        return Arc::new(Err(sql::AnalyzeError::Unsupported(
            "backslashes with standard_conforming_strings off".into(),
        )));
    }
    state
        .database
        .analyze(text, &veil.protection, &state.search_path)
}

/// The replacements one statement needs, or the error it must raise instead.
fn statement_replacements(
    plan: &StatementPlan,
    state: &State,
    veil: &Veil,
    recorded: Option<&AuditSink>,
) -> Result<Vec<(Range<usize>, String)>, PgError> {
    check_plan(plan, state, veil)?;
    if let Some(sink) = recorded {
        // Rows wait for the log and are withheld when it fails; a write cannot be taken
        // back, nor can the rows of a COPY, which stream before their record is written:
        // while the log is failing, both are refused before they run.
        if !sink.is_healthy() && (plan.kind != StatementKind::Select || plan.copy.is_some()) {
            return Err(PgError::error(
                sqlstate::IO_ERROR,
                "pgveil: the audit log cannot be written, so statements on protected tables are refused",
            ));
        }
    }
    let mut out = super::matching::replacements(plan, state, veil)?;
    out.extend(super::migrating::shadow_literals(plan, veil, state)?);
    Ok(out)
}

/// Refusals of the analysis and of the session's policy.
pub(super) fn check_plan(plan: &StatementPlan, state: &State, veil: &Veil) -> Result<(), PgError> {
    if let Some(refusal) = &plan.refusal {
        return Err(PgError::error(refusal.sqlstate, refusal.message.clone()));
    }
    if state.policy.require_purpose() && !plan.reads.is_empty() {
        super::context::check_gate_purpose(state)?;
    }
    for &column in plan.reads.iter().chain(plan.conditions.iter()) {
        if state.access.is_denied(column) {
            let name = veil
                .protection
                .column(column)
                .map(|c| c.qualified_name())
                .unwrap_or_default();
            let use_kind = if plan.reads.contains(&column) {
                "read"
            } else {
                "use in a condition"
            };
            return Err(PgError::error(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("pgveil: permission denied to {use_kind} protected column {name}"),
            ));
        }
    }
    Ok(())
}
