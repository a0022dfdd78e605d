pub fn run(_guest: bool) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
