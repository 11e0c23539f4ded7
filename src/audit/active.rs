//! The segment being written, kept open between batches, and the next segment, prepared in
//! the background.
//!
//! The writer no longer opens the segment by path for every batch. Instead, before each write
//! it checks with two `stat` calls that the directory is still the one opened at start and
//! that the segment's path still names the open file with at least the durable length; a
//! removed, replaced or truncated segment is noticed before anything is written to it, as
//! before, without the open/close per batch.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use super::segment::{prepare, segment_path, PREPARED_NAME};

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
    /// File size as last seen or written.
    size: u64,
    /// Length up to the end of the last durable line.
    pub durable_len: u64,
    /// End of bytes a failed write may have left after `durable_len`; the next write zeroes
    /// them, so nothing but zeros ever follows the content.
    dirty_until: u64,
}

impl Active {
    /// Takes over an open segment file whose content ends at `durable_len`.
    pub fn new(dir: &Path, number: u64, file: File, durable_len: u64) -> std::io::Result<Self> {
        let meta = file.metadata()?;
        Ok(Self {
            number,
            path: segment_path(dir, number),
            id: (meta.dev(), meta.ino()),
            size: meta.len(),
            file,
            durable_len,
            dirty_until: durable_len,
        })
    }

    /// Opens segment `number` for writing.
    pub fn open(dir: &Path, number: u64, durable_len: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(segment_path(dir, number))?;
        Self::new(dir, number, file, durable_len)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

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
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Check::Lost("was removed".into())
            }
            Err(e) => Check::Failed(format!("cannot stat {}: {e}", self.path.display())),
        }
    }

    /// Writes `bytes` after the durable content and makes them durable with one
    /// `fdatasync`. Within the preallocated size that flushes data only. On failure nothing
    /// counts as written and the bytes that may have landed are zeroed (now, or by the next
    /// write).
    pub fn write_durably(&mut self, bytes: &[u8]) -> Result<(), String> {
        let start = self.durable_len;
        let end = start + bytes.len() as u64;
        let padded;
        let out: &[u8] = if self.dirty_until > end {
            let mut v = Vec::with_capacity((self.dirty_until - start) as usize);
            v.extend_from_slice(bytes);
            v.resize((self.dirty_until - start) as usize, 0);
            padded = v;
            &padded
        } else {
            bytes
        };
        let written_end = start + out.len() as u64;
        let result = self
            .file
            .write_all_at(out, start)
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))
            .and_then(|()| {
                self.file
                    .sync_data()
                    .map_err(|e| format!("cannot fsync {}: {e}", self.path.display()))
            });
        self.size = self.size.max(written_end);
        match result {
            Ok(()) => {
                self.durable_len = end;
                self.dirty_until = end;
                Ok(())
            }
            Err(e) => {
                self.dirty_until = self.dirty_until.max(written_end);
                // Best effort now; otherwise the next write pads over them.
                let zeros = vec![0u8; (self.dirty_until - start) as usize];
                if self.file.write_all_at(&zeros, start).is_ok() && self.file.sync_data().is_ok()
                {
                    self.dirty_until = start;
                }
                Err(e)
            }
        }
    }

    /// Rewrites `[durable_len, durable_len + len)` with `bytes` followed by zeros up to
    /// `len` (a repair over torn bytes), durable on return.
    pub fn overwrite_tail(&mut self, bytes: &[u8], len: u64) -> Result<(), String> {
        self.dirty_until = self.dirty_until.max(self.durable_len + len);
        self.write_durably(bytes)
    }
}

/// The next segment, zero-filled by a background thread.
pub(crate) struct Successor {
    dir: PathBuf,
    size: u64,
    state: State,
}

enum State {
    Idle,
    Running(JoinHandle<std::io::Result<File>>),
}

impl Successor {
    pub fn new(dir: &Path, size: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            size,
            state: State::Idle,
        }
    }

    /// Starts preparing the next segment, unless that is under way.
    pub fn start(&mut self) {
        if matches!(self.state, State::Running(_)) {
            return;
        }
        let (dir, size) = (self.dir.clone(), self.size);
        match std::thread::Builder::new()
            .name("pgveil-prealloc".into())
            .spawn(move || prepare(&dir, size))
        {
            Ok(handle) => self.state = State::Running(handle),
            Err(e) => tracing::warn!(error = %e, "cannot start the audit segment preparer; preparing when needed"),
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
                prepare(&self.dir, self.size).map_err(|e| {
                    format!("cannot prepare the next segment in {}: {e}", self.dir.display())
                })?
            }
        };
        let target = segment_path(&self.dir, number);
        std::fs::rename(self.dir.join(PREPARED_NAME), &target)
            .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
        sync_dir(&self.dir).map_err(|e| format!("cannot sync {}: {e}", self.dir.display()))?;
        let active = Active::new(&self.dir, number, file, 0)
            .map_err(|e| format!("cannot stat {}: {e}", target.display()))?;
        self.start();
        Ok(active)
    }

    /// Waits for a preparation under way (at shutdown, so no thread outlives the writer).
    pub fn finish(&mut self) {
        if let State::Running(handle) = std::mem::replace(&mut self.state, State::Idle) {
            let _ = handle.join();
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
        active.file.write_all_at(b"{\"seq\":2,\"time\":\"20", 4).unwrap();
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
}
