//! `idemp-chaos`: a chaos harness for idemp's guard with a Jepsen-style history checker.
//!
//! ```text
//! idemp-chaos run [--short|--long] [--store sqlite|redis|postgres|all] [--seed N] [--json]
//! ```
//!
//! For each store and each ambiguity policy (`Verify` reading the effects log, and
//! `Retake`), the orchestrator spawns worker processes (this binary, `worker`
//! subcommand) that race guarded executions (`Guard::begin`, short lease, heartbeat
//! on) on a small key space against ONE shared store:
//!
//! * SQLite: a file in a temp dir; each worker's clock is offset by up to ±lease/4
//!   (the SQLite store reads the client clock);
//! * Redis: a private `redis-server` on a free port with AOF `appendfsync always`, that
//!   the scenario restarts (SIGKILL + start) while the workers run;
//! * Postgres: the machine's server (`IDEMP_TEST_POSTGRES_URL`, default
//!   `postgres://postgres@127.0.0.1:5432/test`) in a schema of its own; the workers'
//!   backends (a unique `application_name`) are killed with `pg_terminate_backend`.
//!
//! Faults on every store: `kill -9` of random workers (a new one is spawned), SIGSTOP
//! of a worker for more than twice the lease, then SIGCONT (its completion is fenced).
//!
//! A side effect appends "key token worker" to an effects log (`O_APPEND` + fsync,
//! under a file lock, only while the lease is fresh) before the completion; the
//! workers append their history (claims, takeovers, completions, fenced, replays,
//! reconciles, refusals, errors) as fsynced JSON lines. At the end the checker
//! ([`checker`]) reads the logs and the store's final records and reports violations;
//! the exit status is 1 on any violation (2 on a harness error).
//!
//! Modes: `--short` (default; ~8 s per scenario, 6 scenarios, about a minute: what CI
//! runs) and `--long` (60 s per scenario, more workers and keys: for soak runs before a
//! release). `scripts/chaos` wraps both.

mod checker;
mod history;
mod orchestrator;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use checker::Policy;
use orchestrator::{RunConfig, StoreKind};

/// Chaos harness for idemp's guard.
#[derive(Debug, Parser)]
#[command(name = "idemp-chaos", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run scenarios under faults and check their histories.
    Run(RunArgs),
    /// (internal) One worker process of a scenario.
    Worker(Box<WorkerArgs>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreArg {
    Sqlite,
    Redis,
    Postgres,
    All,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Short mode (default): about 8 s per scenario.
    #[arg(long, conflicts_with = "long")]
    short: bool,
    /// Long mode: 60 s per scenario, more workers and keys.
    #[arg(long)]
    long: bool,
    /// Which store(s).
    #[arg(long, value_enum, default_value = "all")]
    store: StoreArg,
    /// Seed of the fault schedule (default: from the time).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Seconds per scenario (overrides the mode).
    #[arg(long)]
    seconds: Option<u64>,
    /// Negative control of the checker: workers also run the effect of keys held by
    /// a live owner (a broken guard). The run must then report violations.
    #[arg(long, hide = true)]
    sabotage: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PolicyArg {
    Verify,
    Retake,
}

#[derive(Debug, clap::Args)]
struct WorkerArgs {
    #[arg(long)]
    id: String,
    #[arg(long)]
    sqlite: Option<PathBuf>,
    #[arg(long)]
    redis: Option<String>,
    #[arg(long)]
    postgres: Option<String>,
    #[arg(long, default_value = "")]
    schema: String,
    #[arg(long, default_value = "")]
    app: String,
    #[arg(long)]
    effects: PathBuf,
    #[arg(long)]
    lock: PathBuf,
    #[arg(long)]
    history: PathBuf,
    #[arg(long, value_enum)]
    policy: PolicyArg,
    #[arg(long)]
    lease_ms: u64,
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    clock_offset_ms: i64,
    #[arg(long)]
    keys: usize,
    #[arg(long)]
    epoch_ms: u64,
    #[arg(long)]
    gen_ms: u64,
    #[arg(long, default_value_t = 3)]
    tasks: usize,
    #[arg(long, default_value_t = 150)]
    work_ms: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    sabotage: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run(a) => run(a),
        Cmd::Worker(a) => worker_main(*a),
    }
}

fn worker_main(a: WorkerArgs) -> ExitCode {
    let store = match (a.sqlite, a.redis, a.postgres) {
        (Some(p), None, None) => worker::StoreSpec::Sqlite(p),
        (None, Some(u), None) => worker::StoreSpec::Redis(u),
        (None, None, Some(url)) => worker::StoreSpec::Postgres {
            url,
            schema: a.schema,
            app: a.app,
        },
        _ => {
            eprintln!("idemp-chaos worker: give exactly one of --sqlite, --redis, --postgres");
            return ExitCode::from(2);
        }
    };
    let cfg = worker::WorkerConfig {
        id: a.id,
        store,
        effects: a.effects,
        lock: a.lock,
        history: a.history,
        policy: match a.policy {
            PolicyArg::Verify => Policy::Verify,
            PolicyArg::Retake => Policy::Retake,
        },
        lease: Duration::from_millis(a.lease_ms),
        clock_offset_ms: a.clock_offset_ms,
        keys: a.keys,
        epoch_ms: a.epoch_ms,
        gen_ms: a.gen_ms,
        tasks: a.tasks,
        work_ms: a.work_ms,
        seed: a.seed,
        sabotage: a.sabotage,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("idemp-chaos worker: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(worker::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idemp-chaos worker: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(a: RunArgs) -> ExitCode {
    let stores = match a.store {
        StoreArg::Sqlite => vec![StoreKind::Sqlite],
        StoreArg::Redis => vec![StoreKind::Redis],
        StoreArg::Postgres => vec![StoreKind::Postgres],
        StoreArg::All => vec![StoreKind::Sqlite, StoreKind::Redis, StoreKind::Postgres],
    };
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let long = a.long && !a.short;
    let cfg = RunConfig {
        stores,
        duration: Duration::from_secs(a.seconds.unwrap_or(if long { 60 } else { 8 })),
        workers: if long { 6 } else { 4 },
        tasks: 3,
        keys: if long { 8 } else { 4 },
        gen_ms: 250,
        lease: Duration::from_millis(400),
        seed,
        sabotage: a.sabotage,
        postgres_url: std::env::var("IDEMP_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
    };
    eprintln!(
        "idemp-chaos: seed={seed} mode={} {}s per scenario, {} workers x {} tasks, lease {} ms",
        if long { "long" } else { "short" },
        cfg.duration.as_secs(),
        cfg.workers,
        cfg.tasks,
        cfg.lease.as_millis()
    );
    let reports = match orchestrator::run(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("idemp-chaos: {e:#}");
            return ExitCode::from(2);
        }
    };
    let summary = orchestrator::summarize(seed, &reports);
    if a.json {
        match serde_json::to_string_pretty(&summary) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("idemp-chaos: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", orchestrator::render(&summary, &reports));
    }
    if summary.violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
