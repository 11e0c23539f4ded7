//! Errors that pgveil itself sends to clients, and the one place where pgveil's failures
//! map to SQLSTATEs.

use bytes::{Bytes, BytesMut};
use pgwire::messages::response::{ErrorResponse, NoticeResponse};
use pgwire::messages::Message;

pub mod sqlstate {
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const CONNECTION_EXCEPTION: &str = "08000";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const IO_ERROR: &str = "58030";
    pub const DATA_CORRUPTED: &str = "XX001";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Fatal => "FATAL",
        }
    }
}

/// An error as the client will see it. Messages must never carry a data value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
}

impl PgError {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
        }
    }

    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Fatal,
            code,
            message: message.into(),
        }
    }

    fn fields(&self) -> Vec<(u8, String)> {
        vec![
            (b'S', self.severity.as_str().to_string()),
            (b'V', self.severity.as_str().to_string()),
            (b'C', self.code.to_string()),
            (b'M', self.message.clone()),
        ]
    }

    /// The ErrorResponse frame.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        // Encoding into a BytesMut only fails on oversized messages; ours are short.
        if ErrorResponse::new(self.fields()).encode(&mut buf).is_err() {
            buf.clear();
        }
        buf.freeze()
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.severity.as_str(),
            self.code,
            self.message
        )
    }
}

/// A NoticeResponse frame (severity WARNING).
pub fn notice(code: &str, message: &str) -> Bytes {
    let mut buf = BytesMut::new();
    let fields = vec![
        (b'S', "WARNING".to_string()),
        (b'V', "WARNING".to_string()),
        (b'C', code.to_string()),
        (b'M', message.to_string()),
    ];
    if NoticeResponse::new(fields).encode(&mut buf).is_err() {
        buf.clear();
    }
    buf.freeze()
}

/// Reads the SQLSTATE (`C` field) of an ErrorResponse or NoticeResponse body.
pub fn sqlstate_of(body: &[u8]) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            return None;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if field == b'C' {
            return Some(&tail[..end]);
        }
        rest = &tail[end + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_frames_carry_code_and_message() {
        let frame = PgError::fatal(sqlstate::PROTOCOL_VIOLATION, "bad").encode();
        assert_eq!(frame[0], b'E');
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(len + 1, frame.len());
        assert_eq!(sqlstate_of(&frame[5..]), Some(&b"08P01"[..]));
        assert!(frame.windows(3).any(|w| w == b"bad"));
    }
}
