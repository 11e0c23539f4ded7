//! Writing the rows of a COPY stream (the reading side is [`super::copy_rows`]): a row field
//! by field with [`RowWriter`], each field as it came or a new value escaped or quoted for
//! the format, and the CopyData frame around a rewritten chunk built in place
//! ([`CopyDataWriter`]). A copy moves millions of rows, so nothing here allocates per row.

use bytes::Bytes;

use super::copy_rows::{CopyFormat, CopyOptions, Out};
use crate::pgtype::push_bytea_hex;

/// Writes one row (the fields in order, then the line terminator of text and csv).
pub fn encode_row(options: &CopyOptions, fields: &[Out<'_>], terminator: &[u8], out: &mut Vec<u8>) {
    let mut row = RowWriter::new(options, out, fields.len());
    for &field in fields {
        row.field(field);
    }
    row.finish(terminator);
}

/// One row being written into a stream, field by field, without a list of its fields.
pub struct RowWriter<'o> {
    options: &'o CopyOptions,
    out: &'o mut Vec<u8>,
    written: usize,
    /// Binary only: the field count written ahead of the fields.
    declared: usize,
}

impl<'o> RowWriter<'o> {
    /// `fields`: how many fields follow (binary writes the count first).
    pub fn new(options: &'o CopyOptions, out: &'o mut Vec<u8>, fields: usize) -> Self {
        if options.format == CopyFormat::Binary {
            out.extend_from_slice(&(fields as i16).to_be_bytes());
        }
        Self {
            options,
            out,
            written: 0,
            declared: fields,
        }
    }

    pub fn field(&mut self, field: Out<'_>) {
        let options = self.options;
        let out = &mut *self.out;
        if options.format == CopyFormat::Binary {
            match field {
                Out::Raw(v) | Out::Value(Some(v)) => {
                    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    out.extend_from_slice(v);
                }
                Out::Value(None) => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        } else {
            if self.written > 0 {
                out.push(options.delimiter);
            }
            match field {
                Out::Raw(raw) => out.extend_from_slice(raw),
                Out::Value(None) => out.extend_from_slice(&options.null),
                Out::Value(Some(v)) if options.format == CopyFormat::Text => {
                    text_escape(options, v, out)
                }
                Out::Value(Some(v)) => csv_quote(options, v, out),
            }
        }
        self.written += 1;
    }

    /// A bytea value as its hex text input (`\x` and hex digits), e.g. a ciphertext. In
    /// text format it is written straight into the row already escaped (`\\x`: hex digits
    /// never need escaping, unless one is the delimiter), without the intermediate copy and
    /// the escape scan of [`Self::field`] (together ~10% of a bulk COPY FROM's CPU). Other
    /// formats go through `scratch` and [`Self::field`].
    pub fn bytea_hex(&mut self, raw: &[u8], scratch: &mut Vec<u8>) {
        let delimiter = self.options.delimiter;
        let direct = self.options.format == CopyFormat::Text
            && !delimiter.is_ascii_hexdigit()
            && delimiter != b'x'
            && delimiter != b'\\';
        if !direct {
            scratch.clear();
            push_bytea_hex(raw, scratch);
            self.field(Out::Value(Some(scratch)));
            return;
        }
        if self.written > 0 {
            self.out.push(delimiter);
        }
        // The escape of the backslash that starts `\x`.
        self.out.push(b'\\');
        push_bytea_hex(raw, self.out);
        self.written += 1;
    }

    /// Ends the row with its line terminator (text and csv).
    pub fn finish(self, terminator: &[u8]) {
        debug_assert!(
            self.options.format != CopyFormat::Binary || self.written == self.declared,
            "a binary row's field count must match its fields"
        );
        if self.options.format != CopyFormat::Binary {
            self.out.extend_from_slice(terminator);
        }
    }
}

/// The escape letter of each byte text format writes escaped (0: written as it is). The
/// delimiter, configurable, is checked apart.
const TEXT_ESCAPES: [u8; 256] = {
    let mut table = [0u8; 256];
    table[b'\\' as usize] = b'\\';
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table[0x0b] = b'v';
    table
};

/// Text format's escapes: runs of bytes that need none are copied whole.
fn text_escape(options: &CopyOptions, value: &[u8], out: &mut Vec<u8>) {
    let mut run = 0;
    for (i, &b) in value.iter().enumerate() {
        let escaped = match TEXT_ESCAPES[usize::from(b)] {
            0 if b == options.delimiter => b,
            0 => continue,
            letter => letter,
        };
        out.extend_from_slice(&value[run..i]);
        out.extend_from_slice(&[b'\\', escaped]);
        run = i + 1;
    }
    out.extend_from_slice(&value[run..]);
}

fn csv_quote(options: &CopyOptions, value: &[u8], out: &mut Vec<u8>) {
    let (quote, escape) = (options.quote, options.escape);
    let needs = value == options.null.as_slice()
        || value == b"\\."
        || value
            .iter()
            .any(|&b| b == options.delimiter || b == quote || b == b'\n' || b == b'\r');
    if !needs {
        out.extend_from_slice(value);
        return;
    }
    out.push(quote);
    for &b in value {
        if b == quote || b == escape {
            out.push(escape);
        }
        out.push(b);
    }
    out.push(quote);
}

/// A CopyData frame whose payload is written in place after a placeholder header, so a
/// rewritten chunk is not copied once more into its frame.
pub struct CopyDataWriter {
    frame: Vec<u8>,
}

const HEADER: usize = 5;

impl CopyDataWriter {
    pub fn with_capacity(payload: usize) -> Self {
        let mut frame = Vec::with_capacity(HEADER + payload);
        frame.extend_from_slice(&[b'd', 0, 0, 0, 0]);
        Self { frame }
    }

