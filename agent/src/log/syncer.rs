//! Group commit: the watermarks of a log (written, synced, visible), the
//! sync rounds that advance them, and the syncer thread that runs rounds.
//!
//! With `Always`, a syncer thread runs rounds back to back while writes
//! are pending. A round covers everything reported written when it starts;
//! its fdatasync runs with no lock but `io` held, on a handle of the
//! active store, while appenders keep writing for the next round. Blocking
//! appenders wait on the condvar of the round that covers them (so a round
//! wakes only those it made durable); async appenders wait on the
//! `visible` watch. Segments that roll over are synced when sealed, so a
//! sync of the active store covers everything written before it.
//!
//! `io` serialises every sync of a store that a round may also be syncing
//! (rounds, and the seal of a segment at roll), so that an fsync error one
//! of them consumes is recorded before the other can report success. Lock
//! order: the log's segment lock, then `io`, then `state`; a round never
//! asks for the segment lock while holding `io`, and nothing holds `state`
//! while waiting on the `visible` watch.
//!
//! A single writer can instead sync what it wrote on its own thread
//! ([`Syncing::Caller`]): its writes do not wake the syncer, and its sync
//! runs the round itself (the Raft log's writer: no hand-off between its
//! write, the fdatasync and openraft's flush callback).
//!
//! Failure is final: after any write or sync error nothing more becomes
//! visible and every waiter, now and later, gets [`LogError::SyncFailed`].
//! Truncation bumps an epoch; a round that started before it publishes
//! nothing, since its target may name offsets that now hold other,
//! unsynced records.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::watch;
use tracing::error;

use super::error::{IoContext, LogError, Result};
use super::fs::FileHandle;
use super::{SyncObserver, SyncPolicy};

/// Where a sync round finds the file it syncs: the active store.
pub(super) trait ActiveStore: Send + Sync {
    /// A handle of the active store and its path.
    fn active_store(&self) -> (Arc<dyn FileHandle>, PathBuf);
}

/// Who runs the sync rounds a write needs under [`SyncPolicy::Always`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Syncing {
    /// The syncer thread, woken by the write: the writer goes on writing.
    Syncer,
    /// The writer itself, on its own thread, when it asks for the sync: no
    /// hand-off between the write and its fdatasync.
    Caller,
}

/// The group-commit state of one log.
pub(super) struct GroupCommit {
    dir: PathBuf,
    policy: SyncPolicy,
    max_unsynced_bytes: u64,
    /// Held across every sync of a store that a round may share.
    io: Mutex<()>,
    state: Mutex<SyncState>,
    /// `round_done[r % 2]` is signalled when sync round `r` ends. Waiters
    /// wait on the condvar of the round that will cover them, so a round
    /// wakes only the appenders it made durable.
    round_done: [Condvar; 2],
    /// Wakes the syncer thread: there is work, or it must stop.
    work: Condvar,
    /// Next offset readers may not see yet (the visible high watermark).
    visible: watch::Sender<u64>,
    /// Mirror of `SyncState::failed` readable without the state mutex (the
    /// async waiter checks it while holding the watch's lock, and rounds
    /// publish to the watch while holding the state mutex).
    failed: AtomicBool,
    /// Told the duration of every round's fdatasync (metrics).
    observer: Option<Arc<dyn SyncObserver>>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("dir", &self.dir)
            .field("policy", &self.policy)
            .field("state", &self.state)
            .field("visible", &*self.visible.borrow())
            .finish_non_exhaustive()
    }
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

