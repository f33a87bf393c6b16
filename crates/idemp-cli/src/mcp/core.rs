//! The transport-independent part of the proxy: what to do with one `tools/call`
//! ([`Core::decide`]), and how to settle it with the server's answer
//! ([`Core::settle`]) or without one ([`Core::lost`]).
//!
//! Keys: `params._meta["dev.idemp/key"]` when the agent gives one; otherwise
//! `Key::builder("idemp/mcp/v1")` over the server's identity, the tool's name and the
//! RFC 8785 form of the arguments (absent arguments count as `{}`), in the record
//! scope `mcp:<scope>` (plus a keyed hash of the caller's credentials over HTTP). The
//! JSON-RPC id and `_meta` never enter a key. The fingerprint stored with the claim is
//! the SHA-256 of the tool's name and the python-compatible canonical form of the
//! arguments, which keeps integers exact: two calls whose arguments collide on the
//! RFC 8785 key (which reads numbers as doubles) but differ in an exact number get a
//! tool error, never the other's result.

use std::sync::Arc;

use idemp::cache::ToolCache;
use idemp::canon::{Canonicalizer, Format};
use idemp::guard::{Begin, Guard, GuardError, Lease, OnAmbiguous, OnDuplicate};
use idemp::http::scope::Scoper;
use idemp::store::{DynStore, Fingerprint};
use serde_json::value::RawValue;

use super::budget::Budget;
use super::config::{AmbiguousPolicy, McpConfig, ToolErrors};
use super::line::{self, ResultKind, ToolCall};
use super::metrics::Metrics;
use super::policy::{Policy, ToolTable};

/// The key-builder domain of derived keys.
const KEY_DOMAIN: &str = "idemp/mcp/v1";

/// What to do with a `tools/call`.
#[derive(Debug)]
pub enum Decision {
    /// Send it to the server, then settle the ticket with the answer.
    Forward(Ticket),
    /// Answer the client with this JSON-RPC response line (it carries the
    /// request's id); the server never sees the call.
    Answer(Vec<u8>),
}

/// A call on its way to the server.
#[derive(Debug)]
pub struct Ticket {
    policy: Policy,
    kind: TicketKind,
}

/// The answer of a cached read, for the callers that joined it (`Err`: not
/// cacheable, each of them forwards its own call).
type CacheFill = tokio::sync::oneshot::Sender<Result<Arc<str>, ()>>;

#[derive(Debug)]
enum TicketKind {
    Pass,
    Guard(Lease),
    Cache(CacheFill),
}

impl Ticket {
    /// Whether the server's answer must go through [`Core::settle`] (guarded and
    /// cached calls) before it reaches the client.
    pub fn needs_settle(&self) -> bool {
        !matches!(self.kind, TicketKind::Pass)
    }
}

/// The shared state of one proxy.
#[derive(Debug)]
pub struct Core {
    cfg: Arc<McpConfig>,
    store: DynStore,
    tools: ToolTable,
    cache: Option<ToolCache<Arc<str>>>,
    budget: Budget,
    metrics: Arc<Metrics>,
    scoper: Scoper,
    guard: Guard,
    jcs: Canonicalizer,
    python: Canonicalizer,
}

/// The record scope of calls in `scope`.
pub fn record_scope(scope: &str) -> String {
    format!("mcp:{scope}")
}

impl Core {
    /// The proxy's core over an opened store.
    pub fn new(cfg: Arc<McpConfig>, store: DynStore, metrics: Arc<Metrics>) -> Self {
        let cache = cfg
            .cache_reads
            .map(|ttl| ToolCache::builder().ttl(ttl).max_entries(10_000).build());
        let scoper = Scoper::new(
            idemp::http::scope::DEFAULT_SCOPE_SECRET,
            Arc::new(|_: &http::request::Parts| None),
            Arc::new(|_: &http::request::Parts| String::new()),
        );
        let guard = Self::guard(&cfg, store.clone(), record_scope(&cfg.scope));
        Self {
            tools: ToolTable::new(cfg.overrides(), cfg.cache_reads.is_some()),
            budget: Budget::new(store.clone(), cfg.ttl),
            cache,
            scoper,
            guard,
            jcs: Canonicalizer::new(Format::Jcs),
            python: Canonicalizer::new(Format::Python),
            store,
            metrics,
            cfg,
        }
    }

    fn guard(cfg: &McpConfig, store: DynStore, scope: String) -> Guard {
        Guard::builder(store)
            .scope(scope)
            .ttl(cfg.ttl)
            .lease(cfg.lease)
            .on_duplicate(OnDuplicate::Wait(cfg.wait))
            .on_ambiguous(match cfg.on_ambiguous {
                AmbiguousPolicy::Retake => OnAmbiguous::Retake,
                AmbiguousPolicy::Surface => OnAmbiguous::Surface,
            })
            .build()
    }

