//! `idemp key`: deterministic idempotency keys, byte-compatible with agentidemp.
//!
//! ```text
//! idemp key hex [--hex] [TEXT]
//! idemp key scoped [--hex] SCOPE [PART…]
//! idemp key uuid5 [--hex] [--namespace dns|url|oid|x500|anthropic|UUID] NAME
//! idemp key random
//! ```
//!
//! The value alone is printed on stdout with a newline. Arguments are taken as their
//! raw bytes (on Unix, even when they are not UTF-8); `--hex` takes every input
//! argument as hex-encoded bytes instead, which is how NUL bytes and invalid UTF-8
//! are given.

use std::{
    ffi::{OsStr, OsString},
    io::{Read, Write},
};

use anyhow::{Context, bail};
use idemp::key::{self, Uuid};

/// Arguments of `idemp key`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Keys are compatible with the Python package agentidemp-py 0.1.0 and the Rust crate agentidemp 0.1.0.\nArguments starting with '-' go after `--`, e.g. `idemp key hex -- -x`."
)]
pub struct KeyArgs {
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Debug, clap::Subcommand)]
enum KeyCommand {
    /// Print "ik_" + the first 32 hex digits of SHA-256(TEXT) (agentidemp sha256_hex).
    Hex {
        /// TEXT is hex-encoded bytes (e.g. `00ff`); on stdin, surrounding whitespace is ignored.
        #[arg(long)]
        hex: bool,
        /// The content to hash, as its bytes. Absent: the raw bytes of stdin.
        text: Option<OsString>,
    },
    /// Print the key of SCOPE ‖ 0x00 ‖ PART ‖ 0x00 ‖ … (agentidemp scoped_key).
    ///
    /// With one PART this is agentidemp's scoped_sha256_hex; with none, the key of
    /// SCOPE alone. Not injective: a NUL inside SCOPE or a PART looks like a separator.
    Scoped {
        /// SCOPE and every PART are hex-encoded bytes (SCOPE must decode to UTF-8).
        #[arg(long)]
        hex: bool,
        /// The scope (tenant, user, function name…): UTF-8 text.
        scope: OsString,
        /// The parts, as their bytes.
        parts: Vec<OsString>,
    },
    /// Print the RFC 4122 UUIDv5 of NAME in a namespace (agentidemp uuid5_key).
    ///
    /// NAME is hashed as raw bytes, as the agentidemp crate does (the Python package
    /// refuses names that are not valid UTF-8; for every valid name they agree).
    Uuid5 {
        /// NAME is hex-encoded bytes.
        #[arg(long)]
        hex: bool,
        /// dns, url, oid, x500, anthropic, or a UUID. The default, anthropic, is
        /// agentidemp's NAMESPACE_ANTHROPIC: the RFC 4122 DNS namespace
        /// 6ba7b810-9dad-11d1-80b4-00c04fd430c8 (same as dns).
        #[arg(long, default_value = "anthropic", value_name = "NAMESPACE")]
        namespace: String,
        /// The name, as its bytes.
        name: OsString,
    },
    /// Print a fresh random UUIDv4 (agentidemp random_key).
    Random,
}

/// Runs `idemp key`.
pub fn run(args: KeyArgs) -> anyhow::Result<()> {
    let value = match args.command {
        KeyCommand::Hex { hex, text } => {
            let content = match text {
                Some(text) => input("TEXT", &text, hex)?,
                None => stdin_input(hex)?,
            };
            key::sha256_hex(content)
        }
        KeyCommand::Scoped { hex, scope, parts } => {
            let scope = input("SCOPE", &scope, hex)?;
            let scope = String::from_utf8(scope).map_err(|e| {
                let at = e.utf8_error().valid_up_to();
                anyhow::anyhow!(
                    "SCOPE is not valid UTF-8 (byte 0x{:02x} at position {at})",
                    e.as_bytes()[at]
                )
            })?;
            let parts = parts
                .iter()
                .enumerate()
                .map(|(i, p)| input(&format!("PART {}", i + 1), p, hex))
                .collect::<anyhow::Result<Vec<_>>>()?;
            key::scoped_key(&scope, parts)
        }
        KeyCommand::Uuid5 {
            hex,
            namespace,
            name,
        } => {
            let namespace = parse_namespace(&namespace)?;
            key::uuid5_key(&namespace, input("NAME", &name, hex)?)
        }
        KeyCommand::Random => key::random_key(),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}")
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

/// The bytes of an argument: raw, or hex-decoded with `--hex`.
fn input(what: &str, arg: &OsStr, hex: bool) -> anyhow::Result<Vec<u8>> {
    let bytes = os_bytes(what, arg)?;
    if hex {
        decode_hex(what, &bytes)
    } else {
        Ok(bytes)
    }
}

fn stdin_input(hex: bool) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut bytes)
        .context("reading stdin")?;
    if hex {
        decode_hex("stdin", bytes.trim_ascii())
    } else {
        Ok(bytes)
    }
}

