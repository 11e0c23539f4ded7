//! `numeric`: text and binary input, the normalized text that is its canonical form, and
//! binary output byte for byte as PostgreSQL 15's `numeric_send`. Digits are kept in base 10,
//! so any precision PostgreSQL accepts (131072 integer digits, 16383 fraction digits) is exact.

use super::error::ValueError;
use super::scalar::is_pg_space;
use crate::schema::LogicalType;

/// Maximum digits before the decimal point and after it (PostgreSQL's numeric limits).
const NUMERIC_MAX_WEIGHT_DIGITS: i64 = 131_072;
const NUMERIC_DSCALE_MAX: i64 = 0x3FFF;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decimal {
    NaN,
    PosInf,
    NegInf,
    /// value = 0.d₀d₁… × 10^point; `digits` (0–9) carry no leading or trailing zeros (empty
    /// for zero); `dscale` is the number of fraction digits to print.
    Finite {
        neg: bool,
        digits: Vec<u8>,
        point: i64,
        dscale: i64,
    },
}

impl Decimal {
    pub(super) fn from_i64(v: i64) -> Decimal {
        let digits: Vec<u8> = v
            .unsigned_abs()
            .to_string()
            .bytes()
            .map(|b| b - b'0')
            .collect();
        let int_len = digits.len() as i64;
        Decimal::finite(v < 0, digits, int_len, 0, 0)
    }

    /// Builds from raw digits where `int_len` of them are before the point, scaled by 10^exp.
    fn finite(neg: bool, mut digits: Vec<u8>, int_len: i64, exp: i64, dscale: i64) -> Decimal {
        let lead = digits.iter().take_while(|&&d| d == 0).count();
        digits.drain(..lead);
        while digits.last() == Some(&0) {
            digits.pop();
        }
        let point = if digits.is_empty() {
            0
        } else {
            int_len - lead as i64 + exp
        };
        let neg = neg && !digits.is_empty();
        Decimal::Finite {
            neg,
            digits,
            point,
            dscale: dscale.max(0),
        }
    }

    /// Digits the display scale hides are cut off, as PostgreSQL's numeric_recv does
    /// (`trunc_var` to dscale): `0.00` with digits far below it reads as `0.00`.
    fn truncated_to_scale(self) -> Decimal {
        match self {
            Decimal::Finite {
                neg,
                mut digits,
                point,
                dscale,
            } => {
                let keep = usize::try_from(point + dscale).unwrap_or(0);
                if digits.len() > keep {
                    digits.truncate(keep);
                    return Decimal::finite(neg, digits, point, 0, dscale);
                }
                Decimal::Finite {
                    neg,
                    digits,
                    point,
                    dscale,
                }
            }
            other => other,
        }
    }

    fn check_range(self) -> Result<Decimal, ValueError> {
        if let Decimal::Finite { point, dscale, .. } = &self {
            if *point > NUMERIC_MAX_WEIGHT_DIGITS || *dscale > NUMERIC_DSCALE_MAX {
                return Err(ValueError::range(LogicalType::Numeric));
            }
        }
        Ok(self)
    }

    /// The same value with the display scale trimmed to its significant fraction digits.
    pub(super) fn normalized(&self) -> Decimal {
        match self {
            Decimal::Finite {
                neg, digits, point, ..
            } => Decimal::Finite {
                neg: *neg,
                digits: digits.clone(),
                point: *point,
                dscale: (digits.len() as i64 - point).max(0),
            },
            other => other.clone(),
        }
    }

    pub(super) fn normalized_text(&self) -> String {
        self.normalized().to_text()
    }

    /// numeric_out: all `dscale` fraction digits.
    pub(super) fn to_text(&self) -> String {
        match self {
            Decimal::NaN => "NaN".to_string(),
            Decimal::PosInf => "Infinity".to_string(),
            Decimal::NegInf => "-Infinity".to_string(),
            Decimal::Finite {
                neg,
                digits,
                point,
                dscale,
            } => {
                let digit = |i: i64| -> char {
                    if i >= 0 && (i as usize) < digits.len() {
                        char::from(b'0' + digits[i as usize])
                    } else {
                        '0'
                    }
                };
                let mut s = String::with_capacity(
                    digits.len() + 3 + (*point).max(0) as usize + *dscale as usize,
                );
                if *neg {
                    s.push('-');
                }
                if *point <= 0 {
                    s.push('0');
                } else {
                    (0..*point).for_each(|i| s.push(digit(i)));
                }
                if *dscale > 0 {
                    s.push('.');
                    (0..*dscale).for_each(|k| s.push(digit(point + k)));
                }
                s
            }
        }
    }

