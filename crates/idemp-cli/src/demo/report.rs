//! The demo's results: per run, what the agents saw and what the API executed.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use super::agents::{Call, Mode, Outcome};
use super::api::Ledger;
use super::network::NetCounters;

/// Both runs, as printed by `--json`.
#[derive(Debug, Serialize)]
pub struct DemoReport {
    /// The storm's seed.
    pub seed: u64,
    /// Concurrent agents.
    pub agents: usize,
    /// Logical calls per agent.
    pub requests_per_agent: usize,
    /// The proxy's store.
    pub store: String,
    /// Every logical request ran exactly once through idemp and got its result.
    pub ok: bool,
    /// Through idemp, content-derived keys kept across retries.
    pub idemp: ModeReport,
    /// Directly to the API, a fresh random key per attempt.
    pub direct: ModeReport,
}

/// One run.
#[derive(Debug, Serialize)]
pub struct ModeReport {
    /// `idemp` or `direct`.
    pub mode: &'static str,
    /// Logical calls the agents made.
    pub logical_requests: u64,
    /// Of which completions.
    pub completions: u64,
    /// Of which card charges.
    pub charges: u64,
    /// HTTP attempts that left the agents.
    pub attempts: u64,
    /// Attempts beyond the first of each logical call.
    pub retries: u64,
    /// Side effects the API ran (refusals with 429/529 excluded).
    pub upstream_executions: u64,
    /// Executions beyond the first of their logical request.
    pub duplicate_executions: u64,
    /// Retries answered from idemp's store instead of executing again.
    pub duplicates_prevented: u64,
    /// Charges executed more than once.
    pub double_charges: u64,
    /// Money moved by duplicate charges, in cents.
    pub overcharged_cents: u64,
    /// Tokens billed by duplicate completions.
    pub duplicate_tokens: u64,
    /// Attempts the API refused before executing (429, 529).
    pub refused_by_upstream: u64,
    /// Answers the network lost after the API executed.
    pub responses_lost: u64,
    /// Logical calls that got their result.
    pub answered: u64,
    /// Logical calls that got no result.
    pub failed: u64,
    /// Results that are not the product of an execution of their request.
    pub wrong_results: u64,
    /// Median latency of a logical call, retries included, in milliseconds.
    pub latency_p50_ms: f64,
    /// 99th percentile latency of a logical call, in milliseconds.
    pub latency_p99_ms: f64,
    /// Wall time of the run, in milliseconds.
    pub elapsed_ms: u64,
    /// The first failure an agent saw, if any.
    pub first_error: Option<String>,
}

