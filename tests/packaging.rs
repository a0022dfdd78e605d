//! packaging/systemd/collector.service: `systemd-analyze verify` accepts it, and the
//! collector ships with exactly the capabilities its bounding set keeps (applied with
//! setpriv, as systemd would), then exits on SIGTERM in time with its checkpoint written.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use collector_tests::{Scratch, collector_bin, config, wait_for_records};

fn unit() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/collector.service"))
        .unwrap()
}

fn directive(unit: &str, key: &str) -> String {
    unit.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_else(|| panic!("no {key}=")).to_owned()
}

/// `systemd-analyze verify` passes the unit `text`, with nothing to say about it.
fn assert_systemd_accepts(scratch: &Scratch, text: &str) {
    let path = scratch.path("collector.service");
    std::fs::write(&path, text).unwrap();
    let verify =
        Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    let about_unit: Vec<&str> = stderr.lines().filter(|l| l.contains("collector.service")).collect();
    assert!(verify.status.success() && about_unit.is_empty(), "systemd-analyze verify: {stderr}");
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let scratch = Scratch::new("systemd-verify");
    let config_path = scratch.path("collector.toml");
    let out = scratch.path("out.jsonl");
    std::fs::write(&config_path, config(&scratch.path("state"), &[scratch.pattern("*.log")], &out, "")).unwrap();
    // The unit as installed, pointing at this build and this config.
    let text = unit()
        .replace("/usr/bin/collector", collector_bin().to_str().unwrap())
        .replace("/etc/collector/collector.toml", config_path.to_str().unwrap());
    assert_systemd_accepts(&scratch, &text);
}

/// A wrong config is not restarted forever: `run` exits with the status the unit names in
/// RestartPreventExitStatus (and nothing else there).
#[test]
fn a_wrong_config_exits_with_the_status_the_unit_does_not_restart() {
    assert_eq!(directive(&unit(), "RestartPreventExitStatus"), "78");
    assert!(directive(&unit(), "Restart") == "on-failure");
    assert!(!unit().contains("ExecStartPre="), "a failing ExecStartPre would be restarted whatever its status");
    let scratch = Scratch::new("systemd-bad-config");
    let path = scratch.path("collector.toml");
    std::fs::write(&path, "[[flow]\nname = \"app\"\n").unwrap();
    let run = Command::new(collector_bin()).args(["run", "--config"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains(&format!("{}:", path.display())), "the file is named: {stderr}");
}

#[test]
fn the_units_capabilities_are_enough_and_sigterm_writes_the_checkpoint() {
    let caps: Vec<String> = directive(&unit(), "CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let timeout: u64 = directive(&unit(), "TimeoutStopSec").trim_end_matches('s').parse().unwrap();
    let scratch = Scratch::new("systemd-caps");
    let log = scratch.path("app.log");
    let out = scratch.path("out.jsonl");
    let state = scratch.path("state");
    std::fs::write(&log, b"").unwrap();
    let config_path = scratch.path("collector.toml");
    std::fs::write(&config_path, config(&state, &[scratch.pattern("app.log")], &out, "")).unwrap();
    let mut child = Command::new("setpriv")
        .arg(format!("--bounding-set=-all,{}", caps.join(",")))
        .arg("--no-new-privs")
        .arg(collector_bin())
        .args(["--attach-mode", &collector_tests::attach_mode(), "run", "--config"])
        .arg(&config_path)
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux)");
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = stderr.next().expect("the collector exited before running").unwrap();
        eprintln!("collector: {line}");
        if line.contains("collector running") {
            break;
        }
    }
    // It really runs with only those capabilities (those this machine grants at all).
    let cap_field = |pid: &str, field: &str| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        u64::from_str_radix(status.lines().find_map(|l| l.strip_prefix(field)).unwrap().trim(), 16).unwrap()
    };
    let number = |cap: &str| match cap {
        "+dac_read_search" => 2,
        "+sys_ptrace" => 19,
        "+sys_resource" => 24,
        "+perfmon" => 38,
        "+bpf" => 39,
        other => panic!("the test does not know {other}"),
    };
    let wanted = caps.iter().fold(0u64, |m, c| m | 1 << number(c)) & cap_field("self", "CapBnd:");
    let effective = cap_field(&child.id().to_string(), "CapEff:");
    assert_eq!(effective, wanted, "CapEff {effective:x} for {caps:?}");

    let lines: String = (1..=500).map(|n| format!("w {n}\n")).collect();
    std::fs::write(&log, &lines).unwrap();
    assert_eq!(wait_for_records(&out, 500).len(), 500);

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let asked = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(asked.elapsed() < Duration::from_secs(timeout), "no exit within TimeoutStopSec={timeout}s");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit}");
    let saved = collector_tests::checkpoints(&state);
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!(saved[0]["acknowledged"].as_u64(), Some(lines.len() as u64));
}

