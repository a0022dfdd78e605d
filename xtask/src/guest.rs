//! Guest kernels for the attach modes this host refuses (fentry, kprobe), and for arm64:
//! Debian's cloud kernels, downloaded and unpacked (never installed), booted by QEMU under
//! TCG with a busybox initramfs. KVM here is PVM and cannot run a stock kernel, so TCG it is.
//!
//! A guest is named by its kernel series, `<arch>-<series>` for another architecture than
//! x86-64 ("6.12", "arm64-6.12").
//!
//! A run appends a per-run cpio (a root tree: the payload, plus the command as /t/cmd) to
//! a prebuilt base cpio of the guest's architecture; the kernel unpacks both. The command's
//! output comes back on a second console (x86-64: the second serial port; arm64: a
//! virtio console), its status on that console and, on x86-64, through isa-debug-exit.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::shell;

/// Meta packages that resolve to the newest 6.1 and 6.12 cloud kernels of bookworm(-security):
/// the guest test matrix.
pub const KERNELS: &[(&str, &str)] = &[("6.1", "linux-image-cloud-amd64"), ("6.12", "linux-image-6.12-cloud-amd64")];

/// Kernels of other guests, fetched when a run needs them: arm64's 6.12 and 6.1 (bookworm's
/// arm64 archive), and x86-64's 5.10 from bullseye(-security), each with apt lists of its own
/// (see README, "Kernels", for what fails on 5.10).
pub const ON_DEMAND: &[(&str, &str)] = &[
    ("5.10", "linux-image-cloud-amd64"),
    ("arm64-6.12", "linux-image-6.12-cloud-arm64"),
    ("arm64-6.1", "linux-image-cloud-arm64"),
];

/// The meta package of any known series.
pub fn meta_package(series: &str) -> Option<&'static str> {
    KERNELS.iter().chain(ON_DEMAND).find(|(s, _)| *s == series).map(|(_, m)| *m)
}

/// A guest's architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    X86_64,
    Arm64,
}

impl Arch {
    pub fn of(series: &str) -> Arch {
        if series.starts_with("arm64-") { Arch::Arm64 } else { Arch::X86_64 }
    }

    /// Debian's name for it.
    /// From Debian's name.
    pub fn from_debian(name: &str) -> anyhow::Result<Arch> {
        match name {
            "amd64" => Ok(Arch::X86_64),
            "arm64" => Ok(Arch::Arm64),
            other => bail!("no architecture {other} (amd64, arm64)"),
        }
    }

    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Rust's target triple.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The binutils tool `tool` (strip, ...) for this architecture's binaries.
    pub fn binutil(self, tool: &str) -> String {
        match self {
            Arch::X86_64 => tool.to_owned(),
            Arch::Arm64 => format!("aarch64-linux-gnu-{tool}"),
        }
    }
}

/// The kernel series of a guest name ("arm64-6.12" -> "6.12").
pub fn kernel_series(series: &str) -> &str {
    series.strip_prefix("arm64-").unwrap_or(series)
}

const DEBIAN_KEYRING: &str = "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg";

/// Private apt sources (deb822) for the packages of a guest that the host's sources lack, and
/// the directory of their lists; None: the host's.
fn sources(series: &str) -> Option<(String, &'static str)> {
    let deb = |suites: &str, security: &str, arch: &str| {
        format!(
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {suites}\nComponents: main\n{arch}{DEBIAN_KEYRING}\n\n\
             Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: {security}\nComponents: main\n{arch}\
             {DEBIAN_KEYRING}\n"
        )
    };
    match (series, Arch::of(series)) {
        ("5.10", _) => Some((deb("bullseye", "bullseye-security", ""), "5.10")),
        (_, Arch::Arm64) => {
            Some((deb("bookworm bookworm-updates", "bookworm-security", "Architectures: arm64\n"), "arm64"))
        }
        _ => None,
    }
}

