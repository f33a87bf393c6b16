//! The configuration of `idemp serve`: flags, `IDEMP_…` environment variables and a
//! TOML file, merged with the precedence flag > environment > file > default.
//!
//! clap reads a flag or, when it is absent, its environment variable; whatever is
//! still unset comes from the file, then from the defaults in [`ServeConfig::new`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use http::{Method, Uri};
use idemp::store::DynStore;
use serde::Deserialize;

pub use super::tls::{Roots, UpstreamTls};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Arguments of `idemp serve` (every flag also reads `IDEMP_<FLAG>` and the
/// `--config` file's key of the same name with `_` for `-`).
#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// The upstream base URL (`http[s]://HOST[:PORT][/BASE]`).
    #[arg(long, env = "IDEMP_UPSTREAM")]
    pub upstream: Option<String>,
    /// Address to listen on [default: 127.0.0.1:8787].
    #[arg(long, env = "IDEMP_LISTEN")]
    pub listen: Option<String>,
    /// Admin address for /healthz and /metrics ("off" to disable) [default: 127.0.0.1:8788].
    #[arg(long, env = "IDEMP_ADMIN")]
    pub admin: Option<String>,
    /// Store URL: memory:[?max_entries=N] (bounded, default 1000000 records: the
    /// settled records that expire first are evicted), sqlite://PATH,
    /// redis://HOST:PORT/DB, postgres://USER@HOST:PORT/DB [default: sqlite://idemp.db].
    #[arg(long, env = "IDEMP_STORE")]
    pub store: Option<String>,
    /// Refuse guarded requests without an Idempotency-Key (400).
    #[arg(long, env = "IDEMP_REQUIRE_KEY", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub require_key: Option<bool>,
    /// Derive a key from scope + method + path + canonical body for requests without one.
    #[arg(long, env = "IDEMP_DERIVE_KEY", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub derive_key: Option<bool>,
    /// Pass requests through unguarded when the store is down (default: 503).
    #[arg(long, env = "IDEMP_FAIL_OPEN", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub fail_open: Option<bool>,
    /// Retention of stored responses [default: 24h].
    #[arg(long, env = "IDEMP_TTL")]
    pub ttl: Option<String>,
    /// Lease of a running request, renewed every lease/3 [default: 60s].
    #[arg(long, env = "IDEMP_LEASE")]
    pub lease: Option<String>,
    /// How long a duplicate waits for the running request before 409 [default: 10s].
    #[arg(long, env = "IDEMP_WAIT")]
    pub wait: Option<String>,
    /// Largest guarded request body [default: 8MiB].
    #[arg(long, env = "IDEMP_MAX_BODY")]
    pub max_body: Option<String>,
    /// Time for the whole upstream exchange, response body included: no response
    /// head in time is 504, a body still running is cut with an error [default: 120s].
    #[arg(long, env = "IDEMP_UPSTREAM_TIMEOUT")]
    pub upstream_timeout: Option<String>,
    /// Longest wait for requests in progress on shutdown; at least --upstream-timeout
    /// [default: --upstream-timeout + 5s].
    #[arg(long, env = "IDEMP_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<String>,
    /// Guarded methods, comma-separated [default: POST,PATCH].
    #[arg(long, env = "IDEMP_METHODS")]
    pub methods: Option<String>,
    /// Secret of the principal scope hash (same on every proxy sharing a store).
    #[arg(long, env = "IDEMP_SCOPE_SECRET", hide_env_values = true)]
    pub scope_secret: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "IDEMP_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    // --- The idempotency layer's settings (also per route in --config). ---
    /// Largest response kept for replay; a larger one streams through whole and its
    /// record says "executed, response not stored" [default: 8MiB].
    #[arg(long, env = "IDEMP_MAX_STORED_RESPONSE")]
    pub max_stored_response: Option<String>,
    /// What a retry gets when an earlier attempt's outcome was lost after the request
    /// was sent (timeout, reset, truncated answer, crash): `surface` answers 409
    /// outcome-ambiguous, `retake` runs it again [default: surface].
    #[arg(long, env = "IDEMP_ON_AMBIGUOUS", value_enum)]
    pub on_ambiguous: Option<AmbiguityPolicy>,
    /// How long an ambiguous record is surfaced before a retry may run it again
    /// [default: the ttl].
    #[arg(long, env = "IDEMP_AMBIGUOUS_HOLD")]
    pub ambiguous_hold: Option<String>,
    /// Send the key (derived keys too) upstream as Idempotency-Key.
    #[arg(long, env = "IDEMP_FORWARD_KEY", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub forward_key: Option<bool>,
    /// A request header that identifies the caller (repeatable; replaces the default
    /// list Authorization, Proxy-Authorization, x-api-key, api-key, x-goog-api-key).
    #[arg(
        long = "principal-header",
        env = "IDEMP_PRINCIPAL_HEADER",
        value_delimiter = ','
    )]
    pub principal_headers: Vec<String>,
    /// Response statuses stored and replayed: `default` (all but 408, 409, 425, 429
    /// and 5xx), or a list of codes and ranges, e.g. `200-299,400-404,422`.
    #[arg(long, env = "IDEMP_STORED_STATUSES")]
    pub stored_statuses: Option<String>,
    /// Response headers stored and replayed: `all` (every header but credentials and
    /// hop-by-hop ones, the default) or a comma-separated allow-list.
    #[arg(long, env = "IDEMP_REPLAY_HEADERS")]
    pub replay_headers: Option<String>,
    /// Most request body bytes buffered at once, all requests together; over it, 503
    /// with Retry-After [default: 256MiB].
    #[arg(long, env = "IDEMP_MAX_BUFFERED_REQUESTS")]
    pub max_buffered_requests: Option<String>,
    // The upstream connection and the server's own limits.
    /// PEM file of a CA to trust for an https:// upstream, on top of --upstream-roots
    /// (repeatable).
    #[arg(long = "upstream-ca", env = "IDEMP_UPSTREAM_CA", value_name = "FILE")]
    pub upstream_ca: Vec<PathBuf>,
    /// Base set of trusted roots for an https:// upstream: webpki (Mozilla's,
    /// compiled in) or native (the system's store) [default: webpki].
    #[arg(long, env = "IDEMP_UPSTREAM_ROOTS", value_enum)]
    pub upstream_roots: Option<Roots>,
    /// Longest pause between two chunks of an upstream response body before it is cut
    /// with an error [default: 60s].
    #[arg(long, env = "IDEMP_UPSTREAM_IDLE_TIMEOUT")]
    pub upstream_idle_timeout: Option<String>,
    /// Time for a client to send a whole request head; then the connection is closed
    /// [default: 10s].
    #[arg(long, env = "IDEMP_HEADER_TIMEOUT")]
    pub header_timeout: Option<String>,
    /// Time a connection may stay open with no request; then it is closed [default: 60s].
    #[arg(long, env = "IDEMP_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// Time for a client to send a request body, from the end of its head [default: 60s].
    #[arg(long, env = "IDEMP_BODY_TIMEOUT")]
    pub body_timeout: Option<String>,
    /// Most client connections open at once; the excess is refused at once with 503
    /// [default: 4096].
    #[arg(long, env = "IDEMP_MAX_CONNECTIONS")]
    pub max_connections: Option<String>,
    /// How often expired records are removed from the store [default: 60s].
    #[arg(long, env = "IDEMP_SWEEP_INTERVAL")]
    pub sweep_interval: Option<String>,
    /// TOML configuration file.
    #[arg(long, env = "IDEMP_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `--on-ambiguous`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AmbiguityPolicy {
    /// Answer retries 409 outcome-ambiguous (`x-should-retry: false`) until the hold
    /// passes or an operator resolves the record.
    Surface,
    /// Run the request again (at least once; safe with an upstream that honours
    /// `--forward-key`).
    Retake,
}

