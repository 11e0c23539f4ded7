//! The relay for sessions that may touch protected columns.
//!
//! The client half rewrites what goes up: literals and parameters bound for protected
//! columns are encrypted, parameters bound for them are declared `bytea`, and statements
//! that must not run are replaced by one that makes the database raise pgveil's error, so
//! the error arrives in protocol order and aborts the transaction exactly as PostgreSQL's own
//! errors do. The server half keeps an ordered queue of what each client message will be
//! answered with, so it knows which statement or portal a RowDescription, ParameterDescription
//! or DataRow belongs to, and rewrites those: logical types shown, values decrypted, masked
//! and re-encoded in the format the client asked for.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use super::catalog::{Collector, Wanted};
use super::recording::{self, AuditSink, Identity, Recording};
use super::relay::{drain_frames, new_buffer, Action, Outbox};
use super::{
    drive, is_fatal, without_channel_binding, ServerWait, SessionConfig, SessionError,
    FRONTEND_TAGS,
};
use crate::config::{Access, AuditScope};
use crate::crypto::value::{self, SessionTime, WireFormat};
use crate::metrics::{self, ErrorKind};
use crate::net::frame::read_cstr;
use crate::net::messages::{self as msg, Bind, Field, Parse};
use crate::net::stream::{ReadHalf, WriteHalf};
use crate::pgerror::{sqlstate, PgError};
use crate::policy::mask;
use crate::sql::{self, ColumnRef, StatementPlan};
use crate::veil::{Analysis, DbCatalog, Policy, Veil};
use arc_swap::ArcSwap;

/// A statement prepared with Parse.
struct Prepared {
    /// The analysis, when the statement mentions a protected table.
    analysis: Option<Arc<Analysis>>,
    /// Parameter position (0-based) → the protected column it is bound for.
    param_columns: Vec<Option<ColumnRef>>,
    /// The types the client declared (0: unspecified).
    client_param_types: Vec<u32>,
    /// Result columns, from the statement's RowDescription.
    row: OnceLock<RowInfo>,
    /// For the audit log, when the statement is in scope.
    fingerprint: Option<String>,
    /// Subject columns pgveil appended to the statement's output.
    injected: usize,
    /// Set when pgveil refused the Parse: a later Bind to it gets the same error instead of
    /// carrying its parameters upstream.
    refused: Option<PgError>,
}

/// A statement's result columns: the protected column behind each (if any) and its type.
#[derive(Clone, Default)]
struct RowInfo {
    columns: Vec<Option<ColumnRef>>,
    types: Vec<u32>,
}

impl Prepared {
    fn plan(&self) -> Option<&StatementPlan> {
        self.analysis
            .as_deref()
            .and_then(|a| a.as_ref().ok())
            .and_then(|plans| plans.first())
    }

    fn plain() -> Arc<Self> {
        Arc::new(Self::unprotected())
    }

    fn unprotected() -> Self {
        Self {
            analysis: None,
            param_columns: Vec::new(),
            client_param_types: Vec::new(),
            row: OnceLock::new(),
            fingerprint: None,
            injected: 0,
            refused: None,
        }
    }

    fn refused(error: &PgError) -> Arc<Self> {
        Arc::new(Self {
            refused: Some(error.clone()),
            ..Self::unprotected()
        })
    }
}

struct Portal {
    prepared: Arc<Prepared>,
    /// As the client sent them in Bind (also for statements pgveil did not analyse, once a
    /// Describe showed they return protected columns).
    result_formats: Vec<i16>,
    /// What a Describe of this portal showed the client (columns and their formats, as the
    /// database reported them for this portal): its Execute is decoded the same way.
    described: OnceLock<RowPlan>,
}

impl Portal {
    fn new(prepared: Arc<Prepared>, result_formats: Vec<i16>) -> Arc<Self> {
        Arc::new(Self {
            prepared,
            result_formats,
            described: OnceLock::new(),
        })
    }
}

/// What the database will answer a client message with, in order.
enum Expect {
    /// With the statement a named Parse replaced, to put back if the Parse fails.
    Parse(Option<Box<(Bytes, Arc<Prepared>)>>),
    Bind,
    Close,
    Sync(Instant),
    Query {
        analysis: Option<Arc<Analysis>>,
        sent: Instant,
        statement: usize,
        audit: Option<Arc<QueryAudit>>,
    },
    Function(Instant),
    DescribeStatement {
        prepared: Arc<Prepared>,
        internal: bool,
    },
    DescribePortal(Option<Arc<Portal>>),
    Execute(Option<Arc<Portal>>),
    /// A refused Parse or Bind, replaced by Parse/Bind/Execute of a raising statement:
    /// its ParseComplete and BindComplete are dropped, its error forwarded.
    Injected(Option<Box<Recording>>),
    /// pgveil's own query; nothing of it reaches the client.
    Refresh(Collector),
}

impl Expect {
    /// Ends with ReadyForQuery.
    fn ends_cycle(&self) -> bool {
        matches!(
            self,
            Expect::Sync(_) | Expect::Query { .. } | Expect::Function(_) | Expect::Refresh(_)
        )
    }
}

/// What the audit log needs of a simple query: per statement, its fingerprint and how many
/// subject columns were appended to it (`None`: not recorded).
struct QueryAudit {
    statements: Vec<Option<(String, usize)>>,
    /// The statement replaced by pgveil's raised error, if any.
    refused: Option<usize>,
}

impl QueryAudit {
    /// A query recorded as one statement (not analysed, or refused whole).
    fn single(fingerprint: String, refused: bool) -> Arc<Self> {
        Arc::new(Self {
            statements: vec![Some((fingerprint, 0))],
            refused: refused.then_some(0),
        })
    }
}

struct State {
    expect: VecDeque<Expect>,
    statements: HashMap<Bytes, Arc<Prepared>>,
    portals: HashMap<Bytes, Arc<Portal>>,
    time: SessionTime,
    timezone: String,
    datestyle: String,
    standard_strings: bool,
    search_path: Vec<String>,
    catalog: Arc<DbCatalog>,
    access: Vec<Access>,
    /// The login's roles (memberships read at session start; `SET ROLE` changes nothing).
    roles: Vec<String>,
    /// The policy `access` was computed from.
    policy: Arc<Policy>,
    status: u8,
    client_terminated: bool,
    /// A DDL or search_path change went up in the current extended batch.
    refresh_at_sync: Option<Wanted>,
    /// pgveil raised an error inside a transaction block that the database does not know
    /// about: abort that transaction before the client's next message reaches it.
    abort_before_next: bool,
    /// The search_path changed inside the current transaction block, where ROLLBACK, ROLLBACK
    /// TO SAVEPOINT or the end of a SET LOCAL undo it: re-read it after every statement until
    /// the block ends.
    search_path_in_txn: bool,
    /// After pgveil refused an extended-protocol message, everything up to Sync is dropped
    /// here, as the database would skip it: none of it (parameters included) goes upstream.
    discarding: bool,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Everything the two halves share.
pub struct Shared {
    state: Mutex<State>,
    veil: Arc<Veil>,
    /// The live policy; a reload swaps it and the session picks it up at its next message.
    policy: Arc<ArcSwap<Policy>>,
    database: String,
    audit: Option<(Arc<AuditSink>, Identity)>,
}

/// What pgveil learned about a session as it started.
pub struct SessionFacts {
    pub database: String,
    pub catalog: Arc<DbCatalog>,
    pub search_path: Vec<String>,
    /// The login and every role it belongs to.
    pub roles: Vec<String>,
    pub timezone: String,
    pub datestyle: String,
}

/// What all sessions share: columns and keys, the live policy, the audit log.
#[derive(Clone)]
pub struct Engine {
    pub veil: Arc<Veil>,
    pub policy: Arc<ArcSwap<Policy>>,
    pub audit: Option<Arc<AuditSink>>,
}

impl Shared {
    pub fn new(engine: Engine, facts: SessionFacts, identity: Option<Identity>) -> Self {
        let Engine {
            veil,
            policy,
            audit,
        } = engine;
        let current = policy.load_full();
        let access = current.access_for(&veil.protection, &facts.roles);
        let time =
            SessionTime::from_timezone_or_utc(&facts.timezone).with_datestyle(&facts.datestyle);
        Self {
            state: Mutex::new(State {
                expect: VecDeque::new(),
                statements: HashMap::new(),
                portals: HashMap::new(),
                time,
                timezone: facts.timezone,
                datestyle: facts.datestyle,
                standard_strings: true,
                search_path: facts.search_path,
                catalog: facts.catalog,
                access,
                roles: facts.roles,
                policy: current,
                status: b'I',
                client_terminated: false,
                refresh_at_sync: None,
                abort_before_next: false,
                search_path_in_txn: false,
                discarding: false,
            }),
            veil,
            policy,
            database: facts.database,
            audit: audit.zip(identity),
        }
    }