/// apt options that point apt at a series' own sources and lists (under the guest dir,
/// never the host's /etc/apt), after fetching those lists once. For another architecture
/// apt resolves that architecture's packages (which are downloaded and unpacked, never
/// installed).
pub fn apt_options(series: &str) -> anyhow::Result<Vec<String>> {
    let Some((sources, name)) = sources(series) else { return Ok(Vec::new()) };
    let apt = dir().join("apt").join(name);
    let parts = apt.join("sources.list.d");
    let lists = apt.join("lists");
    let options = vec![
        "-o".to_owned(),
        "Dir::Etc::SourceList=/dev/null".to_owned(),
        "-o".to_owned(),
        format!("Dir::Etc::SourceParts={}", parts.display()),
        "-o".to_owned(),
        format!("Dir::State::Lists={}", lists.display()),
        "-o".to_owned(),
        format!("Dir::Cache={}", apt.join("cache").display()),
    ];
    let mut options = options;
    if Arch::of(series) != Arch::X86_64 {
        let arch = Arch::of(series).debian();
        for option in [format!("APT::Architecture={arch}"), format!("APT::Architectures::={arch}")] {
            options.extend(["-o".to_owned(), option]);
        }
        // The host's dpkg database knows nothing of this architecture.
        options.extend(["-o".to_owned(), "Dir::State::status=/dev/null".to_owned()]);
    }
    let updated = apt.join("updated");
    if !updated.exists() {
        fs::create_dir_all(lists.join("partial"))?;
        fs::create_dir_all(apt.join("cache"))?;
        fs::create_dir_all(&parts)?;
        fs::write(parts.join(format!("{name}.sources")), sources)?;
        shell::run(Command::new("apt-get").args(&options).args(["update", "-qq"]))?;
        fs::write(&updated, "")?;
    }
    Ok(options)
}

pub fn dir() -> PathBuf {
    shell::work_dir().join("guest")
}

/// The bootable image of a kernel series ("6.1", "6.12").
pub fn kernel_image(series: &str) -> PathBuf {
    dir().join("kernels").join(series).join("vmlinuz")
}

/// The uncompressed ELF image of a kernel series (for its BTF), when it could be extracted.
pub fn kernel_elf(series: &str) -> PathBuf {
    dir().join("kernels").join(series).join("vmlinux")
}

pub fn prepare_kernels() -> anyhow::Result<()> {
    for (series, meta) in KERNELS {
        prepare_kernel(series, meta)?;
    }
    for (series, meta) in ON_DEMAND.iter().filter(|(s, _)| IN_TEST_MATRIX.contains(s)) {
        prepare_kernel(series, meta)?;
    }
    base_initramfs(Arch::X86_64)?;
    base_initramfs(Arch::Arm64)
}

/// Guests beyond KERNELS that `cargo xtask test` runs (with fewer suites; test.rs), whose
/// kernels setup fetches.
pub const IN_TEST_MATRIX: &[&str] = &["arm64-6.12", "5.10"];

/// Modules the guests load (their /init, before anything else): the filesystem matrix's
/// (tests/filesystems.rs), the network card that reaches the test servers on this host, and
/// the console the results come back on (arm64). What they depend on comes along.
const GUEST_MODULES: &[&str] = &["loop", "xfs", "btrfs", "overlay", "virtio_pci", "virtio_net", "virtio_console"];

/// A series' modules, uncompressed, and `order`: their names, each after what it needs.
pub fn kernel_modules(series: &str) -> PathBuf {
    dir().join("kernels").join(series).join("modules")
}

/// Downloads and unpacks one kernel series, unless it is there.
pub fn prepare_kernel(series: &str, meta: &str) -> anyhow::Result<()> {
    let image = kernel_image(series);
    // Extracted again when GUEST_MODULES changed since.
    let wanted = kernel_modules(series).join("wanted");
    let current = fs::read_to_string(&wanted).is_ok_and(|w| w == GUEST_MODULES.join(" "));
    if image.exists() && current && kernel_modules(series).join("release").exists() {
        return Ok(());
    }
    let apt = apt_options(series)?;
    let package = match resolve(&apt, meta) {
        Some(p) => p,
        None => {
            // Package lists may predate the meta package (6.12 came to bookworm later).
            shell::run(Command::new("apt-get").args(&apt).args(["update", "-qq"]))?;
            resolve(&apt, meta).with_context(|| format!("apt-cache depends {meta}: no linux-image package"))?
        }
    };
    let scratch = dir().join("download");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    shell::run(Command::new("apt-get").args(&apt).args(["download", "-qq", &package]).current_dir(&scratch))?;
    let deb = fs::read_dir(&scratch)?.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == "deb"));
    let deb = deb.context("apt-get download produced no .deb")?;
    let unpacked = scratch.join("x");
    shell::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let release = package.trim_start_matches("linux-image-");
    let target = image.parent().expect("kernel dir");
    fs::create_dir_all(target)?;
    fs::copy(unpacked.join(format!("boot/vmlinuz-{release}")), &image)?;
    fs::copy(unpacked.join(format!("boot/config-{release}")), target.join("config"))?;
    fs::write(target.join("release"), release)?;
    extract_modules(&unpacked.join("lib/modules").join(release).join("kernel"), &kernel_modules(series))?;
    // The guest's /init loads the modules whose release is the running kernel's.
    fs::write(kernel_modules(series).join("release"), release)?;
    // (arm64's image is an uncompressed Image, without the ELF headers.)
    if Arch::of(series) == Arch::X86_64 {
        extract_elf(&image, &kernel_elf(series));
    }
    fs::remove_dir_all(&scratch)?;
    Ok(())
}

