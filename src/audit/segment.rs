//! Segment file naming, listing, and a line reader that keeps unterminated final lines.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::AuditError;

const PREFIX: &str = "segment-";
const SUFFIX: &str = ".jsonl";

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

/// One line: its bytes without the newline and whether it was newline-terminated.
pub(crate) struct Line {
    pub bytes: Vec<u8>,
    pub terminated: bool,
    /// 1-based line number within the segment.
    pub number: u64,
}

/// Reads lines with one line of lookahead.
pub(crate) struct LineReader {
    reader: BufReader<File>,
    peeked: Option<Option<Line>>,
    count: u64,
}

impl LineReader {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            reader: BufReader::with_capacity(64 * 1024, File::open(path)?),
            peeked: None,
            count: 0,
        })
    }

    fn read(&mut self) -> std::io::Result<Option<Line>> {
        let mut bytes = Vec::new();
        let n = self.reader.read_until(b'\n', &mut bytes)?;
        if n == 0 {
            return Ok(None);
        }
        let terminated = bytes.last() == Some(&b'\n');
        if terminated {
            bytes.pop();
        }
        self.count += 1;
        Ok(Some(Line {
            bytes,
            terminated,
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
    }
}
