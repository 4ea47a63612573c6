//! The transfer form of a snapshot, and openraft's `SnapshotData`.
//!
//! Pack format (all little endian): the header `PLOGSNAP | version u32`,
//! then entries `name_len u16 | name | len u64 | bytes`. The first entry is
//! `meta.json`; then come the data log's store files that meta.json lists,
//! in its order and with its lengths, and nothing after them. A [`Pack`] is
//! never written out: it is a reader over the snapshot's hard-linked files,
//! each read only up to the length frozen when the snapshot was built, so
//! serving a snapshot copies nothing and is unaffected by the data log
//! appending to, rolling or sealing those files meanwhile. The receiving
//! side writes the stream into a file; [`super::snapshot::SnapshotDir::receive`]
//! checks it against these rules (names, lengths, order, bounds) as it
//! unpacks.

use std::fs::File;
use std::future::Future;
use std::io::{self, Read, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;

use super::snapshot::{FrozenFile, META};

/// Magic at the start of a pack.
pub const MAGIC: [u8; 8] = *b"PLOGSNAP";
/// Version of the pack format.
pub const VERSION: u32 = 1;
/// Bytes of the pack header.
pub const HEADER_LEN: usize = 12;
/// The longest entry name accepted (a store name is 26 bytes).
pub const MAX_NAME_LEN: usize = 64;
/// The largest `meta.json` accepted (it holds the producer table).
pub const MAX_META_BYTES: u64 = 64 << 20;
/// The largest store file accepted in a pack.
pub const MAX_FILE_BYTES: u64 = 1 << 40;
/// Bytes read from disk per blocking read while streaming a pack.
const CHUNK: u64 = 256 << 10;

/// The header of an entry named `name` with `len` bytes of content.
pub fn entry_header(name: &str, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + name.len() + 8);
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out
}

/// The pack header.
pub fn pack_header() -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&VERSION.to_le_bytes());
    out
}

#[derive(Debug)]
enum Part {
    Bytes(Vec<u8>),
    /// The first `len` bytes of a file.
    File {
        file: File,
        len: u64,
        name: String,
    },
}

/// A snapshot in transfer form, read lazily from its files (see the module
/// docs). Reads are positional, so one pack serves any number of readers.
#[derive(Debug)]
pub struct Pack {
    /// Parts with their start position in the pack, in order.
    parts: Vec<(u64, Part)>,
    len: u64,
}

