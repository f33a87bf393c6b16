//! Forwarding to the upstream: the inner service behind the idempotency layer.
//!
//! Rewrites the URI onto the upstream (its base path prefixed), sets `Host` to the
//! upstream's authority, strips hop-by-hop headers both ways, and appends the client
//! to `X-Forwarded-For`. Bodies stream in both directions (the layer has already
//! buffered the body of a guarded request). An unreachable upstream is 502, one that
//! does not send its response headers in time is 504: both RFC 9457 problems, and
//! both 5xx, so the layer releases the claim and the retry can run.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use idemp::http::replay::strip_hop_by_hop;
use idemp::http::{Problem, ProblemKind, RequestBody};

/// The client's address, put into request extensions by the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// The body the forwarder answers with: the upstream's (streamed) or a problem.
pub type ForwardBody = Either<Full<Bytes>, Incoming>;

/// The forwarding service.
#[derive(Clone, Debug)]
pub struct Forward {
    client: Client<HttpConnector, RequestBody<Incoming>>,
    authority: Authority,
    base_path: String,
    timeout: Duration,
}

impl Forward {
    /// A forwarder to `upstream` (an `http://` URI, checked by the config).
    pub fn new(upstream: &Uri, timeout: Duration) -> anyhow::Result<Self> {
        let authority = upstream
            .authority()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("upstream `{upstream}` has no host"))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout.min(Duration::from_secs(10))));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        Ok(Self {
            client,
            authority,
            base_path: upstream.path().trim_end_matches('/').to_owned(),
            timeout,
        })
    }

    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, http::Error> {
        let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let path_and_query = if self.base_path.is_empty() {
            pq.to_owned()
        } else {
            format!("{}{pq}", self.base_path)
        };
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

fn problem(p: Problem) -> Response<ForwardBody> {
    p.to_response().map(|b| Either::Left(Full::new(b)))
}

impl tower::Service<Request<RequestBody<Incoming>>> for Forward {
    type Response = Response<ForwardBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody<Incoming>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            parts.uri = match this.upstream_uri(&parts.uri) {
                Ok(u) => u,
                Err(e) => {
                    return Ok(problem(
                        Problem::new(ProblemKind::UpstreamUnreachable)
                            .detail(format!("cannot build the upstream URI: {e}")),
                    ));
                }
            };
            // The upstream sees an HTTP/1.1 request whatever the client spoke.
            parts.version = http::Version::HTTP_11;
            let original_host = parts.headers.get(header::HOST).cloned();
            strip_hop_by_hop(&mut parts.headers);
            if let Ok(host) = HeaderValue::from_str(this.authority.as_str()) {
                parts.headers.insert(header::HOST, host);
            }
            if let Some(ClientAddr(addr)) = parts.extensions.get::<ClientAddr>().copied() {
                let ip = addr.ip().to_string();
                let xff = match parts.headers.get("x-forwarded-for").map(|v| v.to_str()) {
                    Some(Ok(prev)) if !prev.is_empty() => format!("{prev}, {ip}"),
                    _ => ip,
                };
                if let Ok(v) = HeaderValue::from_str(&xff) {
                    parts.headers.insert("x-forwarded-for", v);
                }
            }
            if let Some(host) = original_host {
                parts.headers.insert("x-forwarded-host", host);
            }
            parts
                .headers
                .insert("x-forwarded-proto", HeaderValue::from_static("http"));
            let req = Request::from_parts(parts, body);

            match tokio::time::timeout(this.timeout, this.client.request(req)).await {
                Ok(Ok(res)) => {
                    let (mut parts, body) = res.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    Ok(Response::from_parts(parts, Either::Right(body)))
                }
                Ok(Err(e)) => {
                    let detail = if e.is_connect() {
                        format!("cannot connect to the upstream {}", this.authority)
                    } else {
                        format!("the upstream {} failed: {e}", this.authority)
                    };
                    tracing::warn!(upstream = %this.authority, error = %e, "upstream request failed");
                    Ok(problem(
                        Problem::new(ProblemKind::UpstreamUnreachable)
                            .detail(detail)
                            .retry_after(Duration::from_secs(1)),
                    ))
                }
                Err(_) => {
                    tracing::warn!(upstream = %this.authority, timeout = ?this.timeout, "upstream timed out");
                    Ok(problem(
                        Problem::new(ProblemKind::UpstreamTimeout)
                            .detail(format!(
                                "the upstream {} sent no response within {:?}",
                                this.authority, this.timeout
                            ))
                            .retry_after(Duration::from_secs(1)),
                    ))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_the_base_path() {
        let f = Forward::new(&"http://h:1/v1/".parse().unwrap(), Duration::from_secs(1));
        // Building a client needs no runtime.
        let f = f.unwrap();
        assert_eq!(
            f.upstream_uri(&"/messages?x=1".parse().unwrap()).unwrap(),
            "http://h:1/v1/messages?x=1"
        );
        let g = Forward::new(&"http://h:1".parse().unwrap(), Duration::from_secs(1)).unwrap();
        assert_eq!(
            g.upstream_uri(&"/a".parse().unwrap()).unwrap(),
            "http://h:1/a"
        );
    }
}
