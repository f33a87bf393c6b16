//! `idemp-worker`: a test worker for multi-process, crash and chaos tests.
//!
//! It opens any store URL with [`idemp::store::open`] and logs every side effect it
//! performs to an effects file (one line per effect, `O_APPEND` + fsync), so a parent
//! process can count side effects rather than responses, even across `kill -9`.
//!
//! ```text
//! idemp-worker storm    --store URL --effects-file F [--scope S] [--keys N] [--contenders C]
//!                       [--tasks T] [--lease-ms L]
//!     Races C contenders per key on keys k0..k(N-1). The contender that acquires a key
//!     appends "SCOPE KEY TOKEN PID" to F, then completes with the value "PID:TOKEN".
//!     The others replay (waiting for a running one). Prints one line per key,
//!     "VALUE KEY VALUE", then "DONE executed=E replayed=R".
//!
//! idemp-worker crash-at claimed|effect-done|completed --store URL --key K --effects-file F
//!                       [--scope S] [--lease-ms L]
//!     Claims K (must acquire), appends the effect line (effect-done, completed), completes
//!     with "PID:TOKEN" (completed), then prints "READY POINT TOKEN" and sleeps until
//!     killed. The parent reads the line and sends SIGKILL: the kill lands exactly there.
//!
//! idemp-worker inspect  --store URL --key K [--scope S]
//!     Prints the live record as one JSON object (or `null`).
//!
//! idemp-worker debit    --store sqlite://PATH [--accounts N] [--crash-permille P]
//!                       [--lease-ms L]
//!     SQLite only. Debits each account acct0..acct(N-1) (table `accounts`, created
//!     with balance 1000) by 1, logs the debit in table `debits`, and completes the
//!     record with `SqliteStore::complete_in_tx` in the same transaction. Aborts the
//!     process with chance P per mille after the claim, after the debit (before the
//!     commit) and after the commit. Prints "DONE" when every account is settled.
//! ```
//!
//! Exit status: 0 on success, 1 on any error (one line on stderr), 3 when `crash-at`
//! could not acquire its key.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use idemp::store::{
    Claim, ClaimOutcome, Codec, DynStore, Outcome, Record, RecordKey, State, Store, StoreError,
    StoreUrl,
};
use rand::RngExt;
use rand::seq::SliceRandom;

/// Test worker for idemp's multi-process and crash tests.
#[derive(Debug, Parser)]
#[command(name = "idemp-worker", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Race contenders on many keys; log each side effect; print each key's value.
    Storm(StormArgs),
    /// Stop at a point of one execution and wait to be killed.
    CrashAt(CrashArgs),
    /// Print a record as JSON.
    Inspect(InspectArgs),
    /// SQLite only: debit accounts exactly once with `complete_in_tx`, aborting at
    /// random points.
    Debit(DebitArgs),
}

#[derive(Debug, clap::Args)]
struct DebitArgs {
    /// A sqlite://PATH store URL (the accounts live in the same file).
    #[arg(long)]
    store: String,
    /// Number of accounts (acct0 … acctN-1), each debited once by 1.
    #[arg(long, default_value_t = 100)]
    accounts: usize,
    /// Chance, per mille, to abort the process at each point of a debit (after the
    /// claim, after the debit inside the transaction, after the commit).
    #[arg(long, default_value_t = 0)]
    crash_permille: u32,
    /// Lease of each claim, in milliseconds.
    #[arg(long, default_value_t = 200)]
    lease_ms: u64,
}

#[derive(Debug, clap::Args)]
struct StormArgs {
    /// Store URL (memory:, sqlite://PATH, redis://…, postgres://…).
    #[arg(long)]
    store: String,
    /// Scope of the keys.
    #[arg(long, default_value = "storm")]
    scope: String,
    /// Number of keys (k0 … kN-1).
    #[arg(long, default_value_t = 100)]
    keys: usize,
    /// Contenders per key in this process.
    #[arg(long, default_value_t = 4)]
    contenders: usize,
    /// Concurrent tasks in this process.
    #[arg(long, default_value_t = 64)]
    tasks: usize,
    /// Lease of each claim, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    lease_ms: u64,
    /// File to append one line per side effect to.
    #[arg(long)]
    effects_file: PathBuf,
}

/// Where `crash-at` stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Point {
    /// Claimed; the side effect has not started.
    Claimed,
    /// The side effect is done (logged and fsynced); not completed.
    EffectDone,
    /// Completed in the store.
    Completed,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::Claimed => "claimed",
            Point::EffectDone => "effect-done",
            Point::Completed => "completed",
        }
    }
}

#[derive(Debug, clap::Args)]
struct CrashArgs {
    /// Where to stop.
    point: Point,
    /// Store URL.
    #[arg(long)]
    store: String,
    /// Scope of the key.
    #[arg(long, default_value = "crash")]
    scope: String,
    /// The key.
    #[arg(long)]
    key: String,
    /// Lease of the claim, in milliseconds.
    #[arg(long, default_value_t = 500)]
    lease_ms: u64,
    /// File to append the side effect line to.
    #[arg(long)]
    effects_file: PathBuf,
}