impl AmbiguityPolicy {
    fn to_guard(self) -> idemp::guard::OnAmbiguous {
        match self {
            AmbiguityPolicy::Surface => idemp::guard::OnAmbiguous::Surface,
            AmbiguityPolicy::Retake => idemp::guard::OnAmbiguous::Retake,
        }
    }
}

/// A list in a file: `"a,b"` or `["a", "b"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ListValue {
    List(Vec<String>),
    Text(String),
}

impl ListValue {
    fn items(self) -> Vec<String> {
        match self {
            ListValue::List(l) => l,
            ListValue::Text(t) => t.split(',').map(|s| s.trim().to_owned()).collect(),
        }
    }
}

/// A `[[route]]` table of the `--config` file: the layer's settings under a path
/// prefix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    prefix: String,
    methods: Option<MethodsValue>,
    require_key: Option<bool>,
    derive_key: Option<bool>,
    ttl: Option<DurationValue>,
    on_ambiguous: Option<AmbiguityPolicy>,
    ambiguous_hold: Option<DurationValue>,
    max_stored_response: Option<SizeValue>,
}

/// The layer's settings for the routes under a path prefix.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// The path prefix (matched on segment boundaries).
    pub prefix: String,
    /// The settings.
    pub settings: idemp::http::RouteSettings,
}

/// A duration in a file: `"24h"`, `"500ms"`, or a number of seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    /// A number of seconds.
    Seconds(u64),
    /// As on the command line (see [`parse_duration`]).
    Text(String),
}

/// A size in a file: `"8MiB"`, or a number of bytes.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    /// A number of bytes.
    Bytes(u64),
    /// As on the command line (see [`parse_size`]).
    Text(String),
}

/// Methods in a file: `"POST,PATCH"` or `["POST", "PATCH"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum MethodsValue {
    List(Vec<String>),
    Text(String),
}

/// The `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    upstream: Option<String>,
    listen: Option<String>,
    admin: Option<String>,
    store: Option<String>,
    require_key: Option<bool>,
    derive_key: Option<bool>,
    fail_open: Option<bool>,
    ttl: Option<DurationValue>,
    lease: Option<DurationValue>,
    wait: Option<DurationValue>,
    max_body: Option<SizeValue>,
    upstream_timeout: Option<DurationValue>,
    shutdown_timeout: Option<DurationValue>,
    methods: Option<MethodsValue>,
    scope_secret: Option<String>,
    log_format: Option<LogFormat>,
    // The idempotency layer's settings.
    max_stored_response: Option<SizeValue>,
    on_ambiguous: Option<AmbiguityPolicy>,
    ambiguous_hold: Option<DurationValue>,
    forward_key: Option<bool>,
    #[serde(alias = "principal_header")]
    principal_headers: Option<ListValue>,
    stored_statuses: Option<ListValue>,
    replay_headers: Option<ListValue>,
    max_buffered_requests: Option<SizeValue>,
    #[serde(default)]
    route: Vec<FileRoute>,
    // The upstream connection and the server's own limits.
    upstream_ca: Option<PathsValue>,
    upstream_roots: Option<Roots>,
    upstream_idle_timeout: Option<DurationValue>,
    header_timeout: Option<DurationValue>,
    idle_timeout: Option<DurationValue>,
    body_timeout: Option<DurationValue>,
    max_connections: Option<u64>,
    sweep_interval: Option<DurationValue>,
}

