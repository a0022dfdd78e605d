pub fn run(_name: Option<&str>) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
