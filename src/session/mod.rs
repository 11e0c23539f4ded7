//! One client connection, relayed to its own upstream connection.
//!
//! Each direction runs as its own future (polled by one task), so a client that is busy
//! writing never stalls the rows coming back and vice versa; each direction has its own
//! backpressure. The two halves share only a small, briefly locked state: the queue of
//! requests awaiting their ReadyForQuery, and the transaction status.
//!
//! With `auth = "scram"` and server reuse, a session hands its database connection back when
//! the client leaves (Terminate, not forwarded, or EOF) and the connection is provably at
//! rest: every request answered, the last ReadyForQuery idle, no extended-protocol message
//! sent since the last Sync ([`ClientEnd`]), no COPY. Anything else closes it.

pub mod introspect;
pub mod protected;
pub mod recording;
pub mod relay;
pub mod startup;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::{oneshot, watch};

use crate::metrics::{self, ErrorKind};
use crate::net::backend::BackendMessage;
use crate::net::frame::FrameError;
use crate::net::frontend::FrontendTag;
use crate::net::stream::{HandedBack, MaybeTls, ReadHalf, SplitConnection, WriteHalf};
use crate::pgerror::{sqlstate, PgError};
use relay::{drain_frames, new_buffer, read_more, Action, Outbox};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("invalid frontend message type {0}")]
    UnknownMessage(u8),
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("authentication failed or the database closed the connection during startup")]
    Startup,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl SessionError {
    pub(crate) fn client_error(&self) -> Option<PgError> {
        match self {
            Self::Frame(FrameError::TooLarge { .. }) => Some(PgError::fatal(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                self.to_string(),
            )),
            Self::Frame(_) | Self::UnknownMessage(_) | Self::Malformed(_) => Some(PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                self.to_string(),
            )),
            Self::Io(_) | Self::Startup => None,
        }
    }
}

pub struct SessionConfig {
    pub client_addr: SocketAddr,
    pub max_message_size: usize,
    /// Hand the database connection back when the client leaves it at rest (the client's
    /// Terminate is then not forwarded).
    pub reuse: bool,
}

/// What the client half tracks for handing the connection back: whether an extended-protocol
/// message went up since the last Sync (the database may hold an open implicit transaction
/// and unanswered messages that no ReadyForQuery has accounted for yet).
#[derive(Default)]
pub(crate) struct ClientEnd {
    pub unsynced: bool,
}

impl ClientEnd {
    /// Notes a client message; true when it must be forwarded (a Terminate is not, when the
    /// connection may be reused).
    pub fn note(&mut self, tag: FrontendTag, reuse: bool) -> bool {
        match tag {
            FrontendTag::Sync => self.unsynced = false,
            FrontendTag::Parse
            | FrontendTag::Bind
            | FrontendTag::Describe
            | FrontendTag::Execute
            | FrontendTag::Close
            | FrontendTag::Flush => self.unsynced = true,
            FrontendTag::Terminate => return !reuse,
            _ => {}
        }
        true
    }
}

#[derive(Default)]
struct PlainState {
    /// When each request that will end in ReadyForQuery (Query, Sync, FunctionCall) was sent.
    awaiting_ready: VecDeque<Instant>,
    /// Transaction status from the last ReadyForQuery; 0 before the first one.
    status: u8,
    client_terminated: bool,
}

impl PlainState {
    fn idle(&self) -> bool {
        self.awaiting_ready.is_empty() && self.status == b'I'
    }
}

fn lock(shared: &Mutex<PlainState>) -> std::sync::MutexGuard<'_, PlainState> {
    // A poisoned lock only means the other half panicked; the state is still usable.
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Relays one session until either side ends it or shutdown finds it idle.
pub async fn run(
    client: MaybeTls,
    upstream: SplitConnection,
    config: SessionConfig,
    shutdown: watch::Receiver<bool>,
) -> Option<HandedBack> {
    let (mut client_read, mut client_write) = client.split();
    let SplitConnection {
        read: mut server_read,
        write: mut server_write,
        pending: mut server_buf,
    } = upstream;
    let shared = Mutex::new(PlainState::default());
    let mut end = ClientEnd::default();
    let (fatal_tx, fatal_rx) = oneshot::channel::<Box<PgError>>();
    // Pinned where they are made: moved into `drive` by value they would take their room
    // in this future twice (an async fn keeps its arguments beside its locals).
    // The halves' futures end here, before the connection is handed back.
    let left = {
        let upstream_bound = pin!(client_to_server(
            &mut client_read,
            &mut server_write,
            &shared,
            &config,
            &mut end,
        ));
        let client_bound = pin!(server_to_client(
            &mut server_read,
            &mut client_write,
            &mut server_buf,
            &shared,
            fatal_rx,
            shutdown,
            &config,
        ));
        drive(upstream_bound, client_bound, fatal_tx, config.client_addr).await
    };
    let at_rest = lock(&shared).idle() && !end.unsynced;
    (config.reuse && left).then_some(HandedBack {
        connection: SplitConnection {
            read: server_read,
            write: server_write,
            pending: server_buf,
        },
        at_rest,
    })
}

