//! The segment being written, kept open between batches, with zeros kept ahead of its
//! content by a background thread; and the next segment, prepared in the background.
//!
//! The writer does not open the segment by path for every batch. Instead, before each write
//! it checks with two `stat` calls that the directory is still the one opened at start and
//! that the segment's path still names the open file with at least the durable length; a
//! removed, replaced or truncated segment is noticed before anything is written to it,
//! without an open/close per batch.
//!
//! # Zeros ahead of the content
//!
//! A batch is written over zeros that are already durable, so its `fdatasync` flushes data
//! only. When less than half of [`Active::chunk`] is left, a background thread writes another
//! chunk of zeros past the end of the file and syncs it, in small synced pieces (a pending
//! zero page would be flushed by the writer's own `fdatasync` too). The writer never writes
//! where that thread writes: a batch that would reach past the zeros first waits for the
//! thread, and only then, if it still does not fit, appends (correct, only slower).
//!
//! # Crash semantics
//!
//! A batch is written in pieces of at most [`MAX_UNSYNCED_WRITE`] bytes, each followed by
//! `fdatasync`; nothing of it is acknowledged before the last one returns. A crash can leave
//! any part of an unsynced piece on disk (pages of it, not necessarily in order), so after
//! the content there may be non-zero bytes within that distance: the next start removes them
//! with a chained repair record (see `writer`), and `verify` calls them a torn final line.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use super::segment::{prepare, segment_path, zero_fill, MAX_UNSYNCED_WRITE, PREPARED_NAME};

/// Zeros kept ahead of the content, at most (see [`chunk_for`]).
pub(crate) const PREALLOC_CHUNK: u64 = 2 << 20;

/// The zeros added at a time to a segment of at most `max_bytes`: [`PREALLOC_CHUNK`], less
/// for small segments (whole pages).
pub(crate) fn chunk_for(max_bytes: u64) -> u64 {
    max_bytes.next_multiple_of(4096).clamp(4096, PREALLOC_CHUNK)
}

/// What happened to the segment under the writer.
#[derive(Debug)]
pub(crate) enum Check {
    Ok,
    /// The segment is gone or is not the file the writer holds: continue in a fresh one.
    Lost(String),
    /// The directory or the file cannot be checked: this batch fails.
    Failed(String),
}

/// The open segment.
pub(crate) struct Active {
    pub number: u64,
    path: PathBuf,
    file: File,
    /// (device, inode) of the open file.
    id: (u64, u64),
    /// File size as last seen or written: up to here the file holds content or zeros.
    size: u64,
    /// Length up to the end of the last durable line.
    pub durable_len: u64,
    /// End of bytes a failed write may have left after `durable_len`; the next write zeroes
    /// them, so nothing but zeros ever follows the content.
    dirty_until: u64,
    /// Zeros added at a time, and the size past which none are added.
    chunk: u64,
    max_bytes: u64,
    /// The background thread adding zeros; it answers the new size.
    extending: Option<JoinHandle<std::io::Result<u64>>>,
}

impl Active {
    /// Takes over an open segment file whose content ends at `durable_len`, to be filled up
    /// to about `max_bytes`.
    pub fn new(
        dir: &Path,
        number: u64,
        file: File,
        durable_len: u64,
        max_bytes: u64,
    ) -> std::io::Result<Self> {
        let meta = file.metadata()?;
        let mut active = Self {
            number,
            path: segment_path(dir, number),
            id: (meta.dev(), meta.ino()),
            size: meta.len(),
            file,
            durable_len,
            dirty_until: durable_len,
            chunk: chunk_for(max_bytes),
            max_bytes,
            extending: None,
        };
        active.extend_if_low();
        Ok(active)
    }

