//! A segment: one store and its index, holding the records with offsets
//! from `base` on, in files `{base:020}.store` and `{base:020}.index`.
//!
//! The segment decides what fits (checking room in both files before a
//! write, so a full index never leaves an orphan store entry) and recovers
//! itself on open. It knows nothing about other segments or syncing policy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use super::error::{IoContext, LogError, Result};
use super::fs::{FileHandle, FileSystem};
use super::index::Index;
use super::store::{self, Prealloc, ScanEnd, Store};

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

impl SegmentLimits {
    fn prealloc(&self) -> Prealloc {
        Prealloc {
            chunk: self.prealloc_bytes,
            max: self.max_store_bytes,
        }
    }
}

/// Path of the store file of the segment starting at `base`.
pub fn store_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.store"))
}

/// Path of the index file of the segment starting at `base`.
pub fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}

/// What recovery may assume about a segment being opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not the last segment: it was synced and sealed when the log rolled
    /// past it, and must hold exactly the records up to `next` (the next
    /// segment's base). Damage is reported, never repaired by cutting.
    Sealed {
        /// Base of the following segment.
        next: u64,
    },
    /// The last segment, which takes appends. After an unclean close every
    /// record is verified and the store is cut at the first bad one.
    Active,
}

/// One store + index pair.
#[derive(Debug)]
pub struct Segment {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    base: u64,
    store: Store,
    index: Index,
    limits: SegmentLimits,
}

impl Segment {
    /// Creates the files of an empty segment. The caller syncs the directory.
    pub fn create(
        fs: &Arc<dyn FileSystem>,
        dir: &Path,
        base: u64,
        limits: SegmentLimits,
    ) -> Result<Segment> {
        let mut store = Store::create(&**fs, &store_path(dir, base))?;
        let index = Index::create(&**fs, &index_path(dir, base), limits.max_index_bytes)?;
        store.prewrite_ahead(limits.prealloc());
        Ok(Segment {
            fs: Arc::clone(fs),
            dir: dir.to_path_buf(),
            base,
            store,
            index,
            limits,
        })
    }

    /// Opens a segment and recovers it as its `role` allows. A clean seal
    /// or close is trusted after checking the last record (fast); anything
    /// else is verified record by record (CRC, length, offset chain) and
    /// the index rebuilt from that scan. An active segment is cut at the
    /// first bad record; a damaged sealed one is reported with its store
    /// untouched.
    pub fn open(
        fs: &Arc<dyn FileSystem>,
        dir: &Path,
        base: u64,
        limits: SegmentLimits,
        role: Role,
    ) -> Result<Segment> {
        let store_file = store_path(dir, base);
        let store = match Store::open(&**fs, &store_file) {
            Ok(store) => store,
            // A crash while creating the segment leaves a store that never
            // held a record: start it again.
            Err(LogError::Corrupt { .. })
                if role == Role::Active
                    && file_len(&**fs, &store_file)? < store::HEADER_LEN + 1 =>
            {
                warn!(segment = %store_file.display(), "store without a whole header, recreating it");
                remove_if_exists(&**fs, &store_file)?;
                remove_if_exists(&**fs, &index_path(dir, base))?;
                let segment = Segment::create(fs, dir, base, limits)?;
                fs.sync_dir(dir).at(dir)?;
                return Ok(segment);
            }
            Err(e) => return Err(e),
        };
        let index_file = index_path(dir, base);
        let (index, scanned) = match Index::open(&**fs, &index_file) {
            Ok(index) => (index, None),
            Err(e) => {
                warn!(error = %e, "index unusable, rebuilding it from the store");
                // A sealed store is checked before anything is written.
                let scanned = match role {
                    Role::Sealed { next } => Some(Segment::scan_sealed(&store, base, next)?),
                    Role::Active => None,
                };
                remove_if_exists(&**fs, &index_file)?;
                let index = Index::create(&**fs, &index_file, limits.max_index_bytes)?;
                fs.sync_dir(dir).at(dir)?;
                (index, scanned)
            }
        };
        let mut segment = Segment {
            fs: Arc::clone(fs),
            dir: dir.to_path_buf(),
            base,
            store,
            index,
            limits,
        };
        match role {
            Role::Sealed { next } => segment.recover_sealed(next, scanned)?,
            Role::Active => segment.recover_active()?,
        }
        Ok(segment)
    }

    /// The end of the last record if the index was cleanly sealed or
    /// closed and its last entry checks out against the store, which ends
    /// right there.
    fn clean_end(&mut self) -> Result<Option<u64>> {
        let Some(count) = self.index.clean_count() else {
            return Ok(None);
        };
        let end = match count.checked_sub(1) {
            None => store::HEADER_LEN,
            Some(last) => {
                let pos = self.index.position(last).unwrap_or(u64::MAX);
                let Some(offset) = self.base.checked_add(last) else {
                    return Ok(None);
                };
                match self.store.verify(pos, offset)? {
                    Some(end) => end,
                    None => return Ok(None),
                }
            }
        };
        Ok((end == self.store.allocated()).then_some(end))
    }

