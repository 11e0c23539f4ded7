//! A protected session's start: the login is relayed as is, then pgveil reads what it needs
//! (catalog, search path, the login's roles) on the same connection before the client gets
//! its first ReadyForQuery. A database connection handed on from an earlier client (server
//! reuse) starts here the same way: its login messages are composed by pgveil, and the
//! session's state (statements, catalog facts, context) is built anew.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::introspect::{Collector, Facts, Wanted};
use super::protected::{self, Engine, Session, SessionFacts};
use super::recording::Identity;
use super::relay::{drain_frames, new_buffer, Action, Outbox};
use super::{SessionConfig, SessionError};
use crate::net::backend::BackendMessage;
use crate::net::stream::{HandedBack, MaybeTls, ReadHalf, SplitConnection, WriteHalf};
use crate::pgerror::{sqlstate, PgError};
use crate::veil::Database;

struct Established {
    ready: Bytes,
    /// The backend's process id (BackendKeyData): the session id in the audit log.
    backend_pid: Option<u32>,
    timezone: String,
    datestyle: String,
    leftover: BytesMut,
}

/// Who the client says it is, from its startup message.
pub struct Login {
    pub database: String,
    pub user: String,
    pub application: String,
}

/// Relays one protected session. Every login step runs boxed, so the future the session's
/// task keeps while it relays holds only the relay's state (issue #14: idle memory).
/// Returns the database connection when `config.reuse` and the client left.
pub async fn run(
    client: MaybeTls,
    upstream: SplitConnection,
    login: Login,
    config: SessionConfig,
    engine: Engine,
    shutdown: watch::Receiver<bool>,
) -> Option<HandedBack> {
    let Started {
        client,
        server,
        leftover,
        session,
    } = Box::pin(start(client, upstream, login, &config, engine)).await?;
    protected::relay(client, server, leftover, session, config, shutdown).await
}

/// A session past its login and pgveil's own queries, its client sent ReadyForQuery.
struct Started {
    client: (ReadHalf, WriteHalf),
    server: (ReadHalf, WriteHalf),
    /// What the client sent after its login, not yet relayed.
    leftover: BytesMut,
    session: Box<Session>,
}

/// Relays the login, reads what pgveil needs, and hands the client its first ReadyForQuery.
/// `None`: the session ended, the client told why where it could be.
async fn start(
    client: MaybeTls,
    upstream: SplitConnection,
    login: Login,
    config: &SessionConfig,
    engine: Engine,
) -> Option<Started> {
    let veil = engine.veil.clone();
    let (mut client_read, mut client_write) = client.split();
    let SplitConnection {
        read: mut server_read,
        write: mut server_write,
        pending,
    } = upstream;
    let established = match Box::pin(establish(
        &mut client_read,
        &mut client_write,
        (&mut server_read, &mut server_write),
        pending,
        config,
    ))
    .await
    {
        Ok(established) => established,
        Err(e) => {
            tracing::debug!(client = %config.client_addr, error = %e, "session ended during startup");
            return None;
        }
    };
    // A cached catalog that lacks a configured column is re-read: the table may have been
    // created since, around pgveil (migrations run directly against the database).
    let cached = veil
        .database(&login.database)
        .filter(|c| c.by_attribute.len() >= veil.protection.columns().len());
    let wanted = Wanted {
        catalog: cached.is_none(),
        search_path: true,
        roles: true,
    };
    let facts = match Box::pin(learn(&mut server_read, &mut server_write, wanted)).await {
        Ok(Some(facts)) => facts,
        _ => {
            tracing::error!(client = %config.client_addr, "cannot read the catalog or roles; refusing the session");
            let error = PgError::fatal(
                sqlstate::INTERNAL_ERROR,
                "pgveil: cannot read the database catalog, so the session is refused",
            );
            let _ = client_write.write_all(&error.encode()).await;
            return None;
        }
    };
    let (facts, identity) = session_facts(facts, cached, &login, &established, &engine, config)?;
    let session = Box::new(Session::new(engine, facts, identity));
    if client_write.write_all(&established.ready).await.is_err()
        || client_write.flush().await.is_err()
    {
        return None;
    }
    Some(Started {
        client: (client_read, client_write),
        server: (server_read, server_write),
        leftover: established.leftover,
        session,
    })
}

