//! One terminated login: the client's exchange with pgveil, then pgveil's with the database
//! as the same user, or a database connection of an earlier client of the same login, reset
//! ([`super::reuse`]). The client is told AuthenticationOk only once the database connection
//! is ready; pgveil reads the login's end itself (ParameterStatus, BackendKeyData,
//! ReadyForQuery) and hands the session those messages to relay, with a cancel key of its own
//! in place of the database's ([`super::cancel`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use zeroize::Zeroizing;

use super::auth_query::{Lookup, LookupError, VerifierSource};
use super::cancel::{BackendKey, CancelKeys};
use super::md5;
use super::reuse::{encode_welcome, Lease, ServerPool, Welcome};
use super::scram::{
    Binding, ClientExchange, Credentials, ScramError, ServerExchange, SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
};
use super::verifier::{Md5Hash, ScramVerifier, Verifier};
use crate::config::UpstreamConfig;
use crate::metrics::{self, ErrorKind};
use crate::net::auth::{
    decode_password, decode_sasl_initial, encode_auth, encode_password_message,
    encode_sasl_initial, encode_sasl_mechanisms, error_fields, read_message, sasl_mechanisms,
    AuthMessageError, Message, AUTH_CLEARTEXT, AUTH_MD5, AUTH_OK, AUTH_SASL, AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL, MAX_AUTH_MESSAGE,
};
use crate::net::backend::BackendMessage;
use crate::net::startup::StartupMessage;
use crate::net::stream::{HandedBack, MaybeTls, SplitConnection};
use crate::net::tls::end_point_hash;
use crate::net::upstream::{Connector, UpstreamError};
use crate::pgerror::{sqlstate, PgError};

/// PostgreSQL's authentication_timeout.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest message the database may send during login (an ErrorResponse with its detail).
const MAX_UPSTREAM_MESSAGE: usize = 1 << 20;
/// Where `auth_user`'s password comes from, if the database asks for one.
pub const AUTH_PASSWORD_ENV: &str = "PGVEIL_AUTH_PASSWORD";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the client closed the connection during authentication")]
    ClientClosed,
    #[error("client: {0}")]
    ClientMessage(AuthMessageError),
    #[error("expected a password or SASL response, got message type '{0}'")]
    UnexpectedMessage(char),
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    #[error("{0}")]
    Scram(ScramError),
    #[error("password authentication failed (md5)")]
    Md5Rejected,
    #[error("{0}")]
    Lookup(LookupError),
    #[error("{0}")]
    Connect(UpstreamError),
    #[error("the database refused the login: {message} (SQLSTATE {code})")]
    Database {
        code: String,
        message: String,
        frame: Bytes,
        before_password: bool,
    },
    #[error("the database asks for {0} authentication for this login, which auth = \"scram\" cannot answer")]
    Method(&'static str),
    #[error("logging in to the database failed: {0}")]
    UpstreamScram(ScramError),
    #[error("the database broke the login protocol: {0}")]
    UpstreamProtocol(String),
    #[error("the database connection failed during login: {0}")]
    UpstreamIo(AuthMessageError),
    #[error("the login did not complete within {0:?}")]
    Timeout(Duration),
}

impl AuthError {
    /// What the client is told, where the protocol still allows telling it anything. A wrong
    /// password and an unknown user get the very same answer.
    pub fn client_error(&self, user: &str) -> Option<Bytes> {
        let fatal = |code, message: String| Some(PgError::fatal(code, message).encode());
        match self {
            Self::ClientClosed
            | Self::ClientMessage(AuthMessageError::Closed | AuthMessageError::Io(_)) => None,
            Self::ClientMessage(_) | Self::UnexpectedMessage(_) => {
                fatal(sqlstate::PROTOCOL_VIOLATION, self.to_string())
            }
            Self::NoUser => fatal(sqlstate::INVALID_AUTHORIZATION, self.to_string()),
            Self::Scram(ScramError::Rejected) | Self::Md5Rejected => fatal(
                sqlstate::INVALID_PASSWORD,
                format!("password authentication failed for user \"{user}\""),
            ),
            Self::Scram(e) => fatal(e.sqlstate(), e.to_string()),
            Self::Lookup(e) if e.is_login() => fatal(
                sqlstate::CONNECTION_FAILURE,
                "pgveil cannot look up logins: its auth_user cannot log in to the database (pgveil's log says why)".into(),
            ),
            Self::Lookup(_) => fatal(
                sqlstate::INVALID_AUTHORIZATION,
                "pgveil cannot look up this login: auth_query failed (pgveil's log says why)".into(),
            ),
            Self::Connect(e) => fatal(sqlstate::CONNECTION_FAILURE, format!("pgveil: {e}")),
            Self::Database {
                code,
                message,
                before_password: true,
                ..
            } if code == sqlstate::INVALID_AUTHORIZATION => fatal(
                sqlstate::INVALID_AUTHORIZATION,
                format!("{message} (pgveil: the database refused the login before any password exchange; auth = \"scram\" terminates password authentication only and presents no client certificate)"),
            ),
            Self::Database { frame, .. } => Some(frame.clone()),
            Self::Method(_) | Self::UpstreamScram(_) => {
                fatal(sqlstate::INVALID_AUTHORIZATION, format!("pgveil: {self}"))
            }
            Self::UpstreamProtocol(_) => fatal(sqlstate::PROTOCOL_VIOLATION, format!("pgveil: {self}")),
            Self::UpstreamIo(_) | Self::Timeout(_) => {
                fatal(sqlstate::CONNECTION_FAILURE, format!("pgveil: {self}"))
            }
        }
    }
}

