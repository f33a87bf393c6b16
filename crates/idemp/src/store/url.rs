//! Store URLs, the same in the library and the CLI.
//!
//! | URL | store |
//! |---|---|
//! | `memory:`, `memory:?max_entries=N` | [`MemoryStore`](super::MemoryStore), bounded to `N` records (default [`DEFAULT_URL_MAX_ENTRIES`](super::memory::DEFAULT_URL_MAX_ENTRIES)) |
//! | `sqlite://PATH` (`sqlite:///abs/path`, `sqlite://rel/path`, `sqlite::memory:` is refused) | SQLite file |
//! | `redis://[USER:PASS@]HOST[:PORT][/DB][?prefix=P][&wait_replicas=N[&wait_timeout_ms=T]]`, `rediss://…` | Redis |
//! | `redis+cluster://HOST:PORT[,HOST:PORT…][?prefix=P]` | Redis Cluster |
//! | `postgres://USER@HOST[:PORT]/DB[?schema=S]`, `postgresql://…` | PostgreSQL |
//!
//! ```
//! use idemp::store::StoreUrl;
//! let url: StoreUrl = "redis://127.0.0.1:6379/2?prefix=app1".parse().unwrap();
//! assert_eq!(url.scheme(), "redis");
//! assert!("ftp://x".parse::<StoreUrl>().is_err());
//! let mem: StoreUrl = "memory:?max_entries=100000".parse().unwrap();
//! assert_eq!(mem, StoreUrl::Memory { max_entries: Some(100_000) });
//! let e = "memory:?max_entries=lots".parse::<StoreUrl>().unwrap_err();
//! assert!(e.to_string().contains("max_entries"), "{e}");
//! ```

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The default `wait_timeout_ms` of `?wait_replicas=N`.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest `wait_timeout_ms` accepted (an hour).
const MAX_WAIT_TIMEOUT_MS: u64 = 3_600_000;

/// Wait for replicas after each write (`?wait_replicas=N&wait_timeout_ms=T` on a
/// `redis://` URL): the Redis store then follows each settle and claim by
/// `WAIT N T` on the same connection, so an acknowledged write is on `N` replicas
/// and survives the failover to one of them. See the Redis store's `replicas` module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitReplicas {
    /// How many replicas must acknowledge each write (at least 1).
    pub replicas: u32,
    /// How long to wait for them (at least 1 ms; `WAIT 0` would block forever).
    pub timeout: Duration,
}

impl WaitReplicas {
    /// Waits for `replicas` replicas (at least 1) for up to `timeout` (at least 1 ms,
    /// at most an hour).
    pub fn new(replicas: u32, timeout: Duration) -> Self {
        Self {
            replicas: replicas.max(1),
            timeout: timeout.clamp(
                Duration::from_millis(1),
                Duration::from_millis(MAX_WAIT_TIMEOUT_MS),
            ),
        }
    }
}

/// A parsed store URL.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreUrl {
    /// `memory:` or `memory:?max_entries=N`
    Memory {
        /// The bound on records (`?max_entries=`); `None`: the default of
        /// [`open`](super::open), [`DEFAULT_URL_MAX_ENTRIES`](super::memory::DEFAULT_URL_MAX_ENTRIES).
        max_entries: Option<usize>,
    },
    /// `sqlite://PATH`
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
    /// `redis://…` or `rediss://…`
    Redis {
        /// The URL for the redis client, without idemp's own query parameters.
        url: String,
        /// Key prefix (`?prefix=`), so many apps can share one Redis.
        prefix: Option<String>,
        /// `?wait_replicas=N[&wait_timeout_ms=T]`: wait for replicas after writes.
        wait_replicas: Option<WaitReplicas>,
    },
    /// `redis+cluster://HOST:PORT,HOST:PORT`
    RedisCluster {
        /// One `redis://HOST:PORT` URL per seed node.
        nodes: Vec<String>,
        /// Key prefix (`?prefix=`).
        prefix: Option<String>,
    },
    /// `postgres://…` or `postgresql://…`
    Postgres {
        /// The URL for the Postgres client, without idemp's own query parameters.
        url: String,
        /// Schema for idemp's tables (`?schema=`), default `idemp`.
        schema: Option<String>,
    },
}

