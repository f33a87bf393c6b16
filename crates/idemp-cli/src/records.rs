//! `idemp records ls|show KEY|purge KEY|stats [--store URL] [--json]`: inspect and
//! manage the records of a store; `idemp records resolve KEY --executed|--not-executed`
//! settles an ambiguous one.
//!
//! `--scope` takes a scope as `ls` and `show` print it: `-` is the empty scope.
//!
//! ## Resolving an ambiguous record
//!
//! A record is ambiguous when the request was sent and its outcome was lost (a
//! timeout, a reset, a crash): nobody knows whether the side effect happened. When an
//! operator has found out (in the upstream's own records, a payment dashboard…):
//!
//! * `--executed`: the record is completed with an answer saying so, and every retry
//!   gets it (`409`, type `https://idemp.dev/problems/response-not-stored`,
//!   `x-should-retry: false`, and `idemp-resolved: executed`), never a second run;
//! * `--not-executed`: the record is deleted, and the next request runs.
//!
//! Only a record that is still ambiguous is changed (through `Guard::resolve`, one
//! atomic takeover): one in progress whose lease has not passed, or one already
//! settled, is left alone and reported.
//!
//! The store defaults to `sqlite://idemp.db` (the same as `idemp serve`), or
//! `$IDEMP_STORE`. A SQLite path that does not exist is reported as "no such store"
//! and never created; a file that is not an idemp store is refused and left untouched.
//!
//! ## JSON output (`--json`, one document, stable field names)
//!
//! A record:
//! ```json
//! {"scope": "charge", "key": "order-42", "state": "completed",
//!  "token": 7, "attempts": 1, "fingerprint": "ab12…" | null,
//!  "created_at_ms": 1700000000000, "updated_at_ms": 1700000000123,
//!  "expires_at_ms": 1700086400123 | null, "lease_until_ms": null | 1700000060000,
//!  "outcome": null | {"codec": "json|raw|postcard", "compression": "none|lz4|zstd",
//!                     "size": 18}}
//! ```
//! `state` is `in_progress`, `ambiguous` (in progress, lease passed), `completed` or
//! `failed`. `show` adds to `outcome` one of `"json"` (the decoded JSON value),
//! `"text"` (UTF-8) or `"hex_prefix"` (the first 64 bytes, hex).
//!
//! * `ls`: `{"records": [record…], "count": N, "truncated": bool}`
//! * `show`: a record
//! * `purge`: `{"scope": S, "key": K, "purged": true}`
//! * `resolve`: `{"scope": S, "key": K, "resolved": "executed" | "not_executed"}`
//! * `stats`: `{"in_progress": N, "ambiguous": N, "completed": N, "failed": N,
//!   "total": N, "outcome_bytes": N | null}`

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use idemp::guard::{Guard, Resolution, Resolved, ValueCodec};
use idemp::http::StoredResponse;
use idemp::store::sqlite::SqliteStore;
use idemp::store::{Compression, DynStore, ListQuery, Outcome, Record, RecordKey, State, StoreUrl};
use serde_json::{Value, json};

/// The store used when neither `--store` nor `IDEMP_STORE` is given.
pub const DEFAULT_STORE: &str = "sqlite://idemp.db";