    /// Opens segment `number` for writing.
    pub fn open(
        dir: &Path,
        number: u64,
        durable_len: u64,
        max_bytes: u64,
    ) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(segment_path(dir, number))?;
        Self::new(dir, number, file, durable_len, max_bytes)
    }

    #[cfg(test)]
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether the path still names the open file, at least as long as its durable content.
    pub fn check(&self) -> Check {
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) != self.id => Check::Lost("was replaced".into()),
            Ok(m) if m.len() < self.durable_len => Check::Lost(format!(
                "shrank from {} to {} bytes",
                self.durable_len,
                m.len()
            )),
            Ok(_) => Check::Ok,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Check::Lost("was removed".into()),
            Err(e) => Check::Failed(format!("cannot stat {}: {e}", self.path.display())),
        }
    }

    /// Waits for the background thread, if it runs, and takes the size it reached.
    fn join_extension(&mut self) {
        if let Some(handle) = self.extending.take() {
            match handle.join() {
                Ok(Ok(size)) => self.size = self.size.max(size),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, segment = %self.path.display(), "cannot preallocate audit segment space; appending instead");
                }
                Err(_) => tracing::warn!("audit segment preallocation thread panicked"),
            }
        }
    }

    /// Starts adding a chunk of zeros past the end when less than half a chunk is left and
    /// the segment is not full yet.
    fn extend_if_low(&mut self) {
        if self.extending.is_some()
            || self.size >= self.max_bytes
            || self.size.saturating_sub(self.durable_len) >= self.chunk / 2
        {
            return;
        }
        let file = match self.file.try_clone() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot preallocate audit segment space");
                return;
            }
        };
        let (from, to) = (self.size, self.size + self.chunk);
        match std::thread::Builder::new()
            .name("pgveil-prealloc".into())
            .spawn(move || {
                zero_fill(&file, from, to)?;
                file.sync_data()?;
                Ok(to)
            }) {
            Ok(handle) => self.extending = Some(handle),
            Err(e) => tracing::warn!(error = %e, "cannot start audit segment preallocation"),
        }
    }

    /// Writes `bytes` after the durable content and makes them durable: pieces of at most
    /// [`MAX_UNSYNCED_WRITE`] bytes, each followed by `fdatasync` (within the zeros that
    /// flushes data only). Returns the number of `fdatasync` calls. On failure nothing counts
    /// as written and the bytes that may have landed are zeroed (now, or by the next write).
    pub fn write_durably(&mut self, bytes: &[u8]) -> Result<u64, (String, u64)> {
        let start = self.durable_len;
        let end = start + bytes.len() as u64;
        let padded;
        let out: &[u8] = if self.dirty_until > end {
            let mut v = bytes.to_vec();
            v.resize((self.dirty_until - start) as usize, 0);
            padded = v;
            &padded
        } else {
            bytes
        };
        let written_end = start + out.len() as u64;
        if written_end > self.size {
            // Never write where the background thread may be writing zeros.
            self.join_extension();
        }
        let mut fsyncs = 0;
        let mut result = Ok(());
        for (i, piece) in out.chunks(MAX_UNSYNCED_WRITE as usize).enumerate() {
            let at = start + i as u64 * MAX_UNSYNCED_WRITE;
            result = self
                .file
                .write_all_at(piece, at)
                .map_err(|e| format!("cannot write {}: {e}", self.path.display()))
                .and_then(|()| {
                    fsyncs += 1;
                    self.file
                        .sync_data()
                        .map_err(|e| format!("cannot fsync {}: {e}", self.path.display()))
                });
            if result.is_err() {
                break;
            }
        }
        self.size = self.size.max(written_end);
        match result {
            Ok(()) => {
                self.durable_len = end;
                self.dirty_until = end;
                self.extend_if_low();
                Ok(fsyncs)
            }
            Err(e) => {
                self.dirty_until = self.dirty_until.max(written_end);
                // Best effort now; otherwise the next write pads over them.
                let zeros = vec![0u8; (self.dirty_until - start) as usize];
                if self.file.write_all_at(&zeros, start).is_ok() && self.file.sync_data().is_ok() {
                    self.dirty_until = start;
                }
                Err((e, fsyncs))
            }
        }
    }

    /// Rewrites `[durable_len, durable_len + len)` with `bytes` followed by zeros up to
    /// `len` (a repair over torn bytes), durable on return.
    pub fn overwrite_tail(&mut self, bytes: &[u8], len: u64) -> Result<u64, (String, u64)> {
        self.dirty_until = self.dirty_until.max(self.durable_len + len);
        self.write_durably(bytes)
    }

    /// Closes the segment: waits for the background thread, then cuts the file back to its
    /// content (so a closed segment is plain JSON lines) and syncs it. Best effort: a
    /// segment left with its zero tail is still valid.
    pub fn close(mut self) {
        self.join_extension();
        let cut = self
            .file
            .set_len(self.durable_len)
            .and_then(|()| self.file.sync_all());
        if let Err(e) = cut {
            tracing::warn!(error = %e, segment = %self.path.display(), "cannot cut the closed audit segment to its content; its zero tail stays");
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        // No thread outlives the writer or writes into a file the writer let go of.
        self.join_extension();
    }
}

/// The next segment, zero-filled by a background thread.
pub(crate) struct Successor {
    dir: PathBuf,
    max_bytes: u64,
    state: State,
}

enum State {
    Idle,
    Running(JoinHandle<std::io::Result<File>>),
}

