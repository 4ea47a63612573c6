//! The store: one append-only file of framed records.
//!
//! File layout: a 16-byte header (`PLOGSTOR`, format version, reserved),
//! then entries `crc32c u32 | len u32 | offset u64 | payload`, all little
//! endian. The CRC covers the length, the offset and the payload, so a zero
//! fill or a torn write never parses as a record. The file may be longer
//! than its records: the tail past `size` is pre-written zeros, so that an
//! fdatasync after an append does not also have to commit a new file size.
//! The store knows nothing about indexes or segments.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::error::{IoContext, LogError, Result};
use super::fs::{FileHandle, FileSystem};

const MAGIC: [u8; 8] = *b"PLOGSTOR";
const VERSION: u32 = 1;
/// Bytes of the file header; the first entry starts here.
pub const HEADER_LEN: u64 = 16;
/// Bytes of an entry's frame before its payload.
pub const ENTRY_HEADER_LEN: u64 = 16;
/// The largest payload the length field can describe.
pub const MAX_RECORD_LEN: u64 = u32::MAX as u64;
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// CRC32C over an entry's length, offset and payload.
fn checksum(len: u32, offset: u64, payload: &[u8]) -> u32 {
    let mut head = [0u8; 12];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4..].copy_from_slice(&offset.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&head), payload)
}

/// Appends the framed entry for `payload` at `offset` to `buf`.
/// The caller has checked `payload.len() <= MAX_RECORD_LEN`.
pub fn encode(buf: &mut Vec<u8>, offset: u64, payload: &[u8]) {
    let len = payload.len() as u32;
    buf.extend_from_slice(&checksum(len, offset, payload).to_le_bytes());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Bytes an entry with a payload of `len` bytes takes in the store.
pub fn framed_len(len: usize) -> u64 {
    ENTRY_HEADER_LEN + len as u64
}

/// A decoded entry frame: where its payload starts and what it claims.
struct Frame {
    crc: u32,
    len: u32,
    offset: u64,
}

impl Frame {
    fn parse(bytes: &[u8; ENTRY_HEADER_LEN as usize]) -> Frame {
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        Frame {
            crc: u32_at(0),
            len: u32_at(4),
            offset: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
        }
    }
}

/// How a forward scan of the store ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// End of file, or a zero frame header (pre-written space).
    Clean,
    /// Bytes that are not a whole, valid entry with the expected offset.
    Torn,
}

/// One store file. Appends need `&mut`; reads work through `&self`.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    file: Arc<dyn FileHandle>,
    /// End of the last whole record: the next append goes here.
    size: u64,
    /// Length of the file, including pre-written zeros past `size`.
    allocated: u64,
    /// A background pre-write in flight: zeros from `.0` to `.1`.
    prewrite: Option<(u64, u64, JoinHandle<std::io::Result<()>>)>,
}

impl Store {
    /// Creates a new store file with its header. The caller syncs the
    /// directory.
    pub fn create(fs: &dyn FileSystem, path: &Path) -> Result<Store> {
        let file = fs.create(path).at(path)?;
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        file.write_all_at(&header, 0).at(path)?;
        file.sync_all().at(path)?;
        Ok(Store {
            path: path.to_path_buf(),
            file,
            size: HEADER_LEN,
            allocated: HEADER_LEN,
            prewrite: None,
        })
    }

