//! Tool effects: one wrapper that applies the right retry policy to a tool by what it
//! does.
//!
//! An agent's tools are not all alike. Repeating a read costs tokens; repeating a
//! payment costs money. Tag each tool with its [`Effect`] and call it through a
//! [`ToolRunner`], which applies:
//!
//! | effect | policy |
//! |---|---|
//! | [`Effect::Read`] | served from the [`ToolCache`] (LRU + TTL, singleflight) |
//! | [`Effect::Write`] | run under a [`Guard`] with a key derived from the session, the tool and its arguments: the same call twice runs once and replays |
//! | [`Effect::Idempotent`] | retried freely on retryable failures (repeating it is harmless) |
//! | [`Effect::Destructive`] | run under a guard with a key **the caller must give** (no key → [`ToolError::KeyRequired`]); reusing that key with other arguments is a mismatch |
//!
//! Arguments and results are JSON ([`serde_json::Value`]), so the runner fits any
//! agent framework's tool-call loop. Keys are scoped by a session (an agent run, a
//! conversation), so two sessions never share a result by accident.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use idemp::tool::{Effect, Tool, ToolFailure, ToolRunner};
//! use idemp::store::MemoryStore;
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), idemp::tool::ToolError> {
//! let charges = Arc::new(AtomicU32::new(0));
//! let c = charges.clone();
//! let runner = ToolRunner::builder(MemoryStore::new())
//!     .session("run-42")
//!     .tool(Tool::new("charge", Effect::Write, move |args| {
//!         let c = c.clone();
//!         async move {
//!             c.fetch_add(1, Ordering::SeqCst);
//!             Ok::<_, ToolFailure>(json!({"receipt": format!("r-{}", args["amount"])}))
//!         }
//!     }))
//!     .build();
//!
//! // The model calls the same tool twice with the same arguments: one charge.
//! let a = runner.call("charge", json!({"amount": 10, "customer": "c1"})).await?;
//! let b = runner.call("charge", json!({"customer": "c1", "amount": 10})).await?;
//! assert_eq!(a, b);
//! assert_eq!(charges.load(Ordering::SeqCst), 1);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::cache::ToolCache;
use crate::guard::{Guard, GuardError, OnDuplicate, ValueCodec};
use crate::retry::{Retrier, RetryPolicy, when_retryable};
use crate::store::{DynStore, Fingerprint, StoreAdmin};

/// What a tool does to the world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Reads only: safe to repeat, worth caching.
    Read,
    /// Changes something: must run at most once per distinct call.
    Write,
    /// Changes something, but repeating it has no further effect (PUT, set-to): safe
    /// to retry freely.
    Idempotent,
    /// Changes something irreversibly (delete, transfer): at most once, and only under
    /// a key the caller chose deliberately.
    Destructive,
}

impl Effect {
    /// The lowercase name: `read`, `write`, `idempotent`, `destructive`.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Read => "read",
            Effect::Write => "write",
            Effect::Idempotent => "idempotent",
            Effect::Destructive => "destructive",
        }
    }
    /// Whether a repeat of the call could repeat a side effect.
    pub fn needs_guard(self) -> bool {
        matches!(self, Effect::Write | Effect::Destructive)
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An effect name that is not one of `read`, `write`, `idempotent`, `destructive`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tool effect `{0}` (expected read, write, idempotent or destructive)")]
pub struct UnknownEffect(pub String);

impl FromStr for Effect {
    type Err = UnknownEffect;
    /// Case-insensitive, so the tags of `tool-side-effects-tag` (`READ`, `WRITE`,
    /// `IDEMPOTENT`, `DESTRUCTIVE`) parse too.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "read" => Ok(Effect::Read),
            "write" => Ok(Effect::Write),
            "idempotent" => Ok(Effect::Idempotent),
            "destructive" => Ok(Effect::Destructive),
            _ => Err(UnknownEffect(s.to_string())),
        }
    }
}

/// A tool's own failure, as data (it may be stored and replayed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ToolFailure {
    /// What went wrong.
    pub message: String,
    /// Whether trying again may succeed (used for [`Effect::Idempotent`] tools).
    #[serde(default)]
    pub retryable: bool,
    /// Details for the model or the caller.
    #[serde(default)]
    pub data: serde_json::Value,
}

impl ToolFailure {
    /// A permanent failure.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            data: serde_json::Value::Null,
        }
    }
    /// A transient failure (timeouts, 503s): [`Retryable`](crate::retry::Retryable).
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            ..Self::permanent(message)
        }
    }
}

impl crate::retry::Retryable for ToolFailure {
    fn is_retryable(&self) -> bool {
        self.retryable
    }
}