/// The Debian package (`cargo xtask package`, which `cargo xtask test` runs first and names in
/// COLLECTOR_DEB) installs with dpkg into a scratch root: the binary (stripped, under 40 MiB)
/// runs, the installed unit passes `systemd-analyze verify`, the installed config passes
/// check-config, and both files under /etc are conffiles (an upgrade keeps an edited one).
#[test]
fn the_package_installs_a_unit_systemd_accepts_and_a_config_check_config_accepts() {
    let deb = std::env::var_os("COLLECTOR_DEB").expect("COLLECTOR_DEB: the .deb to install (cargo xtask test sets it)");
    let scratch = Scratch::new("deb");
    let root = scratch.path("root");
    for dir in ["var/lib/dpkg/updates", "var/lib/dpkg/info"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), b"").unwrap();
    // The scratch root has no libc6 package to satisfy Depends: (the host's libc is used).
    let install = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-depends", "--install"])
        .arg(&deb)
        .output()
        .expect("dpkg");
    assert!(install.status.success(), "dpkg --install: {}", String::from_utf8_lossy(&install.stderr));
    let state =
        Command::new("dpkg").arg(format!("--root={}", root.display())).args(["-s", "collector"]).output().unwrap();
    let state = String::from_utf8_lossy(&state.stdout).into_owned();
    assert!(state.contains("Status: install ok installed"), "{state}");
    for conffile in ["/etc/collector/collector.toml", "/etc/default/collector"] {
        assert!(state.contains(&format!(" {conffile} ")), "{conffile} is a conffile: {state}");
    }

    let binary = root.join("usr/bin/collector");
    let size = std::fs::metadata(&binary).unwrap().len();
    assert!(size < 40 << 20, "the installed binary is {size} bytes");
    let version = Command::new(&binary).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout), format!("collector {}\n", env!("CARGO_PKG_VERSION")));
    let config = root.join("etc/collector/collector.toml");
    let check = Command::new(&binary).args(["check-config", "--config"]).arg(&config).output().unwrap();
    assert!(check.status.success(), "the installed config: {}", String::from_utf8_lossy(&check.stderr));

    // The installed unit, its paths pointing into the scratch root.
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/collector.service")).unwrap();
    assert_eq!(unit, self::unit(), "the unit installed is the one tested above");
    let text = unit
        .replace("/usr/bin/collector", binary.to_str().unwrap())
        .replace("/etc/collector/collector.toml", config.to_str().unwrap())
        .replace("/etc/default/collector", root.join("etc/default/collector").to_str().unwrap());
    assert_systemd_accepts(&scratch, &text);
}

/// sha256 of a file, in hex.
fn sha256(file: &Path) -> String {
    let out = Command::new("sha256sum").arg(file).output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().expect("a digest").to_owned()
}

fn read_json(file: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The container image (`cargo xtask image`, which `cargo xtask test` runs first and names in
/// COLLECTOR_IMAGE) is an OCI image layout whose blobs are what their names and sizes say,
/// and whose one layer runs the collector with nothing but its own files: chrooted into the
/// unpacked layer, `--version` answers and `check-config` accepts the package's config. (No
/// container engine is installed here; chroot is what such an engine does to the layer.)
#[test]
fn the_image_is_an_oci_layout_whose_layer_runs_the_collector_alone() {
    let archive = std::env::var_os("COLLECTOR_IMAGE")
        .expect("COLLECTOR_IMAGE: the image archive to check (cargo xtask test sets it)");
    let scratch = Scratch::new("image");
    let arch = Command::new("dpkg").arg("--print-architecture").output().unwrap();
    let root = unpack_image(&scratch, Path::new(&archive), String::from_utf8_lossy(&arch.stdout).trim());
    let size = std::fs::metadata(root.join("usr/bin/collector")).unwrap().len();
    assert!(size < 40 << 20, "the image's binary is {size} bytes");
    let version = Command::new("chroot").arg(&root).args(["/usr/bin/collector", "--version"]).output().unwrap();
    assert!(version.status.success(), "in the image: {}", String::from_utf8_lossy(&version.stderr));
    assert_eq!(String::from_utf8_lossy(&version.stdout), format!("collector {}\n", env!("CARGO_PKG_VERSION")));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::copy(repo.join("packaging/deb/collector.toml"), root.join("etc/collector/collector.toml")).unwrap();
    let check = Command::new("chroot")
        .arg(&root)
        .args(["/usr/bin/collector", "check-config", "--config", "/etc/collector/collector.toml"])
        .output()
        .unwrap();
    assert!(check.status.success(), "check-config in the image: {}", String::from_utf8_lossy(&check.stderr));
}

/// Checks the OCI layout in `archive` (blobs are what their names and sizes say, one layer,
/// the entrypoint, `arch` in the index and the config) and unpacks its layer: the root.
fn unpack_image(scratch: &Scratch, archive: &Path, arch: &str) -> std::path::PathBuf {
    let layout = scratch.path("layout");
    std::fs::create_dir_all(&layout).unwrap();
    assert!(Command::new("tar").arg("xf").arg(archive).arg("-C").arg(&layout).status().unwrap().success());
    assert_eq!(read_json(&layout.join("oci-layout"))["imageLayoutVersion"], "1.0.0");
    let blob = |digest: &serde_json::Value, size: &serde_json::Value| {
        let hex = digest.as_str().and_then(|d| d.strip_prefix("sha256:")).expect("a sha256 digest");
        let file = layout.join("blobs/sha256").join(hex);
        assert_eq!(sha256(&file), hex, "{} holds what its name says", file.display());
        assert_eq!(Some(std::fs::metadata(&file).unwrap().len()), size.as_u64(), "the size of {hex}");
        file
    };
    let index = read_json(&layout.join("index.json"));
    let entry = &index["manifests"][0];
    assert_eq!(entry["platform"]["architecture"], arch);
    let name = format!("collector:{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(entry["annotations"]["org.opencontainers.image.ref.name"], name.as_str());
    let manifest = read_json(&blob(&entry["digest"], &entry["size"]));
    let config = read_json(&blob(&manifest["config"]["digest"], &manifest["config"]["size"]));
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/usr/bin/collector"]));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer: {manifest}");
    let layer = blob(&layers[0]["digest"], &layers[0]["size"]);
    let unpacked = scratch.path("layer.tar");
    let gunzip = Command::new("gunzip").arg("-c").arg(&layer).output().unwrap();
    assert!(gunzip.status.success());
    std::fs::write(&unpacked, &gunzip.stdout).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0], format!("sha256:{}", sha256(&unpacked)), "the layer's diff id");

    assert_eq!(config["architecture"], arch);
    let root = scratch.path("root");
    std::fs::create_dir_all(&root).unwrap();
    assert!(Command::new("tar").arg("xf").arg(&unpacked).arg("-C").arg(&root).status().unwrap().success());
    root
}