/// GUEST_MODULES and their dependencies from a kernel package's module tree into `out`.
/// A module not in the tree is built in.
fn extract_modules(tree: &Path, out: &Path) -> anyhow::Result<()> {
    let mut files = std::collections::HashMap::new();
    let mut dirs = vec![tree.to_owned()];
    while let Some(d) = dirs.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if path.is_dir() {
                dirs.push(path);
            } else if let Some((stem, _)) = name.split_once(".ko") {
                files.insert(stem.replace('-', "_"), path);
            }
        }
    }
    let _ = fs::remove_dir_all(out);
    fs::create_dir_all(out)?;
    let mut order = Vec::new();
    let mut wanted: Vec<String> = GUEST_MODULES.iter().rev().map(|m| (*m).to_owned()).collect();
    // Depth first: a module is written down once everything it depends on is.
    let mut expanded = std::collections::HashSet::new();
    while let Some(name) = wanted.pop() {
        if order.contains(&name) {
            continue;
        }
        let Some(file) = files.get(&name) else { continue };
        let bytes = module_bytes(file)?;
        let depends = modinfo_depends(&bytes);
        let missing: Vec<String> = depends.into_iter().filter(|d| !order.contains(d)).collect();
        if !missing.is_empty() && expanded.insert(name.clone()) {
            wanted.push(name);
            wanted.extend(missing);
            continue;
        }
        fs::write(out.join(format!("{name}.ko")), bytes)?;
        order.push(name);
    }
    fs::write(out.join("order"), order.join("\n") + "\n")?;
    fs::write(out.join("wanted"), GUEST_MODULES.join(" "))?;
    Ok(())
}

