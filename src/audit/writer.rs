//! [`AuditLog`]: durable, hash-chained appends with group commit.
//!
//! The writer's state (the open segment, the chain head) sits behind one lock, taken for
//! each commit. An append that finds the writer idle (nothing queued, the lock free) commits
//! on its own thread; otherwise it is queued for the writer thread, which takes every draft
//! waiting in the queue as one batch (those that arrived while the previous commit was being
//! synced: group commit). Committing on the caller's thread saves two thread wake-ups per
//! record at low concurrency; under load the queue batches. A commit on the caller's thread
//! that was slow (a stalling disk) sends appends through the writer thread for a while, so a
//! slow disk never holds up the other sessions of a thread (see `Inner::commit_here`).
//!
//! Every commit, on either thread, does: check the directory's identity (device, inode)
//! against the one seen at open and that the segment's path still names the open file (two
//! `stat` calls, see `active`), assign `seq`/`prev`/`hash`, `pwrite` all lines at the last
//! durable length over preallocated zeros, one data-only `fdatasync`. Only then are the
//! callers answered. The directory check means a directory that was deleted or renamed away
//! is noticed, instead of the open descriptor silently writing into an unlinked file.
//!
//! On a failed write or fsync every record of the batch gets [`AuditError::Unavailable`], the
//! bytes written are zeroed again (now if possible, otherwise by the next batch's write), and
//! the chain state is not advanced: the next batch tries again and continues from the last
//! durable record. If the current segment vanished or shrank while the directory is still in
//! place (someone removed or truncated it), the writer moves on to a fresh segment and the
//! first record there is a chained maintenance record saying so; `verify` will still report
//! the damaged segment.
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
//! Restart (`recover`): the writer continues the newest segment, reading the last seq and
//! hash from the end of its content, and removes a torn tail left by a crash with a chained
//! maintenance record. Shutdown writes a `shutdown` checkpoint and cuts the open segment to
//! its content.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tokio::sync::oneshot;

use super::active::{sync_dir, Active, Check, Successor};
use super::observer::RecordObserver;
use super::record::{seal, Checkpoint, CheckpointReason, RecordContext, RecordDraft, GENESIS};
use super::segment::{segment_name, segment_path};
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
    /// A commit on a session's thread that takes longer than this (a slow or stalling disk)
    /// sends every append through the writer thread for [`DIRECT_COMMIT_PAUSE`], so that a
    /// slow disk never holds up the other sessions of that thread for long. Default 20 ms (a
    /// stall, not the occasional slow `fdatasync` of a busy disk).
    pub direct_commit_limit: Duration,
}

impl AuditOptions {
    pub const DEFAULT_SEGMENT_MAX_BYTES: u64 = 64 * 1024 * 1024;
    pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;
    pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);
    pub const DEFAULT_DIRECT_COMMIT_LIMIT: Duration = Duration::from_millis(20);

    /// Options with the defaults.
    pub fn new(dir: impl Into<PathBuf>, signing_key: SigningKey) -> Self {
        Self {
            dir: dir.into(),
            signing_key,
            segment_max_bytes: Self::DEFAULT_SEGMENT_MAX_BYTES,
            checkpoint_every: Self::DEFAULT_CHECKPOINT_EVERY,
            checkpoint_interval: Self::DEFAULT_CHECKPOINT_INTERVAL,
            observer: None,
            direct_commit_limit: Self::DEFAULT_DIRECT_COMMIT_LIMIT,
        }
    }
}

/// How long appends go through the writer thread after a slow commit on a session's thread.
pub const DIRECT_COMMIT_PAUSE: Duration = Duration::from_secs(10);

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
    /// Appends committed on the caller's thread (the writer was idle), not by the writer
    /// thread.
    pub direct_commits: u64,
}

