//! The few messages pgveil decodes and re-encodes. Everything else stays raw bytes.
//!
//! Names and query texts are kept as bytes: a client whose `client_encoding` is not UTF-8
//! must get back exactly what it sent. Query texts are checked for UTF-8 only where they must
//! be analysed.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{read_cstr, read_i16, read_i32};

#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("malformed {0} message")]
pub struct Malformed(pub &'static str);

/// Starts a frame with a placeholder length, patched by [`finish`].
fn begin(tag: u8, capacity: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(capacity + 5);
    out.put_u8(tag);
    out.put_u32(0);
    out
}

fn finish(mut out: BytesMut) -> Bytes {
    let len = (out.len() - 1) as u32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out.freeze()
}

fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// `Q`: the query text (without its terminating NUL).
pub fn query_text(body: &[u8]) -> Result<&[u8], Malformed> {
    let mut rest = body;
    let text = read_cstr(&mut rest).ok_or(Malformed("Query"))?;
    Ok(text)
}

pub fn encode_query(text: &[u8]) -> Bytes {
    let mut out = begin(b'Q', text.len() + 1);
    put_cstr(&mut out, text);
    finish(out)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse {
    pub name: Bytes,
    pub query: Bytes,
    pub param_types: Vec<u32>,
}

impl Parse {
    pub fn decode(body: &[u8]) -> Result<Self, Malformed> {
        let err = Malformed("Parse");
        let mut rest = body;
        let name = Bytes::copy_from_slice(read_cstr(&mut rest).ok_or(err)?);
        let query = Bytes::copy_from_slice(read_cstr(&mut rest).ok_or(err)?);
        let count = read_i16(&mut rest).ok_or(err)?;
        let mut param_types = Vec::with_capacity(count.max(0) as usize);
        for _ in 0..count.max(0) {
            param_types.push(read_i32(&mut rest).ok_or(err)? as u32);
        }
        if count < 0 || !rest.is_empty() {
            return Err(err);
        }
        Ok(Self {
            name,
            query,
            param_types,
        })
    }

    pub fn encode(&self) -> Bytes {
        let mut out = begin(
            b'P',
            self.name.len() + self.query.len() + 4 + 4 * self.param_types.len(),
        );
        put_cstr(&mut out, &self.name);
        put_cstr(&mut out, &self.query);
        out.put_i16(self.param_types.len() as i16);
        for oid in &self.param_types {
            out.put_u32(*oid);
        }
        finish(out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub portal: Bytes,
    pub statement: Bytes,
    /// As sent: empty (all text), one code for all, or one per parameter.
    pub param_formats: Vec<i16>,
    pub params: Vec<Option<Bytes>>,
    pub result_formats: Vec<i16>,
}

impl Bind {
    pub fn decode(body: &[u8]) -> Result<Self, Malformed> {
        let err = Malformed("Bind");
        let mut rest = body;
        let portal = Bytes::copy_from_slice(read_cstr(&mut rest).ok_or(err)?);
        let statement = Bytes::copy_from_slice(read_cstr(&mut rest).ok_or(err)?);
        let read_codes = |rest: &mut &[u8]| -> Result<Vec<i16>, Malformed> {
            let n = read_i16(rest).ok_or(Malformed("Bind"))?;
            if n < 0 {
                return Err(Malformed("Bind"));
            }
            (0..n)
                .map(|_| read_i16(rest).ok_or(Malformed("Bind")))
                .collect()
        };
        let param_formats = read_codes(&mut rest)?;
        let count = read_i16(&mut rest).ok_or(err)?;
        if count < 0 {
            return Err(err);
        }
        let mut params = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let len = read_i32(&mut rest).ok_or(err)?;
            if len < 0 {
                params.push(None);
            } else {
                let len = len as usize;
                if rest.len() < len {
                    return Err(err);
                }
                params.push(Some(Bytes::copy_from_slice(&rest[..len])));
                rest = &rest[len..];
            }
        }
        let result_formats = read_codes(&mut rest)?;
        if !rest.is_empty() {
            return Err(err);
        }
        Ok(Self {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
        })
    }

    /// The format code (0 text, 1 binary) parameter `index` was sent in.
    pub fn param_format(&self, index: usize) -> i16 {
        match self.param_formats.len() {
            0 => 0,
            1 => self.param_formats[0],
            _ => self.param_formats.get(index).copied().unwrap_or(0),
        }
    }

    /// Spells out one format code per parameter, so single parameters can change format.
    pub fn expand_param_formats(&mut self) {
        let codes: Vec<i16> = (0..self.params.len())
            .map(|i| self.param_format(i))
            .collect();
        self.param_formats = codes;
    }

    pub fn encode(&self) -> Bytes {
        let values: usize = self
            .params
            .iter()
            .map(|p| 4 + p.as_ref().map_or(0, Bytes::len))
            .sum();
        let mut out = begin(
            b'B',
            self.portal.len()
                + self.statement.len()
                + 8
                + 2 * (self.param_formats.len() + self.result_formats.len())
                + values,
        );
        put_cstr(&mut out, &self.portal);
        put_cstr(&mut out, &self.statement);
        out.put_i16(self.param_formats.len() as i16);
        for code in &self.param_formats {
            out.put_i16(*code);
        }
        out.put_i16(self.params.len() as i16);
        for param in &self.params {
            match param {
                None => out.put_i32(-1),
                Some(value) => {
                    out.put_i32(value.len() as i32);
                    out.put_slice(value);
                }
            }
        }
        out.put_i16(self.result_formats.len() as i16);
        for code in &self.result_formats {
            out.put_i16(*code);
        }
        finish(out)
    }
}

/// Bind's result format codes, reading past its parameters without copying them.
pub fn bind_result_formats(body: &[u8]) -> Result<Vec<i16>, Malformed> {
    let err = Malformed("Bind");
    let mut rest = body;
    for _ in 0..2 {
        read_cstr(&mut rest).ok_or(err)?;
    }
    let skip = |rest: &mut &[u8], n: usize| -> Result<(), Malformed> {
        *rest = rest.get(n..).ok_or(err)?;
        Ok(())
    };
    let formats = read_i16(&mut rest).ok_or(err)?;
    skip(&mut rest, 2 * usize::try_from(formats).map_err(|_| err)?)?;
    let count = read_i16(&mut rest).ok_or(err)?;
    for _ in 0..usize::try_from(count).map_err(|_| err)? {
        let len = read_i32(&mut rest).ok_or(err)?;
        if len > 0 {
            skip(&mut rest, len as usize)?;
        }
    }
    let n = usize::try_from(read_i16(&mut rest).ok_or(err)?).map_err(|_| err)?;
    let codes = (0..n)
        .map(|_| read_i16(&mut rest).ok_or(err))
        .collect::<Result<Vec<_>, _>>()?;
    if rest.is_empty() {
        Ok(codes)
    } else {
        Err(err)
    }
}

/// The format code for result column `index` given Bind's result format codes.
pub fn result_format(codes: &[i16], index: usize) -> i16 {
    match codes.len() {
        0 => 0,
        1 => codes[0],
        _ => codes.get(index).copied().unwrap_or(0),
    }
}

/// `D` (Describe) and `C` (Close): a kind byte (`S` statement, `P` portal) and a name.
pub fn target(body: &[u8], what: &'static str) -> Result<(u8, Bytes), Malformed> {
    let (&kind, mut rest) = body.split_first().ok_or(Malformed(what))?;
    let name = read_cstr(&mut rest).ok_or(Malformed(what))?;
    if !rest.is_empty() || !(kind == b'S' || kind == b'P') {
        return Err(Malformed(what));
    }
    Ok((kind, Bytes::copy_from_slice(name)))
}

pub fn encode_target(tag: u8, kind: u8, name: &[u8]) -> Bytes {
    let mut out = begin(tag, name.len() + 2);
    out.put_u8(kind);
    put_cstr(&mut out, name);
    finish(out)
}

/// `E`: the portal name.
pub fn execute_portal(body: &[u8]) -> Result<Bytes, Malformed> {
    let mut rest = body;
    let name = read_cstr(&mut rest).ok_or(Malformed("Execute"))?;
    if rest.len() != 4 {
        return Err(Malformed("Execute"));
    }
    Ok(Bytes::copy_from_slice(name))
}

pub fn encode_execute(portal: &[u8], max_rows: i32) -> Bytes {
    let mut out = begin(b'E', portal.len() + 5);
    put_cstr(&mut out, portal);
    out.put_i32(max_rows);
    finish(out)
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Bytes,
    pub table_oid: u32,
    pub column: i16,
    pub type_oid: u32,
    pub type_size: i16,
    pub type_modifier: i32,
    pub format: i16,
}

pub fn decode_row_description(body: &[u8]) -> Result<Vec<Field>, Malformed> {
    let err = Malformed("RowDescription");
    let mut rest = body;
    let count = read_i16(&mut rest).ok_or(err)?;
    let mut fields = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count.max(0) {
        let name = Bytes::copy_from_slice(read_cstr(&mut rest).ok_or(err)?);
        let table_oid = read_i32(&mut rest).ok_or(err)? as u32;
        let column = read_i16(&mut rest).ok_or(err)?;
        let type_oid = read_i32(&mut rest).ok_or(err)? as u32;
        let type_size = read_i16(&mut rest).ok_or(err)?;
        let type_modifier = read_i32(&mut rest).ok_or(err)?;
        let format = read_i16(&mut rest).ok_or(err)?;
        fields.push(Field {
            name,
            table_oid,
            column,
            type_oid,
            type_size,
            type_modifier,
            format,
        });
    }
    Ok(fields)
}

pub fn encode_row_description(fields: &[Field]) -> Bytes {
    let mut out = begin(
        b'T',
        2 + fields.iter().map(|f| f.name.len() + 19).sum::<usize>(),
    );
    out.put_i16(fields.len() as i16);
    for f in fields {
        put_cstr(&mut out, &f.name);
        out.put_u32(f.table_oid);
        out.put_i16(f.column);
        out.put_u32(f.type_oid);
        out.put_i16(f.type_size);
        out.put_i32(f.type_modifier);
        out.put_i16(f.format);
    }
    finish(out)
}

pub fn decode_parameter_description(body: &[u8]) -> Result<Vec<u32>, Malformed> {
    let mut rest = body;
    let count = read_i16(&mut rest).ok_or(Malformed("ParameterDescription"))?;
    (0..count.max(0))
        .map(|_| {
            read_i32(&mut rest)
                .map(|v| v as u32)
                .ok_or(Malformed("ParameterDescription"))
        })
        .collect()
}

pub fn encode_parameter_description(types: &[u32]) -> Bytes {
    let mut out = begin(b't', 2 + 4 * types.len());
    out.put_i16(types.len() as i16);
    for oid in types {
        out.put_u32(*oid);
    }
    finish(out)
}

/// The values of a DataRow as ranges into its body (`None` for NULL), without copying.
pub fn data_row_values(body: &[u8]) -> Result<Vec<Option<std::ops::Range<usize>>>, Malformed> {
    let err = Malformed("DataRow");
    if body.len() < 2 {
        return Err(err);
    }
    let count = i16::from_be_bytes([body[0], body[1]]);
    let mut at = 2usize;
    let mut values = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count.max(0) {
        let len_bytes = body.get(at..at + 4).ok_or(err)?;
        let len = i32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        at += 4;
        if len < 0 {
            values.push(None);
        } else {
            let end = at.checked_add(len as usize).ok_or(err)?;
            if end > body.len() {
                return Err(err);
            }
            values.push(Some(at..end));
            at = end;
        }
    }
    Ok(values)
}

/// Builds a DataRow from values.
pub fn encode_data_row<'a>(
    values: impl ExactSizeIterator<Item = Option<&'a [u8]>> + Clone,
) -> Bytes {
    let size: usize = values.clone().map(|v| 4 + v.map_or(0, <[u8]>::len)).sum();
    let mut out = begin(b'D', 2 + size);
    out.put_i16(values.len() as i16);
    for value in values {
        match value {
            None => out.put_i32(-1),
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.put_slice(v);
            }
        }
    }
    finish(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_bytes_exactly() {
        let parse = Parse {
            name: Bytes::from_static(b"s\xe91"),
            query: Bytes::from_static(b"SELECT $1 -- \xff"),
            param_types: vec![23, 0],
        };
        let frame = parse.encode();
        assert_eq!(frame[0], b'P');
        assert_eq!(Parse::decode(&frame[5..]).unwrap(), parse);
        assert!(Parse::decode(b"x\0y\0\0\x01").is_err());
    }

    #[test]
    fn bind_round_trips_and_expands_formats() {
        let mut bind = Bind {
            portal: Bytes::new(),
            statement: Bytes::from_static(b"st"),
            param_formats: vec![1],
            params: vec![
                Some(Bytes::from_static(b"\0\0\0\x01")),
                None,
                Some(Bytes::new()),
            ],
            result_formats: vec![0, 1],
        };
        let encoded = bind.encode();
        let decoded = Bind::decode(&encoded[5..]).unwrap();
        assert_eq!(decoded, bind);
        assert_eq!(bind_result_formats(&encoded[5..]).unwrap(), vec![0, 1]);
        assert!(bind_result_formats(&encoded[5..encoded.len() - 1]).is_err());
        bind.expand_param_formats();
        assert_eq!(bind.param_formats, vec![1, 1, 1]);
        assert_eq!(result_format(&[1], 5), 1);
        assert_eq!(result_format(&[], 0), 0);
    }

    #[test]
    fn row_description_and_data_rows() {
        let fields = vec![Field {
            name: Bytes::from_static(b"ssn"),
            table_oid: 16384,
            column: 2,
            type_oid: 17,
            type_size: -1,
            type_modifier: -1,
            format: 0,
        }];
        let frame = encode_row_description(&fields);
        assert_eq!(decode_row_description(&frame[5..]).unwrap(), fields);
        let row = encode_data_row([Some(&b"ab"[..]), None].into_iter());
        let values = data_row_values(&row[5..]).unwrap();
        assert_eq!(values.len(), 2);
        assert_eq!(&row[5..][values[0].clone().unwrap()], b"ab");
        assert!(values[1].is_none());
        assert!(data_row_values(b"\0\x01\0\0\0\x09ab").is_err());
    }

    #[test]
    fn targets_and_execute() {
        assert_eq!(
            target(b"Sname\0", "Describe").unwrap(),
            (b'S', Bytes::from_static(b"name"))
        );
        assert!(target(b"Xname\0", "Describe").is_err());
        let exec = encode_execute(b"p", 0);
        assert_eq!(
            execute_portal(&exec[5..]).unwrap(),
            Bytes::from_static(b"p")
        );
        let q = encode_query(b"SELECT 1");
        assert_eq!(query_text(&q[5..]).unwrap(), b"SELECT 1");
    }
}
