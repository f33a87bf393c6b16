//! `idemp demo` (being written).

/// Arguments of `idemp demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

/// Runs `idemp demo`.
pub fn run(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("`idemp demo` is not built yet")
}
