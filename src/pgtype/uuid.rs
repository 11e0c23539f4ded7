//! `uuid`: text input in every spelling PostgreSQL accepts (upper or lower case, braces,
//! hyphens after any group of four digits) and the one text output.

use super::error::ValueError;
use super::scalar::hex_val;
use crate::schema::LogicalType;

pub(super) fn uuid_in(s: &str) -> Result<[u8; 16], ValueError> {
    let err = || ValueError::syntax(LogicalType::Uuid);
    let b = s.as_bytes();
    let mut i = 0;
    let braces = b.first() == Some(&b'{');
    if braces {
        i += 1;
    }
    let mut out = [0u8; 16];
    for (n, byte) in out.iter_mut().enumerate() {
        let hi = b.get(i).copied().and_then(hex_val).ok_or_else(err)?;
        let lo = b.get(i + 1).copied().and_then(hex_val).ok_or_else(err)?;
        *byte = hi << 4 | lo;
        i += 2;
        if n % 2 == 1 && n < 15 && b.get(i) == Some(&b'-') {
            i += 1;
        }
    }
    if braces {
        if b.get(i) != Some(&b'}') {
            return Err(err());
        }
        i += 1;
    }
    if i != b.len() {
        return Err(err());
    }
    Ok(out)
}

/// The text form: lower-case hex, `8-4-4-4-12`.
pub(crate) fn uuid_out(raw: &[u8; 16]) -> String {
    let h = hex::encode(raw);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
