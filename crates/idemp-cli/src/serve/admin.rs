//! The admin listener: `/healthz` and Prometheus `/metrics`.
//!
//! [`serve`] is the one admin listener of the long-running commands (`idemp serve`,
//! `idemp mcp --admin`): `/healthz` answers `ok` when a point read of the store
//! succeeds within 2 s (503 naming the error otherwise), `/metrics` answers what the
//! command's own recorder renders. Every recorder starts from [`prometheus_recorder`]
//! (the same buckets for `idemp_store_latency_seconds` everywhere).
//!
//! Metrics are recorded into a Prometheus recorder owned by this proxy (not the
//! process-global one), so several proxies can run in one process (`idemp demo`).
//!
//! The metrics of `idemp serve`:
//!
//! | metric | labels |
//! |---|---|
//! | `idemp_requests_total` | `disposition` (passed_through, executed, replayed, joined, refused, failed_open), `status` class |
//! | `idemp_events_total` | `event` (every [`Event`]: claimed, replayed, stored, released, ambiguous, ambiguous_refused, not_stored, not_stored_refused, joined, joiner_cut_off, truncated, client_gone, overloaded, …) |
//! | `idemp_claims_total`, `idemp_replays_total`, `idemp_conflicts_total`, `idemp_mismatches_total`, `idemp_takeovers_total`, `idemp_fenced_total` | |
//! | `idemp_store_latency_seconds` (histogram) | `op` (claim, complete, release, renew, wait), `ok` |
//! | `idemp_swept_records_total` | expired records removed by the sweeper |
//! | `idemp_store_entries` (gauge), `idemp_store_max_entries` (gauge), `idemp_store_evictions_total` | memory store only: records held (expired ones not yet removed included), its bound, settled records evicted to make room |

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use idemp::http::{Disposition, Event, Observer, StoreOp};
use idemp::store::{DynStore, MemoryStore, RecordKey};
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio::net::TcpListener;

const METADATA: Metadata<'static> = Metadata::new("idemp::serve", metrics::Level::INFO, None);

const DISPOSITIONS: [&str; 7] = [
    "passed_through",
    "executed",
    "replayed",
    "joined",
    "refused",
    "failed_open",
    "other",
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The proxy's metrics, recorded into its own Prometheus recorder.
pub struct Metrics {
    handle: PrometheusHandle,
    events: HashMap<Event, Vec<Counter>>,
    latency: HashMap<(StoreOp, bool), Histogram>,
    requests: HashMap<(&'static str, &'static str), Counter>,
    swept: Counter,
    /// The recorder, to register the memory store's metrics later.
    recorder: PrometheusRecorder,
    memory: Option<MemoryGauges>,
}

/// The metrics of a memory store, read from it at each render.
struct MemoryGauges {
    store: Arc<MemoryStore>,
    entries: Gauge,
    max_entries: Gauge,
    evictions: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The buckets of `idemp_store_latency_seconds` (seconds): 100 µs to 10 s.
pub const STORE_LATENCY_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// A recorder of its own (not the process-global one), with the store latency
/// histogram's buckets.
pub fn prometheus_recorder() -> anyhow::Result<PrometheusRecorder> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("idemp_store_latency_seconds".into()),
            &STORE_LATENCY_BUCKETS,
        )?
        .build_recorder())
}

impl Metrics {
    /// Registers every metric (so they show as 0 before the first request).
    pub fn new() -> anyhow::Result<Self> {
        let recorder = prometheus_recorder()?;
        let handle = recorder.handle();
        let mut events = HashMap::new();
        for e in Event::ALL {
            let mut counters = vec![recorder.register_counter(
                &Key::from_parts("idemp_events_total", vec![Label::new("event", e.name())]),
                &METADATA,
            )];
            let named = match e {
                Event::Claimed => Some("idemp_claims_total"),
                Event::Replayed => Some("idemp_replays_total"),
                Event::Conflict => Some("idemp_conflicts_total"),
                Event::Mismatch => Some("idemp_mismatches_total"),
                Event::TakenOver => Some("idemp_takeovers_total"),
                Event::Fenced => Some("idemp_fenced_total"),
                _ => None,
            };
            if let Some(name) = named {
                counters.push(recorder.register_counter(&Key::from_name(name), &METADATA));
            }
            for c in &counters {
                c.absolute(0);
            }
            events.insert(e, counters);
        }
        let mut latency = HashMap::new();
        for op in [
            StoreOp::Claim,
            StoreOp::Complete,
            StoreOp::Release,
            StoreOp::Renew,
            StoreOp::Wait,
        ] {
            for ok in [true, false] {
                let key = Key::from_parts(
                    "idemp_store_latency_seconds",
                    vec![
                        Label::new("op", op.name()),
                        Label::new("ok", if ok { "true" } else { "false" }),
                    ],
                );
                latency.insert((op, ok), recorder.register_histogram(&key, &METADATA));
            }
        }
        let mut requests = HashMap::new();
        for d in DISPOSITIONS {
            for class in STATUS_CLASSES {
                let key = Key::from_parts(
                    "idemp_requests_total",
                    vec![Label::new("disposition", d), Label::new("status", class)],
                );
                requests.insert((d, class), recorder.register_counter(&key, &METADATA));
            }
        }
        let swept =
            recorder.register_counter(&Key::from_name("idemp_swept_records_total"), &METADATA);
        swept.absolute(0);
        Ok(Self {
            handle,
            events,
            latency,
            requests,
            swept,
            recorder,
            memory: None,
        })
    }

