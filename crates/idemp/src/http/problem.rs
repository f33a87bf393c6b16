//! RFC 9457 problem details (`application/problem+json`) for every error the
//! middleware (and the `idemp serve` proxy) returns itself.
//!
//! Each [`ProblemKind`] has a stable `type` URI under `https://idemp.dev/problems/`,
//! so clients can branch on it without parsing prose.
//!
//! What SDKs read is set too: a problem that must not be retried (a bad key, a
//! mismatch, a body too large, an outcome that is ambiguous or not stored) carries
//! `x-should-retry: false` (the header the Stainless-generated SDKs — Anthropic,
//! OpenAI — obey) and `stripe-should-retry: false` (the Stripe SDKs' own); one that
//! may be retried later carries `Retry-After` in seconds and `retry-after-ms`.
//!
//! ```
//! use idemp::http::{Problem, ProblemKind};
//! let p = Problem::new(ProblemKind::KeyMismatch).detail("the body differs");
//! assert_eq!(p.status().as_u16(), 422);
//! let res = p.to_response();
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//! let json: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
//! assert_eq!(json["type"], "https://idemp.dev/problems/key-mismatch");
//! ```

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

/// The media type of problem responses.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The kinds of problem, each with a fixed status and `type` URI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// 400: the `Idempotency-Key` header is malformed.
    InvalidKey,
    /// 400: the route requires an `Idempotency-Key` and none was sent.
    MissingKey,
    /// 422: the key was used before with a different request.
    KeyMismatch,
    /// 409: a request with this key is still being processed.
    RequestInProgress,
    /// 413: the request body is larger than the configured limit.
    BodyTooLarge,
    /// 400: the request body could not be read.
    BodyUnreadable,
    /// 503: the idempotency store cannot be reached (fail closed).
    StoreUnavailable,
    /// 500: a stored response could not be decoded.
    StoredResponseUnreadable,
    /// 500: the handler failed (panicked or its response body broke).
    HandlerFailed,
    /// 502: the upstream could not be reached (proxy).
    UpstreamUnreachable,
    /// 504: the upstream did not answer in time (proxy).
    UpstreamTimeout,
    /// 409: an earlier attempt with this key may have run (it was sent, and its outcome
    /// was lost: a timeout, a reset, a truncated answer, a crash); it is not run again
    /// under the `surface` policy until the hold passes or an operator resolves it.
    OutcomeAmbiguous,
    /// 409: the request was executed, but its response was too large to store; it is
    /// never run again, and its response cannot be replayed.
    ResponseNotStored,
    /// 400: the request path has no normal form (a `..` above the root, a bad escape).
    InvalidPath,
    /// 503: too many request bytes are buffered at once; retry shortly.
    Overloaded,
}

impl ProblemKind {
    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            ProblemKind::InvalidKey | ProblemKind::MissingKey | ProblemKind::BodyUnreadable => {
                StatusCode::BAD_REQUEST
            }
            ProblemKind::KeyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            ProblemKind::RequestInProgress => StatusCode::CONFLICT,
            ProblemKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProblemKind::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProblemKind::StoredResponseUnreadable | ProblemKind::HandlerFailed => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ProblemKind::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            ProblemKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProblemKind::OutcomeAmbiguous | ProblemKind::ResponseNotStored => StatusCode::CONFLICT,
            ProblemKind::InvalidPath => StatusCode::BAD_REQUEST,
            ProblemKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether repeating the same request can ever get another answer. `false` for a
    /// bad key, a mismatch, a bad or too large body, a bad path, an ambiguous or
    /// not-stored outcome, an unreadable stored response: these responses carry
    /// `x-should-retry: false`.
    pub fn is_retryable(self) -> bool {
        !matches!(
            self,
            ProblemKind::InvalidKey
                | ProblemKind::MissingKey
                | ProblemKind::KeyMismatch
                | ProblemKind::BodyTooLarge
                | ProblemKind::BodyUnreadable
                | ProblemKind::StoredResponseUnreadable
                | ProblemKind::OutcomeAmbiguous
                | ProblemKind::ResponseNotStored
                | ProblemKind::InvalidPath
        )
    }

