//! The client side of connection startup: SSL/GSS negotiation, cancel requests and the
//! startup message, up to the point where the session can be relayed.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::startup::{read_startup, StartupError, StartupMessage, StartupPacket};
use super::stream::MaybeTls;
use super::tls::ServerTls;
use crate::pgerror::{sqlstate, PgError};

/// The first byte of a TLS ClientHello: a client using `sslnegotiation=direct`.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error("TLS handshake with client failed: {0}")]
    Tls(std::io::Error),
    #[error("client sent a second SSLRequest")]
    RepeatedSslRequest,
    #[error("client did not use TLS and require_tls is set")]
    TlsRequired,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl HandshakeError {
    /// What the client is told, where the protocol still allows telling it anything.
    pub fn client_error(&self) -> Option<PgError> {
        match self {
            Self::Startup(StartupError::Closed)
            | Self::Startup(StartupError::Io(_))
            | Self::Io(_)
            | Self::Tls(_) => None,
            Self::Startup(e @ StartupError::UnsupportedProtocol { .. }) => Some(PgError::fatal(
                sqlstate::FEATURE_NOT_SUPPORTED,
                e.to_string(),
            )),
            Self::Startup(e) => Some(PgError::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string())),
            Self::RepeatedSslRequest => Some(PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                self.to_string(),
            )),
            Self::TlsRequired => Some(PgError::fatal(
                sqlstate::INVALID_AUTHORIZATION,
                "pgveil requires an encrypted connection (connect with sslmode=require)",
            )),
        }
    }
}

pub enum Accepted {
    /// A client ready to log in.
    Session {
        stream: MaybeTls,
        startup: StartupMessage,
        /// `tls-server-end-point` data of the certificate this client was served, when it
        /// uses TLS: what `SCRAM-SHA-256-PLUS` binds to.
        tls_end_point: Option<Arc<[u8]>>,
    },
    /// A cancel request: forward it, then close.
    Cancel { pid: u32, secret: bytes::Bytes },
}

pub struct Handshake {
    /// Replaced as a whole on reload; each connection keeps the one it started with.
    tls: ArcSwapOption<ServerTls>,
    pub require_tls: bool,
}

impl Handshake {
    pub fn new(tls: Option<ServerTls>, require_tls: bool) -> Self {
        Self {
            tls: ArcSwapOption::from(tls.map(Arc::new)),
            require_tls,
        }
    }

    /// New connections are served `tls` from now on (certificate rotation).
    pub fn set_tls(&self, tls: ServerTls) {
        self.tls.store(Some(Arc::new(tls)));
    }

    /// Runs the startup phase. On error, the caller sends `client_error()` on the stream it
    /// gets back (plain or TLS, whichever the client is on).
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<Accepted, (Option<MaybeTls>, HandshakeError)> {
        let tls = self.tls.load_full();
        let mut first = [0u8; 1];
        let direct_tls =
            matches!(tcp.peek(&mut first).await, Ok(1) if first[0] == TLS_HANDSHAKE_RECORD);
        let mut stream = MaybeTls::Plain(tcp);
        if direct_tls {
            stream = start_tls(tls.as_deref(), stream)
                .await
                .map_err(|e| (None, e))?;
        }
        loop {
            let packet = match read_startup(&mut stream).await {
                Ok(packet) => packet,
                Err(e) => return Err((Some(stream), e.into())),
            };
            match packet {
                StartupPacket::SslRequest if stream.is_tls() => {
                    return Err((Some(stream), HandshakeError::RepeatedSslRequest));
                }
                StartupPacket::SslRequest => {
                    if tls.is_some() {
                        if let Err(e) = stream.write_all(b"S").await {
                            return Err((None, e.into()));
                        }
                        stream = start_tls(tls.as_deref(), stream)
                            .await
                            .map_err(|e| (None, e))?;
                    } else if let Err(e) = stream.write_all(b"N").await {
                        return Err((None, e.into()));
                    }
                }
                StartupPacket::GssEncRequest => {
                    if let Err(e) = stream.write_all(b"N").await {
                        return Err((None, e.into()));
                    }
                }
                StartupPacket::Cancel { pid, secret } => {
                    return Ok(Accepted::Cancel { pid, secret })
                }
                StartupPacket::Startup(startup) => {
                    if self.require_tls && !stream.is_tls() {
                        return Err((Some(stream), HandshakeError::TlsRequired));
                    }
                    let tls_end_point = match (&tls, stream.is_tls()) {
                        (Some(tls), true) => tls.end_point.clone(),
                        _ => None,
                    };
                    return Ok(Accepted::Session {
                        stream,
                        startup,
                        tls_end_point,
                    });
                }
            }
        }
    }
}

async fn start_tls(tls: Option<&ServerTls>, stream: MaybeTls) -> Result<MaybeTls, HandshakeError> {
    let (Some(tls), MaybeTls::Plain(tcp)) = (tls, stream) else {
        return Err(HandshakeError::RepeatedSslRequest);
    };
    let acceptor = TlsAcceptor::from(tls.config.clone());
    let tls = acceptor.accept(tcp).await.map_err(HandshakeError::Tls)?;
    Ok(MaybeTls::ServerTls(Box::new(tls)))
}
