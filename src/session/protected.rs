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
use super::relay::{drain_frames, new_buffer, Action, Outbox};
use super::{is_fatal, without_channel_binding, SessionConfig, SessionError, FRONTEND_TAGS};
use crate::config::Access;
use crate::crypto::value::{self, SessionTime, WireFormat};
use crate::metrics::{self, ErrorKind};
use crate::net::frame::{frame_len, read_cstr};
use crate::net::messages::{self as msg, Bind, Field, Parse};
use crate::net::stream::{ReadHalf, WriteHalf};
use crate::pgerror::{sqlstate, PgError};
use crate::policy::mask;
use crate::sql::{self, ColumnRef, StatementPlan};
use crate::veil::{Analysis, DbCatalog, Veil};

/// A statement prepared with Parse.
struct Prepared {
    /// The analysis, when the statement mentions a protected table.
    analysis: Option<Arc<Analysis>>,
    /// Parameter position (0-based) → the protected column it is bound for.
    param_columns: Vec<Option<ColumnRef>>,
    /// The types the client declared (0: unspecified).
    client_param_types: Vec<u32>,
    /// Result position → protected column; filled from the statement's RowDescription.
    row: OnceLock<Vec<Option<ColumnRef>>>,
}

impl Prepared {
    fn plan(&self) -> Option<&StatementPlan> {
        self.analysis
            .as_deref()
            .and_then(|a| a.as_ref().ok())
            .and_then(|plans| plans.first())
    }

    fn plain() -> Arc<Self> {
        Arc::new(Self {
            analysis: None,
            param_columns: Vec::new(),
            client_param_types: Vec::new(),
            row: OnceLock::new(),
        })
    }
}

struct Portal {
    prepared: Arc<Prepared>,
    result_formats: Vec<i16>,
}

/// What the database will answer a client message with, in order.
enum Expect {
    Parse,
    Bind,
    Close,
    Sync(Instant),
    Query {
        analysis: Option<Arc<Analysis>>,
        sent: Instant,
        statement: usize,
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
    Injected,
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

struct State {
    expect: VecDeque<Expect>,
    statements: HashMap<Bytes, Arc<Prepared>>,
    portals: HashMap<Bytes, Arc<Portal>>,
    time: SessionTime,
    standard_strings: bool,
    search_path: Vec<String>,
    catalog: Arc<DbCatalog>,
    access: Vec<Access>,
    status: u8,
    client_terminated: bool,
    /// A DDL or search_path change went up in the current extended batch.
    refresh_at_sync: Option<Wanted>,
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
    database: String,
}

impl Shared {
    pub fn new(
        veil: Arc<Veil>,
        database: String,
        catalog: Arc<DbCatalog>,
        search_path: Vec<String>,
        roles: &[String],
        time: SessionTime,
    ) -> Self {
        let access = veil.access_for(roles);
        Self {
            state: Mutex::new(State {
                expect: VecDeque::new(),
                statements: HashMap::new(),
                portals: HashMap::new(),
                time,
                standard_strings: true,
                search_path,
                catalog,
                access,
                status: b'I',
                client_terminated: false,
                refresh_at_sync: None,
            }),
            veil,
            database,
        }
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
    let upstream_bound = async {
        let result =
            client_to_server(&mut client.0, &mut server.1, leftover, &shared, &config).await;
        if let Err(e) = &result {
            if let Some(error) = e.client_error() {
                metrics::get().error(ErrorKind::Protocol);
                tracing::warn!(client = %config.client_addr, error = %e, "closing client connection");
                let _ = fatal_tx.send(error).await;
            }
        }
        result
    };
    let client_bound = server_to_client(
        &mut server.0,
        &mut client.1,
        &shared,
        fatal_rx,
        shutdown,
        &config,
    );
    tokio::pin!(upstream_bound, client_bound);
    tokio::select! {
        result = &mut upstream_bound => {
            if result.is_err() {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), &mut client_bound).await;
            }
        }
        _ = &mut client_bound => {}
    }
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
            frontend_message(frame, shared)
        })?;
        out.flush_to(writer.as_mut()).await?;
        if terminated {
            return Ok(());
        }
    }
}