/// Runs a session's two halves until either ends. When the client half fails with an error
/// the client should see, the server half delivers it at a frame boundary before the end.
/// The halves are borrowed, pinned by the caller: every session's task holds its future for
/// as long as it is open, and two copies of each half would be most of it.
pub(crate) async fn drive<U, C>(
    upstream_bound: Pin<&mut U>,
    mut client_bound: Pin<&mut C>,
    fatal: oneshot::Sender<Box<PgError>>,
    client: SocketAddr,
) -> bool
where
    U: Future<Output = Result<(), SessionError>>,
    C: Future<Output = Result<(), SessionError>>,
{
    let upstream_bound = async move {
        let result = upstream_bound.await;
        if let Err(e) = &result {
            if let Some(error) = e.client_error() {
                metrics::get().error(ErrorKind::Protocol);
                tracing::warn!(client = %client, error = %e, "closing client connection");
                // The server half may be gone already; then nobody is left to tell.
                let _ = fatal.send(Box::new(error));
            }
        }
        result
    };
    let mut upstream_bound = pin!(upstream_bound);
    tokio::select! {
        result = &mut upstream_bound => {
            if result.is_err() {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), &mut client_bound).await;
                return false;
            }
            true
        }
        _ = &mut client_bound => false,
    }
}

async fn client_to_server(
    reader: &mut ReadHalf,
    writer: &mut WriteHalf,
    shared: &Mutex<PlainState>,
    config: &SessionConfig,
    end: &mut ClientEnd,
) -> Result<(), SessionError> {
    let metrics = metrics::get();
    let mut buf = new_buffer();
    let mut out = Outbox::default();
    loop {
        let n = read_more(reader, &mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        metrics.bytes_from_client.increment(n as u64);
        let mut terminated = false;
        drain_frames(&mut buf, config.max_message_size, &mut out, |frame| {
            let tag = FrontendTag::of(frame).map_err(SessionError::UnknownMessage)?;
            let forward = end.note(tag, config.reuse);
            if tag.awaits_ready() {
                lock(shared).awaiting_ready.push_back(Instant::now());
                metrics.queries.increment(1);
            } else if tag == FrontendTag::Terminate {
                terminated = true;
                lock(shared).client_terminated = true;
            }
            Ok::<_, SessionError>(if forward {
                Action::Forward
            } else {
                Action::Drop
            })
        })?;
        out.flush_to(writer.as_mut()).await?;
        if terminated {
            return Ok(());
        }
    }
}

/// The server half's wait for more bytes from the database, shared by both relays. A FATAL
/// error the client half asks to deliver, shutdown once the session is idle, and a database
/// that went away all end the session here, with the client told why.
pub(crate) struct ServerWait {
    /// Polled only until it yields: a value or the client half's end both end the session.
    fatal: oneshot::Receiver<Box<PgError>>,
    shutdown: watch::Receiver<bool>,
    shutting_down: bool,
    client: SocketAddr,
}

impl ServerWait {
    pub(crate) fn new(
        fatal: oneshot::Receiver<Box<PgError>>,
        shutdown: watch::Receiver<bool>,
        client: SocketAddr,
    ) -> Self {
        let shutting_down = shutdown.borrow().to_owned();
        Self {
            fatal,
            shutdown,
            shutting_down,
            client,
        }
    }

    /// Reads more from the database into `buf`; `None` once the session must end. `idle`
    /// says whether shutdown may close the session now; `expected_close` whether the
    /// database closing would be expected (the client said Terminate, or the database sent
    /// a FATAL error).
    pub(crate) async fn read(
        &mut self,
        reader: &mut ReadHalf,
        writer: &mut WriteHalf,
        buf: &mut bytes::BytesMut,
        idle: impl Fn() -> bool,
        expected_close: impl Fn() -> bool,
    ) -> Result<Option<usize>, SessionError> {
        loop {
            if self.shutting_down && idle() {
                let error = PgError::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "terminating connection because pgveil is shutting down",
                );
                send_error(writer, &error).await?;
                return Ok(None);
            }
            let n = tokio::select! {
                biased;
                error = &mut self.fatal => {
                    if let Ok(error) = error {
                        send_error(writer, &error).await?;
                    }
                    return Ok(None);
                }
                changed = self.shutdown.changed(), if !self.shutting_down => {
                    // A dropped sender means the server is gone: shut down as well.
                    self.shutting_down = changed.is_err() || *self.shutdown.borrow();
                    continue;
                }
                n = read_more(reader, buf) => n,
            };
            let n = match n {
                Ok(n) => n,
                Err(e) if expected_close() => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(client = %self.client, error = %e, "lost the database connection");
                    0
                }
            };
            if n == 0 {
                if !expected_close() {
                    metrics::get().error(ErrorKind::UpstreamLost);
                    let error = PgError::fatal(
                        sqlstate::CONNECTION_FAILURE,
                        "pgveil: the database connection was lost",
                    );
                    send_error(writer, &error).await?;
                }
                return Ok(None);
            }
            metrics::get().bytes_from_server.increment(n as u64);
            return Ok(Some(n));
        }
    }
}

