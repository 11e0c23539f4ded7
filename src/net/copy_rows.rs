//! The rows inside a COPY stream, in PostgreSQL's three formats: text (delimited, backslash
//! escapes), csv (quoted) and binary (length-prefixed fields).
//!
//! A stream arrives in CopyData chunks that need not align with rows (psql sends fixed-size
//! chunks; a binary row may span messages), so [`RowSplitter`] keeps the incomplete tail and
//! hands out whole units: the header (binary file header, or a csv/text HEADER line), each
//! row, and the end marker. [`Fields`] reads one row's fields and
//! [`super::copy_write::RowWriter`] writes one, so a caller rewrites only the fields it must
//! and passes the others as they came.

use std::borrow::Cow;
use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// The format of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
    Binary,
}

/// The options that decide how a stream is read and written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    pub format: CopyFormat,
    pub delimiter: u8,
    pub quote: u8,
    pub escape: u8,
    /// The NULL marker, as it appears in the stream.
    pub null: Vec<u8>,
    /// The first line is a header (text and csv only).
    pub header: bool,
}

impl CopyOptions {
    /// PostgreSQL's defaults for a format.
    pub fn defaults(format: CopyFormat) -> Self {
        let (delimiter, null) = match format {
            CopyFormat::Csv => (b',', Vec::new()),
            _ => (b'\t', b"\\N".to_vec()),
        };
        Self {
            format,
            delimiter,
            quote: b'"',
            escape: b'"',
            null,
            header: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyRowError {
    #[error("malformed COPY data: {0}")]
    Malformed(&'static str),
    #[error("a COPY row is larger than {0} bytes")]
    TooLarge(usize),
}

/// One unit of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    /// The binary file header, or the HEADER line of text and csv.
    Header(Bytes),
    /// One row, with its line terminator (text and csv).
    Row(Bytes),
    /// The end marker (`\.` line, or the binary trailer). Units after it are still cut
    /// into rows: whether the database reads on is its business, never a reason to pass
    /// rows unread.
    End(Bytes),
}

/// Binary COPY's file signature.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Cuts a stream into units.
pub struct RowSplitter {
    options: CopyOptions,
    buf: BytesMut,
    /// Where scanning for the end of the current row resumes.
    scan: usize,
    in_quote: bool,
    header_done: bool,
    limit: usize,
}

impl RowSplitter {
    /// `limit`: the largest row accepted (the buffer never holds more than one row).
    pub fn new(options: CopyOptions, limit: usize) -> Self {
        let header_done = !options.header && options.format != CopyFormat::Binary;
        Self {
            options,
            buf: BytesMut::new(),
            scan: 0,
            in_quote: false,
            header_done,
            limit,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete unit, if one is buffered.
    pub fn next_unit(&mut self) -> Result<Option<Unit>, CopyRowError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let end = match self.options.format {
            CopyFormat::Binary => self.binary_end()?,
            CopyFormat::Text => self.text_end(),
            CopyFormat::Csv => self.csv_end(),
        };
        let Some(end) = end else {
            if self.buf.len() > self.limit {
                return Err(CopyRowError::TooLarge(self.limit));
            }
            return Ok(None);
        };
        self.scan = 0;
        self.in_quote = false;
        let unit = self.buf.split_to(end).freeze();
        Ok(Some(self.classify(unit)))
    }

    /// What is left when the sender says it is done: a last text or csv line without its
    /// terminator is a row, as PostgreSQL reads it.
    pub fn finish(&mut self) -> Result<Option<Unit>, CopyRowError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        if self.options.format == CopyFormat::Binary || self.in_quote {
            return Err(CopyRowError::Malformed("the stream ends inside a row"));
        }
        let unit = self.buf.split().freeze();
        Ok(Some(self.classify(unit)))
    }

    fn classify(&mut self, unit: Bytes) -> Unit {
        if !self.header_done {
            self.header_done = true;
            return Unit::Header(unit);
        }
        let is_end = match self.options.format {
            CopyFormat::Binary => unit.as_ref() == [0xff, 0xff],
            _ => matches!(unit.as_ref(), b"\\." | b"\\.\n" | b"\\.\r\n"),
        };
        if is_end {
            Unit::End(unit)
        } else {
            Unit::Row(unit)
        }
    }

    /// Text: a newline not escaped by a backslash ends the row. Found by `memchr` rather
    /// than byte by byte: every byte of a copy passes here.
    fn text_end(&mut self) -> Option<usize> {
        let len = self.buf.len();
        let mut i = self.scan.min(len);
        while let Some(at) = memchr::memchr2(b'\\', b'\n', &self.buf[i..]).map(|at| i + at) {
            if self.buf[at] == b'\n' {
                return Some(at + 1);
            }
            if at + 1 >= len {
                // The escaped byte has not arrived: looked at again with it.
                self.scan = at;
                return None;
            }
            i = at + 2;
        }
        self.scan = len;
        None
    }

    /// Csv: a newline outside quotes ends the row.
    fn csv_end(&mut self) -> Option<usize> {
        let (quote, escape) = (self.options.quote, self.options.escape);
        let mut i = self.scan;
        while i < self.buf.len() {
            let b = self.buf[i];
            if self.in_quote {
                if b == escape && escape != quote {
                    let Some(&next) = self.buf.get(i + 1) else {
                        break;
                    };
                    if next == quote || next == escape {
                        i += 2;
                        continue;
                    }
                }
                if b == quote {
                    self.in_quote = false;
                }
            } else if b == quote {
                self.in_quote = true;
            } else if b == b'\n' {
                return Some(i + 1);
            }
            i += 1;
        }
        self.scan = i.min(self.buf.len());
        None
    }

    /// Binary: the header, then tuples (a field count, then each field's length and bytes).
    fn binary_end(&self) -> Result<Option<usize>, CopyRowError> {
        let b = &self.buf[..];
        if !self.header_done {
            if b.len() < SIGNATURE.len() {
                return Ok(None);
            }
            if &b[..SIGNATURE.len()] != SIGNATURE {
                return Err(CopyRowError::Malformed("bad binary COPY signature"));
            }
            let Some(ext) = i32_at(b, SIGNATURE.len() + 4) else {
                return Ok(None);
            };
            let ext = usize::try_from(ext)
                .map_err(|_| CopyRowError::Malformed("bad binary COPY header"))?;
            let end = SIGNATURE.len() + 8 + ext;
            return Ok((b.len() >= end).then_some(end));
        }
        let Some(count) = b.get(..2).map(|c| i16::from_be_bytes([c[0], c[1]])) else {
            return Ok(None);
        };
        if count == -1 {
            return Ok(Some(2));
        }
        if count < 0 {
            return Err(CopyRowError::Malformed("negative field count"));
        }
        let mut at = 2;
        for _ in 0..count {
            let Some(len) = i32_at(b, at) else {
                return Ok(None);
            };
            at += 4;
            if len >= 0 {
                at += len as usize;
            } else if len != -1 {
                return Err(CopyRowError::Malformed("negative field length"));
            }
            if at > b.len() {
                return Ok(None);
            }
        }
        Ok(Some(at))
    }
}

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    b.get(at..at + 4)
        .map(|x| i32::from_be_bytes([x[0], x[1], x[2], x[3]]))
}

/// One field of a row, as it appears in the stream.
#[derive(Debug, Clone)]
struct Span {
    range: Range<usize>,
    null: bool,
}

/// Room for the field positions of a row, handed from one row to the next
/// ([`Fields::parse_in`], [`Fields::recycle`]): a copy parses millions of rows.
#[derive(Debug, Default)]
pub struct FieldBuf(Vec<Span>);

/// The fields of one row (or header line).
pub struct Fields<'r> {
    options: &'r CopyOptions,
    row: &'r [u8],
    spans: Vec<Span>,
    terminator: &'r [u8],
}

/// A field to write: as it came (its encoded form), or a new value in the format's
/// representation (text for text and csv, binary for binary; `None` is NULL).
#[derive(Debug, Clone, Copy)]
pub enum Out<'a> {
    Raw(&'a [u8]),
    Value(Option<&'a [u8]>),
}

impl<'r> Fields<'r> {
    pub fn parse(options: &'r CopyOptions, row: &'r [u8]) -> Result<Self, CopyRowError> {
        Self::parse_in(options, row, FieldBuf::default())
    }

    /// [`Fields::parse`] into the room of an earlier row.
    pub fn parse_in(
        options: &'r CopyOptions,
        row: &'r [u8],
        buf: FieldBuf,
    ) -> Result<Self, CopyRowError> {
        let mut spans = buf.0;
        spans.clear();
        match options.format {
            CopyFormat::Binary => binary_fields(options, row, spans),
            CopyFormat::Text | CopyFormat::Csv => {
                let (line, terminator) = split_terminator(row);
                if options.format == CopyFormat::Text {
                    text_spans(options, line, &mut spans)
                } else {
                    csv_spans(options, line, &mut spans)
                };
                Ok(Self {
                    options,
                    row,
                    spans,
                    terminator,
                })
            }
        }
    }

    /// The room of this row's field positions, for the next row.
    pub fn recycle(self) -> FieldBuf {
        FieldBuf(self.spans)
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Field `i` for writing back unchanged.
    pub fn out(&self, i: usize) -> Out<'r> {
        match self.spans.get(i) {
            Some(span) if span.null => Out::Value(None),
            Some(span) => Out::Raw(&self.row[span.range.clone()]),
            None => Out::Value(None),
        }
    }

    /// Field `i` as it came, without unescaping or unquoting (`None`: NULL or absent).
    pub fn raw(&self, i: usize) -> Option<&'r [u8]> {
        let span = self.spans.get(i).filter(|span| !span.null)?;
        Some(&self.row[span.range.clone()])
    }

    /// Field `i`'s value (`None`: NULL), unescaped or unquoted.
    pub fn value(&self, i: usize) -> Option<Cow<'r, [u8]>> {
        let span = self.spans.get(i)?;
        if span.null {
            return None;
        }
        let raw = &self.row[span.range.clone()];
        Some(match self.options.format {
            CopyFormat::Binary => Cow::Borrowed(raw),
            CopyFormat::Text => text_unescape(raw),
            CopyFormat::Csv => csv_unquote(self.options, raw),
        })
    }