#[cfg(unix)]
fn os_bytes(_what: &str, arg: &OsStr) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    Ok(arg.as_bytes().to_vec())
}

#[cfg(not(unix))]
fn os_bytes(what: &str, arg: &OsStr) -> anyhow::Result<Vec<u8>> {
    match arg.to_str() {
        Some(s) => Ok(s.as_bytes().to_vec()),
        None => bail!("{what} is not valid Unicode; pass it with --hex"),
    }
}

/// Decodes hex digits (either case), naming the first bad character and its position.
fn decode_hex(what: &str, digits: &[u8]) -> anyhow::Result<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if let Some(position) = digits.iter().position(|&c| nibble(c).is_none()) {
        let c = digits[position];
        let shown = if c.is_ascii_graphic() {
            format!("'{}'", char::from(c))
        } else {
            format!("byte 0x{c:02x}")
        };
        bail!("invalid hex in {what}: {shown} at position {position} is not a hex digit");
    }
    if !digits.len().is_multiple_of(2) {
        bail!(
            "invalid hex in {what}: odd number of hex digits ({})",
            digits.len()
        );
    }
    Ok(digits
        .chunks_exact(2)
        .map(|pair| {
            let hi = nibble(pair[0]).unwrap_or(0);
            let lo = nibble(pair[1]).unwrap_or(0);
            hi << 4 | lo
        })
        .collect())
}

fn parse_namespace(name: &str) -> anyhow::Result<Uuid> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "dns" => key::NAMESPACE_DNS,
        "url" => key::NAMESPACE_URL,
        "oid" => key::NAMESPACE_OID,
        "x500" => key::NAMESPACE_X500,
        "anthropic" => key::NAMESPACE_ANTHROPIC,
        other => Uuid::parse_str(other).map_err(|_| {
            anyhow::anyhow!(
                "unknown namespace {name:?}: expected dns, url, oid, x500, anthropic or a UUID"
            )
        })?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_errors_name_the_character() {
        assert_eq!(decode_hex("TEXT", b"00ff").unwrap(), [0, 255]);
        assert_eq!(decode_hex("TEXT", b"").unwrap(), Vec::<u8>::new());
        assert_eq!(decode_hex("TEXT", b"ABcd").unwrap(), [0xab, 0xcd]);
        let err = decode_hex("TEXT", b"00fg").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid hex in TEXT: 'g' at position 3 is not a hex digit"
        );
        let err = decode_hex("PART 2", b"0 1").unwrap_err().to_string();
        assert!(err.contains("byte 0x20 at position 1"), "{err}");
        let err = decode_hex("TEXT", b"abc").unwrap_err().to_string();
        assert_eq!(err, "invalid hex in TEXT: odd number of hex digits (3)");
    }

    #[test]
    fn namespaces() {
        assert_eq!(parse_namespace("DNS").unwrap(), key::NAMESPACE_DNS);
        assert_eq!(parse_namespace("anthropic").unwrap(), key::NAMESPACE_DNS);
        assert_eq!(
            parse_namespace("6ba7b811-9dad-11d1-80b4-00c04fd430c8").unwrap(),
            key::NAMESPACE_URL
        );
        let err = parse_namespace("isbn").unwrap_err().to_string();
        assert!(err.contains("unknown namespace \"isbn\""), "{err}");
    }
}
