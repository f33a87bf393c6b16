//! `idemp`: the command-line interface of idemp.
//!
//! The surface of `idemp key`, `idemp canon`, `idemp hash`, `idemp serve`,
//! `idemp records`, `idemp mcp` and `idemp demo` is a contract (SPEC section 6): the value alone on
//! stdout followed by a newline; errors as one line on stderr and a non-zero exit.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod canon;
mod demo;
mod key;
mod mcp;
mod records;

use idemp_cli::serve;

/// Make retries safe: idempotency keys, canonical hashes, and an idempotency proxy.
#[derive(Debug, Parser)]
#[command(name = "idemp", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Deterministic idempotency keys (compatible with agentidemp).
    Key(key::KeyArgs),
    /// Print the canonical JSON form of a request.
    Canon(canon::CanonArgs),
    /// Print the SHA-256 (64 hex) of the canonical form of a request.
    Hash(canon::CanonArgs),
    /// Run the idempotency sidecar proxy in front of an upstream HTTP API.
    Serve(Box<serve::ServeArgs>),
    /// Inspect and manage stored records.
    Records(records::RecordsArgs),
    /// Relay an MCP server (stdio or Streamable HTTP) with at-most-once tool calls.
    Mcp(Box<mcp::McpArgs>),
    /// Run a self-contained retry storm against a flaky upstream, with and without idemp.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Key(args) => key::run(args),
        Command::Canon(args) => canon::run(args, canon::Output::Canonical),
        Command::Hash(args) => canon::run(args, canon::Output::Hash),
        Command::Serve(args) => serve::run(*args),
        Command::Records(args) => records::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Mcp(args) => mcp::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes joined by ": ".
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("idemp: {msg}");
            ExitCode::FAILURE
        }
    }
}