    /// Text format only: a carriage return that is not escaped. PostgreSQL reads it as the
    /// end of a line (or refuses it), so the row would not be split where pgveil split it.
    pub fn has_bare_cr(&self) -> bool {
        if self.options.format != CopyFormat::Text {
            return false;
        }
        let line = &self.row[..self.row.len() - self.terminator.len()];
        let mut i = 0;
        while let Some(at) = line
            .get(i..)
            .and_then(|rest| memchr::memchr2(b'\\', b'\r', rest))
        {
            if line[i + at] == b'\r' {
                return true;
            }
            i += at + 2;
        }
        false
    }

    /// The row's line terminator (empty for binary and for a last line without one).
    pub fn terminator(&self) -> &'r [u8] {
        self.terminator
    }
}

fn split_terminator(row: &[u8]) -> (&[u8], &[u8]) {
    if let Some(line) = row.strip_suffix(b"\r\n") {
        (line, &row[line.len()..])
    } else if let Some(line) = row.strip_suffix(b"\n") {
        (line, &row[line.len()..])
    } else {
        (row, &[])
    }
}

/// Text: fields end at a delimiter not escaped by a backslash. (A line that ends in a lone
/// backslash loses its last field, so the row's field count is wrong and it is refused.)
fn text_spans(options: &CopyOptions, line: &[u8], spans: &mut Vec<Span>) {
    let delimiter = options.delimiter;
    let mut push = |range: Range<usize>| {
        let null = &line[range.clone()] == options.null.as_slice();
        spans.push(Span { range, null });
    };
    let mut start = 0;
    let mut i = 0;
    loop {
        let found = line
            .get(i..)
            .map(|rest| memchr::memchr2(delimiter, b'\\', rest));
        match found {
            Some(Some(at)) if line[i + at] == delimiter => {
                push(start..i + at);
                start = i + at + 1;
                i = start;
            }
            Some(Some(at)) => i += at + 2,
            Some(None) => {
                push(start..line.len());
                return;
            }
            None => return,
        }
    }
}

