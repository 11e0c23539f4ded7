//! `pgveil audit verify`: checks every segment, the hash chain and the signed checkpoints.
//!
//! Checked, in log order, stopping at the first problem:
//! - segment numbering starts at 1 and has no gaps;
//! - every line is a record or a checkpoint; a record's hash matches its bytes, its `seq` is
//!   the previous one plus one and its `prev` is the previous record's hash (across segments);
//! - every checkpoint's Ed25519 signature is valid, it names the segment file that holds it,
//!   and its `seq`/`head` are those of the record just before it;
//! - every segment but the last ends with a `rotate` checkpoint, and the last does not (a
//!   `rotate` promises a successor);
//! - a final unterminated or unparseable line of the last non-empty segment is reported as a
//!   torn final line;
//! - after a segment's content (its bytes up to the first NUL, see `segment`) there are only
//!   zeros, except in the last non-empty segment within one unsynced write of the end of its
//!   content, which is a torn write (reported as a torn final line). Non-zero bytes anywhere
//!   else after the content are reported with their offset: data hidden behind the zero
//!   tail, or damage.
//!
//! Removal of whole trailing records after the last checkpoint, or of the whole log, cannot be
//! detected from the log alone; the summary says how many records follow the last signed
//! checkpoint.

use std::fmt;
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use subtle::ConstantTimeEq as _;

use super::record::{decode_hash, parse_line, split_hash, CheckpointReason, LogLine};
use super::segment::{extent, list_segments, segment_name, LineReader, MAX_UNSYNCED_WRITE};

/// A verified log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySummary {
    pub segments: u64,
    pub records: u64,
    pub checkpoints: u64,
    /// Seq of the last record (0 when the log is empty).
    pub last_seq: u64,
    /// Seq covered by the last signed checkpoint.
    pub last_checkpoint_seq: Option<u64>,
    /// Records after the last signed checkpoint: chained, but not yet signed.
    pub unsigned_tail: u64,
}

impl VerifySummary {
    /// Whether records follow the last signed checkpoint (chained, not yet signed).
    pub fn has_unsigned_tail(&self) -> bool {
        self.unsigned_tail > 0
    }
}

impl fmt::Display for VerifySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.records == 0 {
            return write!(
                f,
                "audit log intact: {} segment(s), no records, {} checkpoint(s)",
                self.segments, self.checkpoints
            );
        }
        write!(
            f,
            "audit log intact: {} segment(s), {} records (last seq {}), {} signed checkpoint(s)",
            self.segments, self.records, self.last_seq, self.checkpoints
        )?;
        match self.last_checkpoint_seq {
            Some(cp) if self.unsigned_tail > 0 => write!(
                f,
                "; {} record(s) after the last checkpoint (seq {cp}) are chained but not yet signed",
                self.unsigned_tail
            ),
            Some(cp) => write!(f, "; last checkpoint at seq {cp} covers all records"),
            None => write!(
                f,
                "; no signed checkpoint yet: all {} record(s) are chained but not yet signed",
                self.unsigned_tail
            ),
        }
    }
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    /// Segment file name (or the directory, when it cannot be read).
    pub segment: String,
    pub seq: Option<u64>,
    pub reason: String,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "{} seq {seq}: {}", self.segment, self.reason),
            None => write!(f, "{}: {}", self.segment, self.reason),
        }
    }
}

impl std::error::Error for VerifyFailure {}

fn fail(segment: impl Into<String>, seq: Option<u64>, reason: impl Into<String>) -> VerifyFailure {
    VerifyFailure {
        segment: segment.into(),
        seq,
        reason: reason.into(),
    }
}

const TORN: &str = "torn final line (crash during write); the next start repairs it";