    /// numeric_send: ndigits, weight, sign, dscale (i16/u16 BE), then base-10000 digits.
    pub(super) fn to_send(&self) -> Vec<u8> {
        let (sign, neg, digits, point, dscale): (u16, bool, &[u8], i64, i64) = match self {
            Decimal::NaN => (0xC000, false, &[], 0, 0),
            // PostgreSQL 15 sends dscale 32 for infinities (bits of its short header read as
            // a display scale); mirrored so the bytes are identical.
            Decimal::PosInf => (0xD000, false, &[], 0, 32),
            Decimal::NegInf => (0xF000, false, &[], 0, 32),
            Decimal::Finite {
                neg,
                digits,
                point,
                dscale,
            } => (0, *neg, digits, *point, *dscale),
        };
        let mut groups: Vec<u16> = Vec::new();
        let mut weight: i64 = 0;
        if !digits.is_empty() {
            let lead_pad = (4 - point.rem_euclid(4)) % 4;
            let padded_point = point + lead_pad;
            let total = lead_pad as usize + digits.len();
            let total = total.div_ceil(4) * 4;
            let mut padded = vec![0u8; total];
            padded[lead_pad as usize..lead_pad as usize + digits.len()].copy_from_slice(digits);
            groups = padded
                .chunks(4)
                .map(|c| c.iter().fold(0u16, |acc, &d| acc * 10 + u16::from(d)))
                .collect();
            weight = padded_point / 4 - 1;
            // The first digit is non-zero, so the first group is too; trim trailing zero groups.
            while groups.last() == Some(&0) {
                groups.pop();
            }
        }
        let sign = if neg { 0x4000 } else { sign };
        let mut out = Vec::with_capacity(8 + 2 * groups.len());
        out.extend_from_slice(&(groups.len() as u16).to_be_bytes());
        out.extend_from_slice(&(weight as i16).to_be_bytes());
        out.extend_from_slice(&sign.to_be_bytes());
        out.extend_from_slice(&(dscale as u16).to_be_bytes());
        for g in groups {
            out.extend_from_slice(&g.to_be_bytes());
        }
        out
    }
}

pub(super) fn numeric_in(s: &str) -> Result<Decimal, ValueError> {
    let err = || ValueError::syntax(LogicalType::Numeric);
    let t = s.trim_matches(is_pg_space);
    match t.to_ascii_lowercase().as_str() {
        "nan" => return Ok(Decimal::NaN),
        "infinity" | "+infinity" | "inf" | "+inf" => return Ok(Decimal::PosInf),
        "-infinity" | "-inf" => return Ok(Decimal::NegInf),
        _ => {}
    }
    let b = t.as_bytes();
    let mut i = 0;
    let neg = match b.first() {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let mut digits = Vec::with_capacity(b.len());
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        digits.push(b[i] - b'0');
        i += 1;
    }
    let int_len = (i - int_start) as i64;
    let mut frac_len = 0i64;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            digits.push(b[i] - b'0');
            i += 1;
            frac_len += 1;
        }
    }
    if digits.is_empty() {
        return Err(err());
    }
    let mut exp: i64 = 0;
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        let eneg = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            exp = exp
                .saturating_mul(10)
                .saturating_add(i64::from(b[i] - b'0'));
            i += 1;
        }
        if i == start {
            return Err(err());
        }
        if exp > 1_000_000 {
            return Err(ValueError::range(LogicalType::Numeric));
        }
        if eneg {
            exp = -exp;
        }
    }
    if i != b.len() {
        return Err(err());
    }
    Decimal::finite(neg, digits, int_len, exp, frac_len - exp).check_range()
}

