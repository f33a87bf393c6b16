//! Shared helpers of the Redis tests: the shared server's URL with a unique prefix per
//! test (cleaned up on drop, even after a panic), and private `redis-server` instances
//! for fault tests.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use idemp::store::StoreUrl;
use idemp::store::redis::{RedisOptions, RedisStore};

/// The shared test server.
pub fn shared_url() -> String {
    std::env::var("IDEMP_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// A prefix no other test run uses.
pub fn unique_prefix(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "idemp-test-{tag}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Deletes every key under `prefix` with a blocking connection (usable from `Drop`).
pub fn delete_prefix(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
        return;
    };
    let pattern = format!("{prefix}:*");
    let keys: Vec<Vec<u8>> = match redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(&pattern)
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter(&mut con)
    {
        Ok(it) => it.filter_map(Result::ok).collect(),
        Err(_) => return,
    };
    for chunk in keys.chunks(500) {
        let _: redis::RedisResult<u64> = redis::cmd("UNLINK").arg(chunk).query(&mut con);
    }
}

/// Cleans a prefix of the shared server when dropped.
pub struct Cleanup {
    pub url: String,
    pub prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        delete_prefix(&self.url, &self.prefix);
    }
}

/// A store on the shared server under a fresh prefix, and its cleanup guard.
pub async fn shared_store(tag: &str) -> (RedisStore, Cleanup) {
    let url = shared_url();
    let prefix = unique_prefix(tag);
    let store = connect(&url, &prefix).await;
    (store, Cleanup { url, prefix })
}

/// Connects a store, failing the test with instructions when the server is down.
pub async fn connect(url: &str, prefix: &str) -> RedisStore {
    let parsed: StoreUrl = url.parse().expect("redis URL");
    RedisStore::connect_with(
        &parsed,
        RedisOptions::default()
            .prefix(prefix)
            .check_durability(false),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "cannot reach Redis at {url} ({e}); start it with `scripts/services.sh` or set IDEMP_TEST_REDIS_URL"
        )
    })
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A private `redis-server` for fault tests; killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    pub dir: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts `redis-server` on a free port, with AOF (`appendfsync always`) in a
    /// temporary directory, plus `extra` arguments (`["--appendonly", "no"]`…).
    pub fn start(extra: &[&str]) -> Self {
        Self::start_on(free_port(), extra)
    }

    /// Like [`start`](Self::start), on a given port.
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "yes".into(),
            "--appendfsync".into(),
            "always".into(),
            "--maxmemory-policy".into(),
            "noeviction".into(),
            "--dir".into(),
            dir.path().display().to_string(),
            "--daemonize".into(),
            "no".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut me = Self {
            port,
            dir,
            args,
            child: None,
        };
        me.spawn();
        me
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) {
        let log: PathBuf = self.dir.path().join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "private redis-server on port {} did not start; log: {}",
                self.port,
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A blocking admin connection.
    pub fn admin(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("url")
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("admin connection")
    }

    /// SIGKILL (no shutdown, no final fsync) and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server (SIGKILL) and starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Starts the server again after `kill9`.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A private 3-master Redis Cluster (`--cluster-enabled yes`, no replicas), built with
/// `redis-cli --cluster create`; killed on drop.
pub struct PrivateCluster {
    pub nodes: Vec<PrivateRedis>,
}

/// A port `p` such that `p` and its cluster bus port `p + 10000` are both free.
fn free_cluster_port() -> u16 {
    for _ in 0..1000 {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = l.local_addr() else { continue };
        let p = addr.port();
        let candidate = 20_000 + p % 20_000;
        drop(l);
        if TcpListener::bind(("127.0.0.1", candidate)).is_ok()
            && TcpListener::bind(("127.0.0.1", candidate + 10_000)).is_ok()
        {
            return candidate;
        }
    }
    panic!("no free port pair for a cluster node")
}

impl PrivateCluster {
    pub fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_cluster_port();
            nodes.push(PrivateRedis::start_on(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--appendfsync",
                    "everysec",
                ],
            ));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let me = Self { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        'wait: loop {
            assert!(Instant::now() < deadline, "cluster never reached state ok");
            for n in &me.nodes {
                let mut c = n.admin();
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut c)
                    .unwrap_or_default();
                if !info.contains("cluster_state:ok") {
                    std::thread::sleep(Duration::from_millis(50));
                    continue 'wait;
                }
            }
            break;
        }
        me
    }

    /// `redis+cluster://H:P,H:P,H:P?prefix=…`
    pub fn url(&self, prefix: &str) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}?prefix={prefix}", hosts.join(","))
    }
}
