//! `idemp serve`: the idempotency sidecar proxy.
//!
//! ```text
//! client ──▶ server (limits) ──▶ path normal form ──▶ access log ──▶ IdempotencyLayer ──▶ Forward ──▶ upstream
//!                                                                        │ store (claim / complete / release)
//! admin listener: /healthz, /metrics            sweeper: removes expired records every --sweep-interval
//! ```
//!
//! * [`server`]: the accept loop, the connection limits and the shutdown;
//! * [`forward`]: the upstream hop (HTTP/1.1, or HTTPS with HTTP/2 or HTTP/1.1 by
//!   ALPN through [`tls`]) and how its failures are reported;
//! * `config`: flags, environment and TOML, validated at start.
//!
//! [`start`] runs it in-process and returns the bound addresses and a handle
//! ([`RunningProxy`]) for a graceful shutdown; [`run`] is the command: it starts the
//! proxy, prints where it listens, and shuts down gracefully on SIGTERM or SIGINT
//! (in-flight requests finish and settle their records).
//!
//! Logging: one line per request at info (target `idemp::access`) on stderr, text or
//! JSON (`--log-format`); the filter is `IDEMP_LOG` (tracing-subscriber syntax,
//! default `info`). `IDEMP_WORKER_THREADS` sets the runtime's worker threads
//! (default: one per core).

pub mod admin;
mod config;
pub mod forward;
pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use http::{Request, Response};
use idemp::http::{Disposition, IdempotencyLayer, InFlight};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::{Layer, ServiceExt};

pub use admin::Metrics;
pub use config::{
    DurationValue, Limits, LogFormat, PathsValue, ServeArgs, ServeConfig, SizeValue, duration_of,
    parse_addr, parse_duration, parse_size, parse_upstream, paths_of, read_toml, size_of,
};
pub use forward::{ClientAddr, Forward, ForwardOptions};

/// A proxy started by [`start`].
///
/// This is the in-process API that `idemp demo` builds on; parts of it are unused by
/// `idemp serve` itself.
#[allow(dead_code)]
#[derive(Debug)]
pub struct RunningProxy {
    /// Where the proxy listens.
    pub listen_addr: SocketAddr,
    /// Where `/healthz` and `/metrics` are served, if anywhere.
    pub admin_addr: Option<SocketAddr>,
    /// The proxy's metrics.
    pub metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    in_flight: InFlight,
}

#[allow(dead_code)]
impl RunningProxy {
    /// How many claimed requests are still running (spawned handler tasks).
    pub fn in_flight(&self) -> usize {
        self.in_flight.count()
    }

    /// Stops accepting, lets in-flight requests finish and settle their records
    /// (up to the configured shutdown timeout), then returns.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await.context("the proxy task failed")
    }

    /// Waits until the proxy stops (after [`shutdown`](Self::shutdown) from another
    /// handle is impossible: use this only with a signal-driven stop).
    async fn stopped(self) -> anyhow::Result<()> {
        self.task.await.context("the proxy task failed")
    }
}

