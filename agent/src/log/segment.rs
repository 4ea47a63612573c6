//! A segment: one store and its index, holding the records with offsets
//! from `base` on, in files `{base:020}.store` and `{base:020}.index`.
//!
//! The segment decides what fits (checking room in both files before a
//! write, so a full index never leaves an orphan store entry) and recovers
//! itself on open. It knows nothing about other segments or syncing policy.

use std::fs;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::error::{IoContext, LogError, Result};
use super::index::Index;
use super::store::{self, ScanEnd, Store};

/// Size limits of one segment.
#[derive(Debug, Clone, Copy)]
pub struct SegmentLimits {
    /// The store is full when the next record would pass this size.
    pub max_store_bytes: u64,
    /// Size of the index file; it bounds the records per segment.
    pub max_index_bytes: u64,
    /// How far ahead of the write position the store is pre-written with
    /// zeros (0 disables pre-writing).
    pub prealloc_bytes: u64,
}

/// Path of the store file of the segment starting at `base`.
pub fn store_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.store"))
}

/// Path of the index file of the segment starting at `base`.
pub fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}

/// One store + index pair.
#[derive(Debug)]
pub struct Segment {
    base: u64,
    store: Store,
    index: Index,
    limits: SegmentLimits,
    /// Whether open found a clean index (a sealed segment or a clean close).
    opened_clean: bool,
}

impl Segment {
    /// Creates the files of an empty segment. The caller syncs the directory.
    pub fn create(dir: &Path, base: u64, limits: SegmentLimits) -> Result<Segment> {
        let store = Store::create(&store_path(dir, base))?;
        let index = Index::create(&index_path(dir, base), limits.max_index_bytes)?;
        Ok(Segment {
            base,
            store,
            index,
            limits,
            opened_clean: true,
        })
    }

    /// Opens a segment and recovers it: the index is checked against the
    /// store (and rebuilt from it if they disagree), records the index
    /// missed are added, and a torn or corrupt tail is cut off and logged.
    /// After a clean close only the last entry is read.
    pub fn open(dir: &Path, base: u64, limits: SegmentLimits) -> Result<Segment> {
        let store_file = store_path(dir, base);
        let store = match Store::open(&store_file) {
            Ok(store) => store,
            // A crash while creating the segment leaves a store that never
            // held a record: start it again.
            Err(LogError::Corrupt { .. }) if file_len(&store_file)? < store::HEADER_LEN + 1 => {
                warn!(segment = %store_file.display(), "store without a whole header, recreating it");
                remove_if_exists(&store_file)?;
                remove_if_exists(&index_path(dir, base))?;
                let segment = Segment::create(dir, base, limits)?;
                super::sync_dir(dir)?;
                return Ok(segment);
            }
            Err(e) => return Err(e),
        };
        let index_file = index_path(dir, base);
        let index = match Index::open(&index_file) {
            Ok(index) => Some(index),
            Err(e) => {
                warn!(error = %e, "index unusable, rebuilding it from the store");
                None
            }
        };
        let mut segment = Segment {
            base,
            store,
            index: match index {
                Some(index) => index,
                None => {
                    remove_if_exists(&index_file)?;
                    let index = Index::create(&index_file, limits.max_index_bytes)?;
                    super::sync_dir(dir)?;
                    index
                }
            },
            limits,
            opened_clean: false,
        };
        segment.opened_clean = segment.recover()?;
        Ok(segment)
    }

    /// Returns whether the segment was cleanly closed and needed no repair.
    fn recover(&mut self) -> Result<bool> {
        let (mut count, clean) = self.index.recover_count();
        let mut end = store::HEADER_LEN;
        if count > 0 {
            let last = self.index.position(count - 1).expect("count > 0");
            match self.store.verify(last, self.base + count - 1)? {
                Some(e) => end = e,
                None => {
                    warn!(segment = %self.store.path().display(),
                        "index disagrees with the store, rebuilding it");
                    self.index.truncate(0);
                    count = 0;
                }
            }
        }
        let (found, valid_end, how) = self.store.scan(end, self.base + count)?;
        let allocated = file_len(self.store.path())?;
        if how == ScanEnd::Torn {
            warn!(segment = %self.store.path().display(), position = valid_end,
                dropped_bytes = allocated - valid_end,
                "torn or corrupt tail cut back to the last whole record");
        } else if !found.is_empty() {
            info!(segment = %self.store.path().display(), records = found.len(),
                "recovered records missing from the index");
        }
        let repaired = !found.is_empty();
        if found.len() as u64 > self.index.room() {
            self.rebuild_index(count, &found)?;
        } else {
            for pos in found {
                self.index.push(pos);
            }
        }
        self.index.clear_stale();
        self.store.set_size(valid_end);
        if allocated != valid_end {
            self.store.truncate(valid_end)?;
        } else if !clean {
            // Records recovered from the page cache become durable before
            // anyone can read them.
            self.store.sync()?;
        }
        Ok(clean && !repaired && how == ScanEnd::Clean && allocated == valid_end)
    }

