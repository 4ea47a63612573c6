//! The data log's writer: one thread that does the state machine's disk
//! work (record writes, retention's file removals) in apply order, after
//! the apply itself has answered, and the watermark that says how far it
//! got.
//!
//! An apply is CPU work on the state machine's task (offsets, the producer
//! table); its writes go to this thread, so the answer to a produce does
//! not wait for a trip to a blocking thread and back. Readers never see a
//! record before it is written: the watermark moves only once it is, and a
//! read of an applied offset not yet written waits for it
//! ([`Progress::wait_past`]). Snapshot builds, installs and the close
//! drain the queue first. Dropping the writer waits for the jobs queued
//! before, so a state machine dropped and reopened never meets its old
//! writes.

use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tokio::sync::watch;

/// Work for the thread, run in the order it was queued; it reports how far
/// the writes got on the [`Progress`] it is given.
pub(super) type Job = Box<dyn FnOnce(&Progress) + Send>;

/// How far the writer got: the next written offset (the watermark readers
/// see), or why it stopped.
#[derive(Debug)]
pub(super) struct Progress {
    watermark: watch::Sender<u64>,
    /// Readers waiting for a record to be written wait here; notified
    /// with the lock held after each move of the watermark and on failure.
    moved: (Mutex<()>, Condvar),
    failed: Mutex<Option<String>>,
}

impl Progress {
    /// The next written offset: records below it are readable.
    pub fn next(&self) -> u64 {
        *self.watermark.borrow()
    }

    /// A receiver of the next written offset.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.watermark.subscribe()
    }

    /// Moves the watermark to `next` (records below it are written, or an
    /// install put them there) and wakes the readers waiting for it.
    pub fn publish(&self, next: u64) {
        self.watermark.send_if_modified(|v| {
            let changed = *v != next;
            *v = next;
            changed
        });
        let _guard = self.moved.0.lock().unwrap_or_else(|e| e.into_inner());
        self.moved.1.notify_all();
    }

    /// Records that a write failed, for good, and wakes the waiting readers.
    pub fn fail(&self, why: String) {
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        let _guard = self.moved.0.lock().unwrap_or_else(|e| e.into_inner());
        self.moved.1.notify_all();
    }

    /// Why a write failed, if one did.
    pub fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Blocks while `offset` is below `applied_next()` (applied) but not
    /// yet written; then returns the next written offset. `Err` with the
    /// reason once the writer failed.
    pub fn wait_past(&self, offset: u64, applied_next: impl Fn() -> u64) -> Result<u64, String> {
        let (lock, moved) = &self.moved;
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let next = self.next();
            if offset < next || offset >= applied_next() {
                return Ok(next);
            }
            if let Some(why) = self.failure() {
                return Err(why);
            }
            guard = moved.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The handle of the writer thread.
#[derive(Debug)]
pub(super) struct DataWriter {
    /// `None` once dropping.
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    progress: Arc<Progress>,
}

impl DataWriter {
    /// Starts the thread over a data log whose records end at `next`.
    pub fn start(next: u64) -> std::io::Result<DataWriter> {
        let progress = Arc::new(Progress {
            watermark: watch::Sender::new(next),
            moved: (Mutex::new(()), Condvar::new()),
            failed: Mutex::new(None),
        });
        let (jobs, queue) = mpsc::channel::<Job>();
        let seen = Arc::clone(&progress);
        let thread = std::thread::Builder::new()
            .name("proglog-datalog".into())
            .spawn(move || {
                for job in queue {
                    // A panic is a bug; the readers waiting for this job's
                    // records hear of it instead of waiting for good.
                    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| job(&seen)));
                    if ran.is_err() {
                        seen.fail("the data log's writer panicked".into());
                    }
                }
            })?;
        Ok(DataWriter {
            jobs: Some(jobs),
            thread: Some(thread),
            progress,
        })
    }

    /// How far the writes got.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Queues `job`; `false` (and the writer failed) if the thread is gone.
    pub fn submit(&self, job: Job) -> bool {
        let queued = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok());
        if !queued {
            self.progress
                .fail("the data log's writer thread is gone".into());
        }
        queued
    }

    /// Blocks until every job queued before this call has run (at once if
    /// the thread is gone).
    pub fn drain(&self) {
        let (done, finished) = mpsc::sync_channel(1);
        if self.submit(Box::new(move |_| {
            let _ = done.send(());
        })) {
            let _ = finished.recv();
        }
    }
}

impl Drop for DataWriter {
    /// Lets the thread finish the jobs queued and waits for it (never on
    /// the thread itself: jobs hold no handle of the writer).
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
