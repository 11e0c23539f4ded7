//! The untagged packets a client may open a connection with.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::frame::read_cstr;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3_0: u32 = 196_608;
/// PostgreSQL's own limit on a startup packet (MAX_STARTUP_PACKET_LENGTH).
const MAX_STARTUP_LENGTH: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: u32, secret: Bytes },
    Startup(StartupMessage),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// The packet as received, forwarded upstream unchanged.
    pub raw: Bytes,
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn user(&self) -> &str {
        self.param("user").unwrap_or("")
    }

    pub fn database(&self) -> &str {
        self.param("database").unwrap_or_else(|| self.user())
    }

    /// A 3.0 startup packet carrying `params`.
    pub fn encode(params: &[(&str, &str)]) -> Bytes {
        let mut body = BytesMut::new();
        body.put_u32(PROTOCOL_3_0);
        for (k, v) in params {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut out = BytesMut::with_capacity(body.len() + 4);
        out.put_u32(body.len() as u32 + 4);
        out.put_slice(&body);
        out.freeze()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("invalid length of startup packet")]
    BadLength,
    #[error("unsupported frontend protocol {major}.{minor}: pgveil supports protocol 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout")]
    Malformed,
    #[error("client closed the connection during startup")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one startup-phase packet.
pub async fn read_startup<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<StartupPacket, StartupError> {
    let mut len_buf = [0u8; 4];
    match stream.read_exact(&mut len_buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(StartupError::Closed)
        }
        Err(e) => return Err(e.into()),
    }
    let length = u32::from_be_bytes(len_buf) as usize;
    if !(8..=MAX_STARTUP_LENGTH).contains(&length) {
        return Err(StartupError::BadLength);
    }
    let mut raw = BytesMut::with_capacity(length);
    raw.put_slice(&len_buf);
    raw.resize(length, 0);
    stream
        .read_exact(&mut raw[4..])
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => StartupError::Closed,
            _ => StartupError::Io(e),
        })?;
    parse_startup(raw.freeze())
}

/// Reads a whole startup packet (length word included). Any bytes are refused or read,
/// never a panic: [`read_startup`] hands over at least 8, other callers may not.
pub fn parse_startup(raw: Bytes) -> Result<StartupPacket, StartupError> {
    let Some(&[a, b, c, d]) = raw.get(4..8) else {
        return Err(StartupError::BadLength);
    };
    let code = u32::from_be_bytes([a, b, c, d]);
    match code {
        SSL_REQUEST if raw.len() == 8 => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST if raw.len() == 8 => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST if raw.len() >= 12 => Ok(StartupPacket::Cancel {
            pid: u32::from_be_bytes([raw[8], raw[9], raw[10], raw[11]]),
            secret: raw.slice(12..),
        }),
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => Err(StartupError::BadLength),
        PROTOCOL_3_0 => {
            let mut body = &raw[8..];
            let mut params = Vec::new();
            loop {
                let key = read_cstr(&mut body).ok_or(StartupError::Malformed)?;
                if key.is_empty() {
                    break;
                }
                let value = read_cstr(&mut body).ok_or(StartupError::Malformed)?;
                params.push((
                    String::from_utf8_lossy(key).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                ));
            }
            if !body.is_empty() {
                return Err(StartupError::Malformed);
            }
            Ok(StartupPacket::Startup(StartupMessage { raw, params }))
        }
        other => Err(StartupError::UnsupportedProtocol {
            major: (other >> 16) as u16,
            minor: other as u16,
        }),
    }
}

/// The CancelRequest packet for a backend.
pub fn encode_cancel(pid: u32, secret: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(12 + secret.len());
    out.put_u32(12 + secret.len() as u32);
    out.put_u32(CANCEL_REQUEST);
    out.put_u32(pid);
    out.put_slice(secret);
    out.freeze()
}

pub fn ssl_request() -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&8u32.to_be_bytes());
    out[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_startup_parameters() {
        let raw = StartupMessage::encode(&[("user", "alice"), ("database", "db")]);
        let StartupPacket::Startup(msg) = parse_startup(raw.clone()).unwrap() else {
            panic!()
        };
        assert_eq!(msg.user(), "alice");
        assert_eq!(msg.database(), "db");
        assert_eq!(msg.raw, raw);
    }

    #[test]
    fn recognises_requests_and_refuses_other_versions() {
        assert_eq!(
            parse_startup(Bytes::copy_from_slice(&ssl_request())).unwrap(),
            StartupPacket::SslRequest
        );
        let cancel = encode_cancel(42, b"\0\0\0\x07");
        assert_eq!(
            parse_startup(cancel).unwrap(),
            StartupPacket::Cancel {
                pid: 42,
                secret: Bytes::from_static(b"\0\0\0\x07")
            }
        );
        let mut v2 = BytesMut::new();
        v2.put_u32(8);
        v2.put_u32(2 << 16);
        assert!(matches!(
            parse_startup(v2.freeze()),
            Err(StartupError::UnsupportedProtocol { major: 2, minor: 0 })
        ));
    }

    #[test]
    fn packets_shorter_than_a_request_code_are_refused() {
        for raw in [&b""[..], b"\0\0\0\x08", b"\0\0\0\x08\x04\xd2\x16"] {
            assert!(matches!(
                parse_startup(Bytes::copy_from_slice(raw)),
                Err(StartupError::BadLength)
            ));
        }
    }

    #[test]
    fn malformed_parameters_are_rejected() {
        let mut raw = BytesMut::new();
        raw.put_u32(13);
        raw.put_u32(PROTOCOL_3_0);
        raw.put_slice(b"user\0");
        assert!(matches!(
            parse_startup(raw.freeze()),
            Err(StartupError::Malformed)
        ));
    }
}