impl GroupCommit {
    /// Watermarks of a log whose records end at `next`, all durable.
    pub fn new(dir: PathBuf, policy: SyncPolicy, max_unsynced_bytes: u64, next: u64) -> Self {
        GroupCommit {
            dir,
            policy,
            max_unsynced_bytes,
            io: Mutex::new(()),
            state: Mutex::new(SyncState {
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
            observer: None,
        }
    }

    /// Reports the duration of every round's fdatasync to `observer`.
    pub fn observed_by(mut self, observer: Option<Arc<dyn SyncObserver>>) -> Self {
        self.observer = observer;
        self
    }

    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds off sync rounds while the caller syncs a store a round may
    /// share (see the module docs).
    pub fn lock_io(&self) -> MutexGuard<'_, ()> {
        self.io.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a write or sync failed.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Marks the log failed for good and wakes every waiter, blocking or
    /// async, so none waits for a round that will never come.
    pub fn fail(&self, cause: &LogError) {
        self.fail_locked(&mut self.lock(), cause);
    }

    fn fail_locked(&self, st: &mut SyncState, cause: &LogError) {
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

    /// Fails the log if `result` is an error.
    pub fn fail_on_error<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            self.fail(e);
        }
        result
    }

    /// Counters since open.
    pub fn stats(&self) -> SyncStats {
        self.lock().stats
    }

    /// Offset the next written record gets.
    pub fn written_offset(&self) -> u64 {
        self.lock().written
    }

    /// The visible high watermark.
    pub fn visible(&self) -> u64 {
        *self.visible.borrow()
    }

    /// A receiver of the visible high watermark.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.visible.subscribe()
    }

    /// The written offset, or [`LogError::SyncFailed`] once failed.
    pub fn written_unless_failed(&self) -> Result<u64> {
        let st = self.lock();
        if st.failed {
            return Err(LogError::SyncFailed);
        }
        Ok(st.written)
    }

    /// When more bytes are written but unsynced than the bound, the
    /// written offset.
    pub fn over_unsynced_bound(&self) -> Option<u64> {
        let st = self.lock();
        let unsynced = st.written_bytes.saturating_sub(st.synced_bytes);
        let over = self.policy != SyncPolicy::Never && unsynced > self.max_unsynced_bytes;
        over.then_some(st.written)
    }

    /// Resolves once every offset below `next` is durable and visible, or
    /// fails once the log has failed (whatever was visible before).
    pub async fn wait_durable(&self, next: u64) -> Result<()> {
        let mut visible = self.visible.subscribe();
        let _ = visible.wait_for(|v| self.is_failed() || *v >= next).await;
        if self.is_failed() {
            Err(LogError::SyncFailed)
        } else if *visible.borrow() >= next {
            Ok(())
        } else {
            Err(LogError::Closed)
        }
    }

