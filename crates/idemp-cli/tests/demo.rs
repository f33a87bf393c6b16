//! `idemp demo` through the real binary, in quick mode.
//!
//! The demo's numbers are counts of side effects the fake API executed (not of
//! responses), and its fault schedule is a pure function of the seed, so these
//! assertions are exact and not timing-dependent.

use std::process::{Command, Output};

use serde_json::Value;

const IDEMP: &str = env!("CARGO_BIN_EXE_idemp");

/// A seed whose quick storm loses answers to charges after they executed (checked by
/// `direct_retries_with_random_keys_double_charge`).
const SEED: &str = "7";

fn demo(args: &[&str]) -> Output {
    Command::new(IDEMP)
        .arg("demo")
        .args(args)
        .output()
        .expect("run idemp demo")
}

fn json_run(seed: &str) -> Value {
    let out = demo(&["--quick", "--json", "--seed", seed]);
    assert!(
        out.status.success(),
        "idemp demo failed ({}): {}\nstdout: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

fn n(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("`{field}` is not a count in {v}"))
}

#[test]
fn through_idemp_every_call_runs_exactly_once_and_direct_retries_double_charge() {
    let report = json_run(SEED);
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(n(&report, "agents"), 8);
    assert_eq!(n(&report, "requests_per_agent"), 12);
    let logical = 8 * 12;

    let idemp = &report["idemp"];
    assert_eq!(n(idemp, "logical_requests"), logical);
    // Exactly once: as many side effects as logical requests, none twice.
    assert_eq!(n(idemp, "upstream_executions"), logical, "{idemp:#}");
    assert_eq!(n(idemp, "duplicate_executions"), 0, "{idemp:#}");
    assert_eq!(n(idemp, "double_charges"), 0, "{idemp:#}");
    assert_eq!(n(idemp, "overcharged_cents"), 0);
    assert_eq!(n(idemp, "duplicate_tokens"), 0);
    // Every agent got the result of that one execution.
    assert_eq!(n(idemp, "answered"), logical, "{idemp:#}");
    assert_eq!(n(idemp, "failed"), 0);
    assert_eq!(n(idemp, "wrong_results"), 0);
    // And it was a storm: answers were lost after executing, agents retried, and
    // idemp answered retries from its store.
    assert!(n(idemp, "responses_lost") > 0, "{idemp:#}");
    assert!(n(idemp, "attempts") > logical, "{idemp:#}");
    assert_eq!(n(idemp, "retries"), n(idemp, "attempts") - logical);
    assert!(n(idemp, "duplicates_prevented") > 0, "{idemp:#}");
    assert!(n(idemp, "refused_by_upstream") > 0, "{idemp:#}");

    let direct = &report["direct"];
    assert_eq!(n(direct, "logical_requests"), logical);
    assert_eq!(n(direct, "answered"), logical, "{direct:#}");
    assert_eq!(n(direct, "wrong_results"), 0);
    // The same storm without idemp: lost answers become second executions.
    assert!(n(direct, "double_charges") > 0, "{direct:#}");
    assert!(n(direct, "overcharged_cents") > 0, "{direct:#}");
    assert!(
        n(direct, "upstream_executions") > logical,
        "direct runs must execute some requests twice: {direct:#}"
    );
    assert_eq!(
        n(direct, "upstream_executions") - n(direct, "duplicate_executions"),
        logical
    );
    assert_eq!(n(direct, "duplicates_prevented"), 0);
    // Both runs met the same network faults on their first attempts; each answer the
    // network lost direct after an execution is one duplicate execution, at most.
    assert!(n(direct, "duplicate_executions") <= n(direct, "responses_lost"));
}

#[test]
fn the_same_seed_meets_the_same_storm() {
    let counts = |r: &Value| -> Vec<u64> {
        let mut v = Vec::new();
        for mode in ["idemp", "direct"] {
            for f in [
                "attempts",
                "responses_lost",
                "refused_by_upstream",
                "upstream_executions",
                "duplicates_prevented",
                "double_charges",
                "overcharged_cents",
                "duplicate_tokens",
            ] {
                v.push(n(&r[mode], f));
            }
        }
        v
    };
    let a = json_run("1234");
    let b = json_run("1234");
    assert_eq!(counts(&a), counts(&b), "{a:#}\n{b:#}");
    assert_eq!(n(&a["idemp"], "duplicate_executions"), 0);
}

#[test]
fn the_table_ends_with_the_verdict_and_stderr_stays_quiet_off_a_terminal() {
    let out = demo(&["--agents", "3", "--requests", "6", "--seed", SEED]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{stdout}");
    assert!(stdout.contains("through idemp"), "{stdout}");
    assert!(stdout.contains("double charges"), "{stdout}");
    assert!(
        stdout.contains("idemp: 0 double charges; without it: "),
        "{stdout}"
    );
    assert!(stdout.contains("3 agents x 6 calls"), "{stdout}");
    // No progress bar when stderr is not a terminal (here: a pipe).
    assert!(stderr.is_empty(), "stderr: {stderr}");
}

#[test]
fn another_store_can_be_smoke_tested() {
    let out = demo(&["--quick", "--json", "--store", "memory:", "--seed", SEED]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["store"], "memory:");
    assert_eq!(report["ok"], true);
    assert_eq!(n(&report["idemp"], "upstream_executions"), 8 * 12);
    assert_eq!(n(&report["idemp"], "duplicate_executions"), 0);
}

#[test]
fn bad_arguments_are_refused() {
    for args in [
        &["--agents", "0"][..],
        &["--requests", "0"],
        &["--seed", "minus-one"],
        &["--quick", "--store", "bogus://x"],
    ] {
        let out = demo(args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}