    /// The last segment of the `type` URI, e.g. `key-mismatch`.
    pub fn slug(self) -> &'static str {
        match self {
            ProblemKind::InvalidKey => "invalid-key",
            ProblemKind::MissingKey => "missing-key",
            ProblemKind::KeyMismatch => "key-mismatch",
            ProblemKind::RequestInProgress => "request-in-progress",
            ProblemKind::BodyTooLarge => "body-too-large",
            ProblemKind::BodyUnreadable => "body-unreadable",
            ProblemKind::StoreUnavailable => "store-unavailable",
            ProblemKind::StoredResponseUnreadable => "stored-response-unreadable",
            ProblemKind::HandlerFailed => "handler-failed",
            ProblemKind::UpstreamUnreachable => "upstream-unreachable",
            ProblemKind::UpstreamTimeout => "upstream-timeout",
            ProblemKind::OutcomeAmbiguous => "outcome-ambiguous",
            ProblemKind::ResponseNotStored => "response-not-stored",
            ProblemKind::InvalidPath => "invalid-path",
            ProblemKind::Overloaded => "overloaded",
        }
    }

    /// The stable `type` URI: `https://idemp.dev/problems/<slug>`.
    pub fn type_uri(self) -> String {
        format!("https://idemp.dev/problems/{}", self.slug())
    }

    /// A short human-readable summary (the same for every occurrence).
    pub fn title(self) -> &'static str {
        match self {
            ProblemKind::InvalidKey => "Invalid Idempotency-Key header",
            ProblemKind::MissingKey => "Idempotency-Key header required",
            ProblemKind::KeyMismatch => "Idempotency-Key reused with a different request",
            ProblemKind::RequestInProgress => "A request with this Idempotency-Key is in progress",
            ProblemKind::BodyTooLarge => "Request body too large",
            ProblemKind::BodyUnreadable => "Request body could not be read",
            ProblemKind::StoreUnavailable => "Idempotency store unavailable",
            ProblemKind::StoredResponseUnreadable => "Stored response could not be read",
            ProblemKind::HandlerFailed => "The request handler failed",
            ProblemKind::UpstreamUnreachable => "Upstream unreachable",
            ProblemKind::UpstreamTimeout => "Upstream timed out",
            ProblemKind::OutcomeAmbiguous => {
                "An earlier attempt with this Idempotency-Key may have run; its outcome is unknown"
            }
            ProblemKind::ResponseNotStored => {
                "Executed; the response was too large to store and cannot be replayed"
            }
            ProblemKind::InvalidPath => "Invalid request path",
            ProblemKind::Overloaded => "Too many request bytes buffered; retry shortly",
        }
    }
}

/// One problem response (RFC 9457).
#[derive(Clone, Debug)]
pub struct Problem {
    kind: ProblemKind,
    detail: Option<String>,
    retry_after: Option<Duration>,
    extensions: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    type_uri: String,
    title: &'static str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(flatten)]
    extensions: &'a serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// A problem of this kind.
    pub fn new(kind: ProblemKind) -> Self {
        Self {
            kind,
            detail: None,
            retry_after: None,
            extensions: serde_json::Map::new(),
        }
    }
    /// Adds an extension member (RFC 9457 section 3.2), e.g. when an ambiguous attempt
    /// started. The standard members (`type`, `title`, `status`, `detail`) cannot be
    /// overridden.
    pub fn extension(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        if !matches!(name, "type" | "title" | "status" | "detail" | "instance") {
            self.extensions.insert(name.to_owned(), value.into());
        }
        self
    }
    /// Adds a `detail` specific to this occurrence.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    /// Adds a `Retry-After` header (whole seconds, rounded up, at least 1).
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
    /// The kind.
    pub fn kind(&self) -> ProblemKind {
        self.kind
    }
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }
    /// The JSON body.
    pub fn body(&self) -> Bytes {
        let body = ProblemBody {
            type_uri: self.kind.type_uri(),
            title: self.kind.title(),
            status: self.status().as_u16(),
            detail: self.detail.as_deref(),
            extensions: &self.extensions,
        };
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }
    /// The full response: status, `content-type: application/problem+json`,
    /// `cache-control: no-store`, `Retry-After` and `retry-after-ms` when set, and
    /// `x-should-retry: false` / `stripe-should-retry: false` when the kind is not
    /// [retryable](ProblemKind::is_retryable).
    pub fn to_response(&self) -> Response<Bytes> {
        let mut res = Response::new(self.body());
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(after) = self.retry_after {
            h.insert(header::RETRY_AFTER, retry_after_value(after));
            h.insert(RETRY_AFTER_MS, retry_after_ms_value(after));
        }
        if !self.kind.is_retryable() {
            h.insert(X_SHOULD_RETRY, HeaderValue::from_static("false"));
            h.insert(STRIPE_SHOULD_RETRY, HeaderValue::from_static("false"));
        }
        res
    }
}

