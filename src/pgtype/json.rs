//! `jsonb`: a JSON parser with PostgreSQL's rules (numbers are `numeric`, `\u0000` refused,
//! nesting bounded) and the text jsonb prints, which is the canonical form: keys sorted by
//! length then bytes, the last of duplicate keys kept, `", "` and `": "` as separators.

use super::error::{ValueError, ValueErrorKind};
use super::numeric::numeric_in;
use super::scalar::hex_val;
use crate::schema::LogicalType;

/// Deeper nesting is refused rather than risking the stack.
const JSON_MAX_DEPTH: usize = 1000;

enum Json {
    Null,
    Bool(bool),
    /// numeric_out text of the number (display scale kept, as jsonb does).
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

struct JsonParser<'a> {
    b: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn err() -> ValueError {
        ValueError::syntax(LogicalType::Jsonb)
    }

    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, ValueError> {
        if depth > JSON_MAX_DEPTH {
            return Err(ValueError::new(
                ValueErrorKind::TooComplex,
                "json nesting too deep",
            ));
        }
        self.ws();
        match self.b.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut members = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(members));
                }
                loop {
                    self.ws();
                    if self.b.get(self.i) != Some(&b'"') {
                        return Err(Self::err());
                    }
                    let key = self.string()?;
                    self.ws();
                    if self.b.get(self.i) != Some(&b':') {
                        return Err(Self::err());
                    }
                    self.i += 1;
                    let v = self.value(depth + 1)?;
                    members.push((key, v));
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(members));
                        }
                        _ => return Err(Self::err()),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(items));
                        }
                        _ => return Err(Self::err()),
                    }
                }
            }
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'a'..=b'z') => {
                let start = self.i;
                while self.i < self.b.len() && self.b[self.i].is_ascii_alphanumeric() {
                    self.i += 1;
                }
                match &self.b[start..self.i] {
                    b"true" => Ok(Json::Bool(true)),
                    b"false" => Ok(Json::Bool(false)),
                    b"null" => Ok(Json::Null),
                    _ => Err(Self::err()),
                }
            }
            _ => Err(Self::err()),
        }
    }

    fn number(&mut self) -> Result<Json, ValueError> {
        let b = self.b;
        let start = self.i;
        let mut i = self.i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            _ => return Err(Self::err()),
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            let s = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == s {
                return Err(Self::err());
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let s = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == s {
                return Err(Self::err());
            }
        }
        // A number runs into a following letter or digit ("01", "1x"): invalid, as in PostgreSQL.
        if i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
            return Err(Self::err());
        }
        self.i = i;
        let text = std::str::from_utf8(&b[start..i]).map_err(|_| Self::err())?;
        Ok(Json::Num(numeric_in(text)?.to_text()))
    }

    fn hex4(&mut self) -> Result<u32, ValueError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = self
                .b
                .get(self.i)
                .copied()
                .and_then(hex_val)
                .ok_or_else(Self::err)?;
            v = v << 4 | u32::from(d);
            self.i += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, ValueError> {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        loop {
            let c = *self.b.get(self.i).ok_or_else(Self::err)?;
            self.i += 1;
            match c {
                b'"' => break,
                0..=0x1F => return Err(Self::err()),
                b'\\' => {
                    let e = *self.b.get(self.i).ok_or_else(Self::err)?;
                    self.i += 1;
                    match e {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'/' => out.push(b'/'),
                        b'b' => out.push(0x08),
                        b'f' => out.push(0x0C),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xD800..0xDC00).contains(&cp) {
                                if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return Err(Self::err());
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(Self::err());
                                }
                                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                            } else if (0xDC00..0xE000).contains(&cp) {
                                return Err(Self::err());
                            }
                            if cp == 0 {
                                return Err(ValueError::new(
                                    ValueErrorKind::UntranslatableCharacter,
                                    "unsupported Unicode escape sequence for type jsonb",
                                ));
                            }
                            let ch = char::from_u32(cp).ok_or_else(Self::err)?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(Self::err()),
                    }
                }
                _ => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| Self::err())
    }
}

fn json_escape(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_write(out: &mut String, v: &Json) {
    match v {
        Json::Null => out.push_str("null"),
        Json::Bool(true) => out.push_str("true"),
        Json::Bool(false) => out.push_str("false"),
        Json::Num(n) => out.push_str(n),
        Json::Str(s) => json_escape(out, s),
        Json::Arr(items) => {
            out.push('[');
            for (k, item) in items.iter().enumerate() {
                if k > 0 {
                    out.push_str(", ");
                }
                json_write(out, item);
            }
            out.push(']');
        }
        Json::Obj(members) => {
            out.push('{');
            for (k, (key, val)) in members.iter().enumerate() {
                if k > 0 {
                    out.push_str(", ");
                }
                json_escape(out, key);
                out.push_str(": ");
                json_write(out, val);
            }
            out.push('}');
        }
    }
}

/// jsonb's normal form: keys sorted by length then bytes, the last of duplicate keys kept.
fn json_normalize(v: &mut Json) {
    match v {
        Json::Arr(items) => items.iter_mut().for_each(json_normalize),
        Json::Obj(members) => {
            // Stable: among equal keys the input order stays, so the last one is the last.
            members.sort_by(|a, b| {
                a.0.len()
                    .cmp(&b.0.len())
                    .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
            });
            let mut kept: Vec<(String, Json)> = Vec::with_capacity(members.len());
            for m in members.drain(..) {
                match kept.last_mut() {
                    Some(last) if last.0 == m.0 => *last = m,
                    _ => kept.push(m),
                }
            }
            kept.iter_mut().for_each(|(_, v)| json_normalize(v));
            *members = kept;
        }
        _ => {}
    }
}

/// The canonical (jsonb output) text of a JSON document.
pub(super) fn jsonb_in(s: &str) -> Result<String, ValueError> {
    let mut p = JsonParser {
        b: s.as_bytes(),
        i: 0,
    };
    let mut v = p.value(0)?;
    p.ws();
    if p.i != p.b.len() {
        return Err(JsonParser::err());
    }
    json_normalize(&mut v);
    let mut out = String::with_capacity(s.len());
    json_write(&mut out, &v);
    Ok(out)
}
