//! The WAL's file-system seam: every file operation of the log goes through
//! [`FileSystem`] and [`FileHandle`], so tests can swap the real disk
//! ([`RealFs`]) for a simulated one ([`SimFs`]) that loses, tears and
//! reorders what was written but not synced when the "power" goes, and
//! fails writes or syncs on demand.
//!
//! The index is memory-mapped on the real disk; here that is a
//! [`MappedFile`]: a byte view with explicit writes and flushes, which the
//! simulated disk treats as ordinary unsynced writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use memmap2::MmapMut;

/// The file operations the WAL needs. Paths are absolute or relative to
/// the process's working directory, as with `std::fs`.
pub trait FileSystem: Send + Sync + Debug {
    /// Creates a new, empty file for reading and writing; fails if it
    /// exists. The caller syncs the directory to make the name durable.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>>;
    /// Removes a file. Durable once the directory is synced.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing `to`. Durable once the directory is synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes the names created, removed or renamed in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whether `path` names a file or directory.
    fn exists(&self, path: &Path) -> bool;
    /// When the file was last written, where the file system knows.
    fn modified(&self, path: &Path) -> Option<SystemTime>;
}

/// Replaces the file at `path` with `bytes`, durably: a temporary file
/// beside it, written and synced, renamed over it, the directory synced.
/// A crash at any point leaves the old contents or the new, whole.
pub fn replace_durably(fs: &dyn FileSystem, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    if fs.exists(&tmp) {
        fs.remove(&tmp)?;
    }
    let file = fs.create(&tmp)?;
    file.write_all_at(bytes, 0)?;
    file.sync_data()?;
    drop(file);
    fs.rename(&tmp, path)?;
    fs.sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// The whole contents of the file at `path`; `None` if there is none.
pub fn read_whole(fs: &dyn FileSystem, path: &Path) -> io::Result<Option<Vec<u8>>> {
    if !fs.exists(path) {
        return Ok(None);
    }
    let file = fs.open(path)?;
    let mut bytes = vec![0; file.size()? as usize];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(Some(bytes))
}

/// An open file.
pub trait FileHandle: Send + Sync + Debug {
    /// Fills `buf` from position `pos`; fails at the end of the file.
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()>;
    /// Writes all of `buf` at `pos`, growing the file if needed.
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// The file's length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Truncates or extends (with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves disk space for the first `len` bytes (growing the file to
    /// `len` if shorter), so that later writes there cannot fail for lack
    /// of space. Files that are mapped need this: a write through a mapping
    /// that finds the disk full is not an error but a SIGBUS that kills the
    /// process.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// fdatasync: makes the data, and the size needed to read it, durable.
    fn sync_data(&self) -> io::Result<()>;
    /// fsync: makes data and metadata durable.
    fn sync_all(&self) -> io::Result<()>;
    /// Maps the whole file for reading and writing (the index).
    fn map(&self) -> io::Result<Box<dyn MappedFile>>;
}

/// A file mapped into memory: reads are plain slices, writes go through
/// [`MappedFile::write`] so a simulated disk sees them.
pub trait MappedFile: Send + Sync + Debug {
    /// The mapped bytes.
    fn bytes(&self) -> &[u8];
    /// Copies `data` to `at`. Not durable until flushed.
    fn write(&mut self, at: usize, data: &[u8]);
    /// Makes `len` bytes from `at` durable (msync).
    fn flush_range(&self, at: usize, len: usize) -> io::Result<()>;
}

/// The real disk, through `std::fs` and memmap2.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

/// A real file.
#[derive(Debug)]
struct RealFile(File);

/// A real mapping.
#[derive(Debug)]
struct RealMap(MmapMut);

impl FileSystem for RealFs {
    fn create(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Arc::new(RealFile(file)))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(RealFile(file)))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn modified(&self, path: &Path) -> Option<SystemTime> {
        std::fs::metadata(path).and_then(|m| m.modified()).ok()
    }
}

