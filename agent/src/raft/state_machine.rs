//! The state machine: applies committed entries to the data log.
//!
//! Record entries append to the data log, which assigns dense offsets (blank
//! and membership entries take none) and answers with them; the producer
//! table makes retried sequences return their original offsets. The data
//! log does not fsync: on open it is cut back to the last snapshot, and
//! openraft applies the committed entries after it again from the Raft log.
//!
//! An apply is CPU work on openraft's state-machine task: it assigns
//! offsets and updates the producer table in memory, answers, and queues
//! its disk work (the record writes, retention's removals) for the data
//! log's writer thread ([`super::data_writer`]), which does it in apply
//! order. The records are durable already (in the Raft log); the data log
//! is how they are read.
//!
//! Reads never wait for applies: the data log sits in an `ArcSwap` (a
//! snapshot install swaps in a fully opened new log), the lowest offset is
//! an atomic, and the next written offset is a watch channel (the
//! watermark, moved by the writer) that lives as long as the state
//! machine, so consumers keep waiting on it across installs. A read of an
//! offset applied but not yet written waits for the writer (a produce's
//! answer can reach its client before its records are written). The
//! applied-state mutex is taken only by apply, snapshot builds and
//! installs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::{watch, Semaphore};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StoredMembership,
};

use super::data_writer::DataWriter;
use super::hops::{HopClock, Stage};
use super::producers::Verdict;
use super::snapshot::{AppliedState, SnapshotDir};
use super::transfer::SnapshotData;
use super::{
    entry_bytes, io_error, queue_room, Entry, LogId, Member, Request, Response, StorageError,
    TypeConfig,
};
use crate::log::{Log, LogConfig, LogError, SyncPolicy};
use crate::server::CommitError;

/// The answer to an append whose producer sequence was seen before: its
/// original offsets (a retry), or STALE (older than the producer's
/// window); `None` for a new sequence or no producer.
fn repeated(applied: &Applied, producer: &Option<(String, u64)>) -> Option<Response> {
    let (id, seq) = producer.as_ref()?;
    match applied.state.producers.check(id, *seq) {
        Verdict::Duplicate {
            first_offset,
            count,
        } => Some(Response::Appended {
            first_offset,
            count,
        }),
        Verdict::Stale { oldest } => Some(Response::StaleSequence { oldest }),
        Verdict::New => None,
    }
}

/// Everything applied so far.
#[derive(Debug, Clone, Default)]
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership<u64, Member>,
    state: AppliedState,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    config: LogConfig,
    /// The data log; replaced whole by a snapshot install.
    data: ArcSwap<Log>,
    /// Taken by apply, builds and installs; never by reads.
    applied: Mutex<Applied>,
    /// Mirror of `applied.state.lowest` for reads.
    lowest: AtomicU64,
    /// Mirror of `applied.state.next_offset`: records below it are
    /// applied, perhaps not yet written.
    applied_next: AtomicU64,
    /// Does the data log's disk work in apply order; its watermark (the
    /// next written offset, moved by the writer and by installs) outlives
    /// data-log swaps. A failed writer makes applies fail (fatal to
    /// openraft) and the reads that wait for it.
    writer: DataWriter,
    /// Bytes of records queued for the writer, bounded so that a slow disk
    /// slows applies down instead of filling memory.
    room: Arc<Semaphore>,
    snapshots: SnapshotDir,
    /// Serializes snapshot builds and installs; `true` once closed, after
    /// which they fail instead of touching the directory.
    snapshotting: tokio::sync::Mutex<bool>,
}

/// openraft's state machine over the data log. Clones share it.
#[derive(Debug, Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
    /// Stamps the apply of each entry.
    hops: Arc<HopClock>,
}

fn sm_error(e: impl std::error::Error + 'static) -> StorageError {
    io_error(ErrorSubject::StateMachine, ErrorVerb::Write, e)
}

fn snapshot_error(e: impl std::error::Error + 'static) -> StorageError {
    io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e)
}

/// Bytes of records the writer's queue holds at most.
const WRITER_ROOM: u32 = 16 << 20;