/// Why a store URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid store URL `{url}`: {reason} (expected memory:[?max_entries=N], sqlite://PATH, redis://HOST:PORT/DB, redis+cluster://HOST:PORT,HOST:PORT or postgres://USER@HOST:PORT/DB)"
)]
pub struct StoreUrlError {
    /// The URL as given (credentials masked).
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

fn err(url: &str, reason: impl Into<String>) -> StoreUrlError {
    StoreUrlError {
        url: mask_password(url),
        reason: reason.into(),
    }
}

/// Replaces the password of `scheme://user:password@host` with `***`.
pub fn mask_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_string(),
    }
}

/// Splits `base?a=b&c=d` into the base and the query pairs, taking out the pairs
/// named in `ours` and returning the rest re-joined onto the base.
fn take_params(
    url: &str,
    input: &str,
    ours: &[&str],
) -> Result<(String, Vec<(String, String)>), StoreUrlError> {
    let (base, query) = match input.split_once('?') {
        Some((b, q)) => (b, q),
        None => return Ok((input.to_string(), Vec::new())),
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if ours.contains(&k) {
            if v.is_empty() {
                return Err(err(url, format!("`{k}` needs a value")));
            }
            if taken.iter().any(|(t, _): &(String, String)| t == k) {
                return Err(err(url, format!("`{k}` given twice")));
            }
            taken.push((k.to_string(), v.to_string()));
        } else {
            kept.push(pair);
        }
    }
    let rebuilt = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rebuilt, taken))
}

fn check_name(url: &str, what: &str, v: &str) -> Result<(), StoreUrlError> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b':' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(err(
            url,
            format!("{what} `{v}` must be 1-63 chars of [A-Za-z0-9_.:-]"),
        ))
    }
}

fn check_host_port(url: &str, hp: &str) -> Result<(), StoreUrlError> {
    let host_port = hp.rsplit_once('@').map(|(_, h)| h).unwrap_or(hp);
    if host_port.is_empty() {
        return Err(err(url, "missing host"));
    }
    // [v6]:port or host:port or host
    let port = if let Some(rest) = host_port.strip_prefix('[') {
        let Some((_, after)) = rest.split_once(']') else {
            return Err(err(url, "unterminated IPv6 address"));
        };
        after.strip_prefix(':')
    } else {
        match host_port.rsplit_once(':') {
            Some(("", _)) => return Err(err(url, "missing host")),
            Some((_, p)) => Some(p),
            None => None,
        }
    };
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return Err(err(
            url,
            format!("port `{p}` is not a number from 0 to 65535"),
        ));
    }
    if host_port
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(err(url, "host contains whitespace"));
    }
    Ok(())
}

