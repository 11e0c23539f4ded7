//! Segment files: naming and listing, preallocation, and the reader that stops where a
//! segment's content ends.
//!
//! # Preallocated segments
//!
//! The segment being written has zeros ahead of its content, written and fsynced before any
//! record goes there, as PostgreSQL does with its WAL segments: an append then overwrites
//! blocks that already exist, so the `fdatasync` after a batch flushes data only, never the
//! file size or a block allocation (on ext4 that saves a journal commit per batch). A new
//! segment is prepared in the background under [`PREPARED_NAME`], a name no reader looks at,
//! and renamed into place when it is needed; while it fills, more zeros are added ahead of
//! the content in the background (see `active`). A segment that is closed (by `rotate`, or
//! at shutdown) is cut back to its content, so only a log that was not shut down cleanly
//! has a zero tail on disk.
//!
//! A segment's *content* is its bytes up to the first NUL byte. JSON lines never contain a
//! NUL byte, so the zero-filled tail is where the content ends; a segment whose first byte is
//! NUL (or that is empty) holds no content. Everything after the content must be NUL:
//! non-zero bytes there are either a write torn by a crash (the writer syncs at most
//! [`MAX_UNSYNCED_WRITE`] bytes at a time, so a torn write leaves non-zero bytes only within
//! that distance of the end of the content) or bytes hidden after the end, which `verify`
//! reports.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use super::AuditError;

const PREFIX: &str = "segment-";
const SUFFIX: &str = ".jsonl";

/// The next segment while it is being prepared (never matched by [`list_segments`]).
pub(crate) const PREPARED_NAME: &str = "segment-next.prep";

/// The largest write the writer leaves unsynced: a batch is written and fsynced in pieces of
/// at most this many bytes, so a crash can leave torn bytes only this far after the last
/// durable line.
pub(crate) const MAX_UNSYNCED_WRITE: u64 = 1 << 20;

/// Zeros are written in pieces of this size ...
const ZERO_CHUNK: usize = 256 * 1024;
/// ... and flushed every this many bytes: zeros written into the segment being appended to
/// are flushed by the writer's own `fdatasync` too, so few may be pending at any time.
const ZERO_SYNC_EVERY: u64 = 256 * 1024;

/// `segment-000001.jsonl`.
pub(crate) fn segment_name(n: u64) -> String {
    format!("{PREFIX}{n:06}{SUFFIX}")
}

pub(crate) fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(segment_name(n))
}

fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment numbers and paths in `dir`, ascending.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| AuditError::Io(format!("cannot read directory {}: {e}", dir.display())))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|e| AuditError::Io(format!("cannot read directory {}: {e}", dir.display())))?;
        if let Some(n) = entry.file_name().to_str().and_then(parse_name) {
            out.push((n, entry.path()));
        }
    }
    out.sort_by_key(|(n, _)| *n);
    Ok(out)
}

/// Writes zeros over `[from, to)` of `file`, syncing the data every few MiB.
pub(crate) fn zero_fill(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut at = from;
    let mut unsynced = 0;
    while at < to {
        let n = (to - at).min(ZERO_CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
        unsynced += n as u64;
        if unsynced >= ZERO_SYNC_EVERY {
            file.sync_data()?;
            unsynced = 0;
        }
    }
    Ok(())
}

/// Creates [`PREPARED_NAME`] in `dir` (replacing a leftover one), `size` bytes of zeros,
/// durable (data and size) when this returns.
pub(crate) fn prepare(dir: &Path, size: u64) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(PREPARED_NAME))?;
    zero_fill(&file, 0, size)?;
    file.sync_all()?;
    Ok(file)
}

/// Where a segment's content ends and what follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    /// File size.
    pub size: u64,
    /// Offset of the first NUL byte (`size` when there is none): the end of the content.
    pub end: u64,
    /// First and last non-zero byte after `end`, if any.
    pub stray: Option<(u64, u64)>,
}