    fn sink(&self) -> Option<&Arc<AuditSink>> {
        self.audit.as_ref().map(|(sink, _)| sink)
    }
}

/// Relays an established session.
pub async fn relay(
    mut client: (ReadHalf, WriteHalf),
    mut server: (ReadHalf, WriteHalf),
    leftover: bytes::BytesMut,
    shared: Shared,
    config: SessionConfig,
    shutdown: watch::Receiver<bool>,
) {
    let (fatal_tx, fatal_rx) = mpsc::channel::<PgError>(1);
    let upstream_bound = client_to_server(&mut client.0, &mut server.1, leftover, &shared, &config);
    let client_bound = server_to_client(
        &mut server.0,
        &mut client.1,
        &shared,
        fatal_rx,
        shutdown,
        &config,
    );
    drive(upstream_bound, client_bound, fatal_tx, config.client_addr).await;
}

// ---------------------------------------------------------------------------------------
// Client → server

async fn client_to_server(
    reader: &mut ReadHalf,
    writer: &mut WriteHalf,
    leftover: bytes::BytesMut,
    shared: &Shared,
    config: &SessionConfig,
) -> Result<(), SessionError> {
    let metrics = metrics::get();
    let mut buf = new_buffer();
    buf.extend_from_slice(&leftover);
    let mut out = Outbox::default();
    let mut first = !buf.is_empty();
    loop {
        let n = if first {
            first = false;
            buf.len()
        } else {
            reader.read_buf(&mut buf).await?
        };
        if n == 0 {
            return Ok(());
        }
        metrics.bytes_from_client.increment(n as u64);
        let mut terminated = false;
        drain_frames(&mut buf, config.max_message_size, &mut out, |frame| {
            if !FRONTEND_TAGS.contains(&frame[0]) {
                return Err(SessionError::UnknownMessage(frame[0]));
            }
            if frame[0] == b'X' {
                terminated = true;
                lock(&shared.state).client_terminated = true;
                return Ok(Action::Forward);
            }
            let abort_at = take_pending_abort(shared);
            let action = frontend_message(frame, shared)?;
            Ok(match abort_at {
                Some(at) => abort_first(frame, action, at, shared),
                None => action,
            })
        })?;
        out.flush_to(writer.as_mut()).await?;
        if terminated {
            return Ok(());
        }
    }
}

/// The refresh that follows a statement while a search_path set in the transaction block may
/// be undone by it.
fn search_path_follow(state: &State) -> Option<Wanted> {
    state.search_path_in_txn.then_some(Wanted {
        catalog: false,
        search_path: true,
        roles: false,
    })
}

/// Where the answer to a pending transaction abort goes in the queue, when one is pending.
fn take_pending_abort(shared: &Shared) -> Option<usize> {
    let mut state = lock(&shared.state);
    if !std::mem::take(&mut state.abort_before_next) {
        return None;
    }
    Some(state.expect.len())
}

/// Sends a raising statement ahead of the client's message, so the database's transaction is
/// aborted as pgveil already told the client; its error and ReadyForQuery are swallowed.
fn abort_first(frame: &[u8], action: Action, at: usize, shared: &Shared) -> Action {
    let error = PgError::error(
        "25P02",
        "pgveil: aborting the transaction after an error pgveil raised",
    );
    let abort = msg::encode_query(raise_sql(&error).as_bytes());
    let swallow = Expect::Refresh(Collector::new(Wanted {
        catalog: false,
        search_path: false,
        roles: false,
    }));
    lock(&shared.state).expect.insert(at, swallow);
    match action {
        Action::Forward => Action::Replace(join(&[&abort, frame])),
        Action::Replace(bytes) => Action::Replace(join(&[&abort, &bytes])),
        Action::Drop => Action::Replace(abort),
        // Never produced for client messages.
        audited @ Action::Audited(_) => audited,
    }
}

/// Decides what goes upstream for one client message, and what to expect back.
fn frontend_message(frame: &[u8], shared: &Shared) -> Result<Action, SessionError> {
    follow_policy(shared);
    {
        let mut state = lock(&shared.state);
        if state.discarding {
            if frame[0] != b'S' {
                return Ok(Action::Drop);
            }
            state.discarding = false;
        }
    }
    let body = &frame[5..];
    let metrics = metrics::get();
    match frame[0] {
        b'Q' => {
            metrics.queries.increment(1);
            let text = msg::query_text(body).map_err(|e| SessionError::Malformed(e.0))?;
            Ok(simple_query(frame, text, shared))
        }
        b'P' => {
            let parse = Parse::decode(body).map_err(|e| SessionError::Malformed(e.0))?;
            Ok(parse_message(parse, shared))
        }
        b'B' => bind_message(body, shared),
        b'D' => {
            let (kind, name) =
                msg::target(body, "Describe").map_err(|e| SessionError::Malformed(e.0))?;
            let mut state = lock(&shared.state);
            let expect = if kind == b'S' {
                let prepared = state
                    .statements
                    .get(&name)
                    .cloned()
                    .unwrap_or_else(Prepared::plain);
                Expect::DescribeStatement {
                    prepared,
                    internal: false,
                }
            } else {
                Expect::DescribePortal(state.portals.get(&name).cloned())
            };
            state.expect.push_back(expect);
            Ok(Action::Forward)
        }
        b'E' => {
            let portal = msg::execute_portal(body).map_err(|e| SessionError::Malformed(e.0))?;
            let mut state = lock(&shared.state);
            let portal = state.portals.get(&portal).cloned();
            state.expect.push_back(Expect::Execute(portal));
            Ok(Action::Forward)
        }
        b'C' => {
            let (kind, name) =
                msg::target(body, "Close").map_err(|e| SessionError::Malformed(e.0))?;
            let mut state = lock(&shared.state);
            if kind == b'S' {
                state.statements.remove(&name);
            } else {
                state.portals.remove(&name);
            }
            state.expect.push_back(Expect::Close);
            Ok(Action::Forward)
        }
        b'S' => {
            metrics.queries.increment(1);
            let mut state = lock(&shared.state);
            state.expect.push_back(Expect::Sync(Instant::now()));
            let follow_path = search_path_follow(&state);
            match state.refresh_at_sync.take().or(follow_path) {
                Some(wanted) => {
                    state
                        .expect
                        .push_back(Expect::Refresh(Collector::new(wanted)));
                    Ok(Action::Replace(join(&[frame, &wanted.query()])))
                }
                None => Ok(Action::Forward),
            }
        }
        b'F' => {
            metrics.queries.increment(1);
            lock(&shared.state)
                .expect
                .push_back(Expect::Function(Instant::now()));
            Ok(Action::Forward)
        }
        // Flush, COPY data, password/SASL messages: nothing comes back for them by itself.
        _ => Ok(Action::Forward),
    }
}

/// Applies a reloaded policy to this session from its next statement on.
fn follow_policy(shared: &Shared) {
    let current = shared.policy.load();
    let mut state = lock(&shared.state);
    if !Arc::ptr_eq(&current, &state.policy) {
        state.access = current.access_for(&shared.veil.protection, &state.roles);
        state.policy = Arc::clone(&current);
    }
}

fn join(parts: &[&[u8]]) -> Bytes {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.extend_from_slice(part);
    }
    Bytes::from(out)
}

