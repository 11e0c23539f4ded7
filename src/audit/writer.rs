//! [`AuditLog`]: durable, hash-chained appends with group commit.
//!
//! A dedicated writer thread (blocking I/O) owns the segment files. Each batch it takes every
//! draft waiting in the queue, assigns `seq`/`prev`/`hash`, and for the whole batch does:
//! check the directory's identity (device, inode) against the one seen at open, open the
//! current segment by path, `pwrite` all lines at the last durable length, `fdatasync`,
//! close. Only then are the callers answered. Reopening by path for every batch means a
//! directory that was deleted or renamed away is noticed (the open fails), instead of an old
//! descriptor silently writing into an unlinked file.
//!
//! On a failed write or fsync every record of the batch gets [`AuditError::Unavailable`], the
//! file is truncated back to the last durable length (now if possible, otherwise at the next
//! batch before anything is written), and the chain state is not advanced: the next batch
//! tries again and continues from the last durable record. If the current segment vanished or
//! shrank while the directory is still in place (someone removed or truncated it), the writer
//! moves on to a fresh segment and the first record there is a chained maintenance record
//! saying so; `verify` will still report the damaged segment.
//!
//! Use from a session:
//!
//! ```text
//! let log = AuditLog::open(AuditOptions::new(dir, signing_key))?;   // once, at start
//! match log.append(draft).await {                                    // per statement
//!     Ok(_seq) => { /* durable: release the rows */ }
//!     Err(e) => { /* refuse with SQLSTATE e.sqlstate() == "58030" */ }
//! }
//! log.shutdown().await;                                              // at exit
//! ```
//!
//! Restart: the writer continues the newest segment, reading the last seq and hash from its
//! tail (or the previous segment's, if the newest is empty). A torn final line (not
//! newline-terminated, or the last line unparseable) is removed at open and a chained
//! maintenance record states how many bytes were removed at which offset of which segment.
//! The repair record is written over the torn bytes and the file then cut to its end, in one
//! write and one fsync, so a crash during repair leaves either the old state or a repeated
//! repair, never an unrecorded truncation.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tokio::sync::oneshot;

use super::observer::RecordObserver;
use super::record::{
    parse_line, seal, Checkpoint, CheckpointReason, LogLine, RecordContext, RecordDraft, GENESIS,
};
use super::segment::{list_segments, segment_name, segment_path};
use super::AuditError;

/// Options of [`AuditLog::open`].
pub struct AuditOptions {
    pub dir: PathBuf,
    pub signing_key: SigningKey,
    /// A segment is closed (rotated) once it reaches this size. Default 64 MiB.
    pub segment_max_bytes: u64,
    /// A periodic checkpoint after this many records. Default 1000.
    pub checkpoint_every: u64,
    /// A periodic checkpoint after this long when records were written since the last one.
    /// Default 10 s.
    pub checkpoint_interval: Duration,
    /// Told about each statement record once it is durable (alerts). Default none.
    pub observer: Option<Box<dyn RecordObserver>>,
}

impl AuditOptions {
    pub const DEFAULT_SEGMENT_MAX_BYTES: u64 = 64 * 1024 * 1024;
    pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;
    pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);

    /// Options with the defaults.
    pub fn new(dir: impl Into<PathBuf>, signing_key: SigningKey) -> Self {
        Self {
            dir: dir.into(),
            signing_key,
            segment_max_bytes: Self::DEFAULT_SEGMENT_MAX_BYTES,
            checkpoint_every: Self::DEFAULT_CHECKPOINT_EVERY,
            checkpoint_interval: Self::DEFAULT_CHECKPOINT_INTERVAL,
            observer: None,
        }
    }
}

/// Counters of the writer, e.g. for a benchmark printing fsyncs per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Records made durable (including maintenance records).
    pub records_written: u64,
    /// `fdatasync` calls on segment files (directory fsyncs not counted).
    pub fsyncs: u64,
    /// Successful batches (group commits).
    pub batches: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Batches or checkpoints that failed.
    pub failures: u64,
    /// Seq of the last durable record (0 when none).
    pub last_seq: u64,
}

#[derive(Default)]
struct Counters {
    records_written: AtomicU64,
    fsyncs: AtomicU64,
    batches: AtomicU64,
    checkpoints: AtomicU64,
    failures: AtomicU64,
    last_seq: AtomicU64,
}

