//! Snapshot chunks that carry only the bytes the receiver lacks.
//!
//! A snapshot's pack ([`crate::raft::transfer`]) is `meta.json` and then
//! the data log's store files with their lengths frozen at build time. The
//! data log is deterministic: every node that applied the same entries
//! holds byte-identical store files for the same base offset, up to the
//! shorter length. A follower that fell behind the leader's Raft log purge
//! therefore already holds most of the snapshot it is sent: every segment
//! sealed before it stopped, and a prefix of the one it was writing.
//!
//! openraft still reads the pack in ordinary chunks and hands each one to
//! the network; only the network elides bytes, so openraft's core on both
//! sides sees ordinary full chunks:
//!
//! 1. At offset 0 of a snapshot the sender asks the receiver for its
//!    inventory: each store file of its current data log with the bytes of
//!    records it holds ([`crate::raft::net::server`]).
//! 2. The sender learns the pack's [`Layout`] from its leading bytes (the
//!    layout is a function of `meta.json`, the pack's first entry), and
//!    [`encode`]s each chunk as [`ChunkPart`]s: a range that lies inside
//!    the first `min(frozen, offered)` bytes of a store file becomes a
//!    reference (name, offset, length, CRC32C of the sender's bytes), the
//!    rest stays literal. A 3 MiB chunk inside such a file travels as a
//!    few dozen bytes.
//! 3. The receiver [`assemble`]s the chunk on a blocking thread, reading
//!    each referenced range from its data log directory and checking its
//!    CRC32C against the sender's, and hands openraft the rebuilt
//!    `InstallSnapshotRequest`.
//!
//! Safety rule: the inventory is only a hint; correctness rests on the
//! check at reassembly. Any file the receiver offers may change before its
//! bytes are read (retention deletes whole files, an install replaces the
//! data log, the active segment is cut back on restart), so a reference is
//! accepted only if, at reassembly, the file opens, holds the whole range,
//! and the range's CRC32C equals the one the sender computed over its own
//! frozen bytes. Otherwise the receiver installs nothing and names the
//! file as stale; the sender drops that file from the reusable set and
//! sends the chunk again, with those bytes literal, inside the same
//! openraft RPC. Sealed segments never change in place and the active one
//! only grows while a node runs, so a stale answer is rare; and a CRC
//! collision needs a difference to begin with, which the deterministic log
//! does not produce (peers are authenticated, so differences are faults,
//! not attacks; each store entry carries its own CRC32C as well).
//!
//! Purges and transfers: nothing a transfer in progress reads can be
//! pulled away. The sender's pack opened every file of its snapshot when
//! openraft asked for it and reads each only up to its frozen length; a
//! newer snapshot replacing `current`, retention deleting segments and the
//! data log rolling only unlink names, and no store file is rewritten
//! below a frozen length (`raft::tests_storage`:
//! `a_snapshot_in_transfer_survives_a_newer_snapshot_and_retention_removing_its_files`,
//! `a_snapshot_read_while_the_data_log_rolls_and_retains_yields_its_frozen_bytes`).
//! On the receiver, what it offered may go (retention, an install): the
//! check above turns that into literal bytes. The Raft log purge is
//! openraft's, and it does not count a snapshot in flight as a use of the
//! log (0.9's `ProgressEntry::is_log_range_inflight` is false for a
//! snapshot): a leader may build a newer snapshot and purge past the one
//! being sent. That is safe (the follower installs the older snapshot,
//! then is sent the newer one), and with delta chunks the second transfer
//! carries only what the first did not, since the follower's data log now
//! holds the first snapshot's files; so transfers converge whenever the
//! link is faster than the write rate.
//!
//! Flow control and memory: chunks are sent one at a time (openraft awaits
//! each reply) over HTTP/2, which flow-controls each message; the sender
//! reads its pack lazily per chunk and the receiver writes each rebuilt
//! chunk to its receiving file, so neither side ever holds more than a
//! chunk. A peer without these RPCs (`UNIMPLEMENTED`) gets plain chunks.

use std::collections::HashMap;
use std::io;
use std::ops::Range;

use proglog_proto::raft::{chunk_part, ChunkPart, FileRange};
use serde::Deserialize;

use crate::raft::snapshot::{is_store_name, FrozenFile, META};
use crate::raft::transfer;

/// The shortest range worth a reference: a [`FileRange`] costs about 45
/// bytes on the wire, and tiny references only add reads.
pub const MIN_REFERENCE: u64 = 512;

