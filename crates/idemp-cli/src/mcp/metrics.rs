//! Metrics of `idemp mcp`, served by the admin listener of `idemp serve`
//! ([`crate::serve::admin::serve`]: `/healthz`, Prometheus `/metrics`), off unless
//! `--admin ADDR` is given.
//!
//! | metric | labels |
//! |---|---|
//! | `idemp_mcp_calls_total` | `policy` (guard, pass, cache): every `tools/call` seen |
//! | `idemp_mcp_executions_total` | `policy`: calls that reached the server |
//! | `idemp_mcp_replays_total` | | guarded calls answered from the store |
//! | `idemp_mcp_cache_hits_total` | | read calls answered from the cache |
//! | `idemp_mcp_waits_total` | | duplicates that waited for the running call |
//! | `idemp_mcp_budget_refusals_total` | | calls refused by `--max-calls-per-tool` |
//! | `idemp_mcp_refusals_total` | `reason` (in_progress, ambiguous, mismatch, store, invalid_key) |
//! | `idemp_mcp_ambiguous_total` | | guarded calls whose answer was lost after they were sent |
//! | `idemp_mcp_messages_total` | `direction` (to_server, to_client) |
//! | `idemp_mcp_swept_total` | | expired records removed by the sweeper |
//! | `idemp_store_latency_seconds` (histogram) | `op`, `ok` |

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use idemp::clock::Millis;
use idemp::store::{
    Claim, ClaimOutcome, DynStore, ListQuery, Outcome, Page, Record, RecordKey, Stats, Store,
    StoreAdmin, StoreResult, Token,
};
use metrics::{Counter, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;

use super::policy::Policy;

const METADATA: Metadata<'static> = Metadata::new("idemp::mcp", metrics::Level::INFO, None);
const POLICIES: [Policy; 3] = [Policy::Guard, Policy::Pass, Policy::Cache];
/// Reasons a guarded call is answered with a tool error instead of running.
pub const REFUSALS: [&str; 5] = [
    "in_progress",
    "ambiguous",
    "mismatch",
    "store",
    "invalid_key",
];
const STORE_OPS: [&str; 9] = [
    "claim", "complete", "fail", "release", "renew", "get", "wait", "sweep", "other",
];

/// The counters of one proxy, in its own Prometheus recorder.
pub struct Metrics {
    handle: PrometheusHandle,
    calls: HashMap<Policy, Counter>,
    executions: HashMap<Policy, Counter>,
    refusals: HashMap<&'static str, Counter>,
    latency: HashMap<(&'static str, bool), Histogram>,
    /// Guarded calls answered from the store.
    pub replays: Counter,
    /// Read calls answered from the cache.
    pub cache_hits: Counter,
    /// Duplicates that waited for the running call.
    pub waits: Counter,
    /// Calls refused by the budget.
    pub budget_refusals: Counter,
    /// Guarded calls whose answer was lost after they were sent.
    pub ambiguous: Counter,
    /// Lines / messages relayed to the server.
    pub to_server: Counter,
    /// Lines / messages relayed to the client.
    pub to_client: Counter,
    /// Records removed by the sweeper.
    pub swept: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers every metric (they show as 0 before the first call).
    pub fn new() -> anyhow::Result<Self> {
        let recorder = crate::serve::admin::prometheus_recorder()?;
        let handle = recorder.handle();
        let counter = |name: &'static str, labels: Vec<Label>| {
            let c = recorder.register_counter(&Key::from_parts(name, labels), &METADATA);
            c.absolute(0);
            c
        };
        let by_policy = |name: &'static str| {
            POLICIES
                .iter()
                .map(|p| (*p, counter(name, vec![Label::new("policy", p.name())])))
                .collect::<HashMap<_, _>>()
        };
        let calls = by_policy("idemp_mcp_calls_total");
        let executions = by_policy("idemp_mcp_executions_total");
        let refusals = REFUSALS
            .iter()
            .map(|r| {
                (
                    *r,
                    counter("idemp_mcp_refusals_total", vec![Label::new("reason", *r)]),
                )
            })
            .collect();
        let mut latency = HashMap::new();
        for op in STORE_OPS {
            for ok in [true, false] {
                let key = Key::from_parts(
                    "idemp_store_latency_seconds",
                    vec![
                        Label::new("op", op),
                        Label::new("ok", if ok { "true" } else { "false" }),
                    ],
                );
                latency.insert((op, ok), recorder.register_histogram(&key, &METADATA));
            }
        }
        let direction =
            |d: &'static str| counter("idemp_mcp_messages_total", vec![Label::new("direction", d)]);
        Ok(Self {
            calls,
            executions,
            refusals,
            latency,
            replays: counter("idemp_mcp_replays_total", vec![]),
            cache_hits: counter("idemp_mcp_cache_hits_total", vec![]),
            waits: counter("idemp_mcp_waits_total", vec![]),
            budget_refusals: counter("idemp_mcp_budget_refusals_total", vec![]),
            ambiguous: counter("idemp_mcp_ambiguous_total", vec![]),
            to_server: direction("to_server"),
            to_client: direction("to_client"),
            swept: counter("idemp_mcp_swept_total", vec![]),
            handle,
        })
    }

    /// Counts a `tools/call` under its policy.
    pub fn call(&self, policy: Policy) {
        if let Some(c) = self.calls.get(&policy) {
            c.increment(1);
        }
    }

    /// Counts a call that reached the server.
    pub fn execution(&self, policy: Policy) {
        if let Some(c) = self.executions.get(&policy) {
            c.increment(1);
        }
    }

    /// Counts a refusal (one of [`REFUSALS`]).
    pub fn refusal(&self, reason: &'static str) {
        if let Some(c) = self.refusals.get(reason) {
            c.increment(1);
        }
    }

    fn store_latency(&self, op: &'static str, elapsed: Duration, ok: bool) {
        if let Some(h) = self.latency.get(&(op, ok)) {
            h.record(elapsed.as_secs_f64());
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// A store that records the latency of every operation into [`Metrics`].
#[derive(Debug, Clone)]
pub struct Timed {
    inner: DynStore,
    metrics: Arc<Metrics>,
}

impl Timed {
    /// Wraps `inner`.
    pub fn new(inner: DynStore, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    async fn time<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let start = Instant::now();
        let out = f.await;
        self.metrics.store_latency(op, start.elapsed(), out.is_ok());
        out
    }
}

#[async_trait]
impl Store for Timed {
    async fn claim(&self, claim: &Claim) -> StoreResult<ClaimOutcome> {
        self.time("claim", self.inner.claim(claim)).await
    }
    async fn complete(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.time("complete", self.inner.complete(id, token, outcome, ttl))
            .await
    }
    async fn fail(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.time("fail", self.inner.fail(id, token, outcome, ttl))
            .await
    }
    async fn release(&self, id: &RecordKey, token: Token) -> StoreResult<()> {
        self.time("release", self.inner.release(id, token)).await
    }
    async fn renew(&self, id: &RecordKey, token: Token, lease: Duration) -> StoreResult<Millis> {
        self.time("renew", self.inner.renew(id, token, lease)).await
    }
    async fn get(&self, id: &RecordKey) -> StoreResult<Option<Record>> {
        self.time("get", self.inner.get(id)).await
    }
    async fn wait(&self, id: &RecordKey, timeout: Duration) -> StoreResult<Option<Record>> {
        self.time("wait", self.inner.wait(id, timeout)).await
    }
}

#[async_trait]
impl StoreAdmin for Timed {
    async fn list(&self, query: &ListQuery) -> StoreResult<Page> {
        self.time("other", self.inner.list(query)).await
    }
    async fn purge(&self, id: &RecordKey) -> StoreResult<bool> {
        self.time("other", self.inner.purge(id)).await
    }
    async fn sweep(&self) -> StoreResult<u64> {
        self.time("sweep", self.inner.sweep()).await
    }
    async fn stats(&self) -> StoreResult<Stats> {
        self.time("other", self.inner.stats()).await
    }
}
