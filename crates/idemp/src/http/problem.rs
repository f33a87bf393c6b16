//! RFC 9457 problem details (`application/problem+json`) for every error the
//! middleware (and the `idemp serve` proxy) returns itself.
//!
//! Each [`ProblemKind`] has a stable `type` URI under `https://idemp.dev/problems/`,
//! so clients can branch on it without parsing prose.
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
        }
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
        }
    }
}

/// One problem response (RFC 9457).
#[derive(Clone, Debug)]
pub struct Problem {
    kind: ProblemKind,
    detail: Option<String>,
    retry_after: Option<Duration>,
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    type_uri: String,
    title: &'static str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

impl Problem {
    /// A problem of this kind.
    pub fn new(kind: ProblemKind) -> Self {
        Self {
            kind,
            detail: None,
            retry_after: None,
        }
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
        };
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }
    /// The full response: status, `content-type: application/problem+json`,
    /// `Retry-After` when set, `cache-control: no-store`.
    pub fn to_response(&self) -> Response<Bytes> {
        let mut res = Response::new(self.body());
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(after) = self.retry_after {
            h.insert(header::RETRY_AFTER, retry_after_value(after));
        }
        res
    }
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
        let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(v["status"], 409);
        assert_eq!(v["detail"], "x");
        assert_eq!(v["type"], "https://idemp.dev/problems/request-in-progress");
        assert!(v["title"].as_str().unwrap().contains("in progress"));
    }
}