/// What went wrong reading a pack's layout or rebuilding a chunk.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// The leading bytes are not a pack this version understands.
    #[error("not a snapshot pack: {0}")]
    NotAPack(String),
    /// A referenced file does not hold the referenced bytes now.
    #[error("store file {0} does not hold the referenced bytes")]
    Stale(String),
    /// The chunk is malformed (a bad name, too large).
    #[error("invalid snapshot chunk: {0}")]
    Invalid(String),
}

/// Where one store file's content lies in a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpan {
    /// The store file name.
    pub name: String,
    /// Pack position of the file's first byte.
    pub start: u64,
    /// Frozen length of the file in the snapshot.
    pub len: u64,
}

/// The store files of a pack, by position (ascending).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    spans: Vec<FileSpan>,
}

/// The part of `meta.json` that fixes the layout.
#[derive(Deserialize)]
struct FilesOnly {
    #[serde(default)]
    files: Vec<FrozenFile>,
}

impl Layout {
    /// The layout of a pack whose `meta.json` has `meta_len` bytes and
    /// which lists `files` (the format of [`transfer`]).
    pub fn new(meta_len: u64, files: &[FrozenFile]) -> Layout {
        let mut pos = transfer::HEADER_LEN as u64 + entry_header_len(META) + meta_len;
        let mut spans = Vec::with_capacity(files.len());
        for f in files {
            pos += entry_header_len(&f.name);
            spans.push(FileSpan {
                name: f.name.clone(),
                start: pos,
                len: f.len,
            });
            pos += f.len;
        }
        Layout { spans }
    }

    /// Reads the layout from the first bytes of a pack: `None` until
    /// `prefix` holds the whole `meta.json` entry.
    pub fn parse(prefix: &[u8]) -> Result<Option<Layout>, DeltaError> {
        let bad = |why: &str| DeltaError::NotAPack(why.to_string());
        let header = transfer::HEADER_LEN;
        if prefix.len() < header + 2 {
            return Ok(None);
        }
        if prefix[..8] != transfer::MAGIC || prefix[8..12] != transfer::VERSION.to_le_bytes()[..] {
            return Err(bad("bad magic or version"));
        }
        let name_len = u16::from_le_bytes([prefix[header], prefix[header + 1]]) as usize;
        let name_at = header + 2;
        if name_len != META.len() {
            return Err(bad("the first entry is not meta.json"));
        }
        let len_at = name_at + name_len;
        if prefix.len() < len_at + 8 {
            return Ok(None);
        }
        if &prefix[name_at..len_at] != META.as_bytes() {
            return Err(bad("the first entry is not meta.json"));
        }
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&prefix[len_at..len_at + 8]);
        let meta_len = u64::from_le_bytes(len8);
        if meta_len > transfer::MAX_META_BYTES {
            return Err(bad("meta.json is too large"));
        }
        let meta_at = len_at + 8;
        let Some(meta) = prefix.get(meta_at..meta_at + meta_len as usize) else {
            return Ok(None);
        };
        let files: FilesOnly = serde_json::from_slice(meta)
            .map_err(|e| DeltaError::NotAPack(format!("meta.json: {e}")))?;
        Ok(Some(Layout::new(meta_len, &files.files)))
    }

    /// The store files, by position.
    pub fn spans(&self) -> &[FileSpan] {
        &self.spans
    }

    /// The most leading bytes [`Layout::parse`] may need.
    pub fn max_prefix() -> usize {
        transfer::HEADER_LEN + entry_header_len(META) as usize + transfer::MAX_META_BYTES as usize
    }
}

fn entry_header_len(name: &str) -> u64 {
    2 + name.len() as u64 + 8
}

/// One piece of a chunk: a range of its bytes, or a range of a store file
/// the receiver holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// These bytes of the chunk travel as they are.
    Literal(Range<usize>),
    /// Bytes `offset..offset + len` of store file `name`.
    Local {
        /// The store file name.
        name: String,
        /// Position in the file.
        offset: u64,
        /// Number of bytes.
        len: u64,
    },
}

/// Splits the chunk of `len` bytes at pack position `at` into pieces:
/// every range of at least [`MIN_REFERENCE`] bytes inside the first
/// `min(frozen, have[name])` bytes of a store file becomes a reference,
/// the rest stays literal. The pieces cover the chunk exactly, in order.
pub fn split(layout: &Layout, have: &HashMap<String, u64>, at: u64, len: usize) -> Vec<Piece> {
    let end = at + len as u64;
    let spans = &layout.spans;
    let first = spans.partition_point(|s| s.start + s.len <= at);
    let mut pieces = Vec::new();
    // Pack position where the pending literal bytes begin.
    let mut literal_from = at;
    for s in &spans[first..] {
        if s.start >= end {
            break;
        }
        let usable = have.get(&s.name).copied().unwrap_or(0).min(s.len);
        let from = s.start.max(at);
        let to = (s.start + usable).min(end);
        if to <= from || to - from < MIN_REFERENCE {
            continue;
        }
        if from > literal_from {
            pieces.push(Piece::Literal(
                (literal_from - at) as usize..(from - at) as usize,
            ));
        }
        pieces.push(Piece::Local {
            name: s.name.clone(),
            offset: from - s.start,
            len: to - from,
        });
        literal_from = to;
    }
    if end > literal_from {
        pieces.push(Piece::Literal((literal_from - at) as usize..len));
    }
    pieces
}