/// `retry-after-ms`: the delay in milliseconds (read first by the Stainless SDKs).
pub const RETRY_AFTER_MS: http::HeaderName = http::HeaderName::from_static("retry-after-ms");
/// `x-should-retry`: `false` tells the Stainless SDKs not to retry whatever the status.
pub const X_SHOULD_RETRY: http::HeaderName = http::HeaderName::from_static("x-should-retry");
/// `stripe-should-retry`: the same for the Stripe SDKs.
pub const STRIPE_SHOULD_RETRY: http::HeaderName =
    http::HeaderName::from_static("stripe-should-retry");

/// `retry-after-ms`: whole milliseconds, rounded up, at least 1.
pub fn retry_after_ms_value(after: Duration) -> HeaderValue {
    let ms = after.as_millis() + u128::from(!after.subsec_nanos().is_multiple_of(1_000_000));
    HeaderValue::from(u64::try_from(ms).unwrap_or(u64::MAX).max(1))
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_after_value(after: Duration) -> HeaderValue {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.kind.title(), self.status())?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_value(Duration::from_millis(1)), "1");
        assert_eq!(retry_after_value(Duration::ZERO), "1");
        assert_eq!(retry_after_value(Duration::from_millis(2500)), "3");
        assert_eq!(retry_after_value(Duration::from_secs(10)), "10");
    }

    #[test]
    fn body_is_rfc9457() {
        let p = Problem::new(ProblemKind::RequestInProgress)
            .detail("x")
            .retry_after(Duration::from_secs(2));
        let res = p.to_response();
        assert_eq!(res.status(), 409);
        assert_eq!(res.headers()["retry-after"], "2");
        assert_eq!(res.headers()["retry-after-ms"], "2000");
        assert!(res.headers().get("x-should-retry").is_none());
        let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(v["status"], 409);
        assert_eq!(v["detail"], "x");
        assert_eq!(v["type"], "https://idemp.dev/problems/request-in-progress");
        assert!(v["title"].as_str().unwrap().contains("in progress"));
    }

    #[test]
    fn final_answers_say_do_not_retry() {
        for kind in [
            ProblemKind::KeyMismatch,
            ProblemKind::OutcomeAmbiguous,
            ProblemKind::ResponseNotStored,
            ProblemKind::BodyTooLarge,
            ProblemKind::InvalidKey,
        ] {
            let res = Problem::new(kind).to_response();
            assert_eq!(res.headers()["x-should-retry"], "false", "{kind:?}");
            assert_eq!(res.headers()["stripe-should-retry"], "false", "{kind:?}");
        }
        let res = Problem::new(ProblemKind::OutcomeAmbiguous)
            .extension("attempted_at_ms", 17)
            .extension("type", "spoof")
            .to_response();
        let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(v["attempted_at_ms"], 17);
        assert_eq!(v["type"], "https://idemp.dev/problems/outcome-ambiguous");
        assert_eq!(retry_after_ms_value(Duration::from_micros(1500)), "2");
    }
}