async fn send_error(writer: &mut WriteHalf, error: &PgError) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    writer.write_all(&error.encode()).await?;
    writer.flush().await
}

/// `buf` starts with what was read from the database before the relay (the end of the
/// login), and keeps what was read and not yet relayed when the session ends.
async fn server_to_client(
    reader: &mut ReadHalf,
    writer: &mut WriteHalf,
    buf: &mut bytes::BytesMut,
    shared: &Mutex<PlainState>,
    fatal: oneshot::Receiver<Box<PgError>>,
    shutdown: watch::Receiver<bool>,
    config: &SessionConfig,
) -> Result<(), SessionError> {
    let metrics = metrics::get();
    let mut out = Outbox::default();
    let mut upstream_said_fatal = false;
    let mut wait = ServerWait::new(fatal, shutdown, config.client_addr);
    let mut primed = !buf.is_empty();
    loop {
        if !std::mem::take(&mut primed) {
            let read = wait
                .read(
                    reader,
                    writer,
                    buf,
                    || lock(shared).idle(),
                    || upstream_said_fatal || lock(shared).client_terminated,
                )
                .await?;
            if read.is_none() {
                return Ok(());
            }
        }
        drain_frames(buf, usize::MAX >> 1, &mut out, |frame| {
            Ok::<_, SessionError>(match BackendMessage::decode(frame) {
                BackendMessage::ReadyForQuery(status) => {
                    let mut state = lock(shared);
                    if let Some(sent) = state.awaiting_ready.pop_front() {
                        metrics.query_seconds.record(sent.elapsed().as_secs_f64());
                    }
                    state.status = status;
                    Action::Forward
                }
                BackendMessage::ErrorResponse(error) => {
                    metrics.error(ErrorKind::Database);
                    upstream_said_fatal |= error.is_fatal();
                    Action::Forward
                }
                BackendMessage::Authentication(request) => request
                    .without_channel_binding()
                    .map_or(Action::Forward, Action::Replace),
                _ => Action::Forward,
            })
        })?;
        out.flush_to(writer.as_mut()).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_messages_leave_the_connection_unsynced_until_sync() {
        let mut end = ClientEnd::default();
        assert!(end.note(FrontendTag::Query, true));
        assert!(!end.unsynced);
        for tag in [FrontendTag::Parse, FrontendTag::Bind, FrontendTag::Execute] {
            assert!(end.note(tag, true));
            assert!(end.unsynced, "{tag:?}");
            end.note(FrontendTag::Sync, true);
            assert!(!end.unsynced);
        }
        end.note(FrontendTag::Flush, true);
        end.note(FrontendTag::Query, true);
        assert!(end.unsynced, "only Sync ends an extended batch");
    }

    #[test]
    fn terminate_is_kept_back_only_when_the_connection_may_be_reused() {
        let mut end = ClientEnd::default();
        assert!(!end.note(FrontendTag::Terminate, true));
        assert!(end.note(FrontendTag::Terminate, false));
    }
}
