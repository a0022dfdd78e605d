//! When a symlink that matches a pattern may be followed. The collector runs as root: a link
//! an unprivileged user could plant or redirect would let them read any file through it. So a
//! link is followed only if nobody but root and the target's owner could have made it point
//! where it does: every link on the way is owned by one of them, and every directory passed
//! through (the link's and the target's, and those of any link between) is owned by one of
//! them and writable by no one else. Kubernetes' `/var/log/containers/*.log` links into
//! `/var/log/pods/` meet this; a link in /tmp does not.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
};

/// Links followed in a row at most (the kernel's own limit is 40).
const MAX_HOPS: u32 = 40;

/// The regular file `link` leads to, by its path with no link in it, if the link can be
/// trusted; otherwise why not.
pub fn trusted_target(link: &Path) -> Result<PathBuf, String> {
    let target = std::fs::canonicalize(link).map_err(|e| format!("its target cannot be reached: {e}"))?;
    let meta = std::fs::symlink_metadata(&target).map_err(|e| format!("{}: {e}", target.display()))?;
    if !meta.file_type().is_file() {
        return Err(format!("it points to {}, which is not a regular file", target.display()));
    }
    let owner = meta.uid();
    let mut hops = 0;
    let resolved = resolve(link, owner, &mut hops)?;
    // Checked again on the path just walked: a change meanwhile is not followed.
    if resolved != target {
        return Err(format!(
            "it pointed elsewhere while it was checked ({} then {})",
            target.display(),
            resolved.display()
        ));
    }
    Ok(target)
}

/// `path` with every link on the way followed, each checked, and each directory passed
/// through checked.
fn resolve(path: &Path, owner: u32, hops: &mut u32) -> Result<PathBuf, String> {
    let mut resolved = PathBuf::from("/");
    let components: Vec<_> = path.components().collect();
    for (i, component) in components.iter().enumerate() {
        let name = match component {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
            Component::ParentDir => {
                resolved.pop();
                continue;
            }
            Component::Normal(name) => name,
        };
        check_dir(&resolved, owner)?;
        let next = resolved.join(name);
        let meta = std::fs::symlink_metadata(&next).map_err(|e| format!("{}: {e}", next.display()))?;
        resolved = if meta.file_type().is_symlink() {
            if meta.uid() != 0 && meta.uid() != owner {
                return Err(format!(
                    "the link {} is owned by uid {}, neither root nor the target's owner (uid {owner})",
                    next.display(),
                    meta.uid()
                ));
            }
            *hops += 1;
            if *hops > MAX_HOPS {
                return Err(format!("more than {MAX_HOPS} links in a row"));
            }
            let to = std::fs::read_link(&next).map_err(|e| format!("{}: {e}", next.display()))?;
            resolve(&resolved.join(to), owner, hops)?
        } else {
            next
        };
        let last = i + 1 == components.len();
        if !last && !resolved.is_dir() {
            return Err(format!("{} is not a directory", resolved.display()));
        }
    }
    Ok(resolved)
}

/// A directory on the way: owned by root or the target's owner, and writable by nobody else
/// (a group may write only if it is root's).
fn check_dir(dir: &Path, owner: u32) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if meta.uid() != 0 && meta.uid() != owner {
        return Err(format!(
            "the directory {} is owned by uid {}, neither root nor the target's owner (uid {owner})",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode();
    if mode & 0o002 != 0 || (mode & 0o020 != 0 && meta.gid() != 0) {
        return Err(format!("the directory {} can be written by others (mode {:o})", dir.display(), mode & 0o7777));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    use super::*;

    /// A scratch directory under target/ (not /tmp, which anyone can write to).
    fn scratch(name: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/unit-scratch")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::canonicalize(dir).unwrap()
    }

    fn running_as_root() -> bool {
        // SAFETY: getuid has no preconditions.
        unsafe { libc::getuid() == 0 }
    }

    #[test]
    fn a_link_in_trusted_directories_leads_to_its_target_through_a_chain_of_links() {
        let dir = scratch("links-trusted");
        assert!(running_as_root(), "the collector's tests run as root");
        std::fs::create_dir_all(dir.join("pods/p/c")).unwrap();
        std::fs::create_dir_all(dir.join("containers")).unwrap();
        std::fs::write(dir.join("pods/p/c/0.log"), b"x\n").unwrap();
        symlink(dir.join("pods/p"), dir.join("p-link")).unwrap();
        symlink("../p-link/c/0.log", dir.join("containers/c.log")).unwrap();
        assert_eq!(trusted_target(&dir.join("containers/c.log")), Ok(dir.join("pods/p/c/0.log")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_link_through_a_directory_others_can_write_is_refused_and_says_which() {
        let dir = scratch("links-writable");
        std::fs::create_dir_all(dir.join("open")).unwrap();
        std::fs::set_permissions(dir.join("open"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::write(dir.join("secret"), b"x\n").unwrap();
        symlink(dir.join("secret"), dir.join("open/a.log")).unwrap();
        let why = trusted_target(&dir.join("open/a.log")).unwrap_err();
        assert!(why.contains(&format!("{} can be written by others (mode 1777)", dir.join("open").display())), "{why}");
        symlink(dir.join("open"), dir.join("via")).unwrap();
        std::fs::write(dir.join("open/b.log"), b"x\n").unwrap();
        let why = trusted_target(&dir.join("via/b.log")).unwrap_err();
        assert!(why.contains("can be written by others"), "{why}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_link_owned_by_another_user_is_refused() {
        let dir = scratch("links-owner");
        std::fs::write(dir.join("secret"), b"x\n").unwrap();
        symlink(dir.join("secret"), dir.join("a.log")).unwrap();
        std::os::unix::fs::lchown(dir.join("a.log"), Some(65534), Some(65534)).unwrap();
        let why = trusted_target(&dir.join("a.log")).unwrap_err();
        assert!(why.contains("is owned by uid 65534, neither root nor the target's owner (uid 0)"), "{why}");
        symlink(dir.join("dir-gone"), dir.join("b.log")).unwrap();
        assert!(trusted_target(&dir.join("b.log")).unwrap_err().contains("cannot be reached"));
        std::fs::create_dir(dir.join("d")).unwrap();
        symlink(dir.join("d"), dir.join("c.log")).unwrap();
        assert!(trusted_target(&dir.join("c.log")).unwrap_err().contains("not a regular file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
