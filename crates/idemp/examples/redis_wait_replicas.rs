//! What `wait_replicas` costs: claim + complete of unique keys against a private Redis
//! primary with one replica on loopback, with and without `WAIT 1` after each write.
//!
//! ```text
//! cargo run --release -p idemp --features redis --example redis_wait_replicas [SECONDS]
//! ```
//!
//! Starts `redis-server` twice on free loopback ports (`--save "" --appendonly no`,
//! the second a replica of the first), runs each configuration for SECONDS (default
//! 3) at 1, 16 and 64 concurrent tasks, prints operations (claim + complete) per
//! second, and stops both servers.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use idemp::store::redis::{RedisOptions, RedisStore};
use idemp::store::{Claim, ClaimOutcome, Codec, Outcome, RecordKey, Store, StoreUrl};

/// A `redis-server` killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16, Box<dyn std::error::Error>> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_server(
    port: u16,
    dir: &std::path::Path,
    extra: &[String],
) -> Result<Server, Box<dyn std::error::Error>> {
    // The replica keeps the RDB of its full sync in `dir`, never in the working directory.
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--save", "", "--appendonly", "no"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start redis-server (is it installed?): {e}"))?;
    Ok(Server(child))
}

fn info(port: u16) -> String {
    redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
        .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
        .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c))
        .unwrap_or_default()
}

async fn run(store: Arc<RedisStore>, tasks: usize, secs: f64, tag: &str) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (store, stop, done) = (store.clone(), stop.clone(), done.clone());
        let tag = tag.to_string();
        handles.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = RecordKey::new("bench", format!("{tag}-{t}-{i}"));
                i += 1;
                if let Ok(ClaimOutcome::Acquired { token, .. }) =
                    store.claim(&Claim::new(id.clone())).await
                {
                    let out = Outcome::new(Codec::Raw, b"{\"ok\":true}".to_vec());
                    if store
                        .complete(&id, token, out, Duration::from_secs(60))
                        .await
                        .is_ok()
                    {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for h in handles {
        let _ = h.await;
    }
    n as f64 / elapsed
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secs: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3.0);
    let (p1, p2) = (free_port()?, free_port()?);
    let (d1, d2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let _primary = start_server(p1, d1.path(), &[])?;
    let _replica = start_server(
        p2,
        d2.path(),
        &["--replicaof".into(), "127.0.0.1".into(), p1.to_string()],
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !info(p2).contains("master_link_status:up") {
        if Instant::now() > deadline {
            return Err("the replica did not sync within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url: StoreUrl = format!("redis://127.0.0.1:{p1}/0").parse()?;
    let options = RedisOptions::default().check_durability(false);
    let plain = Arc::new(RedisStore::connect_with(&url, options.clone()).await?);
    let waiting = Arc::new(
        RedisStore::connect_with(&url, options.wait_replicas(1, Duration::from_secs(1))).await?,
    );
    println!("claim + complete of unique keys, primary + 1 replica on loopback, {secs} s each");
    println!("tasks  async ops/s  wait_replicas=1 ops/s  ratio");
    for tasks in [1, 16, 64] {
        // Warm up both (script loading, connections).
        run(plain.clone(), tasks, 0.3, "warm-a").await;
        run(waiting.clone(), tasks, 0.3, "warm-w").await;
        let a = run(plain.clone(), tasks, secs, &format!("a{tasks}")).await;
        let w = run(waiting.clone(), tasks, secs, &format!("w{tasks}")).await;
        println!("{tasks:>5}  {a:>11.0}  {w:>21.0}  {:.2}", w / a);
    }
    Ok(())
}
