//! Key derivation speed against its peers, in the same run:
//!
//! - `sha256_hex/{idemp,agentidemp,raw_sha2}/{64,1024,65536,1048576}`: idemp's
//!   `sha256_hex`, the `agentidemp` 0.1.0 crate's, and a bare SHA-256 digest (sha2
//!   0.11, no formatting: the hardware bound). Throughput in bytes.
//! - `derive/*` at 64 B: the other key shapes (scoped, builder, uuid5, random), and
//!   `for_args` on a ~200-byte tool-call argument object.
//!
//! `cargo bench -p idemp --bench keys -- --warm-up-time 1 --measurement-time 3`
//!
//! The Python peer is timed by `bench/python/keys_bench.py`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use idemp::{Key, key};
use sha2::{Digest, Sha256};

const SIZES: [usize; 4] = [64, 1024, 64 * 1024, 1024 * 1024];

fn input(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn sha256_hex(c: &mut Criterion) {
    let mut group = c.benchmark_group("sha256_hex");
    for size in SIZES {
        let data = input(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("idemp", size), &data, |b, d| {
            b.iter(|| key::sha256_hex(black_box(d.as_slice())))
        });
        group.bench_with_input(BenchmarkId::new("agentidemp", size), &data, |b, d| {
            b.iter(|| agentidemp::sha256_hex(black_box(d.as_slice())))
        });
        group.bench_with_input(BenchmarkId::new("raw_sha2", size), &data, |b, d| {
            b.iter(|| Sha256::digest(black_box(d.as_slice())))
        });
    }
    group.finish();
}

fn derive(c: &mut Criterion) {
    let mut group = c.benchmark_group("derive");
    let data = input(64);
    group.bench_function("scoped_key/3_parts", |b| {
        b.iter(|| {
            key::scoped_key(
                black_box("tenant-7"),
                [black_box("send_email"), black_box("x")],
            )
        })
    });
    group.bench_function("scoped_sha256_hex/64", |b| {
        b.iter(|| key::scoped_sha256_hex(black_box("tenant-7"), black_box(&data)))
    });
    group.bench_function("agentidemp_scoped_sha256_hex/64", |b| {
        b.iter(|| agentidemp::scoped_sha256_hex(black_box("tenant-7"), black_box(&data)))
    });
    group.bench_function("builder/3_parts", |b| {
        b.iter(|| {
            Key::builder(black_box("tenant-7"))
                .part_str(black_box("send_email"))
                .part(black_box(&data))
                .part_u64(black_box(42))
                .build()
        })
    });
    group.bench_function("uuid5_key/64", |b| {
        b.iter(|| key::uuid5_key(&key::NAMESPACE_ANTHROPIC, black_box(&data)))
    });
    group.bench_function("agentidemp_uuid_v5/64", |b| {
        b.iter(|| {
            agentidemp::uuid_v5(&agentidemp::NAMESPACE_ANTHROPIC, black_box(&data)).to_string()
        })
    });
    group.bench_function("random_key", |b| b.iter(key::random_key));
    let args = serde_json::json!({
        "to": "alice@example.com",
        "subject": "Your order #1042 has shipped",
        "body": "Hello Alice, your order is on its way. Tracking: 1Z999AA10123456784.",
        "cc": ["ops@example.com"],
        "priority": 2,
        "track": true
    });
    group.bench_function("for_args/email", |b| {
        b.iter(|| {
            key::for_args(
                black_box("agent-7"),
                black_box("send_email"),
                black_box(&args),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, sha256_hex, derive);
criterion_main!(benches);