/// What the client proved; dropped (and wiped) once the database has accepted the login.
enum Proof {
    Scram {
        credentials: Credentials,
        server_final: String,
    },
    Md5(Md5Hash),
}

/// Terminates logins for `auth = "scram"`.
pub struct Terminator {
    source: VerifierSource,
    /// Derives mock verifiers; lives only in this process.
    mock_secret: Zeroizing<[u8; 32]>,
    connector: Connector,
    /// Database connections kept for the next client of the same login.
    pool: ServerPool,
    /// The cancel keys clients hold, mapped to their backends'.
    cancel: Arc<CancelKeys>,
}

impl Terminator {
    /// `auth_user`'s password comes from `PGVEIL_AUTH_PASSWORD`, when set.
    pub fn new(upstream: &UpstreamConfig, connector: Connector) -> Self {
        use rand::RngCore;
        let password = std::env::var(AUTH_PASSWORD_ENV)
            .ok()
            .filter(|p| !p.is_empty())
            .map(Zeroizing::new);
        let user = upstream.auth_user.clone().unwrap_or_default();
        let mut mock_secret = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut mock_secret[..]);
        Self {
            source: VerifierSource::new(upstream, user, password),
            mock_secret,
            connector,
            pool: ServerPool::new(upstream.reuse),
            cancel: Arc::new(CancelKeys::default()),
        }
    }

    /// Forwards a client's CancelRequest to the backend its key maps to; a key no client
    /// connected now holds is ignored, as PostgreSQL ignores one.
    pub async fn cancel(&self, pid: u32, secret: &[u8]) -> Result<(), UpstreamError> {
        let Some(matched) = self.cancel.matching(pid, secret) else {
            tracing::debug!("cancel request with a key no client holds: ignored");
            return Ok(());
        };
        self.connector
            .cancel(matched.backend.pid, &matched.backend.secret)
            .await
    }

    /// The end of a client's session: its database connection, when the session handed it
    /// back, is reset and kept for the next client of the same login, or closed.
    pub async fn release(&self, lease: Lease, connection: Option<HandedBack>, stopping: bool) {
        self.pool.release(lease, connection, stopping).await;
    }

    /// Closes kept connections past their idle time or lifetime (all of them when `all`).
    pub async fn reap(&self, all: bool) {
        self.pool.reap(all).await;
    }

    /// Authenticates the client and logs in to the database as the same user. Some: the
    /// database connection, its pending bytes the messages the client is to be relayed
    /// (AuthenticationOk through ReadyForQuery), and its lease, for [`Self::release`]. None:
    /// the client has been told why, where it could be, and should be dropped.
    pub async fn login(
        &self,
        client: &mut MaybeTls,
        startup: &StartupMessage,
        client_addr: SocketAddr,
        tls_end_point: Option<&[u8]>,
    ) -> Option<(SplitConnection, Lease)> {
        let result = tokio::time::timeout(LOGIN_TIMEOUT, self.run(client, startup, tls_end_point))
            .await
            .unwrap_or(Err(AuthError::Timeout(LOGIN_TIMEOUT)));
        let error = match result {
            Ok(upstream) => return Some(upstream),
            Err(e) => e,
        };
        let user = startup.user();
        match &error {
            AuthError::Lookup(_) | AuthError::Connect(_) => {
                metrics::get().error(ErrorKind::UpstreamConnect);
                tracing::error!(client = %client_addr, user, error = %error, "cannot log the client in");
            }
            AuthError::ClientClosed => {
                tracing::debug!(client = %client_addr, user, "client left during authentication");
            }
            _ => {
                metrics::get().error(ErrorKind::Auth);
                tracing::info!(client = %client_addr, user, error = %error, "login refused");
            }
        }
        if let Some(frame) = error.client_error(user) {
            let _ = client.write_all(&frame).await;
            let _ = client.flush().await;
        }
        let _ = client.shutdown().await;
        None
    }

    async fn run(
        &self,
        client: &mut MaybeTls,
        startup: &StartupMessage,
        tls_end_point: Option<&[u8]>,
    ) -> Result<(SplitConnection, Lease), AuthError> {
        let user = startup.user();
        if user.is_empty() {
            return Err(AuthError::NoUser);
        }
        let database = startup.database();
        // A kept connection is taken only after a lookup that bypassed the cache.
        let key = self.pool.key_for(startup);
        let reuse = key.as_ref().is_some_and(|key| self.pool.has_idle(key));
        let lookup = self
            .source
            .lookup(database, user, reuse)
            .await
            .map_err(AuthError::Lookup)?;
        let proof = match self
            .authenticate(client, user, &lookup, tls_end_point)
            .await
        {
            Ok(proof) => proof,
            Err(e) => {
                match (&*lookup, &e) {
                    (Lookup::Found(_), _) => self.source.forget(database, user),
                    (Lookup::NoPassword, AuthError::Scram(ScramError::Rejected)) => {
                        tracing::warn!(user, "role has no SCRAM or md5 password: the database authenticates it another way (trust, cert, ...), which auth = \"scram\" cannot terminate; login refused");
                    }
                    (Lookup::Unknown, AuthError::Scram(ScramError::Rejected)) => {
                        tracing::info!(user, "no such role");
                    }
                    _ => {}
                }
                return Err(e);
            }
        };
        let mut reply = BytesMut::new();
        if let Proof::Scram { server_final, .. } = &proof {
            reply.extend_from_slice(&encode_auth(AUTH_SASL_FINAL, server_final.as_bytes()));
        }
        reply.extend_from_slice(&encode_auth(AUTH_OK, &[]));
        let taken = match &key {
            Some(key) if reuse => self.pool.take(key).await,
            _ => None,
        };
        let (mut connection, welcome, origin) = match taken {
            Some(taken) => {
                metrics::get().upstream_logins_reused.increment(1);
                (taken.connection, taken.welcome, taken.lease_parts)
            }
            None => {
                let mut upstream = match self.open_upstream(startup, &proof).await {
                    Ok(upstream) => upstream,
                    Err(e) => {
                        self.source.forget(database, user);
                        return Err(e);
                    }
                };
                let welcome = finish_login(&mut upstream, &mut reply).await?;
                metrics::get().upstream_logins_new.increment(1);
                let origin = (Instant::now(), std::thread::current().id());
                (
                    SplitConnection::new(upstream, BytesMut::new()),
                    welcome,
                    origin,
                )
            }
        };
        drop(proof);
        let registration = self.cancel.register(welcome.backend.clone());
        reply.extend_from_slice(&encode_welcome(
            &welcome.statuses,
            registration.client_key(),
        ));
        reply.extend_from_slice(&connection.pending);
        connection.pending = reply;
        let lease = ServerPool::lease(key, startup, &welcome, origin, registration);
        Ok((connection, lease))
    }

    /// The client's side: SCRAM against the verifier (a mock one for a login that cannot
    /// succeed, so the exchange looks the same), or md5 where that is what is stored.
    async fn authenticate(
        &self,
        client: &mut MaybeTls,
        user: &str,
        lookup: &Lookup,
        tls_end_point: Option<&[u8]>,
    ) -> Result<Proof, AuthError> {
        let (verifier, mock) = match lookup {
            Lookup::Found(Verifier::Md5(hash)) => return md5_exchange(client, hash).await,
            Lookup::Found(Verifier::Scram(verifier)) => (verifier.clone(), false),
            Lookup::NoPassword | Lookup::Unknown => {
                (ScramVerifier::mock(&self.mock_secret, user), true)
            }
        };
        let mechanisms: &[&str] = match tls_end_point {
            Some(_) => &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256],
            None => &[SCRAM_SHA_256],
        };
        send(client, &encode_sasl_mechanisms(mechanisms)).await?;
        let initial = read_client(client).await?;
        let (mechanism, client_first) =
            decode_sasl_initial(&initial.body).map_err(AuthError::ClientMessage)?;
        let (exchange, server_first) =
            ServerExchange::start(mechanism, client_first, tls_end_point, verifier, mock)
                .map_err(AuthError::Scram)?;
        send(
            client,
            &encode_auth(AUTH_SASL_CONTINUE, server_first.as_bytes()),
        )
        .await?;
        let client_final = read_client(client).await?;
        let (server_final, credentials) = exchange
            .finish(&client_final.body)
            .map_err(AuthError::Scram)?;
        Ok(Proof::Scram {
            credentials,
            server_final,
        })
    }

    /// The database's side: the client's startup packet, then whatever the database asks,
    /// answered from the proof.
    async fn open_upstream(
        &self,
        startup: &StartupMessage,
        proof: &Proof,
    ) -> Result<MaybeTls, AuthError> {
        let mut upstream = self.connector.connect().await.map_err(AuthError::Connect)?;
        write_upstream(&mut upstream, &startup.raw).await?;
        let mut asked = false;
        loop {
            let message = read_upstream(&mut upstream).await?;
            match (message.tag, message.auth_code()) {
                (b'R', Some(AUTH_OK)) => return Ok(upstream),
                (b'R', Some(AUTH_SASL)) => {
                    asked = true;
                    let Proof::Scram { credentials, .. } = proof else {
                        return Err(AuthError::Method("SCRAM-SHA-256 (the role's stored password is md5)"));
                    };
                    upstream_scram(&mut upstream, message.auth_data(), credentials).await?;
                }
                (b'R', Some(AUTH_MD5)) => {
                    asked = true;
                    let Proof::Md5(hash) = proof else {
                        return Err(AuthError::Method("md5 (the role's stored password is SCRAM)"));
                    };
                    let salt: [u8; 4] = message.auth_data().try_into().map_err(|_| {
                        AuthError::UpstreamProtocol("md5 request without a 4-byte salt".into())
                    })?;
                    let answer = md5::response(hash, &salt);
                    write_upstream(&mut upstream, &encode_password_message(&answer, true)).await?;
                }
                (b'R', Some(AUTH_CLEARTEXT)) => return Err(AuthError::Method("cleartext password")),
                (b'R', Some(7..=9)) => return Err(AuthError::Method("GSSAPI or SSPI")),
                (b'E', _) => return Err(database_error(&message, !asked)),
                (b'N', _) => {}
                (b'v', _) => {
                    return Err(AuthError::UpstreamProtocol(
                        "protocol option negotiation (NegotiateProtocolVersion) is not supported with auth = \"scram\"".into(),
                    ))
                }
                (tag, _) => {
                    return Err(AuthError::UpstreamProtocol(format!(
                        "unexpected message type '{}' during login",
                        char::from(tag)
                    )))
                }
            }
        }
    }
}