/// Starts the proxy in the current tokio runtime: opens the store, binds the
/// listeners (port 0 picks free ports) and serves until [`RunningProxy::shutdown`].
pub async fn start(config: ServeConfig) -> anyhow::Result<RunningProxy> {
    config.validate()?;
    let (store, memory) = match &config.store_instance {
        Some(s) => (s.clone(), None),
        None => open_store(&config.store)
            .await
            .with_context(|| format!("cannot open the store {}", mask(&config.store)))?,
    };
    let mut metrics = Metrics::new()?;
    if let Some(memory) = memory {
        tracing::info!(
            max_entries = memory.max_entries(),
            "memory store: bounded; the settled records that expire first are evicted when full"
        );
        metrics.observe_memory_store(memory);
    }
    let metrics = Arc::new(metrics);
    let mut builder = IdempotencyLayer::builder(store.clone())
        .methods(config.methods.clone())
        .require_key(config.require_key)
        .derive_key(config.derive_key)
        .fail_open(config.fail_open)
        .ttl(config.ttl)
        .lease(config.lease)
        .wait(config.wait)
        .max_body(config.max_body)
        .observer(metrics.clone());
    builder = config.layer_builder(builder);
    if let Some(secret) = &config.scope_secret {
        builder = builder.scope_secret(secret);
    }
    let layer = builder.build();
    let in_flight = layer.in_flight();
    let forward = Forward::new(&ForwardOptions {
        upstream: config.upstream.clone(),
        timeout: config.upstream_timeout,
        idle_timeout: config.upstream_idle_timeout,
        tls: config.upstream_tls.clone(),
    })?;
    let service = layer.layer(forward);

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let listen_addr = listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(false);

    let admin_addr = match config.admin {
        Some(addr) => {
            let admin = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on --admin {addr}"))?;
            let bound = admin.local_addr()?;
            let render = {
                let metrics = metrics.clone();
                move || metrics.render()
            };
            let mut stop = stop_rx.clone();
            tokio::spawn(admin::serve(admin, store.clone(), render, async move {
                let _ = stop.changed().await;
            }));
            Some(bound)
        }
        None => None,
    };
    // Prometheus histograms need periodic upkeep.
    {
        let metrics = metrics.clone();
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => { let _ = metrics.render(); }
                    _ = stop_rx.changed() => return,
                }
            }
        });
    }

    // Expired records leave the store (memory, SQLite, Postgres keep them otherwise).
    let sweeper = {
        let metrics = metrics.clone();
        idemp::store::Sweeper::builder(store.clone())
            .interval(config.sweep_interval)
            .on_sweep(move |removed| metrics.swept(removed))
            .spawn()
    };
    let task = tokio::spawn(serve_until_stopped(
        listener,
        service,
        metrics.clone(),
        stop_rx,
        Settling {
            in_flight: in_flight.clone(),
            sweeper,
        },
        config.limits,
        config.shutdown_timeout,
    ));
    tracing::info!(
        listen = %listen_addr,
        admin = %admin::describe(admin_addr),
        upstream = %config.upstream,
        store = %mask(&config.store),
        "idemp serve started"
    );
    Ok(RunningProxy {
        listen_addr,
        admin_addr,
        metrics,
        stop,
        task,
        in_flight,
    })
}

/// Opens the store of `--store`; a memory store is also returned as itself, for its
/// gauges in `/metrics`.
async fn open_store(
    url: &str,
) -> anyhow::Result<(
    idemp::store::DynStore,
    Option<Arc<idemp::store::MemoryStore>>,
)> {
    let parsed: idemp::store::StoreUrl = url.parse()?;
    if let idemp::store::StoreUrl::Memory { max_entries } = parsed {
        let memory = Arc::new(
            idemp::store::MemoryStore::builder()
                .max_entries(max_entries.unwrap_or(idemp::store::memory::DEFAULT_URL_MAX_ENTRIES))
                .build(),
        );
        return Ok((memory.clone(), Some(memory)));
    }
    Ok((idemp::store::open_parsed(&parsed).await?, None))
}

fn mask(url: &str) -> String {
    idemp::store::url::mask_password(url)
}

type Stack = idemp::http::Idempotency<Forward>;

/// What is waited for, then stopped, once the server has stopped.
struct Settling {
    /// The layer's handler tasks (they settle records).
    in_flight: InFlight,
    /// The sweeper of expired records.
    sweeper: idemp::store::Sweeper,
}