/// Errors of [`ToolRunner::call`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// No tool of that name is registered.
    #[error("unknown tool `{0}`")]
    UnknownTool(String),
    /// A destructive tool was called without a key.
    #[error("tool `{tool}` is destructive: call it with an idempotency key")]
    KeyRequired {
        /// The tool.
        tool: String,
    },
    /// The tool itself failed (after retries, for idempotent tools).
    #[error("tool `{tool}` failed: {failure}")]
    Failed {
        /// The tool.
        tool: String,
        /// Its failure.
        failure: ToolFailure,
        /// Attempts made.
        attempts: u32,
    },
    /// The guard refused or could not run the call (in progress elsewhere, a payload
    /// mismatch, an ambiguous earlier attempt, the store unreachable…).
    #[error("tool `{tool}`: {source}")]
    Guard {
        /// The tool.
        tool: String,
        /// The guard's error (boxed: it is large and rare).
        #[source]
        source: Box<GuardError<ToolFailure>>,
    },
}

type Handler = Arc<
    dyn Fn(serde_json::Value) -> BoxFuture<'static, Result<serde_json::Value, ToolFailure>>
        + Send
        + Sync,
>;

/// A named tool with its effect and handler.
#[derive(Clone)]
pub struct Tool {
    name: String,
    effect: Effect,
    handler: Handler,
}

impl fmt::Debug for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.name)
            .field("effect", &self.effect)
            .finish_non_exhaustive()
    }
}

