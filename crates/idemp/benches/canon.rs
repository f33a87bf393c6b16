//! Canonical request hashing: idemp against the `llm-message-hash` crate (same run),
//! with `serde_json::from_slice::<Value>` alone as a reference point.
//!
//! The Python peer (llm-message-hash-py) is timed on the same file by
//! `bench/python/canon_bench.py`.
//!
//! ```text
//! cargo bench -p idemp --bench canon -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use idemp::canon::{Canonicalizer, Format, Preset};
use llm_message_hash::{HashOpts, hash_canonical_hex_with};
use serde_json::Value;

const REQUEST: &[u8] = include_bytes!("../../../bench/data/anthropic_request.json");

fn request_bench(c: &mut Criterion) {
    let python = Canonicalizer::new(Format::Python).preset(Preset::Anthropic);
    let jcs = Canonicalizer::new(Format::Jcs).preset(Preset::Anthropic);
    let peer_opts = HashOpts::anthropic();

    let mut group = c.benchmark_group("canon/anthropic_request");
    group.throughput(Throughput::Bytes(REQUEST.len() as u64));
    group.bench_function("idemp_python_hash", |b| {
        b.iter(|| python.hash(black_box(REQUEST)).unwrap())
    });
    group.bench_function("idemp_python_canonicalize", |b| {
        let mut out = Vec::with_capacity(REQUEST.len());
        b.iter(|| {
            out.clear();
            python.write(black_box(REQUEST), &mut out).unwrap();
            out.len()
        })
    });
    group.bench_function("idemp_jcs_hash", |b| {
        b.iter(|| jcs.hash(black_box(REQUEST)).unwrap())
    });
    group.bench_function("llm_message_hash_crate_parse_and_hash", |b| {
        b.iter(|| {
            let value: Value = serde_json::from_slice(black_box(REQUEST)).unwrap();
            hash_canonical_hex_with(&value, &peer_opts)
        })
    });
    group.bench_function("serde_json_from_slice_only", |b| {
        b.iter(|| serde_json::from_slice::<Value>(black_box(REQUEST)).unwrap())
    });
    group.finish();
}

/// Per-thread CPU time of a closure run `iters` times: on a shared, loaded machine this
/// is far steadier than wall-clock time (time spent waiting for a core is not counted).
fn cpu_time<R>(iters: u64, mut f: impl FnMut() -> R) -> Duration {
    let start = thread_cpu_time();
    for _ in 0..iters {
        black_box(f());
    }
    thread_cpu_time() - start
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The same comparison in thread CPU time (compare with the `thread CPU` lines of
/// `bench/python/canon_bench.py`).
fn request_cpu_bench(c: &mut Criterion) {
    let python = Canonicalizer::new(Format::Python).preset(Preset::Anthropic);
    let peer_opts = HashOpts::anthropic();
    let mut group = c.benchmark_group("canon/anthropic_request_cpu_time");
    group.bench_function("idemp_python_hash", |b| {
        b.iter_custom(|iters| cpu_time(iters, || python.hash(black_box(REQUEST)).unwrap()))
    });
    group.bench_function("llm_message_hash_crate_parse_and_hash", |b| {
        b.iter_custom(|iters| {
            cpu_time(iters, || {
                let value: Value = serde_json::from_slice(black_box(REQUEST)).unwrap();
                hash_canonical_hex_with(&value, &peer_opts)
            })
        })
    });
    group.bench_function("serde_json_from_slice_only", |b| {
        b.iter_custom(|iters| {
            cpu_time(iters, || {
                serde_json::from_slice::<Value>(black_box(REQUEST)).unwrap()
            })
        })
    });
    group.finish();
}

/// About 1 MiB: the request repeated in an array (throughput on big bodies).
fn large_bench(c: &mut Criterion) {
    let mut big = b"[".to_vec();
    while big.len() < (1 << 20) {
        if big.len() > 1 {
            big.push(b',');
        }
        big.extend_from_slice(REQUEST);
    }
    big.push(b']');
    let python = Canonicalizer::new(Format::Python).preset(Preset::Anthropic);
    let peer_opts = HashOpts::anthropic();

    let mut group = c.benchmark_group("canon/1MiB");
    group.throughput(Throughput::Bytes(big.len() as u64));
    group.sample_size(20);
    group.bench_function("idemp_python_hash", |b| {
        b.iter(|| python.hash(black_box(&big)).unwrap())
    });
    group.bench_function("llm_message_hash_crate_parse_and_hash", |b| {
        b.iter(|| {
            let value: Value = serde_json::from_slice(black_box(&big)).unwrap();
            hash_canonical_hex_with(&value, &peer_opts)
        })
    });
    group.finish();
}

criterion_group!(benches, request_bench, request_cpu_bench, large_bench);
criterion_main!(benches);
