//! An HTTP client for agents that retries with **the same idempotency key**.
//!
//! [`IdempotentClient`] wraps a [`reqwest::Client`]. For every guarded request (POST
//! and PATCH by default) it derives one `Idempotency-Key` from the request's content
//! (scope + method + URL + canonical body: JSON bodies are canonicalized, so key
//! order and whitespace don't matter) or takes the one you give, sends it on **every
//! attempt**, and retries with backoff, full jitter and `Retry-After` on the
//! provider's retryable statuses (see [`Provider`]) and on transport errors. A server
//! or proxy that honours the key (the `idemp` tower layer, `idemp serve`, Stripe,
//! Anthropic batches…) then runs the side effect once however many attempts arrive.
//!
//! Dropping the future of [`send`](IdempotentClient::send) cancels the call: no
//! further attempt is made.
//!
//! ```no_run
//! use idemp::client::IdempotentClient;
//! use idemp::retry::{Provider, RetryPolicy};
//!
//! # async fn demo() -> Result<(), idemp::client::ClientError> {
//! let client = IdempotentClient::builder(reqwest::Client::new())
//!     .provider(Provider::Anthropic)
//!     .policy(RetryPolicy::builder().max_attempts(5).build())
//!     .scope("run-2024-07-01-42")
//!     .build();
//! let req = client
//!     .inner()
//!     .post("http://127.0.0.1:8787/v1/messages")
//!     .json(&serde_json::json!({"model": "claude", "messages": []}))
//!     .build()?;
//! let resp = client.send(req).await?;
//! println!("{} (replayed: {})", resp.status(), resp.headers().contains_key("idempotent-replayed"));
//! # Ok(()) }
//! ```

use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue, Method};

use crate::key::Key;
use crate::retry::{Attempt, GiveUp, Provider, Retrier, RetryInfo, RetryPolicy, parse_retry_after};

/// The header the key is sent in.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Errors of [`IdempotentClient::send`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The request could not be built or sent, after `attempts` attempts.
    #[error("request failed after {attempts} attempt(s) ({reason}) with key {key}: {source}")]
    Transport {
        /// The last transport error.
        #[source]
        source: reqwest::Error,
        /// Attempts made.
        attempts: u32,
        /// Why the client stopped.
        reason: GiveUp,
        /// The idempotency key used on every attempt.
        key: String,
    },
    /// The request body is a stream and cannot be replayed, so it cannot be retried.
    #[error("the request body is a stream: it can be neither hashed into a key nor retried")]
    StreamingBody,
    /// The given key is not a valid idempotency key.
    #[error(transparent)]
    Key(#[from] crate::key::KeyError),
    /// Building the request failed.
    #[error(transparent)]
    Build(#[from] reqwest::Error),
}

impl crate::retry::Retryable for ClientError {
    /// `Transport` when the last failure was a connection failure or a timeout (the
    /// client's own retries gave up; a later call with the same key is safe); never
    /// the others, which fail the same way every time.
    fn is_retryable(&self) -> bool {
        match self {
            ClientError::Transport { source, .. } => transport_is_retryable(source),
            ClientError::StreamingBody | ClientError::Key(_) | ClientError::Build(_) => false,
        }
    }
}

/// Whether a transport error happened before a response arrived (connect, timeout,
/// sending the request): what the client retries, and what makes a
/// [`ClientError::Transport`] retryable.
fn transport_is_retryable(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request()
}

/// A failed attempt, as the classifier sees it.
#[derive(Debug)]
enum AttemptError {
    Status {
        response: reqwest::Response,
        retry_after: Option<Duration>,
    },
    Transport(reqwest::Error),
    Streaming,
}

impl RetryInfo for AttemptError {
    fn status(&self) -> Option<u16> {
        match self {
            AttemptError::Status { response, .. } => Some(response.status().as_u16()),
            AttemptError::Transport(_) | AttemptError::Streaming => None,
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Status { retry_after, .. } => *retry_after,
            AttemptError::Transport(_) | AttemptError::Streaming => None,
        }
    }
    fn is_transport(&self) -> bool {
        match self {
            AttemptError::Transport(e) => transport_is_retryable(e),
            AttemptError::Status { .. } | AttemptError::Streaming => false,
        }
    }
}

/// The delay a response asks for: `retry-after-ms` (OpenAI, Anthropic) or
/// `Retry-After` (seconds or HTTP-date).
pub fn response_retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0 && *ms < 1e12)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now))
}

