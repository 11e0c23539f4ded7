//! Server connection reuse with `auth = "scram"` (README, "Server connection reuse").
//!
//! pgveil authenticates the client itself there, so a database connection already logged in
//! as a user can serve the next client that proves it is that user, as PgBouncer's session
//! pooling does: no backend fork, no upstream TLS handshake, no upstream SCRAM.
//!
//! Key. A connection is reused only for a startup packet with exactly the same parameters
//! (user, database, options, application_name, ... all of them): PostgreSQL makes the startup
//! parameters the values `RESET ALL` returns to, so a reset connection is what a new login
//! with that packet would be. Replication connections are never reused.
//!
//! Handing back. A session returns its connection only when the client left it at rest
//! (`crate::session`: every request answered, idle outside a transaction, nothing sent since
//! the last Sync, no COPY). The client's cancel key is retired first (see [`super::cancel`]),
//! then the connection is reset with `DISCARD ALL` (prepared statements, portals, cursors,
//! temporary tables, `SET` values including `SET ROLE` and `SET SESSION AUTHORIZATION`,
//! `LISTEN`, advisory locks, cached plans and sequence state) and, pipelined behind it, one
//! query re-reading who the connection is logged in as and every parameter the server
//! reported at login (so the next client is told the values as they are now). Any answer but
//! the expected one (an error, a transaction still open, another user) closes the connection.
//!
//! Taking. The client's password is checked against a verifier `auth_query` returned for this
//! login (never a cached one: no database login follows that would refuse an outdated one, so
//! a changed password or a role `auth_query` no longer returns takes effect at once). A parked
//! connection that sent anything while parked (the server closing it, a
//! notice) is closed instead of used; so is one past `server_idle_timeout_secs` idle or
//! `server_lifetime_secs` old. At most `server_max_idle` are kept; the rest are closed.
//!
//! pgveil's own state of a session (prepared statements, catalog facts, search_path, roles,
//! the `pgveil.*` context) lives in the session and starts anew with each client.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use super::cancel::{BackendKey, Registration};
use crate::config::ServerReuse;
use crate::metrics;
use crate::net::auth::{read_message, AuthMessageError};
use crate::net::backend::BackendMessage;
use crate::net::startup::StartupMessage;
use crate::net::stream::{HandedBack, ReadHalf, SplitConnection};