impl ModeReport {
    /// Builds the report of one run from what each side counted.
    pub fn new(
        mode: Mode,
        calls: &[Call],
        outcomes: &[Outcome],
        ledger: &Ledger,
        net: &NetCounters,
        elapsed: Duration,
    ) -> Self {
        let sum = ledger.summary();
        let logical = calls.len() as u64;
        let charges = calls.iter().filter(|c| c.charge).count() as u64;
        let attempts = net.attempts.load(Ordering::Relaxed);
        let mut answered = 0;
        let mut wrong = 0;
        let mut first_error = None;
        for o in outcomes {
            match &o.result {
                Ok(result) => {
                    answered += 1;
                    let produced = ledger.executions_of(&o.id);
                    if !produced.iter().any(|e| &e.result_id == result) {
                        wrong += 1;
                    }
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| e.clone());
                }
            }
        }
        let mut latencies: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
        latencies.sort_unstable();
        Self {
            mode: match mode {
                Mode::Idemp => "idemp",
                Mode::Direct => "direct",
            },
            logical_requests: logical,
            completions: logical - charges,
            charges,
            attempts,
            retries: attempts.saturating_sub(logical),
            upstream_executions: sum.executions,
            duplicate_executions: sum.duplicate_executions,
            duplicates_prevented: net.replayed.load(Ordering::Relaxed),
            double_charges: sum.double_charges,
            overcharged_cents: sum.overcharged_cents,
            duplicate_tokens: sum.duplicate_tokens,
            refused_by_upstream: sum.refused,
            responses_lost: net.lost.load(Ordering::Relaxed),
            answered,
            failed: logical - answered.min(logical),
            wrong_results: wrong,
            latency_p50_ms: millis(percentile(&latencies, 50)),
            latency_p99_ms: millis(percentile(&latencies, 99)),
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            first_error,
        }
    }

    /// Why this run was not exactly once with every result delivered, if it was not.
    pub fn problem(&self) -> Option<String> {
        let mut p = Vec::new();
        if self.duplicate_executions > 0 {
            p.push(format!(
                "{} duplicate executions ({} double charges)",
                self.duplicate_executions, self.double_charges
            ));
        }
        if self.upstream_executions != self.logical_requests {
            p.push(format!(
                "{} executions for {} logical requests",
                self.upstream_executions, self.logical_requests
            ));
        }
        if self.failed > 0 {
            p.push(format!(
                "{} calls got no result (first: {})",
                self.failed,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        if self.wrong_results > 0 {
            p.push(format!(
                "{} calls got a result no execution produced",
                self.wrong_results
            ));
        }
        (!p.is_empty()).then(|| p.join("; "))
    }
}

impl DemoReport {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let (a, b) = (&self.idemp, &self.direct);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "idemp demo: {} agents x {} calls ({} completions, {} card charges), seed {}",
            self.agents, self.requests_per_agent, a.completions, a.charges, self.seed
        );
        let _ = writeln!(
            out,
            "The API is slow and refuses some calls (429/529); the network loses some answers"
        );
        let _ = writeln!(
            out,
            "AFTER the API executed (reset, 502, 503). Agents make up to 10 attempts per call.\n"
        );
        let row = |out: &mut String, label: &str, x: String, y: String| {
            let _ = writeln!(out, "{label:<24}{x:>16}{y:>28}");
        };
        row(
            &mut out,
            "",
            "through idemp".into(),
            "direct, new key per retry".into(),
        );
        row(
            &mut out,
            "logical requests",
            a.logical_requests.to_string(),
            b.logical_requests.to_string(),
        );
        row(
            &mut out,
            "attempts (retries)",
            format!("{} (+{})", a.attempts, a.retries),
            format!("{} (+{})", b.attempts, b.retries),
        );
        row(
            &mut out,
            "answers lost in transit",
            a.responses_lost.to_string(),
            b.responses_lost.to_string(),
        );
        row(
            &mut out,
            "upstream executions",
            a.upstream_executions.to_string(),
            b.upstream_executions.to_string(),
        );
        row(
            &mut out,
            "duplicates prevented",
            a.duplicates_prevented.to_string(),
            b.duplicates_prevented.to_string(),
        );
        row(
            &mut out,
            "duplicate executions",
            a.duplicate_executions.to_string(),
            b.duplicate_executions.to_string(),
        );
        row(
            &mut out,
            "double charges",
            a.double_charges.to_string(),
            b.double_charges.to_string(),
        );
        row(
            &mut out,
            "money charged twice",
            dollars(a.overcharged_cents),
            dollars(b.overcharged_cents),
        );
        row(
            &mut out,
            "tokens billed twice",
            grouped(a.duplicate_tokens),
            grouped(b.duplicate_tokens),
        );
        row(
            &mut out,
            "calls answered",
            format!("{}/{}", a.answered, a.logical_requests),
            format!("{}/{}", b.answered, b.logical_requests),
        );
        row(
            &mut out,
            "latency p50 / p99",
            format!("{:.0} / {:.0} ms", a.latency_p50_ms, a.latency_p99_ms),
            format!("{:.0} / {:.0} ms", b.latency_p50_ms, b.latency_p99_ms),
        );
        row(
            &mut out,
            "wall time",
            format!("{:.1} s", a.elapsed_ms as f64 / 1000.0),
            format!("{:.1} s", b.elapsed_ms as f64 / 1000.0),
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "idemp: {} double charges; without it: {} ({} charged twice, {} tokens billed twice).",
            a.double_charges,
            b.double_charges,
            dollars(b.overcharged_cents),
            grouped(b.duplicate_tokens)
        );
        match a.problem() {
            None => {
                let _ = writeln!(
                    out,
                    "Through idemp every logical request ran exactly once and every agent got its result."
                );
            }
            Some(p) => {
                let _ = writeln!(out, "FAILED: through idemp, {p}.");
            }
        }
        out
    }
}

/// The nearest-rank percentile of sorted `v`.
fn percentile(v: &[Duration], p: usize) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * v.len()).div_ceil(100).clamp(1, v.len());
    v[rank - 1]
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// `$1,234.56`.
fn dollars(cents: u64) -> String {
    format!("${}.{:02}", grouped(cents / 100), cents % 100)
}

/// `40,959`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_are_grouped() {
        assert_eq!(dollars(0), "$0.00");
        assert_eq!(dollars(5), "$0.05");
        assert_eq!(dollars(123_456), "$1,234.56");
        assert_eq!(dollars(100_000_000), "$1,000,000.00");
    }

    fn clean_run() -> ModeReport {
        ModeReport {
            mode: "idemp",
            logical_requests: 10,
            completions: 7,
            charges: 3,
            attempts: 14,
            retries: 4,
            upstream_executions: 10,
            duplicate_executions: 0,
            duplicates_prevented: 3,
            double_charges: 0,
            overcharged_cents: 0,
            duplicate_tokens: 0,
            refused_by_upstream: 1,
            responses_lost: 3,
            answered: 10,
            failed: 0,
            wrong_results: 0,
            latency_p50_ms: 1.0,
            latency_p99_ms: 2.0,
            elapsed_ms: 3,
            first_error: None,
        }
    }

    #[test]
    fn a_run_is_clean_only_when_exactly_once_and_all_answered() {
        assert_eq!(clean_run().problem(), None);
        let dup = ModeReport {
            upstream_executions: 11,
            duplicate_executions: 1,
            double_charges: 1,
            ..clean_run()
        };
        assert!(dup.problem().unwrap().contains("1 double charges"));
        let missing = ModeReport {
            upstream_executions: 9,
            ..clean_run()
        };
        assert!(missing.problem().unwrap().contains("9 executions for 10"));
        let unanswered = ModeReport {
            answered: 9,
            failed: 1,
            first_error: Some("HTTP 503".into()),
            ..clean_run()
        };
        assert!(unanswered.problem().unwrap().contains("HTTP 503"));
        let wrong = ModeReport {
            wrong_results: 2,
            ..clean_run()
        };
        assert!(wrong.problem().unwrap().contains("2 calls got a result"));
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(40_959), "40,959");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99), Duration::from_millis(99));
        assert_eq!(percentile(&v[..1], 99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }
}
