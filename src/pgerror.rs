//! Errors that pgveil itself sends to clients, and the one place where pgveil's failures
//! map to SQLSTATEs.

use bytes::{Bytes, BytesMut};
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::Message;

pub mod sqlstate {
    // Data exceptions for values that do not parse or convert (raised by `pgtype`), named as
    // in PostgreSQL's errcodes.txt.
    pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
    pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
    pub const DATETIME_FIELD_OVERFLOW: &str = "22008";
    pub const INVALID_BINARY_REPRESENTATION: &str = "22P03";
    pub const UNTRANSLATABLE_CHARACTER: &str = "22P05";
    pub const INVALID_DATETIME_FORMAT: &str = "22007";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const DATATYPE_MISMATCH: &str = "42804";
    pub const STATEMENT_TOO_COMPLEX: &str = "54001";

    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const IO_ERROR: &str = "58030";
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    pub const DATA_CORRUPTED: &str = "XX001";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const UNDEFINED_OBJECT: &str = "42704";
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

/// An ErrorResponse pgveil made the database raise (a `DO` block standing in for a refused
/// statement) carries PL/pgSQL's context and source location; this returns the frame
/// without them, so the client sees the error as if pgveil had sent it. `None` for any
/// other error.
pub fn without_raise_context(frame: &[u8]) -> Option<Bytes> {
    let body = frame.get(5..)?;
    let mut fields = Vec::new();
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        fields.push((field, &tail[..end]));
        rest = &tail[end + 1..];
    }
    let message = fields.iter().find(|(f, _)| *f == b'M')?.1;
    let context = fields.iter().find(|(f, _)| *f == b'W')?.1;
    if !message.starts_with(b"pgveil: ") || !context.windows(17).any(|w| w == b"inline_code_block")
    {
        return None;
    }
    let kept: Vec<(u8, String)> = fields
        .iter()
        .filter(|(f, _)| matches!(f, b'S' | b'V' | b'C' | b'M' | b'D' | b'H'))
        .map(|(f, v)| (*f, String::from_utf8_lossy(v).into_owned()))
        .collect();
    let mut buf = BytesMut::new();
    ErrorResponse::new(kept).encode(&mut buf).ok()?;
    Some(buf.freeze())
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
    fn raised_errors_lose_their_plpgsql_context() {
        let mut body = Vec::new();
        for (f, v) in [
            (b'S', "ERROR"),
            (b'C', "0A000"),
            (
                b'M',
                "pgveil: LIKE is not supported on encrypted column public.p.ssn",
            ),
            (b'W', "PL/pgSQL function inline_code_block line 1 at RAISE"),
            (b'F', "pl_exec.c"),
        ] {
            body.push(f);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut frame = vec![b'E'];
        frame.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        frame.extend_from_slice(&body);
        let cleaned = without_raise_context(&frame).unwrap();
        assert!(!cleaned.windows(9).any(|w| w == b"pl_exec.c"));
        assert!(!cleaned.windows(17).any(|w| w == b"inline_code_block"));
        assert_eq!(sqlstate_of(&cleaned[5..]), Some(&b"0A000"[..]));
        // A database error is left alone.
        let plain = PgError::error("42P01", "relation does not exist").encode();
        assert!(without_raise_context(&plain).is_none());
    }

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