/// A chunk as sent: its parts and how its bytes travel.
#[derive(Debug, Default)]
pub struct Encoded {
    /// The parts, in order.
    pub parts: Vec<ChunkPart>,
    /// Bytes sent as they are.
    pub literal: u64,
    /// Bytes sent as references.
    pub referenced: u64,
}

/// Encodes `data`, the chunk at pack position `at`, as [`split`] cuts it;
/// each reference carries the CRC32C of the sender's bytes.
pub fn encode(layout: &Layout, have: &HashMap<String, u64>, at: u64, data: &[u8]) -> Encoded {
    let mut out = Encoded::default();
    let mut pos = 0usize;
    for piece in split(layout, have, at, data.len()) {
        let part = match piece {
            Piece::Literal(range) => {
                out.literal += range.len() as u64;
                pos = range.end;
                chunk_part::Part::Literal(data[range].to_vec())
            }
            Piece::Local { name, offset, len } => {
                let bytes = &data[pos..pos + len as usize];
                pos += len as usize;
                out.referenced += len;
                chunk_part::Part::Local(FileRange {
                    name,
                    offset,
                    len,
                    crc32c: crc32c::crc32c(bytes),
                })
            }
        };
        out.parts.push(ChunkPart { part: Some(part) });
    }
    out
}

/// Rebuilds a chunk from `parts`, at most `max` bytes. `read(name,
/// offset, buf)` fills `buf` from the receiver's store file `name`; its
/// failure (no such file, too short, an I/O error) makes the file stale,
/// as does a CRC32C that differs from the sender's.
pub fn assemble(
    parts: &[ChunkPart],
    max: u64,
    mut read: impl FnMut(&str, u64, &mut [u8]) -> io::Result<()>,
) -> Result<Vec<u8>, DeltaError> {
    let mut total = 0u64;
    for part in parts {
        total = total.saturating_add(match &part.part {
            Some(chunk_part::Part::Literal(b)) => b.len() as u64,
            Some(chunk_part::Part::Local(r)) => {
                if !is_store_name(&r.name) {
                    return Err(DeltaError::Invalid(format!(
                        "{:?} is not a store file",
                        r.name
                    )));
                }
                r.len
            }
            None => return Err(DeltaError::Invalid("an empty part".into())),
        });
    }
    if total > max {
        return Err(DeltaError::Invalid(format!(
            "a chunk of {total} bytes, over {max}"
        )));
    }
    let mut out = Vec::with_capacity(total as usize);
    for part in parts {
        match &part.part {
            Some(chunk_part::Part::Literal(b)) => out.extend_from_slice(b),
            Some(chunk_part::Part::Local(r)) => {
                let from = out.len();
                out.resize(from + r.len as usize, 0);
                let stale = || DeltaError::Stale(r.name.clone());
                read(&r.name, r.offset, &mut out[from..]).map_err(|_| stale())?;
                if crc32c::crc32c(&out[from..]) != r.crc32c {
                    return Err(stale());
                }
            }
            None => unreachable!("checked above"),
        }
    }
    Ok(out)
}

/// Reads referenced ranges from the store files of one directory (the
/// receiver's data log), keeping each file open for the chunk.
#[derive(Debug)]
pub struct StoreFiles {
    dir: std::path::PathBuf,
    open: HashMap<String, std::fs::File>,
}

impl StoreFiles {
    /// Files of `dir`, opened on first use.
    pub fn new(dir: std::path::PathBuf) -> StoreFiles {
        StoreFiles {
            dir,
            open: HashMap::new(),
        }
    }

    /// Fills `buf` from `name` at `offset` (blocking). `name` was checked
    /// to be a plain store name, so it stays inside the directory.
    pub fn read(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let file = match self.open.entry(name.to_string()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(std::fs::File::open(self.dir.join(name))?)
            }
        };
        file.read_exact_at(buf, offset)
    }
}

#[cfg(test)]
mod tests;
