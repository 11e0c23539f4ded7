//! Binary input of each logical type itself (PostgreSQL's `*_recv`): the bytes are checked
//! for the type's shape and range and brought to the canonical form. Also the big-endian
//! reads the output and cast paths share.

use super::calendar::{
    date_in_range, timestamp_in_range, DATE_NOBEGIN, DATE_NOEND, DT_NOBEGIN, DT_NOEND,
};
use super::error::ValueError;
use super::float::float8_canonical;
use super::json::jsonb_in;
use super::numeric::numeric_recv;
use crate::schema::LogicalType;

pub(super) fn read_int(b: &[u8]) -> Option<i64> {
    match b.len() {
        2 => Some(i64::from(i16::from_be_bytes([b[0], b[1]]))),
        4 => Some(i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
        8 => read_i64(b),
        _ => None,
    }
}

pub(super) fn read_i32(b: &[u8]) -> Option<i32> {
    <[u8; 4]>::try_from(b).ok().map(i32::from_be_bytes)
}

pub(super) fn read_i64(b: &[u8]) -> Option<i64> {
    <[u8; 8]>::try_from(b).ok().map(i64::from_be_bytes)
}

/// Canonical bytes of a binary value of type `ty` itself.
pub(super) fn recv_own(ty: LogicalType, bytes: &[u8]) -> Result<Vec<u8>, ValueError> {
    let bad = || ValueError::binary(ty);
    match ty {
        LogicalType::Text | LogicalType::Varchar | LogicalType::Bytea => Ok(bytes.to_vec()),
        LogicalType::Int2 | LogicalType::Int4 | LogicalType::Int8 => {
            let len = match ty {
                LogicalType::Int2 => 2,
                LogicalType::Int4 => 4,
                _ => 8,
            };
            if bytes.len() == len {
                Ok(bytes.to_vec())
            } else {
                Err(bad())
            }
        }
        LogicalType::Float8 => {
            let raw: [u8; 8] = bytes.try_into().map_err(|_| bad())?;
            Ok(float8_canonical(f64::from_be_bytes(raw)))
        }
        LogicalType::Bool => match bytes {
            [b] => Ok(vec![u8::from(*b != 0)]),
            _ => Err(bad()),
        },
        LogicalType::Date => {
            let days = read_i32(bytes).ok_or_else(bad)?;
            if days != DATE_NOBEGIN && days != DATE_NOEND && !date_in_range(i64::from(days)) {
                return Err(ValueError::datetime_range(ty));
            }
            Ok(bytes.to_vec())
        }
        LogicalType::Timestamp | LogicalType::Timestamptz => {
            let us = read_i64(bytes).ok_or_else(bad)?;
            if us != DT_NOBEGIN && us != DT_NOEND && !timestamp_in_range(us) {
                return Err(ValueError::datetime_range(ty));
            }
            Ok(bytes.to_vec())
        }
        LogicalType::Uuid => {
            if bytes.len() == 16 {
                Ok(bytes.to_vec())
            } else {
                Err(bad())
            }
        }
        LogicalType::Numeric => Ok(numeric_recv(bytes)?.normalized_text().into_bytes()),
        LogicalType::Jsonb => match bytes.split_first() {
            Some((1, text)) => {
                let s = std::str::from_utf8(text).map_err(|_| bad())?;
                jsonb_in(s).map(String::into_bytes)
            }
            _ => Err(bad()),
        },
    }
}
