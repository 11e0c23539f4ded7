//! Assignment casts: a binary parameter declared as another type than the column's logical type
//! is converted as PostgreSQL's assignment cast would convert it (`int4` into an `int8` column,
//! `date` into a `timestamptz` column in the session zone, any type into `text`); any other
//! pair is a datatype mismatch (42804), as in PostgreSQL.

use super::datetime::{date_to_timestamp, timestamp_to_timestamptz, timestamptz_to_timestamp};
use super::error::ValueError;
use super::float::float8_canonical;
use super::json::jsonb_in;
use super::numeric::Decimal;
use super::oid;
use super::recv::{read_i32, read_i64, read_int, recv_own};
use super::{to_wire, SessionTime, WireFormat};
use crate::schema::LogicalType;

/// Converts `bytes`, the binary form of type `src` (neither the logical type itself nor a
/// string type: the caller handles those), into the canonical bytes of `ty`.
pub(super) fn assignment_cast(
    ty: LogicalType,
    src: u32,
    bytes: &[u8],
    tz: &SessionTime,
) -> Result<Vec<u8>, ValueError> {
    let int_src = || integer_source(src, bytes);
    match (ty, src) {
        (LogicalType::Int2, oid::INT4 | oid::INT8) => {
            let v = i16::try_from(int_src()?).map_err(|_| ValueError::range(ty))?;
            Ok(v.to_be_bytes().to_vec())
        }
        (LogicalType::Int4, oid::INT2 | oid::INT8) => {
            let v = i32::try_from(int_src()?).map_err(|_| ValueError::range(ty))?;
            Ok(v.to_be_bytes().to_vec())
        }
        (LogicalType::Int8, oid::INT2 | oid::INT4) => Ok(int_src()?.to_be_bytes().to_vec()),
        (LogicalType::Numeric, oid::INT2 | oid::INT4 | oid::INT8) => {
            Ok(Decimal::from_i64(int_src()?).normalized_text().into_bytes())
        }
        (LogicalType::Float8, oid::INT2 | oid::INT4 | oid::INT8) => {
            Ok(float8_canonical(int_src()? as f64))
        }
        (LogicalType::Float8, oid::FLOAT4) => {
            let raw: [u8; 4] = bytes.try_into().map_err(|_| ValueError::binary(ty))?;
            Ok(float8_canonical(f64::from(f32::from_be_bytes(raw))))
        }
        (LogicalType::Timestamp | LogicalType::Timestamptz, oid::DATE) => {
            let canon = recv_own(LogicalType::Date, bytes)?;
            let days = read_i32(&canon).ok_or_else(|| ValueError::binary(LogicalType::Date))?;
            Ok(date_to_timestamp(days, ty, tz)?.to_be_bytes().to_vec())
        }
        (LogicalType::Timestamptz, oid::TIMESTAMP) => {
            let local = read_i64(&recv_own(LogicalType::Timestamp, bytes)?)
                .ok_or_else(|| ValueError::binary(ty))?;
            Ok(timestamp_to_timestamptz(local, tz)?.to_be_bytes().to_vec())
        }
        (LogicalType::Timestamp, oid::TIMESTAMPTZ) => {
            let utc = read_i64(&recv_own(LogicalType::Timestamptz, bytes)?)
                .ok_or_else(|| ValueError::binary(ty))?;
            Ok(timestamptz_to_timestamp(utc, tz)?.to_be_bytes().to_vec())
        }
        (LogicalType::Jsonb, oid::JSON) => {
            let s = std::str::from_utf8(bytes).map_err(|_| ValueError::binary(ty))?;
            jsonb_in(s).map(String::into_bytes)
        }
        (LogicalType::Text | LogicalType::Varchar, _) => to_string_type(ty, src, bytes, tz),
        _ => Err(ValueError::mismatch(ty, src)),
    }
}

/// The value of a binary integer parameter of type `src` (`int2`, `int4`, else `int8`).
fn integer_source(src: u32, bytes: &[u8]) -> Result<i64, ValueError> {
    let src_ty = match src {
        oid::INT2 => LogicalType::Int2,
        oid::INT4 => LogicalType::Int4,
        _ => LogicalType::Int8,
    };
    let canon = recv_own(src_ty, bytes)?;
    read_int(&canon).ok_or_else(|| ValueError::binary(src_ty))
}

/// Every type converts to a string type by assignment: its text output (bool as
/// `true`/`false`, as PostgreSQL's bool-to-text cast prints it).
fn to_string_type(
    ty: LogicalType,
    src: u32,
    bytes: &[u8],
    tz: &SessionTime,
) -> Result<Vec<u8>, ValueError> {
    let src_ty = LogicalType::ALL
        .into_iter()
        .find(|t| t.oid() == src)
        .ok_or_else(|| ValueError::mismatch(ty, src))?;
    let canon = recv_own(src_ty, bytes)?;
    match (src_ty, canon.as_slice()) {
        (LogicalType::Bool, [1]) => Ok(b"true".to_vec()),
        (LogicalType::Bool, _) => Ok(b"false".to_vec()),
        _ => to_wire(src_ty, &canon, WireFormat::Text, tz),
    }
}
