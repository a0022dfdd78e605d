//! Durable per-inode offsets, in one store for every file: `<state_dir>/checkpoints/store.jsonl`,
//! a header line and then one JSON line per change (a checkpoint saved, or one removed). The
//! changes of one pass are appended together and made durable with one fdatasync, however
//! many files they cover; when the log has grown to several times what it holds, it is
//! rewritten with only the latest of each (temp file, fsync, rename, fsync of the
//! directory). An acknowledged offset never moves backwards except when the file itself was
//! truncated.
//!
//! A checkpoint also records what the file was (birth time, a hash of its first bytes), so a
//! new file that got a freed inode number is not taken for the old one.
//!
//! Upgrade: the previous format, one `<dev>-<ino>.json` per inode in the same directory, is
//! read in when the store is opened, written to the log, and removed once the log holds it.
//! A line of the log that cannot be parsed is skipped and named (the last one is expected
//! after a crash in the middle of an append); a per-inode file that cannot be read is moved
//! aside to `<name>.corrupt` and its inode read from its current end: nothing is sent twice;
//! what it had not acknowledged yet is reported as possibly lost.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use collector_common::InodeKey;
use serde::{Deserialize, Serialize};

/// The version of one checkpoint record (the previous release wrote 1, one file per inode).
pub const FORMAT_VERSION: u32 = 2;
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
    /// The bytes just before `acknowledged` when it was saved (none at 0, or when the file
    /// was shorter by then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_bytes: Option<LastBytes>,
}

/// How many bytes before a checkpoint's offset it records a hash of.
pub const LAST_BYTES: usize = 64;

/// A hash of the bytes just before a checkpoint's offset. A file truncated while the
/// collector was down, and written past the offset since, no longer has them there: it is
/// read from its start, not from the middle of a line of its new contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastBytes {
    pub len: u32,
    pub hash: u64,
}

impl LastBytes {
    /// The last bytes of `file` before `end` (up to LAST_BYTES), if it has them all.
    pub fn of(file: &fs::File, end: u64) -> Option<LastBytes> {
        use std::os::unix::fs::FileExt as _;
        let len = (end as usize).min(LAST_BYTES);
        if len == 0 {
            return None;
        }
        let mut buf = [0u8; LAST_BYTES];
        file.read_exact_at(&mut buf[..len], end - len as u64).ok()?;
        Some(LastBytes { len: len as u32, hash: fnv1a(&buf[..len]) })
    }

    /// Whether `file` still has these bytes before `end`.
    pub fn still_in(&self, file: &fs::File, end: u64) -> bool {
        LastBytes::of(file, end) == Some(*self)
    }
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

/// The store's own format (the header line); a later one is refused, not misread.
pub const STORE_VERSION: u32 = 2;
/// The per-inode files of the previous release, read in on upgrade.
const PER_INODE_VERSION: u32 = 1;
const LOG_NAME: &str = "store.jsonl";
/// The log is rewritten once it holds this many lines more than twice what is live.
const COMPACT_SLACK: usize = 1000;
/// Bytes of the pending-changes buffer kept from one commit to the next.
const PENDING_KEPT: usize = 64 << 10;

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
}

const FORMAT_NAME: &str = "collector checkpoints";

/// One line of the log after the header.
#[derive(Serialize)]
#[serde(untagged)]
enum Change {
    Saved(Checkpoint),
    Removed(Removed),
}

#[derive(Serialize, Deserialize)]
struct Removed {
    removed: bool,
    dev: u32,
    ino: u64,
}

impl Change {
    /// Tried as each kind in turn: serde's untagged parsing cannot read a u128 (birth_ns).
    fn parse(line: &[u8]) -> serde_json::Result<Change> {
        serde_json::from_slice(line)
            .map(Change::Saved)
            .or_else(|e| serde_json::from_slice(line).map(Change::Removed).map_err(|_| e))
    }
}

