//! Durable per-inode offsets: `<state_dir>/checkpoints/<dev>-<ino>.json`, one file per
//! tracked inode, written atomically (temp file, fsync, rename, fsync of the directory) after
//! the sink has accepted a range. An acknowledged offset never moves backwards except when
//! the file itself was truncated.
//!
//! A checkpoint also records what the file was (birth time, a hash of its first bytes), so a
//! new file that got a freed inode number is not taken for the old one.
//!
//! A checkpoint that cannot be read or parsed is moved aside to `<name>.corrupt` with an
//! error naming it, and that inode is read from its current end: nothing is sent twice; what
//! the damaged checkpoint had not yet acknowledged is reported as possibly lost.

use std::{
    fs,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use collector_common::InodeKey;
use serde::{Deserialize, Serialize};

pub const FORMAT_VERSION: u32 = 1;
const HEAD_BYTES: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    /// Kernel device number and inode number.
    pub dev: u32,
    pub ino: u64,
    pub identity: Identity,
    pub flow: String,
    /// Last known path (for people reading the file; the inode is what counts).
    pub path: PathBuf,
    /// Every byte before this offset was accepted by the sink.
    pub acknowledged: u64,
    /// A copy or archive of a tracked file (logrotate's copy, a .gz): remembered so that it
    /// is never shipped, also after a restart, even when its name matches a pattern.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub derived: bool,
}

/// What tells this file from a later one with the same inode number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Birth time from statx, where the filesystem records it.
    pub birth_ns: Option<u128>,
    /// FNV-1a of the first `head_len` bytes.
    pub head_hash: u64,
    pub head_len: u32,
}

impl Identity {
    /// Reads the identity of an open file.
    pub fn of(file: &fs::File) -> std::io::Result<Identity> {
        let meta = file.metadata()?;
        let birth_ns =
            meta.created().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos());
        let mut head = [0u8; HEAD_BYTES];
        let n = read_head(file, &mut head)?;
        Ok(Identity { birth_ns, head_hash: fnv1a(&head[..n]), head_len: n as u32 })
    }

    /// Whether `file` is the file this identity was taken from. A file with a birth time is
    /// judged by it; otherwise by its first bytes (a file only grows at its end, so its
    /// first `head_len` bytes never change while it is the same file, unless truncated).
    pub fn matches(&self, file: &fs::File) -> std::io::Result<bool> {
        let now = Identity::of(file)?;
        if let (Some(a), Some(b)) = (self.birth_ns, now.birth_ns) {
            return Ok(a == b);
        }
        let mut head = [0u8; HEAD_BYTES];
        let n = read_head(file, &mut head)?;
        Ok(n >= self.head_len as usize && fnv1a(&head[..self.head_len as usize]) == self.head_hash)
    }
}