pub(super) fn numeric_recv(b: &[u8]) -> Result<Decimal, ValueError> {
    let bad = || ValueError::binary(LogicalType::Numeric);
    if b.len() < 8 {
        return Err(bad());
    }
    let ndigits = usize::from(u16::from_be_bytes([b[0], b[1]]));
    let weight = i64::from(i16::from_be_bytes([b[2], b[3]]));
    let sign = u16::from_be_bytes([b[4], b[5]]);
    let dscale = u16::from_be_bytes([b[6], b[7]]);
    if b.len() != 8 + 2 * ndigits || i64::from(dscale) > NUMERIC_DSCALE_MAX {
        return Err(bad());
    }
    match sign {
        0xC000 => return Ok(Decimal::NaN),
        0xD000 => return Ok(Decimal::PosInf),
        0xF000 => return Ok(Decimal::NegInf),
        0x0000 | 0x4000 => {}
        _ => return Err(bad()),
    }
    let mut digits = Vec::with_capacity(ndigits * 4);
    for pair in b[8..].chunks_exact(2) {
        let g = u16::from_be_bytes([pair[0], pair[1]]);
        if g >= 10_000 {
            return Err(bad());
        }
        digits.extend_from_slice(&[
            (g / 1000) as u8,
            (g / 100 % 10) as u8,
            (g / 10 % 10) as u8,
            (g % 10) as u8,
        ]);
    }
    Decimal::finite(
        sign == 0x4000,
        digits,
        (weight + 1) * 4,
        0,
        i64::from(dscale),
    )
    .truncated_to_scale()
    .check_range()
}

#[cfg(test)]
mod tests {
    use crate::pgtype::tests::{canon, err_of, utc};
    use crate::pgtype::{canonical_from_binary, to_wire, WireFormat};
    use crate::schema::LogicalType as T;

    #[test]
    fn numeric_binary_matches_postgres_numeric_send() {
        // numeric_send(trim_scale(x)) from PostgreSQL 15.
        let cases = [
            ("1.5", "000200000000000100011388"),
            ("-0.0001", "0001ffff400000040001"),
            ("12345678.9", "000300010000000104d2162e2328"),
            ("0", "0000000000000000"),
            ("100000", "0001000100000000000a"),
            ("NaN", "00000000c0000000"),
            ("Infinity", "00000000d0000020"),
            ("-Infinity", "00000000f0000020"),
            ("0.00000000000000000001", "0001fffb000000140001"),
            (
                "-123456789.000000001",
                "0006000240000009000109291a850000000003e8",
            ),
            ("9999.9999", "0002000000000004270f270f"),
            ("10000", "00010001000000000001"),
            ("0.5", "0001ffff000000011388"),
            ("123.456", "0002000000000003007b11d0"),
        ];
        for (text, hexbytes) in cases {
            let c = canon(T::Numeric, text);
            let bin = to_wire(T::Numeric, &c, WireFormat::Binary, &utc()).unwrap();
            assert_eq!(hex::encode(&bin), hexbytes, "{text}");
            assert_eq!(
                canonical_from_binary(T::Numeric, 0, &hex::decode(hexbytes).unwrap(), &utc())
                    .unwrap(),
                c
            );
        }
    }

    #[test]
    fn binary_digits_below_the_display_scale_are_truncated() {
        // Found by fuzz/literals: weight -32768, dscale 2, digits 0012 3400. PostgreSQL 15's
        // numeric_recv reads it as 0.00; pgveil accepted it and could not print it.
        let tiny = [0u8, 2, 0x80, 0, 0, 0, 0, 2, 0, 12, 13, 72];
        let c = canonical_from_binary(T::Numeric, 0, &tiny, &utc()).unwrap();
        assert_eq!(c, canon(T::Numeric, "0.00"));
        // Canonical numerics keep no display scale (equal values, equal ciphertexts).
        let text = to_wire(T::Numeric, &c, WireFormat::Text, &utc()).unwrap();
        assert_eq!(text, b"0");
        // 1.2399 (weight 0, digits 0001 2399) sent with dscale 2 is 1.23: truncated, not rounded.
        let c = canonical_from_binary(
            T::Numeric,
            0,
            &hex::decode("00020000000000020001095f").unwrap(),
            &utc(),
        )
        .unwrap();
        assert_eq!(
            to_wire(T::Numeric, &c, WireFormat::Text, &utc()).unwrap(),
            b"1.23"
        );
    }

    #[test]
    fn numeric_limits_match_postgres() {
        // Checked against PostgreSQL 15: 131072 integer digits and 16383 fraction digits are
        // the limits; beyond them 22003.
        assert_eq!(canon(T::Numeric, "1e131071").len(), 131_072);
        assert_eq!(canon(T::Numeric, "1e-16383").len(), 16_385);
        for bad in [
            "1e131072",
            "1e-16384",
            "0.0000e-16400",
            "1e-20000",
            "1e9999999",
        ] {
            assert_eq!(err_of(T::Numeric, bad).sqlstate(), "22003", "{bad}");
        }
        // A jsonb number is a numeric too.
        assert_eq!(err_of(T::Jsonb, "[1e131072]").sqlstate(), "22003");
    }
}
