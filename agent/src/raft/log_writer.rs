//! The Raft log's writer: one thread that does every change to the WAL of
//! Raft entries (appends, truncations, purges, the close) in the order
//! openraft asked for them, off the async threads.
//!
//! With `--sync always` the thread also runs the fdatasync that covers the
//! appends it drained from its queue, then fires their flush callbacks:
//! the write, its sync and the callback to openraft's core happen with no
//! thread hand-off in between (openraft 0.9's core waits for the flush of
//! each append before it goes on, so every hand-off here is latency).
//! Appends that arrive during a sync share the next one (group commit).
//!
//! The thread holds the log only while it works on a batch of jobs, and
//! lets go of it before it answers: once a caller has its answer, dropping
//! the last [`super::LogStore`] closes the log on the caller's side.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use openraft::storage::LogFlushed;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::hops::{HopClock, Stage};
use super::{queue_room, TypeConfig};
use crate::log::{Log, LogError, SyncPolicy};

/// The most jobs the thread takes from its queue before it syncs.
const MAX_DRAIN: usize = 1024;

/// Something the thread does after a batch, once it let go of the log:
/// answer a caller.
type Answer = Box<dyn FnOnce() + Send>;

/// A change to the log, or work that must see every change before it.
enum Job {
    Append(Append),
    Run(Box<dyn FnOnce(&Log) -> Answer + Send>),
}

/// Entries to write, encoded, and the callback to fire once they are
/// durable (or written, when the policy does not sync on append).
struct Append {
    records: Vec<Vec<u8>>,
    indexes: Range<u64>,
    callback: LogFlushed<TypeConfig>,
    hops: Arc<HopClock>,
    /// The queue's room these records take, given back once answered.
    _room: OwnedSemaphorePermit,
}

/// The handle of the writer thread; the thread ends when it is dropped.
#[derive(Debug)]
pub(super) struct LogWriter {
    jobs: mpsc::UnboundedSender<Job>,
    /// Bytes of records queued and not yet written, bounded so that a
    /// slow disk slows openraft down instead of filling memory.
    room: Arc<Semaphore>,
    room_bytes: u32,
    /// Index of the next entry to append: past every entry handed to the
    /// thread, written or not.
    accepted: Arc<AtomicU64>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Append(a) => write!(f, "Append({:?})", a.indexes),
            Job::Run(_) => f.write_str("Run"),
        }
    }
}

impl LogWriter {
    /// Starts the writer of `log` under `policy` (`Always`: sync on this
    /// thread before the flush callback; otherwise the callback fires once
    /// the entries are written, and the log's own syncer syncs them), with
    /// at most `room_bytes` of records queued.
    pub fn start(log: &Arc<Log>, policy: SyncPolicy, room_bytes: u64) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::unbounded_channel();
        let weak = Arc::downgrade(log);
        let sync_here = policy == SyncPolicy::Always;
        std::thread::Builder::new()
            .name("proglog-raftlog".into())
            .spawn(move || run(queue, weak, sync_here))?;
        let room_bytes = room_bytes.clamp(1, u64::from(u32::MAX >> 4)) as u32;
        Ok(LogWriter {
            jobs,
            room: Arc::new(Semaphore::new(room_bytes as usize)),
            room_bytes,
            accepted: Arc::new(AtomicU64::new(log.written_offset())),
        })
    }

    /// Index of the next entry to append.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Acquire)
    }

    /// Queues `records` (the encoded entries `indexes`), once the queue has
    /// room for them; `callback` fires when they are flushed. A writer that
    /// is gone fails the callback at once.
    pub async fn append(
        &self,
        records: Vec<Vec<u8>>,
        indexes: Range<u64>,
        callback: LogFlushed<TypeConfig>,
        hops: Arc<HopClock>,
    ) {
        let bytes: usize = records.iter().map(Vec::len).sum();
        let Ok(room) = queue_room(&self.room, bytes, self.room_bytes).await else {
            callback.log_io_completed(Err(std::io::Error::other(LogError::Closed)));
            return;
        };
        self.accepted.store(indexes.end, Ordering::Release);
        let job = Job::Append(Append {
            records,
            indexes,
            callback,
            hops,
            _room: room,
        });
        if let Err(mpsc::error::SendError(Job::Append(a))) = self.jobs.send(job) {
            a.callback
                .log_io_completed(Err(std::io::Error::other(LogError::Closed)));
        }
    }

    /// Runs `f` on the log after every job queued before it, and makes the
    /// accepted index the log's written offset afterwards (`f` may have
    /// truncated or reset it).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Log) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let (tx, rx) = oneshot::channel();
        self.submit(f, move |out| {
            let _ = tx.send(out);
        })?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    /// [`LogWriter::run`] for a caller that may block (a close).
    pub fn run_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Log) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(f, move |out| {
            let _ = tx.send(out);
        })?;
        rx.recv().map_err(|_| LogError::Closed)?
    }

    fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Log) -> Result<T, LogError> + Send + 'static,
        answer: impl FnOnce(Result<T, LogError>) + Send + 'static,
    ) -> Result<(), LogError> {
        // Nothing appends until the caller has its answer (openraft awaits
        // each storage call), so the offset the job leaves is where the
        // next append goes.
        let accepted = Arc::clone(&self.accepted);
        let job = Job::Run(Box::new(move |log: &Log| {
            let out = f(log);
            accepted.store(log.written_offset(), Ordering::Release);
            Box::new(move || answer(out)) as Answer
        }));
        self.jobs.send(job).map_err(|_| LogError::Closed)
    }
}