impl FromStr for StoreUrl {
    type Err = StoreUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let url = s.trim();
        if url.is_empty() {
            return Err(err(s, "empty"));
        }
        if url.chars().any(|c| c.is_control()) {
            return Err(err(s, "contains control characters"));
        }
        if let Some(rest) = ["memory://", "memory:", "mem:"]
            .iter()
            .find_map(|p| url.strip_prefix(p))
            .filter(|r| r.is_empty() || r.starts_with('?'))
        {
            return parse_memory(s, rest);
        }
        let Some((scheme, rest)) = url.split_once(':') else {
            return Err(err(s, "missing scheme"));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "memory" => Err(err(s, "memory: takes no path")),
            "sqlite" => {
                let path = rest
                    .strip_prefix("//")
                    .ok_or_else(|| err(s, "write sqlite://PATH"))?;
                let path = path.split('?').next().unwrap_or_default();
                if path.is_empty() {
                    return Err(err(s, "missing file path"));
                }
                if path == ":memory:" {
                    return Err(err(
                        s,
                        "an in-memory SQLite database cannot be shared; use memory:",
                    ));
                }
                Ok(StoreUrl::Sqlite {
                    path: PathBuf::from(path),
                })
            }
            "redis" | "rediss" | "valkey" | "valkeys" => {
                let after = rest
                    .strip_prefix("//")
                    .ok_or_else(|| err(s, "write redis://HOST:PORT/DB"))?;
                let (clean, params) =
                    take_params(s, url, &["prefix", "wait_replicas", "wait_timeout_ms"])?;
                let authority = after.split(['/', '?']).next().unwrap_or_default();
                check_host_port(s, authority)?;
                let path = after[authority.len()..]
                    .split('?')
                    .next()
                    .unwrap_or_default();
                let db = path.trim_start_matches('/');
                if !db.is_empty() && db.parse::<u32>().is_err() {
                    return Err(err(s, format!("database `{db}` is not a number")));
                }
                let wait_replicas = parse_wait(s, &params)?;
                let prefix = param(&params, "prefix");
                if let Some(p) = &prefix {
                    check_name(s, "prefix", p)?;
                }
                let clean = clean.replacen("valkeys://", "rediss://", 1).replacen(
                    "valkey://",
                    "redis://",
                    1,
                );
                Ok(StoreUrl::Redis {
                    url: clean,
                    prefix,
                    wait_replicas,
                })
            }
            "redis+cluster" | "rediss+cluster" => {
                let tls = scheme.starts_with("rediss");
                let after = rest
                    .strip_prefix("//")
                    .ok_or_else(|| err(s, "write redis+cluster://HOST:PORT,HOST:PORT"))?;
                let (clean, params) = take_params(s, after, &["prefix"])?;
                let hosts = clean.split(['/', '?']).next().unwrap_or_default();
                let mut nodes = Vec::new();
                for hp in hosts.split(',') {
                    check_host_port(s, hp)?;
                    nodes.push(format!("{}://{hp}", if tls { "rediss" } else { "redis" }));
                }
                let prefix = params.into_iter().next().map(|(_, v)| v);
                if let Some(p) = &prefix {
                    check_name(s, "prefix", p)?;
                }
                Ok(StoreUrl::RedisCluster { nodes, prefix })
            }
            "postgres" | "postgresql" => {
                let after = rest
                    .strip_prefix("//")
                    .ok_or_else(|| err(s, "write postgres://USER@HOST:PORT/DB"))?;
                let (clean, params) = take_params(s, url, &["schema"])?;
                let authority = after.split(['/', '?']).next().unwrap_or_default();
                if !authority.is_empty() {
                    for hp in authority
                        .rsplit_once('@')
                        .map(|(_, h)| h)
                        .unwrap_or(authority)
                        .split(',')
                    {
                        check_host_port(s, hp)?;
                    }
                }
                let schema = params.into_iter().next().map(|(_, v)| v);
                if let Some(sc) = &schema {
                    let ok = !sc.is_empty()
                        && sc.len() <= 63
                        && sc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        && !sc.as_bytes()[0].is_ascii_digit();
                    if !ok {
                        return Err(err(
                            s,
                            format!("schema `{sc}` must be an identifier of [A-Za-z0-9_]"),
                        ));
                    }
                }
                Ok(StoreUrl::Postgres { url: clean, schema })
            }
            other => Err(err(s, format!("unknown scheme `{other}`"))),
        }
    }
}

/// The value of the taken parameter `name`, if given.
fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// A positive whole number parameter, at most `max`.
fn positive(url: &str, name: &str, v: &str, max: u64) -> Result<u64, StoreUrlError> {
    match v.parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(err(
            url,
            format!("`{name}={v}` must be a whole number from 1 to {max}"),
        )),
    }
}

