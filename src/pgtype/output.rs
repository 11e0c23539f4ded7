//! Output: a canonical value printed as PostgreSQL sends it to a client, in text (DateStyle
//! ISO, `bytea_output = hex`, `extra_float_digits = 1`) or in binary (each type's `*_send`).
//! A canonical value that does not have its type's shape is an error, never guessed at.

use super::bytea::bytea_out;
use super::datetime::{date_out, date_out_into, timestamp_out};
use super::error::ValueError;
use super::float::float8_out;
use super::format::WireFormat;
use super::numeric::{numeric_in, Decimal};
use super::recv::{read_i32, read_i64, read_int};
use super::time::SessionTime;
use super::uuid::uuid_out;
use crate::schema::LogicalType;

/// Prints a canonical value as PostgreSQL sends it to a client in `format`.
pub fn to_wire(
    ty: LogicalType,
    canonical: &[u8],
    format: WireFormat,
    tz: &SessionTime,
) -> Result<Vec<u8>, ValueError> {
    match format {
        WireFormat::Text => text_out(ty, canonical, tz),
        WireFormat::Binary => binary_out(ty, canonical),
    }
}

/// [`to_wire`]'s text output into `out` (cleared first): a bulk COPY TO reuses one buffer.
/// Text and dates are written in place; other types go through [`text_out`].
pub fn text_out_into(
    ty: LogicalType,
    canonical: &[u8],
    tz: &SessionTime,
    out: &mut Vec<u8>,
) -> Result<(), ValueError> {
    out.clear();
    match ty {
        LogicalType::Text | LogicalType::Varchar | LogicalType::Jsonb => {
            out.extend_from_slice(canonical);
        }
        LogicalType::Date => {
            let days = read_i32(canonical).ok_or_else(|| ValueError::corrupt(ty))?;
            date_out_into(days, out);
        }
        _ => out.extend_from_slice(&text_out(ty, canonical, tz)?),
    }
    Ok(())
}

/// The text output of a canonical value.
pub(super) fn text_out(
    ty: LogicalType,
    canonical: &[u8],
    tz: &SessionTime,
) -> Result<Vec<u8>, ValueError> {
    let bad = || ValueError::corrupt(ty);
    match ty {
        LogicalType::Text | LogicalType::Varchar | LogicalType::Jsonb => Ok(canonical.to_vec()),
        LogicalType::Bytea => Ok(bytea_out(canonical)),
        LogicalType::Int2 | LogicalType::Int4 | LogicalType::Int8 => {
            check_int_width(ty, canonical)?;
            Ok(read_int(canonical)
                .ok_or_else(bad)?
                .to_string()
                .into_bytes())
        }
        LogicalType::Float8 => {
            let raw: [u8; 8] = canonical.try_into().map_err(|_| bad())?;
            Ok(float8_out(f64::from_be_bytes(raw)).into_bytes())
        }
        LogicalType::Bool => match canonical {
            [0] => Ok(b"f".to_vec()),
            [1] => Ok(b"t".to_vec()),
            _ => Err(bad()),
        },
        LogicalType::Uuid => {
            let raw: [u8; 16] = canonical.try_into().map_err(|_| bad())?;
            Ok(uuid_out(&raw).into_bytes())
        }
        LogicalType::Date => Ok(date_out(read_i32(canonical).ok_or_else(bad)?).into_bytes()),
        LogicalType::Timestamp | LogicalType::Timestamptz => {
            let us = read_i64(canonical).ok_or_else(bad)?;
            Ok(timestamp_out(us, ty, tz).into_bytes())
        }
        LogicalType::Numeric => Ok(stored_numeric(canonical)
            .ok_or_else(bad)?
            .normalized_text()
            .into_bytes()),
    }
}

/// The binary output of a canonical value.
pub(super) fn binary_out(ty: LogicalType, canonical: &[u8]) -> Result<Vec<u8>, ValueError> {
    let bad = || ValueError::corrupt(ty);
    let sized = |len: usize| {
        if canonical.len() == len {
            Ok(canonical.to_vec())
        } else {
            Err(bad())
        }
    };
    match ty {
        LogicalType::Text | LogicalType::Varchar | LogicalType::Bytea => Ok(canonical.to_vec()),
        LogicalType::Int2 | LogicalType::Int4 | LogicalType::Int8 => {
            check_int_width(ty, canonical)?;
            Ok(canonical.to_vec())
        }
        LogicalType::Float8 | LogicalType::Timestamp | LogicalType::Timestamptz => sized(8),
        LogicalType::Date => sized(4),
        LogicalType::Uuid => sized(16),
        LogicalType::Bool => match canonical {
            [b @ (0 | 1)] => Ok(vec![*b]),
            _ => Err(bad()),
        },
        LogicalType::Numeric => Ok(stored_numeric(canonical)
            .ok_or_else(bad)?
            .normalized()
            .to_send()),
        // jsonb_send: a version byte, then the text.
        LogicalType::Jsonb => {
            let mut out = Vec::with_capacity(1 + canonical.len());
            out.push(1);
            out.extend_from_slice(canonical);
            Ok(out)
        }
    }
}

/// A stored numeric is its normalized text; anything else is not a value pgveil wrote.
fn stored_numeric(canonical: &[u8]) -> Option<Decimal> {
    let s = std::str::from_utf8(canonical).ok()?;
    numeric_in(s).ok()
}

fn check_int_width(ty: LogicalType, canonical: &[u8]) -> Result<(), ValueError> {
    let expected = match ty {
        LogicalType::Int2 => 2,
        LogicalType::Int4 => 4,
        _ => 8,
    };
    if canonical.len() == expected {
        Ok(())
    } else {
        Err(ValueError::corrupt(ty))
    }
}
