//! The `worker` subcommand: guarded executions against one shared store until killed.
//!
//! Each task loops: pick a key of the current generation (`g{N}-k{i}`, `N` advancing
//! every `gen_ms` of wall time, so many contenders meet on few keys and new keys keep
//! coming), claim it through [`Guard::begin`], and as owner run the side effect
//! (append "key token worker" to the effects log, under an exclusive file lock, only
//! while the lease is fresh), linger a little, then complete with "worker:token".
//! Every observation is appended to this worker's history file with fsync.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use idemp::clock::{Clock, Millis, SharedClock};
use idemp::guard::{
    Begin, Disposition, Guard, GuardError, LeaseSignal, OnAmbiguous, OnDuplicate, OnInterrupt,
};
use idemp::store::{DynStore, StoreError};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::checker::Policy;
use crate::history::{Effect, Event, append_line, read_effects};

/// The scope of every chaos key.
pub const SCOPE: &str = "chaos";

/// The store a worker opens.
#[derive(Clone, Debug)]
pub enum StoreSpec {
    /// A SQLite file shared by all workers.
    Sqlite(PathBuf),
    /// A Redis URL (with `?prefix=`).
    Redis(String),
    /// Postgres: client URL, schema, application_name.
    Postgres {
        /// Client URL.
        url: String,
        /// Schema.
        schema: String,
        /// application_name of the worker's connections.
        app: String,
    },
}

/// A clock that is `offset_ms` off the system clock (SQLite workers).
#[derive(Debug, Clone, Copy)]
pub struct OffsetClock(pub i64);

impl Clock for OffsetClock {
    fn now_ms(&self) -> Millis {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        (now + self.0).max(0) as u64
    }
}

/// A worker's settings.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Worker id (no spaces).
    pub id: String,
    /// The store.
    pub store: StoreSpec,
    /// Effects log.
    pub effects: PathBuf,
    /// Lock file guarding the effects log.
    pub lock: PathBuf,
    /// This worker's history file.
    pub history: PathBuf,
    /// Policy.
    pub policy: Policy,
    /// Lease.
    pub lease: Duration,
    /// Clock offset (SQLite only).
    pub clock_offset_ms: i64,
    /// Keys per generation.
    pub keys: usize,
    /// Wall-clock ms since the epoch at which generation 0 started.
    pub epoch_ms: u64,
    /// Length of a generation.
    pub gen_ms: u64,
    /// Concurrent tasks.
    pub tasks: usize,
    /// Upper bound of the pause between the effect and the completion.
    pub work_ms: u64,
    /// Seed.
    pub seed: u64,
    /// Negative control: also run the effect when the key is held by a live owner.
    pub sabotage: bool,
}

/// Opens the store of `spec` (with `clock` for SQLite).
pub async fn open_store(spec: &StoreSpec, clock: SharedClock) -> anyhow::Result<DynStore> {
    Ok(match spec {
        StoreSpec::Sqlite(path) => Arc::new(
            idemp::store::sqlite::SqliteStore::builder(path)
                .clock(clock)
                .open()
                .context("cannot open the SQLite store")?,
        ),
        StoreSpec::Redis(url) => Arc::new(
            idemp::store::redis::RedisStore::connect(url)
                .await
                .context("cannot connect to Redis")?,
        ),
        StoreSpec::Postgres { url, schema, app } => {
            use idemp::store::postgres::{PostgresOptions, PostgresStore};
            Arc::new(
                PostgresStore::connect_with(
                    url,
                    PostgresOptions::default()
                        .schema(schema.clone())
                        .application_name(app.clone())
                        .pool_size(4),
                )
                .await
                .context("cannot connect to Postgres")?,
            )
        }
    })
}

/// Runs `f` while holding an exclusive lock on `lock` (blocking).
fn with_lock<T>(lock: &Path, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock)
        .with_context(|| format!("cannot open {}", lock.display()))?;
    file.lock()?;
    let out = f();
    let _ = file.unlock();
    out
}

/// The first logged effect of `key`, read under the lock (the `Verify` reconcile).
fn find_effect(effects: &Path, lock: &Path, key: &str) -> anyhow::Result<Option<String>> {
    with_lock(lock, || {
        Ok(read_effects(effects)?
            .into_iter()
            .find(|e| e.key == key)
            .map(|e| e.value()))
    })
}

struct Ctx {
    cfg: WorkerConfig,
    guard: Guard,
}

impl Ctx {
    fn log(&self, ev: &Event) {
        if let Ok(line) = serde_json::to_string(ev) {
            // Losing the history file is fatal for the checker: die loudly.
            if let Err(e) = append_line(&self.cfg.history, &line) {
                eprintln!("idemp-chaos worker {}: {e:#}", self.cfg.id);
                std::process::exit(1);
            }
        }
    }
}

