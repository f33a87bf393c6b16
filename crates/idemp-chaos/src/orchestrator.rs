//! The `run` subcommand: scenarios of worker processes under injected faults, then
//! the checker.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use idemp::store::{RecordKey, State};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::checker::{Checked, Policy, check};
use crate::history::{FinalState, Finals, read_effects, read_history};
use crate::worker::{OffsetClock, SCOPE, StoreSpec, open_store};

/// Which store a scenario runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// A SQLite file in a temp dir.
    Sqlite,
    /// A private `redis-server` (AOF, `appendfsync always`) on a free port.
    Redis,
    /// The machine's Postgres, in a schema of its own.
    Postgres,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Redis => "redis",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Stores to run.
    pub stores: Vec<StoreKind>,
    /// Duration of each scenario.
    pub duration: Duration,
    /// Worker processes per scenario.
    pub workers: usize,
    /// Tasks per worker.
    pub tasks: usize,
    /// Keys per generation.
    pub keys: usize,
    /// Generation length.
    pub gen_ms: u64,
    /// Lease.
    pub lease: Duration,
    /// Seed of the fault schedule.
    pub seed: u64,
    /// Negative control: workers run effects of keys held by a live owner.
    pub sabotage: bool,
    /// Postgres URL (the machine's server).
    pub postgres_url: String,
}

/// Kinds of injected faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// `kill -9` of a worker (then a new one is spawned).
    Kill9,
    /// SIGSTOP of a worker for longer than the lease, then SIGCONT.
    Pause,
    /// SIGKILL and restart of the private redis-server.
    RedisRestart,
    /// `pg_terminate_backend` of the workers' backends.
    PgTerminate,
}

/// The outcome of one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    /// Store.
    pub store: StoreKind,
    /// Policy.
    pub policy: Policy,
    /// Clock offsets given to the workers (ms), SQLite only.
    pub clock_offsets_ms: Vec<i64>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<Fault, u64>,
    /// The checker's counts and violations.
    pub checked: Checked,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// The worker processes of a scenario, all killed when dropped (also on errors).
struct Workers(Vec<Child>);

impl std::ops::Index<usize> for Workers {
    type Output = Child;
    fn index(&self, i: usize) -> &Child {
        &self.0[i]
    }
}

impl Workers {
    fn len(&self) -> usize {
        self.0.len()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// A private redis-server with AOF `appendfsync always`, restartable.
struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl PrivateRedis {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Self::spawn(port, dir)?;
        let me = Self {
            port,
            dir: dir.to_owned(),
            child,
        };
        me.wait_up()?;
        Ok(me)
    }

    fn spawn(port: u16, dir: &Path) -> anyhow::Result<Child> {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server (is it installed? see scripts/services.sh)")
    }

    fn wait_up(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("private redis-server on port {} did not come up", self.port)
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.port, &self.dir)?;
        self.wait_up()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0?prefix=chaos", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Scenario<'a> {
    cfg: &'a RunConfig,
    kind: StoreKind,
    policy: Policy,
    dir: PathBuf,
    spec: StoreSpec,
    rng: StdRng,
    next_worker: usize,
    epoch_ms: u64,
    offsets: Vec<i64>,
}

impl Scenario<'_> {
    fn spawn_worker(&mut self) -> anyhow::Result<Child> {
        let n = self.next_worker;
        self.next_worker += 1;
        let id = format!("w{n}");
        let lease_ms = self.cfg.lease.as_millis() as i64;
        let offset = if self.kind == StoreKind::Sqlite {
            self.rng.random_range(-(lease_ms / 4)..=lease_ms / 4)
        } else {
            0
        };
        self.offsets.push(offset);
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("worker")
            .args(["--id", &id])
            .args(["--policy", self.policy.name()])
            .args(["--lease-ms", &lease_ms.to_string()])
            .arg(format!("--clock-offset-ms={offset}"))
            .args(["--keys", &self.cfg.keys.to_string()])
            .args(["--epoch-ms", &self.epoch_ms.to_string()])
            .args(["--gen-ms", &self.cfg.gen_ms.to_string()])
            .args(["--tasks", &self.cfg.tasks.to_string()])
            .args(["--seed", &self.rng.random::<u64>().to_string()])
            .arg("--effects")
            .arg(self.dir.join("effects.log"))
            .arg("--lock")
            .arg(self.dir.join("effects.lock"))
            .arg("--history")
            .arg(self.dir.join(format!("history-{id}.jsonl")));
        match &self.spec {
            StoreSpec::Sqlite(p) => {
                cmd.arg("--sqlite").arg(p);
            }
            StoreSpec::Redis(url) => {
                cmd.args(["--redis", url]);
            }
            StoreSpec::Postgres { url, schema, app } => {
                cmd.args(["--postgres", url, "--schema", schema, "--app", app]);
            }
        }
        if self.cfg.sabotage {
            cmd.arg("--sabotage");
        }
        cmd.stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot spawn a worker")
    }
}

