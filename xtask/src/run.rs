//! `cargo xtask run`: the collector on a demo log, in one command.
pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
