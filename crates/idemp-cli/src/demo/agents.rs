//! The agents: a fixed workload of completions and charges, sent two ways.
//!
//! * [`Mode::Idemp`]: through `idemp serve`, with [`IdempotentClient`]: one key
//!   derived from the request's content, kept on every retry.
//! * [`Mode::Direct`]: straight to the API, retrying the same way but with a fresh
//!   random key on every attempt (the classic bug: each retry looks new).
//!
//! Both use the same retry policy and the Anthropic retry preset, so the only
//! difference is the key and the proxy.

use std::time::{Duration, Instant};

use idemp::client::{IDEMPOTENCY_KEY, IdempotentClient, response_retry_after};
use idemp::key::Key;
use idemp::retry::{Provider, Retrier, RetryInfo, RetryPolicy};
use indicatif::ProgressBar;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::logical_id;

/// How the agents reach the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Through idemp, content-derived key kept across retries.
    Idemp,
    /// Directly, a fresh random key per attempt.
    Direct,
}

/// One logical call of an agent.
#[derive(Clone, Debug)]
pub struct Call {
    /// `/v1/messages` or `/v1/charges`.
    pub path: &'static str,
    /// The JSON body, the same bytes on every attempt.
    pub body: Vec<u8>,
    /// The logical request's id (see [`logical_id`]).
    pub id: String,
    /// A charge (else a completion).
    pub charge: bool,
}

/// How one logical call ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The logical request's id.
    pub id: String,
    /// The id of the object the agent got back (`msg_…`, `ch_…`), if it got one.
    pub result: Result<String, String>,
    /// From the first attempt to the final answer, backoff included.
    pub latency: Duration,
}

/// The workload: `agents` lists of `calls` calls; every third call is a charge, the
/// others completions. Deterministic, so both modes send the same requests.
pub fn workload(agents: usize, calls: usize) -> Vec<Vec<Call>> {
    (0..agents)
        .map(|a| {
            (0..calls)
                .map(|s| {
                    let charge = s % 3 == 2;
                    let (path, body) = if charge {
                        let amount = 500 + (a * 7919 + s * 104_729) % 9_500;
                        (
                            "/v1/charges",
                            json!({
                                "order_id": format!("order-{a:03}-{s:05}"),
                                "amount": amount,
                                "currency": "usd",
                                "description": format!("agent {a}: purchase for task {s}"),
                            }),
                        )
                    } else {
                        (
                            "/v1/messages",
                            json!({
                                "model": "claude-demo",
                                "max_tokens": 256,
                                "metadata": {"user_id": format!("agent-{a:03}")},
                                "messages": [{
                                    "role": "user",
                                    "content": format!("Agent {a}, task {s}: plan the next step."),
                                }],
                            }),
                        )
                    };
                    let body = body.to_string().into_bytes();
                    Call {
                        path,
                        id: logical_id(path, &body),
                        body,
                        charge,
                    }
                })
                .collect()
        })
        .collect()
}

/// The retry policy of every agent: quick backoff, the storm needs up to 9 attempts.
pub fn policy() -> RetryPolicy {
    RetryPolicy::builder()
        .max_attempts(10)
        .base(Duration::from_millis(5))
        .cap(Duration::from_millis(200))
        .retry_after_cap(Duration::from_secs(2))
        .build()
}

/// Runs every agent's calls (the agents concurrently, each agent's calls in order)
/// against `base` (`http://HOST:PORT`), ticking `progress` once per logical call.
/// Idempotency keys are scoped to `run_id` and the agent.
pub async fn run(
    mode: Mode,
    base: String,
    run_id: &str,
    workload: Vec<Vec<Call>>,
    progress: ProgressBar,
) -> anyhow::Result<Vec<Outcome>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()?;
    let mut set = JoinSet::new();
    for (agent, calls) in workload.into_iter().enumerate() {
        let http = http.clone();
        let base = base.clone();
        let progress = progress.clone();
        let scope = format!("demo-{run_id}-agent-{agent:03}");
        set.spawn(async move {
            let agent = Agent::new(mode, http, &scope);
            let mut out = Vec::with_capacity(calls.len());
            for call in calls {
                let start = Instant::now();
                let result = agent.call(&base, &call).await;
                out.push(Outcome {
                    id: call.id,
                    result,
                    latency: start.elapsed(),
                });
                progress.inc(1);
            }
            out
        });
    }
    let mut outcomes = Vec::new();
    while let Some(done) = set.join_next().await {
        outcomes.extend(done?);
    }
    Ok(outcomes)
}

