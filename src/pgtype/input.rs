//! Input: what a client sent for a protected column, in text or binary and declared as any
//! type, brought to the one canonical byte string of its logical type (the plaintext that
//! `crypto` encrypts). Dispatches to each type's own parser.

use super::error::ValueError;
use super::time::SessionTime;
use super::{bytea, cast, datetime, float, json, numeric, oid, recv, scalar, uuid};
use crate::schema::LogicalType;

/// Canonical bytes of a value the client sent in text format (PostgreSQL's input rules).
pub fn canonical_from_text(
    ty: LogicalType,
    text: &[u8],
    tz: &SessionTime,
) -> Result<Vec<u8>, ValueError> {
    let utf8 = || std::str::from_utf8(text).map_err(|_| ValueError::syntax(ty));
    match ty {
        LogicalType::Text | LogicalType::Varchar => Ok(text.to_vec()),
        LogicalType::Bytea => bytea::bytea_in(text),
        LogicalType::Int2 | LogicalType::Int4 | LogicalType::Int8 => {
            scalar::int_canonical(ty, utf8()?)
        }
        LogicalType::Numeric => Ok(numeric::numeric_in(utf8()?)?.normalized_text().into_bytes()),
        LogicalType::Float8 => Ok(float::float8_canonical(float::float8_in(utf8()?)?)),
        LogicalType::Bool => Ok(vec![u8::from(scalar::bool_in(utf8()?)?)]),
        LogicalType::Date => Ok(datetime::date_in(utf8()?, tz)?.to_be_bytes().to_vec()),
        LogicalType::Timestamp | LogicalType::Timestamptz => {
            Ok(datetime::timestamp_in(utf8()?, ty, tz)?
                .to_be_bytes()
                .to_vec())
        }
        LogicalType::Uuid => Ok(uuid::uuid_in(utf8()?)?.to_vec()),
        LogicalType::Jsonb => json::jsonb_in(utf8()?).map(String::into_bytes),
    }
}

/// Canonical bytes of a value the client sent in binary format, declared as type
/// `source_type_oid` (0: unspecified, i.e. the logical type itself). Converts as PostgreSQL's
/// assignment cast would; other source types are a datatype mismatch (42804).
pub fn canonical_from_binary(
    ty: LogicalType,
    source_type_oid: u32,
    bytes: &[u8],
    tz: &SessionTime,
) -> Result<Vec<u8>, ValueError> {
    let src = if source_type_oid == oid::UNSPECIFIED {
        ty.oid()
    } else {
        source_type_oid
    };
    if src == ty.oid() {
        return recv::recv_own(ty, bytes);
    }
    if oid::is_string(src) {
        return match ty {
            // bpchar → text drops the blank padding, as PostgreSQL's rtrim cast does.
            LogicalType::Text | LogicalType::Varchar if src == oid::BPCHAR => {
                let end = bytes.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
                Ok(bytes[..end].to_vec())
            }
            _ => canonical_from_text(ty, bytes, tz),
        };
    }
    cast::assignment_cast(ty, src, bytes, tz)
}
