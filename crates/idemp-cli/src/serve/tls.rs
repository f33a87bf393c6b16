//! TLS to `https://` upstreams: rustls with the `ring` provider.
//!
//! The trust anchors are a base set chosen by `--upstream-roots` plus every certificate
//! of every `--upstream-ca` PEM file:
//!
//! * `webpki` (the default): Mozilla's root program, compiled in (`webpki-roots`), so
//!   the proxy behaves the same on every machine and in a `FROM scratch` container;
//! * `native`: the operating system's store (`rustls-native-certs`: the files named by
//!   `SSL_CERT_FILE` / `SSL_CERT_DIR`, else the platform's bundle), for fleets whose
//!   private CA is installed system-wide.
//!
//! The connection offers HTTP/2 and HTTP/1.1 by ALPN and sends the upstream URL's host
//! as SNI (no SNI for an IP address, as RFC 6066 says); the certificate must name that
//! host. TLS 1.2 and 1.3 are accepted. A certificate that does not verify is refused
//! before the request is sent: the proxy answers 502 naming the reason and the
//! idempotency key is released.
//!
//! [`UpstreamConnector`] is the one way both `idemp serve` and `idemp mcp --upstream`
//! connect to an upstream: TCP, then TLS for `https://`, the whole under one timeout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::future::BoxFuture;
use http::Uri;
use http::uri::Scheme;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

/// The base set of trust anchors (`--upstream-roots`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Roots {
    /// Mozilla's root program, compiled in.
    #[default]
    Webpki,
    /// The operating system's certificate store.
    Native,
}

impl Roots {
    /// The flag value.
    pub fn name(self) -> &'static str {
        match self {
            Roots::Webpki => "webpki",
            Roots::Native => "native",
        }
    }
}

/// How the proxy trusts `https://` upstreams.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The base set of roots.
    pub roots: Roots,
    /// PEM files whose certificates are added as roots (private CAs).
    pub extra_ca: Vec<PathBuf>,
}

/// The rustls provider: `ring` only, whatever else is linked in.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
pub fn read_pem(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read --upstream-ca {}", path.display()))?;
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        certs.push(
            cert.map_err(|e| anyhow::anyhow!("invalid --upstream-ca {}: {e}", path.display()))?,
        );
    }
    if certs.is_empty() {
        bail!(
            "invalid --upstream-ca {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        );
    }
    Ok(certs)
}

impl UpstreamTls {
    /// The root store: the base set plus the extra CAs.
    pub fn root_store(&self) -> anyhow::Result<RootCertStore> {
        let mut store = RootCertStore::empty();
        match self.roots {
            Roots::Webpki => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Roots::Native => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _ignored) = store.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why = found
                        .errors
                        .first()
                        .map_or_else(|| "the store is empty".to_owned(), ToString::to_string);
                    bail!(
                        "--upstream-roots native: no usable certificate in the system store ({why}); set SSL_CERT_FILE, or use --upstream-roots webpki"
                    );
                }
            }
        }
        for path in &self.extra_ca {
            for cert in read_pem(path)? {
                store.add(cert).map_err(|e| {
                    anyhow::anyhow!(
                        "invalid --upstream-ca {}: a certificate is not a usable trust anchor: {e}",
                        path.display()
                    )
                })?;
            }
        }
        Ok(store)
    }

    /// The rustls client configuration (ALPN is set by the connector).
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("the TLS provider supports no protocol version")?
            .with_root_certificates(self.root_store()?)
            .with_no_client_auth();
        Ok(config)
    }

    /// A configuration that trusts nothing, for `http://` upstreams (never used to
    /// connect: the connector only starts TLS for `https://`).
    pub fn unused_config() -> anyhow::Result<ClientConfig> {
        Ok(ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("the TLS provider supports no protocol version")?
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth())
    }
}

/// The connector to an upstream: TCP (no Nagle), then TLS for `https://` (HTTP/2 or
/// HTTP/1.1 by ALPN, SNI from the URL), the whole under one timeout, so that a
/// stalled handshake is a connect error: the request was never sent.
#[derive(Clone)]
pub struct UpstreamConnector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
}

impl std::fmt::Debug for UpstreamConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConnector")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The connection to the upstream took longer than its limit.
#[derive(Debug, thiserror::Error)]
#[error("no connection within {0:?}")]
pub struct ConnectTimeout(pub Duration);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl UpstreamConnector {
    /// A connector for upstreams of `scheme`: for `https`, trusting what `tls` says
    /// (reads the `--upstream-ca` files and, for `--upstream-roots native`, the
    /// system store); `http` upstreams never start TLS. A connection (TCP and TLS)
    /// must be up within `timeout`.
    pub fn new(tls: &UpstreamTls, scheme: &Scheme, timeout: Duration) -> anyhow::Result<Self> {
        let config = if *scheme == Scheme::HTTPS {
            tls.client_config()?
        } else {
            UpstreamTls::unused_config()?
        };
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        Ok(Self {
            inner: hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_or_http()
                .enable_all_versions()
                .wrap_connector(http),
            timeout,
        })
    }
}

impl tower::Service<Uri> for UpstreamConnector {
    type Response = <HttpsConnector<HttpConnector> as tower::Service<Uri>>::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limit = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(r) => r,
                Err(_) => Err(Box::new(ConnectTimeout(limit)) as BoxError),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webpki_roots_are_compiled_in() {
        let tls = UpstreamTls::default();
        assert!(tls.root_store().unwrap().len() > 100);
        assert!(tls.client_config().is_ok());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let tls = UpstreamTls {
            roots: Roots::Webpki,
            extra_ca: vec![path],
        };
        let e = tls.root_store().unwrap_err().to_string();
        assert!(
            e.contains("--upstream-ca") && e.contains("no PEM certificate"),
            "{e}"
        );

        let missing = UpstreamTls {
            roots: Roots::Webpki,
            extra_ca: vec![dir.path().join("absent.pem")],
        };
        let e = format!("{:#}", missing.root_store().unwrap_err());
        assert!(e.contains("cannot read --upstream-ca"), "{e}");
    }
}
