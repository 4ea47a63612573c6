//! [`Log`]: ordered segments and dense offsets, joining the segment set
//! ([`super::segments`]) and group commit ([`super::syncer`]).
//!
//! Locking: `inner` (a `RwLock`) guards the segments; appends hold it for
//! the write syscall only, reads share it. Lock order: `inner`, then the
//! group commit's locks (see [`super::syncer`]).
//!
//! Failure is final: after any write or sync error the log is failed until
//! reopened (Linux may drop the dirty pages of a failed fsync and report
//! success to the next one). Nothing unsynced becomes visible, every waiter
//! gets [`LogError::SyncFailed`], and close does not mark segments clean,
//! so the next open verifies every record.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use tokio::sync::watch;
use tracing::{error, info};

use super::error::{IoContext, LogError, Result};
use super::fs::{FileHandle, FileSystem};
use super::segment::{Segment, SegmentLimits};
use super::segments::{LogReader, SegmentSet};
use super::store::MAX_RECORD_LEN;
use super::syncer::{ActiveStore, GroupCommit, Syncing};
use super::{LogConfig, SyncPolicy};

pub use super::syncer::SyncStats;

/// Where a batch landed: its first offset and the offset after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record.
    pub first: u64,
    /// Offset the next record will get.
    pub next: u64,
}

/// One segment as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// First offset.
    pub base: u64,
    /// Offset after its last record.
    pub next: u64,
    /// Store bytes.
    pub bytes: u64,
    /// Last write to the store file.
    pub modified: Option<std::time::SystemTime>,
}

/// A segmented, durable, append-only log of byte records with dense offsets.
///
/// Cheap to share: every method takes `&self`. Records become visible to
/// readers only once durable under the configured [`SyncPolicy`].
#[derive(Debug)]
pub struct Log {
    shared: Arc<Shared>,
    syncer: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    config: LogConfig,
    inner: RwLock<Inner>,
    commit: GroupCommit,
}

#[derive(Debug)]
struct Inner {
    segments: SegmentSet,
    buf: Vec<u8>,
    closed: bool,
}