fn csv_spans(options: &CopyOptions, line: &[u8], spans: &mut Vec<Span>) {
    let (quote, escape, delimiter) = (options.quote, options.escape, options.delimiter);
    let mut start = 0;
    let mut in_quote = false;
    let mut quoted = false;
    let mut i = 0;
    while i <= line.len() {
        if i == line.len() || (!in_quote && line[i] == delimiter) {
            let raw = &line[start..i.min(line.len())];
            spans.push(Span {
                range: start..i.min(line.len()),
                null: !quoted && raw == options.null.as_slice(),
            });
            start = i + 1;
            quoted = false;
            i += 1;
            continue;
        }
        let b = line[i];
        if in_quote {
            if b == escape && escape != quote {
                if let Some(&next) = line.get(i + 1) {
                    if next == quote || next == escape {
                        i += 2;
                        continue;
                    }
                }
            }
            if b == quote {
                in_quote = false;
            }
        } else if b == quote {
            in_quote = true;
            quoted = true;
        }
        i += 1;
    }
}

fn binary_fields<'r>(
    options: &'r CopyOptions,
    row: &'r [u8],
    mut spans: Vec<Span>,
) -> Result<Fields<'r>, CopyRowError> {
    let err = CopyRowError::Malformed("bad binary COPY row");
    let count = row
        .get(..2)
        .map(|c| i16::from_be_bytes([c[0], c[1]]))
        .ok_or(err.clone())?;
    spans.reserve(count.max(0) as usize);
    let mut at = 2;
    for _ in 0..count.max(0) {
        let len = i32_at(row, at).ok_or(err.clone())?;
        at += 4;
        if len < 0 {
            spans.push(Span {
                range: at..at,
                null: true,
            });
        } else {
            let end = at + len as usize;
            if end > row.len() {
                return Err(err);
            }
            spans.push(Span {
                range: at..end,
                null: false,
            });
            at = end;
        }
    }
    Ok(Fields {
        options,
        row,
        spans,
        terminator: &[],
    })
}

