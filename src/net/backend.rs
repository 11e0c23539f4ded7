//! The messages the database sends that pgveil reads, decoded into types. Decoding a frame
//! costs nothing until a part of it is asked for: a message pgveil passes on unchanged is
//! never taken apart.

use bytes::{BufMut, Bytes};

use super::frame::{begin, body, finish, put_cstr, read_cstr, read_i16, read_i32, tag, Malformed};

/// A backend message, as pgveil reads it.
#[derive(Debug, Clone, Copy)]
pub enum BackendMessage<'a> {
    Authentication(Authentication<'a>),
    /// The backend's process id.
    BackendKeyData(Option<u32>),
    ParameterStatus(ParameterStatus<'a>),
    /// The transaction status: `I` idle, `T` in a block, `E` in a failed block.
    ReadyForQuery(u8),
    RowDescription(RowDescription<'a>),
    ParameterDescription(ParameterDescription<'a>),
    DataRow(DataRow<'a>),
    CommandComplete(CommandComplete<'a>),
    EmptyQueryResponse,
    PortalSuspended,
    ErrorResponse(ErrorResponse<'a>),
    NoticeResponse,
    NotificationResponse,
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    /// CopyInResponse: the database waits for the client's rows (the body).
    CopyInResponse(&'a [u8]),
    /// CopyOutResponse: rows follow (the body).
    CopyOutResponse(&'a [u8]),
    /// A chunk of a COPY TO stream.
    CopyData(&'a [u8]),
    CopyDone,
    /// CopyBothResponse, FunctionCallResponse, NegotiateProtocolVersion.
    Other,
}

impl<'a> BackendMessage<'a> {
    /// Reads a complete frame's type; the body is read only by the accessors.
    pub fn decode(frame: &'a [u8]) -> Self {
        let body = body(frame);
        match tag(frame) {
            b'R' => Self::Authentication(Authentication { body }),
            b'K' => Self::BackendKeyData(read_u32_at(body)),
            b'S' => Self::ParameterStatus(ParameterStatus::decode(body)),
            // A status byte missing is read as idle, as a well-formed server never sends it.
            b'Z' => Self::ReadyForQuery(body.first().copied().unwrap_or(b'I')),
            b'T' => Self::RowDescription(RowDescription { body }),
            b't' => Self::ParameterDescription(ParameterDescription { body }),
            b'D' => Self::DataRow(DataRow { body }),
            b'C' => Self::CommandComplete(CommandComplete { body }),
            b'I' => Self::EmptyQueryResponse,
            b's' => Self::PortalSuspended,
            b'E' => Self::ErrorResponse(ErrorResponse { body }),
            b'N' => Self::NoticeResponse,
            b'A' => Self::NotificationResponse,
            b'1' => Self::ParseComplete,
            b'2' => Self::BindComplete,
            b'3' => Self::CloseComplete,
            b'n' => Self::NoData,
            b'G' => Self::CopyInResponse(body),
            b'H' => Self::CopyOutResponse(body),
            b'd' => Self::CopyData(body),
            b'c' => Self::CopyDone,
            _ => Self::Other,
        }
    }

    /// Whether it ends the response to one statement (or one Execute).
    pub fn ends_statement(&self) -> bool {
        matches!(
            self,
            Self::CommandComplete(_)
                | Self::EmptyQueryResponse
                | Self::PortalSuspended
                | Self::ErrorResponse(_)
        )
    }
}

fn read_u32_at(body: &[u8]) -> Option<u32> {
    body.get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// `R`: an authentication request.
#[derive(Debug, Clone, Copy)]
pub struct Authentication<'a> {
    body: &'a [u8],
}

/// Authentication request codes that the client must answer.
const NEEDS_ANSWER: [u32; 7] = [3, 5, 7, 8, 9, 10, 11];
/// AuthenticationSASL.
const SASL: u32 = 10;

impl Authentication<'_> {
    /// The request code (0: authentication succeeded).
    pub fn code(&self) -> u32 {
        read_u32_at(self.body).unwrap_or(0)
    }

    /// Whether the client must send something back.
    pub fn needs_answer(&self) -> bool {
        NEEDS_ANSWER.contains(&self.code())
    }

    /// AuthenticationSASL lists the mechanisms the database offers. pgveil terminates the
    /// client's TLS, so channel binding to the database's certificate can never succeed:
    /// the request with `SCRAM-SHA-256-PLUS` taken off the list, when it was on it.
    pub fn without_channel_binding(&self) -> Option<Bytes> {
        if self.body.len() < 4 || self.code() != SASL {
            return None;
        }
        let mut rest = &self.body[4..];
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
        let mut out = begin(
            b'R',
            4 + kept.iter().map(|m| m.len() + 1).sum::<usize>() + 1,
        );
        out.put_u32(SASL);
        for mechanism in kept {
            put_cstr(&mut out, mechanism);
        }
        out.put_u8(0);
        Some(finish(out))
    }
}

/// `S`: a run-time parameter's new value. A malformed one has an empty name, which names
/// no parameter.
#[derive(Debug, Clone, Copy)]
pub struct ParameterStatus<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
}

impl<'a> ParameterStatus<'a> {
    fn decode(body: &'a [u8]) -> Self {
        let mut rest = body;
        match (read_cstr(&mut rest), read_cstr(&mut rest)) {
            (Some(name), Some(value)) => Self { name, value },
            _ => Self {
                name: b"",
                value: b"",
            },
        }
    }
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Bytes,
    pub table_oid: u32,
    pub column: i16,
    pub type_oid: u32,
    pub type_size: i16,
    pub type_modifier: i32,
    pub format: i16,
}

/// `T`: the columns of the rows that follow.
#[derive(Debug, Clone, Copy)]
pub struct RowDescription<'a> {
    body: &'a [u8],
}

impl RowDescription<'_> {
    pub fn fields(&self) -> Result<Vec<Field>, Malformed> {
        let err = Malformed("RowDescription");
        let mut rest = self.body;
        let count = read_i16(&mut rest).ok_or(err)?;
        let mut fields = Vec::with_capacity(count.max(0) as usize);
        for _ in 0..count.max(0) {
            let name = Bytes::copy_from_slice(read_cstr(&mut rest).ok_or(err)?);
            let table_oid = read_i32(&mut rest).ok_or(err)? as u32;
            let column = read_i16(&mut rest).ok_or(err)?;
            let type_oid = read_i32(&mut rest).ok_or(err)? as u32;
            let type_size = read_i16(&mut rest).ok_or(err)?;
            let type_modifier = read_i32(&mut rest).ok_or(err)?;
            let format = read_i16(&mut rest).ok_or(err)?;
            fields.push(Field {
                name,
                table_oid,
                column,
                type_oid,
                type_size,
                type_modifier,
                format,
            });
        }
        Ok(fields)
    }

    pub fn encode(fields: &[Field]) -> Bytes {
        let mut out = begin(
            b'T',
            2 + fields.iter().map(|f| f.name.len() + 19).sum::<usize>(),
        );
        out.put_i16(fields.len() as i16);
        for f in fields {
            put_cstr(&mut out, &f.name);
            out.put_u32(f.table_oid);
            out.put_i16(f.column);
            out.put_u32(f.type_oid);
            out.put_i16(f.type_size);
            out.put_i32(f.type_modifier);
            out.put_i16(f.format);
        }
        finish(out)
    }
}

/// `t`: the types of a prepared statement's parameters.
#[derive(Debug, Clone, Copy)]
pub struct ParameterDescription<'a> {
    body: &'a [u8],
}

impl ParameterDescription<'_> {
    pub fn types(&self) -> Result<Vec<u32>, Malformed> {
        let mut rest = self.body;
        let count = read_i16(&mut rest).ok_or(Malformed("ParameterDescription"))?;
        (0..count.max(0))
            .map(|_| {
                read_i32(&mut rest)
                    .map(|v| v as u32)
                    .ok_or(Malformed("ParameterDescription"))
            })
            .collect()
    }

    pub fn encode(types: &[u32]) -> Bytes {
        let mut out = begin(b't', 2 + 4 * types.len());
        out.put_i16(types.len() as i16);
        for oid in types {
            out.put_u32(*oid);
        }
        finish(out)
    }
}

/// `D`: one row.
#[derive(Debug, Clone, Copy)]
pub struct DataRow<'a> {
    body: &'a [u8],
}

impl<'a> DataRow<'a> {
    /// The values (`None` for NULL), borrowed from the frame.
    pub fn values(&self) -> Result<Vec<Option<&'a [u8]>>, Malformed> {
        let err = Malformed("DataRow");
        let mut rest = self.body;
        let count = read_i16(&mut rest).ok_or(err)?;
        let mut values = Vec::with_capacity(count.max(0) as usize);
        for _ in 0..count.max(0) {
            let len = read_i32(&mut rest).ok_or(err)?;
            if len < 0 {
                values.push(None);
            } else {
                let value = rest.get(..len as usize).ok_or(err)?;
                rest = &rest[len as usize..];
                values.push(Some(value));
            }
        }
        Ok(values)
    }

    /// Builds a DataRow from values.
    pub fn encode<'v>(values: impl ExactSizeIterator<Item = Option<&'v [u8]>> + Clone) -> Bytes {
        let size: usize = values.clone().map(|v| 4 + v.map_or(0, <[u8]>::len)).sum();
        let mut out = begin(b'D', 2 + size);
        out.put_i16(values.len() as i16);
        for value in values {
            match value {
                None => out.put_i32(-1),
                Some(v) => {
                    out.put_i32(v.len() as i32);
                    out.put_slice(v);
                }
            }
        }
        finish(out)
    }
}