/// A module file's contents, uncompressed (.ko, .ko.xz, .ko.zst).
fn module_bytes(file: &Path) -> anyhow::Result<Vec<u8>> {
    let name = file.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        return Ok(fs::read(file)?);
    };
    let out = Command::new(tool).arg("-dc").arg(file).output().with_context(|| format!("{tool} -dc"))?;
    if !out.status.success() {
        bail!("{tool} -dc {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// The `depends=` of a module's .modinfo section.
fn modinfo_depends(module: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = module.windows(key.len()).position(|w| w == key) else { return Vec::new() };
    let value = &module[at + key.len()..];
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).split(',').filter(|d| !d.is_empty()).map(|d| d.replace('-', "_")).collect()
}

/// The versioned image package a meta package points at (versions leave the archive).
fn resolve(apt: &[String], meta: &str) -> Option<String> {
    let depends = shell::output(Command::new("apt-cache").args(apt).args(["depends", meta])).ok()?;
    depends
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: ").filter(|p| p.starts_with("linux-image-")))
        .map(str::to_owned)
}

/// Pulls the zstd-compressed vmlinux out of a bzImage (6.12 cloud kernels use zstd; 6.1
/// uses LZ4 and is left as is: its BTF is read inside the guest).
fn extract_elf(image: &Path, elf: &Path) {
    let Ok(data) = fs::read(image) else { return };
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let mut at = 0;
    while let Some(found) = data[at..].windows(4).position(|w| w == ZSTD_MAGIC) {
        let start = at + found;
        let payload = dir().join("payload.zst");
        if fs::write(&payload, &data[start..]).is_ok()
            && shell::succeeds(Command::new("sh").arg("-c").arg(format!(
                "zstd -dc '{}' 2>/dev/null > '{}'; test \"$(head -c4 '{}' | od -An -tx1 | tr -d ' ')\" = 7f454c46",
                payload.display(),
                elf.display(),
                elf.display()
            )))
        {
            let _ = fs::remove_file(&payload);
            return;
        }
        let _ = fs::remove_file(elf);
        at = start + 1;
    }
}

/// The base cpio of an architecture's guests.
fn base_cpio(arch: Arch) -> PathBuf {
    match arch {
        Arch::X86_64 => dir().join("base.cpio"),
        Arch::Arm64 => dir().join("base-arm64.cpio"),
    }
}

fn base_initramfs(arch: Arch) -> anyhow::Result<()> {
    let cpio = base_cpio(arch);
    let base = cpio.with_extension("");
    let init = shell::root().join("xtask/guest/init");
    // Built once; again when init changed since.
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    if cpio.exists() && modified(&cpio) >= modified(&init) {
        return Ok(());
    }
    let _ = fs::remove_dir_all(&base);
    for d in ["bin", "proc", "sys", "dev", "tmp", "t", "etc", "run", "var/lib", "sys/fs/bpf"] {
        fs::create_dir_all(base.join(d))?;
    }
    // The applets are the same on every architecture: the host's busybox lists them.
    match arch {
        Arch::X86_64 => {
            fs::copy("/bin/busybox", base.join("bin/busybox"))
                .context("busybox-static is needed (cargo xtask setup)")?;
            // Only x86-64's machine has isa-debug-exit.
            build_c_program("qexit", Arch::X86_64, &base.join("bin/qexit"))?;
        }
        Arch::Arm64 => {
            let unpacked = dir().join("busybox-arm64");
            let _ = fs::remove_dir_all(&unpacked);
            unpack_packages("arm64-6.12", &["busybox-static"], &unpacked)?;
            fs::copy(unpacked.join("bin/busybox"), base.join("bin/busybox"))?;
        }
    }
    let applets = shell::output(Command::new("/bin/busybox").arg("--list"))?;
    for applet in applets.lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", base.join("bin").join(applet))?;
    }
    std::os::unix::fs::symlink("bin", base.join("sbin"))?;
    fs::copy(&init, base.join("init"))?;
    shell::run(Command::new("chmod").arg("+x").arg(base.join("init")))?;
    make_cpio(&base, &cpio)
}

/// Downloads Debian packages of a guest's architecture (as `series`' apt sees them, once)
/// and unpacks them into `tree`. Never installed: no maintainer scripts run.
pub fn unpack_packages(series: &str, packages: &[&str], tree: &Path) -> anyhow::Result<()> {
    let apt = apt_options(series)?;
    let arch = Arch::of(series).debian();
    let debs = dir().join("debs").join(arch);
    fs::create_dir_all(&debs)?;
    for package in packages {
        let stem = format!("{package}_");
        let have = |d: &Path| {
            fs::read_dir(d).ok().and_then(|entries| {
                entries.flatten().map(|e| e.path()).find(|p| {
                    p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&stem))
                        && p.extension().is_some_and(|e| e == "deb")
                })
            })
        };
        let deb = match have(&debs) {
            Some(deb) => deb,
            None => {
                shell::run(Command::new("apt-get").args(&apt).args(["download", "-qq", package]).current_dir(&debs))
                    .with_context(|| format!("downloading {package}:{arch}"))?;
                have(&debs).with_context(|| format!("apt-get download {package} produced no .deb"))?
            }
        };
        shell::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(tree))?;
    }
    Ok(())
}

pub fn make_cpio(tree: &Path, out: &Path) -> anyhow::Result<()> {
    shell::run(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
        tree.display(),
        out.display()
    )))
}

/// Result of one guest run.
pub struct GuestRun {
    pub status: i32,
    pub output: String,
}

/// The build of the guest payload for another architecture than this host's: `cargo build
/// <args>` in release for it, static (crt-static: the guest has no C library of that
/// architecture for them), linked and its C compiled by Debian's cross gcc. Shares target/
/// with the native build (its host tools are reused). Returns cargo's JSON messages.
/// What every arm64 build here selects (the guests' payload, the bench's, the package and the
/// image; the payload adds its test targets, which need no other features): one feature
/// resolution, so the collector is built once and the guests run the binary that is shipped.
pub const ARM64_SELECTION: &[&str] = &["-p", "collector", "-p", "collector-tests", "--bins"];