    /// Whether open found the segment cleanly sealed, needing no repair.
    pub fn opened_clean(&self) -> bool {
        self.opened_clean
    }

    /// Replaces the index with a larger one holding the first `kept`
    /// entries of the current index followed by `more`.
    fn rebuild_index(&mut self, kept: u64, more: &[u64]) -> Result<()> {
        let path = index_path(self.store.path().parent().expect("in a dir"), self.base);
        let needed = kept + more.len() as u64;
        let positions: Vec<u64> = (0..kept)
            .map(|rel| self.index.position(rel).expect("kept entries exist"))
            .chain(more.iter().copied())
            .collect();
        let tmp = path.with_extension("index.tmp");
        remove_if_exists(&tmp)?;
        let size = super::index::HEADER_LEN + needed * super::index::ENTRY_LEN;
        let mut index = Index::create(&tmp, size.max(self.limits.max_index_bytes))?;
        for pos in positions {
            index.push(pos);
        }
        fs::rename(&tmp, &path).at(&path)?;
        super::sync_dir(self.store.path().parent().expect("in a dir"))?;
        self.index = index;
        Ok(())
    }

    /// First offset of the segment.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Offset the next record appended here gets.
    pub fn next_offset(&self) -> u64 {
        self.base + self.index.count()
    }

    /// Whether the segment holds no record.
    pub fn is_empty(&self) -> bool {
        self.index.count() == 0
    }

    /// Bytes of the store, header included.
    pub fn store_size(&self) -> u64 {
        self.store.size()
    }

    /// The store file's path.
    pub fn store_file(&self) -> &Path {
        self.store.path()
    }

    /// How many of the records with these payload lengths, taken in order,
    /// fit. An empty segment always takes the first record, however large,
    /// so an oversized record can't wedge the log.
    pub fn fit(&self, lens: impl IntoIterator<Item = usize>) -> usize {
        let mut size = self.store.size();
        let mut n = 0u64;
        for len in lens {
            let next = size + store::framed_len(len);
            let empty = self.is_empty() && n == 0;
            if n >= self.index.room() || (next > self.limits.max_store_bytes && !empty) {
                break;
            }
            size = next;
            n += 1;
        }
        n as usize
    }

    /// Appends records that [`Segment::fit`] accepted; returns the first
    /// offset. `buf` is scratch space. Not durable until synced.
    pub fn append<R: AsRef<[u8]>>(&mut self, records: &[R], buf: &mut Vec<u8>) -> Result<u64> {
        let first = self.next_offset();
        buf.clear();
        let mut rel_positions = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            rel_positions.push(buf.len() as u64);
            store::encode(buf, first + i as u64, r.as_ref());
        }
        let prealloc_to = match self.limits.prealloc_bytes {
            0 => 0,
            chunk => {
                (self.store.size() + buf.len() as u64 + chunk).min(self.limits.max_store_bytes)
            }
        };
        let start = self.store.append(buf, prealloc_to)?;
        for rel in rel_positions {
            self.index.push(start + rel);
        }
        Ok(first)
    }

    /// Reads the record at `offset`, which must lie in this segment.
    pub fn read(&self, offset: u64) -> Result<Vec<u8>> {
        let pos = offset
            .checked_sub(self.base)
            .and_then(|rel| self.index.position(rel))
            .ok_or(LogError::OffsetOutOfRange { offset })?;
        self.store.read(pos, offset)
    }

    /// A handle to the store file, to fdatasync outside the log's locks.
    pub fn sync_handle(&self) -> std::sync::Arc<std::fs::File> {
        self.store.file()
    }

    /// Syncs the store and records a clean index: done when the segment
    /// stops taking appends (rolled over, or the log closes).
    pub fn seal(&mut self) -> Result<()> {
        self.store.seal()?;
        self.index.mark_clean()
    }

    /// Marks the index as in use before the first append after open.
    pub fn unseal(&mut self) -> Result<()> {
        self.index.mark_dirty()
    }

    /// Drops every record after `offset` (which must be in this segment or
    /// just before it) and syncs the cut.
    pub fn truncate_after(&mut self, offset: u64) -> Result<()> {
        let keep = (offset + 1)
            .saturating_sub(self.base)
            .min(self.index.count());
        let cut = self.index.position(keep).unwrap_or(self.store.size());
        self.index.truncate(keep);
        self.store.truncate(cut)?;
        self.index.mark_dirty()
    }

    /// Deletes the segment's files (index first, so a crash leaves a store
    /// that is rebuilt, never an index without a store). The caller syncs
    /// the directory.
    pub fn remove(self) -> Result<()> {
        let dir = self.store.path().parent().expect("in a dir").to_path_buf();
        drop(self.index);
        remove_if_exists(&index_path(&dir, self.base))?;
        let store = self.store.path().to_path_buf();
        drop(self.store);
        remove_if_exists(&store)
    }
}

fn file_len(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path).at(path)?.len())
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at(path),
        _ => Ok(()),
    }
}