/// `?max_entries=N` after `memory:`.
fn parse_memory(url: &str, rest: &str) -> Result<StoreUrl, StoreUrlError> {
    let (base, params) = take_params(url, rest, &["max_entries"])?;
    if !base.is_empty() {
        let unknown = base.trim_start_matches('?');
        return Err(err(
            url,
            format!("memory: takes only `max_entries=N`, not `{unknown}`"),
        ));
    }
    let max_entries = match param(&params, "max_entries") {
        Some(v) => {
            let n = positive(url, "max_entries", &v, usize::MAX as u64)?;
            Some(usize::try_from(n).map_err(|_| err(url, "max_entries is too large"))?)
        }
        None => None,
    };
    Ok(StoreUrl::Memory { max_entries })
}

/// `wait_replicas=N` and `wait_timeout_ms=T` of a Redis URL.
fn parse_wait(
    url: &str,
    params: &[(String, String)],
) -> Result<Option<WaitReplicas>, StoreUrlError> {
    let replicas = param(params, "wait_replicas");
    let timeout = param(params, "wait_timeout_ms");
    let Some(replicas) = replicas else {
        return match timeout {
            Some(_) => Err(err(url, "`wait_timeout_ms` needs `wait_replicas=N`")),
            None => Ok(None),
        };
    };
    let replicas = positive(url, "wait_replicas", &replicas, u64::from(u32::MAX))?;
    let timeout = match timeout {
        Some(t) => {
            Duration::from_millis(positive(url, "wait_timeout_ms", &t, MAX_WAIT_TIMEOUT_MS)?)
        }
        None => DEFAULT_WAIT_TIMEOUT,
    };
    Ok(Some(WaitReplicas::new(
        u32::try_from(replicas).unwrap_or(u32::MAX),
        timeout,
    )))
}

impl StoreUrl {
    /// `memory`, `sqlite`, `redis`, `redis+cluster` or `postgres`.
    pub fn scheme(&self) -> &'static str {
        match self {
            StoreUrl::Memory { .. } => "memory",
            StoreUrl::Sqlite { .. } => "sqlite",
            StoreUrl::Redis { .. } => "redis",
            StoreUrl::RedisCluster { .. } => "redis+cluster",
            StoreUrl::Postgres { .. } => "postgres",
        }
    }
}