/// Runs every scenario of `cfg` and returns their reports.
pub fn run(cfg: &RunConfig) -> anyhow::Result<Vec<ScenarioReport>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut reports = Vec::new();
    let mut seed = cfg.seed;
    for &kind in &cfg.stores {
        for policy in [Policy::Verify, Policy::Retake] {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let report = run_scenario(cfg, kind, policy, seed, &rt)
                .with_context(|| format!("scenario {} {}", kind.name(), policy.name()))?;
            eprintln!("{}", scenario_line(&report));
            reports.push(report);
        }
    }
    Ok(reports)
}

fn run_scenario(
    cfg: &RunConfig,
    kind: StoreKind,
    policy: Policy,
    seed: u64,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<ScenarioReport> {
    let tmp = tempfile::Builder::new().prefix("idemp-chaos-").tempdir()?;
    let dir = tmp.path().to_owned();
    let unique = format!("chaos_{}_{}_{:x}", std::process::id(), kind.name(), seed);
    let mut redis = None;
    let spec = match kind {
        StoreKind::Sqlite => StoreSpec::Sqlite(dir.join("store.db")),
        StoreKind::Redis => {
            let rdir = dir.join("redis");
            std::fs::create_dir_all(&rdir)?;
            let r = PrivateRedis::start(&rdir)?;
            let url = r.url();
            redis = Some(r);
            StoreSpec::Redis(url)
        }
        StoreKind::Postgres => StoreSpec::Postgres {
            url: cfg.postgres_url.clone(),
            schema: unique.clone(),
            app: unique.clone(),
        },
    };
    // Create the store (tables, schema) once before the workers race to.
    let pg_client = if kind == StoreKind::Postgres {
        Some(rt.block_on(pg_connect(&cfg.postgres_url))?)
    } else {
        None
    };
    let result = scenario_body(
        cfg,
        kind,
        policy,
        seed,
        rt,
        &dir,
        &unique,
        spec,
        redis,
        pg_client.as_ref(),
    );
    if let Some(c) = &pg_client {
        let dropped = rt.block_on(async {
            c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{unique}\" CASCADE"))
                .await
        });
        if let Err(e) = dropped {
            eprintln!("idemp-chaos: could not drop schema {unique}: {e}");
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn scenario_body(
    cfg: &RunConfig,
    kind: StoreKind,
    policy: Policy,
    seed: u64,
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    unique: &str,
    spec: StoreSpec,
    mut redis: Option<PrivateRedis>,
    pg_client: Option<&tokio_postgres::Client>,
) -> anyhow::Result<ScenarioReport> {
    let dir = dir.to_owned();
    rt.block_on(async {
        let store = open_store(&spec, Arc::new(OffsetClock(0))).await?;
        drop(store);
        anyhow::Ok(())
    })?;

    let mut sc = Scenario {
        cfg,
        kind,
        policy,
        dir: dir.clone(),
        spec: spec.clone(),
        rng: StdRng::seed_from_u64(seed),
        next_worker: 0,
        epoch_ms: now_ms(),
        offsets: Vec::new(),
    };
    let mut workers = Workers(Vec::new());
    for _ in 0..cfg.workers {
        workers.0.push(sc.spawn_worker()?);
    }
    let mut faults: BTreeMap<Fault, u64> = BTreeMap::new();
    // (worker index, resume at)
    let mut paused: Vec<(usize, Instant)> = Vec::new();
    let start = Instant::now();
    let mut last_server_fault = Instant::now();
    let mut injected = 0u32;
    // Give the workers a moment to start before the first fault.
    std::thread::sleep(Duration::from_millis(300));
    while start.elapsed() < cfg.duration {
        std::thread::sleep(Duration::from_millis(sc.rng.random_range(150..450)));
        let now = Instant::now();
        paused.retain(|&(i, until)| {
            if now >= until {
                signal(&workers[i], libc::SIGCONT);
                false
            } else {
                true
            }
        });
        let server_fault_due = last_server_fault.elapsed() > Duration::from_millis(1500);
        // The first three faults are one of each kind (kill -9, pause, server fault),
        // so every scenario injects every kind it supports; then they are random.
        let roll = match injected {
            0 => 50,
            1 => 99,
            2 if kind != StoreKind::Sqlite => 0,
            _ => sc.rng.random_range(0..100),
        };
        injected += 1;
        let server_fault_due = server_fault_due || injected == 3;
        if server_fault_due && kind != StoreKind::Sqlite && roll < 30 {
            last_server_fault = Instant::now();
            match kind {
                StoreKind::Redis => {
                    if let Some(r) = redis.as_mut() {
                        r.restart()?;
                        *faults.entry(Fault::RedisRestart).or_default() += 1;
                    }
                }
                StoreKind::Postgres => {
                    if let Some(c) = pg_client {
                        let n = rt.block_on(pg_terminate(c, unique))?;
                        if n > 0 {
                            *faults.entry(Fault::PgTerminate).or_default() += 1;
                        }
                    }
                }
                StoreKind::Sqlite => {}
            }
        } else if roll < 65 {
            let i = sc.rng.random_range(0..workers.len());
            if paused.iter().any(|&(p, _)| p == i) {
                continue;
            }
            let _ = workers.0[i].kill();
            let _ = workers.0[i].wait();
            *faults.entry(Fault::Kill9).or_default() += 1;
            workers.0[i] = sc.spawn_worker()?;
        } else if paused.len() + 1 < workers.len() {
            let i = sc.rng.random_range(0..workers.len());
            if paused.iter().any(|&(p, _)| p == i) {
                continue;
            }
            signal(&workers[i], libc::SIGSTOP);
            let hold = cfg.lease * 2 + Duration::from_millis(sc.rng.random_range(0..200));
            paused.push((i, Instant::now() + hold));
            *faults.entry(Fault::Pause).or_default() += 1;
        }
    }
    // Resume the paused workers and let everyone settle for a lease and a half, so
    // fenced completions get recorded, then stop them all.
    for &(i, _) in &paused {
        signal(&workers[i], libc::SIGCONT);
    }
    std::thread::sleep(cfg.lease * 3 / 2);
    drop(workers);
    if let Some(r) = &redis {
        r.wait_up()?;
    }

    let events = read_history(&dir)?;
    let effects = read_effects(&dir.join("effects.log"))?;
    let mut keys: Vec<String> = effects.iter().map(|e| e.key.clone()).collect();
    keys.extend(events.iter().map(|e| match e {
        crate::history::Event::Claim { key, .. }
        | crate::history::Event::Ok { key, .. }
        | crate::history::Event::Fenced { key, .. }
        | crate::history::Event::Replay { key, .. }
        | crate::history::Event::Refused { key, .. }
        | crate::history::Event::Error { key, .. } => key.clone(),
    }));
    keys.sort();
    keys.dedup();
    let finals = rt.block_on(read_finals(&spec, &keys))?;
    drop(redis);
    let checked = check(policy, &events, &effects, &finals);
    Ok(ScenarioReport {
        store: kind,
        policy,
        clock_offsets_ms: sc.offsets,
        faults,
        checked,
    })
}

async fn read_finals(spec: &StoreSpec, keys: &[String]) -> anyhow::Result<Finals> {
    let store = open_store(spec, Arc::new(OffsetClock(0))).await?;
    let mut finals = Finals::new();
    for key in keys {
        let id = RecordKey::new(SCOPE, key.as_str());
        let state = match store.get(&id).await? {
            None => FinalState::Absent,
            Some(rec) => match rec.state {
                State::InProgress { .. } => FinalState::InProgress { token: rec.token },
                // The guard's default codec is JSON (no compression configured).
                State::Completed(o) => match serde_json::from_slice::<String>(&o.bytes) {
                    Ok(value) => FinalState::Completed {
                        token: rec.token,
                        value,
                    },
                    Err(_) => FinalState::Other(format!(
                        "completed with {:?}",
                        String::from_utf8_lossy(&o.bytes)
                    )),
                },
                other => FinalState::Other(other.name().into()),
            },
        };
        finals.insert(key.clone(), state);
    }
    Ok(finals)
}

async fn pg_connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| {
            format!("cannot connect to Postgres at {url} (start it with scripts/services.sh)")
        })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Terminates the backends of this scenario's workers (by application_name).
async fn pg_terminate(client: &tokio_postgres::Client, app: &str) -> anyhow::Result<u64> {
    let rows = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND pid <> pg_backend_pid()",
            &[&app],
        )
        .await?;
    Ok(rows.len() as u64)
}

