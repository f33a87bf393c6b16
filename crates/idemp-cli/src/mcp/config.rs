//! The configuration of `idemp mcp`: flags, environment variables and a TOML file,
//! merged with the precedence flag > environment > file > default (as for `serve`).
//!
//! ```toml
//! store = "sqlite://idemp.db"
//! scope = "run-42"
//! ttl = "24h"
//! cache_reads = "5m"
//! on_ambiguous = "surface"
//! max_calls_per_tool = 50
//!
//! [tools.send_email]
//! policy = "guard"          # guard | pass | cache: overrides the server's annotations
//! max_calls = 3             # this tool's budget per scope
//! [tools.get_weather]
//! policy = "cache"
//! ```
//!
//! Durations, sizes, addresses, the upstream URL and its TLS trust
//! (`--upstream-ca`, `--upstream-roots`) are read exactly as `idemp serve` reads them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use http::Uri;
use serde::Deserialize;

use super::policy::Policy;
use crate::serve::tls::{Roots, UpstreamTls};
use crate::serve::{
    DurationValue, LogFormat, PathsValue, SizeValue, duration_of, parse_addr, parse_upstream,
    paths_of, read_toml, size_of,
};

/// What to do with a call whose earlier attempt was left running by a proxy that
/// stopped (its lease passed without a result).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AmbiguousPolicy {
    /// Run it again (at-least-once for that call).
    Retake,
    /// Answer a tool error saying the earlier attempt may have run (default).
    #[default]
    Surface,
}

/// What to do with a tool result that has `isError: true`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ToolErrors {
    /// Store it: the tool ran, its failure is the call's outcome (default).
    #[default]
    Store,
    /// Release the key: the next identical call runs the tool again.
    Release,
}

