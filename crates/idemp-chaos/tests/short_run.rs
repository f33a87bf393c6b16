//! Runs `idemp-chaos run --short --store all --json` through the binary: every store,
//! both ambiguity policies, real worker processes under kill -9, SIGSTOP, a private
//! redis-server restarted and Postgres backends terminated. Asserts a clean check
//! (exit 0, no violation) AND that the faults and the executions really happened, so a
//! harness that silently injects nothing cannot pass.
//!
//! Needs the machine's PostgreSQL (`IDEMP_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`) and `redis-server` on the PATH: start them
//! with `scripts/services.sh`.

use std::process::Command;

use serde_json::Value;

fn count(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64().unwrap_or(0)
}

#[test]
fn short_chaos_run_passes_the_checker_with_faults_injected() {
    let out = Command::new(env!("CARGO_BIN_EXE_idemp-chaos"))
        .args(["run", "--short", "--store", "all", "--json"])
        .output()
        .expect("spawn idemp-chaos");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.code() != Some(2),
        "the harness could not run (are PostgreSQL and redis-server available? start \
         them with scripts/services.sh):\n{stderr}"
    );
    let summary: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("bad JSON summary ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "violations found:\n{}\n{stderr}",
        serde_json::to_string_pretty(&summary["reports"]).unwrap()
    );
    assert_eq!(count(&summary, &["violations"]), 0);
    assert_eq!(count(&summary, &["scenarios"]), 6, "{stderr}");
    for kind in ["kill9", "pause", "redis_restart", "pg_terminate"] {
        assert!(
            count(&summary, &["faults", kind]) > 0,
            "no {kind} fault was injected:\n{stderr}"
        );
    }
    let reports = summary["reports"].as_array().expect("reports");
    for r in reports {
        let label = format!("{} {}", r["store"], r["policy"]);
        assert!(
            count(r, &["checked", "executions"]) > 0,
            "{label}: no side effect ran:\n{stderr}"
        );
        assert!(
            count(r, &["checked", "replays"]) > 0,
            "{label}: no replay:\n{stderr}"
        );
        assert!(count(r, &["faults", "kill9"]) > 0, "{label}: no kill -9");
        assert!(count(r, &["faults", "pause"]) > 0, "{label}: no SIGSTOP");
    }
}

/// Negative control: with workers that also run the effect of keys held by a live
/// owner (a broken guard), the same pipeline must report duplicate effects and exit 1.
#[test]
fn a_broken_guard_is_caught_by_the_checker() {
    let out = Command::new(env!("CARGO_BIN_EXE_idemp-chaos"))
        .args([
            "run",
            "--store",
            "sqlite",
            "--seconds",
            "2",
            "--seed",
            "7",
            "--json",
            "--sabotage",
        ])
        .output()
        .expect("spawn idemp-chaos");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON summary ({e}):\n{stderr}"));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(count(&summary, &["violations"]) > 0);
    let rules: Vec<String> = summary["reports"]
        .as_array()
        .expect("reports")
        .iter()
        .flat_map(|r| {
            r["checked"]["violations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|v| v["rule"].as_str().map(str::to_owned))
        .collect();
    assert!(
        rules.iter().any(|r| r == "duplicate_effect"),
        "{rules:?}\n{stderr}"
    );
}
