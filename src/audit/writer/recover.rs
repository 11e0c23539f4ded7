//! Restart: restoring the chain head from the segments and repairing a torn tail.
//!
//! The *tail segment* is the newest segment holding anything but zeros; segments after it
//! are pristine (renamed into place for a rotation whose checkpoint was interrupted). Its
//! torn tail is what a crash during a write can leave: a final line cut short (by the end of
//! the file or by the zero-filled tail), at most one invalid complete line before such a
//! fragment, and non-zero bytes after the content no farther than one unsynced write
//! ([`MAX_UNSYNCED_WRITE`]) from its end. The repair writes a chained maintenance record
//! over the torn bytes, followed by zeros over the rest of them, with one write and one
//! fsync: a crash during the repair leaves either the old state or a torn repair record,
//! repaired again at the next start, never an unrecorded removal. Non-zero bytes farther
//! away are not a torn write: the writer refuses to start (`pgveil audit verify` says where).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::super::active::{sync_dir, Active};
use super::super::record::{
    parse_line, seal, CheckpointReason, LogLine, RecordContext, RecordDraft,
};
use super::super::segment::{extent, list_segments, segment_name, MAX_UNSYNCED_WRITE};
use super::super::AuditError;
use super::Writer;

/// What the end of a segment holds.
struct Tail {
    /// End of the content (its first NUL byte, or the file size).
    end: u64,
    /// Length of the content without its torn final line(s).
    good_len: u64,
    /// End of the torn bytes: `end`, or just past the last non-zero byte after the content.
    torn_end: u64,
    /// The last valid line before the torn tail.
    last: Option<LogLine>,
}

impl Tail {
    fn is_torn(&self) -> bool {
        self.good_len < self.torn_end
    }
}

/// Reads the end of a segment's content: at most the final unterminated fragment and one
/// invalid complete line before it count as torn; the line before must then be valid.
fn scan_tail(path: &Path) -> Result<Tail, AuditError> {
    let name = path.display();
    let io = |what: &str, e: std::io::Error| AuditError::Io(format!("cannot {what} {name}: {e}"));
    let file = File::open(path).map_err(|e| io("open", e))?;
    let ext = extent(&file).map_err(|e| io("read", e))?;
    let end = ext.end;
    let torn_end = match ext.stray {
        None => end,
        Some((first, last)) if last < end + MAX_UNSYNCED_WRITE => {
            tracing::warn!(segment = %name, first, last, end, "audit log: bytes of a torn write after the content");
            last + 1
        }
        Some((first, _)) => {
            return Err(AuditError::Corrupt(format!(
                "{name}: non-zero bytes at offset {first}, after the end of the content at {end} \
                 and farther than a torn write reaches; run `pgveil audit verify`"
            )))
        }
    };
    if end == 0 {
        return Ok(Tail {
            end,
            good_len: 0,
            torn_end,
            last: None,
        });
    }
    let mut chunk: u64 = 64 * 1024;
    let (start, buf) = loop {
        let start = end.saturating_sub(chunk);
        let mut buf = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut buf, start)
            .map_err(|e| io("read", e))?;
        let newlines = buf.iter().filter(|&&b| b == b'\n').count();
        if start == 0 || newlines >= 3 {
            break (start, buf);
        }
        chunk = chunk.saturating_mul(2);
    };
    // Complete lines inside buf: (start offset in buf, end offset excluding '\n').
    let mut lines: Vec<(usize, usize)> = Vec::new();
    let mut line_start: Option<usize> = if start == 0 { Some(0) } else { None };
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            if let Some(s) = line_start {
                lines.push((s, i));
            }
            line_start = Some(i + 1);
        }
    }
    let frag_start = line_start.unwrap_or(buf.len());
    let mut torn_from = (frag_start < buf.len()).then_some(frag_start);
    let mut last = None;
    if let Some(&(a_start, a_end)) = lines.last() {
        match parse_line(&buf[a_start..a_end]) {
            Ok(l) => last = Some(l),
            Err(_) => {
                torn_from = Some(a_start);
                if lines.len() >= 2 {
                    let (b_start, b_end) = lines[lines.len() - 2];
                    match parse_line(&buf[b_start..b_end]) {
                        Ok(l) => last = Some(l),
                        Err(e) => {
                            return Err(AuditError::Corrupt(format!(
                                "{name}: the last two lines are invalid ({e}); run `pgveil audit verify`"
                            )))
                        }
                    }
                }
            }
        }
    }
    let good_len = match torn_from {
        Some(i) => start + i as u64,
        None => end,
    };
    Ok(Tail {
        end,
        good_len,
        torn_end,
        last,
    })
}

/// Cuts a closed segment's zero tail (best effort: a segment keeping it is still valid).
fn cut_to_content(path: &Path, len: u64) {
    let cut = OpenOptions::new().write(true).open(path).and_then(|f| {
        if f.metadata()?.len() > len {
            f.set_len(len)?;
            f.sync_all()?;
        }
        Ok(())
    });
    if let Err(e) = cut {
        tracing::warn!(error = %e, segment = %path.display(), "cannot cut the closed audit segment to its content");
    }
}