enum Agent {
    Idemp(IdempotentClient),
    Direct {
        http: reqwest::Client,
        retrier: Retrier<Provider>,
    },
}

impl Agent {
    fn new(mode: Mode, http: reqwest::Client, scope: &str) -> Self {
        match mode {
            Mode::Idemp => Agent::Idemp(
                IdempotentClient::builder(http)
                    .provider(Provider::Anthropic)
                    .policy(policy())
                    .scope(scope)
                    .build(),
            ),
            Mode::Direct => Agent::Direct {
                http,
                retrier: Retrier::new(policy()).classify(Provider::Anthropic),
            },
        }
    }

    /// One logical call: `Ok(object id)` or why there was no result.
    async fn call(&self, base: &str, call: &Call) -> Result<String, String> {
        let url = format!("{base}{}", call.path);
        match self {
            Agent::Idemp(client) => {
                let req = client
                    .inner()
                    .post(&url)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(call.body.clone())
                    .build()
                    .map_err(|e| e.to_string())?;
                let res = client.send(req).await.map_err(|e| e.to_string())?;
                let status = res.status();
                let body = res.bytes().await.map_err(|e| e.to_string())?;
                result_id(status.as_u16(), &body)
            }
            Agent::Direct { http, retrier } => {
                let answer = retrier
                    .run(None, |_attempt| async {
                        // The bug: a new key on every attempt, so no server can tell
                        // this retry from a new request.
                        let key = Key::random();
                        let sent = http
                            .post(&url)
                            .header(http::header::CONTENT_TYPE, "application/json")
                            .header(IDEMPOTENCY_KEY, key.as_str())
                            .body(call.body.clone())
                            .send()
                            .await;
                        let res = sent.map_err(AttemptError::Transport)?;
                        let status = res.status().as_u16();
                        if res.status().is_success() {
                            let body = res.bytes().await.map_err(AttemptError::Transport)?;
                            Ok((status, body))
                        } else {
                            Err(AttemptError::Status {
                                status,
                                retry_after: response_retry_after(
                                    res.headers(),
                                    std::time::SystemTime::now(),
                                ),
                            })
                        }
                    })
                    .await;
                match answer {
                    Ok((status, body)) => result_id(status, &body),
                    Err(gave_up) => Err(format!(
                        "gave up after {} attempt(s): {}",
                        gave_up.attempts, gave_up.error
                    )),
                }
            }
        }
    }
}

/// A failed attempt of a direct agent, as the retry classifier sees it.
#[derive(Debug)]
enum AttemptError {
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    Transport(reqwest::Error),
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Status { status, .. } => write!(f, "HTTP {status}"),
            AttemptError::Transport(e) => write!(f, "{e}"),
        }
    }
}

impl RetryInfo for AttemptError {
    fn status(&self) -> Option<u16> {
        match self {
            AttemptError::Status { status, .. } => Some(*status),
            AttemptError::Transport(_) => None,
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Status { retry_after, .. } => *retry_after,
            AttemptError::Transport(_) => None,
        }
    }
    fn is_transport(&self) -> bool {
        // As IdempotentClient: failures before or while the answer arrives.
        matches!(self, AttemptError::Transport(e) if e.is_connect() || e.is_timeout() || e.is_request())
    }
}

/// The object id of a final answer, or why it is not a result.
fn result_id(status: u16, body: &[u8]) -> Result<String, String> {
    if !(200..300).contains(&status) {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(body)
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON answer: {e}"))?;
    v["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "the answer has no id".to_owned())
}
