//! A connection that may or may not have switched to TLS, split into halves for the relay.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// The read side of a connection. Plain TCP stays visible as such: it can wait for bytes
/// without a buffer to put them in, so an idle session need hold none
/// ([`crate::session::relay::read_more`]). TLS cannot: rustls may already hold
/// decrypted bytes that no socket readiness announces.
pub enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(Box<dyn AsyncRead + Send + Unpin>),
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

/// A database connection split for the relay, with what was read from it and not yet
/// relayed (with `auth = "scram"`, the end of the login pgveil composed for the client).
pub struct SplitConnection {
    pub read: ReadHalf,
    pub write: WriteHalf,
    pub pending: bytes::BytesMut,
}

impl SplitConnection {
    pub fn new(stream: MaybeTls, pending: bytes::BytesMut) -> Self {
        let (read, write) = stream.split();
        Self {
            read,
            write,
            pending,
        }
    }
}

/// A database connection a session hands back when its client left (its Terminate withheld):
/// `at_rest` when it may serve another client, otherwise only to be closed politely.
pub struct HandedBack {
    pub connection: SplitConnection,
    pub at_rest: bool,
}

pub enum MaybeTls {
    Plain(TcpStream),
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl MaybeTls {
    pub fn is_tls(&self) -> bool {
        !matches!(self, Self::Plain(_))
    }

    /// The database's certificate, on a connection pgveil opened with TLS.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        match self {
            Self::ClientTls(tls) => tls
                .get_ref()
                .1
                .peer_certificates()?
                .first()
                .map(|cert| cert.as_ref()),
            _ => None,
        }
    }

    /// Plain TCP splits without a lock; TLS needs tokio's locked split.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Self::Plain(tcp) => {
                let (r, w) = tcp.into_split();
                (ReadHalf::Plain(r), Box::new(w))
            }
            Self::ServerTls(tls) => {
                let (r, w) = tokio::io::split(*tls);
                (ReadHalf::Tls(Box::new(r)), Box::new(w))
            }
            Self::ClientTls(tls) => {
                let (r, w) = tokio::io::split(*tls);
                (ReadHalf::Tls(Box::new(r)), Box::new(w))
            }
        }
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::ServerTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::ClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::ServerTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::ClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::ServerTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::ServerTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::ClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