impl FileHandle for RealFile {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, pos)
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        use rustix::fs::{fallocate, FallocateFlags};
        if len == 0 {
            return Ok(());
        }
        match fallocate(&self.0, FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            // A file system without fallocate: rewrite every byte (zeros
            // past the old end), which makes it allocate the blocks.
            Err(e) if e == rustix::io::Errno::OPNOTSUPP => {
                if self.size()? < len {
                    self.0.set_len(len)?;
                }
                let mut chunk = vec![0u8; 64 * 1024];
                let mut at = 0;
                while at < len {
                    let n = chunk.len().min((len - at) as usize);
                    self.0.read_exact_at(&mut chunk[..n], at)?;
                    self.0.write_all_at(&chunk[..n], at)?;
                    at += n as u64;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn map(&self) -> io::Result<Box<dyn MappedFile>> {
        // SAFETY: the mapped file (an index) is private to this process:
        // the data dir is locked by one agent, and nothing writes or
        // truncates the file while it is mapped. Every access goes through
        // bounds-checked slices of the mapping, and the mapping keeps the
        // file's pages alive on its own after the handle is dropped.
        let map = unsafe { MmapMut::map_mut(&self.0) }?;
        Ok(Box::new(RealMap(map)))
    }
}

impl MappedFile for RealMap {
    fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn write(&mut self, at: usize, data: &[u8]) {
        self.0[at..at + data.len()].copy_from_slice(data);
    }

    fn flush_range(&self, at: usize, len: usize) -> io::Result<()> {
        self.0.flush_range(at, len)
    }
}

/// A simulated disk for power-loss and fault tests. Each file keeps what
/// is durable and the writes since the last sync; directory entries are
/// durable once their directory is synced. [`SimFs::crash`] ends the
/// world as a power cut would: synced data stays; each unsynced write is
/// kept, dropped or torn (a prefix of it kept), independently, so later
/// writes may survive earlier ones; unsynced names vanish and unsynced
/// removals come back. Handles opened before a crash fail afterwards.
/// Clones share the disk.
#[derive(Debug, Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<SimState>>,
    /// Wakes fdatasync calls held by [`SimFs::hold_syncs`].
    released: Arc<Condvar>,
}

/// Faults a [`SimFs`] injects until switched off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Every write fails with EIO.
    pub write: bool,
    /// Every fsync/fdatasync/msync fails with EIO, and (as Linux may) the
    /// unsynced writes it was to make durable are lost at the next crash.
    pub sync: bool,
    /// Every write fails with ENOSPC.
    pub full: bool,
}

#[derive(Debug, Default)]
struct SimState {
    /// Files by inode.
    files: HashMap<u64, SimFile>,
    next_inode: u64,
    /// The namespace as processes see it.
    names: BTreeMap<PathBuf, u64>,
    /// The namespace as it would survive a crash.
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    /// Incremented by each crash; handles of an older epoch are dead.
    epoch: u64,
    faults: Faults,
    /// fdatasync calls wait while set (to catch a sync round in flight).
    held: bool,
    /// fdatasync calls waiting on `held`.
    waiting: u64,
}

#[derive(Debug, Default, Clone)]
struct SimFile {
    /// Contents after the last successful sync.
    durable: Vec<u8>,
    /// Contents as readers see them.
    cache: Vec<u8>,
    /// Changes since the last sync, oldest first.
    pending: Vec<Change>,
    modified: Option<SystemTime>,
}

#[derive(Debug, Clone)]
enum Change {
    Write { pos: u64, data: Vec<u8> },
    SetLen(u64),
}

impl Change {
    fn apply(&self, to: &mut Vec<u8>) {
        match self {
            Change::Write { pos, data } => {
                let (pos, end) = (*pos as usize, *pos as usize + data.len());
                if to.len() < end {
                    to.resize(end, 0);
                }
                to[pos..end].copy_from_slice(data);
            }
            Change::SetLen(len) => to.resize(*len as usize, 0),
        }
    }
}