    /// Scans a sealed store: it must hold whole, valid records with offsets
    /// `base..next` and nothing after them. Returns their positions and
    /// end, or the error that names where it is damaged.
    fn scan_sealed(store: &Store, base: u64, next: u64) -> Result<(Vec<u64>, u64)> {
        let expected = next.checked_sub(base).ok_or(LogError::Corrupt {
            segment: store.path().to_path_buf(),
            position: 0,
            reason: "segment starts after the next one",
        })?;
        let (found, end, how) = store.scan(store::HEADER_LEN, base)?;
        if (found.len() as u64) < expected || how == ScanEnd::Torn {
            return Err(LogError::Corrupt {
                segment: store.path().to_path_buf(),
                position: end,
                reason: "sealed segment is damaged: records are missing or corrupt",
            });
        }
        if found.len() as u64 > expected {
            return Err(LogError::Corrupt {
                segment: store.path().to_path_buf(),
                position: found[expected as usize],
                reason: "sealed segment holds records past the next segment's base",
            });
        }
        Ok((found, end))
    }

    /// Recovers a sealed segment; `scanned` is the scan of its store if
    /// open already made it (the index was unusable).
    fn recover_sealed(&mut self, next: u64, scanned: Option<(Vec<u64>, u64)>) -> Result<()> {
        let (found, end) = match scanned {
            Some(scanned) => scanned,
            None => {
                if let Some(end) = self.clean_end()? {
                    if self.next_offset() == next {
                        self.store.set_size(end);
                        return Ok(());
                    }
                }
                Segment::scan_sealed(&self.store, self.base, next)?
            }
        };
        warn!(segment = %self.store.path().display(), records = found.len(),
            "sealed segment's index was not clean; rebuilt it from the store");
        self.store.set_size(end);
        self.set_index(&found)?;
        self.index.mark_clean()
    }

    fn recover_active(&mut self) -> Result<()> {
        if let Some(end) = self.clean_end()? {
            self.store.set_size(end);
            return Ok(());
        }
        let (found, valid_end, how) = self.store.scan(store::HEADER_LEN, self.base)?;
        let allocated = self.store.allocated();
        if how == ScanEnd::Torn {
            warn!(segment = %self.store.path().display(), position = valid_end,
                dropped_bytes = allocated - valid_end,
                "torn or corrupt tail cut back to the last whole record");
        } else {
            info!(segment = %self.store.path().display(), records = found.len(),
                "verified every record after an unclean close");
        }
        self.set_index(&found)?;
        self.store.set_size(valid_end);
        if allocated != valid_end {
            self.store.truncate(valid_end)?;
        } else {
            // Records recovered from the page cache become durable before
            // anyone can read them.
            self.store.sync()?;
        }
        Ok(())
    }

    /// Makes the index hold exactly `positions`, growing the index file if
    /// they do not fit (an older, larger segment limit).
    fn set_index(&mut self, positions: &[u64]) -> Result<()> {
        let needed = positions.len() as u64;
        if needed <= self.index.capacity() {
            self.index.rebuild(positions);
            return Ok(());
        }
        let path = index_path(&self.dir, self.base);
        let tmp = path.with_extension("index.tmp");
        remove_if_exists(&*self.fs, &tmp)?;
        let size = super::index::HEADER_LEN + needed * super::index::ENTRY_LEN;
        let mut index = Index::create(&*self.fs, &tmp, size.max(self.limits.max_index_bytes))?;
        index.rebuild(positions);
        index.mark_dirty()?;
        self.fs.rename(&tmp, &path).at(&path)?;
        self.fs.sync_dir(&self.dir).at(&self.dir)?;
        self.index = index;
        Ok(())
    }

    /// First offset of the segment.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Offset the next record appended here gets.
    pub fn next_offset(&self) -> u64 {
        self.base.saturating_add(self.index.count())
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
        let start = self.store.append(buf, self.limits.prealloc())?;
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
    pub fn sync_handle(&self) -> Arc<dyn FileHandle> {
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
        let keep = offset
            .checked_add(1)
            .map_or(u64::MAX, |next| next.saturating_sub(self.base))
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
        self.remove_files()
    }

    /// Deletes the segment's files while it is still held (its handles
    /// stay usable until dropped), as [`Segment::remove`] does.
    pub fn remove_files(&self) -> Result<()> {
        remove_if_exists(&*self.fs, &index_path(&self.dir, self.base))?;
        remove_if_exists(&*self.fs, self.store.path())
    }
}

fn file_len(fs: &dyn FileSystem, path: &Path) -> Result<u64> {
    fs.open(path).and_then(|f| f.size()).at(path)
}

/// Removes a file; one that is already gone is fine.
fn remove_if_exists(fs: &dyn FileSystem, path: &Path) -> Result<()> {
    match fs.remove(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at(path),
        _ => Ok(()),
    }
}