impl Log {
    /// Opens (creating if needed) the log in `dir` and recovers it.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        let dir = dir.as_ref().to_path_buf();
        let fs = Arc::clone(&config.fs);
        if !fs.exists(&dir) {
            fs.create_dir_all(&dir).at(&dir)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs.sync_dir(parent).at(parent)?;
            }
        }
        let segments = SegmentSet::open(&fs, &dir, config.limits(), config.initial_offset)?;
        let next = segments.next();
        info!(dir = %dir.display(), segments = segments.sealed().len() + 1,
            lowest = segments.lowest(), next, "log opened");
        let dir_for_commit = dir.clone();
        let shared = Arc::new(Shared {
            dir,
            fs,
            inner: RwLock::new(Inner {
                segments,
                buf: Vec::new(),
                closed: false,
            }),
            commit: GroupCommit::new(dir_for_commit, config.sync, config.max_unsynced_bytes, next)
                .observed_by(config.sync_observer.clone()),
            config,
        });
        let syncer = match shared.config.sync {
            SyncPolicy::Never => None,
            _ => Some(spawn_syncer(Arc::clone(&shared))?),
        };
        Ok(Log {
            shared,
            syncer: Mutex::new(syncer),
        })
    }

    /// The directory holding the segment files.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Appends one record and returns its offset. With [`SyncPolicy::Always`]
    /// it returns after the record is durable.
    pub fn append(&self, record: &[u8]) -> Result<u64> {
        self.append_batch(&[record])
    }

    /// Appends records contiguously and returns the offset of the first
    /// (the next offset if `records` is empty). A batch may span segments.
    /// With [`SyncPolicy::Always`] it returns once the records are durable.
    /// If an I/O error interrupts a batch, a prefix of it may have been
    /// written; the log then refuses writes until reopened.
    pub fn append_batch<R: AsRef<[u8]>>(&self, records: &[R]) -> Result<u64> {
        let shared = &*self.shared;
        shared.commit.wait_for_room(shared)?;
        let appended = self.append_batch_nowait(records)?;
        if shared.config.sync == SyncPolicy::Always {
            shared
                .commit
                .wait_synced(appended.next, shared, Syncing::Syncer)?;
        }
        Ok(appended.first)
    }

    /// Writes records without waiting for them to become durable; the
    /// syncer is told there is work. Await [`Log::wait_durable`] with the
    /// returned `next` to learn when they are. Does not block on the
    /// unsynced-bytes bound: callers that may run far ahead check
    /// [`Log::over_unsynced_bound`] first.
    pub fn append_batch_nowait<R: AsRef<[u8]>>(&self, records: &[R]) -> Result<Appended> {
        self.write_batch(records, Syncing::Syncer)
    }

    /// Writes records and leaves their sync to the caller: with
    /// [`SyncPolicy::Always`] the syncer thread is not woken, and the
    /// caller makes them durable with [`Log::sync_here`] (for a single
    /// writer thread that syncs what it wrote: no hand-off to the syncer).
    /// Neither blocks on the unsynced-bytes bound nor waits for a sync.
    pub fn append_batch_unsynced<R: AsRef<[u8]>>(&self, records: &[R]) -> Result<Appended> {
        self.write_batch(records, Syncing::Caller)
    }

    fn write_batch<R: AsRef<[u8]>>(&self, records: &[R], by: Syncing) -> Result<Appended> {
        for r in records {
            let size = r.as_ref().len() as u64;
            if size > MAX_RECORD_LEN {
                return Err(LogError::RecordTooLarge {
                    size,
                    max: MAX_RECORD_LEN,
                });
            }
        }
        let shared = &*self.shared;
        if records.is_empty() {
            let next = shared.commit.written_unless_failed()?;
            return Ok(Appended { first: next, next });
        }
        let (first, next, bytes) = {
            let mut inner = shared.write_inner()?;
            let next = inner.segments.next();
            if next.checked_add(records.len() as u64).is_none() {
                // Offsets are exhausted: nothing is written.
                return Err(LogError::OffsetOutOfRange { offset: u64::MAX });
            }
            match shared.write_records(&mut inner, records) {
                Ok(done) => done,
                Err(e) => {
                    shared.commit.fail(&e);
                    return Err(e);
                }
            }
        };
        shared.commit.written(next, bytes, by);
        Ok(Appended { first, next })
    }

    /// When more bytes are written but unsynced than the configured bound
    /// (where blocking appends would wait), the next offset written so far:
    /// async callers await [`Log::wait_durable`] on it before writing more.
    pub fn over_unsynced_bound(&self) -> Option<u64> {
        self.shared.commit.over_unsynced_bound()
    }

    /// Resolves once every offset below `next` is durable and visible, or
    /// fails once the log has failed (whatever was visible before). Under
    /// [`SyncPolicy::Interval`] that is the next interval sync; under
    /// `Never`, at once.
    pub async fn wait_durable(&self, next: u64) -> Result<()> {
        self.shared.commit.wait_durable(next).await
    }

    /// Makes every record written so far durable and visible, whatever the
    /// policy.
    pub fn sync(&self) -> Result<()> {
        self.shared
            .commit
            .sync_all_written(&*self.shared, Syncing::Syncer)
    }

    /// [`Log::sync`], with the fdatasync on this thread (unless a round
    /// already in flight covers everything written): the sync that follows
    /// [`Log::append_batch_unsynced`].
    pub fn sync_here(&self) -> Result<()> {
        self.shared
            .commit
            .sync_all_written(&*self.shared, Syncing::Caller)
    }

    /// Reads the record at `offset`. Offsets below the lowest retained one
    /// or not yet visible are [`LogError::OffsetOutOfRange`].
    pub fn read(&self, offset: u64) -> Result<Vec<u8>> {
        if offset >= self.shared.commit.visible() {
            return Err(LogError::OffsetOutOfRange { offset });
        }
        self.read_unsynced(offset)
    }

    /// Reads a record that is written but perhaps not yet durable. For a
    /// log whose reader tracks durability itself (Raft reads its own log
    /// this way); everyone else uses [`Log::read`].
    pub fn read_unsynced(&self, offset: u64) -> Result<Vec<u8>> {
        let inner = self.shared.read_inner()?;
        match inner.segments.find(offset) {
            Some(seg) => seg.read(offset),
            None => Err(LogError::OffsetOutOfRange { offset }),
        }
    }

    /// Group-commit counters since open.
    pub fn sync_stats(&self) -> SyncStats {
        self.shared.commit.stats()
    }

    /// Whether a write or sync failed: the log then refuses writes and
    /// makes nothing more visible until it is reopened and recovered.
    pub fn is_failed(&self) -> bool {
        self.shared.commit.is_failed()
    }

    /// The segments, oldest first: what retention decides on.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let inner = self.shared.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .segments
            .iter()
            .map(|s| SegmentInfo {
                base: s.base(),
                next: s.next_offset(),
                bytes: s.store_size(),
                modified: self.shared.fs.modified(s.store_file()),
            })
            .collect()
    }

    /// Offset of the oldest retained record (the next offset if empty).
    pub fn lowest_offset(&self) -> u64 {
        let inner = self.shared.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.segments.lowest()
    }

    /// Offset of the newest visible record, or `None` if there is none.
    pub fn highest_offset(&self) -> Option<u64> {
        let next = self.next_offset();
        (next > self.lowest_offset()).then(|| next - 1)
    }

    /// Offset the next appended record will get (written, maybe not yet
    /// durable).
    pub fn written_offset(&self) -> u64 {
        self.shared.commit.written_offset()
    }

    /// Offset the next visible record will have: the visible high watermark.
    pub fn next_offset(&self) -> u64 {
        self.shared.commit.visible()
    }

    /// A receiver of the visible high watermark (next offset), updated as
    /// records become visible: consumers at the end of the log wait on it.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.commit.subscribe()
    }

    /// Removes whole segments whose records all lie below `lowest`; the
    /// active segment always stays. Returns the new lowest offset. Each
    /// removal is made durable before the next, so a crash leaves the
    /// segments contiguous.
    pub fn truncate_prefix(&self, lowest: u64) -> Result<u64> {
        let shared = &*self.shared;
        let mut inner = shared.write_inner()?;
        let result = (|| {
            while inner
                .segments
                .sealed()
                .first()
                .is_some_and(|s| s.next_offset() <= lowest)
            {
                if let Some(seg) = inner.segments.pop_oldest() {
                    seg.remove()?;
                    shared.sync_dir()?;
                }
            }
            Ok(inner.segments.lowest())
        })();
        shared.commit.fail_on_error(result)
    }

    /// Removes every record after `after` (Raft replaces conflicting tails
    /// this way); the next append gets `after + 1`. If `after` lies below
    /// the lowest retained record, the log becomes empty and starts at
    /// `after + 1`. Must not race appends; a sync round in flight is fenced
    /// (it publishes nothing). Whole segments go first, newest first, each
    /// removal made durable before the next step, so a crash leaves a
    /// contiguous prefix.
    pub fn truncate_suffix(&self, after: u64) -> Result<()> {
        let shared = &*self.shared;
        let mut inner = shared.write_inner()?;
        let Some(next) = after.checked_add(1) else {
            return Ok(());
        };
        if next >= inner.segments.next() {
            return Ok(());
        }
        let result = (|| {
            while inner.segments.active().base() > after {
                match inner.segments.pop_active() {
                    Some(removed) => {
                        removed.remove()?;
                        shared.sync_dir()?;
                        inner.segments.active_mut().unseal()?;
                    }
                    None => {
                        // Below the lowest record: start over, empty.
                        shared.replace_all(&mut inner, next)?;
                        return Ok(());
                    }
                }
            }
            inner.segments.active_mut().truncate_after(after)
        })();
        shared.commit.fail_on_error(result)?;
        drop(inner);
        shared.commit.truncated(next, false);
        Ok(())
    }

    /// Deletes every record and starts over, empty, at `initial_offset`
    /// (as after installing a snapshot). Must not race appends. The old
    /// segments are gone durably before the new one is created, so a crash
    /// in between leaves an empty log, never old and new records mixed.
    pub fn reset(&self, initial_offset: u64) -> Result<()> {
        let shared = &*self.shared;
        let mut inner = shared.write_inner()?;
        let result = shared.replace_all(&mut inner, initial_offset);
        shared.commit.fail_on_error(result)?;
        drop(inner);
        shared.commit.truncated(initial_offset, true);
        Ok(())
    }

    /// A reader over the raw store bytes of the sealed segments (all but
    /// the active one), oldest first, for snapshots. It holds its own file
    /// handles, so later truncation does not disturb it.
    pub fn reader(&self) -> Result<LogReader> {
        let inner = self.shared.read_inner()?;
        LogReader::new(&*self.shared.fs, inner.segments.sealed())
    }

    /// Syncs and seals the active segment and stops the background syncer.
    /// Later calls fail with [`LogError::Closed`]; closing twice is fine.
    /// A failed log is closed without marking anything clean (the next open
    /// verifies every record) and reports [`LogError::SyncFailed`].
    pub fn close(&self) -> Result<()> {
        if let Some(handle) = self.syncer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            self.shared.commit.stop();
            let _ = handle.join();
        }
        let shared = &*self.shared;
        let mut inner = shared.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.closed {
            return Ok(());
        }
        inner.closed = true;
        let io = shared.commit.lock_io();
        if shared.commit.is_failed() {
            drop(io);
            shared.commit.closed(inner.segments.next());
            return Err(LogError::SyncFailed);
        }
        let sealed = inner.segments.active_mut().seal();
        drop(io);
        match sealed {
            Ok(()) => {
                shared.commit.closed(inner.segments.next());
                Ok(())
            }
            Err(e) => {
                shared.commit.fail(&e);
                Err(e)
            }
        }
    }

    /// Closes the log and deletes its directory.
    pub fn remove(self) -> Result<()> {
        self.close()?;
        let dir = self.shared.dir.clone();
        self.shared.fs.remove_dir_all(&dir).at(&dir)
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            error!(dir = %self.shared.dir.display(), error = %e, "closing the log failed");
        }
    }
}

