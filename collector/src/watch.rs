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

/// A file the patterns picked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watched {
    pub path: PathBuf,
    /// Its last name was removed; it lives on while someone holds it open.
    pub unlinked: bool,
    /// Size as last seen (write/truncate events, or stat): to tell what a lost event hid.
    pub known_size: u64,
}

pub struct WatchSet {
    patterns: Vec<glob::Pattern>,
    exclude: Vec<glob::Pattern>,
    files: InodeMap<Watched>,
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
}

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
            files: InodeMap::default(),
            dirs: InodeMap::default(),
            link_targets: HashMap::new(),
            warned_links: HashSet::new(),
            subvolumes: HashMap::new(),
            scans: 0,
            dir_found_by: InodeMap::default(),
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
    /// match now. Returns what is new since the last scan.
    pub fn scan(&mut self) -> Scan {
        self.scans += 1;
        let mut scan = Scan::default();
        for i in 0..self.patterns.len() {
            let text = self.patterns[i].as_str().to_owned();
            let parent = Path::new(&text).parent().map_or("/".into(), |p| p.to_string_lossy().into_owned());
            for dir in glob::glob_with(&parent, MATCH).into_iter().flatten().flatten() {
                self.add_dir(&dir, &mut scan);
            }
            for file in glob::glob_with(&text, MATCH).into_iter().flatten().flatten() {
                if self.exclude.iter().any(|e| e.matches_path_with(&file, MATCH)) {
                    continue;
                }
                let Ok(id) = devices::of_path(&file) else { continue };
                if id.is_symlink() {
                    self.follow(&file, &mut scan);
                } else if id.is_file() {
                    self.add_file(file, id, false, &mut scan);
                }
            }
        }
        scan
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
        if self.files.contains_key(&id.key) {
            return;
        }
        let young_dir = path
            .parent()
            .and_then(devices::key_of_path)
            .and_then(|d| self.dir_found_by.get(&d))
            .is_some_and(|found| *found > 1 && found + 1 >= self.scans);
        if self.scans > 1 && (via_link || young_dir) {
            scan.late.push((id.key, path.clone()));
        }
        self.files.insert(id.key, Watched { path, unlinked: false, known_size: id.size });
        scan.files.push((id.key, id.size));
    }

    /// A matching symlink: its target is tracked if the link can be trusted, and the
    /// target's directory watched (a file created there later under the target's name is
    /// the link's again). Otherwise one warning names the link and why.
    fn follow(&mut self, link: &Path, scan: &mut Scan) {
        match links::trusted_target(link) {
            Ok(target) => {
                let Ok(id) = devices::of_path(&target) else { return };
                if let Some(dir) = target.parent() {
                    self.add_dir(dir, scan);
                }
                self.link_targets.insert(target.clone(), link.to_owned());
                if id.is_file() {
                    self.add_file(target, id, true, scan);
                }
            }
            Err(why) => {
                if self.warned_links.insert(link.to_owned()) {
                    tracing::warn!(link = %link.display(), "skipping a symlink that matches a pattern: {why}");
                }
            }
        }
    }

    pub fn tracked(&self, inode: &InodeKey) -> Option<&Watched> {
        self.files.get(inode)
    }

    pub fn tracked_mut(&mut self, inode: &InodeKey) -> Option<&mut Watched> {
        self.files.get_mut(inode)
    }

    pub fn tracked_files(&self) -> impl Iterator<Item = (&InodeKey, &Watched)> {
        self.files.iter()
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
                self.files.retain(|_, f| f.path.parent() != Some(path.as_path()));
                self.link_targets.retain(|target, _| target.parent() != Some(path.as_path()));
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

    pub fn track(&mut self, inode: InodeKey, path: PathBuf, size: u64) {
        self.files.insert(inode, Watched { path, unlinked: false, known_size: size });
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

    #[test]
    fn relative_patterns_are_refused_by_name() {
        let err = WatchSet::new(&["logs/*.log".into()]).err().unwrap().to_string();
        assert!(err.contains("`logs/*.log` must be absolute"), "{err}");
    }
}
