//! Which inodes and directories a set of path patterns covers, kept current from the
//! kernel's create, rename and unlink events. A tracked file is followed by inode through
//! every rename; paths only decide what is picked up. Symlinks are never followed.

use std::{
    ffi::OsStr,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use collector_common::InodeKey;

use crate::inode_map::InodeMap;

/// The kernel's `s_dev` encoding (`major << 20 | minor`) of a userspace `st_dev`.
pub fn kernel_dev(st_dev: u64) -> u32 {
    (libc::major(st_dev) << 20) | (libc::minor(st_dev) & 0xfffff)
}

/// The userspace `st_dev` (as `stat` prints it) of a kernel `s_dev`.
pub fn user_dev(s_dev: u32) -> u64 {
    libc::makedev(s_dev >> 20, s_dev & 0xfffff)
}

pub fn key_of(meta: &std::fs::Metadata) -> InodeKey {
    InodeKey::new(kernel_dev(meta.dev()), meta.ino())
}

/// A file the patterns picked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    pub path: PathBuf,
    /// Its last name was removed; it lives on while someone holds it open.
    pub unlinked: bool,
    /// Size as last seen (write/truncate events, or stat): to tell what a lost event hid.
    pub known_size: u64,
}

pub struct WatchSet {
    patterns: Vec<glob::Pattern>,
    files: InodeMap<Tracked>,
    dirs: InodeMap<PathBuf>,
}

const MATCH: glob::MatchOptions =
    glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: false };

impl WatchSet {
    pub fn new(patterns: &[String]) -> anyhow::Result<Self> {
        let patterns = patterns
            .iter()
            .map(|p| {
                anyhow::ensure!(p.starts_with('/'), "path pattern `{p}` must be absolute");
                glob::Pattern::new(p).with_context(|| format!("path pattern `{p}`"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(WatchSet { patterns, files: InodeMap::default(), dirs: InodeMap::default() })
    }

    pub fn matches(&self, path: &Path) -> bool {
        self.patterns.iter().any(|p| p.matches_path_with(path, MATCH))
    }

    /// Finds the directories where matching files can appear and the regular files that
    /// match now. Returns what is new since the last scan.
    pub fn scan(&mut self) -> Scan {
        let mut scan = Scan::default();
        for pattern in &self.patterns {
            let text = pattern.as_str();
            let parent = Path::new(text).parent().map_or("/".into(), |p| p.to_string_lossy().into_owned());
            for dir in glob::glob_with(&parent, MATCH).into_iter().flatten().flatten() {
                let Ok(meta) = std::fs::symlink_metadata(&dir) else { continue };
                if meta.is_dir() && self.dirs.insert(key_of(&meta), dir.clone()).is_none() {
                    scan.dirs.push(key_of(&meta));
                }
            }
            for file in glob::glob_with(text, MATCH).into_iter().flatten().flatten() {
                let Ok(meta) = std::fs::symlink_metadata(&file) else { continue };
                if !meta.file_type().is_file() {
                    continue;
                }
                let key = key_of(&meta);
                if let std::collections::hash_map::Entry::Vacant(slot) = self.files.entry(key) {
                    slot.insert(Tracked { path: file, unlinked: false, known_size: meta.len() });
                    scan.files.push((key, meta.len()));
                }
            }
        }
        scan
    }

    pub fn tracked(&self, inode: &InodeKey) -> Option<&Tracked> {
        self.files.get(inode)
    }

    pub fn tracked_mut(&mut self, inode: &InodeKey) -> Option<&mut Tracked> {
        self.files.get_mut(inode)
    }

    pub fn tracked_files(&self) -> impl Iterator<Item = (&InodeKey, &Tracked)> {
        self.files.iter()
    }

    pub fn dirs(&self) -> impl Iterator<Item = (&InodeKey, &PathBuf)> {
        self.dirs.iter()
    }

    pub fn track(&mut self, inode: InodeKey, path: PathBuf, size: u64) {
        self.files.insert(inode, Tracked { path, unlinked: false, known_size: size });
    }

    /// Where a name in a watched directory lands (creations: the kernel names the parent).
    pub fn in_dir(&self, dir: &InodeKey, name: &[u8]) -> Option<PathBuf> {
        Some(self.dirs.get(dir)?.join(OsStr::from_bytes(name)))
    }

    /// Where a name given to a syscall lands: absolute as is; relative against `base` (the
    /// directory of descriptor `dfd`, or the cwd for AT_FDCWD), found among the watched
    /// directories or else through /proc while the task still has it.
    pub fn resolve(&self, base: &InodeKey, dfd: i32, name: &[u8], tid: u32) -> Option<PathBuf> {
        let name = Path::new(OsStr::from_bytes(name));
        if name.is_absolute() {
            return Some(name.to_owned());
        }
        let base = match self.dirs.get(base) {
            Some(dir) => dir.clone(),
            None if dfd == libc::AT_FDCWD => std::fs::read_link(format!("/proc/{tid}/cwd")).ok()?,
            None => std::fs::read_link(format!("/proc/{tid}/fd/{dfd}")).ok()?,
        };
        Some(base.join(name))
    }
}

#[derive(Debug, Default)]
pub struct Scan {
    pub dirs: Vec<InodeKey>,
    pub files: Vec<(InodeKey, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_round_trip_between_kernel_and_user_encodings() {
        let st_dev = libc::makedev(259, 3);
        assert_eq!(kernel_dev(st_dev), (259 << 20) | 3);
        assert_eq!(user_dev(kernel_dev(st_dev)), st_dev);
    }

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
    fn relative_patterns_are_refused_by_name() {
        let err = WatchSet::new(&["logs/*.log".into()]).err().unwrap().to_string();
        assert!(err.contains("`logs/*.log` must be absolute"), "{err}");
    }
}
