//! Which inodes and directories a set of path patterns covers, kept current from the
//! kernel's create, rename and unlink events. A tracked file is followed by inode through
//! every rename; paths only decide what is picked up. A symlink that matches is followed
//! only when it can be trusted (`links.rs`); its target is then tracked as if it matched.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsStr,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use collector_common::InodeKey;

use crate::{devices, inode_map::InodeMap, links};

pub struct WatchSet {
    patterns: Vec<glob::Pattern>,
    exclude: Vec<glob::Pattern>,
    /// The files scans found, and where: what the kernel's events make of them is the
    /// engine's inode table (`tracker`), not this.
    found: InodeMap<PathBuf>,
    dirs: InodeMap<PathBuf>,
    /// Targets of trusted symlinks that match, and the link: a file created at a target's
    /// path later (rotation by rename and create) is picked up as the link's.
    link_targets: HashMap<PathBuf, PathBuf>,
    /// Links already warned about (skipped: untrusted, or pointing at no regular file).
    warned_links: HashSet<PathBuf>,
    /// Per superblock, the `st_dev` of the first watched directory and the directory: btrfs
    /// subvolumes of one filesystem share inode numbers, which the kernel side cannot tell
    /// apart.
    subvolumes: HashMap<u32, (u64, PathBuf)>,
    /// Scans made so far, and the scan that found each directory: a later scan's files in a
    /// directory found by it or the one before may have been created before the kernel
    /// watched the directory (`Scan::late`).
    scans: u64,
    dir_found_by: InodeMap<u64>,
    /// Directories listed by a scan, by the path a pattern's directory part globbed to.
    listed: HashMap<PathBuf, Listing>,
    /// Trusted links followed, with their own inode (a link replaced is a new inode) and
    /// their target: not followed again while they stay.
    followed: HashMap<PathBuf, (u64, PathBuf)>,
}

/// A directory as a scan listed it.
struct Listing {
    /// Its modification time then (an entry added or removed moves it).
    changed: (i64, i64),
    /// The scan that last listed it.
    scan: u64,
    /// It held a link not followed (untrusted, or its target not there yet): tried again.
    unsettled: bool,
}

/// A rescan lists a directory again only if it changed, or its change time is this recent
/// (a change in the same clock tick as the last listing leaves the time as it was: one
/// listing more, a rescan later, sees it), or it held a link to try again, or it was last
/// listed `RELIST_EVERY` scans ago. Listing 10,000 files every second was most of the
/// collector's idle CPU (3% of a core).
const RECENT: std::time::Duration = std::time::Duration::from_secs(3);
const RELIST_EVERY: u64 = 60;

/// `*` stays within one directory, in `paths` and `exclude` alike (the README).
pub const MATCH: glob::MatchOptions =
    glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: false };

impl WatchSet {
    pub fn new(patterns: &[String]) -> anyhow::Result<Self> {
        Self::with_exclude(patterns, &[])
    }