#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// Store URL.
    #[arg(long)]
    store: String,
    /// Scope of the key.
    #[arg(long, default_value = "")]
    scope: String,
    /// The key.
    #[arg(long)]
    key: String,
}

/// Retention of the records written by the worker.
const TTL: Duration = Duration::from_secs(24 * 3600);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("idemp-worker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Storm(a) => storm(a).await,
            Command::CrashAt(a) => crash_at(a).await,
            Command::Inspect(a) => inspect(a).await,
            Command::Debit(a) => debit(a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("idemp-worker: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

async fn open(url: &str) -> anyhow::Result<DynStore> {
    idemp::store::open(url)
        .await
        .with_context(|| format!("cannot open store {url}"))
}

/// Appends one line to the effects file and fsyncs it: the effect is on disk before
/// the worker goes on.
fn log_effect(path: &Path, line: &str) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open effects file {}", path.display()))?;
    f.write_all(format!("{line}\n").as_bytes())?;
    f.sync_data()?;
    Ok(())
}

/// Runs one contender until the key has a value.
async fn contend(
    store: &DynStore,
    args: &StormArgs,
    key: &str,
    executed: &AtomicU64,
) -> anyhow::Result<String> {
    let id = RecordKey::new(args.scope.clone(), key);
    let claim = Claim::new(id.clone())
        .lease(Duration::from_millis(args.lease_ms))
        .ttl(TTL);
    let pid = std::process::id();
    loop {
        match store.claim(&claim).await? {
            ClaimOutcome::Acquired { token, .. } => {
                let path = args.effects_file.clone();
                let line = format!("{} {key} {token} {pid}", args.scope);
                tokio::task::spawn_blocking(move || log_effect(&path, &line)).await??;
                executed.fetch_add(1, Ordering::Relaxed);
                let value = format!("{pid}:{token}");
                let outcome = Outcome::new(Codec::Raw, value.clone().into_bytes());
                store.complete(&id, token, outcome, TTL).await?;
                return Ok(value);
            }
            ClaimOutcome::Existing(rec) => {
                let rec = if rec.state.is_settled() {
                    Some(rec)
                } else {
                    store.wait(&id, Duration::from_secs(60)).await?
                };
                match rec.map(|r| r.state) {
                    Some(State::Completed(o)) => {
                        return Ok(String::from_utf8_lossy(&o.bytes).into_owned());
                    }
                    Some(State::Failed(_)) => bail!("{id} failed"),
                    // Released or gone: race again. Still running: wait again.
                    None | Some(State::InProgress { .. }) => continue,
                }
            }
            ClaimOutcome::Mismatch(r) => bail!("fingerprint mismatch on {}", r.id),
        }
    }
}

async fn storm(args: StormArgs) -> anyhow::Result<ExitCode> {
    let store = open(&args.store).await?;
    let args = Arc::new(args);
    let mut slots: Vec<usize> = (0..args.keys)
        .flat_map(|k| std::iter::repeat_n(k, args.contenders))
        .collect();
    slots.shuffle(&mut rand::rng());
    let executed = Arc::new(AtomicU64::new(0));
    let tasks = args.tasks.max(1);
    let per_task = slots.len().div_ceil(tasks).max(1);
    let mut handles = Vec::new();
    for chunk in slots.chunks(per_task) {
        let chunk = chunk.to_vec();
        let store = store.clone();
        let args = args.clone();
        let executed = executed.clone();
        handles.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(chunk.len());
            for k in chunk {
                let key = format!("k{k}");
                let v = contend(&store, &args, &key, &executed).await?;
                got.push((k, v));
            }
            anyhow::Ok(got)
        }));
    }
    let mut values: Vec<Option<String>> = vec![None; args.keys];
    for h in handles {
        for (k, v) in h.await?? {
            match &values[k] {
                Some(prev) if *prev != v => {
                    bail!("key k{k}: contenders got different values {prev} and {v}")
                }
                _ => values[k] = Some(v),
            }
        }
    }
    let mut out = std::io::stdout().lock();
    for (k, v) in values.iter().enumerate() {
        if let Some(v) = v {
            writeln!(out, "VALUE k{k} {v}")?;
        }
    }
    let executed = executed.load(Ordering::Relaxed);
    let total = (args.keys * args.contenders) as u64;
    writeln!(
        out,
        "DONE executed={executed} replayed={}",
        total - executed
    )?;
    Ok(ExitCode::SUCCESS)
}