    /// The payload written so far, to append to.
    pub fn payload(&mut self) -> Payload<'_> {
        Payload(&mut self.frame)
    }

    pub fn is_empty(&self) -> bool {
        self.frame.len() == HEADER
    }

    /// The frame, or `None` when nothing was written.
    pub fn finish(mut self) -> Option<Bytes> {
        if self.is_empty() {
            return None;
        }
        let len = (self.frame.len() - 1) as u32;
        self.frame[1..HEADER].copy_from_slice(&len.to_be_bytes());
        Some(Bytes::from(self.frame))
    }
}

/// The payload of a [`CopyDataWriter`]: appended to only, so the header stays intact.
pub struct Payload<'f>(&'f mut Vec<u8>);

impl Payload<'_> {
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// A row written into the payload.
    pub fn row<'p>(&'p mut self, options: &'p CopyOptions, fields: usize) -> RowWriter<'p> {
        RowWriter::new(options, self.0, fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::copy::CopyMessage;

    #[test]
    fn text_escapes_runs_and_the_delimiter() {
        let mut options = CopyOptions::defaults(CopyFormat::Text);
        let mut out = Vec::new();
        text_escape(&options, b"ab\tc\\d\ne\x08\x0b\x0c\rf", &mut out);
        assert_eq!(out, b"ab\\tc\\\\d\\ne\\b\\v\\f\\rf");
        options.delimiter = b'|';
        out.clear();
        text_escape(&options, b"|a|\t", &mut out);
        assert_eq!(out, b"\\|a\\|\\t");
        out.clear();
        text_escape(&options, b"", &mut out);
        assert!(out.is_empty());
    }

    /// The direct hex writer writes what escaping the hex text would, in every format and
    /// with a delimiter that is a hex digit (which must be escaped).
    #[test]
    fn bytea_hex_is_the_escaped_hex_field() {
        let raw: Vec<u8> = (0..=255).collect();
        for format in [CopyFormat::Text, CopyFormat::Csv, CopyFormat::Binary] {
            for delimiter in [None, Some(b'a'), Some(b'x'), Some(b'5'), Some(b'|')] {
                let mut options = CopyOptions::defaults(format);
                if let Some(d) = delimiter {
                    options.delimiter = d;
                }
                for value in [&raw[..], &[][..], &[0xaa][..]] {
                    let mut hex = Vec::new();
                    push_bytea_hex(value, &mut hex);
                    let fields = [Out::Raw(b"1"), Out::Value(Some(&hex)), Out::Value(None)];
                    let mut expected = Vec::new();
                    encode_row(&options, &fields, b"\n", &mut expected);
                    let mut got = Vec::new();
                    let mut scratch = b"stale".to_vec();
                    let mut row = RowWriter::new(&options, &mut got, 3);
                    row.field(Out::Raw(b"1"));
                    row.bytea_hex(value, &mut scratch);
                    row.field(Out::Value(None));
                    row.finish(b"\n");
                    assert_eq!(got, expected, "{format:?} {delimiter:?}");
                }
            }
        }
    }

    #[test]
    fn a_row_written_field_by_field_is_the_encoded_row() {
        for format in [CopyFormat::Text, CopyFormat::Csv, CopyFormat::Binary] {
            let options = CopyOptions::defaults(format);
            let fields = [Out::Raw(b"1"), Out::Value(Some(b"a,\tb")), Out::Value(None)];
            let mut whole = Vec::new();
            encode_row(&options, &fields, b"\n", &mut whole);
            let mut frame = CopyDataWriter::with_capacity(0);
            assert!(frame.is_empty());
            let mut payload = frame.payload();
            let mut row = payload.row(&options, fields.len());
            for field in fields {
                row.field(field);
            }
            row.finish(b"\n");
            let frame = frame.finish().unwrap();
            assert_eq!(
                CopyMessage::decode(&frame),
                Some(CopyMessage::Data(&whole[..]))
            );
            assert_eq!(
                u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize,
                frame.len() - 1
            );
        }
        let mut out = Vec::new();
        encode_row(
            &CopyOptions::defaults(CopyFormat::Binary),
            &[Out::Raw(b"ab"), Out::Value(None)],
            b"",
            &mut out,
        );
        assert_eq!(out, b"\x00\x02\x00\x00\x00\x02ab\xff\xff\xff\xff");
    }

    #[test]
    fn an_empty_frame_is_none() {
        assert!(CopyDataWriter::with_capacity(64).finish().is_none());
    }
}
