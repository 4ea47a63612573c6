//! The ordered, never-empty set of a log's segments: the sealed ones,
//! oldest first, and the active one that takes appends. The type keeps the
//! rule "there is always an active segment", so no path that an I/O error
//! can interrupt leaves the log without one.

use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use super::error::{IoContext, Result};
use super::fs::{FileHandle, FileSystem};
use super::segment::{self, Role, Segment, SegmentLimits};

/// Sealed segments, oldest first, and the active one.
#[derive(Debug)]
pub(super) struct SegmentSet {
    sealed: Vec<Segment>,
    active: Segment,
}

impl SegmentSet {
    /// Opens the segments in `dir` and recovers them; an empty dir gets
    /// one empty segment at `initial`. The active segment is left unsealed
    /// (ready for appends).
    pub fn open(
        fs: &Arc<dyn FileSystem>,
        dir: &Path,
        limits: SegmentLimits,
        initial: u64,
    ) -> Result<SegmentSet> {
        let bases = segment_bases(&**fs, dir)?;
        let Some((&last, older)) = bases.split_last() else {
            let active = Segment::create(fs, dir, initial, limits)?;
            fs.sync_dir(dir).at(dir)?;
            return Ok(SegmentSet {
                sealed: Vec::new(),
                active,
            });
        };
        let mut sealed = Vec::with_capacity(older.len());
        for (i, &base) in older.iter().enumerate() {
            let next = bases[i + 1];
            sealed.push(Segment::open(fs, dir, base, limits, Role::Sealed { next })?);
        }
        let mut active = Segment::open(fs, dir, last, limits, Role::Active)?;
        active.unseal()?;
        Ok(SegmentSet { sealed, active })
    }

    /// The segment taking appends.
    pub fn active(&self) -> &Segment {
        &self.active
    }

    /// The segment taking appends.
    pub fn active_mut(&mut self) -> &mut Segment {
        &mut self.active
    }

    /// The sealed segments, oldest first.
    pub fn sealed(&self) -> &[Segment] {
        &self.sealed
    }

    /// Every segment, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Segment> {
        self.sealed.iter().chain(std::iter::once(&self.active))
    }

    /// Offset of the oldest record kept.
    pub fn lowest(&self) -> u64 {
        self.sealed.first().unwrap_or(&self.active).base()
    }

    /// Offset the next appended record gets.
    pub fn next(&self) -> u64 {
        self.active.next_offset()
    }

    /// The segment that holds `offset`, if any could.
    pub fn find(&self, offset: u64) -> Option<&Segment> {
        if offset >= self.active.base() {
            return Some(&self.active);
        }
        let i = self.sealed.partition_point(|s| s.base() <= offset);
        i.checked_sub(1).map(|i| &self.sealed[i])
    }

    /// Makes `fresh` the active segment; the old one (sealed by the
    /// caller) joins the sealed ones.
    pub fn roll(&mut self, fresh: Segment) {
        let old = std::mem::replace(&mut self.active, fresh);
        self.sealed.push(old);
    }

    /// Takes the oldest sealed segment out of the set.
    pub fn pop_oldest(&mut self) -> Option<Segment> {
        (!self.sealed.is_empty()).then(|| self.sealed.remove(0))
    }

    /// Takes the active segment out, making the newest sealed one active
    /// again; `None` when there is no sealed segment.
    pub fn pop_active(&mut self) -> Option<Segment> {
        let previous = self.sealed.pop()?;
        Some(std::mem::replace(&mut self.active, previous))
    }

    /// Takes every segment out, oldest first, leaving `fresh` alone.
    pub fn replace_all(&mut self, fresh: Segment) -> Vec<Segment> {
        let old_active = std::mem::replace(&mut self.active, fresh);
        let mut old = std::mem::take(&mut self.sealed);
        old.push(old_active);
        old
    }
}

/// Bases of the segments in `dir`, sorted; stray index files are removed.
fn segment_bases(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    let mut indexes = Vec::new();
    for name in fs.list(dir).at(dir)? {
        let parse = |suffix: &str| {
            name.strip_suffix(suffix)
                .filter(|stem| stem.len() == 20)
                .and_then(|stem| stem.parse::<u64>().ok())
        };
        if let Some(base) = parse(".store") {
            bases.push(base);
        } else if let Some(base) = parse(".index") {
            indexes.push(base);
        } else if name.ends_with(".index.tmp") {
            let path = dir.join(&name);
            fs.remove(&path).at(&path)?;
        }
    }
    bases.sort_unstable();
    for base in indexes {
        if bases.binary_search(&base).is_err() {
            let path = segment::index_path(dir, base);
            fs.remove(&path).at(&path)?;
        }
    }
    Ok(bases)
}

/// Raw bytes of sealed store files, oldest first (see `Log::reader`).
#[derive(Debug)]
pub struct LogReader {
    /// Remaining (file, position, bytes left), the last element read first.
    parts: Vec<(Arc<dyn FileHandle>, u64, u64)>,
}

impl LogReader {
    pub(super) fn new(fs: &dyn FileSystem, segments: &[Segment]) -> Result<LogReader> {
        let mut parts = Vec::with_capacity(segments.len());
        for seg in segments.iter().rev() {
            let path = seg.store_file();
            parts.push((fs.open(path).at(path)?, 0, seg.store_size()));
        }
        Ok(LogReader { parts })
    }
}

impl Read for LogReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while let Some((file, pos, left)) = self.parts.last_mut() {
            if *left == 0 {
                self.parts.pop();
                continue;
            }
            let n = out.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
            file.read_exact_at(&mut out[..n], *pos).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("store file shorter than its recorded size: {e}"),
                )
            })?;
            *pos += n as u64;
            *left -= n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}
