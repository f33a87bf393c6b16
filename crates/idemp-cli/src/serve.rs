//! `idemp serve` (being written).

/// Arguments of `idemp serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

/// Runs `idemp serve`.
pub fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("`idemp serve` is not built yet")
}