/// Reads a whole segment to find its [`Extent`].
pub(crate) fn extent(file: &File) -> std::io::Result<Extent> {
    let size = file.metadata()?.len();
    let mut buf = vec![0u8; 256 * 1024];
    let mut at = 0u64;
    let mut end = None;
    let mut stray: Option<(u64, u64)> = None;
    while at < size {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        let from = match end {
            Some(_) => 0,
            None => match chunk.iter().position(|&b| b == 0) {
                Some(i) => {
                    end = Some(at + i as u64);
                    i
                }
                None => n,
            },
        };
        if let Some(rel) = chunk[from..].iter().position(|&b| b != 0) {
            let last = chunk.iter().rposition(|&b| b != 0).unwrap_or(from + rel);
            let first = stray.map_or(at + (from + rel) as u64, |(f, _)| f);
            stray = Some((first, at + last as u64));
        }
        at += n as u64;
    }
    Ok(Extent {
        size,
        end: end.unwrap_or(size),
        stray,
    })
}

/// One line: its bytes without the newline and whether it was newline-terminated.
pub(crate) struct Line {
    pub bytes: Vec<u8>,
    pub terminated: bool,
    /// 1-based line number within the segment.
    pub number: u64,
}

/// Reads the lines of a segment's content with one line of lookahead, stopping at the first
/// NUL byte (the zero-filled tail); a line cut by a NUL is returned unterminated.
pub(crate) struct LineReader {
    reader: BufReader<File>,
    peeked: Option<Option<Line>>,
    count: u64,
    /// Bytes consumed so far.
    offset: u64,
    /// Where the content ended, once the reader got there.
    end: Option<u64>,
}

