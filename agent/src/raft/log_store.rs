//! The Raft log on a WAL: entry `i` is record `i` of the WAL (Raft indexes
//! are dense too), written and synced by the writer thread of
//! [`super::log_writer`]; the vote and the last purged log id live in a
//! small metadata file replaced atomically.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, RaftLogReader};
use serde::{Deserialize, Serialize};

use super::hops::{HopClock, Stage};
use super::log_writer::LogWriter;
use super::recent::RecentEntries;
use super::{codec, io_error, Entry, LogId, StorageError, TypeConfig, Vote};
use crate::log::fs::{read_whole, replace_durably, FileSystem};
use crate::log::{Log, LogConfig, LogError};

/// What the Raft log keeps beside its entries. Written durably whenever
/// the vote or the purge point changes; the committed id rides along (it
/// need not be durable: it only lets a restarted node apply committed
/// entries before it hears from a leader) and is also written on close.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote>,
    last_purged: Option<LogId>,
    #[serde(default)]
    committed: Option<LogId>,
}

/// openraft's log storage over our WAL. Clones share the log.
#[derive(Debug, Clone)]
pub struct LogStore {
    log: Arc<Log>,
    /// Where the metadata file lives (the WAL's file system: the real
    /// disk, or a simulated one that power-loss tests cut).
    fs: Arc<dyn FileSystem>,
    meta_path: PathBuf,
    meta: Arc<Mutex<Meta>>,
    /// Does every change to `log`, in order.
    writer: Arc<LogWriter>,
    /// The entries appended last, for openraft's read-back before apply.
    recent: Arc<Mutex<RecentEntries>>,
    /// Stamps the append, write and flush of each entry.
    hops: Arc<HopClock>,
}

const META_FILE: &str = "raft-meta.json";

impl LogStore {
    /// Opens the Raft log in `dir` (entries in `dir/entries`) with the
    /// sync policy of `config` (the agent's `--sync`): with
    /// [`SyncPolicy::Always`] Raft hears of an entry once it is durable;
    /// otherwise once it is written, which a power loss can take back.
    pub fn open(dir: &Path, config: LogConfig) -> Result<LogStore, LogError> {
        let fs = Arc::clone(&config.fs);
        let (policy, room) = (config.sync, config.max_unsynced_bytes);
        let log = Log::open(
            dir.join("entries"),
            LogConfig {
                initial_offset: 0,
                ..config
            },
        )?;
        let meta_path = dir.join(META_FILE);
        let meta = match read_whole(&*fs, &meta_path) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).map_err(|_| LogError::Corrupt {
                segment: meta_path.clone(),
                position: 0,
                reason: "unreadable raft metadata",
            })?,
            Ok(None) => Meta::default(),
            Err(source) => {
                return Err(LogError::Io {
                    path: meta_path,
                    source,
                })
            }
        };
        let log = Arc::new(log);
        let writer = LogWriter::start(&log, policy, room).map_err(|source| LogError::Io {
            path: log.dir().to_path_buf(),
            source,
        })?;
        Ok(LogStore {
            log,
            fs,
            meta_path,
            meta: Arc::new(Mutex::new(meta)),
            writer: Arc::new(writer),
            recent: Arc::default(),
            hops: HopClock::off(),
        })
    }

    /// Stamps each entry's append, write and flush on `clock`.
    pub fn timed(self, clock: Arc<HopClock>) -> LogStore {
        LogStore {
            hops: clock,
            ..self
        }
    }

    /// Writes the metadata (with the latest committed id) and closes the
    /// log once the appends queued before are flushed. Blocks.
    pub fn close(&self) -> Result<(), LogError> {
        let bytes = serde_json::to_vec(&self.meta()).expect("metadata serializes");
        replace_durably(&*self.fs, &self.meta_path, &bytes).map_err(|source| LogError::Io {
            path: self.meta_path.clone(),
            source,
        })?;
        self.writer.run_blocking(Log::close)
    }

    fn meta(&self) -> Meta {
        self.meta.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes the metadata and replaces its file durably (temp file,
    /// fsync, rename, directory fsync) before returning.
    async fn update_meta(&self, change: impl FnOnce(&mut Meta)) -> std::io::Result<()> {
        let mut meta = self.meta();
        change(&mut meta);
        let (fs, path) = (Arc::clone(&self.fs), self.meta_path.clone());
        let bytes = serde_json::to_vec(&meta).expect("metadata serializes");
        tokio::task::spawn_blocking(move || replace_durably(&*fs, &path, &bytes))
            .await
            .map_err(std::io::Error::other)??;
        *self.meta.lock().unwrap_or_else(|e| e.into_inner()) = meta;
        Ok(())
    }

    /// The first half of [`RaftLogStorage::purge`] only: the metadata says
    /// `log_id` is purged, the WAL is untouched, as a crash between the two
    /// leaves them.
    #[cfg(test)]
    pub(crate) async fn purge_metadata_only(&self, log_id: LogId) -> std::io::Result<()> {
        self.update_meta(|m| m.last_purged = Some(log_id)).await
    }

    /// Index of the last entry openraft reported committed (`None`:
    /// none yet), for metrics.
    pub fn committed_index(&self) -> Option<u64> {
        self.meta().committed.map(|l| l.index)
    }

    /// The WAL of the entries, for metrics (its size and segments).
    pub fn wal(&self) -> &Arc<Log> {
        &self.log
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentEntries> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Index of the next entry to append (entries before it may still be
    /// on their way to the WAL).
    fn next_index(&self) -> u64 {
        self.writer.accepted()
    }

    /// Index of the first entry that may still be read.
    fn first_index(&self) -> u64 {
        let purged = self.meta().last_purged.map_or(0, |l| l.index + 1);
        purged.max(self.log.lowest_offset())
    }

    /// Makes pending appends durable, then runs `f` on the WAL, on the
    /// writer's thread. Truncation and purge go through here, so no flush
    /// callback can report entries that were removed meanwhile.
    async fn settled<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Log) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, StorageError> {
        self.writer
            .run(move |log| log.sync().and_then(|()| f(log)))
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))
    }
}