    /// Shows the size of a memory store: `idemp_store_entries`,
    /// `idemp_store_max_entries` and `idemp_store_evictions_total`, read at each render.
    pub fn observe_memory_store(&mut self, store: Arc<MemoryStore>) {
        let gauge = |name: &'static str| {
            self.recorder
                .register_gauge(&Key::from_name(name), &METADATA)
        };
        let entries = gauge("idemp_store_entries");
        let max_entries = gauge("idemp_store_max_entries");
        let evictions = self
            .recorder
            .register_counter(&Key::from_name("idemp_store_evictions_total"), &METADATA);
        evictions.absolute(0);
        self.memory = Some(MemoryGauges {
            store,
            entries,
            max_entries,
            evictions,
        });
    }

    /// Counts one proxied request.
    pub fn request(&self, disposition: Option<Disposition>, status: StatusCode) {
        let d = match disposition {
            Some(Disposition::PassedThrough) | None => "passed_through",
            Some(Disposition::Executed { .. }) => "executed",
            Some(Disposition::Replayed) => "replayed",
            Some(Disposition::Joined) => "joined",
            Some(Disposition::Refused(_)) => "refused",
            Some(Disposition::FailedOpen) => "failed_open",
            Some(_) => "other",
        };
        let class = STATUS_CLASSES[usize::from(status.as_u16() / 100).clamp(1, 5) - 1];
        if let Some(c) = self.requests.get(&(d, class)) {
            c.increment(1);
        }
    }

    /// Counts records removed by the sweeper.
    pub fn swept(&self, removed: u64) {
        self.swept.increment(removed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        if let Some(m) = &self.memory {
            m.entries.set(m.store.entry_count() as f64);
            m.max_entries
                .set(m.store.max_entries().map_or(f64::INFINITY, |n| n as f64));
            m.evictions.absolute(m.store.evictions());
        }
        self.handle.run_upkeep();
        self.handle.render()
    }
}

impl Observer for Metrics {
    fn event(&self, event: Event) {
        if let Some(counters) = self.events.get(&event) {
            for c in counters {
                c.increment(1);
            }
        }
    }
    fn store_latency(&self, op: StoreOp, elapsed: Duration, ok: bool) {
        if let Some(h) = self.latency.get(&(op, ok)) {
            h.record(elapsed.as_secs_f64());
        }
    }
}

/// Serves `/healthz` (a point read of `store`) and `/metrics` (what `render`
/// returns: Prometheus text) on `listener` until `stop` completes.
pub async fn serve<R>(
    listener: TcpListener,
    store: DynStore,
    render: R,
    stop: impl Future<Output = ()>,
) where
    R: Fn() -> String + Send + Sync + 'static,
{
    let render = Arc::new(render);
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let store = store.clone();
                let render = render.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let store = store.clone();
                    let render = render.clone();
                    async move { Ok::<_, Infallible>(route(req, &store, &*render).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut stop => return,
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    res
}

async fn route(
    req: Request<Incoming>,
    store: &DynStore,
    render: &(dyn Fn() -> String + Send + Sync),
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => {
            // A point read: cheap on every store, and proves the store answers.
            let probe = RecordKey::new("idemp:health", "probe");
            match tokio::time::timeout(Duration::from_secs(2), store.get(&probe)).await {
                Ok(Ok(_)) => text(StatusCode::OK, "text/plain", "ok\n".into()),
                Ok(Err(e)) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("store unavailable: {e}\n"),
                ),
                Err(_) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "store unavailable: no answer within 2s\n".into(),
                ),
            }
        }
        "/metrics" => text(StatusCode::OK, "text/plain; version=0.0.4", render()),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz or /metrics\n".into(),
        ),
    }
}

/// Where the proxy listens, for logs.
pub fn describe(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "off".into(), |a| format!("http://{a}"))
}
