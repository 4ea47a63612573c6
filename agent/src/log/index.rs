//! The index: fixed-width entries `relative offset u32 | position u64`
//! in a file mapped with memmap2, one per record of the segment's store.
//!
//! File layout: a 16-byte header (`PLOGIDX\0`, version u16, flags u16,
//! entry count u32), then the entries. The file is sized to its maximum, its
//! space reserved (fallocate: a mapped write to a full disk is a SIGBUS), when
//! created. The count in the header is trusted only when the `CLEAN` flag is
//! set (written by seal/close, after the entries are flushed; cleared
//! before the segment takes appends); otherwise recovery rebuilds every
//! entry from a scan of the store. The index is never synced on the append
//! path: the store is the truth and the index can be rebuilt from it. The
//! mapping goes through [`super::fs::MappedFile`] so a simulated disk sees
//! its writes.

use std::path::{Path, PathBuf};

use super::error::{IoContext, Result};
use super::fs::{FileSystem, MappedFile};

const MAGIC: [u8; 8] = *b"PLOGIDX\0";
const VERSION: u16 = 1;
const FLAG_CLEAN: u16 = 1;
/// Bytes of the index header.
pub const HEADER_LEN: u64 = 16;
/// Bytes of one index entry.
pub const ENTRY_LEN: u64 = 12;

/// One mapped index file.
#[derive(Debug)]
pub struct Index {
    path: PathBuf,
    map: Box<dyn MappedFile>,
    count: u64,
    capacity: u64,
}

impl Index {
    /// Creates an index file of `max_bytes` (at least room for one entry).
    pub fn create(fs: &dyn FileSystem, path: &Path, max_bytes: u64) -> Result<Index> {
        let capacity =
            (max_bytes.saturating_sub(HEADER_LEN) / ENTRY_LEN).clamp(1, u64::from(u32::MAX));
        let file = fs.create(path).at(path)?;
        // Space reserved, not only a sparse length: entries are written
        // through the mapping, where a full disk would be a SIGBUS.
        file.allocate(HEADER_LEN + capacity * ENTRY_LEN).at(path)?;
        let mut index = Index {
            path: path.to_path_buf(),
            map: file.map().at(path)?,
            count: 0,
            capacity,
        };
        let mut head = [0u8; 10];
        head[..8].copy_from_slice(&MAGIC);
        head[8..].copy_from_slice(&VERSION.to_le_bytes());
        index.map.write(0, &head);
        index.write_header(0);
        index.flush_all()?;
        Ok(index)
    }

    /// Opens an existing index. Its entry count is not known yet: see
    /// [`Index::clean_count`] and [`Index::rebuild`].
    pub fn open(fs: &dyn FileSystem, path: &Path) -> Result<Index> {
        let (file, len) = super::open_existing(fs, path)?;
        let corrupt = |reason| super::bad_header(path, reason);
        if len < HEADER_LEN + ENTRY_LEN {
            return Err(corrupt("index file shorter than its header"));
        }
        let index = Index {
            path: path.to_path_buf(),
            map: file.map().at(path)?,
            count: 0,
            capacity: ((len - HEADER_LEN) / ENTRY_LEN).min(u64::from(u32::MAX)),
        };
        let bytes = index.map.bytes();
        if bytes[..8] != MAGIC {
            return Err(corrupt("bad magic: not a proglog index"));
        }
        if u16::from_le_bytes([bytes[8], bytes[9]]) != VERSION {
            return Err(corrupt("unsupported index format version"));
        }
        Ok(index)
    }

    fn flush_all(&self) -> Result<()> {
        let len = (HEADER_LEN + self.capacity * ENTRY_LEN) as usize;
        self.map.flush_range(0, len).at(&self.path)
    }

    /// Number of entries.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Entries the file has room for.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether no more entries fit.
    pub fn is_full(&self) -> bool {
        self.count >= self.capacity
    }

    /// Entries that still fit.
    pub fn room(&self) -> u64 {
        self.capacity - self.count
    }

