//! The relay for sessions that may touch protected columns.
//!
//! The client half ([`frontend`]) rewrites what goes up: every query text passes one
//! admission step ([`gate`]) whether it came as a simple Query or as a Parse; literals and
//! parameters bound for protected columns are encrypted ([`values`]); statements that must
//! not run are replaced by one that makes the database raise pgveil's error ([`refusal`]).
//! The server half ([`backend`]) keeps an ordered queue of what each client message will be
//! answered with ([`state`]), so it knows which statement or portal a RowDescription,
//! ParameterDescription or DataRow belongs to, and rewrites those: logical types shown,
//! values decrypted, masked and re-encoded in the format the client asked for. Statements in
//! the audit log's scope are recorded ([`audit`]). COPY of protected columns streams through
//! [`copy_in`] (rows encrypted on the way up) and [`copy_out`] (rows decrypted on the way
//! back). A FETCH returns the rows of the statement that opened its cursor or portal:
//! [`cursors`] keeps that plan per name, and the gate admits the FETCH with it ([`fetch`]),
//! by either protocol.

mod audit;
mod backend;
mod context;
mod copy_in;
mod copy_out;
mod cursors;
mod fetch;
mod frontend;
mod gate;
mod matching;
mod migrating;
mod refusal;
mod renew;
mod state;
mod values;

use std::collections::{HashMap, VecDeque};
use std::pin::pin;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::{oneshot, watch};

use super::recording::Identity;
use super::relay::{drain_frames, new_buffer, Action, Outbox};
use super::{drive, ClientEnd, ServerWait, SessionConfig, SessionError};
use crate::audit::AuditSink;
use crate::metrics;
use crate::net::frontend::FrontendTag;
use crate::net::stream::{HandedBack, ReadHalf, SplitConnection, WriteHalf};
use crate::pgerror::PgError;
use crate::pgtype::SessionTime;
use crate::policy::Policy;
use crate::veil::{Database, Veil};
use backend::Backend;
pub use context::{ContextRules, TOKEN_PLACEHOLDER};
use refusal::{abort_first, take_pending_abort};
use state::{lock, State};

/// One protected session: its state, shared by the two halves, and what it was started with.
pub struct Session {
    state: Mutex<State>,
    veil: Arc<Veil>,
    /// The live policy (`require_purpose` and `break_glass_roles` included); a reload swaps
    /// it and the session picks it up at its next message.
    policy: Arc<ArcSwap<Policy>>,
    database_name: String,
    audit: Option<(Arc<AuditSink>, Identity)>,
    /// The token key.
    rules: Arc<ContextRules>,
}

/// What pgveil learned about a session as it started.
pub struct SessionFacts {
    pub database_name: String,
    pub database: Arc<Database>,
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
    /// How sessions may set their context (the token key; `[policy]`'s rules are in `policy`).
    pub context: Arc<ContextRules>,
}

impl Session {
    pub fn new(engine: Engine, facts: SessionFacts, identity: Option<Identity>) -> Self {
        let Engine {
            veil,
            policy,
            audit,
            context: rules,
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
                cursors: cursors::Cursors::default(),
                time,
                timezone: facts.timezone,
                datestyle: facts.datestyle,
                standard_strings: true,
                encoding_readable: true,
                search_path: facts.search_path,
                database: facts.database,
                policy_access: access.clone(),
                access,
                context: context::ContextModel::default(),
                context_sent: context::ContextModel::default(),
                roles: facts.roles,
                policy: current,
                status: b'I',
                client_terminated: false,
                refresh_at_sync: None,
                abort_before_next: false,
                search_path_in_txn: false,
                discarding: false,
                copy_in: None,
                copy_error: None,
                copy_in_started: false,
            }),
            veil,
            policy,
            database_name: facts.database_name,
            audit: audit.zip(identity),
            rules,
        }
    }

    fn sink(&self) -> Option<&Arc<AuditSink>> {
        self.audit.as_ref().map(|(sink, _)| sink)
    }
}

