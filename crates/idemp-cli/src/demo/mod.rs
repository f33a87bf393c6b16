//! `idemp demo`: a self-contained retry storm, with and without idemp.
//!
//! ```text
//! agents ──▶ flaky network ──▶ idemp serve (SQLite) ──▶ fake API   (through idemp)
//! agents ──▶ flaky network ─────────────────────────▶ fake API   (direct, random keys)
//! ```
//!
//! Everything runs in-process on loopback ports: a fake API ([`api`]) that is slow,
//! sometimes refuses with 429/529 before executing, and counts every execution per
//! logical request; a flaky network ([`network`]) that loses some answers **after**
//! the API executed; the proxy (`serve::start`) on a temporary SQLite store; and
//! agents ([`agents`]) that retry. One seed ([`faults`]) fixes the storm, so both runs
//! meet the same faults. The command prints a table (or `--json`) and exits non-zero
//! unless every logical request ran exactly once through idemp and every agent got its
//! result, so it doubles as a smoke test.

mod agents;
mod api;
mod faults;
mod network;
mod report;

use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::net::TcpListener;

use crate::serve::{self, ServeConfig};
use agents::Mode;
use api::FakeApi;
use faults::Faults;
use network::FlakyNetwork;
use report::{DemoReport, ModeReport};

/// Arguments of `idemp demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Concurrent agents [default: 16; 8 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub agents: Option<u32>,
    /// Logical calls per agent (every third is a card charge) [default: 150; 12 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub requests: Option<u32>,
    /// Seed of the storm: the same seed meets the same faults.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// A short run (for tests and CI).
    #[arg(long)]
    pub quick: bool,
    /// Print the results as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The proxy's store (memory:, sqlite://PATH, redis://…, postgres://…), to smoke-test
    /// one [default: a temporary SQLite file]. Keys are scoped to the run; records
    /// expire after 10 minutes.
    #[arg(long)]
    pub store: Option<String>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The id of a logical request: its route and the hash of its body (an agent sends
/// the same bytes on every attempt of one call).
fn logical_id(path: &str, body: &[u8]) -> String {
    format!("{path}#{}", idemp::key::sha256_hex(body))
}

/// Serves HTTP/1 on `listener` with `handler` until the task is aborted. An error
/// from `handler` closes the connection without an answer.
async fn serve_http<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors and the like: back off, keep serving.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(handler);
            // Errors here are the demo's own resets, or clients going away.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Runs `idemp demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let agents = args.agents.unwrap_or(if args.quick { 8 } else { 16 });
    let requests = args.requests.unwrap_or(if args.quick { 12 } else { 150 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let report = runtime.block_on(async {
        tokio::select! {
            report = storm(agents as usize, requests as usize, args.seed, args.store) => report,
            // Dropping the storm removes its temporary store.
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    })?;
    // The agents' connections and the servers' tasks end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if let Some(problem) = report.idemp.problem() {
        anyhow::bail!("the run through idemp was not exactly once: {problem}");
    }
    Ok(())
}

async fn storm(
    agents: usize,
    requests: usize,
    seed: u64,
    store: Option<String>,
) -> anyhow::Result<DemoReport> {
    let faults = Faults::new(seed);
    let dir = tempfile::Builder::new()
        .prefix("idemp-demo-")
        .tempdir()
        .context("cannot create a temporary directory for the demo's store")?;
    let (store, store_name) = match store {
        Some(url) => {
            let name = idemp::store::url::mask_password(&url);
            (url, name)
        }
        None => (
            format!("sqlite://{}", dir.path().join("demo.db").display()),
            "sqlite (temporary file)".to_owned(),
        ),
    };
    // Keys are derived from the content, so a second run on a persistent store would
    // replay the first run's answers: scope this run's keys to it.
    let run_id = idemp::Key::random()
        .as_str()
        .chars()
        .rev()
        .take(8)
        .collect::<String>();
    let visible = std::io::stderr().is_terminal();
    let total = (agents * requests) as u64;

    let mut modes = Vec::new();
    for mode in [Mode::Idemp, Mode::Direct] {
        let bar = progress_bar(total, mode, visible);
        let work = agents::workload(agents, requests);
        let report = run_mode(mode, faults, work, &store, &run_id, bar.clone()).await?;
        bar.finish();
        modes.push(report);
    }
    let direct = modes.pop().context("the direct run is missing")?;
    let idemp = modes.pop().context("the idemp run is missing")?;
    Ok(DemoReport {
        seed,
        agents,
        requests_per_agent: requests,
        store: store_name,
        ok: idemp.problem().is_none(),
        idemp,
        direct,
    })
}

async fn run_mode(
    mode: Mode,
    faults: Faults,
    work: Vec<Vec<agents::Call>>,
    store: &str,
    run_id: &str,
    bar: ProgressBar,
) -> anyhow::Result<ModeReport> {
    let api = FakeApi::start(faults)
        .await
        .context("cannot start the fake API")?;
    let proxy = match mode {
        Mode::Idemp => Some(start_proxy(api.addr, store).await?),
        Mode::Direct => None,
    };
    let target = proxy.as_ref().map_or(api.addr, |p| p.listen_addr);
    let net = FlakyNetwork::start(target, faults)
        .await
        .context("cannot start the demo network")?;

    let calls: Vec<agents::Call> = work.iter().flatten().cloned().collect();
    let started = Instant::now();
    let base = format!("http://{}", net.addr);
    let outcomes = agents::run(mode, base, run_id, work, bar).await?;
    let elapsed = started.elapsed();
    if let Some(proxy) = proxy {
        proxy.shutdown().await?;
    }
    let ledger = api.ledger();
    Ok(ModeReport::new(
        mode,
        &calls,
        &outcomes,
        &ledger,
        &net.counters,
        elapsed,
    ))
}

async fn start_proxy(upstream: SocketAddr, store: &str) -> anyhow::Result<serve::RunningProxy> {
    let mut config = ServeConfig::new(&format!("http://{upstream}"))?;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    config.listen = loopback;
    config.admin = Some(loopback);
    config.store = store.to_owned();
    config.upstream_timeout = Duration::from_secs(4);
    config.shutdown_timeout = Duration::from_secs(5);
    config.ttl = Duration::from_secs(600);
    serve::start(config)
        .await
        .context("cannot start the idemp proxy")
}

fn progress_bar(total: u64, mode: Mode, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>26} [{bar:32.cyan/blue}] {pos:>5}/{len} calls {elapsed:>3}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(match mode {
        Mode::Idemp => "through idemp",
        Mode::Direct => "direct, new key per retry",
    });
    bar
}
