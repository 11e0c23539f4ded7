//! Text input of `bool` and the integer types, and the lexical rules the other input
//! functions share (PostgreSQL's whitespace, hex digits).

use super::error::ValueError;
use crate::schema::LogicalType;

/// The characters PostgreSQL's input functions skip around a value (`scanner_isspace`).
pub(super) fn is_pg_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

pub(super) fn bool_in(s: &str) -> Result<bool, ValueError> {
    let t = s.trim_matches(is_pg_space).to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| t.len() >= min && word.starts_with(t.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) || t == "1" {
        Ok(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || t == "0" {
        Ok(false)
    } else {
        Err(ValueError::syntax(LogicalType::Bool))
    }
}

/// Canonical bytes (2, 4 or 8 big-endian) of an `int2`, `int4` or `int8` in text.
pub(super) fn int_canonical(ty: LogicalType, s: &str) -> Result<Vec<u8>, ValueError> {
    Ok(match ty {
        LogicalType::Int2 => (int_in(s, ty, i64::from(i16::MIN), i64::from(i16::MAX))? as i16)
            .to_be_bytes()
            .to_vec(),
        LogicalType::Int4 => (int_in(s, ty, i64::from(i32::MIN), i64::from(i32::MAX))? as i32)
            .to_be_bytes()
            .to_vec(),
        _ => int_in(s, ty, i64::MIN, i64::MAX)?.to_be_bytes().to_vec(),
    })
}

fn int_in(s: &str, ty: LogicalType, min: i64, max: i64) -> Result<i64, ValueError> {
    let t = s.trim_matches(is_pg_space);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValueError::syntax(ty));
    }
    // Accumulate negatively so that i64::MIN fits.
    let mut acc: i64 = 0;
    for b in digits.bytes() {
        acc = acc
            .checked_mul(10)
            .and_then(|a| a.checked_sub(i64::from(b - b'0')))
            .ok_or_else(|| ValueError::range(ty))?;
    }
    let v = if neg {
        acc
    } else {
        acc.checked_neg().ok_or_else(|| ValueError::range(ty))?
    };
    if v < min || v > max {
        return Err(ValueError::range(ty));
    }
    Ok(v)
}

pub(super) fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