async fn crash_at(args: CrashArgs) -> anyhow::Result<ExitCode> {
    let store = open(&args.store).await?;
    let id = RecordKey::new(args.scope.clone(), args.key.clone());
    let claim = Claim::new(id.clone())
        .lease(Duration::from_millis(args.lease_ms))
        .ttl(TTL)
        .take_over_expired(false);
    let token = match store.claim(&claim).await? {
        ClaimOutcome::Acquired { token, .. } => token,
        other => {
            eprintln!("idemp-worker: {id} was not acquired: {other:?}");
            return Ok(ExitCode::from(3));
        }
    };
    if args.point != Point::Claimed {
        let line = format!("{} {} {token} {}", args.scope, args.key, std::process::id());
        log_effect(&args.effects_file, &line)?;
    }
    if args.point == Point::Completed {
        let value = format!("{}:{token}", std::process::id());
        store
            .complete(
                &id,
                token,
                Outcome::new(Codec::Raw, value.into_bytes()),
                TTL,
            )
            .await?;
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY {} {token}", args.point.name())?;
        out.flush()?;
    }
    // Wait to be killed. Exiting on its own would be a bug of the parent test.
    tokio::time::sleep(Duration::from_secs(600)).await;
    bail!("not killed within 600 s")
}

fn record_json(r: &Record) -> serde_json::Value {
    let (lease_until, outcome) = match &r.state {
        State::InProgress { lease_until } => (Some(*lease_until), None),
        State::Completed(o) | State::Failed(o) => (None, Some(o)),
    };
    serde_json::json!({
        "scope": r.id.scope,
        "key": r.id.key,
        "state": r.state.name(),
        "token": r.token,
        "attempts": r.attempts,
        "created_at_ms": r.created_at,
        "updated_at_ms": r.updated_at,
        "expires_at_ms": r.expires_at,
        "lease_until_ms": lease_until,
        "outcome_utf8": outcome.map(|o| String::from_utf8_lossy(&o.bytes).into_owned()),
    })
}

async fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let store = open(&args.store).await?;
    let id = RecordKey::new(args.scope, args.key);
    let rec = store.get(&id).await?;
    let json = rec.as_ref().map_or(serde_json::Value::Null, record_json);
    println!("{json}");
    Ok(ExitCode::SUCCESS)
}

/// Aborts the process (no unwinding, no destructors: like `kill -9`) with the given
/// chance per mille.
fn maybe_crash(permille: u32) {
    if permille > 0 && rand::rng().random_range(0..1000) < permille {
        std::process::abort();
    }
}

async fn debit(args: DebitArgs) -> anyhow::Result<ExitCode> {
    use idemp::store::sqlite::SqliteStore;
    use idemp::store::sqlite::rusqlite::{TransactionBehavior, params};

    let StoreUrl::Sqlite { path } = args.store.parse::<StoreUrl>()? else {
        bail!("debit needs a sqlite://PATH store, got {}", args.store);
    };
    let store = SqliteStore::open(&path)?;
    let mut conn = store.connection()?;
    {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS debits (id TEXT NOT NULL, token INTEGER NOT NULL,
                                                pid INTEGER NOT NULL);",
        )?;
        for k in 0..args.accounts {
            tx.execute(
                "INSERT OR IGNORE INTO accounts (id, balance) VALUES (?1, 1000)",
                [format!("acct{k}")],
            )?;
        }
        tx.commit()?;
    }
    let mut order: Vec<usize> = (0..args.accounts).collect();
    order.shuffle(&mut rand::rng());
    let lease = Duration::from_millis(args.lease_ms);
    let pid = std::process::id();
    for k in order {
        let acct = format!("acct{k}");
        let id = RecordKey::new("debit", acct.clone());
        let claim = Claim::new(id.clone()).lease(lease).ttl(TTL);
        loop {
            match store.claim(&claim).await? {
                ClaimOutcome::Acquired { token, .. } => {
                    maybe_crash(args.crash_permille);
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    tx.execute(
                        "UPDATE accounts SET balance = balance - 1 WHERE id = ?1",
                        [&acct],
                    )?;
                    tx.execute(
                        "INSERT INTO debits (id, token, pid) VALUES (?1, ?2, ?3)",
                        params![acct, token as i64, pid],
                    )?;
                    maybe_crash(args.crash_permille);
                    let outcome = Outcome::new(Codec::Json, b"999".to_vec());
                    match store.complete_in_tx(&tx, &id, token, outcome, TTL) {
                        Ok(()) => {
                            tx.commit()?;
                            maybe_crash(args.crash_permille);
                            break;
                        }
                        // Lost the lease: roll the debit back and look again.
                        Err(StoreError::Fenced { .. }) => drop(tx),
                        Err(e) => return Err(e.into()),
                    }
                }
                ClaimOutcome::Existing(rec) => match rec.state {
                    State::Completed(_) => break,
                    State::Failed(_) => bail!("{id} failed"),
                    // A live owner, or a crashed one whose lease has not passed yet.
                    State::InProgress { .. } => {
                        store.wait(&id, lease).await?;
                    }
                },
                ClaimOutcome::Mismatch(r) => bail!("fingerprint mismatch on {}", r.id),
            }
        }
    }
    println!("DONE");
    Ok(ExitCode::SUCCESS)
}
