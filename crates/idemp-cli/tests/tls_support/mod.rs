//! TLS upstreams for the `idemp serve` and `idemp mcp` tests: a CA and a server
//! certificate made in the test (rcgen), a rustls server (ring) that offers the ALPN
//! protocols asked for ([`spawn_https`] serves any handler with it), and
//! [`TlsUpstream`], a handler that counts executions and records what each
//! connection negotiated.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

/// A CA made for one test, and the PEM file that holds its certificate.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert: CertificateDer<'static>,
    pub pem_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pem_path = dir.path().join("ca.pem");
        std::fs::write(&pem_path, cert.pem()).unwrap();
        Self {
            issuer: Issuer::new(params, key),
            cert: cert.der().clone(),
            pem_path,
            _dir: dir,
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone(), self.cert.clone()], key)
    }
}

/// A rustls server (ring) with `cert`, offering `alpn`: wrap any test server's
/// accepted sockets with it to serve HTTPS (`acceptor.accept(tcp).await`).
pub fn acceptor(
    cert: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    alpn: &[&[u8]],
) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert.0, cert.1)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// What a TLS connection negotiated.
#[derive(Clone, Debug, Default)]
pub struct Conn {
    /// The server name the client sent (SNI).
    pub sni: Option<String>,
    /// The protocol chosen by ALPN.
    pub alpn: Option<Vec<u8>>,
}

/// Serves HTTPS (HTTP/1.1 or HTTP/2, as ALPN chose) on `listener` with `acceptor`
/// until the returned task is aborted: every request goes to `handler` with what its
/// connection negotiated. Failed handshakes close the connection.
pub fn spawn_https<H, F>(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handler: H,
) -> tokio::task::JoinHandle<()>
where
    H: Fn(Conn, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (_, session) = tls.get_ref();
                let conn = Conn {
                    sni: session.server_name().map(str::to_owned),
                    alpn: session.alpn_protocol().map(<[u8]>::to_vec),
                };
                let svc = hyper::service::service_fn(move |req| handler(conn.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    })
}

/// What one connection negotiated and one request looked like.
#[derive(Clone, Debug)]
pub struct Seen {
    pub sni: Option<String>,
    pub alpn: Option<Vec<u8>>,
    pub version: http::Version,
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
}

#[derive(Default)]
pub struct TlsState {
    pub seen: Mutex<Vec<Seen>>,
    /// Executions of POST /charge per Idempotency-Key.
    pub charges: Mutex<HashMap<String, usize>>,
}

impl TlsState {
    pub fn charges_of(&self, key: &str) -> usize {
        self.charges.lock().unwrap().get(key).copied().unwrap_or(0)
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// An HTTPS upstream on 127.0.0.1:
/// * `POST /charge`: counts an execution for its key, 201 `{"charge": N}`;
/// * anything else: 200 with the path as the body.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    pub state: Arc<TlsState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsUpstream {
    /// Serves with `cert` and offers `alpn` (e.g. `[b"h2", b"http/1.1"]`).
    pub async fn start(
        cert: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
        alpn: &[&[u8]],
    ) -> Self {
        let acceptor = acceptor(cert, alpn);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(TlsState::default());
        let st = state.clone();
        let task = spawn_https(listener, acceptor, move |conn, req| {
            route(st.clone(), conn, req)
        });
        Self { addr, state, task }
    }

    /// `https://localhost:PORT` (a name, so that SNI is sent).
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

async fn route(
    st: Arc<TlsState>,
    conn: Conn,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let seen = Seen {
        sni: conn.sni,
        alpn: conn.alpn,
        version: req.version(),
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    };
    st.seen.lock().unwrap().push(seen.clone());
    let key = seen.headers.get("idempotency-key").cloned();
    let _ = req.into_body().collect().await;
    let res = if seen.method == "POST" && seen.path == "/charge" {
        let key = key.unwrap_or_default();
        let n = {
            let mut c = st.charges.lock().unwrap();
            let e = c.entry(key).or_default();
            *e += 1;
            *e
        };
        Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(r#"{{"charge":{n}}}"#))))
    } else {
        Response::builder()
            .status(200)
            .body(Full::new(Bytes::from(seen.path.clone())))
    };
    Ok(res.unwrap())
}