    /// Opens an existing store and checks its header. The logical size
    /// starts at the header; recovery sets it with [`Store::set_size`].
    pub fn open(fs: &dyn FileSystem, path: &Path) -> Result<Store> {
        let (file, allocated) = super::open_existing(fs, path)?;
        let corrupt = |reason| super::bad_header(path, reason);
        if allocated < HEADER_LEN {
            return Err(corrupt("file shorter than its header"));
        }
        let mut header = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut header, 0).at(path)?;
        if header[..8] != MAGIC {
            return Err(corrupt("bad magic: not a proglog store"));
        }
        if u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) != VERSION {
            return Err(corrupt("unsupported store format version"));
        }
        Ok(Store {
            path: path.to_path_buf(),
            file,
            size: HEADER_LEN,
            allocated,
            prewrite: None,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// End of the last whole record, in bytes (header included).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// A handle for syncing outside the log's locks.
    pub fn file(&self) -> Arc<dyn FileHandle> {
        Arc::clone(&self.file)
    }

    /// Sets the logical end after recovery decided where the records end.
    pub fn set_size(&mut self, size: u64) {
        self.size = size;
    }

    /// Writes already-framed entries at the end; returns their position.
    /// Not durable until [`Store::sync`]. With `ahead.chunk` non-zero, the
    /// file is kept pre-written with zeros at least a chunk past the write
    /// position, by a background thread, so that syncs after an append do
    /// not also commit a file size change and the append path does not
    /// write the zeros itself.
    pub fn append(&mut self, framed: &[u8], ahead: Prealloc) -> Result<u64> {
        let pos = self.size;
        let end = pos
            .checked_add(framed.len() as u64)
            .ok_or_else(|| self.corrupt(pos, "store position overflows"))?;
        // Zeros being written where this append lands would clobber it.
        if self
            .prewrite
            .as_ref()
            .is_some_and(|(from, _, job)| job.is_finished() || end > *from)
        {
            self.finish_prewrite()?;
        }
        self.file.write_all_at(framed, pos).at(&self.path)?;
        self.size = end;
        self.allocated = self.allocated.max(end);
        self.prewrite_ahead(ahead);
        Ok(pos)
    }

    /// Starts pre-writing the next chunk of zeros in the background when
    /// less than a chunk is left ahead of the write position.
    pub fn prewrite_ahead(&mut self, ahead: Prealloc) {
        if ahead.chunk == 0 || self.prewrite.is_some() {
            return;
        }
        let from = self.allocated;
        if from.saturating_sub(self.size) >= ahead.chunk || from >= ahead.max {
            return;
        }
        let to = from.saturating_add(ahead.chunk).min(ahead.max);
        let file = Arc::clone(&self.file);
        let job = std::thread::Builder::new()
            .name("proglog-prewrite".into())
            .spawn(move || write_zeros(&*file, from, to));
        match job {
            Ok(job) => self.prewrite = Some((from, to, job)),
            // No thread: do without pre-written space (syncs get slower).
            Err(e) => tracing::warn!(error = %e, "cannot start a pre-write thread"),
        }
    }

    /// Waits for the background pre-write, if any, and takes its result.
    pub fn wait_prewrite(&mut self) -> Result<()> {
        self.finish_prewrite()
    }

    fn finish_prewrite(&mut self) -> Result<()> {
        let Some((_, to, job)) = self.prewrite.take() else {
            return Ok(());
        };
        match job.join() {
            Ok(Ok(())) => {
                self.allocated = self.allocated.max(to);
                Ok(())
            }
            Ok(Err(e)) => Err(e).at(&self.path),
            Err(_) => Err(std::io::Error::other("the pre-write thread panicked")).at(&self.path),
        }
    }

    fn corrupt(&self, position: u64, reason: &'static str) -> LogError {
        LogError::Corrupt {
            segment: self.path.clone(),
            position,
            reason,
        }
    }

    /// Reads and parses the frame header at `pos`, if a whole one lies
    /// before `limit`.
    fn frame_at(&self, pos: u64, limit: u64) -> Result<Option<Frame>> {
        match pos.checked_add(ENTRY_HEADER_LEN) {
            Some(end) if end <= limit => {}
            _ => return Ok(None),
        }
        let mut head = [0u8; ENTRY_HEADER_LEN as usize];
        self.file.read_exact_at(&mut head, pos).at(&self.path)?;
        Ok(Some(Frame::parse(&head)))
    }

    /// Reads the payload of the entry at `pos`, which must hold `offset`.
    pub fn read(&self, pos: u64, offset: u64) -> Result<Vec<u8>> {
        let frame = self
            .frame_at(pos, self.size)?
            .ok_or_else(|| self.corrupt(pos, "index points past the end of the store"))?;
        if pos + framed_len(frame.len as usize) > self.size {
            return Err(self.corrupt(pos, "entry runs past the end of the store"));
        }
        if frame.offset != offset {
            return Err(self.corrupt(pos, "entry holds another offset than its index entry"));
        }
        let mut payload = vec![0u8; frame.len as usize];
        self.file
            .read_exact_at(&mut payload, pos + ENTRY_HEADER_LEN)
            .at(&self.path)?;
        if checksum(frame.len, frame.offset, &payload) != frame.crc {
            return Err(self.corrupt(pos, "checksum mismatch"));
        }
        Ok(payload)
    }

    /// Checks that a whole, valid entry for `offset` starts at `pos` and
    /// returns its end position, or `None`.
    pub fn verify(&self, pos: u64, offset: u64) -> Result<Option<u64>> {
        let Some(frame) = self.frame_at(pos, self.allocated)? else {
            return Ok(None);
        };
        let end = pos + framed_len(frame.len as usize);
        if frame.offset != offset || end > self.allocated {
            return Ok(None);
        }
        let mut payload = vec![0u8; frame.len as usize];
        self.file
            .read_exact_at(&mut payload, pos + ENTRY_HEADER_LEN)
            .at(&self.path)?;
        Ok((checksum(frame.len, frame.offset, &payload) == frame.crc).then_some(end))
    }

    /// Reads entries forward from `pos`, expecting dense offsets from
    /// `offset`. Returns the positions of the whole, valid entries, the end
    /// of the last one, and why the scan stopped. Reads only.
    pub fn scan(&self, mut pos: u64, mut offset: u64) -> Result<(Vec<u64>, u64, ScanEnd)> {
        let mut reader = ChunkReader::new(&*self.file, self.allocated);
        let mut head = [0u8; ENTRY_HEADER_LEN as usize];
        let mut payload = Vec::new();
        let mut found = Vec::new();
        let how = loop {
            if pos + ENTRY_HEADER_LEN > self.allocated {
                break if reader.all_zero(pos).at(&self.path)? {
                    ScanEnd::Clean
                } else {
                    ScanEnd::Torn
                };
            }
            reader.read(pos, &mut head).at(&self.path)?;
            if head == [0u8; ENTRY_HEADER_LEN as usize] {
                break if reader.all_zero(pos).at(&self.path)? {
                    ScanEnd::Clean
                } else {
                    ScanEnd::Torn
                };
            }
            let frame = Frame::parse(&head);
            let end = pos + framed_len(frame.len as usize);
            if frame.offset != offset || end > self.allocated {
                break ScanEnd::Torn;
            }
            payload.resize(frame.len as usize, 0);
            reader
                .read(pos + ENTRY_HEADER_LEN, &mut payload)
                .at(&self.path)?;
            if checksum(frame.len, frame.offset, &payload) != frame.crc {
                break ScanEnd::Torn;
            }
            found.push(pos);
            pos = end;
            match offset.checked_add(1) {
                Some(next) => offset = next,
                // No offset can follow the largest one.
                None => break ScanEnd::Clean,
            }
        };
        Ok((found, pos, how))
    }

    /// The file's length, including pre-written space.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Cuts the file at `pos` (everything after is gone, and reads back as
    /// zeros if the file grows again) and syncs it.
    pub fn truncate(&mut self, pos: u64) -> Result<()> {
        self.finish_prewrite()?;
        self.file.set_len(pos).at(&self.path)?;
        self.file.sync_all().at(&self.path)?;
        self.size = pos;
        self.allocated = pos;
        Ok(())
    }

    /// Drops pre-written space past the last record and syncs: what a
    /// sealed or cleanly closed store looks like.
    pub fn seal(&mut self) -> Result<()> {
        self.finish_prewrite()?;
        if self.allocated != self.size {
            self.file.set_len(self.size).at(&self.path)?;
            self.allocated = self.size;
        }
        self.file.sync_all().at(&self.path)
    }

    /// fdatasyncs the file.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().at(&self.path)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Nothing may write to the file after its owner let go of it.
        if let Some((_, _, job)) = self.prewrite.take() {
            let _ = job.join();
        }
    }
}