/// Runs the worker until killed.
pub async fn run(cfg: WorkerConfig) -> anyhow::Result<()> {
    let clock: SharedClock = Arc::new(OffsetClock(cfg.clock_offset_ms));
    let store = open_store(&cfg.store, clock.clone()).await?;
    let policy = match cfg.policy {
        Policy::Retake => OnAmbiguous::Retake,
        Policy::Verify => {
            let (effects, lock) = (cfg.effects.clone(), cfg.lock.clone());
            OnAmbiguous::verify(move |id: idemp::store::RecordKey| {
                let (effects, lock) = (effects.clone(), lock.clone());
                async move {
                    tokio::task::spawn_blocking(move || find_effect(&effects, &lock, &id.key))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| format!("{e:#}"))
                }
            })
        }
    };
    let guard = Guard::builder(store)
        .scope(SCOPE)
        .lease(cfg.lease)
        .ttl(Duration::from_secs(3600))
        .on_duplicate(OnDuplicate::Replay)
        .on_ambiguous(policy)
        // A dropped owner keeps its record: it may have run its effect.
        .on_cancel(OnInterrupt::Keep)
        .clock(clock)
        .build();
    let ctx = Arc::new(Ctx { cfg, guard });
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..ctx.cfg.tasks.max(1) {
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(ctx.cfg.seed ^ ((t as u64) << 32));
            loop {
                one(&ctx, &mut rng).await;
            }
        });
    }
    // The tasks loop until the process is killed; a panicking one ends the worker.
    if let Some(Err(e)) = tasks.join_next().await {
        return Err(e.into());
    }
    Ok(())
}

fn is_fenced(e: &GuardError) -> bool {
    matches!(
        e,
        GuardError::LeaseLost { .. } | GuardError::Store(StoreError::Fenced { .. })
    )
}

/// One guarded call.
async fn one(ctx: &Ctx, rng: &mut StdRng) {
    let cfg = &ctx.cfg;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    // Mostly the current generation; sometimes one up to a second back, so keys whose
    // owner died are revisited after their lease passed (takeovers).
    let current = now.saturating_sub(cfg.epoch_ms) / cfg.gen_ms.max(1);
    let back = if rng.random_range(0..4) == 0 {
        rng.random_range(1..=(1000 / cfg.gen_ms.max(1)).max(1))
    } else {
        0
    };
    let generation = current.saturating_sub(back);
    let key = format!("g{generation}-k{}", rng.random_range(0..cfg.keys.max(1)));
    let worker = cfg.id.clone();
    // Taken before the claim: the store's lease started after this instant.
    let started = Instant::now();
    match ctx.guard.begin(&key, None).await {
        Ok(Begin::Owner(lease)) => {
            let token = lease.token();
            ctx.log(&Event::Claim {
                worker: worker.clone(),
                key: key.clone(),
                token,
                takeover: lease.takeover(),
            });
            let effect = Effect {
                key: key.clone(),
                token,
                worker: worker.clone(),
            };
            let ran = run_effect(cfg, &effect, lease.signal(), started).await;
            match ran {
                Ok(true) => {}
                Ok(false) => {
                    ctx.log(&Event::Refused { worker, key, token });
                    let _ = lease.release().await;
                    return;
                }
                Err(e) => {
                    eprintln!("idemp-chaos worker {}: effect: {e:#}", cfg.id);
                    std::process::exit(1);
                }
            }
            let pause = rng.random_range(0..=cfg.work_ms);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let value = effect.value();
            match lease.complete(&value).await {
                Ok(()) => ctx.log(&Event::Ok {
                    worker,
                    key,
                    token,
                    value,
                }),
                Err(e) if is_fenced(&e) => ctx.log(&Event::Fenced { worker, key, token }),
                Err(e) => ctx.log(&Event::Error {
                    worker,
                    key,
                    message: format!("complete: {e}"),
                }),
            }
        }
        Ok(Begin::Completed(replay)) => {
            let info = *replay.info();
            match replay.decode::<String>() {
                Ok(value) => ctx.log(&Event::Replay {
                    worker,
                    key,
                    token: info.token,
                    value,
                    reconciled: info.disposition == Disposition::Reconciled,
                }),
                Err(e) => ctx.log(&Event::Error {
                    worker,
                    key,
                    message: format!("replay: {e}"),
                }),
            }
            // A caller that got its answer comes back a little later.
            let pause = rng.random_range(5..=25);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        Ok(Begin::InProgress { record, .. }) if cfg.sabotage => {
            // Negative control: behave like a broken guard that lets a second caller
            // run while the owner is live. The checker must flag the duplicate.
            let effect = Effect {
                key: key.clone(),
                token: record.token,
                worker: worker.clone(),
            };
            if let Ok(true) = run_effect(cfg, &effect, LeaseSignal::new(), Instant::now()).await {
                ctx.log(&Event::Claim {
                    worker,
                    key,
                    token: record.token,
                    takeover: None,
                });
            }
        }
        Ok(Begin::InProgress { retry_after, .. }) => {
            let wait = retry_after.min(Duration::from_millis(50));
            tokio::time::sleep(wait.max(Duration::from_millis(5))).await;
        }
        Ok(other) => {
            ctx.log(&Event::Error {
                worker,
                key,
                message: format!("unexpected: {other:?}"),
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(e) => {
            ctx.log(&Event::Error {
                worker,
                key,
                message: format!("begin: {e}"),
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs the side effect under the effects lock, only if the lease is not known lost
/// and less than 2/5 of it has passed since before the claim (so a takeover, even by
/// a worker whose clock is up to lease/4 ahead while ours is lease/4 behind, cannot
/// have happened yet). Returns whether the effect ran.
async fn run_effect(
    cfg: &WorkerConfig,
    effect: &Effect,
    signal: LeaseSignal,
    started: Instant,
) -> anyhow::Result<bool> {
    let (effects, lock, line) = (cfg.effects.clone(), cfg.lock.clone(), effect.line());
    let fresh_for = cfg.lease * 2 / 5;
    tokio::task::spawn_blocking(move || {
        with_lock(&lock, || {
            if signal.is_lost() || started.elapsed() >= fresh_for {
                return Ok(false);
            }
            append_line(&effects, &line)?;
            Ok(true)
        })
    })
    .await?
}