/// Every checkpoint, held in memory and kept durable in the state directory.
pub struct Store {
    dir: PathBuf,
    entries: crate::inode_map::InodeMap<Checkpoint>,
    /// Per-inode files of the previous format found unreadable on upgrade (set aside), to
    /// report once when their inode is looked up.
    corrupt: crate::inode_map::InodeMap<(PathBuf, String)>,
    /// Lines changed since the last commit, to append.
    pending: Vec<u8>,
    /// Lines in the log file now (header excluded).
    log_lines: usize,
    /// Whether the next commit may append to the log; if not, it rewrites it whole (after
    /// a failure, which may have left a partial line). The log is opened per commit, not
    /// held: a file held open for writing would keep its filesystem from being remounted.
    appendable: bool,
}

/// What the store holds for one inode.
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
    /// Opens (or makes) the store of `state_dir`, reading in the previous format's files.
    pub fn open(state_dir: &Path) -> anyhow::Result<Store> {
        let dir = state_dir.join("checkpoints");
        fs::create_dir_all(&dir).with_context(|| format!("creating the checkpoint directory {}", dir.display()))?;
        let mut store = Store {
            dir,
            entries: Default::default(),
            corrupt: Default::default(),
            pending: Vec::new(),
            log_lines: 0,
            appendable: false,
        };
        store.read_log()?;
        let upgraded = store.read_per_inode_files();
        // Written whole at once: the log then holds what the old files did, and nothing torn.
        store.rewrite()?;
        store.appendable = true;
        for path in upgraded {
            let _ = fs::remove_file(path);
        }
        Ok(store)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_NAME)
    }

    fn read_log(&mut self) -> anyhow::Result<()> {
        let path = self.log_path();
        let text = match fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            other => other.with_context(|| format!("reading {}", path.display()))?,
        };
        let mut lines = text.split(|b| *b == b'\n').enumerate().filter(|(_, l)| !l.is_empty()).peekable();
        match lines.next().map(|(_, l)| serde_json::from_slice::<Header>(l)) {
            None => return Ok(()),
            Some(Ok(h)) if h.format == FORMAT_NAME && h.version == STORE_VERSION => {}
            Some(Ok(h)) => anyhow::bail!(
                "{}: checkpoint store format {} version {} is not one this collector reads (written by a newer \
                 release?); move it away to start over, which reads every file again from its initial position",
                path.display(),
                h.format,
                h.version
            ),
            Some(Err(e)) => anyhow::bail!("{}: line 1 is not a checkpoint store header: {e}", path.display()),
        }
        while let Some((i, line)) = lines.next() {
            match Change::parse(line) {
                Ok(Change::Saved(c)) => {
                    self.entries.insert(InodeKey::new(c.dev, c.ino), c);
                }
                Ok(Change::Removed(Removed { dev, ino, .. })) => {
                    self.entries.remove(&InodeKey::new(dev, ino));
                }
                // A crash in the middle of an append leaves the last line partial.
                Err(_) if lines.peek().is_none() => {
                    tracing::warn!(path = %path.display(), line = i + 1, "a partial last line of the checkpoint store (a crash while saving), skipped: the checkpoint before it holds");
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), line = i + 1, "an unreadable line of the checkpoint store, skipped ({e}): the file it was for is read from its checkpoint before, or from its initial position");
                }
            }
            self.log_lines += 1;
        }
        Ok(())
    }

    /// The previous release's `<dev>-<ino>.json` files: what the log does not hold already
    /// is taken in. Returns the files read, to remove once the log is durable.
    fn read_per_inode_files(&mut self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut read = Vec::new();
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| serde_json::from_slice::<Checkpoint>(&text).map_err(|e| e.to_string()))
                .and_then(|c| {
                    if c.version == PER_INODE_VERSION {
                        Ok(c)
                    } else {
                        Err(format!("format version {} is not {PER_INODE_VERSION}", c.version))
                    }
                });
            match parsed {
                Ok(mut c) => {
                    let key = InodeKey::new(c.dev, c.ino);
                    c.version = FORMAT_VERSION;
                    self.entries.entry(key).or_insert(c);
                    read.push(path);
                }
                Err(error) => {
                    let moved_to = path.with_extension("json.corrupt");
                    let _ = fs::rename(&path, &moved_to);
                    if let Some(key) = key_of_file_name(&path) {
                        self.corrupt.insert(key, (moved_to, error));
                    }
                }
            }
        }
        if !read.is_empty() {
            tracing::info!(dir = %self.dir.display(), files = read.len(), "checkpoints of the previous format taken into the checkpoint store");
        }
        read
    }

    pub fn load(&mut self, inode: InodeKey) -> Loaded {
        if let Some((moved_to, error)) = self.corrupt.remove(&inode) {
            return Loaded::Corrupt { moved_to, error };
        }
        match self.entries.get(&inode) {
            Some(c) => Loaded::Found(c.clone()),
            None => Loaded::Missing,
        }
    }

    /// Records `checkpoint`; durable at the next `commit`.
    pub fn save(&mut self, checkpoint: Checkpoint) {
        self.append(&Change::Saved(checkpoint.clone()));
        self.entries.insert(InodeKey::new(checkpoint.dev, checkpoint.ino), checkpoint);
    }

    /// Forgets `inode`'s checkpoint; durable at the next `commit`.
    pub fn remove(&mut self, inode: InodeKey) {
        if self.entries.remove(&inode).is_some() {
            self.append(&Change::Removed(Removed { removed: true, dev: inode.dev, ino: inode.ino }));
        }
    }

    fn append(&mut self, change: &Change) {
        serde_json::to_writer(&mut self.pending, change).expect("a checkpoint serializes");
        self.pending.push(b'\n');
    }

    /// Whether changes wait for `commit`.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Makes every change since the last commit durable: appended with one fdatasync, or
    /// the log rewritten whole (after a failure, when the log was removed, or when it has
    /// grown to several times what it holds). On failure nothing of them can be counted on
    /// (the caller saves them again), and the next commit rewrites the log whole.
    pub fn commit(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let compact = self.log_lines.saturating_sub(2 * self.entries.len()) > COMPACT_SLACK;
        let result = if self.appendable && !compact { self.append_pending() } else { self.rewrite() };
        self.pending.clear();
        // A start-up's thousands of checkpoints need megabytes once; later commits, little.
        self.pending.shrink_to(PENDING_KEPT);
        self.appendable = result.is_ok();
        result
    }

    fn append_pending(&mut self) -> anyhow::Result<()> {
        let path = self.log_path();
        let mut log = match fs::OpenOptions::new().append(true).open(&path) {
            // A directory removed while running is made again, and the log in it whole.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.rewrite(),
            other => other.with_context(|| format!("opening {}", path.display()))?,
        };
        log.write_all(&self.pending)
            .and_then(|()| log.sync_data())
            .with_context(|| format!("appending to {}", path.display()))?;
        self.log_lines += self.pending.iter().filter(|b| **b == b'\n').count();
        Ok(())
    }

    /// Writes the log anew with the latest checkpoint of each inode.
    fn rewrite(&mut self) -> anyhow::Result<()> {
        let path = self.log_path();
        let tmp = path.with_extension("jsonl.tmp");
        let mut text = serde_json::to_vec(&Header { format: FORMAT_NAME.into(), version: STORE_VERSION })?;
        text.push(b'\n');
        for c in self.entries.values() {
            serde_json::to_writer(&mut text, &Change::Saved(c.clone()))?;
            text.push(b'\n');
        }
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
            .write_all(&text)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))
            .and_then(|()| fs::rename(&tmp, &path).with_context(|| format!("renaming {} over it", tmp.display())));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("fsync of {}", self.dir.display()))?;
        self.log_lines = self.entries.len();
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every checkpoint held, to resolve files that moved while the collector was down.
    pub fn all(&self) -> Vec<Checkpoint> {
        self.entries.values().cloned().collect()
    }
}

