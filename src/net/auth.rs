//! The authentication messages pgveil speaks itself when it terminates logins
//! (`auth = "scram"`): Authentication* requests, the client's `p` answers, and reading one
//! message at a time so nothing past the exchange is consumed.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::frame::{read_cstr, read_i32};

/// PostgreSQL's limit on an authentication message (PG_MAX_AUTH_TOKEN_LENGTH).
pub const MAX_AUTH_MESSAGE: usize = 65_535;

pub const AUTH_OK: u32 = 0;
pub const AUTH_CLEARTEXT: u32 = 3;
pub const AUTH_MD5: u32 = 5;
pub const AUTH_SASL: u32 = 10;
pub const AUTH_SASL_CONTINUE: u32 = 11;
pub const AUTH_SASL_FINAL: u32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum AuthMessageError {
    #[error("the peer closed the connection during authentication")]
    Closed,
    #[error("invalid authentication message length {0}")]
    BadLength(usize),
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error(transparent)]
    Io(std::io::Error),
}

/// One protocol message: tag and body.
#[derive(Debug)]
pub struct Message {
    pub tag: u8,
    pub body: Bytes,
}

impl Message {
    /// The request code of an Authentication (`R`) message.
    pub fn auth_code(&self) -> Option<u32> {
        let mut body = &self.body[..];
        (self.tag == b'R')
            .then(|| read_i32(&mut body).map(|c| c as u32))
            .flatten()
    }

    /// The data after an Authentication message's code.
    pub fn auth_data(&self) -> &[u8] {
        self.body.get(4..).unwrap_or_default()
    }

    /// The whole frame, to forward unchanged.
    pub fn frame(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.body.len() + 5);
        out.put_u8(self.tag);
        out.put_u32(self.body.len() as u32 + 4);
        out.put_slice(&self.body);
        out.freeze()
    }
}

/// Reads exactly one message, refusing one longer than `limit`. Reads nothing past it, so
/// the stream can be handed on afterwards.
pub async fn read_message<R: AsyncRead + Unpin>(
    stream: &mut R,
    limit: usize,
) -> Result<Message, AuthMessageError> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).await.map_err(io_or_closed)?;
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(4..=limit.saturating_add(4)).contains(&length) {
        return Err(AuthMessageError::BadLength(length));
    }
    let mut body = vec![0u8; length - 4];
    stream.read_exact(&mut body).await.map_err(io_or_closed)?;
    Ok(Message {
        tag: header[0],
        body: Bytes::from(body),
    })
}

fn io_or_closed(e: std::io::Error) -> AuthMessageError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        AuthMessageError::Closed
    } else {
        AuthMessageError::Io(e)
    }
}

/// An Authentication request with its data.
pub fn encode_auth(code: u32, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(9 + data.len());
    out.put_u8(b'R');
    out.put_u32(8 + data.len() as u32);
    out.put_u32(code);
    out.put_slice(data);
    out.freeze()
}

/// AuthenticationSASL listing `mechanisms`.
pub fn encode_sasl_mechanisms(mechanisms: &[&str]) -> Bytes {
    let mut data = Vec::new();
    for mechanism in mechanisms {
        data.extend_from_slice(mechanism.as_bytes());
        data.push(0);
    }
    data.push(0);
    encode_auth(AUTH_SASL, &data)
}

/// The mechanisms an AuthenticationSASL offers.
pub fn sasl_mechanisms(data: &[u8]) -> Vec<&[u8]> {
    let mut rest = data;
    let mut out = Vec::new();
    while let Some(name) = read_cstr(&mut rest) {
        if name.is_empty() {
            break;
        }
        out.push(name);
    }
    out
}

/// SASLInitialResponse: the chosen mechanism and the client-first message.
pub fn decode_sasl_initial(body: &[u8]) -> Result<(&[u8], &[u8]), AuthMessageError> {
    let malformed = || AuthMessageError::Malformed("SASLInitialResponse");
    let mut rest = body;
    let mechanism = read_cstr(&mut rest).ok_or_else(malformed)?;
    let length = read_i32(&mut rest).ok_or_else(malformed)?;
    if usize::try_from(length).ok() != Some(rest.len()) {
        return Err(malformed());
    }
    Ok((mechanism, rest))
}