    /// Records a write up to `next` and applies the policy: wake the
    /// syncer (always, unless the writer syncs on its own thread), or make
    /// it visible at once (never).
    pub fn written(&self, next: u64, bytes: u64, by: Syncing) {
        let mut st = self.lock();
        st.written = st.written.max(next);
        st.written_bytes += bytes;
        match self.policy {
            SyncPolicy::Always if !st.syncing && by == Syncing::Syncer => self.work.notify_one(),
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

    /// Blocks until everything written so far is durable; `by` says who
    /// runs the rounds it needs.
    pub fn sync_all_written(&self, store: &dyn ActiveStore, by: Syncing) -> Result<()> {
        let target = self.lock().written;
        self.wait_synced(target, store, by)
    }

    /// Blocks until offsets below `target` are durable.
    pub fn wait_synced(&self, target: u64, store: &dyn ActiveStore, by: Syncing) -> Result<()> {
        let mut st = self.lock();
        loop {
            if st.failed {
                return Err(LogError::SyncFailed);
            }
            if st.synced >= target {
                return Ok(());
            }
            st = self.step_toward_sync(st, target, store, by);
        }
    }

    /// Waits for the sync round that covers `target`, or runs it. With
    /// `Always` the syncer thread runs rounds (unless `by` is
    /// [`Syncing::Caller`]), so appenders keep writing while one is in
    /// flight; otherwise the caller runs one when none is in flight, and
    /// else waits for the one in flight to end and looks again (nobody
    /// else would run the next one).
    fn step_toward_sync<'a>(
        &'a self,
        mut st: MutexGuard<'a, SyncState>,
        target: u64,
        store: &dyn ActiveStore,
        by: Syncing,
    ) -> MutexGuard<'a, SyncState> {
        let always = self.policy == SyncPolicy::Always && !st.stop && by == Syncing::Syncer;
        if !st.syncing && !always {
            return self.sync_round(st, store);
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
    pub fn wait_for_room(&self, store: &dyn ActiveStore) -> Result<()> {
        if self.policy == SyncPolicy::Never {
            return Ok(());
        }
        let mut st = self.lock();
        while st.written_bytes.saturating_sub(st.synced_bytes) > self.max_unsynced_bytes {
            if st.failed {
                return Err(LogError::SyncFailed);
            }
            let target = st.written;
            st = self.step_toward_sync(st, target, store, Syncing::Syncer);
        }
        Ok(())
    }

    /// One group-commit round: everything reported written so far is
    /// covered. Records before `written` are either in the active store
    /// (fetched after deciding the target) or in a segment that was synced
    /// when it was sealed. The fdatasync runs with only `io` held; the
    /// round publishes only if the log has not failed and no truncation
    /// happened meanwhile.
    fn sync_round<'a>(
        &'a self,
        mut st: MutexGuard<'a, SyncState>,
        store: &dyn ActiveStore,
    ) -> MutexGuard<'a, SyncState> {
        let (target, bytes, epoch) = (st.written, st.written_bytes, st.epoch);
        st.syncing = true;
        st.rounds += 1;
        st.round_target = target;
        let round = st.rounds;
        let round_bytes = bytes.saturating_sub(st.synced_bytes);
        drop(st);
        let (file, path) = store.active_store();
        let io = self.lock_io();
        // One span per round (not per record): the fsync in traces.
        let span =
            tracing::info_span!("wal.fsync", round, offset = target, bytes = round_bytes).entered();
        let started = std::time::Instant::now();
        let result = file.sync_data().at(&path);
        drop(span);
        let took = started.elapsed();
        if let Some(observer) = &self.observer {
            observer.synced(took);
        }
        let mut st = self.lock();
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
            Err(e) => self.fail_locked(&mut st, &e),
        }
        self.round_done[(round % 2) as usize].notify_all();
        st
    }

    /// After a truncation or reset, which left every remaining record
    /// durable: nothing at or past `next` exists anymore, and rounds in
    /// flight publish nothing.
    pub fn truncated(&self, next: u64, reset: bool) {
        let mut st = self.lock();
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

    /// After a clean close synced everything up to `next`: makes it all
    /// visible and releases the waiters. A failed log stays failed.
    pub fn closed(&self, next: u64) {
        let mut st = self.lock();
        if !st.failed {
            st.synced = st.synced.max(next);
            self.visible.send_replace(next);
        }
        self.wake_all();
    }

    /// Tells the syncer thread to exit.
    pub fn stop(&self) {
        self.lock().stop = true;
        self.work.notify_all();
    }

    /// The syncer thread's loop: with `Always` it syncs back to back while
    /// writes are pending (appenders keep writing during a sync and share
    /// the next one); with `Interval` it syncs pending writes once per
    /// interval. Returns when stopped.
    pub fn run(&self, store: &dyn ActiveStore) {
        let mut st = self.lock();
        loop {
            if st.stop {
                return;
            }
            let pending = st.written > st.synced && !st.syncing && !st.failed;
            st = match self.policy {
                SyncPolicy::Always if pending => self.sync_round(st, store),
                SyncPolicy::Interval(every) => {
                    let (st, _) = self
                        .work
                        .wait_timeout(st, every)
                        .unwrap_or_else(|e| e.into_inner());
                    let pending = st.written > st.synced && !st.syncing && !st.failed;
                    if pending && !st.stop {
                        self.sync_round(st, store)
                    } else {
                        st
                    }
                }
                _ => self.work.wait(st).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}