/// Serves until `stop`, then lets requests in progress finish and their handler tasks
/// settle their records, all within `grace`.
async fn serve_until_stopped(
    listener: TcpListener,
    service: Stack,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
    settling: Settling,
    limits: Limits,
    grace: Duration,
) {
    let Settling { in_flight, sweeper } = settling;
    let deadline = Instant::now() + grace;
    let handler = move |req, peer| handle(service.clone(), metrics.clone(), peer, req);
    server::run(listener, handler, limits, stop, grace).await;
    let left = deadline.saturating_duration_since(Instant::now());
    if tokio::time::timeout(left, in_flight.drained())
        .await
        .is_err()
    {
        // Still running: their handlers may have run. Settle them as ambiguous now
        // (under --on-ambiguous) rather than leave them to their lease.
        tracing::warn!(
            running = in_flight.count(),
            "requests still running after the shutdown timeout; settling them as ambiguous"
        );
        in_flight.abandon();
        let _ = tokio::time::timeout(Duration::from_secs(5), in_flight.drained()).await;
    }
    let swept = sweeper.stop().await;
    tracing::info!(swept = swept.removed, "stopped");
}

type ProxyBody = http_body_util::Either<
    idemp::http::ResponseBody<forward::ForwardBody>,
    http_body_util::Full<bytes::Bytes>,
>;

async fn handle(
    service: Stack,
    metrics: Arc<Metrics>,
    peer: SocketAddr,
    mut req: Request<server::TimedBody>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let method = req.method().clone();
    // One spelling of each path before the layer keys it and the forwarder sends
    // it; a path that climbs out of the upstream's base path is refused here.
    match forward::normalize_request_uri(req.uri()) {
        Ok(Some(uri)) => *req.uri_mut() = uri,
        Ok(None) => {}
        Err(e) => {
            let res = forward::invalid_path_response(&e);
            metrics.request(None, res.status());
            tracing::info!(
                target: "idemp::access",
                client = %peer.ip(),
                %method,
                path = req.uri().path(),
                status = res.status().as_u16(),
                disposition = "invalid_path",
                micros = start.elapsed().as_micros() as u64,
                "request"
            );
            return res.map(|b| http_body_util::Either::Right(http_body_util::Full::new(b)));
        }
    }
    let path = req.uri().path().to_owned();
    req.extensions_mut().insert(ClientAddr(peer));
    let res = match service.oneshot(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    };
    let disposition = res.extensions().get::<Disposition>().copied();
    metrics.request(disposition, res.status());
    tracing::info!(
        target: "idemp::access",
        client = %peer.ip(),
        %method,
        path,
        status = res.status().as_u16(),
        disposition = disposition_name(disposition),
        micros = start.elapsed().as_micros() as u64,
        "request"
    );
    res.map(http_body_util::Either::Left)
}

fn disposition_name(d: Option<Disposition>) -> &'static str {
    match d {
        Some(Disposition::PassedThrough) | None => "passed_through",
        Some(Disposition::Executed { takeover: true, .. }) => "executed_takeover",
        Some(Disposition::Executed { stored: true, .. }) => "executed",
        Some(Disposition::Executed { .. }) => "executed_not_stored",
        Some(Disposition::Replayed) => "replayed",
        Some(Disposition::Joined) => "joined",
        Some(Disposition::Refused(kind)) => kind.slug(),
        Some(Disposition::FailedOpen) => "failed_open",
        Some(_) => "other",
    }
}

/// Logs of the long-running commands (`serve`, `mcp`): on stderr only (stdout is
/// the one "listening" line, or the MCP protocol itself), filtered by `IDEMP_LOG`
/// (default `info`), text (colours only on a terminal) or JSON lines.
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("IDEMP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

/// Runs `idemp serve` until SIGTERM or SIGINT.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServeConfig::resolve(args)?;
    init_logging(config.log_format);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("IDEMP_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        runtime.worker_threads(n);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let proxy = start(config).await?;
        // The one line a script (or a test) waits for.
        println!(
            "idemp serve listening on http://{} admin {}",
            proxy.listen_addr,
            admin::describe(proxy.admin_addr)
        );
        let stop = proxy.stop.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("signal received");
            let _ = stop.send(true);
        });
        proxy.stopped().await
    })
}

/// Completes on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
