//! `cargo xtask image [--arch arm64]`: an OCI image archive of the release build,
//! `target/package/collector-<version>-<arch>.tar`, for `podman load -i` or `skopeo copy
//! oci-archive:...` (the README says how to push it).
//!
//! No base image can be pulled here, so the image is built from this host: one layer with the
//! binary (the package's, stripped), the shared libraries and the loader it links (as `ldd`
//! names them; arm64's binary is static and links none), and the CA certificates for HTTPS to
//! AWS. Nothing else: no shell, no package
//! manager. The layer and the archive are written with tar and gzip, timestamps and owners
//! zeroed, then laid out as the OCI image layout says (`oci-layout`, `index.json`, blobs named
//! by their sha256).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;
use serde_json::json;

use crate::{guest::Arch, package, shell};

/// Where the collector's TLS stack looks for the system's CA certificates (Debian's bundle).
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Needs `package::run(arch)` first: the image carries the package's binary.
pub fn run(target: Arch) -> anyhow::Result<PathBuf> {
    let collector = package::tree(target).join("usr/bin/collector");
    anyhow::ensure!(collector.exists(), "{} is missing: cargo xtask package first", collector.display());
    let version = env!("CARGO_PKG_VERSION");
    // Debian's architecture names are OCI's for these two (amd64, arm64).
    let arch = target.debian();
    let out_dir = shell::root().join("target/package");
    let work = out_dir.join(format!("image-{arch}"));
    let _ = fs::remove_dir_all(&work);
    let rootfs = work.join("rootfs");

    place(&collector, &rootfs.join("usr/bin/collector"), 0o755)?;
    let libraries = match target {
        Arch::X86_64 => linked_libraries(&collector)?,
        Arch::Arm64 => {
            assert_static(&collector)?;
            Vec::new()
        }
    };
    for library in libraries {
        place(&library, &rootfs.join(library.strip_prefix("/")?), 0o755)?;
    }
    anyhow::ensure!(Path::new(CA_BUNDLE).exists(), "{CA_BUNDLE} is missing: install Debian's ca-certificates");
    place(Path::new(CA_BUNDLE), &rootfs.join(&CA_BUNDLE[1..]), 0o644)?;
    // Where the chart mounts the config and the state directory.
    for dir in ["etc/collector", "var/lib/collector"] {
        fs::create_dir_all(rootfs.join(dir))?;
    }

    let layout = work.join("layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let layer_tar = work.join("layer.tar");
    tar(&rootfs, &layer_tar)?;
    let diff_id = sha256(&layer_tar)?;
    shell::run(Command::new("gzip").args(["-n", "-9"]).arg(&layer_tar))?;
    let (layer, layer_size) = blob(&blobs, &work.join("layer.tar.gz"))?;

    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Entrypoint": ["/usr/bin/collector"],
            "Cmd": ["run", "--config", "/etc/collector/collector.toml"],
            "Env": ["PATH=/usr/bin"],
            "Labels": { "org.opencontainers.image.version": version },
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
        "history": [{ "created_by": "cargo xtask image" }],
    });
    let (config, config_size) = json_blob(&blobs, &work, "config.json", &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layer_size }],
    });
    let (manifest, manifest_size) = json_blob(&blobs, &work, "manifest.json", &manifest)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest,
            "size": manifest_size,
            "platform": { "architecture": arch, "os": "linux" },
            "annotations": { "org.opencontainers.image.ref.name": format!("collector:{version}") },
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;

    let archive = out_dir.join(format!("collector-{version}-{arch}.tar"));
    tar(&layout, &archive)?;
    eprintln!(
        "image: {} ({:.1} MiB; the compressed layer {:.1} MiB)",
        archive.display(),
        fs::metadata(&archive)?.len() as f64 / (1 << 20) as f64,
        layer_size as f64 / (1 << 20) as f64
    );
    Ok(archive)
}

/// The shared libraries `binary` links, the loader among them, as `ldd` resolves them here.
fn linked_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let listed = shell::output(Command::new("ldd").arg(binary))?;
    let mut libraries = Vec::new();
    for line in listed.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2
        // (0x...)", and the kernel's vDSO, which has no file.
        let path = line.split_once("=>").map_or(line, |(_, to)| to).trim();
        let path = path.split(" (").next().unwrap_or_default();
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        } else if line.contains("not found") {
            anyhow::bail!("{} links a library this host lacks: {line}", binary.display());
        }
    }
    anyhow::ensure!(!libraries.is_empty(), "ldd listed no library for {}: {listed}", binary.display());
    Ok(libraries)
}

/// Fails unless `binary` is statically linked (no program interpreter to ship with it).
fn assert_static(binary: &Path) -> anyhow::Result<()> {
    let headers = shell::output(Command::new("readelf").arg("--program-headers").arg(binary))?;
    anyhow::ensure!(!headers.contains("INTERP"), "{} is not static: {headers}", binary.display());
    Ok(())
}

/// Copies `from` (a link's target, where it is one) to `to` with `mode`.
fn place(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    fs::create_dir_all(to.parent().context("a path in the image")?)?;
    fs::copy(from, to).with_context(|| format!("copying {} into the image", from.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// A tar of what is in `dir`, the same bytes for the same files: names sorted, owners root,
/// times zero.
fn tar(dir: &Path, to: &Path) -> anyhow::Result<()> {
    let mut entries: Vec<String> =
        fs::read_dir(dir)?.map(|e| Ok(e?.file_name().to_string_lossy().into_owned())).collect::<anyhow::Result<_>>()?;
    entries.sort();
    shell::run(
        Command::new("tar")
            .args(["--create", "--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0"])
            .arg("--file")
            .arg(to)
            .arg("--directory")
            .arg(dir)
            .args(&entries),
    )
}

fn sha256(file: &Path) -> anyhow::Result<String> {
    let out = shell::output(Command::new("sha256sum").arg(file))?;
    Ok(out.split_whitespace().next().context("sha256sum printed nothing")?.to_owned())
}

/// Moves `file` into `blobs` under its digest: the digest ("sha256:...") and its size.
fn blob(blobs: &Path, file: &Path) -> anyhow::Result<(String, u64)> {
    let hex = sha256(file)?;
    let size = fs::metadata(file)?.len();
    fs::rename(file, blobs.join(&hex))?;
    Ok((format!("sha256:{hex}"), size))
}

fn json_blob(blobs: &Path, work: &Path, name: &str, value: &serde_json::Value) -> anyhow::Result<(String, u64)> {
    let file = work.join(name);
    fs::write(&file, serde_json::to_vec(value)?)?;
    blob(blobs, &file)
}