/// The thread's loop: takes what is queued, does it, answers; returns once
/// every handle is dropped.
fn run(mut queue: mpsc::UnboundedReceiver<Job>, log: Weak<Log>, sync_here: bool) {
    let mut jobs = Vec::new();
    let mut answers = Vec::new();
    while let Some(job) = queue.blocking_recv() {
        jobs.push(job);
        while jobs.len() < MAX_DRAIN {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        match log.upgrade() {
            Some(log) => {
                let mut flushing = Vec::new();
                for job in jobs.drain(..) {
                    work(&log, job, sync_here, &mut flushing, &mut answers);
                }
                flush(&log, &mut flushing, &mut answers);
            }
            None => answers.extend(jobs.drain(..).map(gone)),
        }
        answers.drain(..).for_each(|answer| answer());
    }
}

/// Does one job: writes an append (its flush joins `flushing` when the
/// thread syncs it, else it is answered now), or runs a job after
/// flushing every append before it.
fn work(
    log: &Log,
    job: Job,
    sync_here: bool,
    flushing: &mut Vec<Append>,
    answers: &mut Vec<Answer>,
) {
    match job {
        Job::Append(append) => {
            let written = if sync_here {
                log.append_batch_unsynced(&append.records).map(|_| ())
            } else {
                log.append_batch(&append.records).map(|_| ())
            };
            match written {
                Ok(()) => {
                    append.hops.stamp(append.indexes.clone(), Stage::Written);
                    if sync_here {
                        flushing.push(append);
                    } else {
                        answers.push(flushed(append, &Ok(())));
                    }
                }
                Err(e) => {
                    // The log has failed: earlier appends hear it from
                    // their sync, this one now, in order.
                    flush(log, flushing, answers);
                    answers.push(flushed(append, &Err(e)));
                }
            }
        }
        Job::Run(f) => {
            flush(log, flushing, answers);
            answers.push(f(log));
        }
    }
}

/// Syncs what `flushing` wrote (on this thread) and queues their answers.
fn flush(log: &Log, flushing: &mut Vec<Append>, answers: &mut Vec<Answer>) {
    if flushing.is_empty() {
        return;
    }
    let synced = log.sync_here();
    answers.extend(flushing.drain(..).map(|append| flushed(append, &synced)));
}

/// The answer to an append: its flush callback with `result`.
fn flushed(append: Append, result: &Result<(), LogError>) -> Answer {
    let result = result
        .as_ref()
        .map(|_| ())
        .map_err(|e| std::io::Error::other(e.to_string()));
    if result.is_ok() {
        append.hops.stamp(append.indexes.clone(), Stage::Flushed);
    }
    Box::new(move || append.callback.log_io_completed(result))
}

/// The answer to a job whose log is gone (every store was dropped).
fn gone(job: Job) -> Answer {
    match job {
        Job::Append(append) => flushed(append, &Err(LogError::Closed)),
        // Dropping the job drops its answer's sender: the caller hears
        // that the writer is closed.
        Job::Run(_) => Box::new(|| ()),
    }
}