impl LineReader {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            reader: BufReader::with_capacity(64 * 1024, File::open(path)?),
            peeked: None,
            count: 0,
            offset: 0,
            end: None,
        })
    }

    fn read(&mut self) -> std::io::Result<Option<Line>> {
        if self.end.is_some() {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        loop {
            let available = self.reader.fill_buf()?;
            if available.is_empty() {
                self.end = Some(self.offset);
                break;
            }
            match available.iter().position(|&b| b == b'\n' || b == 0) {
                Some(i) if available[i] == b'\n' => {
                    bytes.extend_from_slice(&available[..i]);
                    self.reader.consume(i + 1);
                    self.offset += i as u64 + 1;
                    self.count += 1;
                    return Ok(Some(Line {
                        bytes,
                        terminated: true,
                        number: self.count,
                    }));
                }
                Some(i) => {
                    bytes.extend_from_slice(&available[..i]);
                    self.reader.consume(i);
                    self.offset += i as u64;
                    self.end = Some(self.offset);
                    break;
                }
                None => {
                    let n = available.len();
                    bytes.extend_from_slice(available);
                    self.reader.consume(n);
                    self.offset += n as u64;
                }
            }
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        self.count += 1;
        Ok(Some(Line {
            bytes,
            terminated: false,
            number: self.count,
        }))
    }

    pub fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        match self.peeked.take() {
            Some(line) => Ok(line),
            None => self.read(),
        }
    }

    pub fn peek(&mut self) -> std::io::Result<Option<&Line>> {
        if self.peeked.is_none() {
            let line = self.read()?;
            self.peeked = Some(line);
        }
        Ok(self.peeked.as_ref().and_then(|l| l.as_ref()))
    }

    /// Where the content ended, once the reader got there.
    pub fn content_end(&self) -> Option<u64> {
        self.end
    }

    /// After the last line: the first and last non-zero byte after the end of the content,
    /// reading the rest of the file.
    pub fn stray_after_end(&mut self) -> std::io::Result<Option<(u64, u64)>> {
        while self.peek()?.is_some() {
            self.next_line()?;
        }
        let mut at = self.end.unwrap_or(self.offset);
        let mut stray: Option<(u64, u64)> = None;
        loop {
            let available = self.reader.fill_buf()?;
            if available.is_empty() {
                return Ok(stray);
            }
            if let Some(first) = available.iter().position(|&b| b != 0) {
                let last = available.iter().rposition(|&b| b != 0).unwrap_or(first);
                let first = stray.map_or(at + first as u64, |(f, _)| f);
                stray = Some((first, at + last as u64));
            }
            let n = available.len();
            self.reader.consume(n);
            at += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(segment_name(1), "segment-000001.jsonl");
        assert_eq!(parse_name("segment-000042.jsonl"), Some(42));
        assert_eq!(parse_name("segment-1234567.jsonl"), Some(1234567));
        assert_eq!(parse_name("segment-42.jsonl"), None);
        assert_eq!(parse_name("segment-000042.jsonl.tmp"), None);
        assert_eq!(parse_name(PREPARED_NAME), None);
    }

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    /// (text, terminated, line number) of each line, and the stray bytes after the content.
    type Read = (Vec<(String, bool, u64)>, Option<(u64, u64)>);

    fn read_all(path: &Path) -> Read {
        let mut r = LineReader::open(path).unwrap();
        let mut lines = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            lines.push((String::from_utf8(l.bytes).unwrap(), l.terminated, l.number));
        }
        (lines, r.stray_after_end().unwrap())
    }

    #[test]
    fn reader_stops_at_the_zero_tail() {
        let mut content = b"a\nbc\n".to_vec();
        content.extend(vec![0u8; 300_000]);
        let (_d, path) = file_with(&content);
        let (lines, stray) = read_all(&path);
        assert_eq!(lines, vec![("a".into(), true, 1), ("bc".into(), true, 2)]);
        assert_eq!(stray, None);
        let e = extent(&File::open(&path).unwrap()).unwrap();
        assert_eq!((e.size, e.end, e.stray), (300_005, 5, None));
    }

    #[test]
    fn a_line_cut_by_zeros_is_unterminated_and_later_bytes_are_stray() {
        let mut content = b"a\nbro".to_vec();
        content.extend(vec![0u8; 100_000]);
        content.extend(b"hidden\n");
        content.extend(vec![0u8; 10]);
        let (_d, path) = file_with(&content);
        let (lines, stray) = read_all(&path);
        assert_eq!(lines, vec![("a".into(), true, 1), ("bro".into(), false, 2)]);
        let first = 5 + 100_000;
        assert_eq!(stray, Some((first, first + 6)));
        let e = extent(&File::open(&path).unwrap()).unwrap();
        assert_eq!((e.end, e.stray), (5, Some((first, first + 6))));
    }

    #[test]
    fn empty_and_all_zero_segments_have_no_content() {
        let (_d, path) = file_with(b"");
        let e = extent(&File::open(&path).unwrap()).unwrap();
        assert_eq!((e.size, e.end, e.stray), (0, 0, None));
        assert_eq!(read_all(&path), (vec![], None));
        let (_d, path) = file_with(&[0u8; 4096]);
        assert_eq!(read_all(&path), (vec![], None));
        let e = extent(&File::open(&path).unwrap()).unwrap();
        assert_eq!((e.size, e.end, e.stray), (4096, 0, None));
    }

    #[test]
    fn legacy_segments_without_a_zero_tail_read_as_before() {
        let (_d, path) = file_with(b"x\ny");
        let (lines, stray) = read_all(&path);
        assert_eq!(lines, vec![("x".into(), true, 1), ("y".into(), false, 2)]);
        assert_eq!(stray, None);
    }

    #[test]
    fn prepare_zero_fills_to_size() {
        let dir = tempfile::tempdir().unwrap();
        let f = prepare(dir.path(), 3 * ZERO_CHUNK as u64 + 17).unwrap();
        let e = extent(&f).unwrap();
        assert_eq!(
            (e.size, e.end, e.stray),
            (3 * ZERO_CHUNK as u64 + 17, 0, None)
        );
        // Preparing again replaces the leftover.
        std::fs::write(dir.path().join(PREPARED_NAME), b"junk").unwrap();
        let f = prepare(dir.path(), 100).unwrap();
        assert_eq!(extent(&f).unwrap().stray, None);
        assert_eq!(f.metadata().unwrap().len(), 100);
    }
}
