//! Guard benchmarks on the memory store, against the `idempotent` 0.3.0 crate's
//! memory store doing the equivalent work in the same run.
//!
//! Run: `cargo bench -p idemp --features compression --bench guard -- --warm-up-time 1 --measurement-time 3`
//!
//! Groups:
//! * `single/…`: one thread (current-thread runtime), thread CPU time per operation:
//!   - `guard_claim_complete`: `Guard::run` on a fresh key (claim, run, encode, store,
//!     decode the stored bytes);
//!   - `guard_replay`: `Guard::run` on a completed key (claim → existing → decode);
//!   - `store_claim_complete` / `store_replay`: the same through `Store` directly;
//!   - `idempotent_claim_complete` / `idempotent_replay`: `idempotent` 0.3.0
//!     `MemoryStore::try_insert` + `complete` (an actor task behind an mpsc channel).
//! * `threads/…`: claim+complete of fresh keys by 1 / 16 / 64 tasks on a 2-worker
//!   runtime, guard vs `idempotent`.
//! * `codec/…`: JSON vs postcard encode+decode of a small result (thread CPU time).
//! * `compress/…` (feature `compression`): LZ4 vs zstd on a 64 KiB JSON outcome
//!   (thread CPU time).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use idemp::guard::{Guard, ValueCodec};
use idemp::store::{Claim, ClaimOutcome, Codec, MemoryStore, Outcome, RecordKey, Store};
use serde::{Deserialize, Serialize};

/// Fresh-key benchmarks use a new store every CHUNK operations so memory stays flat.
const CHUNK: u64 = 50_000;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Receipt {
    id: u64,
    status: String,
    amount_cents: u64,
}

fn receipt(id: u64) -> Receipt {
    Receipt {
        id,
        status: "succeeded".into(),
        amount_cents: 1999,
    }
}