/// Paths in a file: `"ca.pem"` or `["a.pem", "b.pem"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PathsValue {
    /// Several paths.
    List(Vec<PathBuf>),
    /// One path.
    One(PathBuf),
}

/// The paths of a repeatable flag (`args`, when given) or of the file.
pub fn paths_of(args: Vec<PathBuf>, file: Option<PathsValue>) -> Vec<PathBuf> {
    if !args.is_empty() {
        return args;
    }
    match file {
        Some(PathsValue::List(l)) => l,
        Some(PathsValue::One(p)) => vec![p],
        None => Vec::new(),
    }
}

/// The resolved configuration of the proxy.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The upstream base URL.
    pub upstream: Uri,
    /// Where to listen (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Where to serve /healthz and /metrics (`None`: nowhere).
    pub admin: Option<SocketAddr>,
    /// The store URL.
    pub store: String,
    /// An already opened store, used instead of `store` (in-process callers).
    pub store_instance: Option<DynStore>,
    /// Refuse guarded requests without a key.
    pub require_key: bool,
    /// Derive keys for guarded requests without one.
    pub derive_key: bool,
    /// Pass through when the store is down.
    pub fail_open: bool,
    /// Retention of stored responses.
    pub ttl: Duration,
    /// Lease of a running request.
    pub lease: Duration,
    /// How long duplicates wait.
    pub wait: Duration,
    /// Largest guarded request body.
    pub max_body: usize,
    /// The whole upstream exchange, response body included.
    pub upstream_timeout: Duration,
    /// Longest wait for requests in progress on shutdown (at least
    /// `upstream_timeout`).
    pub shutdown_timeout: Duration,
    /// Guarded methods.
    pub methods: Vec<Method>,
    /// Secret of the principal scope hash.
    pub scope_secret: Option<Vec<u8>>,
    /// Log format.
    pub log_format: LogFormat,
    // The idempotency layer's settings.
    /// Largest response kept for replay.
    pub max_stored_response: usize,
    /// The ambiguity policy.
    pub on_ambiguous: AmbiguityPolicy,
    /// How long an ambiguous record is surfaced (`None`: the ttl).
    pub ambiguous_hold: Option<Duration>,
    /// Send keys upstream.
    pub forward_key: bool,
    /// The credential headers (`None`: the layer's default list).
    pub principal_headers: Option<Vec<http::HeaderName>>,
    /// Stored statuses.
    pub stored_statuses: idemp::http::StatusSet,
    /// Replayed headers.
    pub replay_headers: idemp::http::ReplayHeaders,
    /// Most request body bytes buffered at once.
    pub max_buffered_requests: usize,
    /// Per-route settings.
    pub routes: Vec<RouteConfig>,
    /// How `https://` upstreams are trusted.
    pub upstream_tls: UpstreamTls,
    /// Longest pause between two chunks of an upstream response body.
    pub upstream_idle_timeout: Duration,
    /// The server's limits on client connections.
    pub limits: Limits,
    /// How often expired records are swept.
    pub sweep_interval: Duration,
}

/// The server's limits on client connections (see `serve::server`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time for a whole request head.
    pub header_timeout: Duration,
    /// Time a connection may stay open with no request.
    pub idle_timeout: Duration,
    /// Time for a request body, from the end of its head.
    pub body_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_connections: 4096,
        }
    }
}

/// What `--shutdown-timeout` adds to `--upstream-timeout` when it is not set: time
/// to settle the records of the last calls.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// The longest duration any flag accepts (about 100 years): far beyond any sensible
/// value, and far below what would overflow a clock.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The most connections `--max-connections` accepts.
pub const MAX_CONNECTIONS: usize = 1 << 20;