/// Decides what goes upstream for one client message, and what to expect back.
fn frontend_message(frame: &[u8], shared: &Shared) -> Result<Action, SessionError> {
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
            Ok(parse_message(frame, parse, shared))
        }
        b'B' => bind_message(frame, body, shared),
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
            match state.refresh_at_sync.take() {
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

fn join(parts: &[&[u8]]) -> Bytes {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.extend_from_slice(part);
    }
    Bytes::from(out)
}

/// What pgveil's own bookkeeping must refresh after a statement went through.
fn refresh_needed(text: &str) -> Option<Wanted> {
    let lower = text.to_ascii_lowercase();
    let catalog = [
        "create ", "alter ", "drop ", "create\n", "alter\n", "drop\n",
    ]
    .iter()
    .any(|k| lower.contains(k));
    let search_path = lower.contains("search_path");
    (catalog || search_path).then_some(Wanted {
        catalog,
        search_path: search_path || catalog,
        roles: false,
    })
}

fn simple_query(frame: &[u8], raw_text: &[u8], shared: &Shared) -> Action {
    let veil = &shared.veil;
    let sent = Instant::now();
    let Ok(text) = std::str::from_utf8(raw_text) else {
        // Not UTF-8: it cannot be analysed, so it may pass only if it cannot touch protected data.
        let lossy = String::from_utf8_lossy(raw_text);
        let mut state = lock(&shared.state);
        if sql::may_touch_protected(&lossy, &veil.protection) {
            state.expect.push_back(Expect::Query {
                analysis: None,
                sent,
                statement: 0,
            });
            return Action::Replace(msg::encode_query(
                raise_sql(&cannot_analyse(), true).as_bytes(),
            ));
        }
        state.expect.push_back(Expect::Query {
            analysis: None,
            sent,
            statement: 0,
        });
        return Action::Forward;
    };
    let refresh = refresh_needed(text);
    let mut state = lock(&shared.state);
    let action = if !sql::may_touch_protected(text, &veil.protection) {
        state.expect.push_back(Expect::Query {
            analysis: None,
            sent,
            statement: 0,
        });
        Action::Forward
    } else {
        let analysis = state
            .catalog
            .analyze(text, &veil.protection, &state.search_path);
        let rewritten = rewrite_simple(text, &analysis, &state, veil);
        state.expect.push_back(Expect::Query {
            analysis: Some(analysis),
            sent,
            statement: 0,
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

fn cannot_analyse() -> PgError {
    PgError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        "pgveil: statement mentions a protected table but cannot be analysed, so it was refused",
    )
}

/// The rewritten query text, or `None` when it goes up unchanged.
fn rewrite_simple(text: &str, analysis: &Analysis, state: &State, veil: &Veil) -> Option<String> {
    let plans = match analysis {
        Ok(plans) => plans,
        Err(_) => return Some(raise_sql(&cannot_analyse(), state.standard_strings)),
    };
    let mut replacements = Vec::new();
    for plan in plans {
        match statement_replacements(plan, text, state, veil) {
            Ok(mut r) => replacements.append(&mut r),
            Err(error) => {
                // The statements before run; this one raises; the rest never run.
                replacements.push((
                    plan.byte_range.start..text.len(),
                    raise_sql(&error, state.standard_strings),
                ));
                break;
            }
        }
    }
    if replacements.is_empty() {
        return None;
    }
    Some(sql::rewrite(text, &replacements))
}

/// The replacements one statement needs, or the error it must raise instead.
fn statement_replacements(
    plan: &StatementPlan,
    text: &str,
    state: &State,
    veil: &Veil,
) -> Result<Vec<(std::ops::Range<usize>, String)>, PgError> {
    check_plan(plan, state, veil)?;
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
    let _ = text;
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
fn raise_sql(error: &PgError, standard_strings: bool) -> String {
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
    let _ = standard_strings;
    format!("DO $pgveil$BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = '{message}'; END$pgveil$")
}

/// Parse/Bind/Execute of a raising statement, standing in for a refused message.
fn injected_error(error: &PgError, state: &mut State) -> Action {
    let parse = Parse {
        name: Bytes::new(),
        query: Bytes::from(raise_sql(error, state.standard_strings)),
        param_types: Vec::new(),
    };
    let bind = Bind {
        portal: Bytes::new(),
        statement: Bytes::new(),
        param_formats: Vec::new(),
        params: Vec::new(),
        result_formats: Vec::new(),
    };
    state.expect.push_back(Expect::Injected);
    Action::Replace(join(&[
        &parse.encode(),
        &bind.encode(),
        &msg::encode_execute(b"", 0),
    ]))
}

fn parse_message(frame: &[u8], parse: Parse, shared: &Shared) -> Action {
    let veil = &shared.veil;
    let mut state = lock(&shared.state);
    let text = match std::str::from_utf8(&parse.query) {
        Ok(text) => text,
        Err(_) => {
            let lossy = String::from_utf8_lossy(&parse.query);
            if sql::may_touch_protected(&lossy, &veil.protection) {
                return injected_error(&cannot_analyse(), &mut state);
            }
            insert_statement(&mut state, parse.name.clone(), Prepared::plain());
            state.expect.push_back(Expect::Parse);
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
    if !sql::may_touch_protected(text, &veil.protection) {
        insert_statement(&mut state, parse.name.clone(), Prepared::plain());
        state.expect.push_back(Expect::Parse);
        return Action::Forward;
    }
    let analysis = state
        .catalog
        .analyze(text, &veil.protection, &state.search_path);
    let plan = match analysis.as_ref() {
        Ok(plans) if plans.len() == 1 => &plans[0],
        Ok(plans) if plans.is_empty() => {
            insert_statement(&mut state, parse.name.clone(), Prepared::plain());
            state.expect.push_back(Expect::Parse);
            return Action::Forward;
        }
        _ => return injected_error(&cannot_analyse(), &mut state),
    };
    let replacements = match statement_replacements(plan, text, &state, veil) {
        Ok(r) => r,
        Err(error) => return injected_error(&error, &mut state),
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
    });
    insert_statement(&mut state, parse.name.clone(), prepared.clone());
    state.expect.push_back(Expect::Parse);
    // pgveil describes the statement itself, so it knows which result columns to decrypt
    // even when the client never asks.
    state.expect.push_back(Expect::DescribeStatement {
        prepared,
        internal: true,
    });
    let _ = frame;
    Action::Replace(join(&[
        &rewritten.encode(),
        &msg::encode_target(b'D', b'S', &parse.name),
    ]))
}

fn insert_statement(state: &mut State, name: Bytes, prepared: Arc<Prepared>) {
    // Re-parsing an existing named statement is an error in PostgreSQL: keep the old one.
    if name.is_empty() || !state.statements.contains_key(&name) {
        state.statements.insert(name, prepared);
    }
}

fn bind_message(frame: &[u8], body: &[u8], shared: &Shared) -> Result<Action, SessionError> {
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
    if prepared.analysis.is_none() {
        state.portals.insert(
            portal_name,
            Arc::new(Portal {
                prepared,
                result_formats: Vec::new(),
            }),
        );
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
                Err(error) => return Ok(injected_error(&error, &mut state)),
            }
        }
    }
    let result_formats = bind.result_formats.clone();
    state.portals.insert(
        portal_name,
        Arc::new(Portal {
            prepared,
            result_formats,
        }),
    );
    state.expect.push_back(Expect::Bind);
    let _ = frame;
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
}

impl RowPlan {
    fn is_plain(&self) -> bool {
        self.columns.iter().all(Option::is_none)
    }
}

struct Backend<'a> {
    shared: &'a Shared,
    rows: Option<RowPlan>,
    /// After an error pgveil raised mid-response: drop everything up to ReadyForQuery.
    suppress: bool,
    upstream_said_fatal: bool,
    refreshed: Vec<Collector>,
}

async fn server_to_client(
    reader: &mut ReadHalf,
    writer: &mut WriteHalf,
    shared: &Shared,
    mut fatal: mpsc::Receiver<PgError>,
    mut shutdown: watch::Receiver<bool>,
    config: &SessionConfig,
) -> Result<(), SessionError> {
    let metrics = metrics::get();
    let mut buf = new_buffer();
    let mut out = Outbox::default();
    let mut backend = Backend {
        shared,
        rows: None,
        suppress: false,
        upstream_said_fatal: false,
        refreshed: Vec::new(),
    };
    let mut shutting_down = shutdown.borrow().to_owned();
    loop {
        if shutting_down && {
            let state = lock(&shared.state);
            state.expect.is_empty() && state.status == b'I'
        } {
            out.push(
                PgError::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "terminating connection because pgveil is shutting down",
                )
                .encode(),
            );
            out.flush_to(writer.as_mut()).await?;
            return Ok(());
        }
        let n = tokio::select! {
            biased;
            error = fatal.recv() => {
                if let Some(error) = error {
                    out.push(error.encode());
                    out.flush_to(writer.as_mut()).await?;
                }
                return Ok(());
            }
            changed = shutdown.changed(), if !shutting_down => {
                shutting_down = changed.is_err() || *shutdown.borrow();
                continue;
            }
            n = reader.read_buf(&mut buf) => n,
        };
        let n = match n {
            Ok(n) => n,
            Err(e) if backend.upstream_said_fatal || lock(&shared.state).client_terminated => {
                return Err(e.into())
            }
            Err(e) => {
                tracing::warn!(client = %config.client_addr, error = %e, "lost the database connection");
                0
            }
        };
        if n == 0 {
            if !backend.upstream_said_fatal && !lock(&shared.state).client_terminated {
                metrics.error(ErrorKind::UpstreamLost);
                out.push(
                    PgError::fatal(
                        sqlstate::CONNECTION_FAILURE,
                        "pgveil: the database connection was lost",
                    )
                    .encode(),
                );
                out.flush_to(writer.as_mut()).await?;
            }
            return Ok(());
        }
        metrics.bytes_from_server.increment(n as u64);
        drain_frames(&mut buf, usize::MAX >> 1, &mut out, |frame| {
            Ok::<_, SessionError>(backend.frame(frame))
        })?;
        backend.apply_refreshes();
        out.flush_to(writer.as_mut()).await?;
    }
}

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
            b'R' => {
                return match without_channel_binding(frame) {
                    Some(replacement) => Action::Replace(replacement),
                    None => Action::Forward,
                }
            }
            b'E' => {
                metrics::get().error(ErrorKind::Database);
                self.upstream_said_fatal |= is_fatal(&frame[5..]);
            }
            _ => {}
        }
        let shared = self.shared;
        let mut state = lock(&shared.state);
        if tag == b'Z' {
            return self.ready_for_query(frame, &mut state);
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
            Expect::Parse if tag == b'1' => {
                state.expect.pop_front();
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
            Expect::Injected => match tag {
                b'1' | b'2' => Action::Drop,
                _ => Action::Forward,
            },
            Expect::DescribeStatement { prepared, internal } => {
                let (prepared, internal) = (prepared.clone(), *internal);
                match tag {
                    b't' => {
                        if internal {
                            Action::Drop
                        } else {
                            parameter_description(frame, &prepared, &shared.veil)
                        }
                    }
                    b'T' | b'n' => {
                        state.expect.pop_front();
                        let fields = if tag == b'T' {
                            msg::decode_row_description(&frame[5..]).unwrap_or_default()
                        } else {
                            Vec::new()
                        };
                        let columns = result_columns(&fields, &state.catalog, prepared.plan());
                        let _ = prepared.row.set(columns.clone());
                        if internal {
                            Action::Drop
                        } else if tag == b'T' {
                            self.describe_rows(&fields, &columns, &[], &state)
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
                let fields = msg::decode_row_description(&frame[5..]).unwrap_or_default();
                let plan = portal.as_ref().and_then(|p| p.prepared.plan());
                let columns = result_columns(&fields, &state.catalog, plan);
                let formats = portal
                    .as_ref()
                    .map(|p| p.result_formats.clone())
                    .unwrap_or_default();
                self.describe_rows(&fields, &columns, &formats, &state)
            }
            Expect::Execute(portal) => {
                let portal = portal.clone();
                match tag {
                    b'D' => {
                        if self.rows.is_none() {
                            match portal_rows(portal.as_deref(), &state) {
                                Ok(rows) => self.rows = Some(rows),
                                Err(error) => return self.raise(error, &mut state),
                            }
                        }
                        self.data_row(frame, &mut state)
                    }
                    b'C' | b's' | b'I' => {
                        state.expect.pop_front();
                        self.rows = None;
                        Action::Forward
                    }
                    _ => Action::Forward,
                }
            }
            Expect::Query {
                analysis,
                statement,
                ..
            } => match tag {
                b'T' => {
                    let (analysis, statement) = (analysis.clone(), *statement);
                    let fields = msg::decode_row_description(&frame[5..]).unwrap_or_default();
                    let plan = analysis
                        .as_deref()
                        .and_then(|a| a.as_ref().ok())
                        .and_then(|plans| plans.get(statement));
                    let columns = result_columns(&fields, &state.catalog, plan);
                    self.describe_rows(&fields, &columns, &[], &state)
                }
                b'D' => self.data_row(frame, &mut state),
                b'C' | b'I' => {
                    *statement += 1;
                    self.rows = None;
                    Action::Forward
                }
                _ => Action::Forward,
            },
            _ => Action::Forward,
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
                let datestyle_kept = state.time.clone();
                state.time = SessionTime::from_timezone_or_utc(&value);
                let _ = datestyle_kept;
            }
            b"DateStyle" => state.time = state.time.clone().with_datestyle(&value),
            b"standard_conforming_strings" => state.standard_strings = value == "on",
            _ => {}
        }
    }

    fn ready_for_query(&mut self, frame: &[u8], state: &mut State) -> Action {
        let metrics = metrics::get();
        self.suppress = false;
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
                        return Action::Drop;
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
        Action::Forward
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
                    DbCatalog::new(catalog, &shared.veil.protection),
                );
            }
            if let Some(path) = facts.search_path {
                state.search_path = path;
            }
        }
    }

    /// Replaces what the database sends with pgveil's error, and drops the rest of the
    /// response up to ReadyForQuery.
    fn raise(&mut self, error: PgError, _state: &mut State) -> Action {
        metrics::get().error(if error.code == sqlstate::INSUFFICIENT_PRIVILEGE {
            ErrorKind::Refused
        } else {
            ErrorKind::Database
        });
        self.suppress = true;
        self.rows = None;
        Action::Replace(error.encode())
    }

    /// Rewrites a RowDescription: logical types for protected columns, and (the backstop)
    /// refuses a result that carries a denied column.
    fn describe_rows(
        &mut self,
        fields: &[Field],
        columns: &[Option<ColumnRef>],
        formats: &[i16],
        state: &State,
    ) -> Action {
        if columns.iter().all(Option::is_none) {
            self.rows = Some(RowPlan::default());
            return Action::Forward;
        }
        let veil = &self.shared.veil;
        let mut fields = fields.to_vec();
        let mut plan = RowPlan {
            columns: Vec::with_capacity(fields.len()),
        };
        for (index, (field, column)) in fields.iter_mut().zip(columns).enumerate() {
            let Some(column) = column else {
                plan.columns.push(None);
                continue;
            };
            let Some(spec) = veil.protection.column(*column) else {
                plan.columns.push(None);
                continue;
            };
            if state.access.get(column.0) == Some(&Access::Deny) {
                let mut state_dummy = ();
                let _ = &mut state_dummy;
                self.suppress = true;
                self.rows = None;
                metrics::get().error(ErrorKind::Refused);
                return Action::Replace(
                    PgError::error(
                        sqlstate::INSUFFICIENT_PRIVILEGE,
                        format!(
                            "pgveil: permission denied to read protected column {}",
                            spec.qualified_name()
                        ),
                    )
                    .encode(),
                );
            }
            field.type_oid = spec.logical_type.oid();
            field.type_size = spec.logical_type.type_size();
            field.type_modifier = -1;
            let format = if formats.is_empty() {
                field.format
            } else {
                msg::result_format(formats, index)
            };
            plan.columns.push(Some((*column, format)));
        }
        self.rows = Some(plan);
        Action::Replace(msg::encode_row_description(&fields))
    }

    fn data_row(&mut self, frame: &[u8], state: &mut State) -> Action {
        let Some(rows) = &self.rows else {
            return Action::Forward;
        };
        if rows.is_plain() {
            return Action::Forward;
        }
        match decrypt_row(&frame[5..], rows, &self.shared.veil, state) {
            Ok(row) => Action::Replace(row),
            Err(error) => self.raise(error, state),
        }
    }
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
            if field.table_oid != 0 {
                catalog
                    .by_attribute
                    .get(&(field.table_oid, field.column))
                    .copied()
            } else {
                plan.and_then(|p| p.result_columns.get(index).copied().flatten())
            }
        })
        .collect()
}