/// What the session starts with, from what pgveil's own query found, and who is talking
/// (when the session is audited). `None` when neither the query nor the cache knows the
/// database's relations.
fn session_facts(
    learned: Facts,
    cached: Option<Arc<Database>>,
    login: &Login,
    established: &Established,
    engine: &Engine,
    config: &SessionConfig,
) -> Option<(SessionFacts, Option<Identity>)> {
    let veil = &engine.veil;
    let known = match (learned.catalog, cached) {
        (Some(tables), _) => veil.install_database(
            &login.database,
            Database::new(tables, &learned.views, &veil.protection),
        ),
        (None, Some(cached)) => cached,
        (None, None) => return None,
    };
    let roles = learned.roles.unwrap_or_default();
    let identity = engine.audit.as_ref().map(|_| Identity {
        session: match established.backend_pid {
            Some(pid) => pid.to_string(),
            None => config.client_addr.to_string(),
        },
        client: config.client_addr.to_string(),
        user: login.user.clone(),
        roles: roles.clone(),
        application: login.application.clone(),
    });
    let facts = SessionFacts {
        database_name: login.database.clone(),
        database: known,
        search_path: learned.search_path.unwrap_or_default(),
        roles,
        timezone: established.timezone.clone(),
        datestyle: established.datestyle.clone(),
    };
    Some((facts, identity))
}

/// Relays the authentication exchange; holds back the first ReadyForQuery.
async fn establish(
    client_read: &mut ReadHalf,
    client_write: &mut WriteHalf,
    (server_read, server_write): (&mut ReadHalf, &mut WriteHalf),
    mut from_server: bytes::BytesMut,
    config: &SessionConfig,
) -> Result<Established, SessionError> {
    let mut from_client = new_buffer();
    let mut out = Outbox::default();
    let mut timezone = String::from("UTC");
    let mut datestyle = String::from("ISO, MDY");
    let mut backend_pid = None;
    let mut primed = !from_server.is_empty();
    loop {
        if !std::mem::take(&mut primed) && server_read.read_buf(&mut from_server).await? == 0 {
            return Err(SessionError::Startup);
        }
        let mut ready = None;
        let mut needs_answer = false;
        let mut failed = false;
        drain_frames(&mut from_server, usize::MAX >> 1, &mut out, |frame| {
            Ok::<_, SessionError>(match BackendMessage::decode(frame) {
                BackendMessage::Authentication(request) => {
                    needs_answer = request.needs_answer();
                    request
                        .without_channel_binding()
                        .map_or(Action::Forward, Action::Replace)
                }
                BackendMessage::ParameterStatus(parameter) => {
                    let value = || String::from_utf8_lossy(parameter.value).into_owned();
                    match parameter.name {
                        b"TimeZone" => timezone = value(),
                        b"DateStyle" => datestyle = value(),
                        // Asked for in the startup packet, by PGCLIENTENCODING or as the
                        // role's or database's default: the server says which it is.
                        b"client_encoding" if crate::sql::is_refused_encoding(&value()) => {
                            failed = true;
                            let refusal = PgError::fatal(
                                sqlstate::FEATURE_NOT_SUPPORTED,
                                format!("pgveil: client encoding {} is not supported (its multibyte characters can contain ASCII bytes); use UTF8", value()),
                            );
                            return Ok(Action::Replace(refusal.encode()));
                        }
                        _ => {}
                    }
                    Action::Forward
                }
                BackendMessage::BackendKeyData(pid) => {
                    backend_pid = pid;
                    Action::Forward
                }
                BackendMessage::ReadyForQuery(_) => {
                    ready = Some(Bytes::copy_from_slice(frame));
                    Action::Drop
                }
                BackendMessage::ErrorResponse(_) => {
                    failed = true;
                    Action::Forward
                }
                _ => Action::Forward,
            })
        })?;
        out.flush_to(client_write.as_mut()).await?;
        if failed {
            return Err(SessionError::Startup);
        }
        if let Some(ready) = ready {
            return Ok(Established {
                backend_pid,
                ready,
                timezone,
                datestyle,
                leftover: from_client,
            });
        }
        while needs_answer {
            if client_read.read_buf(&mut from_client).await? == 0 {
                return Err(SessionError::Startup);
            }
            drain_frames(&mut from_client, config.max_message_size, &mut out, |_| {
                Ok::<_, SessionError>(Action::Forward)
            })?;
            needs_answer = out.is_empty();
            out.flush_to(server_write.as_mut()).await?;
        }
    }
}

/// Runs pgveil's own query and collects its answer.
async fn learn(
    server_read: &mut ReadHalf,
    server_write: &mut WriteHalf,
    wanted: Wanted,
) -> Result<Option<Facts>, SessionError> {
    server_write.write_all(&wanted.query()).await?;
    server_write.flush().await?;
    let mut collector = Collector::new(wanted);
    let mut buf = new_buffer();
    let mut out = Outbox::default();
    loop {
        if server_read.read_buf(&mut buf).await? == 0 {
            return Err(SessionError::Startup);
        }
        let mut done = false;
        drain_frames(&mut buf, usize::MAX >> 1, &mut out, |frame| {
            done |= collector.feed(&BackendMessage::decode(frame));
            Ok::<_, SessionError>(Action::Drop)
        })?;
        if done {
            return Ok(collector.finish());
        }
    }
}