impl ServeConfig {
    /// The defaults, in front of `upstream`.
    pub fn new(upstream: &str) -> anyhow::Result<Self> {
        Ok(Self {
            upstream: parse_upstream(upstream)?,
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 8788))),
            store: "sqlite://idemp.db".into(),
            store_instance: None,
            require_key: false,
            derive_key: false,
            fail_open: false,
            ttl: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(60),
            wait: Duration::from_secs(10),
            max_body: 8 << 20,
            upstream_timeout: Duration::from_secs(120),
            shutdown_timeout: Duration::from_secs(120) + SHUTDOWN_MARGIN,
            methods: vec![Method::POST, Method::PATCH],
            scope_secret: None,
            log_format: LogFormat::Text,
            max_stored_response: 8 << 20,
            on_ambiguous: AmbiguityPolicy::Surface,
            ambiguous_hold: None,
            forward_key: false,
            principal_headers: None,
            stored_statuses: idemp::http::StatusSet::default_stored(),
            replay_headers: idemp::http::ReplayHeaders::AllSafe,
            max_buffered_requests: idemp::http::DEFAULT_MAX_BUFFERED_REQUEST_BYTES,
            routes: Vec::new(),
            upstream_tls: UpstreamTls::default(),
            upstream_idle_timeout: Duration::from_secs(60),
            limits: Limits::default(),
            sweep_interval: Duration::from_secs(60),
        })
    }

    /// Applies the idempotency layer's settings to its builder.
    pub fn layer_builder(&self, mut b: idemp::http::Builder) -> idemp::http::Builder {
        b = b
            .max_stored_response(self.max_stored_response)
            .on_ambiguous(self.on_ambiguous.to_guard())
            .forward_key(self.forward_key)
            .stored_statuses(self.stored_statuses.clone())
            .replay_headers(self.replay_headers.clone())
            .max_buffered_request_bytes(self.max_buffered_requests);
        if let Some(hold) = self.ambiguous_hold {
            b = b.ambiguous_hold(hold);
        }
        if let Some(names) = &self.principal_headers {
            b = b.principal_headers(names.clone());
        }
        for r in &self.routes {
            b = b.route_settings(r.prefix.clone(), r.settings.clone());
        }
        b
    }

    /// Merges flags/environment (`args`) over the `--config` file over the defaults.
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let upstream = args
            .upstream
            .or(file.upstream)
            .context("--upstream is required (or IDEMP_UPSTREAM, or `upstream` in --config)")?;
        let mut c = Self::new(&upstream)?;
        if let Some(v) = args.listen.or(file.listen) {
            c.listen = parse_addr("--listen", &v)?;
        }
        if let Some(v) = args.admin.or(file.admin) {
            c.admin = if v.eq_ignore_ascii_case("off") {
                None
            } else {
                Some(parse_addr("--admin", &v)?)
            };
        }
        if let Some(v) = args.store.or(file.store) {
            c.store = v;
        }
        c.require_key = args
            .require_key
            .or(file.require_key)
            .unwrap_or(c.require_key);
        c.derive_key = args.derive_key.or(file.derive_key).unwrap_or(c.derive_key);
        c.fail_open = args.fail_open.or(file.fail_open).unwrap_or(c.fail_open);
        let dur = |flag: &str, arg: Option<String>, file: Option<DurationValue>, default| {
            duration_of(flag, arg, file).map(|d| d.unwrap_or(default))
        };
        c.ttl = dur("--ttl", args.ttl, file.ttl, c.ttl)?;
        c.lease = dur("--lease", args.lease, file.lease, c.lease)?;
        c.wait = dur("--wait", args.wait, file.wait, c.wait)?;
        c.upstream_timeout = dur(
            "--upstream-timeout",
            args.upstream_timeout,
            file.upstream_timeout,
            c.upstream_timeout,
        )?;
        c.shutdown_timeout = dur(
            "--shutdown-timeout",
            args.shutdown_timeout,
            file.shutdown_timeout,
            c.upstream_timeout.saturating_add(SHUTDOWN_MARGIN),
        )?;
        c.upstream_idle_timeout = dur(
            "--upstream-idle-timeout",
            args.upstream_idle_timeout,
            file.upstream_idle_timeout,
            c.upstream_idle_timeout,
        )?;
        c.limits.header_timeout = dur(
            "--header-timeout",
            args.header_timeout,
            file.header_timeout,
            c.limits.header_timeout,
        )?;
        c.limits.idle_timeout = dur(
            "--idle-timeout",
            args.idle_timeout,
            file.idle_timeout,
            c.limits.idle_timeout,
        )?;
        c.limits.body_timeout = dur(
            "--body-timeout",
            args.body_timeout,
            file.body_timeout,
            c.limits.body_timeout,
        )?;
        c.sweep_interval = dur(
            "--sweep-interval",
            args.sweep_interval,
            file.sweep_interval,
            c.sweep_interval,
        )?;
        c.limits.max_connections = match (args.max_connections, file.max_connections) {
            (Some(s), _) => s.trim().parse::<usize>().map_err(|_| {
                anyhow::anyhow!("invalid --max-connections `{s}`: write a whole number, e.g. 4096")
            })?,
            (None, Some(n)) => usize::try_from(n).unwrap_or(usize::MAX),
            (None, None) => c.limits.max_connections,
        };
        c.upstream_tls.roots = args
            .upstream_roots
            .or(file.upstream_roots)
            .unwrap_or_default();
        c.upstream_tls.extra_ca = paths_of(args.upstream_ca, file.upstream_ca);
        c.max_body = size_of("--max-body", args.max_body, file.max_body)?.unwrap_or(c.max_body);
        let methods = match (args.methods, file.methods) {
            (Some(s), _) | (None, Some(MethodsValue::Text(s))) => {
                Some(s.split(',').map(|m| m.trim().to_owned()).collect())
            }
            (None, Some(MethodsValue::List(l))) => Some(l),
            (None, None) => None,
        };
        if let Some(list) = methods {
            c.methods = parse_methods(&list)?;
        }
        c.scope_secret = args
            .scope_secret
            .or(file.scope_secret)
            .map(String::into_bytes);
        c.log_format = args.log_format.or(file.log_format).unwrap_or_default();
        resolve_layer(
            &mut c,
            LayerArgs {
                max_stored_response: args.max_stored_response,
                on_ambiguous: args.on_ambiguous,
                ambiguous_hold: args.ambiguous_hold,
                forward_key: args.forward_key,
                principal_headers: args.principal_headers,
                stored_statuses: args.stored_statuses,
                replay_headers: args.replay_headers,
                max_buffered_requests: args.max_buffered_requests,
            },
            LayerFile {
                max_stored_response: file.max_stored_response,
                on_ambiguous: file.on_ambiguous,
                ambiguous_hold: file.ambiguous_hold,
                forward_key: file.forward_key,
                principal_headers: file.principal_headers,
                stored_statuses: file.stored_statuses,
                replay_headers: file.replay_headers,
                max_buffered_requests: file.max_buffered_requests,
                route: file.route,
            },
        )?;
        c.validate()?;
        Ok(c)
    }

    /// Checks every value against its bounds and the values against each other, so
    /// that a bad one is a one-line error at start, never a panic or a surprise at
    /// request time. [`resolve`](Self::resolve) and `serve::start` call it.
    pub fn validate(&self) -> anyhow::Result<()> {
        let within = |flag: &str, d: Duration, min: Duration, max: Duration| {
            if d < min {
                if min == Duration::from_nanos(1) {
                    bail!("--{flag} must be above zero");
                }
                bail!("--{flag} {} is too short (at least {})", show(d), show(min));
            }
            if d > max {
                bail!("--{flag} {} is too long (at most {})", show(d), show(max));
            }
            Ok(())
        };
        let nonzero = Duration::from_nanos(1);
        let hour = Duration::from_secs(3600);
        let day = 24 * hour;
        within("ttl", self.ttl, Duration::from_secs(1), 3650 * day)?;
        within("lease", self.lease, Duration::from_millis(30), day)?;
        within("wait", self.wait, Duration::ZERO, hour)?;
        within("upstream-timeout", self.upstream_timeout, nonzero, day)?;
        within(
            "upstream-idle-timeout",
            self.upstream_idle_timeout,
            nonzero,
            day,
        )?;
        within("shutdown-timeout", self.shutdown_timeout, nonzero, 2 * day)?;
        within("header-timeout", self.limits.header_timeout, nonzero, hour)?;
        within("idle-timeout", self.limits.idle_timeout, nonzero, day)?;
        within("body-timeout", self.limits.body_timeout, nonzero, day)?;
        within(
            "sweep-interval",
            self.sweep_interval,
            Duration::from_millis(100),
            day,
        )?;
        if let Some(hold) = self.ambiguous_hold {
            within("ambiguous-hold", hold, Duration::from_secs(1), 3650 * day)?;
        }
        if self.shutdown_timeout < self.upstream_timeout {
            bail!(
                "--shutdown-timeout {} is shorter than --upstream-timeout {}: a shutdown would cut upstream calls still running, leaving their outcome unknown; raise --shutdown-timeout or lower --upstream-timeout",
                show(self.shutdown_timeout),
                show(self.upstream_timeout)
            );
        }
        if self.limits.max_connections == 0 || self.limits.max_connections > MAX_CONNECTIONS {
            bail!(
                "--max-connections {} is out of bounds (1 to {MAX_CONNECTIONS})",
                self.limits.max_connections
            );
        }
        if self.max_body == 0 {
            bail!("--max-body must be above zero");
        }
        if self.upstream.scheme_str() != Some("https")
            && (!self.upstream_tls.extra_ca.is_empty()
                || self.upstream_tls.roots != Roots::default())
        {
            bail!(
                "--upstream-ca and --upstream-roots apply to https:// upstreams only; the upstream is {}",
                self.upstream
            );
        }
        Ok(())
    }
}