/// Verifies the whole log in `dir` with the audit public key.
pub fn verify_dir(dir: &Path, key: &VerifyingKey) -> Result<VerifySummary, VerifyFailure> {
    let dir_name = dir.display().to_string();
    if !dir.is_dir() {
        return Err(fail(dir_name, None, "not a directory or not readable"));
    }
    let segs = list_segments(dir).map_err(|e| fail(dir_name.clone(), None, e.to_string()))?;
    let mut summary = VerifySummary {
        segments: segs.len() as u64,
        records: 0,
        checkpoints: 0,
        last_seq: 0,
        last_checkpoint_seq: None,
        unsigned_tail: 0,
    };
    if segs.is_empty() {
        return Ok(summary);
    }
    // The last segment holding anything but zeros: the only one that may end torn.
    let mut last_nonempty = None;
    for (i, (n, p)) in segs.iter().enumerate().rev() {
        let e = std::fs::File::open(p)
            .and_then(|f| extent(&f))
            .map_err(|e| fail(segment_name(*n), None, format!("cannot read: {e}")))?;
        if e.end > 0 || e.stray.is_some() {
            last_nonempty = Some(i);
            break;
        }
    }

    let mut expected_seq: u64 = 1;
    let mut head = [0u8; 32];
    let mut prev_num: Option<u64> = None;
    let mut prev_closed_by_rotate = false;

    for (i, (num, path)) in segs.iter().enumerate() {
        let name = segment_name(*num);
        match prev_num {
            None if *num != 1 => {
                return Err(fail(
                    name,
                    None,
                    format!(
                        "{} is missing: the log must start at segment 1 (first segment removed)",
                        segment_name(1)
                    ),
                ))
            }
            Some(p) if *num != p + 1 => {
                return Err(fail(
                    name,
                    None,
                    format!(
                        "segment {} is missing (segment removed between {} and this one)",
                        segment_name(p + 1),
                        segment_name(p)
                    ),
                ))
            }
            Some(p) if !prev_closed_by_rotate => {
                return Err(fail(
                    segment_name(p),
                    None,
                    format!(
                    "segment does not end with a signed rotate checkpoint although {name} follows \
                         (closing checkpoint or the segment's end removed)"
                ),
                ))
            }
            _ => {}
        }
        prev_num = Some(*num);
        prev_closed_by_rotate = false;
        let may_be_torn = Some(i) == last_nonempty;

        let mut reader = LineReader::open(path)
            .map_err(|e| fail(name.clone(), None, format!("cannot open: {e}")))?;
        let io = |e: std::io::Error| fail(name.clone(), None, format!("cannot read: {e}"));
        while let Some(line) = reader.next_line().map_err(io)? {
            let parsed = if line.terminated {
                parse_line(&line.bytes).map_err(|e| e.0)
            } else {
                Err("line is not newline-terminated".to_string())
            };
            let parsed = match parsed {
                Ok(p) => p,
                Err(why) => {
                    let at_end = match reader.peek().map_err(io)? {
                        None => true,
                        // An unterminated line is necessarily the last one.
                        Some(next) => line.terminated && !next.terminated,
                    };
                    if may_be_torn && at_end {
                        return Err(fail(name, None, TORN));
                    }
                    return Err(fail(
                        name,
                        None,
                        format!(
                            "line {}: not a valid record or checkpoint ({why})",
                            line.number
                        ),
                    ));
                }
            };
            match parsed {
                LogLine::Record(rec) => {
                    let seq = Some(rec.seq);
                    let Some((computed, stored)) = split_hash(&line.bytes) else {
                        return Err(fail(name, seq, "record line has no well-formed hash"));
                    };
                    if !bool::from(computed.ct_eq(&stored)) {
                        return Err(fail(name, seq, "hash mismatch (record was modified)"));
                    }
                    if rec.seq != expected_seq {
                        return Err(fail(
                            name,
                            seq,
                            format!(
                                "sequence break: expected seq {expected_seq} \
                                 (record deleted, inserted or reordered)"
                            ),
                        ));
                    }
                    let prev_ok = decode_hash(&rec.prev)
                        .map(|p| bool::from(p.ct_eq(&head)))
                        .unwrap_or(false);
                    if !prev_ok {
                        return Err(fail(
                            name,
                            seq,
                            "chain break: prev is not the hash of the previous record \
                             (record deleted, inserted or reordered)",
                        ));
                    }
                    head = stored;
                    expected_seq += 1;
                    summary.records += 1;
                    summary.last_seq = rec.seq;
                    summary.unsigned_tail += 1;
                }
                LogLine::Checkpoint(cp) => {
                    let seq = Some(cp.seq);
                    if !cp.signature_valid(key) {
                        return Err(fail(
                            name,
                            seq,
                            "checkpoint signature invalid (forged or edited checkpoint, or wrong public key)",
                        ));
                    }
                    if cp.segment != *num {
                        return Err(fail(
                            name,
                            seq,
                            format!(
                                "checkpoint was written in {} but is stored in this file (segment renamed)",
                                segment_name(cp.segment)
                            ),
                        ));
                    }
                    if cp.seq + 1 != expected_seq {
                        return Err(fail(
                            name,
                            seq,
                            format!(
                                "checkpoint does not follow its record: the preceding record is seq {}",
                                expected_seq - 1
                            ),
                        ));
                    }
                    let head_ok = decode_hash(&cp.head)
                        .map(|h| bool::from(h.ct_eq(&head)))
                        .unwrap_or(false);
                    if !head_ok {
                        return Err(fail(
                            name,
                            seq,
                            "checkpoint head does not match the hash of the record at that seq",
                        ));
                    }
                    if chrono::DateTime::parse_from_rfc3339(&cp.time).is_err() {
                        return Err(fail(name, seq, "checkpoint time is not RFC 3339"));
                    }
                    if cp.reason == CheckpointReason::Rotate {
                        if reader.peek().map_err(io)?.is_some() {
                            return Err(fail(
                                name,
                                seq,
                                "rotate checkpoint is not the last line of its segment",
                            ));
                        }
                        prev_closed_by_rotate = true;
                    }
                    summary.checkpoints += 1;
                    summary.last_checkpoint_seq = Some(cp.seq);
                    summary.unsigned_tail = 0;
                }
            }
        }
        if let Some((first, last)) = reader.stray_after_end().map_err(io)? {
            let end = reader.content_end().unwrap_or(0);
            if may_be_torn && last < end + MAX_UNSYNCED_WRITE {
                return Err(fail(name, None, TORN));
            }
            return Err(fail(
                name,
                None,
                format!(
                    "non-zero bytes at offsets {first}..={last} after the end of the content at \
                     offset {end} (data hidden behind the zero-filled tail, or damage)"
                ),
            ));
        }
    }
    if prev_closed_by_rotate {
        let last = segs.last().map(|(n, _)| *n).unwrap_or(0);
        return Err(fail(
            segment_name(last),
            None,
            format!(
                "segment closed by a rotate checkpoint but {} is missing (last segment removed)",
                segment_name(last + 1)
            ),
        ));
    }
    Ok(summary)
}
