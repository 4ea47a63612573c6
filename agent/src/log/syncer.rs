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
//! A caller that cannot block or await (openraft's flush callback) can
//! instead register a function with [`GroupCommit::on_durable`]: the round
//! that makes its records durable runs it on the syncer's thread, which
//! saves the hop through an async task that awaiting the watch would take.
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

/// A function run once the records below an offset are durable, or with
/// the error that means they never will be.
pub(super) type OnDurable = Box<dyn FnOnce(Result<()>) + Send>;

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
    /// Functions waiting for the visible watermark, each with the offset
    /// it must reach, in registration order. Taken after `state` when
    /// both are held.
    callbacks: Mutex<Vec<(u64, OnDurable)>>,
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
            callbacks: Mutex::new(Vec::new()),
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
        self.run_callbacks();
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

    /// Runs `f` once every offset below `next` is durable and visible
    /// (with `Ok`), or once the log has failed (with
    /// [`LogError::SyncFailed`]): at once on this thread if that is
    /// already so, else on the thread that makes it so (usually the
    /// syncer's, right after its fdatasync). `f` runs with the log's
    /// group-commit state locked, so it must be quick and must not call
    /// into the log; sending on a channel is what it is for.
    pub fn on_durable(&self, next: u64, f: OnDurable) {
        self.callbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((next, f));
        // A round that published before the push could not see `f`; this
        // check sees what that round published (the callbacks mutex
        // orders the two).
        self.run_callbacks();
    }

    /// Runs the registered functions whose records are now visible (or all
    /// of them, with the error, once the log has failed), in registration
    /// order. Called after every change of the visible watermark.
    fn run_callbacks(&self) {
        let ready: Vec<(u64, OnDurable)> = {
            let mut callbacks = self.callbacks.lock().unwrap_or_else(|e| e.into_inner());
            if callbacks.is_empty() {
                return;
            }
            if self.is_failed() {
                std::mem::take(&mut *callbacks)
            } else {
                let visible = *self.visible.borrow();
                let (ready, waiting) = std::mem::take(&mut *callbacks)
                    .into_iter()
                    .partition(|(next, _)| *next <= visible);
                *callbacks = waiting;
                ready
            }
        };
        let failed = self.is_failed();
        for (_, f) in ready {
            f(if failed {
                Err(LogError::SyncFailed)
            } else {
                Ok(())
            });
        }
    }

    /// Records a write up to `next` and applies the policy: wake the
    /// syncer (always), or make it visible at once (never).
    pub fn written(&self, next: u64, bytes: u64) {
        let mut st = self.lock();
        st.written = st.written.max(next);
        st.written_bytes += bytes;
        match self.policy {
            SyncPolicy::Always if !st.syncing => self.work.notify_one(),
            SyncPolicy::Always | SyncPolicy::Interval(_) => {}
            SyncPolicy::Never => {
                if !st.failed {
                    self.visible.send_if_modified(|v| {
                        let grew = next > *v;
                        *v = (*v).max(next);
                        grew
                    });
                    drop(st);
                    self.run_callbacks();
                }
            }
        }
    }

    /// Blocks until everything written so far is durable.
    pub fn sync_all_written(&self, store: &dyn ActiveStore) -> Result<()> {
        let target = self.lock().written;
        self.wait_synced(target, store)
    }

    /// Blocks until offsets below `target` are durable.
    pub fn wait_synced(&self, target: u64, store: &dyn ActiveStore) -> Result<()> {
        let mut st = self.lock();
        loop {
            if st.failed {
                return Err(LogError::SyncFailed);
            }
            if st.synced >= target {
                return Ok(());
            }
            st = self.step_toward_sync(st, target, store);
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
        store: &dyn ActiveStore,
    ) -> MutexGuard<'a, SyncState> {
        let always = self.policy == SyncPolicy::Always && !st.stop;
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
            st = self.step_toward_sync(st, target, store);
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
                    self.run_callbacks();
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
        // As for `wait_durable`: a function waits for the watermark, not
        // for particular records, so callers sync before they truncate
        // (the Raft log store does) and none is left waiting here.
        self.run_callbacks();
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
        self.run_callbacks();
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