fn keys(n: u64) -> Vec<String> {
    (0..n).map(|i| format!("order-{i:012}")).collect()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn new_guard(codec: ValueCodec) -> Guard {
    Guard::builder(MemoryStore::new())
        .scope("charge")
        .codec(codec)
        .build()
}

fn new_idempotent() -> idempotent::store::memory::MemoryStore {
    idempotent::store::memory::MemoryStore::new(1024, Duration::from_secs(3600))
}

fn idempotent_entry() -> idempotent::IdempotencyEntry<idempotent::entry::Processing> {
    use idempotent::fingerprint::{DefaultFingerprintStrategy, FingerprintStrategy};
    let fp = DefaultFingerprintStrategy.compute("charge", b"");
    idempotent::IdempotencyEntry::new(fp, Duration::from_secs(86_400))
}

fn idempotent_response() -> idempotent::CachedResponse {
    idempotent::CachedResponse {
        status_code: 200,
        metadata: idempotent::Metadata::default(),
        body: serde_json::to_vec(&receipt(1)).unwrap().into(),
    }
}

/// Per-thread CPU time: the single-thread groups run everything (runtime, store,
/// guard) on the bench thread, so this excludes the time other processes of a shared
/// machine steal, which wall-clock time does not.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Thread CPU time of `$body` over `$iters` fresh keys `$k` (`&str`), with a new
/// `$state` from `$setup` every CHUNK keys (setup and key generation not timed).
macro_rules! fresh_keys {
    ($iters:expr, $setup:expr, |$state:ident, $k:ident| $body:expr) => {{
        let iters: u64 = $iters;
        let mut total = Duration::ZERO;
        let mut done = 0;
        while done < iters {
            let n = CHUNK.min(iters - done);
            let $state = $setup;
            let ks = keys(n);
            let start = thread_cpu_time();
            for $k in ks.iter().map(|k| k.as_str()) {
                $body;
            }
            total += thread_cpu_time() - start;
            done += n;
        }
        total
    }};
}

/// Thread CPU time of `f` run `iters` times (for the synchronous groups).
fn cpu_iter<R>(iters: u64, mut f: impl FnMut() -> R) -> Duration {
    let start = thread_cpu_time();
    for _ in 0..iters {
        black_box(f());
    }
    thread_cpu_time() - start
}

/// Thread CPU time of `$body` run `$iters` times (an async block to `block_on`).
macro_rules! repeat {
    ($iters:expr, $body:expr) => {
        async {
            let start = thread_cpu_time();
            for _ in 0..$iters {
                $body;
            }
            thread_cpu_time() - start
        }
    };
}

fn single(c: &mut Criterion) {
    let rt = current_thread();
    let mut g = c.benchmark_group("single");
    g.throughput(Throughput::Elements(1));

    for codec in [ValueCodec::Json, ValueCodec::Postcard] {
        let name = format!("guard_claim_complete/{codec:?}");
        g.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    fresh_keys!(iters, new_guard(codec), |guard, k| {
                        let r: Receipt = guard
                            .run(k, || async { Ok::<_, std::io::Error>(receipt(7)) })
                            .await
                            .unwrap();
                        black_box(r)
                    })
                })
            })
        });
        let guard = new_guard(codec);
        rt.block_on(async {
            let _: Receipt = guard
                .run("done", || async { Ok::<_, std::io::Error>(receipt(7)) })
                .await
                .unwrap();
        });
        g.bench_function(format!("guard_replay/{codec:?}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(repeat!(iters, {
                    let r: Receipt = guard
                        .run("done", || async { Ok::<_, std::io::Error>(receipt(8)) })
                        .await
                        .unwrap();
                    black_box(r)
                }))
            })
        });
    }

    let body = serde_json::to_vec(&receipt(7)).unwrap();
    g.bench_function("store_claim_complete", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                fresh_keys!(iters, MemoryStore::new(), |store, k| {
                    let claim = Claim::new(RecordKey::new("charge", k));
                    let ClaimOutcome::Acquired { token, .. } = store.claim(&claim).await.unwrap()
                    else {
                        panic!("fresh key")
                    };
                    store
                        .complete(
                            &claim.id,
                            token,
                            Outcome::new(Codec::Json, body.clone()),
                            claim.ttl,
                        )
                        .await
                        .unwrap()
                })
            })
        })
    });
    let store = MemoryStore::new();
    let claim = Claim::new(RecordKey::new("charge", "done"));
    rt.block_on(async {
        let ClaimOutcome::Acquired { token, .. } = store.claim(&claim).await.unwrap() else {
            panic!("fresh key")
        };
        store
            .complete(
                &claim.id,
                token,
                Outcome::new(Codec::Json, body.clone()),
                claim.ttl,
            )
            .await
            .unwrap();
    });
    g.bench_function("store_replay", |b| {
        b.iter_custom(|iters| {
            rt.block_on(repeat!(iters, {
                let claim = Claim::new(RecordKey::new("charge", "done"));
                let ClaimOutcome::Existing(rec) = store.claim(&claim).await.unwrap() else {
                    panic!("completed key")
                };
                let idemp::store::State::Completed(out) = rec.state else {
                    panic!("completed key")
                };
                let r: Receipt = serde_json::from_slice(&out.bytes).unwrap();
                black_box(r)
            }))
        })
    });

    g.bench_function("idempotent_claim_complete", |b| {
        use idempotent::store::{IdempotencyStore, InsertResult};
        b.iter_custom(|iters| {
            rt.block_on(async {
                fresh_keys!(iters, new_idempotent(), |store, k| {
                    let key = idempotent::IdempotencyKey::new(k).unwrap();
                    let entry = idempotent_entry();
                    let token = entry.fencing_token();
                    let InsertResult::Claimed { .. } =
                        store.try_insert(&key, entry.clone()).await.unwrap()
                    else {
                        panic!("fresh key")
                    };
                    store
                        .complete(&key, entry.complete(idempotent_response()), token)
                        .await
                        .unwrap()
                })
            })
        })
    });
    let (peer, peer_key) = rt.block_on(async {
        use idempotent::store::IdempotencyStore;
        let store = new_idempotent();
        let key = idempotent::IdempotencyKey::new("done").unwrap();
        let entry = idempotent_entry();
        let token = entry.fencing_token();
        store.try_insert(&key, entry.clone()).await.unwrap();
        store
            .complete(&key, entry.complete(idempotent_response()), token)
            .await
            .unwrap();
        (store, key)
    });
    g.bench_function("idempotent_replay", |b| {
        use idempotent::entry::ExistingEntry;
        use idempotent::store::{IdempotencyStore, InsertResult};
        b.iter_custom(|iters| {
            rt.block_on(repeat!(iters, {
                let key = peer_key.clone();
                match peer.try_insert(&key, idempotent_entry()).await.unwrap() {
                    InsertResult::Exists(ExistingEntry::Completed(done)) => {
                        let r: Receipt =
                            serde_json::from_slice(&done.into_response().body).unwrap();
                        black_box(r)
                    }
                    other => panic!("expected a completed entry, got {other:?}"),
                }
            }))
        })
    });
    g.finish();
}

