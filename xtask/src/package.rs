//! `cargo xtask package [--arch arm64]`: a Debian package of the release build,
//! `target/package/collector_<version>_<arch>.deb`, made with dpkg-deb from a tree laid out
//! here: the binary without its debug info, the systemd unit, and two conffiles (the config
//! and the unit's environment file). No maintainer scripts: installing starts nothing, and
//! the package installs into any root (`dpkg --root`), which its test does. amd64's binary
//! links this host's glibc; arm64's is the static cross build the arm64 guests run.

use std::{fs, os::unix::fs::PermissionsExt as _, path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::{build, guest::Arch, shell};

const CONFFILES: &[&str] = &["/etc/collector/collector.toml", "/etc/default/collector"];

/// The tree the package of `arch` is made from (its binary: `usr/bin/collector`).
pub fn tree(arch: Arch) -> PathBuf {
    shell::root().join("target/package").join(format!("tree-{}", arch.debian()))
}

pub fn run(arch: Arch) -> anyhow::Result<PathBuf> {
    let collector = build::collector_for(arch)?;
    let version = env!("CARGO_PKG_VERSION");
    let out_dir = shell::root().join("target/package");
    let tree = tree(arch);
    let arch_name = arch.debian();
    let _ = fs::remove_dir_all(&tree);
    let repo = shell::root();
    let files: [(PathBuf, &str, u32); 4] = [
        (collector, "usr/bin/collector", 0o755),
        (repo.join("packaging/systemd/collector.service"), "lib/systemd/system/collector.service", 0o644),
        (repo.join("packaging/deb/collector.toml"), "etc/collector/collector.toml", 0o644),
        (repo.join("packaging/deb/default"), "etc/default/collector", 0o644),
    ];
    for (from, to, mode) in &files {
        let target = tree.join(to);
        fs::create_dir_all(target.parent().expect("parent"))?;
        fs::copy(from, &target).with_context(|| format!("copying {}", from.display()))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(*mode))?;
    }
    // The release profile keeps debug info (profiles, backtraces): most of the binary's size.
    // Stripping it leaves the same machine code.
    shell::run(Command::new(arch.binutil("strip")).arg("--strip-debug").arg(tree.join("usr/bin/collector")))?;
    let installed_size_kib = du_kib(&tree)?;
    // The static arm64 build needs no library.
    let depends = match arch {
        Arch::X86_64 => "Depends: libc6 (>= 2.34)\n",
        Arch::Arm64 => "",
    };
    let control = format!(
        "Package: collector\n\
         Version: {version}\n\
         Architecture: {arch_name}\n\
         Maintainer: collector developers <collector@localhost>\n\
         Section: admin\n\
         Priority: optional\n\
         {depends}\
         Installed-Size: {installed_size_kib}\n\
         Description: log shipper that knows from eBPF which file every write touched\n \
         Streams new log lines to Amazon Kinesis Data Streams or Firehose (or a file) with\n \
         per-inode offsets: rotation of any kind (create, copytruncate, compress) loses\n \
         nothing and sends nothing twice. Runs as a systemd service (not started on\n \
         install: edit /etc/collector/collector.toml, then systemctl enable --now collector).\n"
    );
    fs::create_dir_all(tree.join("DEBIAN"))?;
    fs::write(tree.join("DEBIAN/control"), control)?;
    fs::write(tree.join("DEBIAN/conffiles"), CONFFILES.join("\n") + "\n")?;
    let deb = out_dir.join(format!("collector_{version}_{arch_name}.deb"));
    shell::run(Command::new("dpkg-deb").args(["--build", "--root-owner-group"]).arg(&tree).arg(&deb))?;
    let binary = fs::metadata(tree.join("usr/bin/collector"))?.len();
    let size = fs::metadata(&deb)?.len();
    eprintln!(
        "package: {} ({:.1} MiB; the binary {:.1} MiB)",
        deb.display(),
        size as f64 / (1 << 20) as f64,
        binary as f64 / (1 << 20) as f64
    );
    Ok(deb)
}

fn du_kib(tree: &std::path::Path) -> anyhow::Result<u64> {
    let out = shell::output(Command::new("du").args(["-sk"]).arg(tree))?;
    out.split_whitespace().next().and_then(|n| n.parse().ok()).context("du -sk printed no size")
}