impl Tool {
    /// A tool: JSON arguments in, JSON out.
    pub fn new<F, Fut>(name: impl Into<String>, effect: Effect, handler: F) -> Self
    where
        F: Fn(serde_json::Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<serde_json::Value, ToolFailure>> + Send + 'static,
    {
        Self {
            name: name.into(),
            effect,
            handler: Arc::new(move |args| Box::pin(handler(args))),
        }
    }
    /// The tool's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The tool's effect.
    pub fn effect(&self) -> Effect {
        self.effect
    }
}

struct Registered {
    tool: Tool,
    guard: Option<Guard>,
}

/// Calls tools with the policy their [`Effect`] asks for. Cheap to clone; clones share
/// tools, cache and store. Use [`with_session`](Self::with_session) per agent run.
#[derive(Clone)]
pub struct ToolRunner {
    tools: Arc<HashMap<String, Registered>>,
    cache: ToolCache<serde_json::Value>,
    retry: Arc<RetryPolicy>,
    session: String,
}

impl fmt::Debug for ToolRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.tools.keys().collect();
        names.sort();
        f.debug_struct("ToolRunner")
            .field("session", &self.session)
            .field("tools", &names)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ToolRunner`].
pub struct ToolRunnerBuilder {
    store: DynStore,
    tools: Vec<Tool>,
    cache: Option<ToolCache<serde_json::Value>>,
    retry: RetryPolicy,
    session: String,
    lease: Duration,
    ttl: Duration,
    wait: Duration,
}

impl fmt::Debug for ToolRunnerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolRunnerBuilder")
            .field("session", &self.session)
            .field("tools", &self.tools)
            .finish_non_exhaustive()
    }
}

impl ToolRunnerBuilder {
    /// Registers a tool (a later tool with the same name replaces it).
    pub fn tool(mut self, tool: Tool) -> Self {
        self.tools.push(tool);
        self
    }
    /// The session scope of keys (an agent run, a conversation). Default empty.
    pub fn session(mut self, s: impl Into<String>) -> Self {
        self.session = s.into();
        self
    }
    /// The cache for read tools (default: 10,000 entries, 5 minutes).
    pub fn cache(mut self, c: ToolCache<serde_json::Value>) -> Self {
        self.cache = Some(c);
        self
    }
    /// The retry policy of idempotent tools.
    pub fn retry(mut self, p: RetryPolicy) -> Self {
        self.retry = p;
        self
    }
    /// The lease of guarded calls (renewed while the tool runs). Default 60 s.
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d;
        self
    }
    /// How long results of guarded calls are kept for replay. Default 24 h.
    pub fn ttl(mut self, d: Duration) -> Self {
        self.ttl = d;
        self
    }
    /// How long a duplicate call waits for a running one before
    /// [`GuardError::InProgress`]. Default 30 s.
    pub fn wait(mut self, d: Duration) -> Self {
        self.wait = d;
        self
    }
    /// The runner.
    pub fn build(self) -> ToolRunner {
        let mut tools = HashMap::new();
        for tool in self.tools {
            let guard = tool.effect.needs_guard().then(|| {
                Guard::builder(self.store.clone())
                    .scope(format!("tool:{}", tool.name))
                    .codec(ValueCodec::Json)
                    .lease(self.lease)
                    .ttl(self.ttl)
                    .on_duplicate(OnDuplicate::Wait(self.wait))
                    .build()
            });
            tools.insert(tool.name.clone(), Registered { tool, guard });
        }
        ToolRunner {
            tools: Arc::new(tools),
            cache: self.cache.unwrap_or_else(|| ToolCache::builder().build()),
            retry: Arc::new(self.retry),
            session: self.session,
        }
    }
}

impl ToolRunner {
    /// A builder over `store` (where guarded calls are recorded).
    pub fn builder<S: StoreAdmin>(store: S) -> ToolRunnerBuilder {
        ToolRunnerBuilder {
            store: Arc::new(store),
            tools: Vec::new(),
            cache: None,
            retry: RetryPolicy::builder()
                .max_attempts(3)
                .base(Duration::from_millis(200))
                .build(),
            session: String::new(),
            lease: Duration::from_secs(60),
            ttl: Duration::from_secs(24 * 3600),
            wait: Duration::from_secs(30),
        }
    }

    /// The same tools, cache and store under another session scope.
    pub fn with_session(&self, session: impl Into<String>) -> Self {
        Self {
            session: session.into(),
            ..self.clone()
        }
    }

    /// The session scope.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// The effect of a registered tool.
    pub fn effect_of(&self, tool: &str) -> Option<Effect> {
        self.tools.get(tool).map(|r| r.tool.effect)
    }

    /// The read-tool cache (for stats or invalidation after a write).
    pub fn cache(&self) -> &ToolCache<serde_json::Value> {
        &self.cache
    }

    /// Calls a tool. Destructive tools need [`call_with_key`](Self::call_with_key).
    pub async fn call(
        &self,
        tool: &str,
        args: serde_json::Value,
    ) -> Result<serde_json::Value, ToolError> {
        self.dispatch(tool, args, None).await
    }

    /// Calls a tool with an idempotency key of the caller's (required for destructive
    /// tools; for write tools it replaces the derived key). The key is scoped by the
    /// tool, not by the session: a retry from another session with the same key
    /// replays.
    pub async fn call_with_key(
        &self,
        tool: &str,
        args: serde_json::Value,
        key: &str,
    ) -> Result<serde_json::Value, ToolError> {
        self.dispatch(tool, args, Some(key)).await
    }

    async fn dispatch(
        &self,
        name: &str,
        args: serde_json::Value,
        key: Option<&str>,
    ) -> Result<serde_json::Value, ToolError> {
        let reg = self
            .tools
            .get(name)
            .ok_or_else(|| ToolError::UnknownTool(name.to_string()))?;
        let handler = reg.tool.handler.clone();
        let failed = |failure: ToolFailure, attempts: u32| ToolError::Failed {
            tool: name.to_string(),
            failure,
            attempts,
        };
        match (reg.tool.effect, &reg.guard) {
            (Effect::Read, _) => self
                .cache
                .get_or_call(&self.session, name, &args, || handler(args.clone()))
                .await
                .map_err(|e| failed((*e).clone(), 1)),
            (Effect::Idempotent, _) => {
                let derived = crate::key::for_args(&self.session, name, &args);
                let retrier =
                    Retrier::new((*self.retry).clone()).classify(when_retryable::<ToolFailure>);
                retrier
                    .run(Some(key.unwrap_or(derived.as_str())), |_| {
                        handler(args.clone())
                    })
                    .await
                    .map_err(|g| failed(g.error, g.attempts))
            }
            (effect, Some(guard)) => {
                let key = match (effect, key) {
                    (_, Some(k)) => k.to_string(),
                    (Effect::Destructive, None) => {
                        return Err(ToolError::KeyRequired {
                            tool: name.to_string(),
                        });
                    }
                    (_, None) => crate::key::for_args(&self.session, name, &args).into_string(),
                };
                let mut canon = Vec::new();
                crate::canon::write_jcs_value(&args, &mut canon);
                // A derived key already includes the session; a key the caller gives is
                // used as is, so a retry from a new session still finds it.
                let request = crate::guard::Request::new(key).fingerprint(Fingerprint::of(&canon));
                guard
                    .run(request, || handler(args))
                    .await
                    .map_err(|e| match e {
                        GuardError::Operation(failure) => failed(failure, 1),
                        source => ToolError::Guard {
                            tool: name.to_string(),
                            source: Box::new(source),
                        },
                    })
            }
            (Effect::Write | Effect::Destructive, None) => {
                // Guards are built for every write/destructive tool at registration.
                Err(ToolError::UnknownTool(name.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use serde_json::json;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn counting(name: &str, effect: Effect, calls: Arc<AtomicU32>) -> Tool {
        Tool::new(name, effect, move |args| {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(json!({"args": args, "call": n}))
            }
        })
    }

    #[test]
    fn effects_parse_case_insensitively() {
        assert_eq!("WRITE".parse::<Effect>(), Ok(Effect::Write));
        assert_eq!("destructive".parse::<Effect>(), Ok(Effect::Destructive));
        assert!("delete".parse::<Effect>().is_err());
    }

    #[tokio::test]
    async fn reads_are_cached_per_session() {
        let calls = Arc::new(AtomicU32::new(0));
        let r = ToolRunner::builder(MemoryStore::new())
            .session("s1")
            .tool(counting("lookup", Effect::Read, calls.clone()))
            .build();
        r.call("lookup", json!({"id": 1})).await.unwrap();
        r.call("lookup", json!({"id": 1})).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        r.with_session("s2")
            .call("lookup", json!({"id": 1}))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn writes_run_once_per_distinct_call() {
        let calls = Arc::new(AtomicU32::new(0));
        let r = ToolRunner::builder(MemoryStore::new())
            .session("s1")
            .tool(counting("send_email", Effect::Write, calls.clone()))
            .build();
        let a = r.call("send_email", json!({"to": "a"})).await.unwrap();
        let b = r.call("send_email", json!({"to": "a"})).await.unwrap();
        assert_eq!(a, b);
        r.call("send_email", json!({"to": "b"})).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Another session is another call.
        r.with_session("s2")
            .call("send_email", json!({"to": "a"}))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_duplicate_writes_coalesce() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let r = ToolRunner::builder(MemoryStore::new())
            .tool(Tool::new("pay", Effect::Write, move |_| {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Ok(json!("paid"))
                }
            }))
            .build();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let r = r.clone();
            tasks.push(tokio::spawn(async move {
                r.call("pay", json!({"amount": 5})).await.unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), json!("paid"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn destructive_needs_a_key_and_detects_reuse() {
        let calls = Arc::new(AtomicU32::new(0));
        let r = ToolRunner::builder(MemoryStore::new())
            .tool(counting("delete_repo", Effect::Destructive, calls.clone()))
            .build();
        let e = r
            .call("delete_repo", json!({"repo": "x"}))
            .await
            .unwrap_err();
        assert!(matches!(e, ToolError::KeyRequired { .. }), "{e}");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        r.call_with_key("delete_repo", json!({"repo": "x"}), "del-1")
            .await
            .unwrap();
        r.call_with_key("delete_repo", json!({"repo": "x"}), "del-1")
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let e = r
            .call_with_key("delete_repo", json!({"repo": "y"}), "del-1")
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ToolError::Guard { source, .. } if matches!(**source, GuardError::Mismatch { .. })),
            "{e}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn idempotent_tools_retry_transient_failures_only() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let r = ToolRunner::builder(MemoryStore::new())
            .tool(Tool::new("set_flag", Effect::Idempotent, move |_| {
                let c = c.clone();
                async move {
                    match c.fetch_add(1, Ordering::SeqCst) {
                        0 => Err(ToolFailure::transient("503")),
                        _ => Ok(json!(true)),
                    }
                }
            }))
            .tool(Tool::new("bad", Effect::Idempotent, |_| async {
                Err(ToolFailure::permanent("invalid flag"))
            }))
            .build();
        assert_eq!(r.call("set_flag", json!({})).await.unwrap(), json!(true));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        match r.call("bad", json!({})).await.unwrap_err() {
            ToolError::Failed { attempts, .. } => assert_eq!(attempts, 1),
            e => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn failed_writes_release_so_the_next_call_runs() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let r = ToolRunner::builder(MemoryStore::new())
            .tool(Tool::new("charge", Effect::Write, move |_| {
                let c = c.clone();
                async move {
                    if c.fetch_add(1, Ordering::SeqCst) == 0 {
                        Err(ToolFailure::transient("card network down"))
                    } else {
                        Ok(json!("ok"))
                    }
                }
            }))
            .build();
        assert!(matches!(
            r.call("charge", json!({"a": 1})).await,
            Err(ToolError::Failed { .. })
        ));
        assert_eq!(
            r.call("charge", json!({"a": 1})).await.unwrap(),
            json!("ok")
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn unknown_tools_are_errors() {
        let r = ToolRunner::builder(MemoryStore::new()).build();
        assert!(matches!(
            r.call("nope", json!({})).await,
            Err(ToolError::UnknownTool(_))
        ));
    }
}