/// A duration as a user would write it (`1m 30s`, `500ms`).
fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The layer's flags.
struct LayerArgs {
    max_stored_response: Option<String>,
    on_ambiguous: Option<AmbiguityPolicy>,
    ambiguous_hold: Option<String>,
    forward_key: Option<bool>,
    principal_headers: Vec<String>,
    stored_statuses: Option<String>,
    replay_headers: Option<String>,
    max_buffered_requests: Option<String>,
}

/// The layer's keys of the file.
struct LayerFile {
    max_stored_response: Option<SizeValue>,
    on_ambiguous: Option<AmbiguityPolicy>,
    ambiguous_hold: Option<DurationValue>,
    forward_key: Option<bool>,
    principal_headers: Option<ListValue>,
    stored_statuses: Option<ListValue>,
    replay_headers: Option<ListValue>,
    max_buffered_requests: Option<SizeValue>,
    route: Vec<FileRoute>,
}

/// A size from its flag (or environment variable) `arg`, else from the file.
pub fn size_of(
    flag: &str,
    arg: Option<String>,
    file: Option<SizeValue>,
) -> anyhow::Result<Option<usize>> {
    Ok(match (arg, file) {
        (Some(s), _) | (None, Some(SizeValue::Text(s))) => Some(parse_size(flag, &s)?),
        (None, Some(SizeValue::Bytes(n))) => Some(
            usize::try_from(n)
                .with_context(|| format!("{flag} {n} is too large for this machine"))?,
        ),
        (None, None) => None,
    })
}