impl Successor {
    pub fn new(dir: &Path, max_bytes: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            max_bytes,
            state: State::Idle,
        }
    }

    /// Starts preparing the next segment, unless that is under way.
    pub fn start(&mut self) {
        if matches!(self.state, State::Running(_)) {
            return;
        }
        let (dir, size) = (self.dir.clone(), chunk_for(self.max_bytes));
        match std::thread::Builder::new()
            .name("pgveil-prealloc".into())
            .spawn(move || prepare(&dir, size))
        {
            Ok(handle) => self.state = State::Running(handle),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the audit segment preparer; preparing when needed")
            }
        }
    }

    /// The prepared file (waiting for the background thread if it is still at work, or
    /// preparing it now if it failed or never ran), renamed to segment `number` and with that
    /// name made durable. Then starts preparing the one after.
    pub fn install(&mut self, number: u64) -> Result<Active, String> {
        let prepared = match std::mem::replace(&mut self.state, State::Idle) {
            State::Running(handle) => match handle.join() {
                Ok(Ok(file)) => Ok(file),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("segment preparer panicked".into()),
            },
            State::Idle => Err(String::new()),
        };
        let file = match prepared {
            Ok(file) => file,
            Err(why) => {
                if !why.is_empty() {
                    tracing::warn!(error = %why, "background preparation of the next audit segment failed; trying again now");
                }
                prepare(&self.dir, chunk_for(self.max_bytes)).map_err(|e| {
                    format!(
                        "cannot prepare the next segment in {}: {e}",
                        self.dir.display()
                    )
                })?
            }
        };
        let target = segment_path(&self.dir, number);
        std::fs::rename(self.dir.join(PREPARED_NAME), &target)
            .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
        sync_dir(&self.dir).map_err(|e| format!("cannot sync {}: {e}", self.dir.display()))?;
        let active = Active::new(&self.dir, number, file, 0, self.max_bytes)
            .map_err(|e| format!("cannot stat {}: {e}", target.display()))?;
        self.start();
        Ok(active)
    }

    /// Waits for a preparation under way and removes the prepared file (at shutdown, so no
    /// thread outlives the writer and a cleanly closed log holds only its segments).
    pub fn finish(&mut self) {
        if let State::Running(handle) = std::mem::replace(&mut self.state, State::Idle) {
            let _ = handle.join();
        }
        match std::fs::remove_file(self.dir.join(PREPARED_NAME)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, "cannot remove the prepared audit segment"),
        }
    }
}

pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::segment::extent;

    #[test]
    fn a_failed_write_leaves_only_zeros_after_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut next = Successor::new(dir.path(), 8192);
        let mut active = next.install(1).unwrap();
        active.write_durably(b"one\n").unwrap();
        // What a write that failed half-way and could not be undone leaves behind.
        active
            .file
            .write_all_at(b"{\"seq\":2,\"time\":\"20", 4)
            .unwrap();
        active.dirty_until = 4 + 20;
        active.write_durably(b"2\n").unwrap();
        let e = extent(active.file()).unwrap();
        assert_eq!((e.end, e.stray, e.size), (6, None, 8192));
        next.finish();
    }

    #[test]
    fn check_notices_removal_replacement_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let mut next = Successor::new(dir.path(), 4096);
        let mut active = next.install(1).unwrap();
        active.write_durably(b"line\n").unwrap();
        assert!(matches!(active.check(), Check::Ok));
        let path = segment_path(dir.path(), 1);
        std::fs::write(&path, b"li").unwrap(); // truncates the same inode
        assert!(matches!(active.check(), Check::Lost(w) if w.starts_with("shrank from 5")));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(active.check(), Check::Lost(w) if w == "was removed"));
        std::fs::write(&path, vec![b'x'; 100]).unwrap();
        assert!(matches!(active.check(), Check::Lost(w) if w == "was replaced"));
        next.finish();
    }

    #[test]
    fn zeros_stay_ahead_of_the_content_and_close_cuts_them() {
        let dir = tempfile::tempdir().unwrap();
        let max = 4 * PREALLOC_CHUNK;
        let mut next = Successor::new(dir.path(), max);
        let mut active = next.install(1).unwrap();
        assert_eq!(active.size, PREALLOC_CHUNK);
        // A little over half a chunk: the background thread adds the next chunk.
        let line = vec![b'x'; 4095];
        let mut written = 0u64;
        let mut fsyncs = 0;
        while written <= PREALLOC_CHUNK / 2 {
            let mut l = line.clone();
            l.push(b'\n');
            fsyncs += active.write_durably(&l).unwrap();
            written += 4096;
        }
        assert_eq!(fsyncs, written / 4096, "one fdatasync per small batch");
        active.join_extension();
        assert_eq!(active.size, 2 * PREALLOC_CHUNK);
        let e = extent(active.file()).unwrap();
        assert_eq!(
            (e.size, e.end, e.stray),
            (2 * PREALLOC_CHUNK, written, None)
        );
        // A batch larger than MAX_UNSYNCED_WRITE is synced piecewise.
        let big = vec![b'y'; MAX_UNSYNCED_WRITE as usize + 10];
        assert_eq!(active.write_durably(&big).unwrap(), 2);
        let end = written + big.len() as u64;
        let path = segment_path(dir.path(), 1);
        active.close();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), end);
        next.finish();
        assert!(!dir.path().join(PREPARED_NAME).exists());
    }

    #[test]
    fn a_segment_without_zeros_gets_them_before_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        std::fs::write(&path, b"a\n").unwrap();
        let mut active = Active::open(dir.path(), 1, 2, 1 << 30).unwrap();
        active.write_durably(b"b\n").unwrap();
        let e = extent(active.file()).unwrap();
        assert_eq!((e.end, e.stray), (4, None));
        assert!(e.size >= 2 + PREALLOC_CHUNK, "{e:?}");
    }
}
