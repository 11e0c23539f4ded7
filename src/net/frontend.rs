//! The messages a client sends that pgveil reads, decoded into types, and the few it writes
//! upstream itself. Everything pgveil need not look into stays raw bytes.
//!
//! Names and query texts are kept as bytes: a client whose `client_encoding` is not UTF-8
//! must get back exactly what it sent. Query texts are checked for UTF-8 only where they must
//! be analysed.

use bytes::{BufMut, Bytes};

pub use super::frame::Malformed;
use super::frame::{begin, body, finish, put_cstr, read_cstr, read_i16, read_i32, tag};

/// The message types a frontend may send once started; anything else is refused rather than
/// forwarded, since pgveil cannot know what it would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendTag {
    Query,
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    Flush,
    FunctionCall,
    Terminate,
    /// CopyData, CopyDone, CopyFail.
    Copy,
    /// Password, SASL and GSS responses.
    Password,
}

impl FrontendTag {
    /// The type of a complete frame; `Err` carries a type byte no frontend may send.
    pub fn of(frame: &[u8]) -> Result<Self, u8> {
        Ok(match tag(frame) {
            b'Q' => Self::Query,
            b'P' => Self::Parse,
            b'B' => Self::Bind,
            b'D' => Self::Describe,
            b'E' => Self::Execute,
            b'C' => Self::Close,
            b'S' => Self::Sync,
            b'H' => Self::Flush,
            b'F' => Self::FunctionCall,
            b'X' => Self::Terminate,
            b'd' | b'c' | b'f' => Self::Copy,
            b'p' => Self::Password,
            other => return Err(other),
        })
    }

    /// Whether the database answers it with a ReadyForQuery (it ends a request cycle).
    pub fn awaits_ready(self) -> bool {
        matches!(self, Self::Query | Self::Sync | Self::FunctionCall)
    }

    /// Decodes the frame of this type.
    pub fn decode(self, frame: &[u8]) -> Result<FrontendMessage<'_>, Malformed> {
        let body = body(frame);
        Ok(match self {
            Self::Query => FrontendMessage::Query(query_text(body)?),
            Self::Parse => FrontendMessage::Parse(Parse::decode(body)?),
            Self::Bind => FrontendMessage::Bind(BindHeader::decode(body)?),
            Self::Describe => FrontendMessage::Describe(Target::decode(body, "Describe")?),
            Self::Execute => FrontendMessage::Execute(Execute::decode(body)?),
            Self::Close => FrontendMessage::Close(Target::decode(body, "Close")?),
            Self::Sync => FrontendMessage::Sync,
            Self::FunctionCall => FrontendMessage::FunctionCall,
            Self::Terminate => FrontendMessage::Terminate,
            Self::Flush | Self::Copy | Self::Password => FrontendMessage::Passive,
        })
    }
}