/// A duration from its flag (or environment variable) `arg`, else from the file;
/// both within the bounds of [`parse_duration`].
pub fn duration_of(
    flag: &str,
    arg: Option<String>,
    file: Option<DurationValue>,
) -> anyhow::Result<Option<Duration>> {
    Ok(match (arg, file) {
        (Some(s), _) | (None, Some(DurationValue::Text(s))) => Some(parse_duration(flag, &s)?),
        (None, Some(DurationValue::Seconds(n))) => Some(parse_duration(flag, &n.to_string())?),
        (None, None) => None,
    })
}

fn resolve_layer(c: &mut ServeConfig, args: LayerArgs, file: LayerFile) -> anyhow::Result<()> {
    if let Some(n) = size_of(
        "--max-stored-response",
        args.max_stored_response,
        file.max_stored_response,
    )? {
        c.max_stored_response = n;
    }
    if let Some(n) = size_of(
        "--max-buffered-requests",
        args.max_buffered_requests,
        file.max_buffered_requests,
    )? {
        if n == 0 {
            bail!("--max-buffered-requests must be above zero");
        }
        c.max_buffered_requests = n;
    }
    c.on_ambiguous = args
        .on_ambiguous
        .or(file.on_ambiguous)
        .unwrap_or(c.on_ambiguous);
    c.ambiguous_hold = duration_of("--ambiguous-hold", args.ambiguous_hold, file.ambiguous_hold)?;
    c.forward_key = args
        .forward_key
        .or(file.forward_key)
        .unwrap_or(c.forward_key);
    let principal = if args.principal_headers.is_empty() {
        file.principal_headers.map(ListValue::items)
    } else {
        Some(args.principal_headers)
    };
    if let Some(names) = principal {
        c.principal_headers = Some(parse_header_names("--principal-header", &names)?);
    }
    let statuses = match args.stored_statuses {
        Some(s) => Some(s.split(',').map(|p| p.trim().to_owned()).collect()),
        None => file.stored_statuses.map(ListValue::items),
    };
    if let Some(list) = statuses {
        c.stored_statuses = parse_statuses(&list)?;
    }
    let replay = match args.replay_headers {
        Some(s) => Some(s.split(',').map(|p| p.trim().to_owned()).collect()),
        None => file.replay_headers.map(ListValue::items),
    };
    if let Some(list) = replay {
        c.replay_headers = if list.len() == 1 && list[0].eq_ignore_ascii_case("all") {
            idemp::http::ReplayHeaders::AllSafe
        } else {
            idemp::http::ReplayHeaders::Only(parse_header_names("--replay-headers", &list)?)
        };
    }
    c.routes.clear();
    for r in file.route {
        let prefix = r.prefix.trim().to_owned();
        let what = format!("[[route]] prefix = {prefix:?}");
        if idemp::http::path::normalize(&prefix).is_err() {
            bail!("{what}: the prefix must be an absolute path");
        }
        let mut s = idemp::http::RouteSettings::new();
        if let Some(m) = r.methods {
            let list = match m {
                MethodsValue::List(l) => l,
                MethodsValue::Text(t) => t.split(',').map(|m| m.trim().to_owned()).collect(),
            };
            s = s.methods(parse_methods(&list).with_context(|| what.clone())?);
        }
        if let Some(v) = r.require_key {
            s = s.require_key(v);
        }
        if let Some(v) = r.derive_key {
            s = s.derive_key(v);
        }
        if let Some(d) = duration_of("ttl", None, r.ttl).with_context(|| what.clone())? {
            check_route_duration(&what, "ttl", d)?;
            s = s.ttl(d);
        }
        if let Some(p) = r.on_ambiguous {
            s = s.on_ambiguous(p.to_guard());
        }
        if let Some(d) =
            duration_of("ambiguous_hold", None, r.ambiguous_hold).with_context(|| what.clone())?
        {
            check_route_duration(&what, "ambiguous_hold", d)?;
            s = s.ambiguous_hold(d);
        }
        if let Some(n) = size_of("max_stored_response", None, r.max_stored_response)
            .with_context(|| what.clone())?
        {
            s = s.max_stored_response(n);
        }
        c.routes.push(RouteConfig {
            prefix,
            settings: s,
        });
    }
    Ok(())
}

/// A route's ttl or hold: the bounds of `--ttl` (1 s to ten years).
fn check_route_duration(what: &str, key: &str, d: Duration) -> anyhow::Result<()> {
    if d < Duration::from_secs(1) || d > Duration::from_secs(3650 * 24 * 3600) {
        bail!("{what}: `{key}` {d:?} is out of bounds (1s to 3650 days)");
    }
    Ok(())
}

fn parse_header_names(flag: &str, list: &[String]) -> anyhow::Result<Vec<http::HeaderName>> {
    let mut out = Vec::new();
    for n in list.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        out.push(
            http::HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                .map_err(|_| anyhow::anyhow!("invalid {flag} `{n}`: not a header name"))?,
        );
    }
    if out.is_empty() {
        bail!("{flag} names no header");
    }
    Ok(out)
}