/// The rest of the database's login after AuthenticationOk, through ReadyForQuery: the
/// parameter values and the backend's key. Notices are added to `reply` for the client.
async fn finish_login(upstream: &mut MaybeTls, reply: &mut BytesMut) -> Result<Welcome, AuthError> {
    let mut statuses = Vec::new();
    let mut backend = None;
    loop {
        let message = read_upstream(upstream).await?;
        let frame = message.frame();
        match BackendMessage::decode(&frame) {
            BackendMessage::ParameterStatus(parameter) => statuses.push((
                String::from_utf8_lossy(parameter.name).into_owned(),
                String::from_utf8_lossy(parameter.value).into_owned(),
            )),
            BackendMessage::BackendKeyData(Some(pid)) if message.body.len() >= 8 => {
                backend = Some(BackendKey {
                    pid,
                    secret: message.body[4..].to_vec(),
                });
            }
            BackendMessage::NoticeResponse => reply.extend_from_slice(&frame),
            BackendMessage::ErrorResponse(_) => return Err(database_error(&message, false)),
            BackendMessage::ReadyForQuery(b'I') => {
                let backend = backend.ok_or_else(|| {
                    AuthError::UpstreamProtocol("no BackendKeyData before ReadyForQuery".into())
                })?;
                return Ok(Welcome { statuses, backend });
            }
            _ => {
                return Err(AuthError::UpstreamProtocol(format!(
                    "unexpected message type '{}' after AuthenticationOk",
                    char::from(message.tag)
                )))
            }
        }
    }
}