/// Arguments of `idemp mcp`.
///
/// `idemp mcp [FLAGS] -- COMMAND [ARGS…]` relays stdio to a server it spawns;
/// `idemp mcp --upstream URL [--listen ADDR] [FLAGS]` relays Streamable HTTP.
#[derive(Debug, Default, clap::Args)]
#[command(
    after_help = "Examples:\n  idemp mcp --scope run-42 -- python server.py\n  idemp mcp --upstream http://127.0.0.1:8000/mcp --listen 127.0.0.1:8787"
)]
pub struct McpArgs {
    /// Store URL: memory:, sqlite://PATH, redis://HOST:PORT/DB, postgres://USER@HOST:PORT/DB
    /// [default: sqlite://idemp.db].
    #[arg(long, env = "IDEMP_STORE")]
    pub store: Option<String>,
    /// The agent run or session the calls belong to: keys are derived within it.
    /// Empty: repeats are caught within the ttl across sessions and restarts.
    #[arg(long, env = "IDEMP_SCOPE")]
    pub scope: Option<String>,
    /// Retention of stored results [default: 24h].
    #[arg(long, env = "IDEMP_TTL")]
    pub ttl: Option<String>,
    /// TOML configuration file (flags win over it; `[tools.NAME] policy = ...`).
    #[arg(long, env = "IDEMP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Streamable HTTP: the MCP server's endpoint URL (instead of a COMMAND).
    #[arg(long, env = "IDEMP_MCP_UPSTREAM")]
    pub upstream: Option<String>,
    /// Streamable HTTP: where agents connect [default: 127.0.0.1:8787].
    #[arg(long, env = "IDEMP_MCP_LISTEN")]
    pub listen: Option<String>,
    /// Streamable HTTP: PEM file of a CA to trust for an https:// upstream, on top of
    /// --upstream-roots (repeatable).
    #[arg(
        long = "upstream-ca",
        env = "IDEMP_MCP_UPSTREAM_CA",
        value_name = "FILE"
    )]
    pub upstream_ca: Vec<PathBuf>,
    /// Streamable HTTP: base set of trusted roots for an https:// upstream: webpki
    /// (Mozilla's, compiled in) or native (the system's store) [default: webpki].
    #[arg(long, env = "IDEMP_MCP_UPSTREAM_ROOTS", value_enum)]
    pub upstream_roots: Option<Roots>,
    /// Admin address for /healthz and /metrics [default: off].
    #[arg(long, env = "IDEMP_MCP_ADMIN")]
    pub admin: Option<String>,
    /// Cache results of read-only tools for this long (e.g. 5m) [default: off].
    #[arg(long, env = "IDEMP_MCP_CACHE_READS")]
    pub cache_reads: Option<String>,
    /// A call left running by a stopped proxy, after its lease: run it again, or
    /// answer a tool error saying it may have run [default: surface].
    #[arg(long, env = "IDEMP_MCP_ON_AMBIGUOUS", value_enum)]
    pub on_ambiguous: Option<AmbiguousPolicy>,
    /// Per scope, at most N calls of each tool reach the server; more get a tool
    /// error. Counted in the store, so it holds across processes [default: off].
    #[arg(long, env = "IDEMP_MCP_MAX_CALLS_PER_TOOL")]
    pub max_calls_per_tool: Option<u64>,
    /// Lease of a running guarded call, renewed every lease/3 [default: 60s].
    #[arg(long, env = "IDEMP_MCP_LEASE")]
    pub lease: Option<String>,
    /// How long a duplicate waits for the running identical call [default: 60s].
    #[arg(long, env = "IDEMP_MCP_WAIT")]
    pub wait: Option<String>,
    /// Results with isError: true are outcomes (store) or released [default: store].
    #[arg(long, env = "IDEMP_MCP_TOOL_ERRORS", value_enum)]
    pub tool_errors: Option<ToolErrors>,
    /// The server's identity in derived keys [default: the command line, or the URL].
    #[arg(long, env = "IDEMP_MCP_SERVER_ID")]
    pub server_id: Option<String>,
    /// Largest message guarded or inspected; longer lines pass through unguarded,
    /// longer HTTP bodies get 413 [default: 16MiB].
    #[arg(long, env = "IDEMP_MCP_MAX_MESSAGE")]
    pub max_message: Option<String>,
    /// How often expired records are swept from the store [default: 60s].
    #[arg(long, env = "IDEMP_MCP_SWEEP_INTERVAL")]
    pub sweep_interval: Option<String>,
    /// Log format on stderr [default: text].
    #[arg(long, env = "IDEMP_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// The MCP server to spawn, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// One `[tools.NAME]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolConfig {
    /// Overrides the policy from the annotations.
    pub policy: Option<Policy>,
    /// This tool's budget per scope (overrides `max_calls_per_tool`).
    pub max_calls: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    store: Option<String>,
    scope: Option<String>,
    ttl: Option<DurationValue>,
    upstream: Option<String>,
    listen: Option<String>,
    upstream_ca: Option<PathsValue>,
    upstream_roots: Option<Roots>,
    admin: Option<String>,
    cache_reads: Option<DurationValue>,
    on_ambiguous: Option<AmbiguousPolicy>,
    max_calls_per_tool: Option<u64>,
    lease: Option<DurationValue>,
    wait: Option<DurationValue>,
    tool_errors: Option<ToolErrors>,
    server_id: Option<String>,
    max_message: Option<SizeValue>,
    sweep_interval: Option<DurationValue>,
    log_format: Option<LogFormat>,
    command: Option<Vec<String>>,
    #[serde(default)]
    tools: HashMap<String, ToolConfig>,
}

/// Where the MCP server is.
#[derive(Clone, Debug)]
pub enum Transport {
    /// A command to spawn, relayed over stdio.
    Stdio {
        /// Program and arguments.
        command: Vec<String>,
    },
    /// A Streamable HTTP endpoint.
    Http {
        /// The server's endpoint URL.
        upstream: Uri,
        /// Where agents connect.
        listen: SocketAddr,
        /// How an `https://` server is trusted.
        tls: UpstreamTls,
    },
}

