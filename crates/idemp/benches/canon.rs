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

criterion_group!(benches, request_bench, large_bench);
criterion_main!(benches);