/// Derives the idempotency key of a request: scope, method, URL and body, with JSON
/// bodies in their RFC 8785 canonical form (so `{"a":1,"b":2}` and `{ "b":2, "a":1 }`
/// get one key). The key is `ik_` + 32 hex (see [`Key::builder`]).
pub fn derive_key(scope: &str, method: &Method, url: &str, body: &[u8]) -> Key {
    let builder = Key::builder(scope)
        .part_str("http-request/v1")
        .part_str(method.as_str())
        .part_str(url);
    match canonical_json_body(body) {
        Some(canon) => builder.part_str("json").part(canon).build(),
        None => builder.part_str("bytes").part(body).build(),
    }
}

fn canonical_json_body(body: &[u8]) -> Option<Vec<u8>> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' && *first != b'[' {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut out = Vec::with_capacity(body.len());
    crate::canon::write_jcs_value(&value, &mut out);
    Some(out)
}

/// A reqwest client that keeps one idempotency key across retries.
#[derive(Debug)]
pub struct IdempotentClient {
    client: reqwest::Client,
    retrier: Retrier<Provider>,
    scope: String,
    header: HeaderName,
    guarded: Vec<Method>,
}

/// Builds an [`IdempotentClient`].
#[derive(Debug)]
pub struct IdempotentClientBuilder {
    client: reqwest::Client,
    provider: Provider,
    policy: RetryPolicy,
    scope: String,
    header: HeaderName,
    guarded: Vec<Method>,
}

impl IdempotentClientBuilder {
    /// The retryable statuses and error types (default [`Provider::Http`]).
    pub fn provider(mut self, p: Provider) -> Self {
        self.provider = p;
        self
    }
    /// The retry policy (default [`RetryPolicy::default`]).
    pub fn policy(mut self, p: RetryPolicy) -> Self {
        self.policy = p;
        self
    }
    /// The scope mixed into derived keys: an agent run, a session, a tenant. Two runs
    /// that must not share results need different scopes.
    pub fn scope(mut self, s: impl Into<String>) -> Self {
        self.scope = s.into();
        self
    }
    /// The header carrying the key (default `Idempotency-Key`).
    pub fn header(mut self, h: HeaderName) -> Self {
        self.header = h;
        self
    }
    /// The methods that get a key and are retried (default POST and PATCH). Other
    /// methods are sent once, as is, unless [`Method::GET`]-like safe methods are
    /// listed here too.
    pub fn guarded_methods(mut self, m: impl IntoIterator<Item = Method>) -> Self {
        self.guarded = m.into_iter().collect();
        self
    }
    /// The client.
    pub fn build(self) -> IdempotentClient {
        IdempotentClient {
            client: self.client,
            retrier: Retrier::new(self.policy).classify(self.provider),
            scope: self.scope,
            header: self.header,
            guarded: self.guarded,
        }
    }
}

impl IdempotentClient {
    /// A builder around `client`.
    pub fn builder(client: reqwest::Client) -> IdempotentClientBuilder {
        IdempotentClientBuilder {
            client,
            provider: Provider::Http,
            policy: RetryPolicy::default(),
            scope: String::new(),
            header: HeaderName::from_static(IDEMPOTENCY_KEY),
            guarded: vec![Method::POST, Method::PATCH],
        }
    }

    /// The wrapped client, to build requests with.
    pub fn inner(&self) -> &reqwest::Client {
        &self.client
    }

    /// The key [`send`](Self::send) would use for `request`: the one it already
    /// carries in the key header, else one derived from its content.
    pub fn key_for(&self, request: &reqwest::Request) -> Result<Key, ClientError> {
        if let Some(v) = request.headers().get(&self.header) {
            let given = String::from_utf8_lossy(v.as_bytes());
            return Ok(Key::new(given.trim_matches('"'))?);
        }
        let body = match request.body() {
            None => &[][..],
            Some(b) => b.as_bytes().ok_or(ClientError::StreamingBody)?,
        };
        Ok(derive_key(
            &self.scope,
            request.method(),
            request.url().as_str(),
            body,
        ))
    }

