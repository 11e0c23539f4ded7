//! One client connection, relayed to its own upstream connection.
//!
//! Each direction runs as its own future (polled by one task), so a client that is busy
//! writing never stalls the rows coming back and vice versa; each direction has its own
//! backpressure. The two halves share only a small, briefly locked state: the queue of
//! requests awaiting their ReadyForQuery, and the transaction status.

pub mod introspect;
pub mod protected;
pub mod recording;
pub mod relay;
pub mod startup;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use crate::metrics::{self, ErrorKind};
use crate::net::frame::{read_cstr, FrameError};
use crate::net::stream::{MaybeTls, ReadHalf, WriteHalf};
use crate::pgerror::{sqlstate, PgError};
use relay::{drain_frames, new_buffer, Action, Outbox};

/// Message types a frontend may send once started; anything else is refused rather than
/// forwarded, since pgveil cannot know what it would do.
pub(crate) const FRONTEND_TAGS: &[u8] = b"QPBEDCSHFXdcfp";

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
    upstream: MaybeTls,
    config: SessionConfig,
    shutdown: watch::Receiver<bool>,
) {
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = upstream.split();
    let shared = Mutex::new(PlainState::default());
    let (fatal_tx, fatal_rx) = mpsc::channel::<PgError>(1);
    let upstream_bound = client_to_server(&mut client_read, &mut server_write, &shared, &config);
    let client_bound = server_to_client(
        &mut server_read,
        &mut client_write,
        &shared,
        fatal_rx,
        shutdown,
        &config,
    );
    drive(upstream_bound, client_bound, fatal_tx, config.client_addr).await;
}

