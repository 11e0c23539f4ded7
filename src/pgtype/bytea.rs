//! `bytea` text input, in both of PostgreSQL's forms (hex `\x…` and escape), and its hex
//! text output (`bytea_output = hex`).

use super::error::{ValueError, ValueErrorKind};
use super::scalar::hex_val;
use crate::schema::LogicalType;

pub(super) fn bytea_in(text: &[u8]) -> Result<Vec<u8>, ValueError> {
    let err = || ValueError::syntax(LogicalType::Bytea);
    if let Some(hexpart) = text.strip_prefix(b"\\x") {
        let err = || {
            ValueError::new(
                ValueErrorKind::InvalidParameterValue,
                "invalid hexadecimal data for type bytea",
            )
        };
        let mut out = Vec::with_capacity(hexpart.len() / 2);
        let mut i = 0;
        while i < hexpart.len() {
            let c = hexpart[i];
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                i += 1;
                continue;
            }
            let hi = hex_val(c).ok_or_else(err)?;
            let lo = hexpart
                .get(i + 1)
                .copied()
                .and_then(hex_val)
                .ok_or_else(err)?;
            out.push(hi << 4 | lo);
            i += 2;
        }
        return Ok(out);
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] != b'\\' {
            out.push(text[i]);
            i += 1;
        } else if text.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let d = |k: usize, max: u8| {
                text.get(i + k)
                    .copied()
                    .filter(|c| (b'0'..=max).contains(c))
            };
            match (d(1, b'3'), d(2, b'7'), d(3, b'7')) {
                (Some(a), Some(b), Some(c)) => {
                    out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
                    i += 4;
                }
                _ => return Err(err()),
            }
        }
    }
    Ok(out)
}

/// The hex text output: `\x` and two lower-case digits a byte.
pub(super) fn bytea_out(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + raw.len() * 2);
    out.extend_from_slice(b"\\x");
    out.extend_from_slice(hex::encode(raw).as_bytes());
    out
}
