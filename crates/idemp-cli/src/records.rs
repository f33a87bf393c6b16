//! `idemp records` (being written).

/// Arguments of `idemp records`.
#[derive(Debug, clap::Args)]
pub struct RecordsArgs {}

/// Runs `idemp records`.
pub fn run(_args: RecordsArgs) -> anyhow::Result<()> {
    anyhow::bail!("`idemp records` is not built yet")
}
