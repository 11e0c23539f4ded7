//! One-dimensional arrays, as a client binds them for a protected column's elements
//! (`UNNEST($1::text[])`): PostgreSQL's text form (`{a,"b c",NULL}`) and binary form
//! (`array_recv`) read into their elements, and a `bytea[]` written back in binary with
//! the elements' ciphertexts. Multi-dimensional arrays and dimension decorations
//! (`[0:1]={…}`) are refused: pgveil would have to keep their shape for no client that
//! needs it.

use super::error::{ValueError, ValueErrorKind};
use super::oid;

fn malformed() -> ValueError {
    ValueError::new(ValueErrorKind::InvalidText, "malformed array literal")
}

fn malformed_binary() -> ValueError {
    ValueError::new(
        ValueErrorKind::InvalidBinary,
        "malformed binary array (only one-dimensional arrays are accepted)",
    )
}

/// The elements of a one-dimensional array in text form; `None` is an unquoted `NULL`.
pub fn text_array_elements(text: &[u8]) -> Result<Vec<Option<Vec<u8>>>, ValueError> {
    let trimmed = trim(text);
    let inner = trimmed
        .strip_prefix(b"{")
        .and_then(|t| t.strip_suffix(b"}"))
        .ok_or_else(malformed)?;
    let mut out = Vec::new();
    if trim(inner).is_empty() {
        return Ok(out);
    }
    let mut i = 0;
    loop {
        while inner.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        let (element, next) = match inner.get(i) {
            Some(b'"') => quoted(inner, i + 1)?,
            Some(b'{') => return Err(malformed()),
            Some(_) => unquoted(inner, i)?,
            None => return Err(malformed()),
        };
        out.push(element);
        i = next;
        while inner.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        match inner.get(i) {
            None => return Ok(out),
            Some(b',') => i += 1,
            Some(_) => return Err(malformed()),
        }
    }
}

fn trim(text: &[u8]) -> &[u8] {
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    let end = text
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &text[start..end]
}

/// A `"…"` element from just after its opening quote: backslash escapes the next byte.
fn quoted(s: &[u8], mut i: usize) -> Result<(Option<Vec<u8>>, usize), ValueError> {
    let mut value = Vec::new();
    loop {
        match s.get(i) {
            Some(b'\\') => {
                value.push(*s.get(i + 1).ok_or_else(malformed)?);
                i += 2;
            }
            Some(b'"') => return Ok((Some(value), i + 1)),
            Some(&b) => {
                value.push(b);
                i += 1;
            }
            None => return Err(malformed()),
        }
    }
}

/// An unquoted element: up to `,` or the end; surrounding blanks dropped unless escaped;
/// `NULL` (any case) is SQL NULL.
fn unquoted(s: &[u8], mut i: usize) -> Result<(Option<Vec<u8>>, usize), ValueError> {
    let mut value = Vec::new();
    // Length of `value` up to its last escaped or non-blank byte.
    let mut kept = 0;
    let mut escaped_any = false;
    while let Some(&b) = s.get(i) {
        match b {
            b',' => break,
            b'"' | b'{' | b'}' => return Err(malformed()),
            b'\\' => {
                value.push(*s.get(i + 1).ok_or_else(malformed)?);
                kept = value.len();
                escaped_any = true;
                i += 2;
            }
            _ => {
                value.push(b);
                if !b.is_ascii_whitespace() {
                    kept = value.len();
                }
                i += 1;
            }
        }
    }
    value.truncate(kept);
    if value.is_empty() {
        return Err(malformed());
    }
    if !escaped_any && value.eq_ignore_ascii_case(b"null") {
        return Ok((None, i));
    }
    Ok((Some(value), i))
}

/// An array's element type and its elements (`None`: NULL).
pub type Elements<'a> = (u32, Vec<Option<&'a [u8]>>);

