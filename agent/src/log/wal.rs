//! [`Log`]: ordered segments, dense offsets, group commit, recovery.
//!
//! Locking: `inner` (a `RwLock`) guards the segments; appends hold it for
//! the write syscall only, reads share it. `sync` (a `Mutex`) guards the
//! watermarks; lock order is `inner` before `sync`, and nothing holds `sync`
//! while waiting on the `visible` watch.
//!
//! Group commit: with `Always`, a syncer thread runs sync rounds back to
//! back while writes are pending. A round covers everything reported
//! written when it starts; its fdatasync runs with no lock held, on a cloned
//! handle of the active store, while appenders keep writing for the next
//! round. Blocking appenders wait on the condvar of the round that covers
//! them (so a round wakes only those it made durable); async appenders wait
//! on the `visible` watch. Segments that roll over are synced when sealed,
//! so a sync of the active store covers everything written before it.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use tokio::sync::watch;
use tracing::{error, info};

use super::error::{IoContext, LogError, Result};
use super::segment::{self, Segment, SegmentLimits};
use super::store::MAX_RECORD_LEN;
use super::{sync_dir, LogConfig, SyncPolicy};

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
    config: LogConfig,
    inner: RwLock<Inner>,
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
    /// Ordered by base; the last one takes appends. Never empty while open.
    segments: Vec<Segment>,
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
}