/// The resolved configuration of `idemp mcp`.
#[derive(Clone, Debug)]
pub struct McpConfig {
    /// Where the server is.
    pub transport: Transport,
    /// The store URL.
    pub store: String,
    /// The scope of keys and budgets.
    pub scope: String,
    /// The server's identity in derived keys.
    pub server_id: String,
    /// Retention of stored results.
    pub ttl: Duration,
    /// Lease of a running guarded call.
    pub lease: Duration,
    /// How long duplicates wait.
    pub wait: Duration,
    /// Where /healthz and /metrics are served.
    pub admin: Option<SocketAddr>,
    /// TTL of the read cache (`None`: no cache).
    pub cache_reads: Option<Duration>,
    /// After a crashed proxy.
    pub on_ambiguous: AmbiguousPolicy,
    /// Tool errors stored or released.
    pub tool_errors: ToolErrors,
    /// Default budget per tool and scope.
    pub max_calls_per_tool: Option<u64>,
    /// Per-tool settings.
    pub tools: HashMap<String, ToolConfig>,
    /// Largest guarded or inspected message.
    pub max_message: usize,
    /// How often expired records are swept.
    pub sweep_interval: Duration,
    /// Log format.
    pub log_format: LogFormat,
}

impl McpConfig {
    /// Merges flags/environment over the `--config` file over the defaults and checks
    /// every value.
    pub fn resolve(args: McpArgs) -> anyhow::Result<Self> {
        let file: FileConfig = match &args.config {
            Some(path) => read_toml(path)?,
            None => FileConfig::default(),
        };
        let command = if args.command.is_empty() {
            file.command.unwrap_or_default()
        } else {
            args.command
        };
        let upstream = args.upstream.or(file.upstream);
        let listen = args.listen.or(file.listen);
        let tls = UpstreamTls {
            roots: args
                .upstream_roots
                .or(file.upstream_roots)
                .unwrap_or_default(),
            extra_ca: paths_of(args.upstream_ca, file.upstream_ca),
        };
        let transport = match (upstream, command.is_empty()) {
            (Some(_), false) => {
                bail!("give either --upstream URL or -- COMMAND [ARGS…], not both")
            }
            (None, true) => bail!(
                "nothing to relay: give the MCP server's command after `--` (idemp mcp -- python server.py), or --upstream URL"
            ),
            (None, false) => {
                if listen.is_some() {
                    bail!(
                        "--listen is for --upstream (Streamable HTTP); a stdio server is relayed on stdin/stdout"
                    );
                }
                Transport::Stdio { command }
            }
            (Some(url), true) => Transport::Http {
                upstream: parse_upstream(&url)?,
                listen: parse_addr("--listen", listen.as_deref().unwrap_or("127.0.0.1:8787"))?,
                tls: tls.clone(),
            },
        };
        let https = matches!(&transport, Transport::Http { upstream, .. } if upstream.scheme_str() == Some("https"));
        if !https && tls != UpstreamTls::default() {
            bail!(
                "--upstream-ca and --upstream-roots apply to https:// upstreams only (--upstream https://…)"
            );
        }
        if https {
            // Read the CA files now: a bad one is an error at start, not at the first call.
            tls.client_config()?;
        }
        let server_id = match args.server_id.or(file.server_id) {
            Some(id) => id,
            None => match &transport {
                Transport::Stdio { command } => command.join(" "),
                Transport::Http { upstream, .. } => upstream.to_string(),
            },
        };
        let admin = match args.admin.or(file.admin) {
            Some(v) if !v.eq_ignore_ascii_case("off") => Some(parse_addr("--admin", &v)?),
            _ => None,
        };
        let ttl =
            duration_of("--ttl", args.ttl, file.ttl)?.unwrap_or(Duration::from_secs(24 * 3600));
        let lease =
            duration_of("--lease", args.lease, file.lease)?.unwrap_or(Duration::from_secs(60));
        let wait = duration_of("--wait", args.wait, file.wait)?.unwrap_or(Duration::from_secs(60));
        let cache_reads = duration_of("--cache-reads", args.cache_reads, file.cache_reads)?;
        let sweep_interval =
            duration_of("--sweep-interval", args.sweep_interval, file.sweep_interval)?
                .unwrap_or(Duration::from_secs(60));
        if lease < Duration::from_millis(30) {
            bail!("--lease {lease:?} is too short (at least 30ms)");
        }
        if ttl.is_zero() {
            bail!("--ttl must be more than 0");
        }
        if cache_reads.is_some_and(|d| d.is_zero()) {
            bail!("--cache-reads must be more than 0 (leave it out to turn the cache off)");
        }
        if sweep_interval < Duration::from_secs(1) {
            bail!("--sweep-interval {sweep_interval:?} is too short (at least 1s)");
        }
        let max_calls_per_tool = args.max_calls_per_tool.or(file.max_calls_per_tool);
        if max_calls_per_tool == Some(0) {
            bail!("--max-calls-per-tool must be at least 1");
        }
        for (name, tool) in &file.tools {
            if tool.policy == Some(Policy::Cache) && cache_reads.is_none() {
                bail!(
                    "[tools.{name}] policy = \"cache\" needs a cache: set --cache-reads TTL (or cache_reads in the file)"
                );
            }
            if tool.max_calls == Some(0) {
                bail!("[tools.{name}] max_calls must be at least 1");
            }
        }
        let max_message =
            size_of("--max-message", args.max_message, file.max_message)?.unwrap_or(16 << 20);
        if max_message < 1024 {
            bail!("--max-message {max_message} is too small (at least 1KiB)");
        }
        Ok(Self {
            transport,
            store: args
                .store
                .or(file.store)
                .unwrap_or_else(|| "sqlite://idemp.db".into()),
            scope: args.scope.or(file.scope).unwrap_or_default(),
            server_id,
            ttl,
            lease,
            wait,
            admin,
            cache_reads,
            on_ambiguous: args.on_ambiguous.or(file.on_ambiguous).unwrap_or_default(),
            tool_errors: args.tool_errors.or(file.tool_errors).unwrap_or_default(),
            max_calls_per_tool,
            tools: file.tools,
            max_message,
            sweep_interval,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        })
    }