/// What pgveil's own bookkeeping must refresh after a statement went through.
fn refresh_needed(text: &str) -> Option<Wanted> {
    let catalog = ["create", "alter", "drop"]
        .iter()
        .any(|k| contains_keyword(text, k));
    // RESET ALL and DISCARD ALL put the session default back; a role change moves "$user".
    let search_path = ["search_path", "reset", "discard", "authorization"]
        .iter()
        .any(|k| contains_keyword(text, k))
        || (contains_keyword(text, "set") && contains_keyword(text, "role"));
    (catalog || search_path).then_some(Wanted {
        catalog,
        search_path: search_path || catalog,
        roles: false,
    })
}

/// Whether `word` occurs in `text` (ASCII case ignored) as a whole word; no allocation, as
/// it runs on every statement.
fn contains_keyword(text: &str, word: &str) -> bool {
    let (text, word) = (text.as_bytes(), word.as_bytes());
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    text.windows(word.len()).enumerate().any(|(at, window)| {
        window.eq_ignore_ascii_case(word)
            && (at == 0 || !is_ident(text[at - 1]))
            && text.get(at + word.len()).is_none_or(|&b| !is_ident(b))
    })
}

fn simple_query(frame: &[u8], raw_text: &[u8], shared: &Shared) -> Action {
    let veil = &shared.veil;
    let sent = Instant::now();
    let Ok(text) = std::str::from_utf8(raw_text) else {
        // Not UTF-8: it cannot be analysed, so it may pass only if it cannot touch protected data.
        let lossy = String::from_utf8_lossy(raw_text);
        let mut state = lock(&shared.state);
        let touches = sql::may_touch_protected(&lossy, &veil.protection);
        let audit = shared
            .sink()
            .filter(|s| touches || s.scope == AuditScope::All)
            .map(|_| QueryAudit::single(sql::fingerprint(&lossy), touches));
        state.expect.push_back(Expect::Query {
            analysis: None,
            sent,
            statement: 0,
            audit,
        });
        if touches {
            let raised = raise_sql(&cannot_analyse());
            return Action::Replace(msg::encode_query(raised.as_bytes()));
        }
        return Action::Forward;
    };
    let mut state = lock(&shared.state);
    if let Some(view) = state.catalog.protected_view_in(text) {
        let error = through_view(view);
        let audit = shared
            .sink()
            .map(|_| QueryAudit::single(state.catalog.fingerprint(text), true));
        state.expect.push_back(Expect::Query {
            analysis: None,
            sent,
            statement: 0,
            audit,
        });
        return Action::Replace(msg::encode_query(raise_sql(&error).as_bytes()));
    }
    let refresh = refresh_needed(text).or(search_path_follow(&state));
    let action = if !sql::may_touch_protected(text, &veil.protection) {
        let audit = shared
            .sink()
            .filter(|s| s.scope == AuditScope::All)
            .map(|_| QueryAudit::single(state.catalog.fingerprint(text), false));
        state.expect.push_back(Expect::Query {
            analysis: None,
            sent,
            statement: 0,
            audit,
        });
        Action::Forward
    } else {
        let analysis = analyze(text, &state, veil);
        let (rewritten, audit) = rewrite_simple(text, &analysis, &state, shared);
        state.expect.push_back(Expect::Query {
            analysis: Some(analysis),
            sent,
            statement: 0,
            audit,
        });
        match rewritten {
            Some(new_text) => Action::Replace(msg::encode_query(new_text.as_bytes())),
            None => Action::Forward,
        }
    };
    match refresh {
        Some(wanted) => {
            state
                .expect
                .push_back(Expect::Refresh(Collector::new(wanted)));
            let first: Bytes = match &action {
                Action::Replace(bytes) => bytes.clone(),
                _ => Bytes::copy_from_slice(frame),
            };
            Action::Replace(join(&[&first, &wanted.query()]))
        }
        None => action,
    }
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
        .catalog
        .analyze(text, &veil.protection, &state.search_path)
}

/// pgveil cannot see through a view to the protected columns under it, so it cannot
/// encrypt what the statement compares with them or decrypt what it returns.
fn through_view(view: &str) -> PgError {
    PgError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!("pgveil: {view} is a view over a protected table; query the table itself"),
    )
}

fn cannot_analyse() -> PgError {
    PgError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        "pgveil: statement mentions a protected table but cannot be analysed, so it was refused",
    )
}

/// The rewritten query text (`None` when it goes up unchanged), and what the audit log
/// needs of it.
fn rewrite_simple(
    text: &str,
    analysis: &Analysis,
    state: &State,
    shared: &Shared,
) -> (Option<String>, Option<Arc<QueryAudit>>) {
    let veil = &shared.veil;
    let sink = shared.sink();
    let plans = match analysis {
        Ok(plans) => plans,
        Err(_) => {
            let audit = sink.map(|_| QueryAudit::single(state.catalog.fingerprint(text), true));
            return (Some(raise_sql(&cannot_analyse())), audit);
        }
    };
    let mut replacements = Vec::new();
    let mut audit = sink.map(|_| QueryAudit {
        statements: Vec::new(),
        refused: None,
    });
    for (index, plan) in plans.iter().enumerate() {
        let recorded = sink.filter(|s| recording::in_scope(s, Some(plan), &veil.protection));
        let fingerprint = || state.catalog.fingerprint(&text[plan.byte_range.clone()]);
        match statement_replacements(plan, state, veil, recorded.map(|s| s.as_ref())) {
            Ok(mut r) => {
                let injections = if recorded.is_some() {
                    recording::injections(plan)
                } else {
                    Vec::new()
                };
                let injected = injections.len();
                r.extend(injections);
                replacements.append(&mut r);
                if let Some(audit) = audit.as_mut() {
                    audit
                        .statements
                        .push(recorded.map(|_| (fingerprint(), injected)));
                }
            }
            Err(error) => {
                // The statements before run; this one raises; the rest never run.
                replacements.push((plan.byte_range.start..text.len(), raise_sql(&error)));
                if let Some(audit) = audit.as_mut() {
                    audit.statements.push(recorded.map(|_| (fingerprint(), 0)));
                    audit.refused = Some(index);
                }
                break;
            }
        }
    }
    let audit = audit
        .filter(|a| a.statements.iter().any(Option::is_some))
        .map(Arc::new);
    if replacements.is_empty() {
        return (None, audit);
    }
    (Some(sql::rewrite(text, &replacements)), audit)
}

