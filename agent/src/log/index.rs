//! The index: fixed-width entries `relative offset u32 | position u64`
//! in a file mapped with memmap2, one per record of the segment's store.
//!
//! File layout: a 16-byte header (`PLOGIDX\0`, version u16, flags u16,
//! entry count u32), then the entries. The file is sized to its maximum when
//! created. The count in the header is trusted only when the `CLEAN` flag is
//! set (written by seal/close, cleared on open before any append); otherwise
//! recovery counts the entries that are well formed. The index is never
//! synced on the append path: the store is the truth and the index can be
//! rebuilt from it.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use super::error::{IoContext, Result};
use super::store;

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
    // Kept open so the mapping's file stays the one we created.
    _file: File,
    mmap: MmapMut,
    count: u64,
    capacity: u64,
}

impl Index {
    /// Creates an index file of `max_bytes` (at least room for one entry).
    pub fn create(path: &Path, max_bytes: u64) -> Result<Index> {
        let capacity =
            (max_bytes.saturating_sub(HEADER_LEN) / ENTRY_LEN).clamp(1, u64::from(u32::MAX));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .at(path)?;
        file.set_len(HEADER_LEN + capacity * ENTRY_LEN).at(path)?;
        let mut index = Index::map(path, file, capacity)?;
        index.mmap[..8].copy_from_slice(&MAGIC);
        index.mmap[8..10].copy_from_slice(&VERSION.to_le_bytes());
        index.write_header(0);
        index.mmap.flush().at(path)?;
        Ok(index)
    }

    /// Opens an existing index. Its entry count is not known yet: call
    /// [`Index::recover_count`].
    pub fn open(path: &Path) -> Result<Index> {
        let (file, len) = super::open_existing(path)?;
        let corrupt = |reason| super::bad_header(path, reason);
        if len < HEADER_LEN + ENTRY_LEN {
            return Err(corrupt("index file shorter than its header"));
        }
        let index = Index::map(path, file, (len - HEADER_LEN) / ENTRY_LEN)?;
        if index.mmap[..8] != MAGIC {
            return Err(corrupt("bad magic: not a proglog index"));
        }
        if u16::from_le_bytes([index.mmap[8], index.mmap[9]]) != VERSION {
            return Err(corrupt("unsupported index format version"));
        }
        Ok(index)
    }

    fn map(path: &Path, file: File, capacity: u64) -> Result<Index> {
        // SAFETY: the index file is private to this process: the data dir is
        // locked by one agent and nothing else writes or truncates the file
        // while it is mapped; every access goes through bounds-checked
        // slices of the mapping, which lives no longer than `file`.
        let mmap = unsafe { MmapMut::map_mut(&file) }.at(path)?;
        Ok(Index {
            path: path.to_path_buf(),
            _file: file,
            mmap,
            count: 0,
            capacity,
        })
    }

    /// Number of entries.
    pub fn count(&self) -> u64 {
        self.count
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
        let e = &self.mmap[at..at + ENTRY_LEN as usize];
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
        let e = &mut self.mmap[at..at + ENTRY_LEN as usize];
        e[..4].copy_from_slice(&(self.count as u32).to_le_bytes());
        e[4..].copy_from_slice(&pos.to_le_bytes());
        self.count += 1;
    }

    /// Decides how many entries are valid: the header count after a clean
    /// close, else the well-formed prefix (dense relative offsets, strictly
    /// increasing positions inside the store's header and length).
    /// Returns the count and whether the clean flag vouched for it.
    pub fn recover_count(&mut self) -> (u64, bool) {
        let flags = u16::from_le_bytes([self.mmap[10], self.mmap[11]]);
        let stored = u64::from(u32::from_le_bytes(
            self.mmap[12..16].try_into().expect("4 bytes"),
        ));
        if flags & FLAG_CLEAN != 0 && stored <= self.capacity {
            self.count = stored;
            return (stored, true);
        }
        let mut prev = None;
        let mut n = 0;
        while n < self.capacity {
            let (rel, pos) = self.slot(n);
            let in_order = match prev {
                None => pos == store::HEADER_LEN,
                Some(p) => pos >= p + store::ENTRY_HEADER_LEN,
            };
            if u64::from(rel) != n || !in_order {
                break;
            }
            prev = Some(pos);
            n += 1;
        }
        self.count = n;
        (n, false)
    }

    /// Keeps the first `count` entries and zeroes the rest, so a later
    /// recovery can't mistake them for live entries.
    pub fn truncate(&mut self, count: u64) {
        let from = (HEADER_LEN + count * ENTRY_LEN) as usize;
        let to = (HEADER_LEN + self.count.max(count) * ENTRY_LEN) as usize;
        self.mmap[from..to].fill(0);
        self.count = count;
    }

    fn write_header(&mut self, flags: u16) {
        self.mmap[10..12].copy_from_slice(&flags.to_le_bytes());
        self.mmap[12..16].copy_from_slice(&(self.count as u32).to_le_bytes());
    }

    /// Zeroes stale entries from `count` on, up to the first all-zero slot,
    /// after recovery decided that only `count` entries are live.
    pub fn clear_stale(&mut self) {
        let mut i = self.count;
        while i < self.capacity && self.slot(i) != (0, 0) {
            let at = (HEADER_LEN + i * ENTRY_LEN) as usize;
            self.mmap[at..at + ENTRY_LEN as usize].fill(0);
            i += 1;
        }
    }

    /// Records the count with the clean flag and flushes the whole map.
    pub fn mark_clean(&mut self) -> Result<()> {
        self.write_header(FLAG_CLEAN);
        self.mmap.flush().at(&self.path)
    }

    /// Clears the clean flag (durably) before the segment takes appends.
    pub fn mark_dirty(&mut self) -> Result<()> {
        self.write_header(0);
        self.mmap.flush_range(0, HEADER_LEN as usize).at(&self.path)
    }
}