/// Arguments of `idemp records`.
#[derive(Debug, clap::Args)]
pub struct RecordsArgs {
    #[command(subcommand)]
    command: RecordsCommand,
    /// Store URL: sqlite://PATH, redis://HOST:PORT/DB, postgres://USER@HOST:PORT/DB.
    #[arg(long, global = true, env = "IDEMP_STORE", default_value = DEFAULT_STORE)]
    store: String,
    /// Print one JSON document instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum RecordsCommand {
    /// List records, ordered by scope and key.
    Ls {
        /// Only this scope.
        #[arg(long)]
        scope: Option<String>,
        /// Only keys starting with this prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// At most this many records (default: all).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show one record, with its outcome decoded when it is JSON or text.
    Show {
        /// The idempotency key.
        key: String,
        /// The record's scope, as `ls` prints it (`-`: the empty scope).
        #[arg(long, default_value = "")]
        scope: String,
    },
    /// Delete one record whatever its state (its owner, if any, is fenced).
    Purge {
        /// The idempotency key.
        key: String,
        /// The record's scope, as `ls` prints it (`-`: the empty scope).
        #[arg(long, default_value = "")]
        scope: String,
    },
    /// Settle an ambiguous record: the request was executed (retries are told so) or
    /// was not (the next request runs).
    #[command(group(clap::ArgGroup::new("outcome").required(true).args(["executed", "not_executed"])))]
    Resolve {
        /// The idempotency key.
        key: String,
        /// The record's scope, as `ls` prints it (`-`: the empty scope).
        #[arg(long, default_value = "")]
        scope: String,
        /// The side effect happened: complete the record; retries get a problem saying
        /// it was executed, never a second run.
        #[arg(long)]
        executed: bool,
        /// The side effect did not happen: delete the record; the next request runs.
        #[arg(long)]
        not_executed: bool,
        /// How long an `--executed` record is kept.
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
    /// Count records by state.
    Stats,
}

/// Runs `idemp records`.
pub fn run(args: RecordsArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(run_async(args))
}

async fn run_async(args: RecordsArgs) -> anyhow::Result<()> {
    let store = open_existing(&args.store).await?;
    let now = now_ms();
    let mut out = String::new();
    match args.command {
        RecordsCommand::Ls {
            scope,
            prefix,
            limit,
        } => {
            let (records, truncated) = list_all(&store, scope, prefix, limit).await?;
            if args.json {
                let doc = json!({
                    "records": records.iter().map(|r| record_json(r, now, false)).collect::<Vec<_>>(),
                    "count": records.len(),
                    "truncated": truncated,
                });
                writeln!(out, "{doc}")?;
            } else if records.is_empty() {
                eprintln!("no records");
            } else {
                out = table(&records, now);
                if truncated {
                    eprintln!("(more records: raise --limit)");
                }
            }
        }
        RecordsCommand::Show { key, scope } => {
            let id = RecordKey::new(scope_arg(scope), key);
            let Some(rec) = store.get(&id).await? else {
                bail!("no record {}", describe(&id));
            };
            if args.json {
                writeln!(out, "{}", record_json(&rec, now, true))?;
            } else {
                out = show_text(&rec, now);
            }
        }
        RecordsCommand::Purge { key, scope } => {
            let id = RecordKey::new(scope_arg(scope), key);
            if !store.purge(&id).await? {
                bail!("no record {}", describe(&id));
            }
            if args.json {
                writeln!(
                    out,
                    "{}",
                    json!({"scope": id.scope, "key": id.key, "purged": true})
                )?;
            } else {
                writeln!(out, "purged {}", describe(&id))?;
            }
        }
        RecordsCommand::Resolve {
            key,
            scope,
            executed,
            not_executed: _,
            ttl,
        } => {
            let id = RecordKey::new(scope_arg(scope), key);
            let ttl = parse_ttl(&ttl)?;
            resolve(&store, &id, executed, ttl, now).await?;
            let word = if executed { "executed" } else { "not_executed" };
            if args.json {
                writeln!(
                    out,
                    "{}",
                    json!({"scope": id.scope, "key": id.key, "resolved": word})
                )?;
            } else if executed {
                writeln!(
                    out,
                    "resolved {} as executed: retries are told so and never run it again",
                    describe(&id)
                )?;
            } else {
                writeln!(
                    out,
                    "resolved {} as not executed: the record is gone and the next request runs",
                    describe(&id)
                )?;
            }
        }
        RecordsCommand::Stats => {
            let s = store.stats().await?;
            let total = s.in_progress + s.ambiguous + s.completed + s.failed;
            if args.json {
                let doc = json!({
                    "in_progress": s.in_progress,
                    "ambiguous": s.ambiguous,
                    "completed": s.completed,
                    "failed": s.failed,
                    "total": total,
                    "outcome_bytes": s.outcome_bytes,
                });
                writeln!(out, "{doc}")?;
            } else {
                let rows = [
                    ("in_progress", s.in_progress.to_string()),
                    ("ambiguous", s.ambiguous.to_string()),
                    ("completed", s.completed.to_string()),
                    ("failed", s.failed.to_string()),
                    ("total", total.to_string()),
                    (
                        "outcome_bytes",
                        s.outcome_bytes.map_or("-".into(), |b| b.to_string()),
                    ),
                ];
                for (name, v) in rows {
                    writeln!(out, "{name:<13} {v}")?;
                }
            }
        }
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// A scope as `ls` and `show` print it: `-` is the empty scope.
fn scope_arg(scope: String) -> String {
    if scope == "-" { String::new() } else { scope }
}

fn parse_ttl(s: &str) -> anyhow::Result<Duration> {
    let d = match s.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s.trim())
            .map_err(|e| anyhow::anyhow!("invalid --ttl `{s}`: {e} (write e.g. 24h)"))?,
    };
    if d < Duration::from_secs(1) || d > Duration::from_secs(3650 * 86400) {
        bail!("invalid --ttl `{s}`: between 1s and 3650d");
    }
    Ok(d)
}

/// Bytes that postcard writes as they are: a tuple of `u8`s has no length prefix, so a
/// guard with the postcard codec stores exactly these bytes.
struct RawPostcard<'a>(&'a [u8]);

impl serde::Serialize for RawPostcard<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = serializer.serialize_tuple(self.0.len())?;
        for b in self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

/// The response a retry of an operator-resolved, executed request gets: a problem
/// saying it was executed, and when it was resolved.
fn executed_response(now_ms: u64) -> StoredResponse {
    let body = json!({
        "type": "https://idemp.dev/problems/response-not-stored",
        "title": "The request was executed; its response is not available",
        "status": 409,
        "detail": format!(
            "an earlier attempt with this Idempotency-Key was executed, as an operator confirmed with `idemp records resolve --executed` at {}; its response was lost, and the request is not run again",
            rfc3339(now_ms)
        ),
    });
    StoredResponse {
        status: 409,
        headers: vec![
            ("content-type".into(), b"application/problem+json".to_vec()),
            ("cache-control".into(), b"no-store".to_vec()),
            ("x-should-retry".into(), b"false".to_vec()),
            ("stripe-should-retry".into(), b"false".to_vec()),
            ("idemp-resolved".into(), b"executed".to_vec()),
        ],
        body: body.to_string().into_bytes(),
    }
}

/// Settles an ambiguous record through `Guard::resolve`.
async fn resolve(
    store: &DynStore,
    id: &RecordKey,
    executed: bool,
    ttl: Duration,
    now: u64,
) -> anyhow::Result<()> {
    let guard = Guard::builder(store.clone())
        .scope(id.scope.clone())
        .ttl(ttl)
        .codec(ValueCodec::Postcard)
        .build();
    let outcome = executed_response(now).to_outcome();
    if outcome.codec != idemp::store::Codec::Postcard || outcome.compression != Compression::None {
        bail!("this build cannot write the HTTP layer's stored responses through the guard");
    }
    let resolution = if executed {
        Resolution::Completed(RawPostcard(&outcome.bytes))
    } else {
        Resolution::Retake
    };
    match guard.resolve(&id.key, resolution).await {
        Ok(Resolved::Applied) => Ok(()),
        Ok(Resolved::NotAmbiguous("absent")) => bail!("no record {}", describe(id)),
        Ok(Resolved::NotAmbiguous("in_progress")) => bail!(
            "{} is in progress and its lease has not passed: it may still be running; wait for it to settle or for its lease to pass",
            describe(id)
        ),
        Ok(Resolved::NotAmbiguous(state)) => bail!(
            "{} is not ambiguous: it is already {state}; nothing changed",
            describe(id)
        ),
        Err(e) => Err(anyhow::anyhow!(e).context(format!("cannot resolve {}", describe(id)))),
    }
}

/// Opens a store without creating anything: a missing SQLite file is "no such store".
async fn open_existing(url: &str) -> anyhow::Result<DynStore> {
    let parsed: StoreUrl = url.parse()?;
    match &parsed {
        StoreUrl::Sqlite { path } => {
            if !path.exists() {
                bail!(
                    "no such store: {} does not exist (pass --store or set IDEMP_STORE)",
                    path.display()
                );
            }
            let store = SqliteStore::builder(path)
                .create_if_missing(false)
                .open()
                .with_context(|| format!("cannot open store {parsed}"))?;
            Ok(std::sync::Arc::new(store))
        }
        _ => idemp::store::open_parsed(&parsed)
            .await
            .with_context(|| format!("cannot open store {parsed}")),
    }
}

async fn list_all(
    store: &DynStore,
    scope: Option<String>,
    prefix: Option<String>,
    limit: Option<usize>,
) -> anyhow::Result<(Vec<Record>, bool)> {
    let max = limit.unwrap_or(usize::MAX);
    let mut records = Vec::new();
    let mut query = ListQuery {
        scope,
        key_prefix: prefix,
        after: None,
        limit: 500,
    };
    loop {
        query.limit = (max - records.len()).clamp(1, 500);
        let page = store.list(&query).await?;
        records.extend(page.records);
        match page.next {
            Some(next) if records.len() < max => query.after = Some(next),
            Some(_) => return Ok((records, true)),
            None => return Ok((records, false)),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn describe(id: &RecordKey) -> String {
    if id.scope.is_empty() {
        format!("`{}` (empty scope; use --scope)", id.key)
    } else {
        format!("`{}` in scope `{}`", id.key, id.scope)
    }
}

/// `in_progress`, `ambiguous`, `completed` or `failed`.
fn state_name(r: &Record, now: u64) -> &'static str {
    if r.is_ambiguous(now) {
        "ambiguous"
    } else {
        r.state.name()
    }
}

fn outcome_of(r: &Record) -> Option<&Outcome> {
    match &r.state {
        State::InProgress { .. } => None,
        State::Completed(o) | State::Failed(o) => Some(o),
    }
}

fn codec_name(o: &Outcome) -> &'static str {
    match o.codec {
        idemp::store::Codec::Raw => "raw",
        idemp::store::Codec::Json => "json",
        idemp::store::Codec::Postcard => "postcard",
    }
}

fn compression_name(o: &Outcome) -> &'static str {
    match o.compression {
        Compression::None => "none",
        Compression::Lz4 => "lz4",
        Compression::Zstd => "zstd",
    }
}

/// The outcome's value: JSON, text, or a hex prefix.
fn decoded(o: &Outcome) -> (&'static str, Value) {
    if o.compression == Compression::None {
        if let Ok(v) = serde_json::from_slice::<Value>(&o.bytes)
            && o.codec == idemp::store::Codec::Json
        {
            return ("json", v);
        }
        if let Ok(s) = std::str::from_utf8(&o.bytes) {
            return ("text", Value::String(s.to_string()));
        }
    }
    let n = o.bytes.len().min(64);
    ("hex_prefix", Value::String(hex::encode(&o.bytes[..n])))
}

fn record_json(r: &Record, now: u64, with_value: bool) -> Value {
    let lease_until = match r.state {
        State::InProgress { lease_until } => Some(lease_until),
        _ => None,
    };
    let outcome = outcome_of(r).map(|o| {
        let mut v = json!({
            "codec": codec_name(o),
            "compression": compression_name(o),
            "size": o.bytes.len(),
        });
        if with_value {
            let (field, value) = decoded(o);
            v[field] = value;
        }
        v
    });
    json!({
        "scope": r.id.scope,
        "key": r.id.key,
        "state": state_name(r, now),
        "token": r.token,
        "attempts": r.attempts,
        "fingerprint": r.fingerprint.map(|f| f.to_hex()),
        "created_at_ms": r.created_at,
        "updated_at_ms": r.updated_at,
        "expires_at_ms": r.expires_at,
        "lease_until_ms": lease_until,
        "outcome": outcome,
    })
}

/// A short duration: `45s`, `12m`, `3h`, `2d`.
fn short(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// When a record expires (settled) or its lease passes (in progress).
fn expiry(r: &Record, now: u64) -> String {
    match (&r.state, r.expires_at) {
        (State::InProgress { lease_until }, _) if *lease_until > now => {
            format!("lease {}", short(lease_until - now))
        }
        (State::InProgress { lease_until }, _) => {
            format!("lease passed {} ago", short(now - lease_until))
        }
        (_, Some(e)) => format!("in {}", short(e.saturating_sub(now))),
        (_, None) => "-".into(),
    }
}

fn table(records: &[Record], now: u64) -> String {
    let header = [
        "SCOPE", "KEY", "STATE", "TOKEN", "ATTEMPTS", "AGE", "EXPIRES", "OUTCOME",
    ];
    let rows: Vec<[String; 8]> = records
        .iter()
        .map(|r| {
            [
                if r.id.scope.is_empty() {
                    "-".into()
                } else {
                    printable(&r.id.scope)
                },
                printable(&r.id.key),
                state_name(r, now).into(),
                r.token.to_string(),
                r.attempts.to_string(),
                short(now.saturating_sub(r.created_at)),
                expiry(r, now),
                outcome_of(r).map_or("-".into(), |o| format!("{} B", o.bytes.len())),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let right = matches!(i, 3 | 4 | 7);
            if i > 0 {
                l.push_str("  ");
            }
            let pad = w.saturating_sub(cell.chars().count());
            if right {
                l.push_str(&" ".repeat(pad));
                l.push_str(cell);
            } else {
                l.push_str(cell);
                l.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

/// Control characters escaped so that one record stays on one line; other text as is.
fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn rfc3339(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

fn show_text(r: &Record, now: u64) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<12} {value}");
    };
    field("scope", printable(&r.id.scope));
    field("key", printable(&r.id.key));
    field("state", state_name(r, now).into());
    field("token", r.token.to_string());
    field("attempts", r.attempts.to_string());
    field(
        "created",
        format!(
            "{} ({} ago)",
            rfc3339(r.created_at),
            short(now.saturating_sub(r.created_at))
        ),
    );
    field("updated", rfc3339(r.updated_at));
    match (&r.state, r.expires_at) {
        (State::InProgress { lease_until }, _) => {
            field(
                "lease until",
                format!("{} ({})", rfc3339(*lease_until), expiry(r, now)),
            );
        }
        (_, Some(e)) => field("expires", format!("{} ({})", rfc3339(e), expiry(r, now))),
        (_, None) => {}
    }
    field(
        "fingerprint",
        r.fingerprint.map_or("-".into(), |f| f.to_hex()),
    );
    if let Some(o) = outcome_of(r) {
        field(
            "outcome",
            format!(
                "{} B, codec {}, compression {}",
                o.bytes.len(),
                codec_name(o),
                compression_name(o)
            ),
        );
        match decoded(o) {
            ("json", v) => {
                let pretty = serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string());
                out.push_str(&pretty);
                out.push('\n');
            }
            ("text", Value::String(s)) => {
                out.push_str(&s);
                out.push('\n');
            }
            (_, Value::String(h)) => {
                let more = if o.bytes.len() > 64 { "…" } else { "" };
                let _ = writeln!(out, "hex: {h}{more}");
            }
            _ => {}
        }
    }
    out
}