/// A one-dimensional (or empty) array in binary form: its element type and elements.
pub fn binary_array_elements(bytes: &[u8]) -> Result<Elements<'_>, ValueError> {
    let mut reader = Reader { bytes, at: 0 };
    let ndim = reader.i32()?;
    let _has_nulls = reader.i32()?;
    let element_type = reader.u32()?;
    let count = match ndim {
        0 => 0,
        1 => {
            let length = reader.i32()?;
            let _lower_bound = reader.i32()?;
            usize::try_from(length).map_err(|_| malformed_binary())?
        }
        _ => return Err(malformed_binary()),
    };
    let mut out = Vec::with_capacity(count.min(bytes.len() / 4));
    for _ in 0..count {
        let length = reader.i32()?;
        if length == -1 {
            out.push(None);
            continue;
        }
        let length = usize::try_from(length).map_err(|_| malformed_binary())?;
        out.push(Some(reader.take(length)?));
    }
    if reader.at != bytes.len() {
        return Err(malformed_binary());
    }
    Ok((element_type, out))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ValueError> {
        let end = self.at.checked_add(n).ok_or_else(malformed_binary)?;
        let out = self.bytes.get(self.at..end).ok_or_else(malformed_binary)?;
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, ValueError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i32(&mut self) -> Result<i32, ValueError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// A one-dimensional `bytea[]` in binary form (`array_send`), lower bound 1.
pub fn bytea_array_binary(elements: &[Option<Vec<u8>>]) -> Result<Vec<u8>, ValueError> {
    let too_big = || ValueError::new(ValueErrorKind::OutOfRange, "array too large");
    let count = i32::try_from(elements.len()).map_err(|_| too_big())?;
    let has_nulls = i32::from(elements.iter().any(Option::is_none));
    let mut out = Vec::with_capacity(
        20 + elements
            .iter()
            .flatten()
            .map(|e| e.len() + 4)
            .sum::<usize>(),
    );
    if elements.is_empty() {
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&oid::BYTEA.to_be_bytes());
        return Ok(out);
    }
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&has_nulls.to_be_bytes());
    out.extend_from_slice(&oid::BYTEA.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    for element in elements {
        match element {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(e) => {
                let length = i32::try_from(e.len()).map_err(|_| too_big())?;
                out.extend_from_slice(&length.to_be_bytes());
                out.extend_from_slice(e);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Vec<Option<String>> {
        text_array_elements(s.as_bytes())
            .unwrap()
            .into_iter()
            .map(|e| e.map(|v| String::from_utf8(v).unwrap()))
            .collect()
    }

    #[test]
    fn text_arrays_read_as_postgresql_does() {
        assert_eq!(text("{}"), Vec::<Option<String>>::new());
        assert_eq!(text(" { } "), Vec::<Option<String>>::new());
        assert_eq!(
            text(r#"{a, "b c" ,NULL,"NULL",nUlL, x\,y ,"q\"r"}"#),
            vec![
                Some("a".into()),
                Some("b c".into()),
                None,
                Some("NULL".into()),
                None,
                Some("x,y".into()),
                Some("q\"r".into()),
            ]
        );
        assert_eq!(text(r"{a\ }"), vec![Some("a ".into())]);
        for bad in [
            "",
            "{",
            "{a,}",
            "{,a}",
            "{{a}}",
            "[0:1]={a,b}",
            "{a\"b}",
            "{\"a}",
        ] {
            assert!(text_array_elements(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn binary_arrays_round_trip() {
        let elements = vec![Some(b"ab".to_vec()), None, Some(Vec::new())];
        let bytes = bytea_array_binary(&elements).unwrap();
        let (element_type, read) = binary_array_elements(&bytes).unwrap();
        assert_eq!(element_type, oid::BYTEA);
        assert_eq!(read, vec![Some(&b"ab"[..]), None, Some(&b""[..])]);
        let empty = bytea_array_binary(&[]).unwrap();
        assert_eq!(
            binary_array_elements(&empty).unwrap().1,
            Vec::<Option<&[u8]>>::new()
        );
        assert!(binary_array_elements(&bytes[..bytes.len() - 1]).is_err());
        let mut two_dims = bytes.clone();
        two_dims[3] = 2;
        assert!(binary_array_elements(&two_dims).is_err());
    }
}
