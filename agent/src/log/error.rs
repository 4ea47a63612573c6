//! Errors of the WAL. Callers match on the variant; only the server maps
//! them to gRPC statuses.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the WAL.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The offset is below the lowest retained record or past the last
    /// visible (durable) one.
    #[error("offset out of range: {offset}")]
    OffsetOutOfRange {
        /// The offset that was asked for.
        offset: u64,
    },
    /// Bytes on disk that are not a valid record where one must be: a
    /// sealed segment that does not end where the next begins, a bad file
    /// header, or a record whose checksum fails on read.
    #[error("corrupt segment {}: at position {position}: {reason}", segment.display())]
    Corrupt {
        /// The file that holds the bad bytes.
        segment: PathBuf,
        /// Byte position in that file.
        position: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// A record longer than the on-disk length field can hold.
    #[error("record of {size} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// Size of the rejected record.
        size: u64,
        /// The largest size the format allows.
        max: u64,
    },
    /// An earlier write or fsync failed. The kernel may have dropped the
    /// dirty pages, so the log refuses writes (and makes nothing more
    /// visible) until it is reopened and recovered.
    #[error("an earlier write or fsync failed; the log refuses writes until it is reopened")]
    SyncFailed,
    /// The log was closed.
    #[error("log is closed")]
    Closed,
    /// An I/O error on a named file or directory.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Result alias of the WAL.
pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// Attaches a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| LogError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