/// A client message, as pgveil reads it.
#[derive(Debug)]
pub enum FrontendMessage<'a> {
    /// A simple query: its text.
    Query(&'a [u8]),
    Parse(Parse),
    Bind(BindHeader<'a>),
    Describe(Target),
    Execute(Execute),
    Close(Target),
    Sync,
    FunctionCall,
    Terminate,
    /// Flush, COPY data, password and SASL messages: nothing comes back for them by itself.
    Passive,
}

/// `Q`: the query text (without its terminating NUL).
fn query_text(body: &[u8]) -> Result<&[u8], Malformed> {
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

/// A Bind with only its names read: most Binds need nothing more. The rest is decoded, from
/// where the names end, only when a parameter or result format must change.
#[derive(Debug, Clone, Copy)]
pub struct BindHeader<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    /// Formats, parameters and result formats, still encoded.
    rest: &'a [u8],
}

impl<'a> BindHeader<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, Malformed> {
        let err = Malformed("Bind");
        let mut rest = body;
        let portal = read_cstr(&mut rest).ok_or(err)?;
        let statement = read_cstr(&mut rest).ok_or(err)?;
        Ok(Self {
            portal,
            statement,
            rest,
        })
    }

    /// The whole message.
    pub fn bind(&self) -> Result<Bind, Malformed> {
        let err = Malformed("Bind");
        let mut rest = self.rest;
        let read_codes = |rest: &mut &[u8]| -> Result<Vec<i16>, Malformed> {
            let n = read_i16(rest).ok_or(err)?;
            if n < 0 {
                return Err(err);
            }
            (0..n).map(|_| read_i16(rest).ok_or(err)).collect()
        };
        let param_formats = read_codes(&mut rest)?;
        let count = read_i16(&mut rest).ok_or(err)?;
        if count < 0 {
            return Err(err);
        }
        let mut params = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let len = read_i32(&mut rest).ok_or(err)?;
            // Only -1 is NULL; PostgreSQL refuses other negative lengths, and a rewritten
            // Bind must not turn such a message into a valid NULL.
            if len == -1 {
                params.push(None);
            } else if len < 0 {
                return Err(err);
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
        Ok(Bind {
            portal: Bytes::copy_from_slice(self.portal),
            statement: Bytes::copy_from_slice(self.statement),
            param_formats,
            params,
            result_formats,
        })
    }

    /// Only the result format codes, reading past the parameters without copying them:
    /// for a statement pgveil did not analyse whose rows still carry protected columns.
    pub fn result_formats(&self) -> Result<Vec<i16>, Malformed> {
        let err = Malformed("Bind");
        let mut rest = self.rest;
        let skip = |rest: &mut &[u8], n: usize| -> Result<(), Malformed> {
            *rest = rest.get(n..).ok_or(err)?;
            Ok(())
        };
        let formats = usize::try_from(read_i16(&mut rest).ok_or(err)?).map_err(|_| err)?;
        skip(&mut rest, 2 * formats)?;
        let count = usize::try_from(read_i16(&mut rest).ok_or(err)?).map_err(|_| err)?;
        for _ in 0..count {
            // A negative length is NULL, with no bytes.
            if let Ok(len) = usize::try_from(read_i32(&mut rest).ok_or(err)?) {
                skip(&mut rest, len)?;
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
}

impl Bind {
    pub fn decode(body: &[u8]) -> Result<Self, Malformed> {
        BindHeader::decode(body)?.bind()
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

/// The format code for result column `index` given Bind's result format codes.
pub fn result_format(codes: &[i16], index: usize) -> i16 {
    match codes.len() {
        0 => 0,
        1 => codes[0],
        _ => codes.get(index).copied().unwrap_or(0),
    }
}

/// What a Describe or Close names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Statement,
    Portal,
}

/// `D` (Describe) and `C` (Close): a prepared statement or a portal, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: TargetKind,
    pub name: Bytes,
}

impl Target {
    fn decode(body: &[u8], what: &'static str) -> Result<Self, Malformed> {
        let (&kind, mut rest) = body.split_first().ok_or(Malformed(what))?;
        let name = read_cstr(&mut rest).ok_or(Malformed(what))?;
        let kind = match kind {
            b'S' => TargetKind::Statement,
            b'P' => TargetKind::Portal,
            _ => return Err(Malformed(what)),
        };
        if !rest.is_empty() {
            return Err(Malformed(what));
        }
        Ok(Self {
            kind,
            name: Bytes::copy_from_slice(name),
        })
    }

    /// A Describe of the statement `name`.
    pub fn describe_statement(name: &[u8]) -> Bytes {
        let mut out = begin(b'D', name.len() + 2);
        out.put_u8(b'S');
        put_cstr(&mut out, name);
        finish(out)
    }

    /// A Describe of the portal `name`.
    pub fn describe_portal(name: &[u8]) -> Bytes {
        let mut out = begin(b'D', name.len() + 2);
        out.put_u8(b'P');
        put_cstr(&mut out, name);
        finish(out)
    }

    /// `C` of a statement: pgveil's own Close, ahead of preparing a name again.
    pub fn close_statement(name: &[u8]) -> Bytes {
        let mut out = begin(b'C', name.len() + 2);
        out.put_u8(b'S');
        put_cstr(&mut out, name);
        finish(out)
    }
}

/// `E`: run a portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execute {
    pub portal: Bytes,
    /// 0: no limit.
    pub max_rows: i32,
}

impl Execute {
    fn decode(body: &[u8]) -> Result<Self, Malformed> {
        let err = Malformed("Execute");
        let mut rest = body;
        let portal = read_cstr(&mut rest).ok_or(err)?;
        let max_rows = read_i32(&mut rest).ok_or(err)?;
        if !rest.is_empty() {
            return Err(err);
        }
        Ok(Self {
            portal: Bytes::copy_from_slice(portal),
            max_rows,
        })
    }

    pub fn encode(&self) -> Bytes {
        let mut out = begin(b'E', self.portal.len() + 5);
        put_cstr(&mut out, &self.portal);
        out.put_i32(self.max_rows);
        finish(out)
    }
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
        let header = BindHeader::decode(&encoded[5..]).unwrap();
        assert_eq!(header.result_formats().unwrap(), vec![0, 1]);
        let truncated = BindHeader::decode(&encoded[5..encoded.len() - 1]).unwrap();
        assert!(truncated.result_formats().is_err());
        bind.expand_param_formats();
        assert_eq!(bind.param_formats, vec![1, 1, 1]);
        assert_eq!(result_format(&[1], 5), 1);
        assert_eq!(result_format(&[], 0), 0);
    }

    #[test]
    fn messages_decode_by_type() {
        let describe = Target::describe_statement(b"name");
        match FrontendTag::of(&describe)
            .unwrap()
            .decode(&describe)
            .unwrap()
        {
            FrontendMessage::Describe(target) => assert_eq!(
                target,
                Target {
                    kind: TargetKind::Statement,
                    name: Bytes::from_static(b"name")
                }
            ),
            other => panic!("{other:?}"),
        }
        assert!(Target::decode(b"Xname\0", "Describe").is_err());
        let close = Target::close_statement(b"s1");
        match FrontendTag::of(&close).unwrap().decode(&close).unwrap() {
            FrontendMessage::Close(target) => assert_eq!(
                target,
                Target {
                    kind: TargetKind::Statement,
                    name: Bytes::from_static(b"s1")
                }
            ),
            other => panic!("{other:?}"),
        }
        let exec = Execute {
            portal: Bytes::from_static(b"p"),
            max_rows: 7,
        };
        assert_eq!(Execute::decode(&exec.encode()[5..]).unwrap(), exec);
        let q = encode_query(b"SELECT 1");
        assert!(matches!(
            FrontendTag::of(&q).unwrap().decode(&q).unwrap(),
            FrontendMessage::Query(b"SELECT 1")
        ));
        assert_eq!(FrontendTag::of(b"x\0\0\0\x04"), Err(b'x'));
        assert!(FrontendTag::Sync.awaits_ready() && !FrontendTag::Parse.awaits_ready());
    }

    #[test]
    fn bind_names_are_read_before_the_rest() {
        let bind = Bind {
            portal: Bytes::from_static(b"p"),
            statement: Bytes::from_static(b"st"),
            param_formats: vec![],
            params: vec![Some(Bytes::from_static(b"1"))],
            result_formats: vec![],
        };
        let frame = bind.encode();
        let header = BindHeader::decode(&frame[5..]).unwrap();
        assert_eq!((header.portal, header.statement), (&b"p"[..], &b"st"[..]));
        assert_eq!(header.bind().unwrap(), bind);
        let truncated = &frame[5..frame.len() - 1];
        assert!(BindHeader::decode(truncated).unwrap().bind().is_err());
    }

    #[test]
    fn bind_lengths_below_minus_one_are_malformed() {
        // Found by fuzz/frames: a length of -2 was read as NULL and re-encoded as -1.
        let body = b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0";
        assert_eq!(Bind::decode(body), Err(Malformed("Bind")));
        let null = b"\0\0\0\0\0\x01\xff\xff\xff\xff\0\0";
        assert_eq!(Bind::decode(null).unwrap().params, vec![None]);
    }
}
