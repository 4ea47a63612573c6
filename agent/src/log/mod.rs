//! The write-ahead log: ordered segments of framed, checksummed records.
//!
//! Layers, bottom up (as in the book): [`store`] frames records in an
//! append-only file, [`index`] maps relative offsets to store positions in a
//! memory-mapped file, [`segment`] pairs the two and recovers them, a
//! segment set keeps them ordered and never empty, the syncer
//! group-commits syncs and keeps the watermarks, and [`Log`] joins them.
//! Every file operation goes through [`fs::FileSystem`], so tests can run
//! the log on a simulated disk that loses unsynced writes at a "power cut"
//! and fails on demand. This module does blocking file I/O and knows
//! nothing of Raft or gRPC; async callers use `spawn_blocking`.

mod error;
pub mod fs;
pub mod index;
pub mod segment;
mod segments;
pub mod store;
mod syncer;
mod wal;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use error::IoContext;
pub use error::{LogError, Result};
pub use segments::LogReader;
pub use wal::{Appended, Log, SegmentInfo, SyncStats};

/// When appends are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// An append returns only after an fdatasync covered it. Appends that
    /// arrive while a sync is in flight share the next one (group commit).
    Always,
    /// A background thread syncs at this interval; appends return at once
    /// and become readable after the sync that covers them.
    Interval(Duration),
    /// Never sync on the append path (the OS writes back). Records are
    /// readable as soon as they are written; for logs whose durability
    /// comes from elsewhere, such as a state machine replayed from Raft.
    Never,
}

/// Settings of one [`Log`].
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A segment's store is full when the next record would pass this size.
    pub max_store_bytes: u64,
    /// Size of each index file; bounds the records per segment (12 bytes
    /// each).
    pub max_index_bytes: u64,
    /// Offset of the first record of a new, empty log.
    pub initial_offset: u64,
    /// Durability of appends.
    pub sync: SyncPolicy,
    /// Appenders wait once this many written bytes are not yet synced, so
    /// one sync never has to flush an unbounded amount.
    pub max_unsynced_bytes: u64,
    /// How far ahead of the write position the store is pre-written with
    /// zeros (by a background thread), so syncs don't also commit a file
    /// size change (0 disables).
    pub prealloc_bytes: u64,
    /// Where the files live: the real disk, or a simulated one in tests.
    pub fs: Arc<dyn fs::FileSystem>,
    /// Told how long each group-commit fdatasync took (the agent's fsync
    /// latency histogram); `None`: nobody listens.
    pub sync_observer: Option<Arc<dyn SyncObserver>>,
}

/// Hears of every group-commit fdatasync of a [`Log`] (metrics). Called on
/// the syncing thread right after the fdatasync returns, before the round
/// publishes: it must be cheap and must not block (a histogram record).
pub trait SyncObserver: Send + Sync + std::fmt::Debug {
    /// One fdatasync of a sync round took `took` (failed ones included).
    fn synced(&self, took: Duration);
}

impl LogConfig {
    /// The per-segment part of the config.
    pub fn limits(&self) -> segment::SegmentLimits {
        segment::SegmentLimits {
            max_store_bytes: self.max_store_bytes,
            max_index_bytes: self.max_index_bytes,
            prealloc_bytes: self.prealloc_bytes,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_store_bytes: 64 << 20,
            max_index_bytes: 8 << 20,
            initial_offset: 0,
            sync: SyncPolicy::Always,
            max_unsynced_bytes: 16 << 20,
            prealloc_bytes: 4 << 20,
            fs: Arc::new(fs::RealFs),
            sync_observer: None,
        }
    }
}

/// fsyncs a directory of the real disk so that files created, removed or
/// renamed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::FileSystem::sync_dir(&fs::RealFs, dir).at(dir)
}

/// Opens an existing segment file for reading and writing; returns it with
/// its length.
pub(crate) fn open_existing(
    fs: &dyn fs::FileSystem,
    path: &Path,
) -> Result<(Arc<dyn fs::FileHandle>, u64)> {
    let file = fs.open(path).at(path)?;
    let len = file.size().at(path)?;
    Ok((file, len))
}

/// A [`LogError::Corrupt`] about the header of `path`.
pub(crate) fn bad_header(path: &Path, reason: &'static str) -> LogError {
    LogError::Corrupt {
        segment: path.to_path_buf(),
        position: 0,
        reason,
    }
}

/// The lowest offset to keep so that the retained segments hold at most
/// `max_bytes` (0: no limit) and none was last written longer than
/// `max_age` ago (`None`: no limit). The active (last) segment always stays.
pub fn retention_point(
    segments: &[SegmentInfo],
    max_bytes: u64,
    max_age: Option<Duration>,
    now: std::time::SystemTime,
) -> u64 {
    let Some(last) = segments.last() else {
        return 0;
    };
    let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
    for s in &segments[..segments.len() - 1] {
        let too_big = max_bytes > 0 && total > max_bytes;
        let too_old = match (max_age, s.modified) {
            (Some(age), Some(modified)) => now.duration_since(modified).is_ok_and(|d| d > age),
            _ => false,
        };
        if !too_big && !too_old {
            return s.base;
        }
        total -= s.bytes;
    }
    last.base
}
