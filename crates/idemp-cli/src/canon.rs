//! `idemp canon` (being written).

/// Arguments of `idemp canon`.
#[derive(Debug, clap::Args)]
pub struct CanonArgs {}

/// Runs `idemp canon`.
pub fn run(_args: CanonArgs, _output: Output) -> anyhow::Result<()> {
    anyhow::bail!("`idemp canon` is not built yet")
}

/// What `canon`/`hash` print.
#[derive(Debug, Clone, Copy)]
pub enum Output {
    /// The canonical JSON.
    Canonical,
    /// Its SHA-256 hex.
    Hash,
}