/// `default`, or codes and ranges: `200-299,400-404,422`.
fn parse_statuses(list: &[String]) -> anyhow::Result<idemp::http::StatusSet> {
    if list.len() == 1 && list[0].eq_ignore_ascii_case("default") {
        return Ok(idemp::http::StatusSet::default_stored());
    }
    let bad = |p: &str| {
        anyhow::anyhow!(
            "invalid --stored-statuses entry `{p}`: write `default`, codes or ranges of 100-999, e.g. 200-299,400-404"
        )
    };
    let mut codes = Vec::new();
    for p in list.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let (lo, hi) = match p.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (p, p),
        };
        let lo: u16 = lo.parse().map_err(|_| bad(p))?;
        let hi: u16 = hi.parse().map_err(|_| bad(p))?;
        if !(100..=999).contains(&lo) || !(100..=999).contains(&hi) || lo > hi {
            return Err(bad(p));
        }
        codes.extend(lo..=hi);
    }
    if codes.is_empty() {
        bail!("--stored-statuses names no status");
    }
    Ok(codes.into_iter().collect())
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    read_toml(path)
}

/// Reads a `--config` TOML file; an error is one line that names the file.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --config {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "invalid --config {}: {}",
            path.display(),
            e.to_string().replace('\n', " ")
        )
    })
}

/// Parses the upstream URL: `http[s]://HOST[:PORT][/BASE]`.
pub fn parse_upstream(s: &str) -> anyhow::Result<Uri> {
    let uri: Uri = s
        .trim()
        .parse()
        .with_context(|| format!("invalid --upstream `{s}`"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => bail!("invalid --upstream `{s}`: write http[s]://HOST[:PORT][/BASE]"),
    }
    let Some(authority) = uri.authority() else {
        bail!("invalid --upstream `{s}`: missing host");
    };
    if authority.host().is_empty() {
        bail!("invalid --upstream `{s}`: missing host");
    }
    if authority.as_str().contains('@') {
        bail!(
            "invalid --upstream `{s}`: credentials in the URL are not supported; the client's own headers are forwarded"
        );
    }
    if idemp::http::path::normalize(uri.path()).is_err() {
        bail!("invalid --upstream `{s}`: the base path has no normal form");
    }
    if uri.query().is_some() {
        bail!("invalid --upstream `{s}`: a query string is not allowed");
    }
    Ok(uri)
}

/// Parses a listening address: `IP:PORT`, or `localhost:PORT` (127.0.0.1).
pub fn parse_addr(flag: &str, s: &str) -> anyhow::Result<SocketAddr> {
    let s = s.trim();
    let s = s
        .strip_prefix("localhost:")
        .map_or_else(|| s.to_owned(), |port| format!("127.0.0.1:{port}"));
    s.parse()
        .with_context(|| format!("invalid {flag} `{s}`: write IP:PORT, e.g. 127.0.0.1:8787"))
}

/// Parses a duration: `24h`, `60s`, `1h 30m`, `500ms`, or a bare number of seconds.
pub fn parse_duration(flag: &str, s: &str) -> anyhow::Result<Duration> {
    let t = s.trim();
    let d = match t.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(t).map_err(|e| {
            anyhow::anyhow!("invalid {flag} `{s}`: {e} (write e.g. 500ms, 10s, 5m, 24h)")
        })?,
    };
    if d > MAX_DURATION {
        bail!("invalid {flag} `{s}`: too long (at most 100 years)");
    }
    Ok(d)
}

/// Parses a size: `8MiB`, `512KiB`, `1GB`, `100kb`, `4096`, `1.5MiB`. `K`, `M`, `G`
/// alone are binary (KiB, MiB, GiB); `KB`, `MB`, `GB` are decimal.
pub fn parse_size(flag: &str, s: &str) -> anyhow::Result<usize> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let bad = || {
        anyhow::anyhow!(
            "invalid {flag} `{s}`: write a number of bytes with an optional unit (B, KiB, MiB, GiB, KB, MB, GB), e.g. 8MiB"
        )
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        _ => return Err(bad()),
    };
    let bytes = (n * mult).round();
    if !bytes.is_finite() || bytes < 0.0 || bytes > usize::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as usize)
}

