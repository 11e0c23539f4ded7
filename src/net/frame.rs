//! Message framing: `tag (1) | length (4, includes itself) | body`.
//!
//! Frames are split off the read buffer as `Bytes` without copying, so frames that pgveil
//! does not need to change are forwarded as the very bytes that arrived.

use bytes::{Buf, Bytes, BytesMut};

/// Smallest legal length field: the length word itself.
const MIN_LENGTH: usize = 4;

/// A complete protocol message, raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    /// The whole message, tag and length included.
    pub bytes: Bytes,
}

impl Frame {
    /// The message body after tag and length.
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }
}

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

/// Splits the next complete frame off the front of `buf`.
pub fn next_frame(buf: &mut BytesMut, limit: usize) -> Result<Option<Frame>, FrameError> {
    match frame_len(buf, limit)? {
        Some(total) => {
            let bytes = buf.split_to(total).freeze();
            Ok(Some(Frame {
                tag: bytes[0],
                bytes,
            }))
        }
        None => Ok(None),
    }
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
    fn splits_complete_frames_only() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x0bSELECT\0Z\0\0"[..]);
        let frame = next_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(frame.tag, b'Q');
        assert_eq!(frame.body(), b"SELECT\0");
        assert_eq!(next_frame(&mut buf, 1 << 20).unwrap(), None);
        assert_eq!(&buf[..], b"Z\0\0");
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