impl fmt::Display for StoreUrl {
    /// The URL with any password masked.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Memory { max_entries: None } => f.write_str("memory:"),
            StoreUrl::Memory {
                max_entries: Some(n),
            } => write!(f, "memory:?max_entries={n}"),
            StoreUrl::Sqlite { path } => write!(f, "sqlite://{}", path.display()),
            StoreUrl::Redis {
                url,
                prefix,
                wait_replicas,
            } => {
                f.write_str(&mask_password(url))?;
                let mut sep = if url.contains('?') { '&' } else { '?' };
                if let Some(p) = prefix {
                    write!(f, "{sep}prefix={p}")?;
                    sep = '&';
                }
                if let Some(w) = wait_replicas {
                    write!(
                        f,
                        "{sep}wait_replicas={}&wait_timeout_ms={}",
                        w.replicas,
                        w.timeout.as_millis()
                    )?;
                }
                Ok(())
            }
            StoreUrl::RedisCluster { nodes, prefix } => {
                let hosts: Vec<&str> = nodes
                    .iter()
                    .map(|n| n.split_once("://").map(|(_, h)| h).unwrap_or(n))
                    .collect();
                write!(f, "redis+cluster://{}", hosts.join(","))?;
                if let Some(p) = prefix {
                    write!(f, "?prefix={p}")?;
                }
                Ok(())
            }
            StoreUrl::Postgres { url, schema } => {
                f.write_str(&mask_password(url))?;
                if let Some(s) = schema {
                    write!(f, "{}schema={s}", if url.contains('?') { '&' } else { '?' })?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> StoreUrl {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_every_scheme() {
        assert_eq!(ok("memory:"), StoreUrl::Memory { max_entries: None });
        assert_eq!(
            ok("memory:?max_entries=100"),
            StoreUrl::Memory {
                max_entries: Some(100)
            }
        );
        assert_eq!(
            ok("memory://?max_entries=7").to_string(),
            "memory:?max_entries=7"
        );
        assert_eq!(
            ok("sqlite://idemp.db"),
            StoreUrl::Sqlite {
                path: "idemp.db".into()
            }
        );
        assert_eq!(
            ok("sqlite:///tmp/x.db"),
            StoreUrl::Sqlite {
                path: "/tmp/x.db".into()
            }
        );
        assert_eq!(
            ok("redis://127.0.0.1:6379/3?prefix=app"),
            StoreUrl::Redis {
                url: "redis://127.0.0.1:6379/3".into(),
                prefix: Some("app".into()),
                wait_replicas: None,
            }
        );
        let waited =
            ok("redis://h:6379/0?wait_replicas=2&prefix=p&wait_timeout_ms=250&protocol=resp3");
        assert_eq!(
            waited,
            StoreUrl::Redis {
                url: "redis://h:6379/0?protocol=resp3".into(),
                prefix: Some("p".into()),
                wait_replicas: Some(WaitReplicas::new(2, Duration::from_millis(250))),
            }
        );
        assert_eq!(ok(&waited.to_string()), waited);
        assert_eq!(
            ok("redis://h?wait_replicas=1"),
            StoreUrl::Redis {
                url: "redis://h".into(),
                prefix: None,
                wait_replicas: Some(WaitReplicas::new(1, DEFAULT_WAIT_TIMEOUT)),
            }
        );
        assert_eq!(
            ok("redis+cluster://a:7000,b:7001"),
            StoreUrl::RedisCluster {
                nodes: vec!["redis://a:7000".into(), "redis://b:7001".into()],
                prefix: None
            }
        );
        assert_eq!(
            ok("postgres://postgres@127.0.0.1:5432/test?schema=idemp_t1&sslmode=disable"),
            StoreUrl::Postgres {
                url: "postgres://postgres@127.0.0.1:5432/test?sslmode=disable".into(),
                schema: Some("idemp_t1".into())
            }
        );
    }

    #[test]
    fn refuses_bad_urls_with_reasons() {
        for (bad, why) in [
            ("", "empty"),
            ("ftp://x", "unknown scheme"),
            ("sqlite:", "sqlite://PATH"),
            ("sqlite://", "missing file path"),
            ("sqlite://:memory:", "in-memory"),
            ("redis://host:99999", "port"),
            ("redis://host:6379/abc", "database"),
            ("redis://h?prefix=", "needs a value"),
            ("redis://h?prefix=a b", "prefix"),
            ("redis://:6379", "missing host"),
            ("postgres://u@h/db?schema=1bad", "schema"),
            ("memory:/x", "no path"),
            ("memory:?max_entries=0", "from 1 to"),
            ("memory:?max_entries=-5", "from 1 to"),
            ("memory:?max_entries=1e6", "from 1 to"),
            ("memory:?max_entries=", "needs a value"),
            ("memory:?max_entries=5&max_entries=6", "given twice"),
            ("memory:?shards=4", "only `max_entries=N`"),
            ("redis://h?wait_replicas=0", "from 1 to"),
            ("redis://h?wait_replicas=two", "from 1 to"),
            ("redis://h?wait_replicas=1&wait_timeout_ms=0", "from 1 to"),
            ("redis://h?wait_timeout_ms=10", "needs `wait_replicas"),
            ("nocolon", "missing scheme"),
        ] {
            let e = bad.parse::<StoreUrl>().expect_err(bad);
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn masks_passwords() {
        let u = ok("redis://user:secret@h:6379/0");
        assert!(!u.to_string().contains("secret"), "{u}");
        let e = "redis://u:secret@h:x".parse::<StoreUrl>().unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