pub fn encode_sasl_initial(mechanism: &str, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(10 + mechanism.len() + data.len());
    out.put_u8(b'p');
    out.put_u32((4 + mechanism.len() + 1 + 4 + data.len()) as u32);
    out.put_slice(mechanism.as_bytes());
    out.put_u8(0);
    out.put_u32(data.len() as u32);
    out.put_slice(data);
    out.freeze()
}

/// SASLResponse, and PasswordMessage without its NUL: the body as is.
pub fn encode_password_message(data: &[u8], nul_terminated: bool) -> Bytes {
    let extra = usize::from(nul_terminated);
    let mut out = BytesMut::with_capacity(5 + data.len() + extra);
    out.put_u8(b'p');
    out.put_u32((4 + data.len() + extra) as u32);
    out.put_slice(data);
    if nul_terminated {
        out.put_u8(0);
    }
    out.freeze()
}

/// A PasswordMessage's text, without the terminating NUL.
pub fn decode_password(body: &[u8]) -> Result<&[u8], AuthMessageError> {
    let mut rest = body;
    let text = read_cstr(&mut rest).ok_or(AuthMessageError::Malformed("PasswordMessage"))?;
    if !rest.is_empty() {
        return Err(AuthMessageError::Malformed("PasswordMessage"));
    }
    Ok(text)
}

/// The SQLSTATE and message of an ErrorResponse body.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let mut code = String::new();
    let mut message = String::new();
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let mut tail = tail;
        let Some(value) = read_cstr(&mut tail) else {
            break;
        };
        match field {
            b'C' => code = String::from_utf8_lossy(value).into_owned(),
            b'M' => message = String::from_utf8_lossy(value).into_owned(),
            _ => {}
        }
        rest = tail;
    }
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_messages_round_trip() {
        let offer = encode_sasl_mechanisms(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        let msg = Message {
            tag: offer[0],
            body: offer.slice(5..),
        };
        assert_eq!(msg.auth_code(), Some(AUTH_SASL));
        assert_eq!(
            sasl_mechanisms(msg.auth_data()),
            vec![&b"SCRAM-SHA-256-PLUS"[..], &b"SCRAM-SHA-256"[..]]
        );
        assert_eq!(msg.frame(), offer);
        let initial = encode_sasl_initial("SCRAM-SHA-256", b"n,,n=,r=abc");
        let (mechanism, data) = decode_sasl_initial(&initial[5..]).unwrap();
        assert_eq!(
            (mechanism, data),
            (&b"SCRAM-SHA-256"[..], &b"n,,n=,r=abc"[..])
        );
    }

    #[test]
    fn malformed_initial_responses_are_refused() {
        assert!(decode_sasl_initial(b"SCRAM-SHA-256\0\0\0\0\x09short").is_err());
        assert!(decode_sasl_initial(b"SCRAM-SHA-256").is_err());
        assert!(decode_password(b"md5abc\0extra").is_err());
        assert_eq!(decode_password(b"md5abc\0").unwrap(), b"md5abc");
    }

    #[tokio::test]
    async fn reads_one_message_and_no_more() {
        let mut bytes: &[u8] = b"p\0\0\0\x08abcdQ\0\0\0\x05x";
        let msg = read_message(&mut bytes, 100).await.unwrap();
        assert_eq!((msg.tag, &msg.body[..]), (b'p', &b"abcd"[..]));
        assert_eq!(bytes, b"Q\0\0\0\x05x");
        let mut huge: &[u8] = b"p\x7f\0\0\0";
        assert!(matches!(
            read_message(&mut huge, 100).await,
            Err(AuthMessageError::BadLength(_))
        ));
        let mut cut: &[u8] = b"p\0\0\0\x08ab";
        assert!(matches!(
            read_message(&mut cut, 100).await,
            Err(AuthMessageError::Closed)
        ));
    }
}