/// Whether a line is a `rotate` checkpoint.
fn is_rotate(line: &Option<LogLine>) -> bool {
    matches!(line, Some(LogLine::Checkpoint(c)) if c.reason == CheckpointReason::Rotate)
}

impl Writer {
    fn set_head_from(&mut self, line: &LogLine) {
        match line {
            LogLine::Record(r) => {
                self.last_seq = r.seq;
                self.last_hash = r.hash.clone();
                self.since_checkpoint = 1;
            }
            LogLine::Checkpoint(c) => {
                self.last_seq = c.seq;
                self.last_hash = c.head.clone();
                self.since_checkpoint = 0;
            }
        }
    }

    fn open_segment(&self, n: u64, durable_len: u64) -> Result<Active, AuditError> {
        Active::open(&self.dir, n, durable_len, self.max_bytes).map_err(|e| {
            AuditError::Unavailable(format!("cannot open {}: {e}", self.path(n).display()))
        })
    }

    /// Restores the chain head after a restart, repairs a torn tail and opens the segment to
    /// continue (or leaves `current` to be created by the first write).
    pub(super) fn recover(&mut self) -> Result<(), AuditError> {
        let segs = list_segments(&self.dir)?;
        let Some(&(newest, _)) = segs.last() else {
            return Ok(());
        };
        let mut found = None;
        for (i, (n, p)) in segs.iter().enumerate().rev() {
            let tail = scan_tail(p)?;
            if tail.torn_end > 0 {
                found = Some((i, *n, tail));
                break;
            }
        }
        let Some((ti, t_num, tail)) = found else {
            // Only pristine segments.
            self.current = newest;
            self.active = Some(self.open_segment(newest, 0)?);
            return self.sync_names();
        };
        let mut last_is_rotate = is_rotate(&tail.last);
        if let Some(line) = &tail.last {
            self.set_head_from(line);
        } else {
            // Nothing valid in this segment: the head is at the end of an earlier one.
            for (_, p) in segs[..ti].iter().rev() {
                let t = scan_tail(p)?;
                if t.is_torn() {
                    return Err(AuditError::Corrupt(format!(
                        "{}: invalid final line in a segment that is not the last",
                        p.display()
                    )));
                }
                if let Some(line) = &t.last {
                    self.set_head_from(line);
                    break;
                }
            }
        }
        let mut repaired = None;
        if tail.is_torn() {
            let mut active = self.open_segment(t_num, tail.good_len)?;
            self.repair(&mut active, &tail)?;
            repaired = Some(active);
            last_is_rotate = false;
        }
        if last_is_rotate {
            // Closed. A crash after the rotate checkpoint may have left the zero tail.
            cut_to_content(&self.path(t_num), tail.end);
        }
        if newest > t_num {
            // Pristine successor(s): the rotation was interrupted before its checkpoint was
            // durable, or before the closed segment was cut to its content.
            if !last_is_rotate {
                self.current = t_num;
                self.active = match repaired {
                    Some(active) => Some(active),
                    None => Some(self.open_segment(t_num, tail.end)?),
                };
                self.commit(&[], Some(CheckpointReason::Rotate))
                    .map_err(AuditError::Unavailable)?;
                if let Some(closed) = self.active.take() {
                    closed.close();
                }
            }
            self.current = newest;
            self.active = Some(self.open_segment(newest, 0)?);
        } else if last_is_rotate {
            self.current = t_num + 1;
        } else {
            self.current = t_num;
            self.active = match repaired {
                Some(active) => Some(active),
                None => Some(self.open_segment(t_num, tail.end)?),
            };
        }
        self.sync_names()
    }

    /// Makes the segment names durable (a segment may have been created just before a crash).
    fn sync_names(&self) -> Result<(), AuditError> {
        sync_dir(&self.dir).map_err(|e| {
            AuditError::Unavailable(format!("cannot sync {}: {e}", self.dir.display()))
        })
    }

    /// Writes a chained maintenance record over the torn bytes and zeros over the rest.
    fn repair(&mut self, active: &mut Active, tail: &Tail) -> Result<(), AuditError> {
        let removed = tail.torn_end - tail.good_len;
        let description = format!(
            "repair removed torn final line: {removed} bytes at offset {} of {}",
            tail.good_len,
            segment_name(active.number)
        );
        let sealed = seal(
            &RecordDraft::maintenance(&description),
            &RecordContext::default(),
            self.last_seq + 1,
            &self.last_hash,
        )
        .map_err(AuditError::Corrupt)?;
        let written = active.overwrite_tail(sealed.line.as_bytes(), removed);
        let fsyncs = match &written {
            Ok(n) | Err((_, n)) => *n,
        };
        self.counters.fsyncs.fetch_add(fsyncs, Ordering::Relaxed);
        written.map_err(|(e, _)| AuditError::Unavailable(format!("cannot repair: {e}")))?;
        tracing::warn!(segment = %segment_name(active.number), removed, end = tail.end, "audit log: repaired torn final line");
        self.counters
            .records_written
            .fetch_add(1, Ordering::Relaxed);
        self.last_seq += 1;
        self.last_hash = sealed.hash;
        self.since_checkpoint += 1;
        Ok(())
    }
}