impl Log {
    /// Opens (creating if needed) the log in `dir` and recovers it.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.exists() {
            fs::create_dir_all(&dir).at(&dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let limits = config.limits();
        let mut segments = Vec::new();
        for base in segment_bases(&dir)? {
            segments.push(Segment::open(&dir, base, limits)?);
        }
        for pair in segments.windows(2) {
            if pair[0].next_offset() != pair[1].base() {
                return Err(LogError::Corrupt {
                    segment: pair[0].store_file().to_path_buf(),
                    position: pair[0].store_size(),
                    reason: "segment ends before the next one begins: records are missing",
                });
            }
        }
        let count = segments.len();
        for seg in segments.iter_mut().take(count.saturating_sub(1)) {
            if !seg.opened_clean() {
                seg.seal()?;
            }
        }
        match segments.last_mut() {
            Some(last) => last.unseal()?,
            None => {
                segments.push(Segment::create(&dir, config.initial_offset, limits)?);
                sync_dir(&dir)?;
            }
        }
        let next = segments.last().expect("one segment").next_offset();
        info!(dir = %dir.display(), segments = segments.len(),
            lowest = segments[0].base(), next, "log opened");
        let shared = Arc::new(Shared {
            dir,
            inner: RwLock::new(Inner {
                segments,
                buf: Vec::new(),
                closed: false,
            }),
            sync: Mutex::new(SyncState {
                written: next,
                synced: next,
                written_bytes: 0,
                synced_bytes: 0,
                syncing: false,
                rounds: 0,
                round_target: next,
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
            _ => Some(spawn_syncer(Arc::clone(&shared))),
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
            let next = shared.lock_sync().written;
            return Ok(Appended { first: next, next });
        }
        let (first, next, bytes) = {
            let mut inner = shared.write_inner()?;
            let result = shared.write_records(&mut inner, records);
            if result.is_err() {
                shared.fail(&mut shared.lock_sync());
            }
            result?
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
    /// fails if a sync failed. Under [`SyncPolicy::Interval`] that is the
    /// next interval sync; under `Never`, at once.
    pub async fn wait_durable(&self, next: u64) -> Result<()> {
        let mut visible = self.shared.visible.subscribe();
        let failed = || self.shared.failed.load(Ordering::Acquire);
        let _ = visible.wait_for(|v| *v >= next || failed()).await;
        if *visible.borrow() >= next {
            Ok(())
        } else {
            Err(LogError::SyncFailed)
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
        let i = inner.segments.partition_point(|s| s.base() <= offset);
        if i == 0 {
            return Err(LogError::OffsetOutOfRange { offset });
        }
        inner.segments[i - 1].read(offset)
    }

    /// Whether a write or sync failed: the log then refuses writes and
    /// makes nothing more visible until it is reopened and recovered.
    pub fn is_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// Group-commit counters since open.
    pub fn sync_stats(&self) -> SyncStats {
        self.shared.lock_sync().stats
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
                modified: std::fs::metadata(s.store_file())
                    .and_then(|m| m.modified())
                    .ok(),
            })
            .collect()
    }

    /// Offset of the oldest retained record (the next offset if empty).
    pub fn lowest_offset(&self) -> u64 {
        let inner = self.shared.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.segments.first().map_or(0, Segment::base)
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
    /// active segment always stays. Returns the new lowest offset.
    pub fn truncate_prefix(&self, lowest: u64) -> Result<u64> {
        let shared = &*self.shared;
        let mut inner = shared.write_inner()?;
        let keep_from = inner.segments[..inner.segments.len() - 1]
            .iter()
            .take_while(|s| s.next_offset() <= lowest)
            .count();
        if keep_from > 0 {
            for seg in inner.segments.drain(..keep_from) {
                seg.remove()?;
            }
            sync_dir(&shared.dir)?;
        }
        Ok(inner.segments[0].base())
    }

    /// Removes every record after `after` (Raft replaces conflicting tails
    /// this way); the next append gets `after + 1`. If `after` lies below
    /// the lowest retained record, the log becomes empty and starts at
    /// `after + 1`. Must not race appends.
    pub fn truncate_suffix(&self, after: u64) -> Result<()> {
        let shared = &*self.shared;
        let mut inner = shared.write_inner()?;
        let next = after + 1;
        if next >= inner.segments.last().expect("open").next_offset() {
            return Ok(());
        }
        let mut removed = false;
        while inner.segments.last().is_some_and(|s| s.base() > after) {
            inner.segments.pop().expect("checked").remove()?;
            removed = true;
        }
        match inner.segments.last_mut() {
            Some(last) => last.truncate_after(after)?,
            None => {
                let limits = shared.limits();
                inner
                    .segments
                    .push(Segment::create(&shared.dir, next, limits)?);
                removed = true;
            }
        }
        if removed {
            sync_dir(&shared.dir)?;
        }
        drop(inner);
        shared.lower_watermarks(next);
        Ok(())
    }

    /// Deletes every record and starts over, empty, at `initial_offset`
    /// (as after installing a snapshot). Must not race appends.
    pub fn reset(&self, initial_offset: u64) -> Result<()> {
        let shared = &*self.shared;
        let mut inner = shared.write_inner()?;
        for seg in inner.segments.drain(..) {
            seg.remove()?;
        }
        inner.segments.push(Segment::create(
            &shared.dir,
            initial_offset,
            shared.limits(),
        )?);
        sync_dir(&shared.dir)?;
        drop(inner);
        let mut st = shared.lock_sync();
        st.written = initial_offset;
        st.synced = initial_offset;
        st.failed = false;
        shared.failed.store(false, Ordering::Release);
        shared.visible.send_replace(initial_offset);
        Ok(())
    }

    /// A reader over the raw store bytes of the sealed segments (all but
    /// the active one), oldest first, for snapshots. It holds its own file
    /// handles, so later truncation does not disturb it.
    pub fn reader(&self) -> Result<LogReader> {
        let inner = self.shared.read_inner()?;
        let mut parts = Vec::new();
        for seg in &inner.segments[..inner.segments.len() - 1] {
            let path = seg.store_file();
            parts.push((File::open(path).at(path)?, seg.store_size()));
        }
        parts.reverse();
        Ok(LogReader { parts })
    }

    /// Syncs and seals the active segment and stops the background syncer.
    /// Later calls fail with [`LogError::Closed`]; closing twice is fine.
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
        inner.segments.last_mut().expect("open").seal()?;
        let next = inner.segments.last().expect("open").next_offset();
        drop(inner);
        let mut st = shared.lock_sync();
        st.synced = st.synced.max(next);
        shared.visible.send_replace(next);
        shared.round_done.iter().for_each(Condvar::notify_all);
        Ok(())
    }

    /// Closes the log and deletes its directory.
    pub fn remove(self) -> Result<()> {
        self.close()?;
        let dir = self.shared.dir.clone();
        fs::remove_dir_all(&dir).at(&dir)
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            error!(error = %e, "closing the log failed");
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

    /// Marks the log failed: no more writes until reopened.
    fn fail(&self, st: &mut SyncState) {
        st.failed = true;
        self.failed.store(true, Ordering::Release);
    }

    fn lock_sync(&self) -> MutexGuard<'_, SyncState> {
        self.sync.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes records into the active segment, rolling to new segments as
    /// they fill. Returns (first offset, next offset, bytes written).
    fn write_records<R: AsRef<[u8]>>(
        &self,
        inner: &mut Inner,
        records: &[R],
    ) -> Result<(u64, u64, u64)> {
        let Inner { segments, buf, .. } = inner;
        let first = segments.last().expect("open").next_offset();
        let mut bytes = 0;
        let mut i = 0;
        while i < records.len() {
            let active = segments.last_mut().expect("open");
            let n = active.fit(records[i..].iter().map(|r| r.as_ref().len()));
            if n == 0 {
                let base = active.next_offset();
                active.seal()?;
                segments.push(Segment::create(&self.dir, base, self.limits())?);
                sync_dir(&self.dir)?;
                continue;
            }
            active.append(&records[i..i + n], buf)?;
            bytes += buf.len() as u64;
            i += n;
        }
        let next = segments.last().expect("open").next_offset();
        Ok((first, next, bytes))
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
                self.visible.send_if_modified(|v| {
                    let grew = next > *v;
                    *v = (*v).max(next);
                    grew
                });
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
    /// while one is in flight; otherwise the caller runs it when none is.
    fn step_toward_sync<'a>(
        &'a self,
        st: MutexGuard<'a, SyncState>,
        target: u64,
    ) -> MutexGuard<'a, SyncState> {
        let always = self.config.sync == SyncPolicy::Always && !st.stop;
        if !st.syncing && !always {
            return self.sync_round(st);
        }
        let covering = if st.syncing && target <= st.round_target {
            st.rounds
        } else {
            if !st.syncing {
                self.work.notify_one();
            }
            st.rounds + 1
        };
        self.round_done[(covering % 2) as usize]
            .wait(st)
            .unwrap_or_else(|e| e.into_inner())
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
    /// when it was sealed. The fdatasync runs with no lock held.
    fn sync_round<'a>(&'a self, mut st: MutexGuard<'a, SyncState>) -> MutexGuard<'a, SyncState> {
        let (target, bytes) = (st.written, st.written_bytes);
        st.syncing = true;
        st.rounds += 1;
        st.round_target = target;
        let round = st.rounds;
        drop(st);
        let (file, path) = {
            let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
            let active = inner.segments.last().expect("open");
            (active.sync_handle(), active.store_file().to_path_buf())
        };
        let started = std::time::Instant::now();
        let result = file.sync_data();
        let took = started.elapsed();
        let mut st = self.lock_sync();
        st.syncing = false;
        st.stats.syncs += 1;
        st.stats.sync_micros += took.as_micros() as u64;
        match result {
            Ok(()) => {
                if target > st.synced {
                    st.synced = target;
                    self.visible.send_replace(target);
                }
                st.synced_bytes = st.synced_bytes.max(bytes);
            }
            Err(e) => {
                error!(file = %path.display(), error = %e,
                    "fdatasync failed; refusing writes until the log is reopened");
                self.fail(&mut st);
                self.round_done[((round + 1) % 2) as usize].notify_all();
                self.visible.send_modify(|_| {});
            }
        }
        self.round_done[(round % 2) as usize].notify_all();
        st
    }

    /// After a suffix truncation: nothing at or past `next` exists anymore.
    fn lower_watermarks(&self, next: u64) {
        let mut st = self.lock_sync();
        st.written = st.written.min(next);
        st.synced = st.synced.min(next);
        self.visible.send_if_modified(|v| {
            let shrank = *v > next;
            *v = (*v).min(next);
            shrank
        });
    }
}

/// The syncer thread: with `Always` it syncs back to back while writes
/// are pending (appenders keep writing during a sync and share the next
/// one); with `Interval` it syncs pending writes once per interval.
fn spawn_syncer(shared: Arc<Shared>) -> JoinHandle<()> {
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
        .expect("spawning the syncer thread")
}

/// Bases of the segments in `dir`, sorted; stray index files are removed.
fn segment_bases(dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    let mut indexes = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let parse = |suffix: &str| {
            name.strip_suffix(suffix)
                .filter(|stem| stem.len() == 20)
                .and_then(|stem| stem.parse::<u64>().ok())
        };
        if let Some(base) = parse(".store") {
            bases.push(base);
        } else if let Some(base) = parse(".index") {
            indexes.push(base);
        } else if name.ends_with(".index.tmp") {
            fs::remove_file(&path).at(&path)?;
        }
    }
    bases.sort_unstable();
    for base in indexes {
        if bases.binary_search(&base).is_err() {
            let path = segment::index_path(dir, base);
            fs::remove_file(&path).at(&path)?;
        }
    }
    Ok(bases)
}

/// Raw bytes of sealed store files, oldest first (see [`Log::reader`]).
#[derive(Debug)]
pub struct LogReader {
    /// Remaining (file, bytes left) pairs, last element read first.
    parts: Vec<(File, u64)>,
}

impl Read for LogReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while let Some((file, left)) = self.parts.last_mut() {
            if *left == 0 {
                self.parts.pop();
                continue;
            }
            let want = out.len().min(*left as usize);
            let n = file.read(&mut out[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "store file shorter than its recorded size",
                ));
            }
            *left -= n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}