pub fn cross_build(arch: Arch, args: &[&str]) -> anyhow::Result<String> {
    let target = arch.rust_target();
    let env_target = target.replace('-', "_");
    let upper = env_target.to_uppercase();
    let gcc = arch.binutil("gcc");
    eprintln!("+ cargo build --release --target {target} {}", args.join(" "));
    shell::output(
        Command::new("cargo")
            .arg("build")
            .args(args)
            .args(["--release", "--target", target, "--message-format=json-render-diagnostics"])
            .env(format!("CARGO_TARGET_{upper}_LINKER"), &gcc)
            .env(format!("CARGO_TARGET_{upper}_RUSTFLAGS"), "-C target-feature=+crt-static")
            .env(format!("CC_{env_target}"), &gcc)
            .env(format!("AR_{env_target}"), arch.binutil("ar"))
            .stderr(std::process::Stdio::inherit())
            .current_dir(shell::root()),
    )
}

/// A static build for the guests (`cargo <args>`, release, crt-static, a target dir of its
/// own); returns cargo's JSON messages.
pub fn static_build(args: &[&str]) -> anyhow::Result<String> {
    shell::output(
        Command::new("cargo")
            .args(args)
            .args(["--release", "--target", "x86_64-unknown-linux-gnu", "--message-format=json"])
            .env("CARGO_TARGET_DIR", shell::work_dir().join("static-target"))
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .current_dir(shell::root()),
    )
}

/// The collector built static for the benchmark guest (without the AWS SDK, which it does
/// not use).
pub fn static_collector() -> anyhow::Result<PathBuf> {
    static_build(&["build", "-p", "collector", "--no-default-features"])?;
    Ok(shell::work_dir().join("static-target/x86_64-unknown-linux-gnu/release/collector"))
}

/// The C program xtask/guest/`name`.c, built static for `arch` (the guests have no
/// libraries) to `out`.
pub fn build_c_program(name: &str, arch: Arch, out: &Path) -> anyhow::Result<()> {
    let source = shell::root().join("xtask/guest").join(format!("{name}.c"));
    shell::run(Command::new(arch.binutil("gcc")).args(["-O2", "-static", "-o"]).arg(out).arg(source))
}

/// Where the guest reaches the test-server agent (tests/src/servers.rs); QEMU's user network
/// runs `xtask guest-agent` for each connection to it. The host itself is 10.0.2.2 there.
pub const AGENT_ADDRESS: &str = "10.0.2.100:7000";

/// The guest's network: none, or QEMU's user network with the test-server agent.
#[derive(Clone, Copy, PartialEq)]
pub enum Network {
    None,
    TestServers,
}

/// Boots `series` with `root` laid over the guest's / and runs `command` (sh) in /t.
pub fn run(series: &str, root: &Path, command: &str, timeout: Duration, network: Network) -> anyhow::Result<GuestRun> {
    run_with(series, root, command, timeout, network, &[])
}