fn parse_methods(list: &[String]) -> anyhow::Result<Vec<Method>> {
    let mut out = Vec::new();
    for m in list.iter().filter(|m| !m.is_empty()) {
        let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| anyhow::anyhow!("invalid --methods entry `{m}`"))?;
        out.push(method);
    }
    if out.is_empty() {
        bail!("--methods names no method");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("x", "8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("x", "8 mib").unwrap(), 8 << 20);
        assert_eq!(parse_size("x", "512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("x", "1K").unwrap(), 1024);
        assert_eq!(parse_size("x", "1kb").unwrap(), 1000);
        assert_eq!(parse_size("x", "4096").unwrap(), 4096);
        assert_eq!(parse_size("x", "1.5MiB").unwrap(), 3 << 19);
        for bad in ["", "MiB", "8 parsecs", "-1", "1..2M"] {
            let e = parse_size("--max-body", bad).unwrap_err().to_string();
            assert!(e.contains("--max-body") && e.contains("8MiB"), "{bad}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("x", "24h").unwrap(),
            Duration::from_secs(86400)
        );
        assert_eq!(
            parse_duration("x", "500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_duration("x", "1h 30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(parse_duration("x", "15").unwrap(), Duration::from_secs(15));
        let e = parse_duration("--ttl", "soon").unwrap_err().to_string();
        assert!(e.contains("--ttl") && e.contains("24h"), "{e}");
    }

    #[test]
    fn upstreams() {
        assert!(parse_upstream("http://127.0.0.1:9000").is_ok());
        assert!(parse_upstream("http://api.internal/v1").is_ok());
        assert!(parse_upstream("https://api.anthropic.com").is_ok());
        assert!(parse_upstream("https://[::1]:8443/v1").is_ok());
        assert!(parse_upstream("127.0.0.1:9000").is_err());
        assert!(parse_upstream("ftp://h").is_err());
        assert!(parse_upstream("http://h/?a=1").is_err());
        let e = parse_upstream("https://user:pw@h").unwrap_err().to_string();
        assert!(e.contains("credentials"), "{e}");
        assert!(parse_upstream("http://h/../x").is_err());
    }

    #[test]
    fn layer_flags_and_route_tables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idemp.toml");
        std::fs::write(
            &path,
            r#"
upstream = "http://127.0.0.1:9"
max_stored_response = "1MiB"
on_ambiguous = "retake"
ambiguous_hold = "10m"
principal_headers = ["x-api-key", "x-tenant"]
stored_statuses = "200-299,404"
replay_headers = ["content-type", "x-request-id"]

[[route]]
prefix = "/v1/messages"
derive_key = true
on_ambiguous = "surface"
max_stored_response = "64MiB"

[[route]]
prefix = "/v1/charges"
require_key = true
methods = ["post"]
ttl = "48h"
"#,
        )
        .unwrap();
        let c = ServeConfig::resolve(ServeArgs {
            config: Some(path.clone()),
            on_ambiguous: Some(AmbiguityPolicy::Surface),
            forward_key: Some(true),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.max_stored_response, 1 << 20);
        assert_eq!(c.on_ambiguous, AmbiguityPolicy::Surface, "flag beats file");
        assert_eq!(c.ambiguous_hold, Some(Duration::from_secs(600)));
        assert!(c.forward_key);
        assert_eq!(
            c.principal_headers.as_deref().unwrap(),
            [
                http::HeaderName::from_static("x-api-key"),
                http::HeaderName::from_static("x-tenant")
            ]
        );
        assert!(c.stored_statuses.contains(http::StatusCode::NOT_FOUND));
        assert!(!c.stored_statuses.contains(http::StatusCode::BAD_REQUEST));
        assert!(c.stored_statuses.contains(http::StatusCode::ACCEPTED));
        assert!(
            matches!(c.replay_headers, idemp::http::ReplayHeaders::Only(ref l) if l.len() == 2)
        );
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[0].prefix, "/v1/messages");

        let flags = ServeConfig::resolve(ServeArgs {
            upstream: Some("http://h:1".into()),
            principal_headers: vec!["X-Api-Key".into()],
            stored_statuses: Some("default".into()),
            max_stored_response: Some("512KiB".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            flags.principal_headers.unwrap(),
            [http::HeaderName::from_static("x-api-key")]
        );
        assert_eq!(flags.max_stored_response, 512 << 10);
        for (args, needle) in [
            (
                ServeArgs {
                    stored_statuses: Some("2xx".into()),
                    ..Default::default()
                },
                "--stored-statuses",
            ),
            (
                ServeArgs {
                    principal_headers: vec!["bad header".into()],
                    ..Default::default()
                },
                "--principal-header",
            ),
            (
                ServeArgs {
                    max_stored_response: Some("lots".into()),
                    ..Default::default()
                },
                "--max-stored-response",
            ),
            (
                ServeArgs {
                    ambiguous_hold: Some("soon".into()),
                    ..Default::default()
                },
                "--ambiguous-hold",
            ),
        ] {
            let e = ServeConfig::resolve(ServeArgs {
                upstream: Some("http://h:1".into()),
                ..args
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains(needle), "{e}");
        }
        std::fs::write(
            &path,
            "upstream = \"http://h:1\"\n[[route]]\nprefix = \"/x\"\nderive = true\n",
        )
        .unwrap();
        let e = ServeConfig::resolve(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("derive"), "{e}");
    }

    #[test]
    fn precedence_is_flag_then_file_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idemp.toml");
        std::fs::write(
            &path,
            r#"
upstream = "http://127.0.0.1:9"
listen = "127.0.0.1:7000"
ttl = "2h"
wait = 3
max_body = "1KiB"
require_key = true
methods = ["post", "put"]
"#,
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:7001".into()),
            require_key: Some(false),
            ..Default::default()
        };
        let c = ServeConfig::resolve(args).unwrap();
        assert_eq!(c.listen.port(), 7001, "flag beats file");
        assert!(!c.require_key, "an explicit false flag beats the file");
        assert_eq!(c.ttl, Duration::from_secs(7200), "file beats default");
        assert_eq!(c.wait, Duration::from_secs(3));
        assert_eq!(c.max_body, 1024);
        assert_eq!(c.methods, vec![Method::POST, Method::PUT]);
        assert_eq!(c.lease, Duration::from_secs(60), "default");
        assert_eq!(c.store, "sqlite://idemp.db");

        std::fs::write(&path, "upstream = \"http://h:1\"\ntll = \"2h\"\n").unwrap();
        let e = ServeConfig::resolve(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("tll"), "{e}");
    }
}
