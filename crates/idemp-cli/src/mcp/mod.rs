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
//! ([`budget`]). `/healthz` and `/metrics` are served on `--admin` by the admin
//! listener of `idemp serve` with this proxy's own metrics ([`metrics`]), expired
//! records are removed by the store's [`Sweeper`](idemp::store::Sweeper), and an
//! `https://` server is reached through the TLS connector of `idemp serve`
//! (`--upstream-ca`, `--upstream-roots`).
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

use crate::serve::{admin, init_logging};

/// Opens the store and builds the proxy's core, admin listener and sweeper (which
/// stops when the returned handle is stopped or dropped).
async fn start(cfg: Arc<McpConfig>) -> anyhow::Result<(Arc<core::Core>, idemp::store::Sweeper)> {
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
        let render = {
            let metrics = metrics.clone();
            move || metrics.render()
        };
        // Runs as long as the process: the proxy has no other way to stop it.
        tokio::spawn(admin::serve(
            listener,
            store.clone(),
            render,
            std::future::pending(),
        ));
        tracing::info!(admin = %admin::describe(Some(bound)), "admin listener");
    }
    let sweeper = {
        let metrics = metrics.clone();
        idemp::store::Sweeper::builder(store.clone())
            .interval(cfg.sweep_interval)
            .on_sweep(move |removed| metrics.swept.increment(removed))
            .spawn()
    };
    Ok((Arc::new(core::Core::new(cfg, store, metrics)), sweeper))
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
                let (core, sweeper) = start(cfg.clone()).await?;
                let code = stdio::run(core, &command, cfg.max_message).await;
                sweeper.stop().await;
                code
            })?;
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Transport::Http {
            upstream,
            listen,
            tls,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the tokio runtime")?;
            runtime.block_on(async {
                let (core, sweeper) = start(cfg.clone()).await?;
                let done = http::run(core, upstream, &tls, listen, cfg.max_message).await;
                sweeper.stop().await;
                done
            })
        }
    }
}
