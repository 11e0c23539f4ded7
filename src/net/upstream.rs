//! Connections to the real database.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

use super::startup::{encode_cancel, ssl_request};
use super::stream::MaybeTls;
use super::tls::{self, TlsError};
use crate::config::{UpstreamConfig, UpstreamTls};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the database at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to the database at {0}")]
    Timeout(String),
    #[error("the database at {0} does not offer TLS, and [upstream] tls requires it")]
    TlsRefused(String),
    #[error("unexpected answer to SSLRequest from the database")]
    BadSslAnswer,
    #[error("TLS handshake with the database failed: {0}")]
    Handshake(std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("I/O error talking to the database: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens connections to the configured database, negotiating TLS as configured.
#[derive(Clone)]
pub struct Connector {
    addr: String,
    mode: UpstreamTls,
    timeout: Duration,
    tls: Option<(TlsConnector, rustls::pki_types::ServerName<'static>)>,
}

impl Connector {
    pub fn new(config: &UpstreamConfig) -> Result<Self, UpstreamError> {
        let tls = match config.tls {
            UpstreamTls::Disable => None,
            mode => {
                let ca = if mode == UpstreamTls::VerifyFull {
                    config.ca_file.as_deref()
                } else {
                    None
                };
                let client_config: Arc<rustls::ClientConfig> = tls::upstream_config(ca)?;
                Some((
                    TlsConnector::from(client_config),
                    tls::server_name(&config.host)?,
                ))
            }
        };
        Ok(Self {
            addr: format!("{}:{}", config.host, config.port),
            mode: config.tls,
            timeout: config.connect_timeout,
            tls,
        })
    }

    pub async fn connect(&self) -> Result<MaybeTls, UpstreamError> {
        let addr = self.addr.clone();
        tokio::time::timeout(self.timeout, self.connect_inner())
            .await
            .map_err(|_| UpstreamError::Timeout(addr))?
    }

    async fn connect_inner(&self) -> Result<MaybeTls, UpstreamError> {
        let mut tcp =
            TcpStream::connect(&self.addr)
                .await
                .map_err(|source| UpstreamError::Connect {
                    addr: self.addr.clone(),
                    source,
                })?;
        tcp.set_nodelay(true)?;
        let Some((connector, name)) = &self.tls else {
            return Ok(MaybeTls::Plain(tcp));
        };
        tcp.write_all(&ssl_request()).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        match answer[0] {
            b'S' => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(UpstreamError::Handshake)?;
                Ok(MaybeTls::ClientTls(Box::new(tls)))
            }
            b'N' if self.mode == UpstreamTls::Prefer => Ok(MaybeTls::Plain(tcp)),
            b'N' => Err(UpstreamError::TlsRefused(self.addr.clone())),
            _ => Err(UpstreamError::BadSslAnswer),
        }
    }

    /// Forwards a CancelRequest to the backend it names; the database closes the
    /// connection when done, and answers nothing.
    pub async fn cancel(&self, pid: u32, secret: &[u8]) -> Result<(), UpstreamError> {
        let mut stream = self.connect().await?;
        stream.write_all(&encode_cancel(pid, secret)).await?;
        stream.flush().await?;
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut sink)).await;
        Ok(())
    }
}
