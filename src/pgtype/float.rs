//! `float8`: text input with strtod's decimal syntax and PostgreSQL's range errors, the
//! canonical bytes (one NaN), and the shortest text output that reads back exactly
//! (`extra_float_digits = 1`).

use super::error::ValueError;
use super::scalar::is_pg_space;
use crate::schema::LogicalType;

pub(super) fn float8_canonical(v: f64) -> Vec<u8> {
    if v.is_nan() {
        f64::NAN.to_be_bytes().to_vec()
    } else {
        v.to_be_bytes().to_vec()
    }
}

pub(super) fn float8_in(s: &str) -> Result<f64, ValueError> {
    let ty = LogicalType::Float8;
    let t = s.trim_matches(is_pg_space);
    let lower = t.to_ascii_lowercase();
    let unsigned = lower.strip_prefix(['+', '-']).unwrap_or(&lower);
    let neg = lower.starts_with('-');
    match unsigned {
        "nan" => return Ok(f64::NAN),
        "inf" | "infinity" => {
            return Ok(if neg {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            })
        }
        _ => {}
    }
    // strtod's decimal syntax: digits [. digits] [e [sign] digits], at least one digit.
    let b = unsigned.as_bytes();
    let mut i = 0;
    let mut mantissa_nonzero = false;
    let mut ndigits = 0;
    while i < b.len() && (b[i].is_ascii_digit() || (b[i] == b'.')) {
        if b[i] == b'.' {
            if b[..i].contains(&b'.') {
                return Err(ValueError::syntax(ty));
            }
        } else {
            ndigits += 1;
            mantissa_nonzero |= b[i] != b'0';
        }
        i += 1;
    }
    if ndigits == 0 {
        return Err(ValueError::syntax(ty));
    }
    if i < b.len() && b[i] == b'e' {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(ValueError::syntax(ty));
        }
    }
    if i != b.len() {
        return Err(ValueError::syntax(ty));
    }
    let v: f64 = t.parse().map_err(|_| ValueError::syntax(ty))?;
    if v.is_infinite() || (v == 0.0 && mantissa_nonzero) {
        return Err(ValueError::range(ty));
    }
    Ok(v)
}

/// float8out with extra_float_digits = 1: the shortest text that reads back exactly, in
/// fixed notation for decimal exponents -4..15 and `1.5e-05` style otherwise.
pub(super) fn float8_out(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let sci = format!("{v:e}");
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    if !(-4..15).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.unsigned_abs());
    }
    let neg = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    if exp < 0 {
        s.push_str("0.");
        (0..(-exp - 1)).for_each(|_| s.push('0'));
        s.push_str(&digits);
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            s.push_str(&digits);
            (digits.len()..int_len).for_each(|_| s.push('0'));
        } else {
            s.push_str(&digits[..int_len]);
            s.push('.');
            s.push_str(&digits[int_len..]);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float8_text_is_shortest_round_trip() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x);
            if v.is_nan() {
                continue;
            }
            let s = float8_out(v);
            let back = float8_in(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(back.to_bits(), v.to_bits(), "{s}");
        }
        for (v, s) in [
            (1e20, "1e+20"),
            (1.5e-5, "1.5e-05"),
            (1e-100, "1e-100"),
            (123.0, "123"),
            (-0.5, "-0.5"),
        ] {
            assert_eq!(float8_out(v), s);
        }
    }
}