    pub fn with_exclude(patterns: &[String], exclude: &[glob::Pattern]) -> anyhow::Result<Self> {
        let patterns = patterns
            .iter()
            .map(|p| {
                anyhow::ensure!(p.starts_with('/'), "path pattern `{p}` must be absolute");
                glob::Pattern::new(p).with_context(|| format!("path pattern `{p}`"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(WatchSet {
            patterns,
            exclude: exclude.to_vec(),
            found: InodeMap::default(),
            dirs: InodeMap::default(),
            link_targets: HashMap::new(),
            warned_links: HashSet::new(),
            subvolumes: HashMap::new(),
            scans: 0,
            dir_found_by: InodeMap::default(),
            listed: HashMap::new(),
            followed: HashMap::new(),
        })
    }

    /// Whether a file at `path` is picked up: it matches a pattern and no exclusion, or it
    /// is where a trusted link that does points.
    pub fn matches(&self, path: &Path) -> bool {
        self.matches_name(path) || self.link_targets.contains_key(path)
    }

    fn matches_name(&self, path: &Path) -> bool {
        self.patterns.iter().any(|p| p.matches_path_with(path, MATCH))
            && !self.exclude.iter().any(|e| e.matches_path_with(path, MATCH))
    }

    /// Finds the directories where matching files can appear and the regular files that
    /// match now. Returns what is new since the last scan. A rescan looks only for what no
    /// kernel event announces: new directories, new links, and the files in directories
    /// found since the scan before.
    pub fn scan(&mut self) -> Scan {
        self.scans += 1;
        let mut scan = Scan::default();
        for i in 0..self.patterns.len() {
            let text = self.patterns[i].as_str().to_owned();
            let parent = Path::new(&text).parent().map_or("/".into(), |p| p.to_string_lossy().into_owned());
            for dir in glob::glob_with(&parent, MATCH).into_iter().flatten().flatten() {
                self.add_dir(&dir, &mut scan);
                self.list(i, &dir, &mut scan);
            }
        }
        scan
    }

    /// The entries of `dir` that match pattern `i`: links followed, regular files added
    /// (on a rescan, only in a directory found since the scan before). Skipped on a
    /// rescan when nothing there can have changed (`RECENT`).
    fn list(&mut self, i: usize, dir: &Path, scan: &mut Scan) {
        use std::os::unix::fs::{DirEntryExt as _, MetadataExt as _};
        let Ok(meta) = std::fs::metadata(dir) else { return };
        let changed = (meta.mtime(), meta.mtime_nsec());
        let recent = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(true, |now| now.as_secs() as i64 - changed.0 < RECENT.as_secs() as i64 + 1);
        let young = self.young(dir);
        if self.scans > 1
            && !young
            && !recent
            && self
                .listed
                .get(dir)
                .is_some_and(|l| l.changed == changed && !l.unsettled && self.scans < l.scan + RELIST_EVERY)
        {
            return;
        }
        let mut unsettled = false;
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if !self.patterns[i].matches_path_with(&path, MATCH)
                || self.exclude.iter().any(|e| e.matches_path_with(&path, MATCH))
            {
                continue;
            }
            // The directory entry's type and inode: no stat of every file.
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_symlink() {
                let ino = entry.ino();
                if self.followed.get(&path).is_some_and(|(followed, _)| *followed == ino) {
                    continue;
                }
                match self.follow(&path, scan) {
                    Some(target) => {
                        self.followed.insert(path, (ino, target));
                    }
                    None => unsettled = true,
                }
            } else if kind.is_file() && (self.scans == 1 || young) {
                let Ok(id) = devices::of_path(&path) else { continue };
                if id.is_file() {
                    self.add_file(path, id, false, scan);
                }
            }
        }
        self.listed.insert(dir.to_owned(), Listing { changed, scan: self.scans, unsettled });
    }

    /// Whether `dir` was found by a rescan, this one or the one before: files created in
    /// it before the kernel watched it came with no event.
    fn young(&self, dir: &Path) -> bool {
        devices::key_of_path(dir)
            .and_then(|d| self.dir_found_by.get(&d))
            .is_some_and(|found| *found > 1 && found + 1 >= self.scans)
    }

    fn add_dir(&mut self, dir: &Path, scan: &mut Scan) {
        let Ok(id) = devices::of_path(dir) else { return };
        if !id.is_dir() || self.dirs.insert(id.key, dir.to_owned()).is_some() {
            return;
        }
        scan.dirs.push(id.key);
        self.dir_found_by.insert(id.key, self.scans);
        match self.subvolumes.get(&id.key.dev) {
            None => {
                self.subvolumes.insert(id.key.dev, (id.st_dev, dir.to_owned()));
            }
            Some((st_dev, first)) if *st_dev != id.st_dev => tracing::warn!(
                dir = %dir.display(),
                other = %first.display(),
                "these directories are in two subvolumes of one btrfs filesystem, whose inode \
                 numbers repeat: the kernel cannot tell their files apart, and a file of one may \
                 be taken for a file of the other (watch one subvolume per filesystem)"
            ),
            Some(_) => {}
        }
    }

    /// A regular file found; on a rescan, `late` if no kernel event may have announced it:
    /// reached through a link, or in a directory a rescan found (this one or the one
    /// before; start-up's directories were watched before their files were picked up).
    fn add_file(&mut self, path: PathBuf, id: devices::FileId, via_link: bool, scan: &mut Scan) {
        if self.found.contains_key(&id.key) {
            return;
        }
        let young_dir = path.parent().is_some_and(|dir| self.young(dir));
        if self.scans > 1 && (via_link || young_dir) {
            scan.late.push((id.key, path.clone()));
        }
        self.found.insert(id.key, path);
        scan.files.push((id.key, id.size));
    }

    /// A matching symlink: its target is tracked if the link can be trusted, and the
    /// target's directory watched (a file created there later under the target's name is
    /// the link's again). Otherwise one warning names the link and why. The target, once
    /// it is a regular file watched so.
    fn follow(&mut self, link: &Path, scan: &mut Scan) -> Option<PathBuf> {
        match links::trusted_target(link) {
            Ok(target) => {
                let id = devices::of_path(&target).ok()?;
                if let Some(dir) = target.parent() {
                    self.add_dir(dir, scan);
                }
                self.link_targets.insert(target.clone(), link.to_owned());
                if !id.is_file() {
                    return None;
                }
                self.add_file(target.clone(), id, true, scan);
                Some(target)
            }
            Err(why) => {
                if self.warned_links.insert(link.to_owned()) {
                    tracing::warn!(link = %link.display(), "skipping a symlink that matches a pattern: {why}");
                }
                None
            }
        }
    }

    /// Every file the scans found, with the path it was found at.
    pub fn found_files(&self) -> impl Iterator<Item = (&InodeKey, &PathBuf)> {
        self.found.iter()
    }

    /// Forgets the directories gone from their path (a deleted pod's), and the files found
    /// in them; returns the directories. Pod churn would otherwise fill the kernel's map of
    /// watched directories over the weeks.
    pub fn prune(&mut self) -> Vec<InodeKey> {
        let gone: Vec<InodeKey> = self
            .dirs
            .iter()
            .filter(|(key, path)| devices::key_of_path(path).is_none_or(|now| now != **key))
            .map(|(key, _)| *key)
            .collect();
        for key in &gone {
            if let Some(path) = self.dirs.remove(key) {
                self.dir_found_by.remove(key);
                self.found.retain(|_, f| f.parent() != Some(path.as_path()));
                self.link_targets.retain(|target, _| target.parent() != Some(path.as_path()));
                // A link into it is followed again (a directory made again at its path).
                self.followed.retain(|link, (_, target)| {
                    target.parent() != Some(path.as_path()) && link.parent() != Some(path.as_path())
                });
                self.listed.remove(&path);
            }
        }
        gone
    }

    pub fn dir_path(&self, dir: &InodeKey) -> Option<String> {
        self.dirs.get(dir).map(|p| p.display().to_string())
    }

    pub fn dirs(&self) -> impl Iterator<Item = (&InodeKey, &PathBuf)> {
        self.dirs.iter()
    }

    /// Where a name in a watched directory lands (creations: the kernel names the parent).
    pub fn in_dir(&self, dir: &InodeKey, name: &[u8]) -> Option<PathBuf> {
        Some(self.dirs.get(dir)?.join(OsStr::from_bytes(name)))
    }

    /// Where a name given to a syscall lands: absolute as is; relative against `base` (the
    /// directory of descriptor `dfd`, or the cwd for AT_FDCWD), found among the watched
    /// directories or else through /proc while the task still has it.
    pub fn resolve(&self, base: &InodeKey, dfd: i32, name: &[u8], tid: u32) -> Option<PathBuf> {
        resolve(&self.dirs, base, dfd, name, tid)
    }
}

/// Where a name given to a syscall lands: absolute as is; relative against `base` (the
/// directory of descriptor `dfd`, or the cwd for AT_FDCWD), found among `dirs` (the watched
/// directories) or else through /proc while the task still has it. `collector run` and
/// `collector events` both resolve names here.
pub fn resolve(dirs: &InodeMap<PathBuf>, base: &InodeKey, dfd: i32, name: &[u8], tid: u32) -> Option<PathBuf> {
    let name = Path::new(OsStr::from_bytes(name));
    if name.is_absolute() {
        return Some(name.to_owned());
    }
    let base = match dirs.get(base) {
        Some(dir) => dir.clone(),
        None if dfd == libc::AT_FDCWD => std::fs::read_link(format!("/proc/{tid}/cwd")).ok()?,
        None => std::fs::read_link(format!("/proc/{tid}/fd/{dfd}")).ok()?,
    };
    Some(base.join(name))
}

#[derive(Debug, Default)]
pub struct Scan {
    pub dirs: Vec<InodeKey>,
    pub files: Vec<(InodeKey, u64)>,
    /// Of a rescan's files, those that may have come with no kernel event (see `add_file`):
    /// to be picked up from their start unless already known.
    pub late: Vec<(InodeKey, PathBuf)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn scan_finds_matching_files_and_their_directory_but_not_symlinks() {
        let dir = std::env::temp_dir().join(format!("collector-watch-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.log"), b"12345").unwrap();
        std::fs::write(dir.join("b.txt"), b"x").unwrap();
        std::fs::write(dir.join("sub/c.log"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", dir.join("evil.log")).unwrap();
        let mut set = WatchSet::new(&[format!("{}/*.log", dir.display())]).unwrap();
        let scan = set.scan();
        assert_eq!(scan.files.len(), 1, "only a.log: {scan:?}");
        assert_eq!(scan.files[0].1, 5);
        assert_eq!(scan.dirs.len(), 1);
        assert!(set.matches(&dir.join("new.log")));
        assert!(!set.matches(&dir.join("sub/c.log")), "* must not cross /");
        assert!(set.scan().files.is_empty(), "a second scan reports nothing new");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_rescan_calls_files_in_new_directories_late_and_prune_forgets_removed_ones() {
        let dir = std::env::temp_dir().join(format!("collector-rescan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("old")).unwrap();
        std::fs::write(dir.join("old/a.log"), b"x").unwrap();
        let mut set = WatchSet::new(&[format!("{}/**/*.log", dir.display())]).unwrap();
        let first = set.scan();
        assert!(first.late.is_empty(), "start-up's files are not late: {first:?}");
        std::fs::write(dir.join("old/b.log"), b"x").unwrap();
        std::fs::create_dir_all(dir.join("new/c")).unwrap();
        std::fs::write(dir.join("new/c/0.log"), b"x").unwrap();
        let second = set.scan();
        let late: Vec<_> = second.late.iter().map(|(_, p)| p.clone()).collect();
        // old/b.log came in a watched directory: its create event brings it.
        assert_eq!(late, vec![dir.join("new/c/0.log")]);
        assert_eq!(second.dirs.len(), 2, "new and new/c");
        std::fs::remove_dir_all(dir.join("new")).unwrap();
        assert_eq!(set.prune().len(), 2);
        assert!(set.prune().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Sets `path`'s modification time to `secs` after the epoch.
    fn set_mtime(path: &Path, secs: i64) {
        let name = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let times =
            [libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT }, libc::timespec { tv_sec: secs, tv_nsec: 0 }];
        // SAFETY: a NUL-terminated path and two timespecs, read during the call only.
        assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, name.as_ptr(), times.as_ptr(), 0) }, 0);
    }

    #[test]
    fn a_rescan_follows_new_links_and_lists_an_unchanged_directory_again_only_now_and_then() {
        // Not under /tmp: a link there is never trusted.
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/watch-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("logs")).unwrap();
        std::fs::create_dir_all(base.join("pods")).unwrap();
        let base = std::fs::canonicalize(&base).unwrap();
        std::fs::write(base.join("pods/a.log"), b"x").unwrap();
        std::fs::write(base.join("pods/b.log"), b"x").unwrap();
        let logs = base.join("logs");
        let mut set = WatchSet::new(&[format!("{}/*.log", logs.display())]).unwrap();
        assert!(set.scan().files.is_empty());
        let late = |scan: Scan| scan.late.into_iter().map(|(_, p)| p).collect::<Vec<_>>();
        std::os::unix::fs::symlink(base.join("pods/a.log"), logs.join("a.log")).unwrap();
        assert_eq!(late(set.scan()), [base.join("pods/a.log")], "a new link's target, from its start");
        assert!(late(set.scan()).is_empty(), "a link followed is not followed again");
        // Unchanged for an hour: listed once more, then not.
        let hour_ago = std::fs::metadata(&logs).unwrap().mtime() - 3600;
        set_mtime(&logs, hour_ago);
        assert!(late(set.scan()).is_empty());
        // A link whose directory's time is put back: the rescan does not look.
        std::os::unix::fs::symlink(base.join("pods/b.log"), logs.join("b.log")).unwrap();
        set_mtime(&logs, hour_ago);
        assert!(late(set.scan()).is_empty(), "an unchanged directory is not listed");
        // Now and then it is all the same.
        let mut found = Vec::new();
        for _ in 0..RELIST_EVERY {
            found.extend(late(set.scan()));
        }
        assert_eq!(found, [base.join("pods/b.log")], "listed again within {RELIST_EVERY} scans");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn relative_patterns_are_refused_by_name() {
        let err = WatchSet::new(&["logs/*.log".into()]).err().unwrap().to_string();
        assert!(err.contains("`logs/*.log` must be absolute"), "{err}");
    }
}