fn read_head(file: &fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt as _;
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The checkpoint directory of a state directory.
pub struct Store {
    dir: PathBuf,
}

/// What reading the store found for one inode.
pub enum Loaded {
    Found(Checkpoint),
    Missing,
    /// Unreadable or unparsable; moved aside to this path.
    Corrupt {
        moved_to: PathBuf,
        error: String,
    },
}

impl Store {
    pub fn open(state_dir: &Path) -> anyhow::Result<Store> {
        let dir = state_dir.join("checkpoints");
        fs::create_dir_all(&dir).with_context(|| format!("creating the checkpoint directory {}", dir.display()))?;
        Ok(Store { dir })
    }

    fn path(&self, inode: InodeKey) -> PathBuf {
        self.dir.join(format!("{}-{}.json", inode.dev, inode.ino))
    }

    pub fn load(&self, inode: InodeKey) -> Loaded {
        let path = self.path(inode);
        let mut text = String::new();
        let read = fs::File::open(&path).and_then(|mut f| f.read_to_string(&mut text));
        match read {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
            Err(e) => return self.set_aside(&path, e.to_string()),
            Ok(_) => {}
        }
        match serde_json::from_str::<Checkpoint>(&text) {
            Ok(c) if c.version == FORMAT_VERSION && c.dev == inode.dev && c.ino == inode.ino => Loaded::Found(c),
            Ok(c) => {
                self.set_aside(&path, format!("format version {} or inode {}-{} does not fit", c.version, c.dev, c.ino))
            }
            Err(e) => self.set_aside(&path, e.to_string()),
        }
    }

    fn set_aside(&self, path: &Path, error: String) -> Loaded {
        let moved_to = path.with_extension("json.corrupt");
        let _ = fs::rename(path, &moved_to);
        Loaded::Corrupt { moved_to, error }
    }

    /// Writes `checkpoint` durably: temp file, fsync, rename over the old one, fsync dir.
    /// A failure leaves the checkpoint before it in place and no temp file behind; a
    /// directory removed while running is made again.
    pub fn save(&self, checkpoint: &Checkpoint) -> anyhow::Result<()> {
        let path = self.path(InodeKey::new(checkpoint.dev, checkpoint.ino));
        let tmp = path.with_extension("json.tmp");
        let create = || fs::File::create(&tmp);
        let mut f = match create() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(&self.dir).with_context(|| format!("making {} again", self.dir.display()))?;
                create()
            }
            other => other,
        }
        .with_context(|| format!("creating {}", tmp.display()))?;
        let written = f
            .write_all(&serde_json::to_vec(checkpoint)?)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))
            .and_then(|()| fs::rename(&tmp, &path).with_context(|| format!("renaming {} over it", tmp.display())));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        fs::File::open(&self.dir).and_then(|d| d.sync_all()).with_context(|| format!("fsync of {}", self.dir.display()))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn remove(&self, inode: InodeKey) {
        let _ = fs::remove_file(self.path(inode));
    }

    /// Every checkpoint present, to resolve files that moved while the collector was down.
    pub fn all(&self) -> Vec<Checkpoint> {
        let Ok(entries) = fs::read_dir(&self.dir) else { return Vec::new() };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&fs::read(e.path()).ok()?).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("collector-ckpt-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_on_disk_format_is_pinned() {
        let c = Checkpoint {
            version: FORMAT_VERSION,
            dev: 0xfe00000,
            ino: 42,
            identity: Identity { birth_ns: Some(1_700_000_000_000_000_000), head_hash: 7, head_len: 64 },
            flow: "app".into(),
            path: "/var/log/app.log".into(),
            acknowledged: 1234,
            derived: false,
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"version":1,"dev":266338304,"ino":42,"identity":{"birth_ns":1700000000000000000,"head_hash":7,"head_len":64},"flow":"app","path":"/var/log/app.log","acknowledged":1234}"#
        );
    }

    #[test]
    fn saves_loads_and_sets_corrupt_files_aside() {
        let dir = scratch("store");
        let store = Store::open(&dir).unwrap();
        let key = InodeKey::new(1, 2);
        assert!(matches!(store.load(key), Loaded::Missing));
        let c = Checkpoint {
            version: FORMAT_VERSION,
            dev: 1,
            ino: 2,
            identity: Identity::default(),
            flow: "f".into(),
            path: "/x".into(),
            acknowledged: 9,
            derived: false,
        };
        store.save(&c).unwrap();
        assert!(matches!(store.load(key), Loaded::Found(found) if found == c));
        fs::write(dir.join("checkpoints/1-2.json"), b"{not json").unwrap();
        match store.load(key) {
            Loaded::Corrupt { moved_to, error } => {
                assert!(moved_to.ends_with("1-2.json.corrupt") && moved_to.exists(), "{moved_to:?}");
                assert!(error.contains("key must be a string"), "{error}");
            }
            _ => panic!("corrupt checkpoint not detected"),
        }
        assert!(matches!(store.load(key), Loaded::Missing), "set aside, not read again");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn identity_tells_a_reused_inode_from_the_same_file() {
        let dir = scratch("identity");
        let path = dir.join("a.log");
        fs::write(&path, b"first file\n").unwrap();
        let id = Identity::of(&fs::File::open(&path).unwrap()).unwrap();
        fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"more\n").unwrap();
        assert!(id.matches(&fs::File::open(&path).unwrap()).unwrap(), "growth keeps identity");
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"second file\n").unwrap();
        assert!(!id.matches(&fs::File::open(&path).unwrap()).unwrap(), "a new file is not the old one");
        fs::remove_dir_all(&dir).unwrap();
    }
}