    fn slot(&self, i: u64) -> (u32, u64) {
        let at = (HEADER_LEN + i * ENTRY_LEN) as usize;
        let e = &self.map.bytes()[at..at + ENTRY_LEN as usize];
        (
            u32::from_le_bytes(e[..4].try_into().expect("4 bytes")),
            u64::from_le_bytes(e[4..].try_into().expect("8 bytes")),
        )
    }

    /// Position in the store of the record with relative offset `rel`.
    pub fn position(&self, rel: u64) -> Option<u64> {
        (rel < self.count).then(|| self.slot(rel).1)
    }

    /// Adds the entry for the next record. The segment checks room first.
    pub fn push(&mut self, pos: u64) {
        debug_assert!(self.count < self.capacity, "segment checks room first");
        let at = (HEADER_LEN + self.count * ENTRY_LEN) as usize;
        let mut e = [0u8; ENTRY_LEN as usize];
        e[..4].copy_from_slice(&(self.count as u32).to_le_bytes());
        e[4..].copy_from_slice(&pos.to_le_bytes());
        self.map.write(at, &e);
        self.count += 1;
    }

    /// The entry count recorded by a clean seal or close, if the header
    /// has the clean flag and a count that fits; `None` otherwise (the
    /// entries are then rebuilt from a scan of the store).
    pub fn clean_count(&mut self) -> Option<u64> {
        let bytes = self.map.bytes();
        let flags = u16::from_le_bytes([bytes[10], bytes[11]]);
        let stored = u64::from(u32::from_le_bytes(
            bytes[12..16].try_into().expect("4 bytes"),
        ));
        if flags & FLAG_CLEAN == 0 || stored > self.capacity {
            return None;
        }
        self.count = stored;
        Some(stored)
    }

    /// Replaces the entries with `positions` (from a scan of the store)
    /// and zeroes what followed, so no stale entry survives. The caller
    /// checks that they fit.
    pub fn rebuild(&mut self, positions: &[u64]) {
        self.count = 0;
        for &pos in positions {
            self.push(pos);
        }
        self.clear_stale();
    }

    /// Keeps the first `count` entries and zeroes the rest, so a later
    /// recovery can't mistake them for live entries.
    pub fn truncate(&mut self, count: u64) {
        let from = (HEADER_LEN + count * ENTRY_LEN) as usize;
        let to = (HEADER_LEN + self.count.max(count) * ENTRY_LEN) as usize;
        if to > from {
            self.map.write(from, &vec![0u8; to - from]);
        }
        self.count = count;
    }

    fn write_header(&mut self, flags: u16) {
        let mut h = [0u8; 6];
        h[..2].copy_from_slice(&flags.to_le_bytes());
        h[2..].copy_from_slice(&(self.count as u32).to_le_bytes());
        self.map.write(10, &h);
    }

    /// Zeroes stale entries from `count` on, up to the first all-zero slot,
    /// after recovery decided that only `count` entries are live.
    pub fn clear_stale(&mut self) {
        let mut i = self.count;
        while i < self.capacity && self.slot(i) != (0, 0) {
            let at = (HEADER_LEN + i * ENTRY_LEN) as usize;
            self.map.write(at, &[0u8; ENTRY_LEN as usize]);
            i += 1;
        }
    }

    /// Records the count with the clean flag: the entries are flushed
    /// first, then the header, so a clean flag never vouches for entries
    /// that did not reach the disk.
    pub fn mark_clean(&mut self) -> Result<()> {
        self.flush_all()?;
        self.write_header(FLAG_CLEAN);
        self.map.flush_range(0, HEADER_LEN as usize).at(&self.path)
    }

    /// Clears the clean flag (durably) before the segment takes appends.
    pub fn mark_dirty(&mut self) -> Result<()> {
        self.write_header(0);
        self.map.flush_range(0, HEADER_LEN as usize).at(&self.path)
    }
}
