//! [`Log`]: ordered segments, dense offsets, group commit, recovery.
//!
//! Locking: `inner` (a `RwLock`) guards the segments; appends hold it for
//! the write syscall only, reads share it. `sync_io` serialises every sync
//! of a store that a sync round may also be syncing (rounds, and the seal
//! of a segment at roll), so that an fsync error one of them consumes is
//! recorded before the other can report success. `sync` (a `Mutex`) guards
//! the watermarks. Lock order: `inner`, then `sync_io`, then `sync`; a
//! round never asks for `inner` while holding `sync_io`, and nothing holds
//! `sync` while waiting on the `visible` watch.
//!
//! Group commit: with `Always`, a syncer thread runs sync rounds back to
//! back while writes are pending. A round covers everything reported
//! written when it starts; its fdatasync runs with no lock but `sync_io`
//! held, on a handle of the active store, while appenders keep writing for
//! the next round. Blocking appenders wait on the condvar of the round that
//! covers them (so a round wakes only those it made durable); async
//! appenders wait on the `visible` watch. Segments that roll over are
//! synced when sealed, so a sync of the active store covers everything
//! written before it.
//!
//! Failure is final: after any write or sync error the log is failed until
//! reopened (Linux may drop the dirty pages of a failed fsync and report
//! success to the next one). Nothing unsynced becomes visible, every waiter
//! gets [`LogError::SyncFailed`], and close does not mark segments clean,
//! so the next open verifies every record.
//!
//! Truncation fences sync rounds: it bumps an epoch, and a round that
//! started before it publishes nothing, since its target may name offsets
//! that now hold other, unsynced records.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use tokio::sync::watch;
use tracing::{error, info};

use super::error::{IoContext, LogError, Result};
use super::fs::FileSystem;
use super::segment::{Segment, SegmentLimits};
use super::segments::{LogReader, SegmentSet};
use super::store::MAX_RECORD_LEN;
use super::{LogConfig, SyncPolicy};

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
    /// Held across every sync of a store that a round may share.
    sync_io: Mutex<()>,
    sync: Mutex<SyncState>,
    /// `round_done[r % 2]` is signalled when sync round `r` ends. Waiters
    /// wait on the condvar of the round that will cover them, so a round
    /// wakes only the appenders it made durable.
    round_done: [Condvar; 2],
    /// Wakes the syncer thread: there is work, or it must stop.
    work: Condvar,
    /// Next offset readers may not see yet (the visible high watermark).
    visible: watch::Sender<u64>,
    /// Mirror of `SyncState::failed` readable without the sync mutex (the
    /// async waiter checks it while holding the watch's lock, and the
    /// syncer publishes to the watch while holding the sync mutex).
    failed: AtomicBool,
}

#[derive(Debug)]
struct Inner {
    segments: SegmentSet,
    buf: Vec<u8>,
    closed: bool,
}

#[derive(Debug)]
struct SyncState {
    /// Next offset after the last written record.
    written: u64,
    /// Next offset after the last durable record.
    synced: u64,
    written_bytes: u64,
    synced_bytes: u64,
    syncing: bool,
    /// Rounds started since open; the in-flight one is this number.
    rounds: u64,
    /// What the in-flight round will make durable (next offset).
    round_target: u64,
    /// Bumped by every truncation; a round of an older epoch publishes
    /// nothing.
    epoch: u64,
    failed: bool,
    /// Tells the syncer thread to exit.
    stop: bool,
    stats: SyncStats,
}