/// Runs `f` (disk work) on a blocking thread; a thread that died is a
/// storage error on the log.
async fn blocking<T: Send + 'static>(
    verb: ErrorVerb,
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io_error(ErrorSubject::Logs, verb, std::io::Error::other(e)))?
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        let (from, to) = (start.max(self.first_index()), end.min(self.next_index()));
        if from >= to {
            return Ok(Vec::new());
        }
        if let Some(entries) = self.recent().get(from, to) {
            return Ok(entries);
        }
        // Reads (page cache or disk) run on a blocking thread: openraft
        // reads entries here to apply and to replicate them. Entries still
        // queued for the writer are read after it wrote them, on its
        // thread (rare: the recent entries hold the last thousands).
        if to > self.log.written_offset() {
            return self
                .writer
                .run(move |log| Ok(read_entries(log, from, to)))
                .await
                .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        }
        let log = Arc::clone(&self.log);
        blocking(ErrorVerb::Read, move || read_entries(&log, from, to)).await
    }
}

/// Reads and decodes the entries `from..to`.
fn read_entries(log: &Log, from: u64, to: u64) -> Result<Vec<Entry>, StorageError> {
    let mut entries = Vec::with_capacity((to - from).min(1024) as usize);
    for i in from..to {
        let read_err = |e| io_error(ErrorSubject::Log(read_log_id(i)), ErrorVerb::Read, e);
        let bytes = log.read_unsynced(i).map_err(read_err)?;
        // An empty record (a hole padded by older versions) does not
        // decode: an error, as openraft's logs have no holes.
        let entry = codec::decode(&bytes)
            .map_err(|e| io_error(ErrorSubject::Log(read_log_id(i)), ErrorVerb::Read, e))?;
        entries.push(entry);
    }
    Ok(entries)
}

/// A placeholder log id naming index `i` in error reports.
fn read_log_id(i: u64) -> LogId {
    openraft::LogId::new(openraft::CommittedLeaderId::new(0, 0), i)
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged = self.meta().last_purged;
        let next = self.next_index();
        let last_log_id = if next > self.first_index() {
            let last = self.try_get_log_entries(next - 1..next).await?;
            last.first().map(|e| *e.get_log_id())
        } else {
            last_purged
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last_log_id.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.update_meta(|m| m.vote = Some(vote))
            .await
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.meta().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.meta
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.meta().committed)
    }

    /// Traced as one `raft.append` span per call (a batch of entries).
    #[tracing::instrument(
        level = "info",
        name = "raft.append",
        skip_all,
        fields(entries = tracing::field::Empty, first_index = tracing::field::Empty)
    )]
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let write_err = |e: LogError| io_error(ErrorSubject::Logs, ErrorVerb::Write, e);
        let Some(first) = entries.first() else {
            // Flushed once everything before it is: in the writer's order.
            let next = self.next_index();
            let hops = Arc::clone(&self.hops);
            self.writer
                .append(Vec::new(), next..next, callback, hops)
                .await;
            return Ok(());
        };
        let first_index = first.get_log_id().index;
        let indexes = first_index..first_index + entries.len() as u64;
        self.hops.stamp(indexes.clone(), Stage::Append);
        tracing::Span::current()
            .record("entries", entries.len())
            .record("first_index", first_index);
        let next = self.next_index();
        if first_index != next {
            if next <= self.first_index() {
                // A log with no readable entry (new, or purged past its
                // end, also when a crash came between the purge's metadata
                // update and its reset, leaving `next` below the first
                // index) starts where the new entries start. Entries below
                // the purge point stay unreadable, as purged ones are.
                self.settled(move |log| log.reset(first_index)).await?;
            } else {
                // openraft appends contiguously after truncating any
                // conflict: a hole or an overlap is a bug, never padded.
                return Err(write_err(LogError::Corrupt {
                    segment: self.log.dir().to_path_buf(),
                    position: first_index,
                    reason: "raft entries do not follow the log's last entry",
                }));
            }
        }
        // Encoding is CPU work, done here; the write, its sync and the
        // flush callback happen on the writer's thread, in order. The
        // entries are readable from `recent` until written.
        let records: Vec<Vec<u8>> = entries.iter().map(codec::encode).collect();
        self.recent().push(entries);
        self.writer
            .append(records, indexes, callback, Arc::clone(&self.hops))
            .await;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let index = log_id.index;
        self.recent().truncate_from(index);
        let lowest = self.log.lowest_offset();
        self.settled(move |log| match index.checked_sub(1) {
            Some(after) if index > lowest => log.truncate_suffix(after),
            _ => log.reset(index),
        })
        .await
    }

    /// Records the purge point durably, then drops the entries. A crash in
    /// between leaves entries at or below the purge point (even a WAL that
    /// ends before it); they are never read, and `append` starts an empty
    /// or purged-past log where the new entries start.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.update_meta(|m| m.last_purged = Some(log_id))
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.recent().purge_through(log_id.index);
        let keep_from = log_id.index + 1;
        self.settled(move |log| {
            if keep_from >= log.written_offset() {
                log.reset(keep_from)
            } else {
                log.truncate_prefix(keep_from).map(|_| ())
            }
        })
        .await
    }
}