/// SCRAM with the database, bound to its certificate when it offers `SCRAM-SHA-256-PLUS`.
async fn upstream_scram(
    upstream: &mut MaybeTls,
    offer: &[u8],
    credentials: &Credentials,
) -> Result<(), AuthError> {
    let mechanisms = sasl_mechanisms(offer);
    let offers = |name: &str| mechanisms.contains(&name.as_bytes());
    let binding = match upstream.peer_certificate() {
        None => Binding::Unsupported,
        Some(cert) if offers(SCRAM_SHA_256_PLUS) => {
            end_point_hash(cert).map_or(Binding::Unsupported, Binding::EndPoint)
        }
        Some(_) => Binding::NotOffered,
    };
    if !offers(SCRAM_SHA_256) && !matches!(binding, Binding::EndPoint(_)) {
        return Err(AuthError::Method(
            "a SASL mechanism other than SCRAM-SHA-256",
        ));
    }
    let (exchange, mechanism, client_first) = ClientExchange::start(binding);
    write_upstream(
        upstream,
        &encode_sasl_initial(mechanism, client_first.as_bytes()),
    )
    .await?;
    let server_first = expect_auth(upstream, AUTH_SASL_CONTINUE).await?;
    let (client_final, expected) = exchange
        .respond(server_first.auth_data(), credentials)
        .map_err(AuthError::UpstreamScram)?;
    write_upstream(
        upstream,
        &encode_password_message(client_final.as_bytes(), false),
    )
    .await?;
    let server_final = expect_auth(upstream, AUTH_SASL_FINAL).await?;
    ClientExchange::verify_final(server_final.auth_data(), &expected)
        .map_err(AuthError::UpstreamScram)
}