/// Counters of the group commit, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// fdatasync calls made by appenders or the interval syncer.
    pub syncs: u64,
    /// Time spent in those calls, in microseconds.
    pub sync_micros: u64,
    /// Threads blocked right now waiting for a sync round to cover them.
    pub waiting: u64,
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
        let shared = Arc::new(Shared {
            dir,
            fs,
            inner: RwLock::new(Inner {
                segments,
                buf: Vec::new(),
                closed: false,
            }),
            sync_io: Mutex::new(()),
            sync: Mutex::new(SyncState {
                written: next,
                synced: next,
                written_bytes: 0,
                synced_bytes: 0,
                syncing: false,
                rounds: 0,
                round_target: next,
                epoch: 0,
                failed: false,
                stop: false,
                stats: SyncStats::default(),
            }),
            round_done: [Condvar::new(), Condvar::new()],
            work: Condvar::new(),
            visible: watch::Sender::new(next),
            failed: AtomicBool::new(false),
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
        self.shared.wait_for_room()?;
        let appended = self.append_batch_nowait(records)?;
        if self.shared.config.sync == SyncPolicy::Always {
            self.shared.wait_synced(appended.next)?;
        }
        Ok(appended.first)
    }

    /// Writes records without waiting for them to become durable; the
    /// syncer is told there is work. Await [`Log::wait_durable`] with the
    /// returned `next` to learn when they are. Does not block on the
    /// unsynced-bytes bound: callers that may run far ahead check
    /// [`Log::over_unsynced_bound`] first.
    pub fn append_batch_nowait<R: AsRef<[u8]>>(&self, records: &[R]) -> Result<Appended> {
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
            let st = shared.lock_sync();
            if st.failed {
                return Err(LogError::SyncFailed);
            }
            return Ok(Appended {
                first: st.written,
                next: st.written,
            });
        }
        let (first, next, bytes) = {
            let mut inner = shared.write_inner()?;
            match shared.write_records(&mut inner, records) {
                Ok(done) => done,
                Err(e) => {
                    shared.fail(&mut shared.lock_sync(), &e);
                    return Err(e);
                }
            }
        };
        shared.written(next, bytes);
        Ok(Appended { first, next })
    }

    /// When more bytes are written but unsynced than the configured bound
    /// (where blocking appends would wait), the next offset written so far:
    /// async callers await [`Log::wait_durable`] on it before writing more.
    pub fn over_unsynced_bound(&self) -> Option<u64> {
        let st = self.shared.lock_sync();
        let unsynced = st.written_bytes.saturating_sub(st.synced_bytes);
        let over = self.shared.config.sync != SyncPolicy::Never
            && unsynced > self.shared.config.max_unsynced_bytes;
        over.then_some(st.written)
    }

    /// Resolves once every offset below `next` is durable and visible, or
    /// fails once the log has failed (whatever was visible before). Under
    /// [`SyncPolicy::Interval`] that is the next interval sync; under
    /// `Never`, at once.
    pub async fn wait_durable(&self, next: u64) -> Result<()> {
        let mut visible = self.shared.visible.subscribe();
        let failed = || self.shared.failed.load(Ordering::Acquire);
        let _ = visible.wait_for(|v| failed() || *v >= next).await;
        if failed() {
            Err(LogError::SyncFailed)
        } else if *visible.borrow() >= next {
            Ok(())
        } else {
            Err(LogError::Closed)
        }
    }

    /// Makes every record written so far durable and visible, whatever the
    /// policy.
    pub fn sync(&self) -> Result<()> {
        let shared = &*self.shared;
        let target = shared.lock_sync().written;
        shared.wait_synced(target)
    }

    /// Reads the record at `offset`. Offsets below the lowest retained one
    /// or not yet visible are [`LogError::OffsetOutOfRange`].
    pub fn read(&self, offset: u64) -> Result<Vec<u8>> {
        if offset >= *self.shared.visible.borrow() {
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
        self.shared.lock_sync().stats
    }

    /// Whether a write or sync failed: the log then refuses writes and
    /// makes nothing more visible until it is reopened and recovered.
    pub fn is_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
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
        self.shared.lock_sync().written
    }

    /// Offset the next visible record will have: the visible high watermark.
    pub fn next_offset(&self) -> u64 {
        *self.shared.visible.borrow()
    }

    /// A receiver of the visible high watermark (next offset), updated as
    /// records become visible: consumers at the end of the log wait on it.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.visible.subscribe()
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
        shared.fail_on_error(result)
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
        shared.fail_on_error(result)?;
        drop(inner);
        shared.truncated(next, false);
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
        shared.fail_on_error(result)?;
        drop(inner);
        shared.truncated(initial_offset, true);
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
            self.shared.lock_sync().stop = true;
            self.shared.work.notify_all();
            let _ = handle.join();
        }
        let shared = &*self.shared;
        let mut inner = shared.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.closed {
            return Ok(());
        }
        inner.closed = true;
        let io = shared.lock_io();
        if shared.lock_sync().failed {
            drop(io);
            shared.wake_all();
            return Err(LogError::SyncFailed);
        }
        let sealed = inner.segments.active_mut().seal();
        let mut st = shared.lock_sync();
        drop(io);
        match sealed {
            Ok(()) => {
                let next = inner.segments.next();
                st.synced = st.synced.max(next);
                shared.visible.send_replace(next);
                shared.round_done.iter().for_each(Condvar::notify_all);
                Ok(())
            }
            Err(e) => {
                shared.fail(&mut st, &e);
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
        if self.lock_sync().failed {
            return Err(LogError::SyncFailed);
        }
        Ok(inner)
    }

    fn lock_sync(&self) -> MutexGuard<'_, SyncState> {
        self.sync.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_io(&self) -> MutexGuard<'_, ()> {
        self.sync_io.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sync_dir(&self) -> Result<()> {
        self.fs.sync_dir(&self.dir).at(&self.dir)
    }

    /// Marks the log failed for good and wakes every waiter, blocking or
    /// async, so none waits for a round that will never come.
    fn fail(&self, st: &mut SyncState, cause: &LogError) {
        if !st.failed {
            error!(dir = %self.dir.display(), error = %cause,
                "write or sync failed; the log refuses writes until it is reopened");
        }
        st.failed = true;
        self.failed.store(true, Ordering::Release);
        self.wake_all();
    }

    fn wake_all(&self) {
        self.round_done.iter().for_each(Condvar::notify_all);
        self.work.notify_all();
        self.visible.send_modify(|_| {});
    }

    /// Fails the log if `result` is an error (a truncation interrupted
    /// half way leaves files and memory out of step).
    fn fail_on_error<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            self.fail(&mut self.lock_sync(), e);
        }
        result
    }

    /// Removes every segment (each removal durable) and creates an empty
    /// one at `base`.
    fn replace_all(&self, inner: &mut Inner, base: u64) -> Result<()> {
        // The new segment may reuse a name of an old one: free the names
        // first. Until the new one exists, the set holds a segment whose
        // files are gone; any error here fails the log.
        let mut old = Vec::new();
        for seg in inner.segments.iter() {
            old.push((seg.base(), seg.store_file().to_path_buf()));
        }
        for (base, store) in old.iter().rev() {
            let index = super::segment::index_path(&self.dir, *base);
            remove_if_exists(&*self.fs, &index)?;
            remove_if_exists(&*self.fs, store)?;
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
                    // A round may be syncing this store: see `sync_io`.
                    let _io = self.lock_io();
                    let sealed = segments.active_mut().seal();
                    if let Err(e) = sealed {
                        self.fail(&mut self.lock_sync(), &e);
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

    /// Records a write up to `next` and applies the policy: wake the
    /// syncer (always), or make it visible at once (never).
    fn written(&self, next: u64, bytes: u64) {
        let mut st = self.lock_sync();
        st.written = st.written.max(next);
        st.written_bytes += bytes;
        match self.config.sync {
            SyncPolicy::Always if !st.syncing => self.work.notify_one(),
            SyncPolicy::Always | SyncPolicy::Interval(_) => {}
            SyncPolicy::Never => {
                if !st.failed {
                    self.visible.send_if_modified(|v| {
                        let grew = next > *v;
                        *v = (*v).max(next);
                        grew
                    });
                }
            }
        }
    }

    /// Blocks until offsets below `target` are durable.
    fn wait_synced(&self, target: u64) -> Result<()> {
        let mut st = self.lock_sync();
        loop {
            if st.failed {
                return Err(LogError::SyncFailed);
            }
            if st.synced >= target {
                return Ok(());
            }
            st = self.step_toward_sync(st, target);
        }
    }

    /// Waits for the sync round that covers `target`, or runs it. With
    /// `Always` the syncer thread runs rounds, so appenders keep writing
    /// while one is in flight; otherwise the caller runs one when none is
    /// in flight, and else waits for the one in flight to end and looks
    /// again (with no syncer thread, nobody else would run the next one).
    fn step_toward_sync<'a>(
        &'a self,
        mut st: MutexGuard<'a, SyncState>,
        target: u64,
    ) -> MutexGuard<'a, SyncState> {
        let always = self.config.sync == SyncPolicy::Always && !st.stop;
        if !st.syncing && !always {
            return self.sync_round(st);
        }
        let covering = if st.syncing && (target <= st.round_target || !always) {
            st.rounds
        } else {
            if !st.syncing {
                self.work.notify_one();
            }
            st.rounds + 1
        };
        st.stats.waiting += 1;
        let mut st = self.round_done[(covering % 2) as usize]
            .wait(st)
            .unwrap_or_else(|e| e.into_inner());
        st.stats.waiting -= 1;
        st
    }

    /// Backpressure: waits while more than `max_unsynced_bytes` are
    /// written but not synced.
    fn wait_for_room(&self) -> Result<()> {
        if self.config.sync == SyncPolicy::Never {
            return Ok(());
        }
        let mut st = self.lock_sync();
        while st.written_bytes.saturating_sub(st.synced_bytes) > self.config.max_unsynced_bytes {
            if st.failed {
                return Err(LogError::SyncFailed);
            }
            let target = st.written;
            st = self.step_toward_sync(st, target);
        }
        Ok(())
    }

    /// One group-commit round: everything reported written so far is
    /// covered. Records before `written` are either in the active store
    /// (fetched after deciding the target) or in a segment that was synced
    /// when it was sealed. The fdatasync runs with only `sync_io` held; the
    /// round publishes only if the log has not failed and no truncation
    /// happened meanwhile.
    fn sync_round<'a>(&'a self, mut st: MutexGuard<'a, SyncState>) -> MutexGuard<'a, SyncState> {
        let (target, bytes, epoch) = (st.written, st.written_bytes, st.epoch);
        st.syncing = true;
        st.rounds += 1;
        st.round_target = target;
        let round = st.rounds;
        drop(st);
        let (file, path) = {
            let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
            let active = inner.segments.active();
            (active.sync_handle(), active.store_file().to_path_buf())
        };
        let io = self.lock_io();
        let started = std::time::Instant::now();
        let result = file.sync_data().at(&path);
        let took = started.elapsed();
        let mut st = self.lock_sync();
        drop(io);
        st.syncing = false;
        st.stats.syncs += 1;
        st.stats.sync_micros += took.as_micros() as u64;
        match result {
            Ok(()) if !st.failed && st.epoch == epoch => {
                if target > st.synced {
                    st.synced = target;
                    self.visible.send_replace(target);
                }
                st.synced_bytes = st.synced_bytes.max(bytes);
            }
            Ok(()) => {}
            Err(e) => self.fail(&mut st, &e),
        }
        self.round_done[(round % 2) as usize].notify_all();
        st
    }

    /// After a truncation or reset: nothing at or past `next` exists
    /// anymore, and rounds in flight publish nothing.
    fn truncated(&self, next: u64, reset: bool) {
        let mut st = self.lock_sync();
        st.epoch += 1;
        st.written = if reset { next } else { st.written.min(next) };
        st.synced = if reset { next } else { st.synced.min(next) };
        st.synced_bytes = st.written_bytes;
        self.visible.send_if_modified(|v| {
            let changed = if reset { *v != next } else { *v > next };
            if changed {
                *v = next;
            }
            changed
        });
        self.round_done.iter().for_each(Condvar::notify_all);
    }
}

