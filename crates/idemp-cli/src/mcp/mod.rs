//! `idemp mcp`: at-most-once tool calls for agents on the Model Context Protocol.
//!
//! A proxy between an agent (the MCP client) and an MCP server, over stdio (it
//! spawns the server: `idemp mcp -- COMMAND [ARGS…]`) or Streamable HTTP
//! (`idemp mcp --upstream URL [--listen ADDR]`). Everything is relayed untouched
//! except `tools/call`, which gets a policy per tool, learned from the annotations
//! the server gives in `tools/list` ([`policy`]) and overridable in the config:
//!
//! * read-only → passed through (or answered from a read cache with `--cache-reads`);
//! * idempotent → passed through;
//! * everything else, and tools not seen in `tools/list` yet → the at-most-once
//!   guard: one claim in the store per key ([`core`]), the result stored and replayed
//!   with the new request's id, duplicates that arrive while the call runs wait for
//!   it, and a call left running by a proxy that stopped is ambiguous after its lease
//!   (`--on-ambiguous retake|surface`).
//!
//! `--max-calls-per-tool N` is a loop guard per scope, counted in the store
//! ([`budget`]). `/healthz` and `/metrics` are served on `--admin` ([`metrics`]).
//!
//! ```text
//! agent ──▶ line / message classifier ──▶ Core::decide ──▶ server
//!                                          │ Guard::begin (claim / replay / wait)
//!                                          │ ToolCache (read-only tools)
//!                                          │ Budget (numbered slots in the store)
//! agent ◀── replay / tool error ◀──────────┘   server's answer ──▶ Core::settle ──▶ agent
//! ```

mod budget;
mod config;
mod core;
mod http;
pub mod line;
mod metrics;
mod pipe;
mod policy;
mod stdio;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use anyhow::Context;

pub use config::McpArgs;
use config::{McpConfig, Transport};

use crate::serve::LogFormat;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IDEMP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr only: on stdio, stdout is the protocol.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

/// Opens the store and builds the proxy's core, admin listener and sweeper.
async fn start(cfg: Arc<McpConfig>) -> anyhow::Result<Arc<core::Core>> {
    let store = idemp::store::open(&cfg.store).await.with_context(|| {
        format!(
            "cannot open the store {}",
            idemp::store::url::mask_password(&cfg.store)
        )
    })?;
    let metrics = Arc::new(metrics::Metrics::new()?);
    let store: idemp::store::DynStore = Arc::new(metrics::Timed::new(store, metrics.clone()));
    if let Some(addr) = cfg.admin {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --admin {addr}"))?;
        let bound = listener.local_addr()?;
        tokio::spawn(metrics::serve_admin(
            listener,
            store.clone(),
            metrics.clone(),
        ));
        tracing::info!(admin = %format!("http://{bound}"), "admin listener");
    }
    core::spawn_sweeper(store.clone(), cfg.sweep_interval, metrics.clone());
    Ok(Arc::new(core::Core::new(cfg, store, metrics)))
}

/// Runs `idemp mcp`. Over stdio the process exits with the server's exit code.
pub fn run(args: McpArgs) -> anyhow::Result<()> {
    let cfg = Arc::new(McpConfig::resolve(args)?);
    init_logging(cfg.log_format);
    match cfg.transport.clone() {
        Transport::Stdio { command } => {
            // One thread: the relay's hops stay on one core and never wait for a
            // wake-up from another (the store has its own threads).
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the tokio runtime")?;
            let code = runtime.block_on(async {
                let core = start(cfg.clone()).await?;
                stdio::run(core, &command, cfg.max_message).await
            })?;
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Transport::Http { upstream, listen } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the tokio runtime")?;
            runtime.block_on(async {
                let core = start(cfg.clone()).await?;
                http::run(core, upstream, listen, cfg.max_message).await
            })
        }
    }
}