/// `C`: a statement completed, with its command tag.
#[derive(Debug, Clone, Copy)]
pub struct CommandComplete<'a> {
    body: &'a [u8],
}

impl CommandComplete<'_> {
    /// The command tag (`SELECT 3`, `ROLLBACK`).
    pub fn tag(&self) -> Option<&[u8]> {
        let mut rest = self.body;
        read_cstr(&mut rest)
    }

    /// Builds a CommandComplete with `tag`.
    pub fn encode(tag: &[u8]) -> Bytes {
        let mut out = begin(b'C', tag.len() + 1);
        out.put_slice(tag);
        out.put_u8(0);
        finish(out)
    }

    /// The row count at the end of the tag (`SELECT 3`, `INSERT 0 1`).
    pub fn rows(&self) -> Option<u64> {
        let mut rest = self.body;
        let tag = read_cstr(&mut rest)?;
        let last = tag.rsplit(|&b| b == b' ').next()?;
        std::str::from_utf8(last).ok()?.parse().ok()
    }
}

/// `E`: an error.
#[derive(Debug, Clone, Copy)]
pub struct ErrorResponse<'a> {
    body: &'a [u8],
}

impl<'a> ErrorResponse<'a> {
    /// Whether the database ends the connection after it (FATAL, PANIC).
    pub fn is_fatal(&self) -> bool {
        let mut rest = self.body;
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

    pub fn sqlstate(&self) -> Option<&'a [u8]> {
        crate::pgerror::sqlstate_of(self.body)
    }
}