/// A small deterministic generator (xorshift) so a crash is reproducible
/// from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated I/O error: {what}"))
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl SimFs {
    /// An empty disk.
    pub fn new() -> SimFs {
        SimFs::default()
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the faults injected from now on.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Makes fdatasync calls (not fsync) wait until released: a test can
    /// then act while a sync round is in flight.
    pub fn hold_syncs(&self, held: bool) {
        self.lock().held = held;
        self.released.notify_all();
    }

    /// fdatasync calls now waiting on [`SimFs::hold_syncs`].
    pub fn held_syncs(&self) -> u64 {
        self.lock().waiting
    }

    /// Cuts the power: what survives is decided from `seed` (see
    /// [`SimFs`]). Faults are cleared, as on a new boot.
    pub fn crash(&self, seed: u64) {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut st = self.lock();
        st.epoch += 1;
        st.faults = Faults::default();
        st.names = st.durable_names.clone();
        let live: BTreeSet<u64> = st.names.values().copied().collect();
        st.files.retain(|inode, _| live.contains(inode));
        for file in st.files.values_mut() {
            let mut after = file.durable.clone();
            for change in std::mem::take(&mut file.pending) {
                match rng.below(4) {
                    0 => {} // lost
                    1 => match change {
                        // torn: a prefix of the write reached the disk
                        Change::Write { pos, data } => {
                            let keep = rng.below(data.len() as u64 + 1) as usize;
                            Change::Write {
                                pos,
                                data: data[..keep].to_vec(),
                            }
                            .apply(&mut after)
                        }
                        other => other.apply(&mut after),
                    },
                    _ => change.apply(&mut after),
                }
            }
            file.durable = after.clone();
            file.cache = after;
        }
    }

    /// The bytes of a file as a reader sees them now (for tests).
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.lock();
        let inode = st.names.get(path)?;
        st.files.get(inode).map(|f| f.cache.clone())
    }

    fn handle(&self, inode: u64, epoch: u64) -> Arc<dyn FileHandle> {
        Arc::new(SimHandle {
            fs: self.clone(),
            inode,
            epoch,
        })
    }
}

impl FileSystem for SimFs {
    fn create(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        let mut st = self.lock();
        if st.names.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists", path.display()),
            ));
        }
        if st.faults.write || st.faults.full {
            return Err(eio("create"));
        }
        let inode = st.next_inode;
        st.next_inode += 1;
        st.files.insert(inode, SimFile::default());
        st.names.insert(path.to_path_buf(), inode);
        let epoch = st.epoch;
        drop(st);
        Ok(self.handle(inode, epoch))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        let st = self.lock();
        let inode = *st.names.get(path).ok_or_else(|| not_found(path))?;
        let epoch = st.epoch;
        drop(st);
        Ok(self.handle(inode, epoch))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.names.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        let inode = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        // Directories are durable at once: the log syncs their parents
        // after creating them, and nothing here tests losing them.
        let mut st = self.lock();
        for dir in path.ancestors() {
            st.dirs.insert(dir.to_path_buf());
        }
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.names.retain(|name, _| !name.starts_with(path));
        st.durable_names.retain(|name, _| !name.starts_with(path));
        st.dirs.retain(|dir| !dir.starts_with(path));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if st.faults.sync {
            return Err(eio("directory fsync"));
        }
        let in_dir = |name: &PathBuf| name.parent() == Some(dir);
        let live: Vec<(PathBuf, u64)> = st
            .names
            .iter()
            .filter(|(name, _)| in_dir(name))
            .map(|(n, i)| (n.clone(), *i))
            .collect();
        st.durable_names.retain(|name, _| !in_dir(name));
        st.durable_names.extend(live);
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.lock();
        if !st.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(st
            .names
            .keys()
            .filter(|name| name.parent() == Some(dir))
            .filter_map(|name| name.file_name()?.to_str().map(str::to_string))
            .collect())
    }

    fn exists(&self, path: &Path) -> bool {
        let st = self.lock();
        st.names.contains_key(path) || st.dirs.contains(path)
    }

    fn modified(&self, path: &Path) -> Option<SystemTime> {
        let st = self.lock();
        st.files.get(st.names.get(path)?)?.modified
    }
}