impl Shared {
    fn limits(&self) -> SegmentLimits {
        self.config.limits()
    }

    fn read_inner(&self) -> Result<RwLockReadGuard<'_, Inner>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if inner.closed {
            return Err(LogError::Closed);
        }
        Ok(inner)
    }

    fn write_inner(&self) -> Result<RwLockWriteGuard<'_, Inner>> {
        let inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.closed {
            return Err(LogError::Closed);
        }
        if self.commit.is_failed() {
            return Err(LogError::SyncFailed);
        }
        Ok(inner)
    }

    fn sync_dir(&self) -> Result<()> {
        self.fs.sync_dir(&self.dir).at(&self.dir)
    }

    /// Removes every segment (each removal durable) and creates an empty
    /// one at `base`.
    fn replace_all(&self, inner: &mut Inner, base: u64) -> Result<()> {
        // The new segment may reuse a name of an old one: free the names
        // first. Until the new one exists, the set holds a segment whose
        // files are gone; any error here fails the log.
        for seg in inner.segments.iter().rev() {
            seg.remove_files()?;
            self.sync_dir()?;
        }
        let fresh = Segment::create(&self.fs, &self.dir, base, self.limits())?;
        self.sync_dir()?;
        // The old segments' files are already removed: drop them.
        drop(inner.segments.replace_all(fresh));
        Ok(())
    }

    /// Writes records into the active segment, rolling to new segments as
    /// they fill. Returns (first offset, next offset, bytes written).
    fn write_records<R: AsRef<[u8]>>(
        &self,
        inner: &mut Inner,
        records: &[R],
    ) -> Result<(u64, u64, u64)> {
        let Inner { segments, buf, .. } = inner;
        let first = segments.next();
        let mut bytes = 0;
        let mut i = 0;
        while i < records.len() {
            let n = segments
                .active()
                .fit(records[i..].iter().map(|r| r.as_ref().len()));
            if n == 0 {
                let base = segments.next();
                {
                    // A round may be syncing this store: see the syncer.
                    let _io = self.commit.lock_io();
                    let sealed = segments.active_mut().seal();
                    if let Err(e) = sealed {
                        self.commit.fail(&e);
                        return Err(e);
                    }
                }
                let fresh = Segment::create(&self.fs, &self.dir, base, self.limits())?;
                self.sync_dir()?;
                segments.roll(fresh);
                continue;
            }
            segments.active_mut().append(&records[i..i + n], buf)?;
            bytes += buf.len() as u64;
            i += n;
        }
        Ok((first, segments.next(), bytes))
    }
}

impl ActiveStore for Shared {
    fn active_store(&self) -> (Arc<dyn FileHandle>, PathBuf) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let active = inner.segments.active();
        (active.sync_handle(), active.store_file().to_path_buf())
    }
}

/// Starts the thread that runs sync rounds (see [`GroupCommit::run`]).
fn spawn_syncer(shared: Arc<Shared>) -> Result<JoinHandle<()>> {
    let dir = shared.dir.clone();
    std::thread::Builder::new()
        .name("proglog-syncer".into())
        .spawn(move || shared.commit.run(&*shared))
        .at(&dir)
}
