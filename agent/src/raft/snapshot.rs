//! Snapshots of the state machine on disk.
//!
//! A snapshot is a directory `snapshots/current/` holding `meta.json` (the
//! openraft metadata, the applied state: next offset, lowest offset,
//! producer table, and the data log's store files with their lengths at
//! build time) and hard links to those store files, so building one copies
//! no record and never holds the log in memory. Store files are
//! append-only below a snapshot's next offset, so the first `len` bytes of
//! each link stay what they were at build time however the data log grows,
//! rolls or seals; indexes are not kept (they are rebuilt from the stores
//! on restore). For transfer, the snapshot is streamed from those files up
//! to the frozen lengths ([`super::transfer`]); nothing is copied to serve
//! it.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use openraft::SnapshotMeta;
use serde::{Deserialize, Serialize};

use super::producers::ProducerTable;
use super::transfer::{self, Pack};
use super::Member;
use crate::log::SegmentInfo;

/// What the state machine had applied when a snapshot was taken.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    /// Offset the next applied record gets.
    pub next_offset: u64,
    /// Lowest offset retained (reads below it are out of range).
    pub lowest: u64,
    /// Idempotent producers.
    pub producers: ProducerTable,
}

/// A data-log store file of a snapshot and its length at build time: the
/// snapshot is its first `len` bytes (the file may have grown since).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenFile {
    /// File name, `{base:020}.store`.
    pub name: String,
    /// Bytes that belong to the snapshot.
    pub len: u64,
}

/// The contents of `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// openraft's metadata of the snapshot.
    pub meta: SnapshotMeta<u64, Member>,
    /// The applied state.
    pub state: AppliedState,
    /// The store files, oldest first, with their frozen lengths. Empty
    /// only in snapshots written before lengths were recorded; those are
    /// read with the files' lengths when loaded.
    #[serde(default)]
    pub files: Vec<FrozenFile>,
}

/// A snapshot being built: its store files are linked, its metadata not
/// yet written (see [`SnapshotDir::link`]).
#[derive(Debug)]
pub struct Building {
    dir: PathBuf,
    files: Vec<FrozenFile>,
}

/// Name of the metadata file of a snapshot (and of its pack entry).
pub const META: &str = "meta.json";

/// The `snapshots/` directory of a state machine.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    root: PathBuf,
}