    /// The configured policy overrides.
    pub fn overrides(&self) -> HashMap<String, Policy> {
        self.tools
            .iter()
            .filter_map(|(name, t)| t.policy.map(|p| (name.clone(), p)))
            .collect()
    }

    /// The budget of `tool` per scope, if any.
    pub fn budget_of(&self, tool: &str) -> Option<u64> {
        self.tools
            .get(tool)
            .and_then(|t| t.max_calls)
            .or(self.max_calls_per_tool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(command: &[&str]) -> McpArgs {
        McpArgs {
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_transport() {
        let c = McpConfig::resolve(args(&["python", "server.py"])).unwrap();
        assert!(matches!(&c.transport, Transport::Stdio { command } if command.len() == 2));
        assert_eq!(c.server_id, "python server.py");
        assert_eq!(c.store, "sqlite://idemp.db");
        assert_eq!(c.on_ambiguous, AmbiguousPolicy::Surface);
        assert_eq!(c.tool_errors, ToolErrors::Store);
        assert!(c.admin.is_none() && c.cache_reads.is_none());

        let e = McpConfig::resolve(args(&[])).unwrap_err().to_string();
        assert!(e.contains("--upstream"), "{e}");
        let both = McpArgs {
            upstream: Some("http://127.0.0.1:1/mcp".into()),
            ..args(&["x"])
        };
        assert!(McpConfig::resolve(both).is_err());
        let http = McpArgs {
            upstream: Some("http://127.0.0.1:1/mcp".into()),
            ..Default::default()
        };
        let c = McpConfig::resolve(http).unwrap();
        assert!(matches!(c.transport, Transport::Http { listen, .. } if listen.port() == 8787));
        assert_eq!(c.server_id, "http://127.0.0.1:1/mcp");
    }

    #[test]
    fn file_tools_and_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mcp.toml");
        std::fs::write(
            &path,
            r#"
command = ["node", "srv.js"]
scope = "file-scope"
ttl = "2h"
cache_reads = 30
max_calls_per_tool = 5
[tools.send]
policy = "guard"
max_calls = 2
[tools.read]
policy = "cache"
"#,
        )
        .unwrap();
        let a = McpArgs {
            config: Some(path.clone()),
            scope: Some("flag-scope".into()),
            ..Default::default()
        };
        let c = McpConfig::resolve(a).unwrap();
        assert_eq!(c.scope, "flag-scope", "flag beats file");
        assert_eq!(c.ttl, Duration::from_secs(7200));
        assert_eq!(c.cache_reads, Some(Duration::from_secs(30)));
        assert_eq!(c.budget_of("send"), Some(2));
        assert_eq!(c.budget_of("other"), Some(5));
        assert_eq!(c.overrides().get("read"), Some(&Policy::Cache));

        std::fs::write(&path, "command = [\"x\"]\n[tools.r]\npolicy = \"cache\"\n").unwrap();
        let e = McpConfig::resolve(McpArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("--cache-reads"), "{e}");
        std::fs::write(
            &path,
            "command = [\"x\"]\n[tools.r]\npolicy = \"sometimes\"\n",
        )
        .unwrap();
        assert!(
            McpConfig::resolve(McpArgs {
                config: Some(path),
                ..Default::default()
            })
            .is_err()
        );
        for bad in [
            McpArgs {
                lease: Some("1ms".into()),
                ..args(&["x"])
            },
            McpArgs {
                max_calls_per_tool: Some(0),
                ..args(&["x"])
            },
            McpArgs {
                ttl: Some("soon".into()),
                ..args(&["x"])
            },
            McpArgs {
                listen: Some("127.0.0.1:1".into()),
                ..args(&["x"])
            },
            McpArgs {
                upstream_ca: vec!["ca.pem".into()],
                ..args(&["x"])
            },
            McpArgs {
                upstream: Some("http://h/mcp".into()),
                upstream_roots: Some(Roots::Native),
                ..Default::default()
            },
            McpArgs {
                upstream: Some("https://h/mcp".into()),
                upstream_ca: vec![dir.path().join("absent.pem")],
                ..Default::default()
            },
            McpArgs {
                upstream: Some("ftp://h/mcp".into()),
                ..Default::default()
            },
        ] {
            assert!(McpConfig::resolve(bad).is_err());
        }
    }

    #[test]
    fn https_upstreams_take_the_tls_flags_of_serve() {
        let c = McpConfig::resolve(McpArgs {
            upstream: Some("https://mcp.example.com/mcp".into()),
            ..Default::default()
        })
        .unwrap();
        let Transport::Http { upstream, tls, .. } = &c.transport else {
            panic!("http transport");
        };
        assert_eq!(upstream.scheme_str(), Some("https"));
        assert_eq!(*tls, UpstreamTls::default());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mcp.toml");
        std::fs::write(
            &path,
            "upstream = \"https://127.0.0.1:9/mcp\"\nupstream_ca = \"nothing.pem\"\n",
        )
        .unwrap();
        let e = format!(
            "{:#}",
            McpConfig::resolve(McpArgs {
                config: Some(path),
                ..Default::default()
            })
            .unwrap_err()
        );
        assert!(e.contains("cannot read --upstream-ca nothing.pem"), "{e}");
    }
}