/// Disk work an apply leaves for the writer, in order.
#[derive(Debug)]
enum DataOp {
    /// Append the records that were given offsets from `start` on.
    Write { start: u64, records: Vec<Bytes> },
    /// Remove what lies below `lowest`.
    Retain { lowest: u64 },
}

impl StateMachine {
    /// Opens the state machine in `dir`: the data log in `dir/data`, cut
    /// back to the last snapshot in `dir/snapshots` (or emptied if none).
    pub fn open(dir: &Path, config: LogConfig) -> Result<StateMachine, LogError> {
        let config = LogConfig {
            sync: SyncPolicy::Never,
            initial_offset: 0,
            ..config
        };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LogError::Io { path, source }
        };
        let snapshots = SnapshotDir::open(dir.join("snapshots")).map_err(io(dir))?;
        let snapshot = snapshots.load_current().map_err(io(dir))?;
        let data_dir = dir.join("data");
        let (applied, data) = match snapshot {
            Some(file) => {
                let mut data = Log::open(&data_dir, config.clone())?;
                if data.next_offset() < file.state.next_offset
                    || data.lowest_offset() > file.state.next_offset
                {
                    // The data log lost what the snapshot holds: take the
                    // snapshot's files again.
                    drop(data);
                    std::fs::remove_dir_all(&data_dir).map_err(io(&data_dir))?;
                    snapshots.restore_into(&data_dir).map_err(io(&data_dir))?;
                    data = Log::open(&data_dir, config.clone())?;
                }
                cut_to(&data, file.state.next_offset)?;
                data.truncate_prefix(file.state.lowest)?;
                let applied = Applied {
                    last_applied: file.meta.last_log_id,
                    membership: file.meta.last_membership.clone(),
                    state: file.state,
                };
                (applied, data)
            }
            None => {
                let data = Log::open(&data_dir, config.clone())?;
                data.reset(0)?;
                (Applied::default(), data)
            }
        };
        for stale in ["data.installing", "data.old"] {
            let path = dir.join(stale);
            if path.exists() {
                std::fs::remove_dir_all(&path).map_err(io(&path))?;
            }
        }
        let writer = DataWriter::start(applied.state.next_offset).map_err(io(dir))?;
        Ok(StateMachine {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                config,
                data: ArcSwap::from_pointee(data),
                lowest: AtomicU64::new(applied.state.lowest),
                applied_next: AtomicU64::new(applied.state.next_offset),
                writer,
                room: Arc::new(Semaphore::new(WRITER_ROOM as usize)),
                applied: Mutex::new(applied),
                snapshots,
                snapshotting: tokio::sync::Mutex::new(false),
            }),
            hops: HopClock::off(),
        })
    }

    /// Stamps each entry's apply on `clock`.
    pub fn timed(self, clock: Arc<HopClock>) -> StateMachine {
        StateMachine {
            hops: clock,
            ..self
        }
    }

    /// Waits for a snapshot build or install in flight, refuses later ones,
    /// and closes the data log. openraft may still run a build after its
    /// core stopped; this keeps it from racing the next owner of the dir.
    pub async fn close(&self) -> Result<(), LogError> {
        *self.shared.snapshotting.lock().await = true;
        let this = self.clone();
        // Closing seals (syncs) the active segment: a blocking thread's
        // job, after the writer's.
        tokio::task::spawn_blocking(move || {
            this.shared.writer.drain();
            this.data().close()
        })
        .await
        .map_err(|e| LogError::Io {
            path: self.shared.dir.clone(),
            source: std::io::Error::other(e),
        })?
    }

    /// The current data log (for retention's view of its segments and for
    /// tests). A snapshot install replaces it: read through
    /// [`StateMachine::read`], which follows the swap.
    pub fn data(&self) -> Arc<Log> {
        self.shared.data.load_full()
    }

    /// Lowest offset readable (retention may sit inside a segment). Never
    /// waits for an apply.
    pub fn lowest_offset(&self) -> u64 {
        self.shared.lowest.load(Ordering::Acquire)
    }

    /// The offset after the last readable record: records below it are
    /// applied, written and readable (from the lowest offset on).
    pub fn next_offset(&self) -> u64 {
        self.shared.writer.progress().next()
    }

    /// A receiver of the next readable offset, updated after every write
    /// of applied records and every snapshot install. Unlike a data log's
    /// own watch, it survives the data log being replaced by an install,
    /// so consumers waiting at the end of the log keep receiving.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.writer.progress().subscribe()
    }

    /// Why the data log failed (a write or sync, or its writer), if it
    /// did: the state machine refuses applies from then on.
    pub fn failure(&self) -> Option<String> {
        let writer = self.shared.writer.progress().failure();
        writer.or_else(|| {
            self.data()
                .is_failed()
                .then(|| "the data log failed a write or sync".to_string())
        })
    }

    /// Holds the writer (before anything queued after this call) until the
    /// returned sender is dropped.
    #[cfg(test)]
    pub(crate) fn stall_writer(&self) -> std::sync::mpsc::SyncSender<()> {
        let (release, stalled) = std::sync::mpsc::sync_channel::<()>(0);
        self.shared.writer.submit(Box::new(move |_| {
            let _ = stalled.recv();
        }));
        release
    }

    /// The data log once everything applied so far is written.
    #[cfg(test)]
    pub(crate) fn written(&self) -> Arc<Log> {
        self.shared.writer.drain();
        self.data()
    }

    /// Reads the applied record at `offset` without waiting for applies,
    /// builds or installs (an applied record the writer has not written
    /// yet is waited for: microseconds). Offsets outside `lowest..next` are
    /// [`CommitError::OutOfRange`] with the bounds checked against (two
    /// atomic loads, no disk I/O); one that retention removed between the
    /// check and the read gets the bounds as they are then. A read that
    /// raced an install and hit the closed old log is retried on the new
    /// one (same offsets, same records: the log is replicated).
    pub fn read(&self, offset: u64) -> Result<Bytes, CommitError> {
        let applied_next = || self.shared.applied_next.load(Ordering::Acquire);
        let next = self
            .shared
            .writer
            .progress()
            .wait_past(offset, applied_next)
            .map_err(|why| CommitError::Unavailable(format!("the data log failed: {why}")))?;
        let lowest = self.lowest_offset();
        if offset < lowest || offset >= next {
            return Err(CommitError::OutOfRange {
                offset,
                lowest,
                next,
            });
        }
        loop {
            let data = self.shared.data.load_full();
            match data.read(offset) {
                Err(LogError::Closed) if !Arc::ptr_eq(&data, &self.shared.data.load()) => {}
                Err(LogError::OffsetOutOfRange { .. }) => {
                    return Err(CommitError::OutOfRange {
                        offset,
                        lowest: self.lowest_offset(),
                        next: self.next_offset(),
                    })
                }
                other => return other.map(Bytes::from).map_err(CommitError::from),
            }
        }
    }

    /// Publishes the bounds of a state whose records are all written (an
    /// install's) to readers.
    fn publish(&self, state: &AppliedState) {
        self.shared.lowest.store(state.lowest, Ordering::Release);
        self.shared
            .applied_next
            .store(state.next_offset, Ordering::Release);
        self.shared.writer.progress().publish(state.next_offset);
    }

    /// Holds the applied-state lock (as a slow apply would), for tests
    /// showing that reads do not take it.
    #[cfg(test)]
    pub(crate) fn hold_apply_lock(&self) -> impl Sized + '_ {
        self.lock_applied()
    }

    /// The snapshot lock, unless the state machine is closed.
    async fn snapshot_lock(&self) -> Result<tokio::sync::MutexGuard<'_, bool>, StorageError> {
        let guard = self.shared.snapshotting.lock().await;
        if *guard {
            return Err(snapshot_error(LogError::Closed));
        }
        Ok(guard)
    }

    fn lock_applied(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.shared
            .applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn apply_request(
        &self,
        applied: &mut Applied,
        req: Request,
        ops: &mut Vec<DataOp>,
    ) -> Response {
        match req {
            // A lone append (as entries from before batching hold) is a
            // batch of one, which answers it once.
            append @ Request::Append { .. } => {
                let answers = self.apply_batch(applied, vec![append], ops);
                answers.into_iter().next().unwrap_or(Response::Empty)
            }
            Request::Batch(requests) => Response::Batch(self.apply_batch(applied, requests, ops)),
            Request::Retain { lowest } => {
                let lowest = lowest
                    .min(applied.state.next_offset)
                    .max(applied.state.lowest);
                // Readers see the new bound before the files go.
                self.shared.lowest.store(lowest, Ordering::Release);
                ops.push(DataOp::Retain { lowest });
                applied.state.lowest = lowest;
                Response::Retained { lowest }
            }
            Request::ProducerLimit { max } => {
                applied.state.producers.set_limit(max);
                Response::Empty
            }
        }
    }

    /// Applies the requests of one proposal batch, each answered as if
    /// applied alone, but with the records of its new appends written to
    /// the data log in one append (one write for the entry, not one per
    /// request). Offsets are assigned in request order from the applied
    /// next offset, and a retry later in the same batch finds the earlier
    /// request's sequence already recorded.
    fn apply_batch(
        &self,
        applied: &mut Applied,
        requests: Vec<Request>,
        ops: &mut Vec<DataOp>,
    ) -> Vec<Response> {
        let mut start = applied.state.next_offset;
        let mut records: Vec<Bytes> = Vec::new();
        let mut answers = Vec::with_capacity(requests.len());
        for request in requests {
            let (more, producer, at_ms) = match request {
                Request::Append {
                    records,
                    producer,
                    at_ms,
                } => (records, producer, at_ms),
                // The propose loop batches appends only; anything else is
                // applied in order, after the records before it.
                other => {
                    write_batch(ops, applied, start, std::mem::take(&mut records));
                    answers.push(self.apply_request(applied, other, ops));
                    start = applied.state.next_offset;
                    continue;
                }
            };
            if let Some(answer) = repeated(applied, &producer) {
                answers.push(answer);
                continue;
            }
            let first_offset = start + records.len() as u64;
            let count = more.len() as u64;
            if let Some((id, seq)) = producer {
                applied
                    .state
                    .producers
                    .record(&id, seq, first_offset, count, at_ms);
            }
            records.extend(more);
            answers.push(Response::Appended {
                first_offset,
                count,
            });
        }
        write_batch(ops, applied, start, records);
        answers
    }

    /// Builds a snapshot of everything applied. Under the applied-state
    /// lock only what must match the applied state: its copy, and hard
    /// links to the data log's store files with their lengths (no data is
    /// read or synced). The sync of the data log up to those lengths and
    /// the metadata write run after the lock is released, so applies wait
    /// only for the links, and reads never wait.
    async fn build(&self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let _guard = self.snapshot_lock().await?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let snapshots = &this.shared.snapshots;
            let (meta, state, building, data) = {
                let applied = this.lock_applied();
                // The data log holds everything applied once the writer
                // is done; no apply can queue more while the lock is held.
                this.shared.writer.drain();
                let data = this.data();
                let building = snapshots
                    .link(data.dir(), &data.segments())
                    .map_err(snapshot_error)?;
                let id = match applied.last_applied {
                    Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, now_ms()),
                    None => format!("none-{}", now_ms()),
                };
                let meta = SnapshotMeta {
                    last_log_id: applied.last_applied,
                    last_membership: applied.membership.clone(),
                    snapshot_id: id,
                };
                (meta, applied.state.clone(), building, data)
            };
            // Sealed segments were synced when sealed; this covers the
            // active one (and more, which is harmless).
            data.sync().map_err(snapshot_error)?;
            snapshots
                .finish(building, meta, state)
                .map_err(snapshot_error)?;
            this.open_current()?
                .ok_or_else(|| snapshot_error(LogError::Closed))
        })
        .await
        .map_err(|e| snapshot_error(std::io::Error::other(e)))?
    }

    /// The current snapshot, served as a reader over its files.
    fn open_current(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        match self.shared.snapshots.open_current() {
            Ok(Some((file, pack))) => Ok(Some(Snapshot {
                meta: file.meta,
                snapshot: Box::new(SnapshotData::reading(pack)),
            })),
            Ok(None) => Ok(None),
            Err(e) => Err(snapshot_error(e)),
        }
    }
}