/// A raw frame of `tag` with `body`, for tests.
#[cfg(test)]
pub(crate) fn frame(tag: u8, body: &[u8]) -> Bytes {
    let mut out = begin(tag, body.len());
    out.put_slice(body);
    finish(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_description_and_data_rows() {
        let fields = vec![Field {
            name: Bytes::from_static(b"ssn"),
            table_oid: 16384,
            column: 2,
            type_oid: 17,
            type_size: -1,
            type_modifier: -1,
            format: 0,
        }];
        let encoded = RowDescription::encode(&fields);
        let BackendMessage::RowDescription(description) = BackendMessage::decode(&encoded) else {
            panic!("not a RowDescription");
        };
        assert_eq!(description.fields().unwrap(), fields);
        let row = DataRow::encode([Some(&b"ab"[..]), None].into_iter());
        let BackendMessage::DataRow(decoded) = BackendMessage::decode(&row) else {
            panic!("not a DataRow");
        };
        assert_eq!(decoded.values().unwrap(), vec![Some(&b"ab"[..]), None]);
        let short = DataRow {
            body: b"\0\x01\0\0\0\x09ab",
        };
        assert!(short.values().is_err());
    }

    #[test]
    fn channel_binding_is_removed_from_sasl_offers() {
        let offer = frame(b'R', b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        let BackendMessage::Authentication(request) = BackendMessage::decode(&offer) else {
            panic!("not an authentication request");
        };
        assert!(request.needs_answer());
        let out = request.without_channel_binding().unwrap();
        assert_eq!(&out[5..], b"\0\0\0\x0aSCRAM-SHA-256\0\0");
        assert_eq!(super::super::frame::announced_len(&out), Some(out.len()));
        let BackendMessage::Authentication(again) = BackendMessage::decode(&out) else {
            panic!("not an authentication request");
        };
        assert!(again.without_channel_binding().is_none());
    }

    #[test]
    fn fatal_errors_are_recognised() {
        let fatal = ErrorResponse {
            body: b"SFATAL\0VFATAL\0C28P01\0\0",
        };
        assert!(fatal.is_fatal());
        assert_eq!(fatal.sqlstate(), Some(&b"28P01"[..]));
        assert!(!ErrorResponse {
            body: b"SERROR\0VERROR\0C42601\0\0"
        }
        .is_fatal());
    }

    #[test]
    fn command_tags_give_row_counts() {
        let rows = |tag: &[u8]| CommandComplete { body: tag }.rows();
        assert_eq!(rows(b"SELECT 3\0"), Some(3));
        assert_eq!(rows(b"INSERT 0 12\0"), Some(12));
        assert_eq!(rows(b"BEGIN\0"), None);
    }

    #[test]
    fn status_and_parameters() {
        assert!(matches!(
            BackendMessage::decode(b"Z\0\0\0\x05T"),
            BackendMessage::ReadyForQuery(b'T')
        ));
        let status = frame(b'S', b"TimeZone\0UTC\0");
        let BackendMessage::ParameterStatus(p) = BackendMessage::decode(&status) else {
            panic!("not a ParameterStatus");
        };
        assert_eq!((p.name, p.value), (&b"TimeZone"[..], &b"UTC"[..]));
        let BackendMessage::ParameterStatus(bad) = BackendMessage::decode(b"S\0\0\0\x05x") else {
            panic!("not a ParameterStatus");
        };
        assert!(bad.name.is_empty());
    }
}
