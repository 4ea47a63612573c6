//! Snapshots of the state machine on disk, and their transfer form.
//!
//! A snapshot is a directory `snapshots/current/` holding `meta.json` (the
//! openraft metadata and the applied state: next offset, lowest offset,
//! producer table) and hard links to the data log's segment files, so
//! building one copies no record and never holds the log in memory. Data
//! files are append-only below a snapshot's next offset, so the links stay
//! valid as the log grows. For transfer, the directory is packed into one
//! file: entries `name_len u16 | name | len u64 | bytes`.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use openraft::{BasicNode, SnapshotMeta};
use serde::{Deserialize, Serialize};

use super::producers::ProducerTable;

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

/// The contents of `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// openraft's metadata of the snapshot.
    pub meta: SnapshotMeta<u64, BasicNode>,
    /// The applied state.
    pub state: AppliedState,
}

const META: &str = "meta.json";

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

/// Whether a name from a packed snapshot is a plain segment or meta file
/// (never a path: a peer must not write outside the snapshot directory).
fn acceptable_name(name: &str) -> bool {
    name == META
        || (name.len() == 26
            && name.as_bytes()[..20].iter().all(u8::is_ascii_digit)
            && (name.ends_with(".store") || name.ends_with(".index")))
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
        Ok(dir)
    }

    fn current(&self) -> PathBuf {
        self.root.join("current")
    }

    /// The current snapshot's `meta.json` (a stand-in for its data where
    /// the data is not read; see `StateMachine::build`).
    pub fn current_meta_path(&self) -> PathBuf {
        self.current().join(META)
    }

    /// The current snapshot's metadata, if there is one.
    pub fn load_current(&self) -> io::Result<Option<SnapshotFile>> {
        match fs::read(self.current().join(META)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| invalid(format!("snapshot meta.json: {e}"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes a new current snapshot from the segment files of `data_dir`
    /// (hard links; the caller has synced the data log) and `file`.
    pub fn create(&self, data_dir: &Path, file: &SnapshotFile) -> io::Result<()> {
        let tmp = self.fresh_dir("building")?;
        for entry in fs::read_dir(data_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if acceptable_name(&name.to_string_lossy()) {
                fs::hard_link(entry.path(), tmp.join(&name))?;
            }
        }
        write_synced(
            &tmp.join(META),
            &serde_json::to_vec(file).expect("meta serializes"),
        )?;
        sync_dir(&tmp)?;
        self.make_current(&tmp)
    }

    /// Packs the current snapshot into one file for transfer.
    /// Packs once per snapshot: the file is reused until a new snapshot
    /// becomes current (which removes it).
    pub fn pack(&self) -> io::Result<PathBuf> {
        let current = self.current();
        let out = self.root.join("packed");
        if out.exists() {
            return Ok(out);
        }
        let tmp = self.root.join("packed.tmp");
        let mut w = BufWriter::new(File::create(&tmp)?);
        let mut names: Vec<_> = fs::read_dir(&current)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names.iter().filter(|n| acceptable_name(n)) {
            let mut f = File::open(current.join(name))?;
            let len = f.metadata()?.len();
            w.write_all(&(name.len() as u16).to_le_bytes())?;
            w.write_all(name.as_bytes())?;
            w.write_all(&len.to_le_bytes())?;
            let copied = io::copy(&mut (&mut f).take(len), &mut w)?;
            if copied != len {
                return Err(invalid(format!("{name} shrank while packing")));
            }
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, &out)?;
        Ok(out)
    }

    /// A new file to receive a packed snapshot into.
    pub fn receiving_file(&self) -> io::Result<PathBuf> {
        let path = self.root.join("receiving");
        File::create(&path)?;
        Ok(path)
    }

    /// Unpacks a received snapshot, records `meta` as its metadata, makes
    /// it current, and returns it.
    pub fn install(
        &self,
        packed: impl Read,
        meta: &SnapshotMeta<u64, BasicNode>,
    ) -> io::Result<SnapshotFile> {
        let tmp = self.fresh_dir("installing")?;
        let mut r = BufReader::new(packed);
        let mut file: Option<SnapshotFile> = None;
        loop {
            let mut len2 = [0u8; 2];
            match r.read_exact(&mut len2) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                other => other?,
            }
            let mut name = vec![0u8; u16::from_le_bytes(len2) as usize];
            r.read_exact(&mut name)?;
            let name =
                String::from_utf8(name).map_err(|_| invalid("snapshot entry name is not UTF-8"))?;
            if !acceptable_name(&name) {
                return Err(invalid(format!(
                    "snapshot entry {name:?} is not a segment file"
                )));
            }
            let mut len8 = [0u8; 8];
            r.read_exact(&mut len8)?;
            let len = u64::from_le_bytes(len8);
            if name == META {
                let mut bytes = Vec::new();
                (&mut r).take(len).read_to_end(&mut bytes)?;
                file = Some(
                    serde_json::from_slice(&bytes)
                        .map_err(|e| invalid(format!("meta.json: {e}")))?,
                );
                continue;
            }
            let mut out = File::create(tmp.join(&name))?;
            if io::copy(&mut (&mut r).take(len), &mut out)? != len {
                return Err(invalid(format!("snapshot entry {name} is truncated")));
            }
            out.sync_all()?;
        }
        let mut file = file.ok_or_else(|| invalid("snapshot has no meta.json"))?;
        file.meta = meta.clone();
        write_synced(
            &tmp.join(META),
            &serde_json::to_vec(&file).expect("meta serializes"),
        )?;
        sync_dir(&tmp)?;
        self.make_current(&tmp)?;
        let _ = fs::remove_file(self.root.join("receiving"));
        Ok(file)
    }

    /// Fills the empty directory `data_dir` with hard links to the current
    /// snapshot's segment files.
    pub fn restore_into(&self, data_dir: &Path) -> io::Result<()> {
        fs::create_dir_all(data_dir)?;
        for entry in fs::read_dir(self.current())? {
            let entry = entry?;
            let name = entry.file_name();
            if name != META {
                fs::hard_link(entry.path(), data_dir.join(&name))?;
            }
        }
        sync_dir(data_dir)
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
        let _ = fs::remove_file(self.root.join("packed"));
        Ok(())
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