fn portal_rows(portal: Option<&Portal>, _state: &State) -> Result<RowPlan, PgError> {
    let Some(portal) = portal else {
        return Ok(RowPlan::default());
    };
    match portal.prepared.row.get() {
        Some(columns) => Ok(RowPlan {
            columns: columns
                .iter()
                .enumerate()
                .map(|(i, c)| c.map(|c| (c, msg::result_format(&portal.result_formats, i))))
                .collect(),
        }),
        None if portal.prepared.analysis.is_none() => Ok(RowPlan::default()),
        None => Err(PgError::error(
            sqlstate::INTERNAL_ERROR,
            "pgveil: the result columns of this statement are unknown, so its rows are withheld",
        )),
    }
}

/// Decrypts, masks and re-encodes the protected values of one DataRow.
fn decrypt_row(body: &[u8], rows: &RowPlan, veil: &Veil, state: &State) -> Result<Bytes, PgError> {
    let ranges = msg::data_row_values(body).map_err(|_| {
        PgError::error(
            sqlstate::PROTOCOL_VIOLATION,
            "pgveil: malformed DataRow from the database",
        )
    })?;
    let mut converted: Vec<Option<Vec<u8>>> = Vec::with_capacity(ranges.len());
    let mut nulls = vec![false; ranges.len()];
    for (index, range) in ranges.iter().enumerate() {
        let plan = rows.columns.get(index).copied().flatten();
        match (plan, range) {
            (Some((column, format)), Some(range)) => {
                match reveal(&body[range.clone()], column, format, veil, state)? {
                    Some(value) => converted.push(Some(value)),
                    None => {
                        nulls[index] = true;
                        converted.push(None);
                    }
                }
            }
            _ => converted.push(None),
        }
    }
    let values = ranges.iter().enumerate().map(|(index, range)| {
        if nulls[index] {
            None
        } else if let Some(Some(value)) = converted.get(index) {
            Some(value.as_slice())
        } else {
            range.as_ref().map(|r| &body[r.clone()])
        }
    });
    Ok(msg::encode_data_row(values.collect::<Vec<_>>().into_iter()))
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

/// Splits frames out of a buffer that holds exactly one response cycle; used by startup.
pub fn frames(buf: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Ok(Some(len)) = frame_len(&buf[at..], usize::MAX >> 1) {
        out.push(&buf[at..at + len]);
        at += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_statement_quotes_its_message() {
        let sql = raise_sql(&PgError::error("0A000", "it's $x \\ bad"), true);
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
