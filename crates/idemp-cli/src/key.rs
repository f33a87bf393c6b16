//! `idemp key` (being written).

/// Arguments of `idemp key`.
#[derive(Debug, clap::Args)]
pub struct KeyArgs {}

/// Runs `idemp key`.
pub fn run(_args: KeyArgs) -> anyhow::Result<()> {
    anyhow::bail!("`idemp key` is not built yet")
}