fn threads(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("threads");
    const OPS: u64 = 16_384;
    g.throughput(Throughput::Elements(OPS));
    g.sample_size(20);
    for tasks in [1u64, 16, 64] {
        g.bench_with_input(BenchmarkId::new("guard", tasks), &tasks, |b, &tasks| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let guard = new_guard(ValueCodec::Json);
                        let per = OPS / tasks;
                        let all: Vec<Arc<Vec<String>>> = (0..tasks)
                            .map(|t| {
                                Arc::new((0..per).map(|i| format!("t{t}-order-{i:09}")).collect())
                            })
                            .collect();
                        let start = Instant::now();
                        let hs: Vec<_> = all
                            .into_iter()
                            .map(|ks| {
                                let guard = guard.clone();
                                tokio::spawn(async move {
                                    for k in ks.iter() {
                                        let r: Receipt = guard
                                            .run(k, || async {
                                                Ok::<_, std::io::Error>(receipt(1))
                                            })
                                            .await
                                            .unwrap();
                                        black_box(r);
                                    }
                                })
                            })
                            .collect();
                        for h in hs {
                            h.await.unwrap();
                        }
                        total += start.elapsed();
                    }
                    total
                })
            })
        });
        g.bench_with_input(
            BenchmarkId::new("idempotent", tasks),
            &tasks,
            |b, &tasks| {
                use idempotent::store::IdempotencyStore;
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let store = Arc::new(new_idempotent());
                            let per = OPS / tasks;
                            let all: Vec<Vec<idempotent::IdempotencyKey>> = (0..tasks)
                                .map(|t| {
                                    (0..per)
                                        .map(|i| {
                                            idempotent::IdempotencyKey::new(format!(
                                                "t{t}-order-{i:09}"
                                            ))
                                            .unwrap()
                                        })
                                        .collect()
                                })
                                .collect();
                            let start = Instant::now();
                            let hs: Vec<_> = all
                                .into_iter()
                                .map(|ks| {
                                    let store = store.clone();
                                    tokio::spawn(async move {
                                        for key in ks {
                                            let entry = idempotent_entry();
                                            let token = entry.fencing_token();
                                            store.try_insert(&key, entry.clone()).await.unwrap();
                                            let body = serde_json::to_vec(&receipt(1)).unwrap();
                                            let resp = idempotent::CachedResponse {
                                                status_code: 200,
                                                metadata: idempotent::Metadata::default(),
                                                body: body.into(),
                                            };
                                            store
                                                .complete(&key, entry.complete(resp), token)
                                                .await
                                                .unwrap();
                                        }
                                    })
                                })
                                .collect();
                            for h in hs {
                                h.await.unwrap();
                            }
                            total += start.elapsed();
                        }
                        total
                    })
                })
            },
        );
    }
    g.finish();
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let r = receipt(42);
    g.bench_function("json_roundtrip", |b| {
        b.iter_custom(|iters| {
            cpu_iter(iters, || {
                let bytes = serde_json::to_vec(black_box(&r)).unwrap();
                black_box(serde_json::from_slice::<Receipt>(&bytes).unwrap())
            })
        })
    });
    g.bench_function("postcard_roundtrip", |b| {
        b.iter_custom(|iters| {
            cpu_iter(iters, || {
                let bytes = postcard::to_allocvec(black_box(&r)).unwrap();
                black_box(postcard::from_bytes::<Receipt>(&bytes).unwrap())
            })
        })
    });
    eprintln!(
        "codec sizes: json {} B, postcard {} B",
        serde_json::to_vec(&r).unwrap().len(),
        postcard::to_allocvec(&r).unwrap().len()
    );
    g.finish();
}