/// One line per scenario.
pub fn scenario_line(r: &ScenarioReport) -> String {
    let c = &r.checked;
    let faults: Vec<String> = r.faults.iter().map(|(k, v)| format!("{k:?}={v}")).collect();
    format!(
        "scenario {:<8} {:<6} keys={} executions={} completions={} replays={} reconciled={} takeovers={} fenced={} refused={} dup_allowed={} errors={} faults[{}] violations={}",
        r.store.name(),
        r.policy.name(),
        c.keys,
        c.executions,
        c.completions,
        c.replays,
        c.reconciled,
        c.takeovers,
        c.fenced,
        c.refused,
        c.allowed_duplicates,
        c.errors,
        faults.join(" "),
        c.violations.len()
    )
}

/// Totals of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Seed of the fault schedule.
    pub seed: u64,
    /// Scenarios run.
    pub scenarios: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<Fault, u64>,
    /// Side effects.
    pub executions: u64,
    /// Acknowledged completions.
    pub completions: u64,
    /// Replays (including reconciles).
    pub replays: u64,
    /// Reconciles.
    pub reconciled: u64,
    /// Takeovers of ambiguous records.
    pub takeovers: u64,
    /// Fenced completions.
    pub fenced: u64,
    /// Duplicate effects allowed by `Retake`.
    pub allowed_duplicates: u64,
    /// Violations.
    pub violations: usize,
    /// Every scenario.
    pub reports: Vec<ScenarioReport>,
}