fn invalid(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether `name` is a plain store file name, `{20 digits}.store` (never a
/// path: a peer must not write outside the snapshot directory).
pub(crate) fn is_store_name(name: &str) -> bool {
    name.len() == 26
        && name.as_bytes()[..20].iter().all(u8::is_ascii_digit)
        && name.ends_with(".store")
}

/// The name of the store file of the segment starting at `base`.
pub(crate) fn store_name(base: u64) -> String {
    format!("{base:020}.store")
}

/// Checks the file list of a received `meta.json`: store names in strictly
/// increasing order, each at least a store header and at most
/// [`transfer::MAX_FILE_BYTES`] long, at least one.
fn check_files(files: &[FrozenFile]) -> io::Result<()> {
    if files.is_empty() {
        return Err(invalid("snapshot lists no store file"));
    }
    for (i, f) in files.iter().enumerate() {
        if !is_store_name(&f.name) {
            return Err(invalid(format!(
                "snapshot entry {:?} is not a store file",
                f.name
            )));
        }
        if i > 0 && files[i - 1].name >= f.name {
            return Err(invalid(format!("snapshot file {} is out of order", f.name)));
        }
        if f.len < crate::log::store::HEADER_LEN || f.len > transfer::MAX_FILE_BYTES {
            return Err(invalid(format!(
                "snapshot file {} has an implausible length {}",
                f.name, f.len
            )));
        }
    }
    Ok(())
}

impl SnapshotDir {
    /// Uses (creating) `root`.
    pub fn open(root: PathBuf) -> io::Result<SnapshotDir> {
        fs::create_dir_all(&root)?;
        let dir = SnapshotDir { root };
        // A crash inside `make_current` can leave only `previous`.
        let previous = dir.root.join("previous");
        if !dir.current().exists() && previous.exists() {
            fs::rename(&previous, dir.current())?;
            sync_dir(&dir.root)?;
        }
        // Leftovers of a crash (a half-received stream, a build or install
        // cut short) and copies made by earlier versions, which packed
        // snapshots to disk: all would hold disk space until replaced.
        for stale in ["receiving", "packed", "packed.tmp"] {
            match fs::remove_file(dir.root.join(stale)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        for stale in ["building", "installing"] {
            let path = dir.root.join(stale);
            if path.exists() {
                fs::remove_dir_all(&path)?;
            }
        }
        Ok(dir)
    }

    fn current(&self) -> PathBuf {
        self.root.join("current")
    }

    /// The current snapshot's metadata, if there is one.
    pub fn load_current(&self) -> io::Result<Option<SnapshotFile>> {
        let current = self.current();
        let mut file: SnapshotFile = match fs::read(current.join(META)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| invalid(format!("snapshot meta.json: {e}")))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if file.files.is_empty() {
            // Written before lengths were recorded: take the store files
            // as they are now.
            for entry in fs::read_dir(&current)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_store_name(&name) {
                    let len = entry.metadata()?.len();
                    file.files.push(FrozenFile { name, len });
                }
            }
            file.files.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Ok(Some(file))
    }

    /// Starts a snapshot of the data log in `data_dir` whose segments are
    /// `segments`: hard-links each store file and records its current
    /// length. Cheap (no data is read or synced); the caller holds the
    /// data log still, then makes it durable and calls
    /// [`SnapshotDir::finish`].
    pub fn link(&self, data_dir: &Path, segments: &[SegmentInfo]) -> io::Result<Building> {
        let dir = self.fresh_dir("building")?;
        let mut files = Vec::with_capacity(segments.len());
        for s in segments {
            let name = store_name(s.base);
            fs::hard_link(data_dir.join(&name), dir.join(&name))?;
            files.push(FrozenFile { name, len: s.bytes });
        }
        Ok(Building { dir, files })
    }

    /// Writes the metadata of a snapshot started with [`SnapshotDir::link`]
    /// and makes it current (the data log is durable up to the frozen
    /// lengths by now). Returns its `meta.json` contents.
    pub fn finish(
        &self,
        building: Building,
        meta: SnapshotMeta<u64, Member>,
        state: AppliedState,
    ) -> io::Result<SnapshotFile> {
        let file = SnapshotFile {
            meta,
            state,
            files: building.files,
        };
        write_synced(&building.dir.join(META), &to_json(&file)?)?;
        sync_dir(&building.dir)?;
        self.make_current(&building.dir)?;
        Ok(file)
    }

    /// The current snapshot and a reader of its transfer form over its
    /// files (opened now, so a later snapshot replacing this one does not
    /// disturb it). Nothing is copied.
    pub fn open_current(&self) -> io::Result<Option<(SnapshotFile, Pack)>> {
        let Some(file) = self.load_current()? else {
            return Ok(None);
        };
        let pack = Pack::new(to_json(&file)?, &self.current(), &file.files)?;
        Ok(Some((file, pack)))
    }

    /// A new file to receive a packed snapshot into.
    pub fn receiving_file(&self) -> io::Result<PathBuf> {
        let path = self.root.join("receiving");
        File::create(&path)?;
        Ok(path)
    }

    /// Unpacks a received snapshot into a directory of its own, checking
    /// its form (magic, version, names, lengths, nothing after the last
    /// file), and records `meta` as its metadata. Not current yet: see
    /// [`SnapshotDir::make_received_current`].
    pub fn receive(
        &self,
        packed: impl Read,
        meta: &SnapshotMeta<u64, Member>,
    ) -> io::Result<Received> {
        let tmp = self.fresh_dir("installing")?;
        let mut r = BufReader::new(packed);
        let mut header = [0u8; transfer::HEADER_LEN];
        read_exact(&mut r, &mut header, "header")?;
        if header[..8] != transfer::MAGIC {
            return Err(invalid("not a proglog snapshot (bad magic)"));
        }
        if u32::from_le_bytes([header[8], header[9], header[10], header[11]]) != transfer::VERSION {
            return Err(invalid("unsupported snapshot format version"));
        }
        let (name, len) = read_entry_header(&mut r)?;
        if name != META {
            return Err(invalid(format!(
                "snapshot starts with {name:?}, not {META}"
            )));
        }
        if len > transfer::MAX_META_BYTES {
            return Err(invalid(format!(
                "snapshot {META} of {len} bytes is too large"
            )));
        }
        let mut bytes = vec![0u8; len as usize];
        read_exact(&mut r, &mut bytes, META)?;
        let mut file: SnapshotFile =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("{META}: {e}")))?;
        check_files(&file.files)?;
        for expected in &file.files {
            let (name, len) = read_entry_header(&mut r)?;
            if name != expected.name || len != expected.len {
                return Err(invalid(format!(
                    "snapshot entry {name:?} of {len} bytes where {META} lists {:?} of {}",
                    expected.name, expected.len
                )));
            }
            let mut out = File::create(tmp.join(&name))?;
            if io::copy(&mut (&mut r).take(len), &mut out)? != len {
                return Err(invalid(format!("snapshot entry {name} is truncated")));
            }
            out.sync_all()?;
        }
        if r.read(&mut [0u8; 1])? != 0 {
            return Err(invalid("snapshot has bytes after its last file"));
        }
        file.meta = meta.clone();
        write_synced(&tmp.join(META), &to_json(&file)?)?;
        sync_dir(&tmp)?;
        let _ = fs::remove_file(self.root.join("receiving"));
        Ok(Received { dir: tmp, file })
    }

    /// Makes a received snapshot current (after the caller checked that
    /// its files make a valid data log). Returns its `meta.json` contents.
    pub fn make_received_current(&self, received: Received) -> io::Result<SnapshotFile> {
        self.make_current(&received.dir)?;
        Ok(received.file)
    }

    /// Fills the empty directory `data_dir` with hard links to the current
    /// snapshot's store files (the data log rebuilds their indexes and is
    /// cut to the snapshot's next offset by the caller).
    pub fn restore_into(&self, data_dir: &Path) -> io::Result<()> {
        let file = self
            .load_current()?
            .ok_or_else(|| invalid("no current snapshot to restore"))?;
        link_files(&self.current(), &file.files, data_dir)
    }

    /// Fills the empty directory `data_dir` with hard links to the store
    /// files of a received snapshot (not current yet).
    pub fn restore_received(&self, received: &Received, data_dir: &Path) -> io::Result<()> {
        link_files(&received.dir, &received.file.files, data_dir)
    }

    fn fresh_dir(&self, name: &str) -> io::Result<PathBuf> {
        let dir = self.root.join(name);
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir(&dir)?;
        Ok(dir)
    }

    /// Atomically replaces `current` with `dir`.
    fn make_current(&self, dir: &Path) -> io::Result<()> {
        let current = self.current();
        let old = self.root.join("previous");
        if old.exists() {
            fs::remove_dir_all(&old)?;
        }
        if current.exists() {
            fs::rename(&current, &old)?;
        }
        fs::rename(dir, &current)?;
        sync_dir(&self.root)?;
        if old.exists() {
            fs::remove_dir_all(&old)?;
        }
        Ok(())
    }
}

/// A snapshot unpacked by [`SnapshotDir::receive`], not current yet.
#[derive(Debug)]
pub struct Received {
    dir: PathBuf,
    /// Its `meta.json` contents.
    pub file: SnapshotFile,
}

/// Hard-links `files` of `from` into `data_dir` (created) and syncs it.
fn link_files(from: &Path, files: &[FrozenFile], data_dir: &Path) -> io::Result<()> {
    fs::create_dir_all(data_dir)?;
    for f in files {
        fs::hard_link(from.join(&f.name), data_dir.join(&f.name))?;
    }
    sync_dir(data_dir)
}

/// Reads a pack entry's header: a store or meta name and a length.
fn read_entry_header(r: &mut impl Read) -> io::Result<(String, u64)> {
    let mut len2 = [0u8; 2];
    read_exact(r, &mut len2, "entry header")?;
    let name_len = u16::from_le_bytes(len2) as usize;
    if name_len > transfer::MAX_NAME_LEN {
        return Err(invalid(format!("snapshot entry name of {name_len} bytes")));
    }
    let mut name = vec![0u8; name_len];
    read_exact(r, &mut name, "entry name")?;
    let name = String::from_utf8(name).map_err(|_| invalid("snapshot entry name is not UTF-8"))?;
    if name != META && !is_store_name(&name) {
        return Err(invalid(format!(
            "snapshot entry {name:?} is not a store file"
        )));
    }
    let mut len8 = [0u8; 8];
    read_exact(r, &mut len8, "entry length")?;
    Ok((name, u64::from_le_bytes(len8)))
}

/// `read_exact` whose early end names what was cut short.
fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &str) -> io::Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            invalid(format!("snapshot is truncated in its {what}"))
        } else {
            e
        }
    })
}

fn to_json(file: &SnapshotFile) -> io::Result<Vec<u8>> {
    serde_json::to_vec(file).map_err(io::Error::other)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