/// A 64 KiB JSON outcome shaped like an LLM tool result (repetitive keys, varied text).
#[cfg(feature = "compression")]
fn json_64k() -> Vec<u8> {
    let mut items = Vec::new();
    let mut i = 0u64;
    loop {
        items.push(serde_json::json!({
            "id": format!("msg_{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            "role": if i.is_multiple_of(2) { "user" } else { "assistant" },
            "content": format!("Item {i}: the quick brown fox jumps over the lazy dog {} times", i * 7 % 13),
            "usage": {"input_tokens": i * 31 % 997, "output_tokens": i * 17 % 389},
        }));
        let v = serde_json::to_vec(&items).unwrap();
        if v.len() >= 64 * 1024 {
            return v;
        }
        i += 1;
    }
}

#[cfg(feature = "compression")]
fn compress(c: &mut Criterion) {
    let data = json_64k();
    let lz4 = lz4_flex::compress_prepend_size(&data);
    let zstd1 = zstd::bulk::compress(&data, 1).unwrap();
    let zstd3 = zstd::bulk::compress(&data, 3).unwrap();
    eprintln!(
        "64 KiB JSON ({} B): lz4 {} B ({:.1}%), zstd-1 {} B ({:.1}%), zstd-3 {} B ({:.1}%)",
        data.len(),
        lz4.len(),
        100.0 * lz4.len() as f64 / data.len() as f64,
        zstd1.len(),
        100.0 * zstd1.len() as f64 / data.len() as f64,
        zstd3.len(),
        100.0 * zstd3.len() as f64 / data.len() as f64,
    );
    let mut g = c.benchmark_group("compress");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("lz4_compress", |b| {
        b.iter_custom(|iters| {
            cpu_iter(iters, || {
                black_box(lz4_flex::compress_prepend_size(black_box(&data)))
            })
        })
    });
    g.bench_function("zstd1_compress", |b| {
        b.iter_custom(|iters| {
            cpu_iter(iters, || {
                black_box(zstd::bulk::compress(black_box(&data), 1).unwrap())
            })
        })
    });
    g.bench_function("zstd3_compress", |b| {
        b.iter_custom(|iters| {
            cpu_iter(iters, || {
                black_box(zstd::bulk::compress(black_box(&data), 3).unwrap())
            })
        })
    });
    g.bench_function("lz4_decompress", |b| {
        b.iter_custom(|iters| {
            cpu_iter(iters, || {
                black_box(lz4_flex::decompress_size_prepended(black_box(&lz4)).unwrap())
            })
        })
    });
    g.bench_function("zstd1_decompress", |b| {
        b.iter_custom(|iters| {
            cpu_iter(iters, || {
                black_box(zstd::bulk::decompress(black_box(&zstd1), data.len()).unwrap())
            })
        })
    });
    g.finish();
}

#[cfg(not(feature = "compression"))]
fn compress(_: &mut Criterion) {}

criterion_group!(benches, single, threads, codec, compress);
criterion_main!(benches);