/// arm64's package and image (`cargo xtask package --arch arm64`, `image --arch arm64`,
/// built by `cargo xtask test` with the guests and named in COLLECTOR_DEB_ARM64 and
/// COLLECTOR_IMAGE_ARM64) hold the files amd64's do, and one binary: a static arm64 ELF
/// under 40 MiB, the same bytes in both. This host cannot run it; the arm64 guests run this
/// very binary (the payload takes it from the package's tree) through the rotation suite.
#[test]
fn the_arm64_package_and_image_carry_one_static_arm64_binary() {
    let deb = std::env::var_os("COLLECTOR_DEB_ARM64").expect("COLLECTOR_DEB_ARM64 (cargo xtask test sets it)");
    let image = std::env::var_os("COLLECTOR_IMAGE_ARM64").expect("COLLECTOR_IMAGE_ARM64 (cargo xtask test sets it)");
    let amd64 = std::env::var_os("COLLECTOR_DEB").expect("COLLECTOR_DEB (cargo xtask test sets it)");
    let field = |deb: &std::ffi::OsStr, name: &str| {
        let out = Command::new("dpkg-deb").arg("--field").arg(deb).arg(name).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(field(&deb, "Architecture"), "arm64");
    assert_eq!(field(&deb, "Depends"), "", "a static binary depends on no package");
    let paths = |deb: &std::ffi::OsStr| -> Vec<String> {
        let out = Command::new("dpkg-deb").arg("--contents").arg(deb).output().unwrap();
        assert!(out.status.success());
        let mut paths: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5).map(str::to_owned))
            .collect();
        paths.sort();
        paths
    };
    assert_eq!(paths(&deb), paths(&amd64), "the same files as amd64's package");
    for conffile in ["/etc/collector/collector.toml", "/etc/default/collector"] {
        let out = Command::new("dpkg-deb").arg("--info").arg(&deb).arg("conffiles").output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).lines().any(|l| l == conffile), "{conffile} is a conffile");
    }

    let scratch = Scratch::new("arm64");
    let tree = scratch.path("deb");
    assert!(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree).status().unwrap().success());
    let binary = tree.join("usr/bin/collector");
    let size = std::fs::metadata(&binary).unwrap().len();
    assert!(size < 40 << 20, "the arm64 binary is {size} bytes");
    let headers = Command::new("readelf").args(["--file-header", "--program-headers"]).arg(&binary).output().unwrap();
    let headers = String::from_utf8_lossy(&headers.stdout).into_owned();
    assert!(headers.contains("AArch64"), "{headers}");
    assert!(!headers.contains("INTERP"), "static: no program interpreter\n{headers}");

    let root = unpack_image(&scratch, Path::new(&image), "arm64");
    assert_eq!(sha256(&root.join("usr/bin/collector")), sha256(&binary), "the image carries the package's binary");
    assert!(root.join("etc/ssl/certs/ca-certificates.crt").exists());
}