/// An open file of a [`SimFs`].
#[derive(Debug)]
struct SimHandle {
    fs: SimFs,
    inode: u64,
    epoch: u64,
}

impl SimHandle {
    /// Runs `f` on the file unless a crash happened since it was opened.
    fn with<T>(&self, f: impl FnOnce(&mut SimFile, &mut Faults) -> io::Result<T>) -> io::Result<T> {
        let mut st = self.fs.lock();
        if st.epoch != self.epoch {
            return Err(eio("handle opened before a crash"));
        }
        let mut faults = st.faults;
        let file = st
            .files
            .get_mut(&self.inode)
            .ok_or_else(|| eio("file vanished"))?;
        f(file, &mut faults)
    }

    fn change(&self, change: Change) -> io::Result<()> {
        self.with(|file, faults| {
            if faults.full {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "simulated: no space left on device",
                ));
            }
            if faults.write {
                return Err(eio("write"));
            }
            change.apply(&mut file.cache);
            file.pending.push(change);
            file.modified = Some(SystemTime::now());
            Ok(())
        })
    }

    fn sync(&self) -> io::Result<()> {
        self.with(|file, faults| {
            if faults.sync {
                // As Linux may: the failed pages are marked clean and
                // their data never reaches the disk.
                file.pending.clear();
                return Err(eio("fsync"));
            }
            file.pending.clear();
            file.durable = file.cache.clone();
            Ok(())
        })
    }

    /// fdatasync: waits while syncs are held, then syncs.
    fn sync_data_held(&self) -> io::Result<()> {
        let mut st = self.fs.lock();
        if st.held {
            st.waiting += 1;
            while st.held {
                st = self.fs.released.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.waiting -= 1;
        }
        drop(st);
        self.sync()
    }
}

impl FileHandle for SimHandle {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.with(|file, _| {
            let start = usize::try_from(pos).unwrap_or(usize::MAX);
            match start
                .checked_add(buf.len())
                .and_then(|end| file.cache.get(start..end))
            {
                Some(bytes) => {
                    buf.copy_from_slice(bytes);
                    Ok(())
                }
                None => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the file",
                )),
            }
        })
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.change(Change::Write {
            pos,
            data: buf.to_vec(),
        })
    }

    fn size(&self) -> io::Result<u64> {
        self.with(|file, _| Ok(file.cache.len() as u64))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.change(Change::SetLen(len))
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        // Space is not counted here; a full disk is a fault like a write's.
        if self.size()? < len {
            self.change(Change::SetLen(len))
        } else {
            self.with(|_, faults| match faults.full {
                true => Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "simulated: no space left on device",
                )),
                false => Ok(()),
            })
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync_data_held()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }

    fn map(&self) -> io::Result<Box<dyn MappedFile>> {
        let bytes = self.with(|file, _| Ok(file.cache.clone()))?;
        Ok(Box::new(SimMap {
            handle: SimHandle {
                fs: self.fs.clone(),
                inode: self.inode,
                epoch: self.epoch,
            },
            bytes,
        }))
    }
}

/// A mapping of a [`SimFs`] file: its own copy of the bytes, with every
/// write also recorded as an unsynced write of the file (the kernel may
/// write dirty pages back at any time, in any order).
#[derive(Debug)]
struct SimMap {
    handle: SimHandle,
    bytes: Vec<u8>,
}

impl MappedFile for SimMap {
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn write(&mut self, at: usize, data: &[u8]) {
        self.bytes[at..at + data.len()].copy_from_slice(data);
        // A failed write to a mapping is not reported (as with a real
        // one); only the flush fails.
        let _ = self.handle.change(Change::Write {
            pos: at as u64,
            data: data.to_vec(),
        });
    }

    fn flush_range(&self, _at: usize, _len: usize) -> io::Result<()> {
        self.handle.sync()
    }
}