/// Relays an established session. The session comes boxed: an async fn keeps its arguments
/// beside its locals, and this future lives as long as the connection.
pub async fn relay(
    mut client: (ReadHalf, WriteHalf),
    mut server: (ReadHalf, WriteHalf),
    leftover: bytes::BytesMut,
    session: Box<Session>,
    config: SessionConfig,
    shutdown: watch::Receiver<bool>,
) -> Option<HandedBack> {
    let (fatal_tx, fatal_rx) = oneshot::channel::<Box<PgError>>();
    let mut end = ClientEnd::default();
    let mut server_buf = new_buffer();
    // The halves' futures end here, before the connection is handed back.
    let left = {
        let upstream_bound = pin!(client_to_server(
            &mut client.0,
            &mut server.1,
            leftover,
            &session,
            &config,
            &mut end,
        ));
        let client_bound = pin!(server_to_client(
            &mut server.0,
            &mut client.1,
            &mut server_buf,
            &session,
            fatal_rx,
            shutdown,
            &config,
        ));
        drive(upstream_bound, client_bound, fatal_tx, config.client_addr).await
    };
    // The client left: the database connection goes back with whether it is at rest.
    let at_rest = {
        let state = lock(&session.state);
        state.expect.is_empty()
            && state.status == b'I'
            && state.copy_in.is_none()
            && !state.copy_in_started
            && !state.abort_before_next
            && !state.discarding
    };
    (config.reuse && left).then_some(HandedBack {
        connection: SplitConnection {
            read: server.0,
            write: server.1,
            pending: server_buf,
        },
        at_rest: at_rest && !end.unsynced,
    })
}

async fn client_to_server(
    reader: &mut ReadHalf,
    writer: &mut WriteHalf,
    leftover: bytes::BytesMut,
    session: &Session,
    config: &SessionConfig,
    end: &mut ClientEnd,
) -> Result<(), SessionError> {
    let metrics = metrics::get();
    // The startup's buffer (with what the client sent after its login) is this direction's.
    let mut buf = leftover;
    let mut out = Outbox::default();
    let mut first = !buf.is_empty();
    loop {
        let n = if first {
            first = false;
            buf.len()
        } else {
            super::relay::read_more(reader, &mut buf).await?
        };
        if n == 0 {
            return Ok(());
        }
        metrics.bytes_from_client.increment(n as u64);
        let mut terminated = false;
        drain_frames(&mut buf, config.max_message_size, &mut out, |frame| {
            let tag = FrontendTag::of(frame).map_err(SessionError::UnknownMessage)?;
            let forward = end.note(tag, config.reuse);
            let mut state = lock(&session.state);
            if tag == FrontendTag::Terminate {
                terminated = true;
                state.client_terminated = true;
                return Ok::<_, SessionError>(if forward {
                    Action::Forward
                } else {
                    Action::Drop
                });
            }
            let abort_at = take_pending_abort(&mut state);
            let action = frontend::message(tag, frame, session, &mut state)?;
            Ok(match abort_at {
                Some(at) => abort_first(frame, action, at, &mut state),
                None => action,
            })
        })?;
        out.flush_to(writer.as_mut()).await?;
        if terminated {
            return Ok(());
        }
    }
}

async fn server_to_client(
    reader: &mut ReadHalf,
    writer: &mut WriteHalf,
    buf: &mut bytes::BytesMut,
    session: &Session,
    fatal: oneshot::Receiver<Box<PgError>>,
    shutdown: watch::Receiver<bool>,
    config: &SessionConfig,
) -> Result<(), SessionError> {
    let mut out = Outbox::default();
    let mut backend = Backend::new(session);
    let sink = session.sink().map(Arc::as_ref);
    let mut wait = ServerWait::new(fatal, shutdown, config.client_addr);
    loop {
        let idle = || {
            let state = lock(&session.state);
            state.expect.is_empty() && state.status == b'I'
        };
        let expected_close =
            || backend.upstream_said_fatal || lock(&session.state).client_terminated;
        if wait
            .read(reader, writer, buf, idle, expected_close)
            .await?
            .is_none()
        {
            return Ok(());
        }
        drain_frames(buf, usize::MAX >> 1, &mut out, |frame| {
            Ok::<_, SessionError>(backend.frame(frame))
        })?;
        backend.apply_refreshes();
        out.flush_audited(writer.as_mut(), sink).await?;
    }
}