/// Queues the write of the records a batch accepted, which were given
/// offsets from `start` on, and moves the applied next offset past them.
fn write_batch(ops: &mut Vec<DataOp>, applied: &mut Applied, start: u64, records: Vec<Bytes>) {
    if records.is_empty() {
        return;
    }
    applied.state.next_offset = start + records.len() as u64;
    ops.push(DataOp::Write { start, records });
}

/// Does an apply's disk work on `data`.
fn write_ops(data: &Log, ops: Vec<DataOp>) -> Result<(), LogError> {
    for op in ops {
        match op {
            DataOp::Write { start, records } => {
                let first = data.append_batch(&records)?;
                if first != start {
                    // Never expected: only the writer writes the data log,
                    // in apply order.
                    return Err(LogError::Io {
                        path: data.dir().to_path_buf(),
                        source: std::io::Error::other(format!(
                            "the data log appended a batch at offset {first}, the state \
                             machine answered from offset {start}"
                        )),
                    });
                }
            }
            DataOp::Retain { lowest } => {
                data.truncate_prefix(lowest)?;
            }
        }
    }
    Ok(())
}

/// Drops records at and after `next` from the data log.
fn cut_to(data: &Log, next: u64) -> Result<(), LogError> {
    if data.next_offset() > next {
        match next.checked_sub(1) {
            Some(after) if next > data.lowest_offset() => data.truncate_suffix(after)?,
            _ => data.reset(next)?,
        }
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Builds snapshots for openraft.
#[derive(Debug, Clone)]
pub struct Builder {
    sm: StateMachine,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.sm.build().await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<u64, Member>), StorageError> {
        let applied = self.lock_applied();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let indexes = match (entries.first(), entries.last()) {
            (Some(first), Some(last)) => first.log_id.index..last.log_id.index + 1,
            _ => 0..0,
        };
        self.hops.stamp(indexes.clone(), Stage::Apply);
        if let Some(why) = self.failure() {
            let failed = std::io::Error::other(why);
            return Err(sm_error(failed));
        }
        // Room in the writer's queue for these records, held until written.
        let bytes: usize = entries.iter().map(|e| entry_bytes(&e.payload)).sum();
        let room = queue_room(&self.shared.room, bytes, WRITER_ROOM)
            .await
            .map_err(|e| sm_error(std::io::Error::other(e)))?;
        self.hops.stamp(indexes.clone(), Stage::ApplyStart);
        let (replies, ops, next) = self.apply_in_memory(entries);
        self.hops.stamp(indexes.clone(), Stage::ApplyEnd);
        if !ops.is_empty() {
            // The log applied to now: an install drains the queue before
            // it swaps in another.
            let data = self.data();
            let queued = self.shared.writer.submit(Box::new(move |progress| {
                let result = write_ops(&data, ops);
                drop(room);
                match result {
                    Ok(()) => progress.publish(next),
                    Err(e) => {
                        tracing::error!(dir = %data.dir().display(), error = %e,
                            "writing the data log failed; the state machine refuses applies");
                        progress.fail(e.to_string());
                    }
                }
            }));
            if !queued {
                let gone = std::io::Error::other("the data log's writer thread is gone");
                return Err(sm_error(gone));
            }
        }
        self.hops.stamp(indexes, Stage::Applied);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Builder { sm: self.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        let snapshots = self.shared.snapshots.clone();
        let path = tokio::task::spawn_blocking(move || snapshots.receiving_file())
            .await
            .map_err(|e| snapshot_error(std::io::Error::other(e)))?
            .map_err(snapshot_error)?;
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .await
            .map_err(snapshot_error)?;
        Ok(Box::new(SnapshotData::receiving(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Member>,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let _guard = self.snapshot_lock().await?;
        let received = snapshot.into_received().await.map_err(snapshot_error)?;
        let this = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            let reader = received.into_reader().map_err(snapshot_error)?;
            this.install_blocking(reader, &meta)
        })
        .await
        .map_err(|e| snapshot_error(std::io::Error::other(e)))?
    }

    /// Serves the current snapshot as a reader over its hard-linked files
    /// (opened here; nothing is copied, at startup or later).
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let _guard = self.snapshot_lock().await?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.open_current())
            .await
            .map_err(|e| snapshot_error(std::io::Error::other(e)))?
    }
}

impl StateMachine {
    /// Applies entries in order under the applied-state lock (in memory):
    /// their answers, the disk work they leave for the writer, and the
    /// applied next offset after them.
    fn apply_in_memory(&self, entries: Vec<Entry>) -> (Vec<Response>, Vec<DataOp>, u64) {
        let mut replies = Vec::with_capacity(entries.len());
        let mut ops = Vec::new();
        // Applied in place under the lock: cloning the producer table per
        // entry batch would cost more than the append.
        let mut guard = self.lock_applied();
        let applied = &mut *guard;
        for entry in entries {
            let reply = match entry.payload {
                EntryPayload::Blank => Response::Empty,
                EntryPayload::Normal(req) => self.apply_request(applied, req, &mut ops),
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::Empty
                }
            };
            applied.last_applied = Some(entry.log_id);
            replies.push(reply);
        }
        let next = applied.state.next_offset;
        self.shared.applied_next.store(next, Ordering::Release);
        (replies, ops, next)
    }

    /// Makes a received snapshot current and replaces the data log with
    /// one opened from it. The new log is opened and cut to the snapshot's
    /// bounds before any lock is taken; only the swap itself holds the
    /// applied-state lock. Readers holding the old log keep reading it
    /// (its files stay open) until it is closed, then retry on the new one.
    fn install_blocking(
        &self,
        received: impl std::io::Read,
        meta: &SnapshotMeta<u64, Member>,
    ) -> Result<(), StorageError> {
        let snapshots = &self.shared.snapshots;
        let received = snapshots.receive(received, meta).map_err(snapshot_error)?;
        let dir = &self.shared.dir;
        let (data_dir, fresh, old) = (
            dir.join("data"),
            dir.join("data.installing"),
            dir.join("data.old"),
        );
        for stale in [&fresh, &old] {
            if stale.exists() {
                std::fs::remove_dir_all(stale).map_err(snapshot_error)?;
            }
        }
        // Check the received files as a data log before anything depends
        // on them: a snapshot whose segments do not chain is refused here,
        // leaving the current snapshot and the data log as they were.
        snapshots
            .restore_received(&received, &fresh)
            .map_err(snapshot_error)?;
        {
            let checked = Log::open(&fresh, self.shared.config.clone()).map_err(sm_error)?;
            let next = received.file.state.next_offset;
            if checked.next_offset() < next {
                return Err(sm_error(LogError::Corrupt {
                    segment: fresh.clone(),
                    position: checked.next_offset(),
                    reason: "the snapshot's data log ends before its next offset",
                }));
            }
            cut_to(&checked, next).map_err(sm_error)?;
            checked
                .truncate_prefix(received.file.state.lowest)
                .map_err(sm_error)?;
            checked.close().map_err(sm_error)?;
        }
        let file = snapshots
            .make_received_current(received)
            .map_err(snapshot_error)?;
        // The old log keeps its open files under `data.old`; nothing writes
        // to it meanwhile (apply and install are serialized by openraft,
        // builds by the snapshot lock). A crash here leaves no `data`, and
        // open restores it from the (already current) snapshot.
        std::fs::rename(&data_dir, &old).map_err(snapshot_error)?;
        std::fs::rename(&fresh, &data_dir).map_err(snapshot_error)?;
        crate::log::sync_dir(dir).map_err(sm_error)?;
        // Reopened clean: the check above rebuilt the indexes and cut it.
        let data = Log::open(&data_dir, self.shared.config.clone()).map_err(sm_error)?;
        let previous = {
            let mut applied = self.lock_applied();
            // Nothing may still be on its way to the old log.
            self.shared.writer.drain();
            let previous = self.shared.data.swap(Arc::new(data));
            *applied = Applied {
                last_applied: file.meta.last_log_id,
                membership: file.meta.last_membership.clone(),
                state: file.state,
            };
            self.publish(&applied.state);
            previous
        };
        if let Err(e) = previous.close() {
            tracing::warn!(error = %e, "closing the replaced data log failed");
        }
        drop(previous);
        if let Err(e) = std::fs::remove_dir_all(&old) {
            tracing::warn!(error = %e, dir = %old.display(), "removing the replaced data log failed");
        }
        Ok(())
    }
}