/// `run` with more QEMU arguments (`-icount` for the benchmarks).
pub fn run_with(
    series: &str,
    root: &Path,
    command: &str,
    timeout: Duration,
    network: Network,
    qemu_args: &[&str],
) -> anyhow::Result<GuestRun> {
    let nic = match network {
        Network::None => "none".to_owned(),
        Network::TestServers => {
            let xtask = std::env::current_exe().context("xtask's own path")?;
            let (ip, port) = AGENT_ADDRESS.split_once(':').expect("ip:port");
            // (QEMU splits its options at commas.)
            let agent = format!("{} guest-agent", xtask.display()).replace(',', ",,");
            format!("user,model=virtio-net-pci,guestfwd=tcp:{ip}:{port}-cmd:{agent}")
        }
    };
    // Several guests may run at once.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let run_dir = dir().join(format!("run-{series}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&run_dir);
    let stage = run_dir.join("stage");
    fs::create_dir_all(stage.join("t"))?;
    shell::run(Command::new("cp").arg("-a").arg(format!("{}/.", root.display())).arg(&stage))?;
    fs::write(stage.join("t/cmd"), command)?;
    make_cpio(&stage, &run_dir.join("overlay.cpio"))?;
    let initrd = run_dir.join("initrd.cpio");
    let arch = Arch::of(series);
    let mut joined = fs::read(base_cpio(arch))?;
    joined.extend(fs::read(run_dir.join("overlay.cpio"))?);
    fs::write(&initrd, joined)?;
    let results = run_dir.join("results.log");
    let console = run_dir.join("console.log");
    let (qemu, machine): (&str, &[&str]) = match arch {
        Arch::X86_64 => ("qemu-system-x86_64", &["-cpu", "max", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]),
        // pauth-impdef: the architected pointer-authentication cipher is slow under TCG.
        Arch::Arm64 => ("qemu-system-aarch64", &["-M", "virt", "-cpu", "max,pauth-impdef=on"]),
    };
    let (console_tty, results_port): (&str, Vec<String>) = match arch {
        Arch::X86_64 => ("ttyS0", vec!["-serial".into(), format!("file:{}", results.display())]),
        // virt has one serial port: the results go to a virtio console (/dev/hvc0).
        Arch::Arm64 => (
            "ttyAMA0",
            vec![
                "-device".into(),
                "virtio-serial-pci".into(),
                "-chardev".into(),
                format!("file,id=results,path={}", results.display()),
                "-device".into(),
                "virtconsole,chardev=results".into(),
            ],
        ),
    };
    let status = Command::new("timeout")
        // For the agent QEMU runs (Network::TestServers): where the servers are installed.
        .env("KINESIS_LOCAL_MAIN", crate::setup::kinesis_local_main())
        .env("MOTO_VENV", crate::setup::moto_venv())
        .arg(timeout.as_secs().to_string())
        .arg(qemu)
        .args(["-accel", "tcg"])
        .args(machine)
        .args([
            "-m",
            // TCG allocates guest RAM as it is touched: the host pays only what is used.
            "1536M",
            "-smp",
            "1",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(&results_port)
        .args(["-nic", &nic, "-kernel"])
        .arg(kernel_image(series))
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &format!("console={console_tty} panic=-1 quiet")])
        .args(qemu_args)
        .status()
        .with_context(|| format!("starting {qemu} (cargo xtask setup installs it)"))?;
    let output = fs::read_to_string(&results).unwrap_or_default();
    let reported = output
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("GUEST-EXIT status="))
        .and_then(|s| s.trim().parse::<i32>().ok());
    match (status.code(), reported) {
        (Some(124), _) => bail!("guest {series} timed out after {timeout:?}; console: {}", console.display()),
        // x86-64: isa-debug-exit's status, (g << 1) | 1; arm64: a clean power-off.
        (Some(q), Some(g))
            if (arch == Arch::X86_64 && q & 1 == 1 && (q >> 1) == (g & 127)) || (arch == Arch::Arm64 && q == 0) =>
        {
            let _ = fs::remove_dir_all(&run_dir);
            Ok(GuestRun { status: g, output })
        }
        _ => bail!(
            "guest {series} reported no status (qemu {status}); console: {}\n{output}\n\
             -- the console's last lines (a kernel panic or an out-of-memory kill shows here):\n{}",
            console.display(),
            console_tail(&console, 40)
        ),
    }
}

/// The last `lines` lines of the guest's console: CI keeps only what xtask prints, not the
/// file.
fn console_tail(console: &Path, lines: usize) -> String {
    let text = String::from_utf8_lossy(&fs::read(console).unwrap_or_default()).into_owned();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Copies a dynamically linked host program and the libraries it loads into `root`, at the
/// same paths, so it runs in the guest.
pub fn add_program(root: &Path, program: &Path) -> anyhow::Result<()> {
    copy_at_same_paths(root, std::iter::once(program.to_owned()).chain(libraries(program)?))
}

/// Copies the libraries a dynamically linked program (or library) loads into `root`, at
/// the same paths.
pub fn add_libraries(root: &Path, program: &Path) -> anyhow::Result<()> {
    copy_at_same_paths(root, libraries(program)?)
}

fn libraries(program: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let ldd = shell::output(Command::new("ldd").arg(program))?;
    Ok(ldd.lines().filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/'))).map(PathBuf::from).collect())
}

fn copy_at_same_paths(root: &Path, files: impl IntoIterator<Item = PathBuf>) -> anyhow::Result<()> {
    for file in files {
        let target = root.join(file.strip_prefix("/").expect("absolute"));
        fs::create_dir_all(target.parent().expect("parent"))?;
        fs::copy(fs::canonicalize(&file)?, &target).with_context(|| format!("copying {}", file.display()))?;
    }
    Ok(())
}