impl Pack {
    /// Builds a pack from the serialized `meta` and the files in `dir`
    /// named in `files` with their frozen lengths. Fails if a file is
    /// shorter than its frozen length (the snapshot is damaged).
    pub fn new(meta: Vec<u8>, dir: &Path, files: &[FrozenFile]) -> io::Result<Pack> {
        let mut pack = Pack {
            parts: Vec::new(),
            len: 0,
        };
        pack.push(Part::Bytes(pack_header()));
        let mut meta_entry = entry_header(META, meta.len() as u64);
        meta_entry.extend_from_slice(&meta);
        pack.push(Part::Bytes(meta_entry));
        for FrozenFile { name, len } in files {
            let file = File::open(dir.join(name))?;
            let actual = file.metadata()?.len();
            if actual < *len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("snapshot file {name} has {actual} bytes, fewer than its frozen {len}"),
                ));
            }
            pack.push(Part::Bytes(entry_header(name, *len)));
            pack.push(Part::File {
                file,
                len: *len,
                name: name.clone(),
            });
        }
        Ok(pack)
    }

    fn push(&mut self, part: Part) {
        let len = match &part {
            Part::Bytes(b) => b.len() as u64,
            Part::File { len, .. } => *len,
        };
        if len > 0 {
            self.parts.push((self.len, part));
            self.len += len;
        }
    }

    /// Total bytes of the pack.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the pack has no bytes (never: it has a header).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads from `pos` into `out` (blocking); 0 only at the end.
    pub fn read_at(&self, pos: u64, out: &mut [u8]) -> io::Result<usize> {
        if pos >= self.len || out.is_empty() {
            return Ok(0);
        }
        let i = self.parts.partition_point(|(start, _)| *start <= pos) - 1;
        let (start, part) = &self.parts[i];
        let within = pos - start;
        match part {
            Part::Bytes(bytes) => {
                let rest = &bytes[within as usize..];
                let n = rest.len().min(out.len());
                out[..n].copy_from_slice(&rest[..n]);
                Ok(n)
            }
            Part::File { file, len, name } => {
                let want = (len - within).min(out.len() as u64) as usize;
                match file.read_at(&mut out[..want], within)? {
                    0 => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("snapshot file {name} is shorter than its frozen length"),
                    )),
                    n => Ok(n),
                }
            }
        }
    }

    /// Reads `len` bytes from `pos` (fewer only at the end of the pack).
    fn read_chunk(&self, pos: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; len.min(self.len.saturating_sub(pos)) as usize];
        let mut filled = 0;
        while filled < out.len() {
            match self.read_at(pos + filled as u64, &mut out[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        out.truncate(filled);
        Ok(out)
    }
}

/// A blocking reader over a pack from its start.
#[derive(Debug)]
pub struct PackReader {
    pack: Arc<Pack>,
    pos: u64,
}

impl Read for PackReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.pack.read_at(self.pos, out)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// openraft's snapshot data: either a snapshot being served (a lazy,
/// read-only stream of its pack, whose disk reads run on blocking
/// threads), or one being received (a file the chunks are written into).
#[derive(Debug)]
pub struct SnapshotData {
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    Reading(Box<Reading>),
    Receiving(tokio::fs::File),
}

#[derive(Debug)]
struct Reading {
    pack: Arc<Pack>,
    pos: u64,
    /// Bytes read ahead, starting at `buffered_at`.
    buffered: Vec<u8>,
    buffered_at: u64,
    /// A blocking read in flight: its position and result.
    pending: Option<(u64, JoinHandle<io::Result<Vec<u8>>>)>,
}

/// Where a finished [`SnapshotData`] is read from when installed.
#[derive(Debug)]
pub enum Received {
    /// A received pack, written into this file (any position).
    File(std::fs::File),
    /// A pack served locally, handed over as is.
    Pack(PackReader),
}

impl SnapshotData {
    /// A stream of `pack` for sending.
    pub fn reading(pack: Pack) -> SnapshotData {
        SnapshotData {
            mode: Mode::Reading(Box::new(Reading {
                pack: Arc::new(pack),
                pos: 0,
                buffered: Vec::new(),
                buffered_at: 0,
                pending: None,
            })),
        }
    }

    /// A receiver that writes into `file`.
    pub fn receiving(file: tokio::fs::File) -> SnapshotData {
        SnapshotData {
            mode: Mode::Receiving(file),
        }
    }

    /// Finishes writing (if receiving) and hands over what to install.
    pub async fn into_received(self) -> io::Result<Received> {
        match self.mode {
            Mode::Receiving(mut file) => {
                tokio::io::AsyncWriteExt::flush(&mut file).await?;
                Ok(Received::File(file.into_std().await))
            }
            Mode::Reading(reading) => Ok(Received::Pack(PackReader {
                pack: reading.pack,
                pos: 0,
            })),
        }
    }
}

impl Received {
    /// A blocking reader from the start of the pack (seeks a file; call
    /// on a blocking thread).
    pub fn into_reader(self) -> io::Result<Box<dyn Read + Send>> {
        match self {
            Received::File(mut file) => {
                io::Seek::rewind(&mut file)?;
                Ok(Box::new(file))
            }
            Received::Pack(reader) => Ok(Box::new(reader)),
        }
    }
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "a snapshot being served is read-only",
    )
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = match &mut self.mode {
            Mode::Receiving(file) => return Pin::new(file).poll_read(cx, buf),
            Mode::Reading(r) => r,
        };
        loop {
            let end = r.buffered_at + r.buffered.len() as u64;
            if r.pos >= r.buffered_at && r.pos < end {
                let from = (r.pos - r.buffered_at) as usize;
                let n = buf.remaining().min(r.buffered.len() - from);
                buf.put_slice(&r.buffered[from..from + n]);
                r.pos += n as u64;
                return Poll::Ready(Ok(()));
            }
            if r.pos >= r.pack.len() || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match &mut r.pending {
                Some((at, handle)) if *at == r.pos => {
                    let result = ready!(Pin::new(handle).poll(cx));
                    r.pending = None;
                    let bytes = result.map_err(io::Error::other)??;
                    if bytes.is_empty() {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    r.buffered_at = r.pos;
                    r.buffered = bytes;
                }
                _ => {
                    // Disk reads never run on the async worker.
                    let runtime =
                        tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
                    let (pack, at) = (Arc::clone(&r.pack), r.pos);
                    let handle = runtime.spawn_blocking(move || pack.read_chunk(at, CHUNK));
                    r.pending = Some((at, handle));
                }
            }
        }
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let r = match &mut self.mode {
            Mode::Receiving(file) => return Pin::new(file).start_seek(position),
            Mode::Reading(r) => r,
        };
        let target = match position {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => r.pack.len().checked_add_signed(d),
            SeekFrom::Current(d) => r.pos.checked_add_signed(d),
        };
        r.pos = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the snapshot",
            )
        })?;
        Ok(())
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        match &mut self.mode {
            Mode::Receiving(file) => Pin::new(file).poll_complete(cx),
            Mode::Reading(r) => Poll::Ready(Ok(r.pos)),
        }
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.mode {
            Mode::Receiving(file) => Pin::new(file).poll_write(cx, buf),
            Mode::Reading(_) => Poll::Ready(Err(read_only())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.mode {
            Mode::Receiving(file) => Pin::new(file).poll_flush(cx),
            Mode::Reading(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.mode {
            Mode::Receiving(file) => Pin::new(file).poll_shutdown(cx),
            Mode::Reading(_) => Poll::Ready(Ok(())),
        }
    }
}