/// Runs a session's two halves until either ends. When the client half fails with an error
/// the client should see, the server half delivers it at a frame boundary before the end.
pub(crate) async fn drive(
    upstream_bound: impl std::future::Future<Output = Result<(), SessionError>>,
    client_bound: impl std::future::Future<Output = Result<(), SessionError>>,
    fatal: mpsc::Sender<PgError>,
    client: SocketAddr,
) {
    let upstream_bound = async {
        let result = upstream_bound.await;
        if let Err(e) = &result {
            if let Some(error) = e.client_error() {
                metrics::get().error(ErrorKind::Protocol);
                tracing::warn!(client = %client, error = %e, "closing client connection");
                let _ = fatal.send(error).await;
            }
        }
        result
    };
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

async fn client_to_server(
    reader: &mut ReadHalf,
    writer: &mut WriteHalf,
    shared: &Mutex<PlainState>,
    config: &SessionConfig,
) -> Result<(), SessionError> {
    let metrics = metrics::get();
    let mut buf = new_buffer();
    let mut out = Outbox::default();
    loop {
        let n = reader.read_buf(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        metrics.bytes_from_client.increment(n as u64);
        let mut terminated = false;
        drain_frames(&mut buf, config.max_message_size, &mut out, |frame| {
            match frame[0] {
                b'Q' | b'S' | b'F' => {
                    lock(shared).awaiting_ready.push_back(Instant::now());
                    metrics.queries.increment(1);
                }
                b'X' => {
                    terminated = true;
                    lock(shared).client_terminated = true;
                }
                tag if !FRONTEND_TAGS.contains(&tag) => {
                    return Err(SessionError::UnknownMessage(tag))
                }
                _ => {}
            }
            Ok(Action::Forward)
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
    fatal: mpsc::Receiver<PgError>,
    shutdown: watch::Receiver<bool>,
    shutting_down: bool,
    client: SocketAddr,
}

impl ServerWait {
    pub(crate) fn new(
        fatal: mpsc::Receiver<PgError>,
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
                error = self.fatal.recv() => {
                    if let Some(error) = error {
                        send_error(writer, &error).await?;
                    }
                    return Ok(None);
                }
                changed = self.shutdown.changed(), if !self.shutting_down => {
                    // A dropped sender means the server is gone: shut down as well.
                    self.shutting_down = changed.is_err() || *self.shutdown.borrow();
                    continue;
                }
                n = reader.read_buf(buf) => n,
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

async fn server_to_client(
    reader: &mut ReadHalf,
    writer: &mut WriteHalf,
    shared: &Mutex<PlainState>,
    fatal: mpsc::Receiver<PgError>,
    shutdown: watch::Receiver<bool>,
    config: &SessionConfig,
) -> Result<(), SessionError> {
    let metrics = metrics::get();
    let mut buf = new_buffer();
    let mut out = Outbox::default();
    let mut upstream_said_fatal = false;
    let mut wait = ServerWait::new(fatal, shutdown, config.client_addr);
    loop {
        let read = wait
            .read(
                reader,
                writer,
                &mut buf,
                || lock(shared).idle(),
                || upstream_said_fatal || lock(shared).client_terminated,
            )
            .await?;
        if read.is_none() {
            return Ok(());
        }
        drain_frames(&mut buf, usize::MAX >> 1, &mut out, |frame| {
            Ok::<_, SessionError>(match frame[0] {
                b'Z' => {
                    let mut state = lock(shared);
                    if let Some(sent) = state.awaiting_ready.pop_front() {
                        metrics.query_seconds.record(sent.elapsed().as_secs_f64());
                    }
                    state.status = frame.get(5).copied().unwrap_or(b'I');
                    Action::Forward
                }
                b'E' => {
                    metrics.error(ErrorKind::Database);
                    upstream_said_fatal |= is_fatal(&frame[5..]);
                    Action::Forward
                }
                b'R' => match without_channel_binding(frame) {
                    Some(replacement) => Action::Replace(replacement),
                    None => Action::Forward,
                },
                _ => Action::Forward,
            })
        })?;
        out.flush_to(writer.as_mut()).await?;
    }
}

pub(crate) fn is_fatal(body: &[u8]) -> bool {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let mut tail = tail;
        let Some(value) = read_cstr(&mut tail) else {
            break;
        };
        if field == b'V' || field == b'S' {
            return value == b"FATAL" || value == b"PANIC";
        }
        rest = tail;
    }
    false
}

/// AuthenticationSASL lists the mechanisms the database offers. pgveil terminates the
/// client's TLS, so channel binding to the database's certificate can never succeed:
/// `SCRAM-SHA-256-PLUS` is taken off the list.
pub(crate) fn without_channel_binding(frame: &[u8]) -> Option<Bytes> {
    const SASL: [u8; 4] = 10u32.to_be_bytes();
    if frame.len() < 9 || frame[5..9] != SASL {
        return None;
    }
    let mut rest = &frame[9..];
    let mut kept = Vec::new();
    let mut removed = false;
    while let Some(mechanism) = read_cstr(&mut rest) {
        if mechanism.is_empty() {
            break;
        }
        if mechanism == b"SCRAM-SHA-256-PLUS" {
            removed = true;
        } else {
            kept.push(mechanism);
        }
    }
    if !removed {
        return None;
    }
    let body_len: usize = 4 + 4 + kept.iter().map(|m| m.len() + 1).sum::<usize>() + 1;
    let mut out = BytesMut::with_capacity(body_len + 1);
    out.put_u8(b'R');
    out.put_u32(body_len as u32);
    out.put_slice(&SASL);
    for mechanism in kept {
        out.put_slice(mechanism);
        out.put_u8(0);
    }
    out.put_u8(0);
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_binding_is_removed_from_sasl_offers() {
        let mut frame = vec![b'R'];
        let body = b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";
        frame.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        frame.extend_from_slice(body);
        let out = without_channel_binding(&frame).unwrap();
        assert_eq!(&out[5..], b"\0\0\0\x0aSCRAM-SHA-256\0\0");
        assert_eq!(
            u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize + 1,
            out.len()
        );
        assert!(without_channel_binding(&out).is_none());
    }

    #[test]
    fn fatal_errors_are_recognised() {
        assert!(is_fatal(b"SFATAL\0VFATAL\0C28P01\0\0"));
        assert!(!is_fatal(b"SERROR\0VERROR\0C42601\0\0"));
    }
}