/// Text format's escapes undone.
fn text_unescape(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.contains(&b'\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' || i + 1 >= raw.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        i += 2;
        match c {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut value = u32::from(c - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((value & 0xff) as u8);
            }
            b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut value = 0u32;
                for _ in 0..2 {
                    match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(value as u8);
            }
            other => out.push(other),
        }
    }
    Cow::Owned(out)
}

/// Csv quoting undone.
fn csv_unquote<'r>(options: &CopyOptions, raw: &'r [u8]) -> Cow<'r, [u8]> {
    if !raw.contains(&options.quote) {
        return Cow::Borrowed(raw);
    }
    let (quote, escape) = (options.quote, options.escape);
    let mut out = Vec::with_capacity(raw.len());
    let mut in_quote = false;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if in_quote {
            if b == escape {
                if let Some(&next) = raw.get(i + 1) {
                    if next == quote || next == escape {
                        out.push(next);
                        i += 2;
                        continue;
                    }
                }
            }
            if b == quote {
                in_quote = false;
            } else {
                out.push(b);
            }
        } else if b == quote {
            in_quote = true;
        } else {
            out.push(b);
        }
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::copy_write::encode_row;

    fn units(options: &CopyOptions, chunks: &[&[u8]]) -> Vec<Unit> {
        let mut splitter = RowSplitter::new(options.clone(), 1 << 20);
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.push(chunk);
            while let Some(unit) = splitter.next_unit().unwrap() {
                out.push(unit);
            }
        }
        out.extend(splitter.finish().unwrap());
        out
    }

    #[test]
    fn text_rows_split_across_chunks() {
        let options = CopyOptions::defaults(CopyFormat::Text);
        let got = units(&options, &[b"1\ta\\", b"\nb\n2\t\\N\n\\.", b"\n"]);
        assert!(Fields::parse(&options, b"1\ta\rb\n").unwrap().has_bare_cr());
        assert!(!Fields::parse(&options, b"1\ta\\rb\r\n")
            .unwrap()
            .has_bare_cr());
        assert_eq!(
            got,
            vec![
                Unit::Row(Bytes::from_static(b"1\ta\\\nb\n")),
                Unit::Row(Bytes::from_static(b"2\t\\N\n")),
                Unit::End(Bytes::from_static(b"\\.\n")),
            ]
        );
        let row = b"1\ta\\tb\\\\c\\x41\\101\t\\N\n";
        let fields = Fields::parse(&options, row).unwrap();
        assert_eq!(fields.len(), 3);
        assert_eq!(fields.value(1).unwrap().as_ref(), b"a\tb\\cAA");
        assert!(fields.value(2).is_none());
        let mut out = Vec::new();
        encode_row(
            &options,
            &[fields.out(0), Out::Value(Some(b"x\ty\\z\n")), fields.out(2)],
            fields.terminator(),
            &mut out,
        );
        assert_eq!(out, b"1\tx\\ty\\\\z\\n\t\\N\n");
    }

    #[test]
    fn csv_quotes_newlines_and_header() {
        let mut options = CopyOptions::defaults(CopyFormat::Csv);
        options.header = true;
        let got = units(&options, &[b"id,name\n1,\"a\n", b"b,\"\"c\"\n2,\n3,\"\""]);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], Unit::Header(Bytes::from_static(b"id,name\n")));
        let Unit::Row(row) = &got[1] else { panic!() };
        let fields = Fields::parse(&options, row).unwrap();
        assert_eq!(fields.value(1).unwrap().as_ref(), b"a\nb,\"c");
        let Unit::Row(row) = &got[2] else { panic!() };
        assert!(Fields::parse(&options, row).unwrap().value(1).is_none());
        let Unit::Row(row) = &got[3] else { panic!() };
        let fields = Fields::parse(&options, row).unwrap();
        assert_eq!(fields.value(1).unwrap().as_ref(), b"");
        let mut out = Vec::new();
        encode_row(
            &options,
            &[
                Out::Value(Some(b"")),
                Out::Value(Some(b"a,\"b")),
                Out::Value(None),
            ],
            b"\n",
            &mut out,
        );
        assert_eq!(out, b"\"\",\"a,\"\"b\",\n");
    }

    #[test]
    fn binary_rows_span_messages() {
        let options = CopyOptions::defaults(CopyFormat::Binary);
        let mut stream = SIGNATURE.to_vec();
        stream.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        let mut row = vec![0, 2, 0, 0, 0, 3];
        row.extend_from_slice(b"abc");
        row.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        stream.extend_from_slice(&row);
        stream.extend_from_slice(&[0xff, 0xff]);
        let chunks: Vec<&[u8]> = stream.chunks(3).collect();
        let got = units(&options, &chunks);
        assert_eq!(got.len(), 3);
        assert!(matches!(&got[0], Unit::Header(h) if h.len() == 19));
        assert_eq!(got[1], Unit::Row(Bytes::from(row.clone())));
        let fields = Fields::parse(&options, &row).unwrap();
        assert_eq!(fields.value(0).unwrap().as_ref(), b"abc");
        assert!(fields.value(1).is_none());
        let mut out = Vec::new();
        encode_row(&options, &[fields.out(0), fields.out(1)], &[], &mut out);
        assert_eq!(out, row);
        assert!(matches!(&got[2], Unit::End(_)));
    }

    #[test]
    fn text_fields_skip_escapes_and_reuse_their_room() {
        let options = CopyOptions::defaults(CopyFormat::Text);
        let fields = Fields::parse(&options, b"a\\\tb\\\\\tc\t\n").unwrap();
        assert_eq!(fields.len(), 3);
        assert_eq!(fields.raw(0), Some(&b"a\\\tb\\\\"[..]));
        assert_eq!(fields.value(0).unwrap().as_ref(), b"a\tb\\");
        assert_eq!(fields.raw(1), Some(&b"c"[..]));
        assert_eq!(fields.raw(2), Some(&b""[..]));
        let fields = Fields::parse_in(&options, b"\n", fields.recycle()).unwrap();
        assert_eq!(fields.len(), 1);
        assert_eq!(fields.raw(0), Some(&b""[..]));
        // A lone backslash at the end loses the last field: the count check refuses it.
        let fields = Fields::parse_in(&options, b"x\ty\\", fields.recycle()).unwrap();
        assert_eq!(fields.len(), 1);
        assert!(!Fields::parse(&options, b"a\\\rb\\").unwrap().has_bare_cr());
        assert!(Fields::parse(&options, b"a\\\\\rb").unwrap().has_bare_cr());
    }

    #[test]
    fn text_rows_found_in_any_chunking() {
        let options = CopyOptions::defaults(CopyFormat::Text);
        let stream: &[u8] = b"1\ta\\\nb\n2\t\\\\\n\n3\tc\\";
        let whole = units(&options, &[stream]);
        assert_eq!(whole.len(), 4);
        for size in 1..stream.len() {
            let chunks: Vec<&[u8]> = stream.chunks(size).collect();
            assert_eq!(units(&options, &chunks), whole, "chunks of {size}");
        }
    }

    #[test]
    fn oversized_and_truncated_rows_are_errors() {
        let options = CopyOptions::defaults(CopyFormat::Text);
        let mut splitter = RowSplitter::new(options, 4);
        splitter.push(b"123456");
        assert_eq!(splitter.next_unit(), Err(CopyRowError::TooLarge(4)));
        let mut splitter = RowSplitter::new(CopyOptions::defaults(CopyFormat::Binary), 100);
        splitter.push(SIGNATURE);
        splitter.push(&[0; 8]);
        splitter.push(&[0, 1]);
        assert!(splitter.next_unit().unwrap().is_some());
        assert!(splitter.finish().is_err());
    }
}