/// The inode a previous-format file `<dev>-<ino>.json` was for.
fn key_of_file_name(path: &Path) -> Option<InodeKey> {
    let stem = path.file_stem()?.to_str()?;
    let (dev, ino) = stem.split_once('-')?;
    Some(InodeKey::new(dev.parse().ok()?, ino.parse().ok()?))
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

    fn checkpoint(dev: u32, ino: u64, acknowledged: u64) -> Checkpoint {
        Checkpoint {
            version: FORMAT_VERSION,
            dev,
            ino,
            identity: Identity::default(),
            flow: "f".into(),
            path: "/x".into(),
            acknowledged,
            derived: false,
            last_bytes: None,
        }
    }

    #[test]
    fn the_on_disk_format_is_pinned() {
        let dir = scratch("format");
        let mut store = Store::open(&dir).unwrap();
        store.save(Checkpoint {
            version: FORMAT_VERSION,
            dev: 0xfe00000,
            ino: 42,
            identity: Identity { birth_ns: Some(1_700_000_000_000_000_000), head_hash: 7, head_len: 64 },
            flow: "app".into(),
            path: "/var/log/app.log".into(),
            acknowledged: 1234,
            derived: false,
            last_bytes: Some(LastBytes { len: 64, hash: 9 }),
        });
        store.remove(InodeKey::new(1, 2)); // not held: nothing to say
        store.save(checkpoint(1, 2, 5));
        store.remove(InodeKey::new(1, 2));
        store.commit().unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("checkpoints/store.jsonl")).unwrap(),
            concat!(
                r#"{"format":"collector checkpoints","version":2}"#,
                "\n",
                r#"{"version":2,"dev":266338304,"ino":42,"identity":{"birth_ns":1700000000000000000,"head_hash":7,"head_len":64},"flow":"app","path":"/var/log/app.log","acknowledged":1234,"last_bytes":{"len":64,"hash":9}}"#,
                "\n",
                r#"{"version":2,"dev":1,"ino":2,"identity":{"birth_ns":null,"head_hash":0,"head_len":0},"flow":"f","path":"/x","acknowledged":5}"#,
                "\n",
                r#"{"removed":true,"dev":1,"ino":2}"#,
                "\n",
            )
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_commit_saves_many_and_a_reopened_store_reads_the_latest_of_each() {
        let dir = scratch("store");
        let mut store = Store::open(&dir).unwrap();
        assert!(matches!(store.load(InodeKey::new(1, 2)), Loaded::Missing));
        for ino in 0..1000 {
            store.save(checkpoint(1, ino, ino));
        }
        store.commit().unwrap();
        store.save(checkpoint(1, 7, 70));
        store.remove(InodeKey::new(1, 8));
        store.commit().unwrap();
        drop(store);
        let mut again = Store::open(&dir).unwrap();
        assert_eq!(again.all().len(), 999);
        assert!(matches!(again.load(InodeKey::new(1, 7)), Loaded::Found(c) if c.acknowledged == 70));
        assert!(matches!(again.load(InodeKey::new(1, 8)), Loaded::Missing));
        assert!(matches!(again.load(InodeKey::new(1, 9)), Loaded::Found(c) if c.acknowledged == 9));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_partial_last_line_is_skipped_and_the_checkpoint_before_it_holds() {
        let dir = scratch("torn");
        let mut store = Store::open(&dir).unwrap();
        store.save(checkpoint(1, 2, 10));
        store.commit().unwrap();
        drop(store);
        let log = dir.join("checkpoints/store.jsonl");
        let mut f = fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(br#"{"version":2,"dev":1,"ino":2,"ident"#).unwrap();
        drop(f);
        let mut again = Store::open(&dir).unwrap();
        assert!(matches!(again.load(InodeKey::new(1, 2)), Loaded::Found(c) if c.acknowledged == 10));
        // Opening rewrote the log whole: the partial line is gone.
        assert!(!fs::read_to_string(&log).unwrap().contains("ident\n"));
        again.save(checkpoint(1, 2, 20));
        again.commit().unwrap();
        drop(again);
        assert!(
            matches!(Store::open(&dir).unwrap().load(InodeKey::new(1, 2)), Loaded::Found(c) if c.acknowledged == 20)
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_store_of_a_later_format_is_refused_not_misread() {
        let dir = scratch("later");
        fs::create_dir_all(dir.join("checkpoints")).unwrap();
        fs::write(dir.join("checkpoints/store.jsonl"), b"{\"format\":\"collector checkpoints\",\"version\":3}\n")
            .unwrap();
        let error = format!("{:#}", Store::open(&dir).err().expect("refused"));
        assert!(error.contains("store.jsonl") && error.contains("version 3"), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_log_is_compacted_once_it_holds_far_more_than_is_live() {
        let dir = scratch("compact");
        let mut store = Store::open(&dir).unwrap();
        for n in 0..3000 {
            store.save(checkpoint(1, 2, n));
            store.commit().unwrap();
        }
        let lines = fs::read_to_string(dir.join("checkpoints/store.jsonl")).unwrap().lines().count();
        assert!(lines <= COMPACT_SLACK + 3, "{lines} lines for one file");
        drop(store);
        assert!(
            matches!(Store::open(&dir).unwrap().load(InodeKey::new(1, 2)), Loaded::Found(c) if c.acknowledged == 2999)
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_removed_directory_is_made_again_with_everything_in_it() {
        let dir = scratch("removed");
        let mut store = Store::open(&dir).unwrap();
        store.save(checkpoint(1, 2, 10));
        store.commit().unwrap();
        fs::remove_dir_all(dir.join("checkpoints")).unwrap();
        store.save(checkpoint(1, 3, 30));
        store.commit().unwrap();
        drop(store);
        let mut again = Store::open(&dir).unwrap();
        assert!(matches!(again.load(InodeKey::new(1, 2)), Loaded::Found(c) if c.acknowledged == 10));
        assert!(matches!(again.load(InodeKey::new(1, 3)), Loaded::Found(c) if c.acknowledged == 30));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The previous release wrote one `<dev>-<ino>.json` per inode (format version 1): they
    /// are taken in, removed once the log holds them, and a corrupt one is set aside and
    /// reported for its inode.
    #[test]
    fn the_previous_format_is_upgraded_and_a_corrupt_file_set_aside() {
        let dir = scratch("upgrade");
        let old = dir.join("checkpoints");
        fs::create_dir_all(&old).unwrap();
        fs::write(
            old.join("266338304-42.json"),
            r#"{"version":1,"dev":266338304,"ino":42,"identity":{"birth_ns":1700000000000000000,"head_hash":7,"head_len":64},"flow":"app","path":"/var/log/app.log","acknowledged":1234}"#,
        )
        .unwrap();
        fs::write(old.join("1-5.json"), r#"{"version":1,"dev":1,"ino":5,"identity":{"head_hash":0,"head_len":0},"flow":"app","path":"/c","acknowledged":0,"derived":true}"#).unwrap();
        fs::write(old.join("1-2.json"), b"{not json").unwrap();
        let mut store = Store::open(&dir).unwrap();
        match store.load(InodeKey::new(266338304, 42)) {
            Loaded::Found(c) => {
                assert_eq!(
                    (c.acknowledged, c.flow.as_str(), c.identity.birth_ns),
                    (1234, "app", Some(1_700_000_000_000_000_000))
                )
            }
            _ => panic!("not taken in"),
        }
        assert!(matches!(store.load(InodeKey::new(1, 5)), Loaded::Found(c) if c.derived));
        match store.load(InodeKey::new(1, 2)) {
            Loaded::Corrupt { moved_to, error } => {
                assert!(moved_to.ends_with("1-2.json.corrupt") && moved_to.exists(), "{moved_to:?}");
                assert!(error.contains("key must be a string"), "{error}");
            }
            _ => panic!("corrupt checkpoint not reported"),
        }
        assert!(matches!(store.load(InodeKey::new(1, 2)), Loaded::Missing), "reported once");
        assert!(!old.join("266338304-42.json").exists() && !old.join("1-5.json").exists(), "removed once taken in");
        drop(store);
        let log = fs::read_to_string(dir.join("checkpoints/store.jsonl")).unwrap();
        let mut again = Store::open(&dir).unwrap();
        assert!(
            matches!(again.load(InodeKey::new(266338304, 42)), Loaded::Found(c) if c.acknowledged == 1234),
            "{log}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_last_bytes_before_a_checkpoint_tell_a_file_truncated_and_written_again() {
        let dir = scratch("last-bytes");
        let path = dir.join("a.log");
        fs::write(&path, b"line one\nline two\n").unwrap();
        let last = LastBytes::of(&fs::File::open(&path).unwrap(), 18).unwrap();
        assert_eq!(last.len, 18);
        fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"line three\n").unwrap();
        assert!(last.still_in(&fs::File::open(&path).unwrap(), 18), "growth keeps them");
        fs::write(&path, b"new contents, longer than before\n").unwrap();
        assert!(!last.still_in(&fs::File::open(&path).unwrap(), 18), "truncated and written again");
        assert_eq!(LastBytes::of(&fs::File::open(&path).unwrap(), 0), None);
        assert_eq!(LastBytes::of(&fs::File::open(&path).unwrap(), 1000), None, "shorter than the offset");
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