/// How long the reset may take before the connection is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message accepted while resetting.
const MAX_RESET_MESSAGE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReuseError {
    #[error("reading the reset's answer: {0}")]
    Read(#[from] AuthMessageError),
    #[error("writing the reset: {0}")]
    Write(std::io::Error),
    #[error("unexpected message type '{0}' in the reset's answer")]
    Unexpected(char),
    #[error("the reset connection is not logged in as the user it was opened for")]
    Identity,
    #[error("the server reported a parameter name pgveil will not quote")]
    ParameterName,
    #[error("the reset did not finish within {0:?}")]
    Timeout(Duration),
}

/// Which connections may serve a login: its startup parameters, sorted.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PoolKey(Vec<(String, String)>);

/// What a login's client is told after AuthenticationOk, from the database.
pub struct Welcome {
    /// ParameterStatus values, in the order the server sent them.
    pub statuses: Vec<(String, String)>,
    pub backend: BackendKey,
}

/// A connection a client is using, with what handing it back needs.
pub struct Lease {
    key: Option<PoolKey>,
    user: String,
    /// Parameter names to re-read at reset (those reported at login).
    names: Vec<String>,
    born: Instant,
    home: ThreadId,
    registration: Registration,
}

impl Lease {
    /// The key the client holds for cancel requests.
    pub fn client_key(&self) -> (u32, &[u8]) {
        self.registration.client_key()
    }
}

struct Parked {
    connection: SplitConnection,
    welcome: Welcome,
    born: Instant,
    parked: Instant,
    /// The worker thread whose I/O driver the connection's socket is registered with.
    home: ThreadId,
}

/// The parked connections, by key.
pub struct ServerPool {
    settings: ServerReuse,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    by_key: HashMap<PoolKey, Vec<Parked>>,
    count: usize,
}

/// A connection taken from the pool, ready for the client.
pub struct Taken {
    pub connection: SplitConnection,
    pub welcome: Welcome,
    pub lease_parts: (Instant, ThreadId),
}

impl ServerPool {
    pub fn new(settings: ServerReuse) -> Self {
        Self {
            settings,
            idle: Mutex::new(Idle::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key a login's connection is parked and found under; `None` when it is never
    /// reused.
    pub fn key_for(&self, startup: &StartupMessage) -> Option<PoolKey> {
        if !self.settings.enabled
            || self.settings.max_idle == 0
            || startup.param("replication").is_some()
        {
            return None;
        }
        let mut params = startup.params.clone();
        params.sort();
        Some(PoolKey(params))
    }

    /// The lease of a connection a client is about to use.
    pub fn lease(
        key: Option<PoolKey>,
        startup: &StartupMessage,
        welcome: &Welcome,
        (born, home): (Instant, ThreadId),
        registration: Registration,
    ) -> Lease {
        Lease {
            key,
            user: startup.user().to_string(),
            names: welcome.statuses.iter().map(|(n, _)| n.clone()).collect(),
            born,
            home,
            registration,
        }
    }

    fn fresh(&self, parked: &Parked) -> bool {
        parked.parked.elapsed() < self.settings.idle_timeout
            && parked.born.elapsed() < self.settings.lifetime
    }

    /// A parked connection for `key`, preferring one opened on this thread (its socket is
    /// served by this thread's I/O driver); the most recently parked first, so the others
    /// time out when fewer are needed.
    pub async fn take(&self, key: &PoolKey) -> Option<Taken> {
        let here = std::thread::current().id();
        loop {
            let mut candidate = {
                let mut idle = self.lock();
                let list = idle.by_key.get_mut(key)?;
                let index = list
                    .iter()
                    .rposition(|p| p.home == here)
                    .or(list.len().checked_sub(1))?;
                let parked = list.remove(index);
                let emptied = list.is_empty();
                if emptied {
                    idle.by_key.remove(key);
                }
                idle.count -= 1;
                metrics::get().upstream_idle.decrement(1.0);
                parked
            };
            if self.fresh(&candidate) && quiet(&mut candidate.connection.read) {
                return Some(Taken {
                    connection: candidate.connection,
                    welcome: candidate.welcome,
                    lease_parts: (candidate.born, candidate.home),
                });
            }
            close(candidate.connection).await;
        }
    }

    /// Whether the sessions of a lease may hand their connection back at all.
    pub fn reusable(lease: &Lease) -> bool {
        lease.key.is_some()
    }

    /// Takes back a client's connection: retires its cancel key, then resets and parks the
    /// connection if it was handed back at rest and may be reused, or closes it.
    pub async fn release(&self, lease: Lease, handed: Option<HandedBack>, stopping: bool) {
        let Lease {
            key,
            user,
            names,
            born,
            home,
            registration,
        } = lease;
        let backend = registration.backend().clone();
        registration.retire().await;
        let Some(HandedBack {
            mut connection,
            at_rest,
        }) = handed
        else {
            return;
        };
        let keep = at_rest && !stopping && born.elapsed() < self.settings.lifetime;
        let Some(key) = key.filter(|_| keep) else {
            close(connection).await;
            return;
        };
        let reset = tokio::time::timeout(RESET_TIMEOUT, reset(&mut connection, &user, &names))
            .await
            .unwrap_or(Err(ReuseError::Timeout(RESET_TIMEOUT)));
        let statuses = match reset {
            Ok(statuses) => statuses,
            Err(e) => {
                tracing::info!(error = %e, "database connection not reused");
                close(connection).await;
                return;
            }
        };
        let parked = Parked {
            connection,
            welcome: Welcome { statuses, backend },
            born,
            parked: Instant::now(),
            home,
        };
        let refused = {
            let mut idle = self.lock();
            if idle.count >= self.settings.max_idle {
                Some(parked)
            } else {
                idle.by_key.entry(key).or_default().push(parked);
                idle.count += 1;
                metrics::get().upstream_idle.increment(1.0);
                None
            }
        };
        if let Some(parked) = refused {
            close(parked.connection).await;
        }
    }

    /// Closes parked connections idle or alive for too long; all of them when `all`.
    pub async fn reap(&self, all: bool) {
        let expired: Vec<Parked> = {
            let mut idle = self.lock();
            let mut expired = Vec::new();
            for list in idle.by_key.values_mut() {
                let (keep, old): (Vec<Parked>, Vec<Parked>) =
                    list.drain(..).partition(|p| !all && self.fresh(p));
                *list = keep;
                expired.extend(old);
            }
            idle.by_key.retain(|_, list| !list.is_empty());
            idle.count -= expired.len();
            expired
        };
        metrics::get().upstream_idle.decrement(expired.len() as f64);
        for parked in expired {
            close(parked.connection).await;
        }
    }

    /// Whether a connection is parked for `key` now.
    pub fn has_idle(&self, key: &PoolKey) -> bool {
        self.lock().by_key.contains_key(key)
    }
}

/// Whether a parked connection has sent nothing (an idle server sends nothing unasked; a
/// closed one reads as end of file).
fn quiet(read: &mut ReadHalf) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    matches!(Pin::new(read).poll_read(&mut cx, &mut buf), Poll::Pending)
}

/// Says Terminate and closes, without waiting long for a peer that went away.
pub async fn close(mut connection: SplitConnection) {
    let goodbye = async {
        connection.write.write_all(&[b'X', 0, 0, 0, 4]).await?;
        connection.write.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
}

/// `DISCARD ALL`, then one query for who the connection is and the current value of each
/// parameter in `names`; the values, in `names`' order.
async fn reset(
    connection: &mut SplitConnection,
    user: &str,
    names: &[String],
) -> Result<Vec<(String, String)>, ReuseError> {
    let mut select = String::from("SELECT session_user, current_user");
    for name in names {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(ReuseError::ParameterName);
        }
        select.push_str(", current_setting('");
        select.push_str(name);
        select.push_str("')");
    }
    let mut out = BytesMut::new();
    out.extend_from_slice(&encode_query("DISCARD ALL"));
    out.extend_from_slice(&encode_query(&select));
    connection
        .write
        .write_all(&out)
        .await
        .map_err(ReuseError::Write)?;
    connection.write.flush().await.map_err(ReuseError::Write)?;
    let pending = std::mem::take(&mut connection.pending);
    let mut reader = (&pending[..]).chain(&mut connection.read);
    let values = read_reset_answer(&mut reader).await?;
    let (Some(session_user), Some(current_user)) = (values.first(), values.get(1)) else {
        return Err(ReuseError::Identity);
    };
    if session_user != user || current_user != user || values.len() != names.len() + 2 {
        return Err(ReuseError::Identity);
    }
    Ok(names
        .iter()
        .cloned()
        .zip(values.into_iter().skip(2))
        .collect())
}

/// Reads `DISCARD ALL`'s answer and then the one-row SELECT's; the row's values.
async fn read_reset_answer<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Vec<String>, ReuseError> {
    let mut discarded = false;
    let mut first_done = false;
    let mut values: Option<Vec<String>> = None;
    let mut selected = false;
    loop {
        let message = read_message(reader, MAX_RESET_MESSAGE).await?;
        let frame = message.frame();
        let unexpected = || Err(ReuseError::Unexpected(char::from(message.tag)));
        match BackendMessage::decode(&frame) {
            // Reports of what the reset changed, notices, notifications sent before it.
            BackendMessage::ParameterStatus(_)
            | BackendMessage::NoticeResponse
            | BackendMessage::NotificationResponse => {}
            BackendMessage::CommandComplete(c) if !first_done => {
                if c.tag() != Some(b"DISCARD ALL") {
                    return unexpected();
                }
                discarded = true;
            }
            BackendMessage::ReadyForQuery(b'I') if !first_done && discarded => first_done = true,
            BackendMessage::RowDescription(_) if first_done && values.is_none() => {}
            BackendMessage::DataRow(row) if first_done && values.is_none() => {
                let row = row.values().map_err(|_| ReuseError::Unexpected('D'))?;
                let mut text = Vec::with_capacity(row.len());
                for value in row {
                    let value = value.ok_or(ReuseError::Identity)?;
                    text.push(String::from_utf8_lossy(value).into_owned());
                }
                values = Some(text);
            }
            BackendMessage::CommandComplete(_) if values.is_some() => selected = true,
            BackendMessage::ReadyForQuery(b'I') if selected => {
                return values.ok_or(ReuseError::Unexpected('Z'));
            }
            _ => return unexpected(),
        }
    }
}

fn encode_query(text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 6);
    out.put_u8(b'Q');
    out.put_u32(text.len() as u32 + 5);
    out.put_slice(text.as_bytes());
    out.put_u8(0);
    out.freeze()
}

/// The messages after AuthenticationOk: ParameterStatus for each value, the client's cancel
/// key, ReadyForQuery (idle).
pub fn encode_welcome(statuses: &[(String, String)], (pid, secret): (u32, &[u8])) -> BytesMut {
    let mut out = BytesMut::new();
    for (name, value) in statuses {
        out.put_u8(b'S');
        out.put_u32((name.len() + value.len() + 6) as u32);
        out.put_slice(name.as_bytes());
        out.put_u8(0);
        out.put_slice(value.as_bytes());
        out.put_u8(0);
    }
    out.put_u8(b'K');
    out.put_u32(8 + secret.len() as u32);
    out.put_u32(pid);
    out.put_slice(secret);
    out.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn data_row(values: &[&str]) -> Vec<u8> {
        let mut body = (values.len() as u16).to_be_bytes().to_vec();
        for v in values {
            body.extend_from_slice(&(v.len() as u32).to_be_bytes());
            body.extend_from_slice(v.as_bytes());
        }
        frame(b'D', &body)
    }

    fn answer(discard_tag: &[u8], first_status: u8) -> Vec<u8> {
        let mut bytes = frame(b'S', b"TimeZone\0UTC\0");
        bytes.extend(frame(b'C', discard_tag));
        bytes.extend(frame(b'Z', &[first_status]));
        bytes.extend(frame(b'T', &[0, 0]));
        bytes.extend(data_row(&["alice", "alice", "UTC"]));
        bytes.extend(frame(b'C', b"SELECT 1\0"));
        bytes.extend(frame(b'Z', b"I"));
        bytes
    }

    #[tokio::test]
    async fn reads_the_reset_answer() {
        let bytes = answer(b"DISCARD ALL\0", b'I');
        let values = read_reset_answer(&mut &bytes[..]).await.ok();
        assert_eq!(
            values,
            Some(vec!["alice".into(), "alice".into(), "UTC".into()])
        );
    }

    #[tokio::test]
    async fn refuses_an_error_or_a_transaction() {
        let mut error = frame(b'E', b"SERROR\0C25001\0Mno\0\0");
        error.extend(frame(b'Z', b"T"));
        assert!(read_reset_answer(&mut &error[..]).await.is_err());
        let in_block = answer(b"DISCARD ALL\0", b'T');
        assert!(read_reset_answer(&mut &in_block[..]).await.is_err());
        let other = answer(b"SET\0", b'I');
        assert!(read_reset_answer(&mut &other[..]).await.is_err());
    }

    #[test]
    fn welcome_frames() {
        let welcome = encode_welcome(&[("a".into(), "b".into())], (7, &[1, 2, 3, 4]));
        let mut expected = frame(b'S', b"a\0b\0");
        expected.extend(frame(b'K', &[0, 0, 0, 7, 1, 2, 3, 4]));
        expected.extend(frame(b'Z', b"I"));
        assert_eq!(&welcome[..], &expected[..]);
    }
}