type Reply = oneshot::Sender<Result<u64, AuditError>>;

/// A statement's draft and the session context it ran in.
type Entry = Box<(RecordDraft, RecordContext)>;

enum Msg {
    Append(Entry, Reply),
    Shutdown(oneshot::Sender<()>),
}

/// The audit log writer. Cheap to clone; all clones share one writer thread. When the last
/// clone is dropped the writer writes a `shutdown` checkpoint and stops.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Msg>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Largest number of drafts taken into one batch.
const MAX_BATCH: usize = 16 * 1024;

impl AuditLog {
    /// Opens (creating the directory if missing) and recovers the log, repairing a torn final
    /// line, and starts the writer thread. Blocking I/O: from async code call it before
    /// serving or inside `spawn_blocking`.
    pub fn open(opts: AuditOptions) -> Result<AuditLog, AuditError> {
        let dir = opts.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| {
            AuditError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        let lock = lock_dir(&dir)?;
        let dir_id = dir_identity(&dir)
            .map_err(|e| AuditError::Unavailable(format!("cannot stat {}: {e}", dir.display())))?;
        let counters = Arc::new(Counters::default());
        let mut writer = Writer {
            dir,
            dir_id,
            key: opts.signing_key,
            max_bytes: opts.segment_max_bytes.max(1),
            every: opts.checkpoint_every.max(1),
            interval: opts.checkpoint_interval,
            current: 1,
            durable_len: 0,
            dir_synced: false,
            last_seq: 0,
            last_hash: GENESIS.to_string(),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            pending_events: Vec::new(),
            counters: counters.clone(),
            lock: Some(lock),
            observer: opts.observer,
        };
        writer.recover()?;
        counters.last_seq.store(writer.last_seq, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("pgveil-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::Unavailable(format!("cannot start audit writer: {e}")))?;
        Ok(AuditLog {
            inner: Arc::new(Inner { tx, counters }),
        })
    }

    /// Appends a record without session context; resolves with its seq once it is durable
    /// (written and fsynced).
    pub async fn append(&self, draft: RecordDraft) -> Result<u64, AuditError> {
        self.append_in_context(draft, RecordContext::default())
            .await
    }

    /// Appends a record with the session context it ran in (`end_user`, `purpose`,
    /// `break_glass`); resolves with its seq once it is durable.
    pub async fn append_in_context(
        &self,
        draft: RecordDraft,
        context: RecordContext,
    ) -> Result<u64, AuditError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(Msg::Append(Box::new((draft, context)), reply))
            .map_err(|_| AuditError::Closed)?;
        answer.await.map_err(|_| AuditError::Closed)?
    }

    /// Processes everything queued before it, writes a final `shutdown` checkpoint and stops
    /// the writer. Later appends fail with [`AuditError::Closed`].
    pub async fn shutdown(&self) {
        let (reply, answer) = oneshot::channel();
        if self.inner.tx.send(Msg::Shutdown(reply)).is_ok() {
            let _ = answer.await;
        }
    }

    pub fn stats(&self) -> AuditStats {
        let c = &self.inner.counters;
        AuditStats {
            records_written: c.records_written.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            last_seq: c.last_seq.load(Ordering::Relaxed),
        }
    }
}

/// Name of the lock file in the audit directory (not a segment; ignored by verify).
pub const LOCK_FILE: &str = "writer.lock";

fn lock_dir(dir: &Path) -> Result<File, AuditError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| AuditError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AuditError::Unavailable(format!(
            "{} is in use by another audit writer",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(AuditError::Unavailable(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

fn dir_identity(dir: &Path) -> std::io::Result<(u64, u64)> {
    let m = std::fs::metadata(dir)?;
    if !m.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    Ok((m.dev(), m.ino()))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What the tail of a segment holds.
struct Tail {
    /// Length of the segment without its torn tail.
    good_len: u64,
    /// Size of the file.
    size: u64,
    /// The last valid line before the torn tail.
    last: Option<LogLine>,
}

/// Reads the end of a segment: at most the final unterminated fragment and one invalid
/// complete line before it count as torn; the line before must then be valid.
fn scan_tail(path: &Path) -> Result<Tail, AuditError> {
    let name = path.display();
    let file = File::open(path).map_err(|e| AuditError::Io(format!("cannot open {name}: {e}")))?;
    let size = file
        .metadata()
        .map_err(|e| AuditError::Io(format!("cannot stat {name}: {e}")))?
        .len();
    if size == 0 {
        return Ok(Tail {
            good_len: 0,
            size,
            last: None,
        });
    }
    let mut chunk: u64 = 64 * 1024;
    let (start, buf) = loop {
        let start = size.saturating_sub(chunk);
        let mut buf = vec![0u8; (size - start) as usize];
        file.read_exact_at(&mut buf, start)
            .map_err(|e| AuditError::Io(format!("cannot read {name}: {e}")))?;
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
        None => size,
    };
    Ok(Tail {
        good_len,
        size,
        last,
    })
}

struct Writer {
    dir: PathBuf,
    dir_id: (u64, u64),
    key: SigningKey,
    max_bytes: u64,
    every: u64,
    interval: Duration,
    /// Number of the segment being written.
    current: u64,
    /// Length of the current segment up to its last durable line.
    durable_len: u64,
    /// Whether the current segment's directory entry is known durable.
    dir_synced: bool,
    last_seq: u64,
    last_hash: String,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    /// Maintenance events to be written, as chained records, with the next write.
    pending_events: Vec<String>,
    counters: Arc<Counters>,
    /// Held (flock) while the writer runs, so two processes never append to one log.
    lock: Option<File>,
    observer: Option<Box<dyn RecordObserver>>,
}

/// Whether a line is a `rotate` checkpoint.
fn is_rotate(line: &Option<LogLine>) -> bool {
    matches!(line, Some(LogLine::Checkpoint(c)) if c.reason == CheckpointReason::Rotate)
}

impl Writer {
    fn path(&self, n: u64) -> PathBuf {
        segment_path(&self.dir, n)
    }

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

    /// Restores the chain head after a restart and repairs a torn final line.
    fn recover(&mut self) -> Result<(), AuditError> {
        let segs = list_segments(&self.dir)?;
        let Some(&(newest, _)) = segs.last() else {
            return Ok(());
        };
        // The newest segment with content.
        let mut sizes = Vec::with_capacity(segs.len());
        for (_, p) in &segs {
            let len = std::fs::metadata(p)
                .map_err(|e| AuditError::Io(format!("cannot stat {}: {e}", p.display())))?
                .len();
            sizes.push(len);
        }
        let Some(li) = sizes.iter().rposition(|&s| s > 0) else {
            self.current = newest;
            return Ok(());
        };
        let (l_num, l_path) = segs[li].clone();
        let tail = scan_tail(&l_path)?;
        let mut last_is_rotate = is_rotate(&tail.last);
        if let Some(line) = &tail.last {
            self.set_head_from(line);
        } else {
            // Nothing valid in this segment: the head is at the end of an earlier one.
            for (_, p) in segs[..li].iter().rev() {
                let t = scan_tail(p)?;
                if t.good_len != t.size {
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
        let mut l_len = tail.size;
        if tail.good_len < tail.size {
            let removed = tail.size - tail.good_len;
            let description = format!(
                "repair removed torn final line: {removed} bytes at offset {} of {}",
                tail.good_len,
                segment_name(l_num)
            );
            let sealed = seal(
                &RecordDraft::maintenance(&description),
                &RecordContext::default(),
                self.last_seq + 1,
                &self.last_hash,
            )
            .map_err(AuditError::Corrupt)?;
            let unavailable = |e: std::io::Error| {
                AuditError::Unavailable(format!("cannot repair {}: {e}", l_path.display()))
            };
            let file = OpenOptions::new()
                .write(true)
                .open(&l_path)
                .map_err(unavailable)?;
            file.write_all_at(sealed.line.as_bytes(), tail.good_len)
                .map_err(unavailable)?;
            l_len = tail.good_len + sealed.line.len() as u64;
            file.set_len(l_len).map_err(unavailable)?;
            file.sync_data().map_err(unavailable)?;
            tracing::warn!(segment = %segment_name(l_num), removed, "audit log: repaired torn final line");
            self.count_fsync();
            self.counters
                .records_written
                .fetch_add(1, Ordering::Relaxed);
            self.last_seq += 1;
            self.last_hash = sealed.hash;
            self.since_checkpoint += 1;
            last_is_rotate = false;
        }
        if newest > l_num {
            // Empty successor(s) exist: the rotation was interrupted before its checkpoint.
            self.current = l_num;
            self.durable_len = l_len;
            self.dir_synced = true;
            if !last_is_rotate {
                self.commit(&[], Some(CheckpointReason::Rotate))
                    .map_err(AuditError::Unavailable)?;
            }
            self.current = newest;
            self.durable_len = 0;
            self.dir_synced = false;
        } else if last_is_rotate {
            self.current = l_num + 1;
            self.durable_len = 0;
            self.dir_synced = false;
        } else {
            self.current = l_num;
            self.durable_len = l_len;
            self.dir_synced = true;
        }
        Ok(())
    }

    fn count_fsync(&self) {
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
    }

    fn check_dir(&self) -> Result<(), String> {
        match dir_identity(&self.dir) {
            Ok(id) if id == self.dir_id => Ok(()),
            Ok(_) => Err(format!(
                "{} is no longer the directory opened at start (replaced or moved)",
                self.dir.display()
            )),
            Err(e) => Err(format!("{}: {e}", self.dir.display())),
        }
    }

    /// Opens the current segment by path, checked against what we know is durable in it.
    fn open_current(&mut self) -> Result<File, String> {
        self.check_dir()?;
        let path = self.path(self.current);
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(self.durable_len == 0)
            .open(&path);
        let file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.durable_len > 0 => {
                self.check_dir()?;
                return self.segment_lost("was removed".into());
            }
            Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
        };
        let len = file
            .metadata()
            .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
            .len();
        if len < self.durable_len {
            return self.segment_lost(format!("shrank from {} to {len} bytes", self.durable_len));
        }
        if len > self.durable_len {
            // Leftover of a failed write (or foreign bytes): not part of the chain.
            file.set_len(self.durable_len)
                .map_err(|e| format!("cannot truncate {}: {e}", path.display()))?;
        }
        if !self.dir_synced {
            sync_dir(&self.dir).map_err(|e| format!("cannot sync {}: {e}", self.dir.display()))?;
            self.dir_synced = true;
        }
        Ok(file)
    }

    /// The current segment vanished or shrank under us: continue in a fresh segment, with a
    /// maintenance record saying so.
    fn segment_lost(&mut self, what: String) -> Result<File, String> {
        let old = self.current;
        let next = self.current + 1;
        tracing::error!(segment = %segment_name(old), "audit log segment {what} outside pgveil");
        self.pending_events.push(format!(
            "segment-lost {} {what} outside pgveil; the chain continues in {}",
            segment_name(old),
            segment_name(next)
        ));
        self.current = next;
        self.durable_len = 0;
        self.dir_synced = false;
        self.open_current()
    }

    /// Writes pending events, `drafts` and an optional checkpoint with one write and one
    /// fsync. Returns the seq of each draft. On failure nothing of it stays in the chain.
    fn commit(
        &mut self,
        drafts: &[Entry],
        checkpoint: Option<CheckpointReason>,
    ) -> Result<Vec<u64>, String> {
        let file = self.open_current()?;
        let mut buf = String::new();
        let mut seq = self.last_seq;
        let mut head = self.last_hash.clone();
        let events: Vec<(RecordDraft, RecordContext)> = self
            .pending_events
            .iter()
            .map(|e| (RecordDraft::maintenance(e), RecordContext::default()))
            .collect();
        let mut seqs = Vec::with_capacity(drafts.len());
        for (i, (draft, context)) in events.iter().chain(drafts.iter().map(|d| &**d)).enumerate() {
            seq += 1;
            let sealed = seal(draft, context, seq, &head)?;
            buf.push_str(&sealed.line);
            head = sealed.hash;
            if i >= events.len() {
                seqs.push(seq);
            }
        }
        let records = seq - self.last_seq;
        let since = self.since_checkpoint + records;
        let reason = checkpoint.or_else(|| {
            (since > 0 && (since >= self.every || self.last_checkpoint.elapsed() >= self.interval))
                .then_some(CheckpointReason::Periodic)
        });
        if let Some(reason) = reason {
            if seq > 0 {
                let cp = Checkpoint::sign(seq, &head, self.current, reason, &self.key);
                buf.push_str(&cp.to_line()?);
            }
        }
        let path = self.path(self.current);
        let result = file
            .write_all_at(buf.as_bytes(), self.durable_len)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
            .and_then(|()| {
                self.count_fsync();
                file.sync_data()
                    .map_err(|e| format!("cannot fsync {}: {e}", path.display()))
            });
        if let Err(e) = result {
            // Best effort now; otherwise open_current truncates before the next write.
            if file.set_len(self.durable_len).is_ok() {
                let _ = file.sync_data();
            }
            return Err(e);
        }
        self.durable_len += buf.len() as u64;
        self.last_seq = seq;
        self.last_hash = head;
        self.pending_events.clear();
        self.counters
            .records_written
            .fetch_add(records, Ordering::Relaxed);
        self.counters.last_seq.store(seq, Ordering::Relaxed);
        if reason.is_some() && seq > 0 {
            self.since_checkpoint = 0;
            self.last_checkpoint = Instant::now();
            self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        } else {
            self.since_checkpoint = since;
        }
        Ok(seqs)
    }

    /// Closes the current segment with a `rotate` checkpoint after creating the next one, so
    /// that a crash in between never leaves a `rotate` without its successor.
    fn rotate(&mut self) -> Result<(), String> {
        // Handles a vanished or shrunk segment first; a fresh segment needs no rotation.
        drop(self.open_current()?);
        if !self.needs_rotation() {
            return Ok(());
        }
        let before = self.current;
        let next_path = self.path(before + 1);
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&next_path)
            .map_err(|e| format!("cannot create {}: {e}", next_path.display()))?;
        sync_dir(&self.dir).map_err(|e| format!("cannot sync {}: {e}", self.dir.display()))?;
        self.commit(&[], Some(CheckpointReason::Rotate))?;
        // Normally `closed == before`; if the segment vanished during the commit, the
        // checkpoint went to the fresh segment, whose successor is created on the next write.
        let closed = self.current;
        self.current = closed + 1;
        self.durable_len = 0;
        self.dir_synced = closed == before;
        Ok(())
    }

    fn needs_rotation(&self) -> bool {
        self.durable_len >= self.max_bytes
    }

    fn write_batch(&mut self, batch: Vec<(Entry, Reply)>) {
        let (drafts, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let result = if self.needs_rotation() {
            self.rotate().and_then(|()| self.commit(&drafts, None))
        } else {
            self.commit(&drafts, None)
        };
        match result {
            Ok(seqs) => {
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                for (reply, seq) in replies.into_iter().zip(&seqs) {
                    let _ = reply.send(Ok(*seq));
                }
                // After the answers: the observer never delays a release.
                if let Some(observer) = &self.observer {
                    for (entry, seq) in drafts.iter().zip(seqs) {
                        observer.durable(seq, &entry.0, &entry.1);
                    }
                }
            }
            Err(e) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, records = replies.len(), "audit log write failed");
                for reply in replies {
                    let _ = reply.send(Err(AuditError::Unavailable(e.clone())));
                }
            }
        }
        if self.needs_rotation() {
            if let Err(e) = self.rotate() {
                tracing::error!(error = %e, "audit log rotation failed; retrying with the next batch");
            }
        }
    }

    fn checkpoint(&mut self, reason: CheckpointReason) {
        if self.last_seq == 0 {
            return;
        }
        if let Err(e) = self.commit(&[], Some(reason)) {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, reason = reason.as_str(), "audit checkpoint failed");
            // Try again after another interval.
            self.last_checkpoint = Instant::now();
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            let first = if self.since_checkpoint > 0 {
                let wait = self.interval.saturating_sub(self.last_checkpoint.elapsed());
                match rx.recv_timeout(wait) {
                    Ok(m) => m,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.checkpoint(CheckpointReason::Periodic);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                }
            };
            let mut batch = Vec::new();
            let mut shutdown = None;
            match first {
                Msg::Append(d, r) => batch.push((d, r)),
                Msg::Shutdown(r) => shutdown = Some(r),
            }
            while shutdown.is_none() && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Msg::Append(d, r)) => batch.push((d, r)),
                    Ok(Msg::Shutdown(r)) => shutdown = Some(r),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.write_batch(batch);
            }
            if let Some(reply) = shutdown {
                self.checkpoint(CheckpointReason::Shutdown);
                // Release the lock before answering, so a new writer can open at once.
                drop(self.lock.take());
                let _ = reply.send(());
                return;
            }
        }
        // Every handle was dropped without shutdown().
        self.checkpoint(CheckpointReason::Shutdown);
    }
}
