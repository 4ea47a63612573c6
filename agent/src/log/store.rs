//! The store: one append-only file of framed records.
//!
//! File layout: a 16-byte header (`PLOGSTOR`, format version, reserved),
//! then entries `crc32c u32 | len u32 | offset u64 | payload`, all little
//! endian. The CRC covers the length, the offset and the payload, so a zero
//! fill or a torn write never parses as a record. The file may be longer
//! than its records: the tail past `size` is pre-written zeros, so that an
//! fdatasync after an append does not also have to commit a new file size.
//! The store knows nothing about indexes or segments.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{IoContext, LogError, Result};

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
    file: Arc<File>,
    /// End of the last whole record: the next append goes here.
    size: u64,
    /// Length of the file, including pre-written zeros past `size`.
    allocated: u64,
}

impl Store {
    /// Creates a new store file with its header. The caller syncs the
    /// directory.
    pub fn create(path: &Path) -> Result<Store> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .at(path)?;
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        file.write_all_at(&header, 0).at(path)?;
        file.sync_all().at(path)?;
        Ok(Store {
            path: path.to_path_buf(),
            file: Arc::new(file),
            size: HEADER_LEN,
            allocated: HEADER_LEN,
        })
    }

    /// Opens an existing store and checks its header. The logical size
    /// starts at the header; recovery sets it with [`Store::set_size`].
    pub fn open(path: &Path) -> Result<Store> {
        let (file, allocated) = super::open_existing(path)?;
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
            file: Arc::new(file),
            size: HEADER_LEN,
            allocated,
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
    pub fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// Sets the logical end after recovery decided where the records end.
    pub fn set_size(&mut self, size: u64) {
        self.size = size;
    }

    /// Writes already-framed entries at the end; returns their position.
    /// Not durable until [`Store::sync`]. When `prealloc` is non-zero and
    /// the write would grow the file, zeros are written first up to
    /// `prealloc_to` so that later syncs do not change the file size.
    pub fn append(&mut self, framed: &[u8], prealloc_to: u64) -> Result<u64> {
        let pos = self.size;
        let end = pos + framed.len() as u64;
        if end > self.allocated && prealloc_to > end {
            self.prewrite(prealloc_to)?;
        }
        self.file.write_all_at(framed, pos).at(&self.path)?;
        self.size = end;
        self.allocated = self.allocated.max(end);
        Ok(pos)
    }

    /// Extends the file with zeros up to `to`.
    fn prewrite(&mut self, to: u64) -> Result<()> {
        let mut at = self.allocated;
        while at < to {
            let n = ZEROS.len().min((to - at) as usize);
            self.file.write_all_at(&ZEROS[..n], at).at(&self.path)?;
            at += n as u64;
        }
        self.allocated = to;
        Ok(())
    }

    /// Reads the payload of the entry at `pos`, which must hold `offset`.
    pub fn read(&self, pos: u64, offset: u64) -> Result<Vec<u8>> {
        let corrupt = |reason| LogError::Corrupt {
            segment: self.path.clone(),
            position: pos,
            reason,
        };
        let mut head = [0u8; ENTRY_HEADER_LEN as usize];
        if pos + ENTRY_HEADER_LEN > self.size {
            return Err(corrupt("index points past the end of the store"));
        }
        self.file.read_exact_at(&mut head, pos).at(&self.path)?;
        let frame = Frame::parse(&head);
        if pos + framed_len(frame.len as usize) > self.size {
            return Err(corrupt("entry runs past the end of the store"));
        }
        if frame.offset != offset {
            return Err(corrupt("entry holds another offset than its index entry"));
        }
        let mut payload = vec![0u8; frame.len as usize];
        self.file
            .read_exact_at(&mut payload, pos + ENTRY_HEADER_LEN)
            .at(&self.path)?;
        if checksum(frame.len, frame.offset, &payload) != frame.crc {
            return Err(corrupt("checksum mismatch"));
        }
        Ok(payload)
    }

    /// Checks that a whole, valid entry for `offset` starts at `pos` and
    /// returns its end position, or `None`.
    pub fn verify(&self, pos: u64, offset: u64) -> Result<Option<u64>> {
        if pos + ENTRY_HEADER_LEN > self.allocated {
            return Ok(None);
        }
        let mut head = [0u8; ENTRY_HEADER_LEN as usize];
        self.file.read_exact_at(&mut head, pos).at(&self.path)?;
        let frame = Frame::parse(&head);
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
    /// of the last one, and why the scan stopped.
    pub fn scan(&self, mut pos: u64, mut offset: u64) -> Result<(Vec<u64>, u64, ScanEnd)> {
        let mut file = &*self.file;
        file.seek(SeekFrom::Start(pos)).at(&self.path)?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut head = [0u8; ENTRY_HEADER_LEN as usize];
        let mut payload = Vec::new();
        let mut found = Vec::new();
        let how = loop {
            if pos + ENTRY_HEADER_LEN > self.allocated {
                break if self.tail_is_zero(pos)? {
                    ScanEnd::Clean
                } else {
                    ScanEnd::Torn
                };
            }
            reader.read_exact(&mut head).at(&self.path)?;
            if head == [0u8; ENTRY_HEADER_LEN as usize] {
                break ScanEnd::Clean;
            }
            let frame = Frame::parse(&head);
            let end = pos + framed_len(frame.len as usize);
            if frame.offset != offset || end > self.allocated {
                break ScanEnd::Torn;
            }
            payload.resize(frame.len as usize, 0);
            reader.read_exact(&mut payload).at(&self.path)?;
            if checksum(frame.len, frame.offset, &payload) != frame.crc {
                break ScanEnd::Torn;
            }
            found.push(pos);
            pos = end;
            offset += 1;
        };
        Ok((found, pos, how))
    }

    /// Whether every byte from `pos` to the end of the file is zero (only
    /// called for the few bytes shorter than a frame header).
    fn tail_is_zero(&self, pos: u64) -> Result<bool> {
        let mut rest = vec![0u8; (self.allocated - pos) as usize];
        self.file.read_exact_at(&mut rest, pos).at(&self.path)?;
        Ok(rest.iter().all(|&b| b == 0))
    }

    /// Cuts the file at `pos` (everything after is gone, and reads back as
    /// zeros if the file grows again) and syncs it.
    pub fn truncate(&mut self, pos: u64) -> Result<()> {
        self.file.set_len(pos).at(&self.path)?;
        self.file.sync_all().at(&self.path)?;
        self.size = pos;
        self.allocated = pos;
        Ok(())
    }

    /// Drops pre-written space past the last record and syncs: what a
    /// sealed or cleanly closed store looks like.
    pub fn seal(&mut self) -> Result<()> {
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
