//! Builds the kernel programs (collector-ebpf) with nightly + bpf-linker, so a plain
//! `cargo build -p collector` yields a daemon with its eBPF object embedded.
fn main() -> anyhow::Result<()> {
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "collector-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../collector-ebpf"),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