    /// Sends `request`, retrying guarded methods with one key on every attempt.
    ///
    /// Returns the final response, whatever its status (a retryable status after the
    /// last attempt is returned as a response, as reqwest would); transport errors
    /// after the last attempt are [`ClientError::Transport`].
    pub async fn send(&self, request: reqwest::Request) -> Result<reqwest::Response, ClientError> {
        if !self.guarded.contains(request.method()) {
            return Ok(self.client.execute(request).await?);
        }
        let key = self.key_for(&request)?;
        self.send_keyed(request, key).await
    }

    /// Sends `request` with `key` (replacing any key header it has).
    pub async fn send_with_key(
        &self,
        request: reqwest::Request,
        key: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let key = Key::new(key)?;
        self.send_keyed(request, key).await
    }

    async fn send_keyed(
        &self,
        mut request: reqwest::Request,
        key: Key,
    ) -> Result<reqwest::Response, ClientError> {
        // A validated key is visible ASCII, always a valid header value.
        if let Ok(value) = HeaderValue::from_str(key.as_str()) {
            request.headers_mut().insert(self.header.clone(), value);
        }
        let template = request;
        if template.try_clone().is_none() {
            return Err(ClientError::StreamingBody);
        }
        let key_str = key.as_str();
        let result = self
            .retrier
            .run(Some(key_str), |attempt: Attempt<'_>| {
                let req = template.try_clone();
                async move {
                    let Some(mut req) = req else {
                        return Err(AttemptError::Streaming);
                    };
                    if attempt.is_retry() {
                        tracing::debug!(attempt = attempt.number(), key = ?attempt.key(), "retrying");
                        req.headers_mut().insert(
                            "idempotency-attempt",
                            HeaderValue::from(attempt.number()),
                        );
                    }
                    match self.client.execute(req).await {
                        Ok(resp) if resp.status().is_success() => Ok(resp),
                        Ok(resp) => Err(AttemptError::Status {
                            retry_after: response_retry_after(resp.headers(), SystemTime::now()),
                            response: resp,
                        }),
                        Err(e) => Err(AttemptError::Transport(e)),
                    }
                }
            })
            .await;
        match result {
            Ok(resp) => Ok(resp),
            Err(gave_up) => match gave_up.error {
                AttemptError::Status { response, .. } => Ok(response),
                AttemptError::Streaming => Err(ClientError::StreamingBody),
                AttemptError::Transport(source) => Err(ClientError::Transport {
                    source,
                    attempts: gave_up.attempts,
                    reason: gave_up.reason,
                    key: key.to_string(),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_ignore_json_key_order_and_whitespace() {
        let a = derive_key("s", &Method::POST, "http://x/v1", br#"{"a":1,"b":[1,2]}"#);
        let b = derive_key(
            "s",
            &Method::POST,
            "http://x/v1",
            b" { \"b\" : [1, 2], \"a\": 1 }\n",
        );
        assert_eq!(a, b);
        assert_eq!(a.as_str().len(), 35);
        assert_ne!(
            a,
            derive_key("t", &Method::POST, "http://x/v1", br#"{"a":1,"b":[1,2]}"#)
        );
        assert_ne!(
            a,
            derive_key("s", &Method::PATCH, "http://x/v1", br#"{"a":1,"b":[1,2]}"#)
        );
        assert_ne!(
            a,
            derive_key("s", &Method::POST, "http://x/v2", br#"{"a":1,"b":[1,2]}"#)
        );
        // Non-JSON bodies hash as bytes.
        assert_ne!(
            derive_key("s", &Method::POST, "u", b"a=1&b=2"),
            derive_key("s", &Method::POST, "u", b"b=2&a=1")
        );
    }

    #[test]
    fn retry_after_headers() {
        let mut h = http::HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(
            response_retry_after(&h, SystemTime::now()),
            Some(Duration::from_secs(3))
        );
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(
            response_retry_after(&h, SystemTime::now()),
            Some(Duration::from_millis(250))
        );
    }
}
