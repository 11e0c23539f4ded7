//! Message framing: `tag (1) | length (4, includes itself) | body`.
//!
//! Frames are found in the read buffer without copying, so frames that pgveil does not need
//! to change are forwarded as the very bytes that arrived. The typed messages built on this
//! are in [`super::frontend`] (from the client) and [`super::backend`] (from the database).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Smallest legal length field: the length word itself.
const MIN_LENGTH: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {length} for message type '{tag}'", tag = char::from(*tag))]
    BadLength { tag: u8, length: usize },
    #[error("message of type '{tag}' is {length} bytes, over the limit of {limit}", tag = char::from(*tag))]
    TooLarge {
        tag: u8,
        length: usize,
        limit: usize,
    },
}

/// Where the next complete frame ends in `buf`, if it is complete.
///
/// Checks the length field as soon as it has arrived, so an oversized frame is refused
/// before any of it is buffered.
pub fn frame_len(buf: &[u8], limit: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let length = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if length < MIN_LENGTH {
        return Err(FrameError::BadLength { tag, length });
    }
    if length > limit {
        return Err(FrameError::TooLarge { tag, length, limit });
    }
    let total = length + 1;
    Ok((buf.len() >= total).then_some(total))
}

/// The whole length of the frame that starts `buf` (tag included), once its length field
/// has arrived; unchecked (see [`frame_len`]).
pub fn announced_len(buf: &[u8]) -> Option<usize> {
    let length = buf.get(1..5)?;
    Some(u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize + 1)
}

/// The message type of a complete frame.
pub fn tag(frame: &[u8]) -> u8 {
    frame.first().copied().unwrap_or(0)
}

/// The body of a complete frame, after tag and length.
pub fn body(frame: &[u8]) -> &[u8] {
    frame.get(5..).unwrap_or_default()
}

#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("malformed {0} message")]
pub struct Malformed(pub &'static str);

/// Starts a frame with a placeholder length, patched by [`finish`].
pub(super) fn begin(tag: u8, capacity: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(capacity + 5);
    out.put_u8(tag);
    out.put_u32(0);
    out
}

pub(super) fn finish(mut out: BytesMut) -> Bytes {
    let len = (out.len() - 1) as u32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out.freeze()
}

pub(super) fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// Reads a NUL-terminated string from the front of `body`, advancing it.
pub fn read_cstr<'a>(body: &mut &'a [u8]) -> Option<&'a [u8]> {
    let end = body.iter().position(|&b| b == 0)?;
    let (text, rest) = body.split_at(end);
    *body = &rest[1..];
    Some(text)
}

pub fn read_i16(body: &mut &[u8]) -> Option<i16> {
    (body.len() >= 2).then(|| body.get_i16())
}

pub fn read_i32(body: &mut &[u8]) -> Option<i32> {
    (body.len() >= 4).then(|| body.get_i32())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_frames_only() {
        let buf = b"Q\0\0\0\x0bSELECT\0Z\0\0";
        assert_eq!(frame_len(buf, 1 << 20).unwrap(), Some(12));
        assert_eq!(announced_len(buf), Some(12));
        assert_eq!(tag(&buf[..12]), b'Q');
        assert_eq!(body(&buf[..12]), b"SELECT\0");
        assert_eq!(frame_len(&buf[12..], 1 << 20).unwrap(), None);
        assert_eq!(announced_len(&buf[12..]), None);
    }

    #[test]
    fn rejects_bad_and_huge_lengths_before_buffering() {
        assert_eq!(
            frame_len(b"Q\0\0\0\x02", 100),
            Err(FrameError::BadLength {
                tag: b'Q',
                length: 2
            })
        );
        assert_eq!(
            frame_len(b"D\x7f\xff\xff\xff", 1 << 30),
            Err(FrameError::TooLarge {
                tag: b'D',
                length: 0x7fff_ffff,
                limit: 1 << 30
            })
        );
    }

    #[test]
    fn cstr_reading() {
        let mut body: &[u8] = b"abc\0def\0";
        assert_eq!(read_cstr(&mut body), Some(&b"abc"[..]));
        assert_eq!(read_cstr(&mut body), Some(&b"def"[..]));
        assert_eq!(read_cstr(&mut body), None);
    }
}
