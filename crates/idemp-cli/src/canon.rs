//! `idemp canon` and `idemp hash`: the canonical form of a JSON request, or its SHA-256.
//!
//! ```text
//! idemp canon [--format python|jcs] [--preset anthropic|openai|bedrock|gemini] [--drop KEY]… [--drop-path PATH]… [FILE|-]
//! idemp hash  [same flags] [FILE|-]
//! ```

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use idemp::canon::{Canonicalizer, Format, Preset};

/// Arguments of `idemp canon` and `idemp hash`.
#[derive(Debug, clap::Args)]
pub struct CanonArgs {
    /// Canonical form: `python` (byte-identical to llm-message-hash-py) or `jcs` (RFC 8785).
    #[arg(long, value_name = "python|jcs", default_value = "python")]
    format: String,
    /// Drop the volatile keys of a provider at any depth: anthropic, openai, bedrock, gemini.
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// Also drop this key from every object at any depth (repeatable).
    #[arg(long = "drop", value_name = "KEY")]
    drop_keys: Vec<String>,
    /// Drop the member at this path only, e.g. `metadata.user_id` or
    /// `messages[*].cache_control` (repeatable).
    #[arg(long = "drop-path", value_name = "PATH")]
    drop_paths: Vec<String>,
    /// The JSON file to read; `-` or nothing reads standard input.
    #[arg(value_name = "FILE|-")]
    input: Option<PathBuf>,
}

/// What `canon`/`hash` print.
#[derive(Debug, Clone, Copy)]
pub enum Output {
    /// The canonical JSON.
    Canonical,
    /// Its SHA-256 hex.
    Hash,
}

impl CanonArgs {
    /// The canonicalizer these flags describe.
    fn canonicalizer(&self) -> anyhow::Result<Canonicalizer> {
        let format: Format = self.format.parse()?;
        let mut canon = Canonicalizer::new(format);
        if let Some(name) = &self.preset {
            canon = canon.preset(name.parse::<Preset>()?);
        }
        for key in &self.drop_keys {
            canon = canon.drop_key(key);
        }
        for path in &self.drop_paths {
            canon = canon.drop_path(path)?;
        }
        Ok(canon)
    }

    /// Reads the input: a file, or standard input for `-` or no argument.
    fn read_input(&self) -> anyhow::Result<(String, Vec<u8>)> {
        let mut bytes = Vec::new();
        match &self.input {
            Some(path) if path.as_os_str() != "-" => {
                let name = path.display().to_string();
                bytes = std::fs::read(path).with_context(|| format!("cannot read {name}"))?;
                Ok((name, bytes))
            }
            _ => {
                std::io::stdin()
                    .lock()
                    .read_to_end(&mut bytes)
                    .context("cannot read standard input")?;
                Ok(("standard input".to_owned(), bytes))
            }
        }
    }
}

/// Runs `idemp canon` (`Output::Canonical`) or `idemp hash` (`Output::Hash`).
pub fn run(args: CanonArgs, output: Output) -> anyhow::Result<()> {
    let canon = args.canonicalizer()?;
    let (name, input) = args.read_input()?;
    let mut line = match output {
        Output::Canonical => {
            let mut out = Vec::with_capacity(input.len() + 1);
            canon
                .write(&input, &mut out)
                .with_context(|| format!("invalid input in {name}"))?;
            out
        }
        Output::Hash => canon
            .hash(&input)
            .with_context(|| format!("invalid input in {name}"))?
            .into_bytes(),
    };
    line.push(b'\n');
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&line)
        .and_then(|()| stdout.flush())
        .context("cannot write to standard output")?;
    Ok(())
}