fn remove_if_exists(fs: &dyn FileSystem, path: &Path) -> Result<()> {
    match fs.remove(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at(path),
        _ => Ok(()),
    }
}

/// The syncer thread: with `Always` it syncs back to back while writes
/// are pending (appenders keep writing during a sync and share the next
/// one); with `Interval` it syncs pending writes once per interval.
fn spawn_syncer(shared: Arc<Shared>) -> Result<JoinHandle<()>> {
    let dir = shared.dir.clone();
    std::thread::Builder::new()
        .name("proglog-syncer".into())
        .spawn(move || {
            let mut st = shared.lock_sync();
            loop {
                if st.stop {
                    return;
                }
                let pending = st.written > st.synced && !st.syncing && !st.failed;
                st = match shared.config.sync {
                    SyncPolicy::Always if pending => shared.sync_round(st),
                    SyncPolicy::Interval(every) => {
                        let (st, _) = shared
                            .work
                            .wait_timeout(st, every)
                            .unwrap_or_else(|e| e.into_inner());
                        let pending = st.written > st.synced && !st.syncing && !st.failed;
                        if pending && !st.stop {
                            shared.sync_round(st)
                        } else {
                            st
                        }
                    }
                    _ => shared.work.wait(st).unwrap_or_else(|e| e.into_inner()),
                };
            }
        })
        .at(&dir)
}