#[derive(Default)]
struct Counters {
    records_written: AtomicU64,
    fsyncs: AtomicU64,
    batches: AtomicU64,
    checkpoints: AtomicU64,
    failures: AtomicU64,
    last_seq: AtomicU64,
    direct_commits: AtomicU64,
}

type Reply = oneshot::Sender<Result<u64, AuditError>>;

/// A statement's draft and the session context it ran in.
type Entry = Box<(RecordDraft, RecordContext)>;

enum Msg {
    Append(Entry, Reply),
    /// Rotate if due (after a commit on a session's thread filled the segment).
    Tend,
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
    /// The writer's state. The writer thread locks it for each batch; an append that finds it
    /// free with nothing queued commits on its own thread (see [`AuditLog::append_in_context`]).
    writer: Arc<Mutex<Writer>>,
    /// Appends sent to the writer thread and not yet taken by it.
    queued: Arc<AtomicUsize>,
    /// See [`AuditOptions::direct_commit_limit`].
    direct_limit: Duration,
    /// Direct commits resume at `epoch` + this many nanoseconds (after a slow one).
    direct_paused_until: AtomicU64,
    epoch: Instant,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Inner {
    /// Commits `entry` on the calling thread when the writer is idle: nothing queued for the
    /// writer thread and its state not locked by a batch. At low concurrency this saves the
    /// two thread hand-offs of the queue (to the writer thread, and back to the session's
    /// thread), each a wake-up that on a small VM can cost as much as a fast `fdatasync`.
    ///
    /// The calling thread blocks for one write and `fdatasync`. On a multi-thread runtime
    /// that happens inside `block_in_place` (the runtime moves its other tasks away); on a
    /// session's current-thread runtime the other sessions of that thread wait for it, which
    /// is why a slow commit (see [`AuditOptions::direct_commit_limit`]) pauses direct commits.
    /// Otherwise (busy, or paused) the entry is given back for the writer thread, which takes
    /// everything queued as one batch (group commit). Durability is the same either way.
    fn commit_here(&self, entry: Entry) -> Result<Result<u64, AuditError>, Entry> {
        if self.queued.load(Ordering::SeqCst) != 0 || self.direct_paused() {
            return Err(entry);
        }
        let mut writer = match self.writer.try_lock() {
            Ok(writer) => writer,
            Err(TryLockError::WouldBlock) => return Err(entry),
            Err(TryLockError::Poisoned(_)) => return Ok(Err(poisoned())),
        };
        if writer.closed {
            return Ok(Err(AuditError::Closed));
        }
        let started = Instant::now();
        let mut work = move || {
            let result = writer.commit_batch(std::slice::from_ref(&entry));
            if let Ok(seqs) = &result {
                writer.observe(std::slice::from_ref(&entry), seqs);
            }
            (result, writer.needs_rotation())
        };
        let (result, rotate) = if on_multi_thread_runtime() {
            tokio::task::block_in_place(work)
        } else {
            work()
        };
        self.counters.direct_commits.fetch_add(1, Ordering::Relaxed);
        if started.elapsed() > self.direct_limit {
            self.pause_direct(started.elapsed());
        }
        if rotate {
            // Rotating takes a checkpoint and an fsync: the writer thread does it, off this
            // statement's path.
            let _ = self.tx.send(Msg::Tend);
        }
        Ok(result.and_then(|seqs| {
            seqs.first()
                .copied()
                .ok_or_else(|| AuditError::Unavailable("no seq assigned".into()))
        }))
    }

    fn direct_paused(&self) -> bool {
        let until = self.direct_paused_until.load(Ordering::Relaxed);
        until != 0 && self.nanos_since_epoch() < until
    }

    fn pause_direct(&self, took: Duration) {
        let until = self.nanos_since_epoch() + duration_nanos(DIRECT_COMMIT_PAUSE);
        if !self.direct_paused() {
            tracing::warn!(
                took_us = took.as_micros() as u64,
                limit_us = self.direct_limit.as_micros() as u64,
                pause_s = DIRECT_COMMIT_PAUSE.as_secs(),
                "audit commit was slow; records go through the writer thread for a while"
            );
        }
        self.direct_paused_until.store(until, Ordering::Relaxed);
    }

    fn nanos_since_epoch(&self) -> u64 {
        duration_nanos(self.epoch.elapsed())
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

fn poisoned() -> AuditError {
    AuditError::Unavailable("the audit writer stopped after an internal error".into())
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
        let direct_limit = opts.direct_commit_limit;
        let max_bytes = opts.segment_max_bytes.max(1);
        let successor = Successor::new(&dir, max_bytes);
        let mut writer = Writer {
            dir,
            dir_id,
            key: opts.signing_key,
            max_bytes,
            every: opts.checkpoint_every.max(1),
            interval: opts.checkpoint_interval,
            current: 1,
            active: None,
            installed: None,
            successor,
            last_seq: 0,
            last_hash: GENESIS.to_string(),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            pending_events: Vec::new(),
            counters: counters.clone(),
            lock: Some(lock),
            observer: opts.observer,
            closed: false,
        };
        writer.recover()?;
        writer.successor.start();
        counters.last_seq.store(writer.last_seq, Ordering::Relaxed);
        let writer = Arc::new(Mutex::new(writer));
        let queued = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let (thread_writer, thread_queued) = (Arc::clone(&writer), Arc::clone(&queued));
        std::thread::Builder::new()
            .name("pgveil-audit".into())
            .spawn(move || run(&thread_writer, &thread_queued, &rx))
            .map_err(|e| AuditError::Unavailable(format!("cannot start audit writer: {e}")))?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                tx,
                counters,
                writer,
                queued,
                direct_limit,
                direct_paused_until: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
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
        let entry = match self.inner.commit_here(Box::new((draft, context))) {
            Ok(result) => return result,
            Err(entry) => entry,
        };
        let (reply, answer) = oneshot::channel();
        self.inner.queued.fetch_add(1, Ordering::SeqCst);
        if self.inner.tx.send(Msg::Append(entry, reply)).is_err() {
            self.inner.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(AuditError::Closed);
        }
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
            direct_commits: c.direct_commits.load(Ordering::Relaxed),
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

struct Writer {
    dir: PathBuf,
    dir_id: (u64, u64),
    key: SigningKey,
    max_bytes: u64,
    every: u64,
    interval: Duration,
    /// Number of the segment being written (created by the next write when `active` is
    /// `None`).
    current: u64,
    /// Segment `current`, open.
    active: Option<Active>,
    /// The next segment, renamed into place for a rotation whose checkpoint is not durable
    /// yet.
    installed: Option<Active>,
    /// Prepares the segment after `current` in the background.
    successor: Successor,
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
    /// Set at shutdown: later appends fail with [`AuditError::Closed`].
    closed: bool,
}

mod recover;

impl Writer {
    fn path(&self, n: u64) -> PathBuf {
        segment_path(&self.dir, n)
    }

    fn durable_len(&self) -> u64 {
        self.active.as_ref().map_or(0, |a| a.durable_len)
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

    /// Makes sure segment `current` is open and still in place; a segment removed, replaced
    /// or truncated under the writer (the directory still being the one opened at start) is
    /// left for a fresh one.
    fn ensure_active(&mut self) -> Result<(), String> {
        loop {
            self.check_dir()?;
            let Some(active) = &self.active else {
                let active = self.open_or_create(self.current)?;
                self.active = Some(active);
                return Ok(());
            };
            match active.check() {
                Check::Ok => return Ok(()),
                Check::Failed(e) => return Err(e),
                Check::Lost(what) => {
                    // A directory moved away between the two checks is not a lost segment.
                    self.check_dir()?;
                    self.segment_lost(what);
                }
            }
        }
    }

    /// Segment `n` for writing: the one installed for a rotation, an existing file (left by
    /// an interrupted rotation, or by someone else: what it holds is not part of the chain and
    /// is cut), or a freshly prepared one.
    fn open_or_create(&mut self, n: u64) -> Result<Active, String> {
        if let Some(active) = self.installed.take_if(|a| a.number == n) {
            return Ok(active);
        }
        let path = self.path(n);
        if std::fs::symlink_metadata(&path).is_err() {
            return self.successor.install(n);
        }
        let cut = OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(0).and_then(|()| f.sync_all()));
        cut.map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        sync_dir(&self.dir).map_err(|e| format!("cannot sync {}: {e}", self.dir.display()))?;
        Active::open(&self.dir, n, 0, self.max_bytes)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))
    }

    /// The current segment vanished or shrank under us: continue in a fresh segment, with a
    /// maintenance record saying so.
    fn segment_lost(&mut self, what: String) {
        let old = self.current;
        let next = self.current + 1;
        tracing::error!(segment = %segment_name(old), "audit log segment {what} outside pgveil");
        self.pending_events.push(format!(
            "segment-lost {} {what} outside pgveil; the chain continues in {}",
            segment_name(old),
            segment_name(next)
        ));
        self.active = None;
        self.current = next;
    }

    /// Writes pending events, `drafts` and an optional checkpoint with one write and one
    /// fsync. Returns the seq of each draft. On failure nothing of it stays in the chain.
    fn commit(
        &mut self,
        drafts: &[Entry],
        checkpoint: Option<CheckpointReason>,
    ) -> Result<Vec<u64>, String> {
        self.ensure_active()?;
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
        let Some(active) = self.active.as_mut() else {
            return Err("no open segment".into());
        };
        let (result, fsyncs) = match active.write_durably(buf.as_bytes()) {
            Ok(n) => (Ok(()), n),
            Err((e, n)) => (Err(e), n),
        };
        self.counters.fsyncs.fetch_add(fsyncs, Ordering::Relaxed);
        result?;
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
    /// that a crash in between never leaves a `rotate` without its successor; then cuts the
    /// closed segment to its content.
    fn rotate(&mut self) -> Result<(), String> {
        // Handles a vanished or shrunk segment first; a fresh segment needs no rotation.
        self.ensure_active()?;
        if !self.needs_rotation() {
            return Ok(());
        }
        let next = self.current + 1;
        if self.installed.as_ref().map(|a| a.number) != Some(next) {
            self.installed = Some(self.successor.install(next)?);
        }
        self.commit(&[], Some(CheckpointReason::Rotate))?;
        // Normally `closed == next - 1`; if the segment vanished during the commit, the
        // checkpoint went to the installed segment, whose successor is created on the next
        // write.
        let closed = self.current;
        if let Some(active) = self.active.take() {
            active.close();
        }
        self.current = closed + 1;
        Ok(())
    }

    fn needs_rotation(&self) -> bool {
        self.durable_len() >= self.max_bytes
    }

    /// At shutdown: cuts the current segment to its content and stops the background work.
    fn close(&mut self) {
        if let Some(active) = self.active.take() {
            active.close();
        }
        self.installed = None;
        self.successor.finish();
    }

    /// Commits `drafts` as one batch, rotating first when the segment is full; a failure is
    /// counted and logged, and nothing of the batch stays in the chain.
    fn commit_batch(&mut self, drafts: &[Entry]) -> Result<Vec<u64>, AuditError> {
        let result = if self.needs_rotation() {
            self.rotate().and_then(|()| self.commit(drafts, None))
        } else {
            self.commit(drafts, None)
        };
        match result {
            Ok(seqs) => {
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                Ok(seqs)
            }
            Err(e) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, records = drafts.len(), "audit log write failed");
                Err(AuditError::Unavailable(e))
            }
        }
    }

    /// Tells the observer about durable records; called after the appenders were answered
    /// (on the writer thread), so the observer never delays a release.
    fn observe(&self, drafts: &[Entry], seqs: &[u64]) {
        if let Some(observer) = &self.observer {
            for (entry, seq) in drafts.iter().zip(seqs) {
                observer.durable(*seq, &entry.0, &entry.1);
            }
        }
    }

    /// Rotates when the segment is full, so the next batch need not.
    fn tend(&mut self) {
        if self.needs_rotation() {
            if let Err(e) = self.rotate() {
                tracing::error!(error = %e, "audit log rotation failed; retrying with the next batch");
            }
        }
    }

    fn write_batch(&mut self, batch: Vec<(Entry, Reply)>) {
        let (drafts, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        match self.commit_batch(&drafts) {
            Ok(seqs) => {
                for (reply, seq) in replies.into_iter().zip(&seqs) {
                    let _ = reply.send(Ok(*seq));
                }
                self.observe(&drafts, &seqs);
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        self.tend();
    }

    /// How long the writer thread may sleep before a periodic checkpoint is due (`None`:
    /// nothing written since the last one).
    fn checkpoint_wait(&self) -> Option<Duration> {
        (self.since_checkpoint > 0)
            .then(|| self.interval.saturating_sub(self.last_checkpoint.elapsed()))
    }

    /// At shutdown (or when every handle was dropped): the final checkpoint, the segment cut
    /// to its content, the directory lock released, later appends refused.
    fn shut_down(&mut self) {
        if self.closed {
            return;
        }
        self.checkpoint(CheckpointReason::Shutdown);
        self.close();
        self.closed = true;
        // Released before anyone is answered, so a new writer can open at once.
        drop(self.lock.take());
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
}

/// What the writer thread took from the queue for one round.
#[derive(Default)]
struct Taken {
    batch: Vec<(Entry, Reply)>,
    tend: bool,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Taken {
    fn take(&mut self, m: Msg, queued: &AtomicUsize) {
        match m {
            Msg::Append(d, r) => {
                queued.fetch_sub(1, Ordering::SeqCst);
                self.batch.push((d, r));
            }
            Msg::Tend => self.tend = true,
            Msg::Shutdown(r) => self.shutdown = Some(r),
        }
    }
}

/// The writer thread: takes everything queued as one batch, writes periodic checkpoints when
/// idle, and shuts the writer down on request or when every handle is gone.
fn run(shared: &Mutex<Writer>, queued: &AtomicUsize, rx: &mpsc::Receiver<Msg>) {
    let lock = || shared.lock().ok();
    loop {
        let Some(wait) = lock().map(|w| w.checkpoint_wait()) else {
            return;
        };
        let first = match wait {
            Some(wait) => match rx.recv_timeout(wait) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Appends committed on sessions' threads may have checkpointed meanwhile.
                    let Some(mut writer) = lock() else { return };
                    if writer.checkpoint_wait().is_some_and(|w| w.is_zero()) {
                        writer.checkpoint(CheckpointReason::Periodic);
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
            None => match rx.recv() {
                Ok(m) => m,
                Err(_) => break,
            },
        };
        // Locked before the queue is drained: what arrives while a session commits on its
        // own thread joins this batch.
        let Some(mut writer) = lock() else { return };
        let mut taken = Taken::default();
        taken.take(first, queued);
        while taken.shutdown.is_none() && taken.batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => taken.take(m, queued),
                Err(_) => break,
            }
        }
        let Taken {
            batch,
            tend,
            shutdown,
        } = taken;
        if !batch.is_empty() {
            writer.write_batch(batch);
        } else if tend {
            writer.tend();
        }
        if let Some(reply) = shutdown {
            writer.shut_down();
            drop(writer);
            let _ = reply.send(());
            return;
        }
    }
    // Every handle was dropped without shutdown().
    if let Some(mut writer) = lock() {
        writer.shut_down();
    }
}
