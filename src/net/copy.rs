//! The COPY sub-protocol's messages, in both directions: CopyInResponse and CopyOutResponse
//! (the database starts a copy), CopyData (a chunk of the copy stream, sent by whichever side
//! is sending data), CopyDone and CopyFail (the sender ends it). The rows inside the stream
//! are read by [`super::copy_rows`].

use bytes::{BufMut, Bytes};

use super::frame::{begin, body, finish, put_cstr, read_i16, tag, Malformed};

/// A COPY message, as pgveil reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMessage<'a> {
    /// `d`: a chunk of the stream (rows need not align with messages).
    Data(&'a [u8]),
    /// `c`: the sender is done.
    Done,
    /// `f` (frontend only): the client aborts the copy, with its reason.
    Fail,
}

impl<'a> CopyMessage<'a> {
    /// Reads a CopyData, CopyDone or CopyFail frame; `None` for any other type.
    pub fn decode(frame: &'a [u8]) -> Option<Self> {
        match tag(frame) {
            b'd' => Some(Self::Data(body(frame))),
            b'c' => Some(Self::Done),
            b'f' => Some(Self::Fail),
            _ => None,
        }
    }
}

/// A CopyData frame carrying `payload`.
pub fn encode_copy_data(payload: &[u8]) -> Bytes {
    let mut out = begin(b'd', payload.len());
    out.put_slice(payload);
    finish(out)
}

/// A CopyDone frame.
pub fn encode_copy_done() -> Bytes {
    finish(begin(b'c', 0))
}

/// A CopyFail frame: the database answers it with an error and leaves copy-in mode.
pub fn encode_copy_fail(reason: &str) -> Bytes {
    let mut out = begin(b'f', reason.len() + 1);
    put_cstr(&mut out, reason.as_bytes());
    finish(out)
}

/// `G` / `H`: the database starts a copy: overall format (0 text, 1 binary) and the format
/// of each column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyResponse {
    pub format: u8,
    pub columns: Vec<i16>,
}

impl CopyResponse {
    pub fn decode(body: &[u8]) -> Result<Self, Malformed> {
        let err = Malformed("CopyResponse");
        let (&format, mut rest) = body.split_first().ok_or(err)?;
        let count = read_i16(&mut rest).ok_or(err)?;
        let mut columns = Vec::with_capacity(count.max(0) as usize);
        for _ in 0..count.max(0) {
            columns.push(read_i16(&mut rest).ok_or(err)?);
        }
        Ok(Self { format, columns })
    }

    /// The frame, with message type `tag` (`G` or `H`).
    pub fn encode(&self, tag: u8) -> Bytes {
        let mut out = begin(tag, 3 + 2 * self.columns.len());
        out.put_u8(self.format);
        out.put_i16(self.columns.len() as i16);
        for &c in &self.columns {
            out.put_i16(c);
        }
        finish(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let data = encode_copy_data(b"1\tx\n");
        assert_eq!(
            CopyMessage::decode(&data),
            Some(CopyMessage::Data(b"1\tx\n"))
        );
        assert_eq!(
            CopyMessage::decode(&encode_copy_done()),
            Some(CopyMessage::Done)
        );
        assert_eq!(
            CopyMessage::decode(&encode_copy_fail("no")),
            Some(CopyMessage::Fail)
        );
        let response = CopyResponse {
            format: 1,
            columns: vec![1, 1, 1],
        };
        let frame = response.encode(b'H');
        assert_eq!(CopyResponse::decode(body(&frame)).unwrap(), response);
        assert!(CopyResponse::decode(b"\0\0\x02\0\0").is_err());
    }
}