/// Adds the scenarios up.
pub fn summarize(seed: u64, reports: &[ScenarioReport]) -> Summary {
    let mut s = Summary {
        seed,
        scenarios: reports.len(),
        faults: BTreeMap::new(),
        executions: 0,
        completions: 0,
        replays: 0,
        reconciled: 0,
        takeovers: 0,
        fenced: 0,
        allowed_duplicates: 0,
        violations: 0,
        reports: reports.to_vec(),
    };
    for r in reports {
        for (k, v) in &r.faults {
            *s.faults.entry(*k).or_default() += v;
        }
        let c = &r.checked;
        s.executions += c.executions;
        s.completions += c.completions;
        s.replays += c.replays;
        s.reconciled += c.reconciled;
        s.takeovers += c.takeovers;
        s.fenced += c.fenced;
        s.allowed_duplicates += c.allowed_duplicates;
        s.violations += c.violations.len();
    }
    s
}

/// The human summary.
pub fn render(s: &Summary, reports: &[ScenarioReport]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "idemp-chaos summary (seed {})", s.seed);
    for r in reports {
        let _ = writeln!(out, "  {}", scenario_line(r));
        for v in &r.checked.violations {
            let _ = writeln!(out, "    VIOLATION {v}");
        }
    }
    let faults: Vec<String> = s.faults.iter().map(|(k, v)| format!("{k:?}={v}")).collect();
    let _ = writeln!(out, "scenarios: {}", s.scenarios);
    let _ = writeln!(out, "faults injected: {}", faults.join(" "));
    let _ = writeln!(
        out,
        "executions: {}  completions: {}  replays: {} (reconciled {})  takeovers: {}  fenced: {}  retake duplicates: {}",
        s.executions,
        s.completions,
        s.replays,
        s.reconciled,
        s.takeovers,
        s.fenced,
        s.allowed_duplicates
    );
    let _ = writeln!(out, "violations: {}", s.violations);
    out
}