async fn md5_exchange(client: &mut MaybeTls, hash: &Md5Hash) -> Result<Proof, AuthError> {
    let salt = md5::salt();
    send(client, &encode_auth(AUTH_MD5, &salt)).await?;
    let answer = read_client(client).await?;
    let answer = decode_password(&answer.body).map_err(AuthError::ClientMessage)?;
    if md5::check(hash, &salt, answer) {
        Ok(Proof::Md5(hash.clone()))
    } else {
        Err(AuthError::Md5Rejected)
    }
}

async fn send(client: &mut MaybeTls, frame: &[u8]) -> Result<(), AuthError> {
    client
        .write_all(frame)
        .await
        .map_err(|_| AuthError::ClientClosed)?;
    client.flush().await.map_err(|_| AuthError::ClientClosed)
}

/// The client's next answer: a `p` message (Terminate or a closed socket ends the login).
async fn read_client(client: &mut MaybeTls) -> Result<Message, AuthError> {
    let message = read_message(client, MAX_AUTH_MESSAGE)
        .await
        .map_err(|e| match e {
            AuthMessageError::Closed | AuthMessageError::Io(_) => AuthError::ClientClosed,
            e => AuthError::ClientMessage(e),
        })?;
    match message.tag {
        b'p' => Ok(message),
        b'X' => Err(AuthError::ClientClosed),
        tag => Err(AuthError::UnexpectedMessage(char::from(tag))),
    }
}

async fn write_upstream(upstream: &mut MaybeTls, frame: &[u8]) -> Result<(), AuthError> {
    let io = |e| AuthError::UpstreamIo(AuthMessageError::Io(e));
    upstream.write_all(frame).await.map_err(io)?;
    upstream.flush().await.map_err(io)
}

async fn read_upstream(upstream: &mut MaybeTls) -> Result<Message, AuthError> {
    read_message(upstream, MAX_UPSTREAM_MESSAGE)
        .await
        .map_err(AuthError::UpstreamIo)
}

/// The next Authentication message, which must carry `code`.
async fn expect_auth(upstream: &mut MaybeTls, code: u32) -> Result<Message, AuthError> {
    loop {
        let message = read_upstream(upstream).await?;
        match (message.tag, message.auth_code()) {
            (b'R', Some(c)) if c == code => return Ok(message),
            (b'E', _) => return Err(database_error(&message, false)),
            (b'N', _) => {}
            (tag, _) => {
                return Err(AuthError::UpstreamProtocol(format!(
                    "expected authentication request {code}, got message type '{}'",
                    char::from(tag)
                )))
            }
        }
    }
}

fn database_error(message: &Message, before_password: bool) -> AuthError {
    let (code, text) = error_fields(&message.body);
    AuthError::Database {
        code,
        message: text,
        frame: message.frame(),
        before_password,
    }
}