/// The replacements one statement needs, or the error it must raise instead.
fn statement_replacements(
    plan: &StatementPlan,
    state: &State,
    veil: &Veil,
    recorded: Option<&AuditSink>,
) -> Result<Vec<(std::ops::Range<usize>, String)>, PgError> {
    check_plan(plan, state, veil)?;
    if let Some(sink) = recorded {
        // Rows wait for the log and are withheld when it fails; a write cannot be taken
        // back, so while the log is failing, writes in scope are refused before they run.
        if !sink.is_healthy() && plan.kind != sql::StatementKind::Select {
            return Err(PgError::error(
                sqlstate::IO_ERROR,
                "pgveil: the audit log cannot be written, so statements on protected tables are refused",
            ));
        }
    }
    let mut out = plan.rewrites.clone();
    for literal in &plan.literals {
        let Some(value) = &literal.value else {
            continue;
        };
        let ciphertext = encrypt_text(veil, literal.column, value.as_bytes(), &state.time)?;
        out.push((
            literal.byte_range.clone(),
            bytea_literal(&ciphertext, state.standard_strings),
        ));
    }
    Ok(out)
}

/// Refusals of the analysis and of the session's policy.
fn check_plan(plan: &StatementPlan, state: &State, veil: &Veil) -> Result<(), PgError> {
    if let Some(refusal) = &plan.refusal {
        return Err(PgError::error(refusal.sqlstate, refusal.message.clone()));
    }
    for &column in plan.reads.iter().chain(plan.conditions.iter()) {
        if state.access.get(column.0) == Some(&Access::Deny) {
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

fn encrypt_text(
    veil: &Veil,
    column: ColumnRef,
    text: &[u8],
    time: &SessionTime,
) -> Result<Vec<u8>, PgError> {
    let (cipher, spec) = cipher_and_spec(veil, column)?;
    let canonical = value::canonical_from_text(spec.logical_type, text, time)
        .map_err(|e| value_error(&e, &spec.qualified_name()))?;
    Ok(cipher.encrypt(&canonical))
}

fn cipher_and_spec(
    veil: &Veil,
    column: ColumnRef,
) -> Result<
    (
        &crate::crypto::envelope::ColumnCipher,
        &crate::schema::ProtectedColumn,
    ),
    PgError,
> {
    match (veil.cipher(column), veil.protection.column(column)) {
        (Some(cipher), Some(spec)) => Ok((cipher, spec)),
        _ => Err(PgError::error(
            sqlstate::INTERNAL_ERROR,
            "pgveil: protected column without a key",
        )),
    }
}

fn value_error(e: &value::ValueError, column: &str) -> PgError {
    // The message names the type and the column, never the value.
    PgError::error(
        e.sqlstate(),
        format!("{} (for protected column {column})", e.message()),
    )
}

fn bytea_literal(ciphertext: &[u8], standard_strings: bool) -> String {
    let hex = hex::encode(ciphertext);
    if standard_strings {
        format!("'\\x{hex}'::bytea")
    } else {
        format!("E'\\\\x{hex}'::bytea")
    }
}

/// A statement that makes the database raise `error`, so it arrives in protocol order and
/// aborts the transaction as PostgreSQL's own errors do.
fn raise_sql(error: &PgError) -> String {
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

/// Parse/Bind/Execute of a raising statement, standing in for a refused message.
fn injected_error(error: &PgError, state: &mut State, recording: Option<Box<Recording>>) -> Action {
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
    state.expect.push_back(Expect::Injected(recording));
    state.discarding = true;
    Action::Replace(join(&[
        &parse.encode(),
        &bind.encode(),
        &msg::encode_execute(b"", 0),
    ]))
}

fn parse_message(parse: Parse, shared: &Shared) -> Action {
    let veil = &shared.veil;
    let mut state = lock(&shared.state);
    let text = match std::str::from_utf8(&parse.query) {
        Ok(text) => text,
        Err(_) => {
            let lossy = String::from_utf8_lossy(&parse.query);
            if sql::may_touch_protected(&lossy, &veil.protection) {
                return refuse_parse(
                    shared,
                    &mut state,
                    parse.name,
                    None,
                    |_| sql::fingerprint(&lossy),
                    cannot_analyse(),
                );
            }
            insert_statement(&mut state, parse.name.clone(), Prepared::plain());
            return Action::Forward;
        }
    };
    if let Some(wanted) = refresh_needed(text) {
        let merged = match state.refresh_at_sync {
            Some(w) => Wanted {
                catalog: w.catalog || wanted.catalog,
                search_path: true,
                roles: false,
            },
            None => wanted,
        };
        state.refresh_at_sync = Some(merged);
    }
    if let Some(view) = state.catalog.protected_view_in(text) {
        let error = through_view(view);
        return refuse_parse(
            shared,
            &mut state,
            parse.name,
            None,
            |s| s.catalog.fingerprint(text),
            error,
        );
    }
    if !sql::may_touch_protected(text, &veil.protection) {
        let prepared = match shared.sink().filter(|s| s.scope == AuditScope::All) {
            Some(_) => Arc::new(Prepared {
                fingerprint: Some(state.catalog.fingerprint(text)),
                ..Prepared::unprotected()
            }),
            None => Prepared::plain(),
        };
        insert_statement(&mut state, parse.name.clone(), prepared);
        return Action::Forward;
    }
    let analysis = analyze(text, &state, veil);
    let plan = match analysis.as_ref() {
        Ok(plans) if plans.len() == 1 => &plans[0],
        Ok(plans) if plans.is_empty() => {
            insert_statement(&mut state, parse.name.clone(), Prepared::plain());
            return Action::Forward;
        }
        _ => {
            return refuse_parse(
                shared,
                &mut state,
                parse.name,
                None,
                |s| s.catalog.fingerprint(text),
                cannot_analyse(),
            );
        }
    };
    let recorded = shared
        .sink()
        .filter(|s| recording::in_scope(s, Some(plan), &veil.protection));
    let mut replacements =
        match statement_replacements(plan, &state, veil, recorded.map(|s| s.as_ref())) {
            Ok(r) => r,
            Err(error) => {
                return refuse_parse(
                    shared,
                    &mut state,
                    parse.name,
                    Some(plan),
                    |s| s.catalog.fingerprint(text),
                    error,
                );
            }
        };
    let injected = if recorded.is_some() {
        let injections = recording::injections(plan);
        let count = injections.len();
        replacements.extend(injections);
        count
    } else {
        0
    };
    let mut param_columns: Vec<Option<ColumnRef>> = Vec::new();
    for &(n, column) in &plan.params {
        let index = n.saturating_sub(1) as usize;
        if param_columns.len() <= index {
            param_columns.resize(index + 1, None);
        }
        param_columns[index] = Some(column);
    }
    let mut param_types = parse.param_types.clone();
    for (index, column) in param_columns.iter().enumerate() {
        if column.is_some() {
            if param_types.len() <= index {
                param_types.resize(index + 1, 0);
            }
            param_types[index] = crate::schema::LogicalType::Bytea.oid();
        }
    }
    let query = if replacements.is_empty() {
        parse.query.clone()
    } else {
        Bytes::from(sql::rewrite(text, &replacements))
    };
    let rewritten = Parse {
        name: parse.name.clone(),
        query,
        param_types,
    };
    let prepared = Arc::new(Prepared {
        analysis: Some(analysis.clone()),
        param_columns,
        client_param_types: parse.param_types.clone(),
        row: OnceLock::new(),
        fingerprint: recorded.map(|_| state.catalog.fingerprint(text)),
        injected,
        refused: None,
    });
    insert_statement(&mut state, parse.name.clone(), prepared.clone());
    // pgveil describes the statement itself, so it knows which result columns to decrypt
    // even when the client never asks.
    state.expect.push_back(Expect::DescribeStatement {
        prepared,
        internal: true,
    });
    Action::Replace(join(&[
        &rewritten.encode(),
        &msg::encode_target(b'D', b'S', &parse.name),
    ]))
}

/// The record of a statement pgveil refuses, when the session is audited.
fn refusal_recording(
    shared: &Shared,
    state: &State,
    plan: Option<&StatementPlan>,
    fingerprint: impl FnOnce() -> String,
) -> Option<Box<Recording>> {
    shared.sink()?;
    let mut recording = Recording::new(plan, fingerprint(), &shared.veil.protection, &state.access);
    recording.refused = true;
    Some(Box::new(recording))
}

/// Refuses a Parse: the database raises `error` in its place, and the name is remembered as
/// refused so later Binds to it are refused too instead of carrying parameters upstream.
fn refuse_parse(
    shared: &Shared,
    state: &mut State,
    name: Bytes,
    plan: Option<&StatementPlan>,
    fingerprint: impl FnOnce(&State) -> String,
    error: PgError,
) -> Action {
    let recording = refusal_recording(shared, state, plan, || fingerprint(state));
    state.statements.insert(name, Prepared::refused(&error));
    injected_error(&error, state, recording)
}

/// Records a statement the client parses, and expects its ParseComplete. A name pgveil
/// already knows is replaced too: the database may have dropped it behind pgveil's back
/// (`DEALLOCATE`, `DISCARD ALL` in SQL), and then this Parse succeeds and its Binds must be
/// treated as this statement's. When it still exists the Parse fails (42P05) and the old one
/// is put back (and Binds of the same batch are skipped by the database).
fn insert_statement(state: &mut State, name: Bytes, prepared: Arc<Prepared>) {
    let previous = state.statements.insert(name.clone(), prepared);
    let undo = previous
        .filter(|_| !name.is_empty())
        .map(|p| Box::new((name, p)));
    state.expect.push_back(Expect::Parse(undo));
}

fn bind_message(body: &[u8], shared: &Shared) -> Result<Action, SessionError> {
    let veil = &shared.veil;
    let mut state = lock(&shared.state);
    // The portal and statement names lead the message; most Binds need nothing more.
    let mut rest = body;
    let portal_name =
        Bytes::copy_from_slice(read_cstr(&mut rest).ok_or(SessionError::Malformed("Bind"))?);
    let statement_name = read_cstr(&mut rest).ok_or(SessionError::Malformed("Bind"))?;
    let prepared = state
        .statements
        .get(statement_name)
        .cloned()
        .unwrap_or_else(Prepared::plain);
    if let Some(error) = &prepared.refused {
        let recording = refusal_recording(shared, &state, None, String::new);
        return Ok(injected_error(error, &mut state, recording));
    }
    if prepared.analysis.is_none() {
        // A statement pgveil did not analyse can still return protected columns (a client
        // Describe showed them, by table OID): then its rows are decrypted in the formats
        // this Bind asks for.
        let shows_protected = prepared
            .row
            .get()
            .is_some_and(|row| row.columns.iter().any(Option::is_some));
        let result_formats = if shows_protected {
            msg::bind_result_formats(body).map_err(|e| SessionError::Malformed(e.0))?
        } else {
            Vec::new()
        };
        state
            .portals
            .insert(portal_name, Portal::new(prepared, result_formats));
        state.expect.push_back(Expect::Bind);
        return Ok(Action::Forward);
    }
    let mut bind = Bind::decode(body).map_err(|e| SessionError::Malformed(e.0))?;
    let mut changed = false;
    if prepared.param_columns.iter().any(Option::is_some) {
        bind.expand_param_formats();
        for (index, column) in prepared.param_columns.iter().enumerate() {
            let (Some(column), Some(slot)) = (column, bind.params.get(index)) else {
                continue;
            };
            let Some(value) = slot else { continue };
            let format = bind.param_format(index);
            match encrypt_param(
                veil,
                *column,
                value,
                format,
                prepared.client_param_types.get(index).copied().unwrap_or(0),
                &state.time,
            ) {
                Ok(ciphertext) => {
                    bind.params[index] = Some(Bytes::from(ciphertext));
                    bind.param_formats[index] = 1;
                    changed = true;
                }
                Err(error) => {
                    let recording = refusal_recording(shared, &state, prepared.plan(), || {
                        prepared.fingerprint.clone().unwrap_or_default()
                    });
                    return Ok(injected_error(&error, &mut state, recording));
                }
            }
        }
    }
    if prepared.injected > 0 && bind.result_formats.len() > 1 {
        // The appended subject columns are read as text; the client never sees them.
        bind.result_formats
            .extend(std::iter::repeat_n(0, prepared.injected));
        changed = true;
    }
    let result_formats = bind.result_formats.clone();
    state
        .portals
        .insert(portal_name, Portal::new(prepared, result_formats));
    state.expect.push_back(Expect::Bind);
    Ok(if changed {
        Action::Replace(bind.encode())
    } else {
        Action::Forward
    })
}

fn encrypt_param(
    veil: &Veil,
    column: ColumnRef,
    value: &[u8],
    format: i16,
    declared_type: u32,
    time: &SessionTime,
) -> Result<Vec<u8>, PgError> {
    let (cipher, spec) = cipher_and_spec(veil, column)?;
    let canonical = if format == 1 {
        let source = if declared_type == 0 {
            spec.logical_type.oid()
        } else {
            declared_type
        };
        value::canonical_from_binary(spec.logical_type, source, value, time)
    } else {
        value::canonical_from_text(spec.logical_type, value, time)
    }
    .map_err(|e| value_error(&e, &spec.qualified_name()))?;
    Ok(cipher.encrypt(&canonical))
}

// ---------------------------------------------------------------------------------------
// Server → client

/// How to treat each column of the rows being relayed.
#[derive(Clone, Default)]
struct RowPlan {
    columns: Vec<Option<(ColumnRef, i16)>>,
    /// Trailing subject columns pgveil appended, removed before the client sees the row.
    strip: usize,
}

impl RowPlan {
    fn is_plain(&self) -> bool {
        self.strip == 0 && self.columns.iter().all(Option::is_none)
    }
}

struct Backend<'a> {
    shared: &'a Shared,
    rows: Option<RowPlan>,
    /// After an error pgveil raised mid-response: drop everything up to ReadyForQuery.
    suppress: bool,
    upstream_said_fatal: bool,
    refreshed: Vec<Collector>,
    /// The client's ReadyForQuery, held until pgveil's own query that follows it has been
    /// answered, so the client's next statement is analysed with what that query learned.
    held_ready: Option<Bytes>,
    /// The statement in flight whose response waits for its audit record.
    recording: Option<Recording>,
}

async fn server_to_client(
    reader: &mut ReadHalf,
    writer: &mut WriteHalf,
    shared: &Shared,
    fatal: mpsc::Receiver<PgError>,
    shutdown: watch::Receiver<bool>,
    config: &SessionConfig,
) -> Result<(), SessionError> {
    let mut buf = new_buffer();
    let mut out = Outbox::default();
    let mut backend = Backend {
        shared,
        rows: None,
        suppress: false,
        upstream_said_fatal: false,
        refreshed: Vec::new(),
        held_ready: None,
        recording: None,
    };
    let sink = shared.sink().map(Arc::as_ref);
    let mut wait = ServerWait::new(fatal, shutdown, config.client_addr);
    loop {
        let idle = || {
            let state = lock(&shared.state);
            state.expect.is_empty() && state.status == b'I'
        };
        let expected_close =
            || backend.upstream_said_fatal || lock(&shared.state).client_terminated;
        if wait
            .read(reader, writer, &mut buf, idle, expected_close)
            .await?
            .is_none()
        {
            return Ok(());
        }
        drain_frames(&mut buf, usize::MAX >> 1, &mut out, |frame| {
            Ok::<_, SessionError>(backend.frame(frame))
        })?;
        backend.apply_refreshes();
        out.flush_audited(writer.as_mut(), sink).await?;
    }
}

fn plan_at(analysis: Option<&Arc<Analysis>>, index: usize) -> Option<&StatementPlan> {
    analysis
        .and_then(|a| a.as_ref().as_ref().ok())
        .and_then(|plans| plans.get(index))
}

/// Ends a statement's response.
const STATEMENT_END: &[u8] = b"CIsE";

impl Backend<'_> {
    fn frame(&mut self, frame: &[u8]) -> Action {
        let tag = frame[0];
        // Asynchronous messages can arrive at any point.
        match tag {
            b'A' | b'N' => return Action::Forward,
            b'S' => {
                self.parameter_status(frame);
                return Action::Forward;
            }
            b'R' => return without_channel_binding(frame).map_or(Action::Forward, Action::Replace),
            b'E' => {
                self.upstream_said_fatal |= is_fatal(&frame[5..]);
                if let Some(cleaned) = crate::pgerror::without_raise_context(frame) {
                    metrics::get().error(ErrorKind::Refused);
                    return self.statement_error(cleaned, frame);
                }
                metrics::get().error(ErrorKind::Database);
            }
            _ => {}
        }
        self.statement_frame(frame)
    }

    /// pgveil's own raised error, cleaned: it still ends the statement it stands for.
    fn statement_error(&mut self, cleaned: Bytes, original: &[u8]) -> Action {
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

    /// A frame that belongs to the response of a client message.
    fn statement_frame(&mut self, frame: &[u8]) -> Action {
        let tag = frame[0];
        let shared = self.shared;
        let mut state = lock(&shared.state);
        if tag == b'Z' {
            let ready = self.ready_for_query(frame, &mut state);
            return match self.recording.take() {
                // A response that never completed (the connection state moved on): its record
                // still goes first.
                Some(mut recording) => {
                    recording.hold(ready, frame);
                    Action::Audited(recording.finish(self.identity(), frame))
                }
                None => ready,
            };
        }
        if self.suppress {
            return Action::Drop;
        }
        let Some(front) = state.expect.front_mut() else {
            return Action::Forward;
        };
        match front {
            Expect::Refresh(collector) => {
                collector.feed(frame);
                Action::Drop
            }
            Expect::Parse(_) if tag == b'1' => {
                state.expect.pop_front();
                Action::Forward
            }
            Expect::Parse(undo) if tag == b'E' => {
                if let Some(undo) = undo.take() {
                    let (name, previous) = *undo;
                    state.statements.insert(name, previous);
                }
                Action::Forward
            }
            Expect::Bind if tag == b'2' => {
                state.expect.pop_front();
                Action::Forward
            }
            Expect::Close if tag == b'3' => {
                state.expect.pop_front();
                Action::Forward
            }
            Expect::Injected(recording) => match tag {
                b'1' | b'2' => Action::Drop,
                b'E' => {
                    if let Some(recording) = recording.take() {
                        self.recording = Some(*recording);
                    }
                    self.record(Action::Forward, frame, true)
                }
                _ => Action::Forward,
            },
            Expect::DescribeStatement { prepared, internal } => {
                let (prepared, internal) = (prepared.clone(), *internal);
                match tag {
                    b't' if internal => Action::Drop,
                    b't' => parameter_description(frame, &prepared, &shared.veil),
                    b'T' | b'n' => {
                        state.expect.pop_front();
                        let fields = if tag == b'T' {
                            decode_fields(frame)
                        } else {
                            Vec::new()
                        };
                        let columns = result_columns(&fields, &state.catalog, prepared.plan());
                        let types = fields.iter().map(|f| f.type_oid).collect();
                        let _ = prepared.row.set(RowInfo {
                            columns: columns.clone(),
                            types,
                        });
                        if internal {
                            Action::Drop
                        } else if tag == b'T' {
                            // Formats belong to a portal, not to a statement: the rows of
                            // each Execute are decoded from its own portal (`portal_rows`).
                            self.describe_rows(&fields, &columns, &[], prepared.injected, &state)
                                .0
                        } else {
                            Action::Forward
                        }
                    }
                    _ => Action::Forward,
                }
            }
            Expect::DescribePortal(portal) => {
                let portal = portal.clone();
                if tag == b'T' || tag == b'n' {
                    state.expect.pop_front();
                }
                if tag != b'T' {
                    return Action::Forward;
                }
                let fields = decode_fields(frame);
                let prepared = portal.as_ref().map(|p| &p.prepared);
                let columns =
                    result_columns(&fields, &state.catalog, prepared.and_then(|p| p.plan()));
                let formats = portal
                    .as_ref()
                    .map(|p| p.result_formats.clone())
                    .unwrap_or_default();
                let strip = prepared.map_or(0, |p| p.injected);
                let (action, plan) = self.describe_rows(&fields, &columns, &formats, strip, &state);
                if let (Some(portal), Some(plan)) = (portal, plan) {
                    let _ = portal.described.set(plan);
                }
                action
            }
            Expect::Execute(portal) => {
                let portal = portal.clone();
                if self.recording.is_none() && (tag == b'D' || STATEMENT_END.contains(&tag)) {
                    self.begin_execute(portal.as_deref(), &state);
                }
                let (action, ends) = match tag {
                    b'D' => {
                        if self.rows.is_none() {
                            match portal_rows(portal.as_deref()) {
                                Ok(rows) => self.rows = Some(rows),
                                Err(error) => return self.raise(error),
                            }
                        }
                        if let Some(recording) = self.recording.as_mut() {
                            recording.observe_row(&frame[5..]);
                        }
                        (self.data_row(frame, &state), false)
                    }
                    b'C' | b's' | b'I' => {
                        state.expect.pop_front();
                        self.rows = None;
                        (Action::Forward, true)
                    }
                    b'E' => {
                        self.rows = None;
                        (Action::Forward, true)
                    }
                    _ => (Action::Forward, false),
                };
                self.record(action, frame, ends)
            }
            Expect::Query {
                analysis,
                statement,
                audit,
                ..
            } => {
                let (analysis, index, audit) = (analysis.clone(), *statement, audit.clone());
                if tag == b'C' || tag == b'I' {
                    *statement += 1;
                }
                let recorded = audit
                    .as_ref()
                    .and_then(|a| a.statements.get(index).cloned().flatten());
                if self.recording.is_none()
                    && (tag == b'T' || tag == b'D' || STATEMENT_END.contains(&tag))
                {
                    if let (Some((fingerprint, _)), Some(audit)) = (&recorded, &audit) {
                        let mut recording = Recording::new(
                            plan_at(analysis.as_ref(), index),
                            fingerprint.clone(),
                            &shared.veil.protection,
                            &state.access,
                        );
                        recording.refused = audit.refused == Some(index);
                        self.recording = Some(recording);
                    }
                }
                let injected = recorded.map_or(0, |(_, injected)| injected);
                let (action, ends) = match tag {
                    b'T' => {
                        let fields = decode_fields(frame);
                        if let Some(recording) = self.recording.as_mut() {
                            recording.set_row_types(
                                fields.iter().map(|f| (f.type_oid, f.format)).collect(),
                                injected,
                            );
                        }
                        let columns = result_columns(
                            &fields,
                            &state.catalog,
                            plan_at(analysis.as_ref(), index),
                        );
                        let (action, rows) =
                            self.describe_rows(&fields, &columns, &[], injected, &state);
                        // A simple query's rows follow its RowDescription directly.
                        self.rows = rows;
                        (action, false)
                    }
                    b'D' => {
                        if let Some(recording) = self.recording.as_mut() {
                            recording.observe_row(&frame[5..]);
                        }
                        (self.data_row(frame, &state), false)
                    }
                    b'C' | b'I' | b'E' => {
                        self.rows = None;
                        (Action::Forward, true)
                    }
                    _ => (Action::Forward, false),
                };
                self.record(action, frame, ends)
            }
            _ => Action::Forward,
        }
    }

    fn identity(&self) -> &Identity {
        // Only called while recording, which needs an audit sink and so an identity.
        static NOBODY: std::sync::OnceLock<Identity> = std::sync::OnceLock::new();
        self.shared
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

    /// Starts the record of an Execute of a statement in scope.
    fn begin_execute(&mut self, portal: Option<&Portal>, state: &State) {
        if self.recording.is_some() {
            return;
        }
        let Some(portal) = portal else { return };
        let Some(fingerprint) = &portal.prepared.fingerprint else {
            return;
        };
        let mut recording = Recording::new(
            portal.prepared.plan(),
            fingerprint.clone(),
            &self.shared.veil.protection,
            &state.access,
        );
        if let Some(info) = portal.prepared.row.get() {
            let types = info
                .types
                .iter()
                .enumerate()
                .map(|(i, oid)| (*oid, msg::result_format(&portal.result_formats, i)))
                .collect();
            recording.set_row_types(types, portal.prepared.injected);
        }
        self.recording = Some(recording);
    }

    /// Routes a frame of a recorded statement into its held response; at the statement's
    /// end, the response leaves with its record.
    fn record(&mut self, action: Action, frame: &[u8], ends: bool) -> Action {
        let Some(recording) = self.recording.as_mut() else {
            return action;
        };
        if !recording.discloses() {
            // Nothing protected is released (a write without RETURNING, a refusal): the
            // response need not wait for the record, which is written in the background.
            // While the log is failing, writes are refused before they run.
            if ends {
                if let (Some(recording), Some(sink)) = (self.recording.take(), self.shared.sink()) {
                    let draft = recording.finish(self.identity(), frame).draft;
                    let sink = Arc::clone(sink);
                    tokio::spawn(async move {
                        if let Err(e) = sink.append(draft).await {
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
            Some(recording) => Action::Audited(recording.finish(self.identity(), frame)),
            None => Action::Drop,
        }
    }

    fn parameter_status(&mut self, frame: &[u8]) {
        let mut body = &frame[5..];
        let (Some(name), Some(value)) = (read_cstr(&mut body), read_cstr(&mut body)) else {
            return;
        };
        let value = String::from_utf8_lossy(value);
        let mut state = lock(&self.shared.state);
        match name {
            b"TimeZone" => {
                state.timezone = value.into_owned();
                state.time = SessionTime::from_timezone_or_utc(&state.timezone)
                    .with_datestyle(&state.datestyle);
            }
            b"DateStyle" => {
                state.datestyle = value.into_owned();
                state.time = SessionTime::from_timezone_or_utc(&state.timezone)
                    .with_datestyle(&state.datestyle);
            }
            b"standard_conforming_strings" => state.standard_strings = value == "on",
            _ => {}
        }
    }

    fn ready_for_query(&mut self, frame: &[u8], state: &mut State) -> Action {
        let metrics = metrics::get();
        let raised = std::mem::take(&mut self.suppress);
        self.rows = None;
        // Whatever precedes the message that ends this cycle was skipped by the server after
        // an error.
        while let Some(expect) = state.expect.pop_front() {
            if expect.ends_cycle() {
                match expect {
                    Expect::Sync(sent) | Expect::Query { sent, .. } | Expect::Function(sent) => {
                        metrics.query_seconds.record(sent.elapsed().as_secs_f64());
                    }
                    Expect::Refresh(collector) => {
                        self.refreshed.push(collector);
                        return self.held_ready.take().map_or(Action::Drop, Action::Replace);
                    }
                    _ => {}
                }
                break;
            }
        }
        state.status = frame.get(5).copied().unwrap_or(b'I');
        if state.status == b'I' {
            state.portals.clear();
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
    fn apply_refreshes(&mut self) {
        for collector in self.refreshed.drain(..) {
            let Some(facts) = collector.finish() else {
                continue;
            };
            let shared = self.shared;
            let mut state = lock(&shared.state);
            if let Some(catalog) = facts.catalog {
                state.catalog = shared.veil.install_catalog(
                    &shared.database,
                    DbCatalog::new(catalog, &facts.views, &shared.veil.protection),
                );
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
        let frame = error.encode();
        match self.recording.take() {
            Some(mut recording) => {
                recording.hold(Action::Forward, &frame);
                Action::Audited(recording.finish(self.identity(), &frame))
            }
            None => Action::Replace(frame),
        }
    }

    /// Rewrites a RowDescription: logical types for protected columns, pgveil's own subject
    /// columns removed, and (the backstop) a result that carries a denied column refused.
    /// Returns how rows described so would be decoded (`None` when refused); the caller
    /// decides whom that belongs to, as a Describe is answered before its rows and
    /// possibly long before (asyncpg: Parse, Describe, Flush, later Bind, Execute).
    fn describe_rows(
        &mut self,
        fields: &[Field],
        columns: &[Option<ColumnRef>],
        formats: &[i16],
        strip: usize,
        state: &State,
    ) -> (Action, Option<RowPlan>) {
        let strip = strip.min(fields.len());
        if strip == 0 && columns.iter().all(Option::is_none) {
            return (Action::Forward, Some(RowPlan::default()));
        }
        let veil = &self.shared.veil;
        let mut fields = fields[..fields.len() - strip].to_vec();
        let mut plan = RowPlan {
            columns: Vec::with_capacity(fields.len()),
            strip,
        };
        for (index, (field, column)) in fields.iter_mut().zip(columns).enumerate() {
            let Some(spec) = column.and_then(|c| veil.protection.column(c)) else {
                plan.columns.push(None);
                continue;
            };
            let Some(column) = *column else { continue };
            if state.access.get(column.0) == Some(&Access::Deny) {
                let refused = self.raise(PgError::error(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    format!(
                        "pgveil: permission denied to read protected column {}",
                        spec.qualified_name()
                    ),
                ));
                return (refused, None);
            }
            field.type_oid = spec.logical_type.oid();
            field.type_size = spec.logical_type.type_size();
            field.type_modifier = -1;
            let format = if formats.is_empty() {
                field.format
            } else {
                msg::result_format(formats, index)
            };
            plan.columns.push(Some((column, format)));
        }
        (
            Action::Replace(msg::encode_row_description(&fields)),
            Some(plan),
        )
    }

    fn data_row(&mut self, frame: &[u8], state: &State) -> Action {
        let Some(rows) = &self.rows else {
            return Action::Forward;
        };
        if rows.is_plain() {
            return Action::Forward;
        }
        match decrypt_row(&frame[5..], rows, &self.shared.veil, state) {
            Ok(row) => Action::Replace(row),
            Err(error) => self.raise(error),
        }
    }
}

fn decode_fields(frame: &[u8]) -> Vec<Field> {
    msg::decode_row_description(&frame[5..]).unwrap_or_default()
}

fn parameter_description(frame: &[u8], prepared: &Prepared, veil: &Veil) -> Action {
    if prepared.param_columns.iter().all(Option::is_none) {
        return Action::Forward;
    }
    let Ok(mut types) = msg::decode_parameter_description(&frame[5..]) else {
        return Action::Forward;
    };
    for (index, column) in prepared.param_columns.iter().enumerate() {
        let (Some(column), Some(slot)) = (column, types.get_mut(index)) else {
            continue;
        };
        let declared = prepared.client_param_types.get(index).copied().unwrap_or(0);
        *slot = if declared != 0 {
            declared
        } else {
            veil.protection
                .column(*column)
                .map_or(*slot, |c| c.logical_type.oid())
        };
    }
    Action::Replace(msg::encode_parameter_description(&types))
}

/// Which result columns are protected: from the table OID and column number the database
/// reports, or where it reports none (an expression, a set operation), from the analysis.
fn result_columns(
    fields: &[Field],
    catalog: &DbCatalog,
    plan: Option<&StatementPlan>,
) -> Vec<Option<ColumnRef>> {
    fields
        .iter()
        .enumerate()
        .map(|(index, field)| {
            let from_plan = || plan.and_then(|p| p.result_columns.get(index).copied().flatten());
            if field.table_oid != 0 {
                // A table dropped and recreated around pgveil has an OID the catalog does not
                // know yet; the analysis (by name) still knows the column is protected.
                catalog
                    .by_attribute
                    .get(&(field.table_oid, field.column))
                    .copied()
                    .or_else(from_plan)
            } else {
                from_plan()
            }
        })
        .collect()
}

fn portal_rows(portal: Option<&Portal>) -> Result<RowPlan, PgError> {
    let Some(portal) = portal else {
        return Ok(RowPlan::default());
    };
    if let Some(described) = portal.described.get() {
        return Ok(described.clone());
    }
    match portal.prepared.row.get() {
        Some(info) => Ok(RowPlan {
            columns: info
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| c.map(|c| (c, msg::result_format(&portal.result_formats, i))))
                .collect(),
            strip: portal.prepared.injected,
        }),
        None if portal.prepared.analysis.is_none() => Ok(RowPlan::default()),
        None => Err(PgError::error(
            sqlstate::INTERNAL_ERROR,
            "pgveil: the result columns of this statement are unknown, so its rows are withheld",
        )),
    }
}

/// Decrypts, masks and re-encodes the protected values of one DataRow, and drops pgveil's
/// own trailing subject columns.
fn decrypt_row(body: &[u8], rows: &RowPlan, veil: &Veil, state: &State) -> Result<Bytes, PgError> {
    let ranges = msg::data_row_values(body).map_err(|_| {
        PgError::error(
            sqlstate::PROTOCOL_VIOLATION,
            "pgveil: malformed DataRow from the database",
        )
    })?;
    let shown = ranges.len().saturating_sub(rows.strip);
    let mut values: Vec<Option<std::borrow::Cow<'_, [u8]>>> = Vec::with_capacity(shown);
    for (index, range) in ranges.iter().take(shown).enumerate() {
        let plan = rows.columns.get(index).copied().flatten();
        let value = match (plan, range) {
            (Some((column, format)), Some(range)) => {
                reveal(&body[range.clone()], column, format, veil, state)?
                    .map(std::borrow::Cow::Owned)
            }
            (_, Some(range)) => Some(std::borrow::Cow::Borrowed(&body[range.clone()])),
            (_, None) => None,
        };
        values.push(value);
    }
    Ok(msg::encode_data_row(
        values
            .iter()
            .map(|v| v.as_deref())
            .collect::<Vec<_>>()
            .into_iter(),
    ))
}

/// One stored value as the session may see it; `None` is SQL NULL (a `mask:null`).
fn reveal(
    stored: &[u8],
    column: ColumnRef,
    format: i16,
    veil: &Veil,
    state: &State,
) -> Result<Option<Vec<u8>>, PgError> {
    let (cipher, spec) = cipher_and_spec(veil, column)?;
    let name = spec.qualified_name();
    let corrupt = || {
        metrics::get().error(ErrorKind::Database);
        PgError::error(
            sqlstate::DATA_CORRUPTED,
            format!("pgveil: a value of protected column {name} cannot be decrypted (tampered with, or copied from another column)"),
        )
    };
    let ciphertext = if format == 0 {
        decode_bytea_text(stored).ok_or_else(corrupt)?
    } else {
        stored.to_vec()
    };
    let canonical = cipher.decrypt(&ciphertext).map_err(|_| corrupt())?;
    let wire = WireFormat::from_code(format).unwrap_or(WireFormat::Text);
    let shown = match state.access.get(column.0).copied().unwrap_or(Access::Deny) {
        Access::Plaintext => Some(canonical),
        Access::Mask(kind) => {
            mask::apply(kind, spec.logical_type, &canonical).map_err(|_| corrupt())?
        }
        Access::Deny => {
            return Err(PgError::error(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("pgveil: permission denied to read protected column {name}"),
            ))
        }
    };
    match shown {
        None => Ok(None),
        Some(canonical) => value::to_wire(spec.logical_type, &canonical, wire, &state.time)
            .map(Some)
            .map_err(|e| value_error(&e, &name)),
    }
}

/// bytea's text output (`\x` hex, or the old escape format).
fn decode_bytea_text(text: &[u8]) -> Option<Vec<u8>> {
    if let Some(hex) = text.strip_prefix(b"\\x") {
        return hex::decode(hex).ok();
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'\\' {
            if text.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
            } else {
                let digits = text.get(i + 1..i + 4)?;
                let value = u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok()?;
                out.push(value);
                i += 4;
            }
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_statement_quotes_its_message() {
        let sql = raise_sql(&PgError::error("0A000", "it's $x \\ bad"));
        assert_eq!(sql, "DO $pgveil$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = 'it''s x  bad'; END$pgveil$");
    }

    #[test]
    fn bytea_text_forms_decode() {
        assert_eq!(decode_bytea_text(b"\\x00ff").unwrap(), vec![0, 255]);
        assert_eq!(
            decode_bytea_text(b"a\\\\b\\001").unwrap(),
            b"a\\b\x01".to_vec()
        );
        assert!(decode_bytea_text(b"\\xzz").is_none());
    }

    #[test]
    fn refresh_detection() {
        assert!(refresh_needed("CREATE TABLE x (a int)").unwrap().catalog);
        assert!(refresh_needed("set search_path = app").unwrap().search_path);
        assert!(refresh_needed("SELECT created_at FROM t").is_none());
    }
}
