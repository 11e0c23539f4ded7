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
    push_bytea_hex(raw, &mut out);
    out
}

/// Appends `raw` in bytea's hex text form (`\x` and two lower-case digits a byte). Every
/// ciphertext sent as text goes through here, so it writes in place rather than through a
/// temporary string.
pub fn push_bytea_hex(raw: &[u8], out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"\\x");
    // Sized once and filled by pairs: a push per digit checked the capacity each time.
    let start = out.len();
    out.resize(start + 2 * raw.len(), 0);
    for (pair, &byte) in out[start..].chunks_exact_mut(2).zip(raw) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

/// bytea's text form (hex or escape, as the database prints it) decoded; `None` when it
/// is not valid bytea input.
pub fn decode_bytea_text(text: &[u8]) -> Option<Vec<u8>> {
    // The database prints hex without whitespace: that common case is decoded by pairs,
    // everything else (escape format, whitespace) by the full input function.
    if let Some(hex) = text.strip_prefix(b"\\x") {
        if let Some(raw) = decode_hex_pairs(hex) {
            return Some(raw);
        }
    }
    bytea_in(text).ok()
}

/// Each byte's value as a hex digit, or `INVALID`.
const HEX_DIGITS: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};
const INVALID: u8 = 0xff;

/// Hex digits two a byte, nothing else (`None` otherwise). Every value read back from a
/// protected column in text format goes through here, so it runs without a branch per
/// digit: a bad digit sets high bits that are checked once at the end.
fn decode_hex_pairs(hex: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    decode_hex_pairs_into(hex, &mut out).then_some(out)
}

/// [`decode_bytea_text`] into `out` (cleared first), so a bulk read reuses one buffer;
/// `false` when `text` is not valid bytea input.
pub fn decode_bytea_text_into(text: &[u8], out: &mut Vec<u8>) -> bool {
    if let Some(hex) = text.strip_prefix(b"\\x") {
        if decode_hex_pairs_into(hex, out) {
            return true;
        }
    }
    out.clear();
    match bytea_in(text) {
        Ok(raw) => {
            out.extend_from_slice(&raw);
            true
        }
        Err(_) => false,
    }
}

/// [`decode_hex_pairs`] appended to a cleared `out`.
fn decode_hex_pairs_into(hex: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    if !hex.len().is_multiple_of(2) {
        return false;
    }
    // Extended from an exact-size iterator: no zero-fill, no capacity check per byte.
    let mut seen = 0u8;
    out.extend(hex.chunks_exact(2).map(|pair| {
        let (high, low) = (
            HEX_DIGITS[usize::from(pair[0])],
            HEX_DIGITS[usize::from(pair[1])],
        );
        seen |= high | low;
        high << 4 | low
    }));
    seen & 0xf0 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_the_escape_form_decodes() {
        let raw: Vec<u8> = (0..=255).collect();
        let mut text = Vec::new();
        push_bytea_hex(&raw, &mut text);
        assert_eq!(text, bytea_out(&raw));
        assert_eq!(&text[..4], b"\\x00");
        assert_eq!(decode_bytea_text(&text).unwrap(), raw);
        assert_eq!(decode_bytea_text(b"\\x00FF").unwrap(), vec![0, 255]);
        // Whitespace between pairs is bytea input too; odd digits and non-hex are not.
        assert_eq!(decode_bytea_text(b"\\x00 ff").unwrap(), vec![0, 255]);
        assert!(decode_bytea_text(b"\\x0").is_none());
        assert!(decode_bytea_text(b"\\xzz").is_none());
        for bad in [b'g', b'G', b'/', b':', b'@', b'`', 0x80, 0xff] {
            assert!(
                decode_bytea_text(&[b'\\', b'x', b'0', bad]).is_none(),
                "{bad}"
            );
            assert!(
                decode_bytea_text(&[b'\\', b'x', bad, b'0']).is_none(),
                "{bad}"
            );
        }
        assert_eq!(
            decode_bytea_text(b"a\\\\b\\001").unwrap(),
            b"a\\b\x01".to_vec()
        );
    }
}