    /// The tool table (learned from `tools/list`).
    pub fn tools(&self) -> &ToolTable {
        &self.tools
    }

    /// Whether `tool` has a call budget.
    pub fn has_budget(&self, tool: &str) -> bool {
        self.cfg.budget_of(tool).is_some()
    }

    /// The store (timed).
    #[cfg(test)]
    pub fn store(&self) -> &DynStore {
        &self.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The scope of a caller: the configured one, plus a keyed hash of the caller's
    /// credentials when there are any (HTTP), so tenants never share records.
    pub fn scope_for(&self, principal: Option<&[u8]>) -> String {
        match principal {
            None => record_scope(&self.cfg.scope),
            Some(p) => {
                let tag = self.scoper.scope_of(Some(p), &self.cfg.scope);
                let hash = tag.strip_prefix("http:").unwrap_or(&tag);
                format!("{}@{hash}", record_scope(&self.cfg.scope))
            }
        }
    }

    /// The derived key of a call: see the [module docs](self).
    pub fn derived_key(&self, tool: &str, arguments: Option<&RawValue>) -> Result<String, String> {
        let mut canonical = Vec::with_capacity(arguments.map_or(2, |a| a.get().len()));
        match arguments {
            None => canonical.extend_from_slice(b"{}"),
            Some(a) => self
                .jcs
                .write(a.get(), &mut canonical)
                .map_err(|e| e.to_string())?,
        }
        Ok(idemp::Key::builder(KEY_DOMAIN)
            .part_str(&self.cfg.server_id)
            .part_str(tool)
            .part(&canonical)
            .build()
            .into_string())
    }

    /// The fingerprint of a call: its tool and its exact arguments.
    fn fingerprint(&self, tool: &str, arguments: Option<&RawValue>) -> Option<Fingerprint> {
        let mut buf = Vec::with_capacity(64 + arguments.map_or(2, |a| a.get().len()));
        buf.extend_from_slice(b"idemp/mcp/fp/v1\0");
        buf.extend_from_slice(tool.as_bytes());
        buf.push(0);
        match arguments {
            None => buf.extend_from_slice(b"{}"),
            Some(a) => self.python.write(a.get(), &mut buf).ok()?,
        }
        Some(Fingerprint::of(&buf))
    }

    /// Decides what to do with the `tools/call` `call` (request id `id`, raw JSON)
    /// from a caller with credentials `principal` (HTTP) or none (stdio).
    pub async fn decide(
        &self,
        id: &str,
        call: &ToolCall<'_>,
        principal: Option<&[u8]>,
    ) -> Decision {
        let tool = call.name.as_ref();
        let policy = self.tools.policy(tool);
        self.metrics.call(policy);
        let scope = self.scope_for(principal);
        match policy {
            Policy::Pass => {
                self.forward(
                    id,
                    &scope,
                    tool,
                    Ticket {
                        policy,
                        kind: TicketKind::Pass,
                    },
                )
                .await
            }
            Policy::Cache => self.decide_cached(id, call, &scope).await,
            Policy::Guard => self.decide_guarded(id, call, scope).await,
        }
    }

    /// Applies the budget, then forwards.
    async fn forward(&self, id: &str, scope: &str, tool: &str, ticket: Ticket) -> Decision {
        if let Some(limit) = self.cfg.budget_of(tool) {
            match self.budget.take(scope, tool, limit).await {
                Ok(true) => {}
                Ok(false) => {
                    self.metrics.budget_refusals.increment(1);
                    tracing::info!(tool, limit, scope, "budget spent: call refused");
                    if let TicketKind::Guard(lease) = ticket.kind {
                        let _ = lease.release().await;
                    }
                    return answer_tool_error(
                        id,
                        &format!(
                            "idemp: this call was not sent to the server: the tool `{tool}` may be called at most {limit} times in this scope (--max-calls-per-tool), and that budget is spent"
                        ),
                    );
                }
                Err(e) => {
                    self.metrics.refusal("store");
                    if let TicketKind::Guard(lease) = ticket.kind {
                        let _ = lease.release().await;
                    }
                    return answer_tool_error(
                        id,
                        &format!(
                            "idemp: this call was not sent to the server: the store that counts calls is unavailable ({e})"
                        ),
                    );
                }
            }
        }
        self.metrics.execution(ticket.policy);
        Decision::Forward(ticket)
    }

    async fn decide_cached(&self, id: &str, call: &ToolCall<'_>, scope: &str) -> Decision {
        let tool = call.name.as_ref();
        let key = match &call.key {
            Some(Ok(k)) => Ok(k.clone()),
            _ => self.derived_key(tool, call.arguments),
        };
        let (Some(cache), Ok(key)) = (&self.cache, key) else {
            let ticket = Ticket {
                policy: Policy::Cache,
                kind: TicketKind::Pass,
            };
            return self.forward(id, scope, tool, ticket).await;
        };
        let key = format!("{scope}\0{key}");
        if let Some(result) = cache.get(&key).await {
            self.metrics.cache_hits.increment(1);
            return Decision::Answer(line::response_line(id, &result));
        }
        // A miss: load through the cache's singleflight, so that identical reads
        // arriving together reach the server once. The load asks this call to
        // forward, and waits for the answer (see `settle`).
        let (ask_tx, ask_rx) = tokio::sync::oneshot::channel::<CacheFill>();
        let loader = cache.clone();
        let load = tokio::spawn(async move {
            loader
                .get_or_call_key(key, || async move {
                    let (fill_tx, fill_rx) = tokio::sync::oneshot::channel();
                    ask_tx.send(fill_tx).map_err(|_| ())?;
                    fill_rx.await.map_err(|_| ())?
                })
                .await
        });
        match ask_rx.await {
            Ok(fill) => {
                let ticket = Ticket {
                    policy: Policy::Cache,
                    kind: TicketKind::Cache(fill),
                };
                self.forward(id, scope, tool, ticket).await
            }
            // Another identical read was loading: its answer, or (if it was not
            // cacheable) this call goes to the server itself.
            Err(_) => match load.await {
                Ok(Ok(result)) => {
                    self.metrics.cache_hits.increment(1);
                    Decision::Answer(line::response_line(id, &result))
                }
                _ => {
                    let ticket = Ticket {
                        policy: Policy::Cache,
                        kind: TicketKind::Pass,
                    };
                    self.forward(id, scope, tool, ticket).await
                }
            },
        }
    }

    async fn decide_guarded(&self, id: &str, call: &ToolCall<'_>, scope: String) -> Decision {
        let tool = call.name.as_ref();
        let key = match &call.key {
            Some(Ok(k)) => match idemp::key::validate(k) {
                Ok(()) => k.clone(),
                Err(e) => {
                    self.metrics.refusal("invalid_key");
                    return Decision::Answer(line::error_line(
                        id,
                        -32602,
                        &format!("invalid params._meta[\"{}\"]: {e}", line::KEY_META),
                    ));
                }
            },
            Some(Err(raw)) => {
                self.metrics.refusal("invalid_key");
                return Decision::Answer(line::error_line(
                    id,
                    -32602,
                    &format!(
                        "invalid params._meta[\"{}\"]: expected a string, got {raw}",
                        line::KEY_META
                    ),
                ));
            }
            None => match self.derived_key(tool, call.arguments) {
                Ok(k) => k,
                Err(e) => {
                    self.metrics.refusal("invalid_key");
                    return Decision::Answer(line::error_line(
                        id,
                        -32602,
                        &format!(
                            "idemp cannot derive an idempotency key: the arguments have no RFC 8785 form ({e}); give one in params._meta[\"{}\"]",
                            line::KEY_META
                        ),
                    ));
                }
            },
        };
        let fingerprint = self.fingerprint(tool, call.arguments);
        let guard = if scope == *self.guard.scope() {
            self.guard.clone()
        } else {
            Self::guard(&self.cfg, self.store.clone(), scope.clone())
        };
        match guard.begin(&key, fingerprint).await {
            Ok(Begin::Owner(lease)) => {
                if lease.takeover().is_some() {
                    tracing::info!(
                        tool,
                        key,
                        attempt = lease.attempt(),
                        "retaking a call left running by a stopped proxy"
                    );
                }
                let ticket = Ticket {
                    policy: Policy::Guard,
                    kind: TicketKind::Guard(lease),
                };
                self.forward(id, &scope, tool, ticket).await
            }
            Ok(Begin::Completed(replay)) => {
                if replay.info().waited {
                    self.metrics.waits.increment(1);
                }
                match replay.bytes().map(String::from_utf8) {
                    Ok(Ok(result)) => {
                        self.metrics.replays.increment(1);
                        tracing::debug!(tool, key, "replayed");
                        Decision::Answer(line::response_line(id, &result))
                    }
                    _ => {
                        self.metrics.refusal("store");
                        answer_tool_error(
                            id,
                            &format!(
                                "idemp: this call ran before, but its stored result (key {key}) cannot be read; it was not run again"
                            ),
                        )
                    }
                }
            }
            Ok(Begin::InProgress { retry_after, .. }) => {
                self.metrics.refusal("in_progress");
                answer_tool_error(
                    id,
                    &format!(
                        "idemp: an identical call (key {key}) is still running; it was not run twice. Retry in {}s to get its result.",
                        retry_after.as_secs().max(1)
                    ),
                )
            }
            Ok(Begin::Ambiguous(record)) => {
                self.metrics.refusal("ambiguous");
                answer_tool_error(
                    id,
                    &format!(
                        "idemp: an earlier attempt of this call (key {key}, attempt {}) may have run: the proxy that sent it stopped before the server answered. It was not run again. Check whether it took effect; `idemp records purge {key} --scope '{}'` lets it run again.",
                        record.attempts, record.id.scope
                    ),
                )
            }
            Ok(Begin::Failed(failure)) => {
                self.metrics.refusal("store");
                answer_tool_error(
                    id,
                    &format!("idemp: an earlier attempt of this call failed: {failure}"),
                )
            }
            Err(GuardError::Mismatch { .. }) => {
                self.metrics.refusal("mismatch");
                answer_tool_error(
                    id,
                    &format!(
                        "idemp: the key {key} was used before for a call with different arguments (or another tool); this call was not run and the other's result is not returned. Use another key."
                    ),
                )
            }
            Err(GuardError::InvalidKey(e)) => {
                self.metrics.refusal("invalid_key");
                Decision::Answer(line::error_line(
                    id,
                    -32602,
                    &format!("invalid idempotency key: {e}"),
                ))
            }
            Err(e) => {
                self.metrics.refusal("store");
                tracing::warn!(tool, key, error = %e, "store error: call refused (fail closed)");
                answer_tool_error(
                    id,
                    &format!("idemp: this call was not sent to the server: {e}"),
                )
            }
        }
    }

    /// Settles a forwarded call with the server's answer (`result` or `error`, raw
    /// JSON), before the answer goes to the client.
    pub async fn settle(
        &self,
        ticket: Ticket,
        result: Option<&RawValue>,
        error: Option<&RawValue>,
    ) {
        match ticket.kind {
            TicketKind::Pass => {}
            TicketKind::Cache(fill) => {
                // Only complete, successful results are cached (the cache stores
                // what the load returns); the callers that joined get it too.
                let value = match result {
                    Some(r) if line::result_kind(r) == ResultKind::Complete => {
                        Ok(Arc::from(r.get()))
                    }
                    _ => Err(()),
                };
                let _ = fill.send(value);
            }
            TicketKind::Guard(lease) => {
                let id = lease.id().clone();
                let settled = match (result, error) {
                    (Some(result), _) => match line::result_kind(result) {
                        ResultKind::Complete => {
                            lease.complete_raw(result.get().as_bytes().to_vec()).await
                        }
                        ResultKind::ToolError if self.cfg.tool_errors == ToolErrors::Store => {
                            lease.complete_raw(result.get().as_bytes().to_vec()).await
                        }
                        ResultKind::ToolError | ResultKind::Interim => lease.release().await,
                    },
                    // A JSON-RPC error: the call was refused, not run; never stored.
                    _ => lease.release().await,
                };
                if let Err(e) = settled {
                    tracing::warn!(%id, error = %e, "could not settle the call; it stays in progress until its lease passes");
                }
            }
        }
    }

    /// A forwarded call whose answer will never come (the server exited, the
    /// connection was lost, or the client cancelled and the server stayed silent).
    /// A guarded call may have run: it is left to become ambiguous after its lease.
    /// Returns the tool error to answer the client with.
    pub fn lost(&self, ticket: Ticket, id: &str, why: &str) -> Vec<u8> {
        if let TicketKind::Guard(lease) = ticket.kind {
            self.metrics.ambiguous.increment(1);
            tracing::warn!(id = %lease.id(), why, "answer lost: the call may have run; kept as ambiguous");
            lease.abandon();
            return tool_error_line(
                id,
                &format!(
                    "idemp: no answer from the server ({why}); the call may have run. Once its lease passes, a retry is answered as --on-ambiguous says (surface: not run again; retake: run again)."
                ),
            );
        }
        tool_error_line(id, &format!("idemp: no answer from the server ({why})"))
    }

    /// Learns the tools of a `tools/list` result.
    pub fn learn_tools(&self, result: &RawValue) {
        self.tools.learn(super::policy::parse_tools_list(result));
    }
}

fn tool_error_line(id: &str, text: &str) -> Vec<u8> {
    line::response_line(id, &line::tool_error_result(text))
}

fn answer_tool_error(id: &str, text: &str) -> Decision {
    Decision::Answer(tool_error_line(id, text))
}
