//! Real filesystems for the tests: loop-mounted images made with the real mkfs, tmpfs,
//! overlayfs and bind mounts, each unmounted when dropped. A tool or filesystem that is
//! missing fails the test that needs it, with what to install.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Mounts made for a test, unmounted in reverse order on drop.
pub struct Mounted {
    /// Where the test writes its logs.
    pub dir: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            // Lazily: a collector that still holds a file must not keep the next test out.
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

/// Runs a setup command; a failure panics with its output and what installs it.
pub fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{shown}: {e} (cargo xtask setup installs xfsprogs, btrfs-progs and util-linux)"));
    assert!(
        out.status.success(),
        "{shown}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mount_point(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).expect("mount point");
    dir
}

/// A sparse image file of `mb` MiB under `base`, formatted by `mkfs` (`mkfs.xfs`,
/// `mkfs.btrfs`) and loop-mounted.
pub fn loop_image(base: &Path, mkfs: &str, mb: u64) -> Mounted {
    let image = base.join(format!("{mkfs}.img"));
    let file = std::fs::File::create(&image).expect("image file");
    file.set_len(mb << 20).expect("image size");
    run(Command::new(mkfs).arg("-q").arg(&image));
    let dir = mount_point(base, &format!("{mkfs}-mnt"));
    run(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&dir));
    Mounted { dir: dir.clone(), mounts: vec![dir] }
}

/// A btrfs subvolume inside a loop-mounted btrfs, reached through the top-level mount (its
/// files have the subvolume's own `st_dev`, not the filesystem's).
pub fn btrfs_subvolume(base: &Path) -> Mounted {
    let mut top = loop_image(base, "mkfs.btrfs", 256);
    let sub = top.dir.join("logs");
    run(Command::new("btrfs").args(["-q", "subvolume", "create"]).arg(&sub));
    top.dir = sub;
    top
}

pub fn tmpfs(base: &Path) -> Mounted {
    tmpfs_of_size(base, "tmpfs-mnt", 256 << 10)
}

/// A tmpfs of `kib` KiB at `base/name`: a filesystem a test can fill.
pub fn tmpfs_of_size(base: &Path, name: &str, kib: u64) -> Mounted {
    let dir = mount_point(base, name);
    run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"]).arg(&dir));
    Mounted { dir: dir.clone(), mounts: vec![dir] }
}

/// An overlay whose upper and work directories are on a tmpfs of their own (so the upper
/// layer is another filesystem than the lower one, as a container's is) and whose lower
/// directory is on `base`'s; logs are written into the merged directory.
pub fn overlay(base: &Path) -> Mounted {
    let mut layers = tmpfs(base);
    let lower = mount_point(base, "overlay-lower");
    let upper = mount_point(&layers.dir, "upper");
    let work = mount_point(&layers.dir, "work");
    let merged = mount_point(base, "overlay-merged");
    let options = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
    run(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &options]).arg(&merged));
    let mut mounts = std::mem::take(&mut layers.mounts);
    mounts.push(merged.clone());
    Mounted { dir: merged, mounts }
}

/// `source` bind-mounted at a second path under `base`; returns the mount (its `dir` is the
/// second path).
pub fn bind(base: &Path, source: &Path) -> Mounted {
    let dir = mount_point(base, "bind-mnt");
    run(Command::new("mount").arg("--bind").arg(source).arg(&dir));
    Mounted { dir: dir.clone(), mounts: vec![dir] }
}