/// How far ahead of the write position a store keeps zeros.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prealloc {
    /// Bytes kept ahead (0: none).
    pub chunk: u64,
    /// Never pre-write past this file size.
    pub max: u64,
}

/// Writes zeros to `file` from `from` up to `to`.
fn write_zeros(file: &dyn FileHandle, from: u64, to: u64) -> std::io::Result<()> {
    let mut at = from;
    while at < to {
        let n = ZEROS.len().min((to - at) as usize);
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Reads a file forward in large chunks (recovery scans whole stores).
struct ChunkReader<'a> {
    file: &'a dyn FileHandle,
    len: u64,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    start: u64,
}

const SCAN_CHUNK: u64 = 1 << 20;

impl<'a> ChunkReader<'a> {
    fn new(file: &'a dyn FileHandle, len: u64) -> ChunkReader<'a> {
        ChunkReader {
            file,
            len,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Fills `out` from `pos`; the caller keeps `pos + out.len()` within
    /// the file.
    fn read(&mut self, pos: u64, out: &mut [u8]) -> std::io::Result<()> {
        let want = out.len() as u64;
        let end = self.start + self.buf.len() as u64;
        if pos >= self.start && pos + want <= end {
            let at = (pos - self.start) as usize;
            out.copy_from_slice(&self.buf[at..at + out.len()]);
            return Ok(());
        }
        if want > SCAN_CHUNK {
            return self.file.read_exact_at(out, pos);
        }
        let n = SCAN_CHUNK.min(self.len - pos).max(want);
        self.buf.resize(n as usize, 0);
        self.file.read_exact_at(&mut self.buf, pos)?;
        self.start = pos;
        out.copy_from_slice(&self.buf[..out.len()]);
        Ok(())
    }

    /// Whether every byte from `pos` to the end of the file is zero: a
    /// zero frame header is the end of the records only when nothing but
    /// zeros follows (else a record was lost, and later ones survived).
    fn all_zero(&mut self, mut pos: u64) -> std::io::Result<bool> {
        let mut chunk = vec![0u8; SCAN_CHUNK as usize];
        while pos < self.len {
            let n = SCAN_CHUNK.min(self.len - pos) as usize;
            self.file.read_exact_at(&mut chunk[..n], pos)?;
            if chunk[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            pos += n as u64;
        }
        Ok(true)
    }
}
