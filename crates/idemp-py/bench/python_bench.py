#!/usr/bin/env python3
"""idemp's Python package against the Python packages it replaces, in one process.

    pip install ./crates/idemp-py agentidemp-py==0.1.0 llm-message-hash-py==0.1.0 \\
        idempotency==0.1.0 idempotent-tools==0.1.1
    python crates/idemp-py/bench/python_bench.py [--seconds 3] [--threads 1,16]

Prints one JSON document (bench/areas/python.py reads it):

* ``sha256_hex`` of 64 bytes: ``idemp.keys.sha256_hex`` vs ``agentidemp.sha256_hex``
  (ns per call, best of 5 repeats);
* ``hash_request`` of bench/data/anthropic_request.json (3.7 KiB) as a dict, with the
  anthropic preset: ``idemp.canon.hash_request`` vs ``llm_message_hash.hash_request``;
* settled ``@idempotent`` calls per second (fresh keys: claim, run, complete) from N
  threads: idemp on SQLite (``synchronous`` full and normal) vs the ``idempotency``
  FileStore and ``idempotent-tools``' SQLiteBackend.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import timeit

import agentidemp
import idempotency
import idempotent_tools
import llm_message_hash
from idempotency.stores import FileStore

import idemp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def per_call_ns(fn, seconds: float) -> float:
    timer = timeit.Timer(fn)
    number, elapsed = timer.autorange()
    number = max(1, int(number * (seconds / 5) / max(elapsed, 1e-9)))
    return min(timer.repeat(repeat=5, number=number)) / number * 1e9


def throughput(execute, threads: int, seconds: float) -> float:
    counter = itertools.count()
    stop = time.perf_counter() + seconds
    done = [0] * threads

    def worker(i: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            execute(next(counter))
            n += 1
        done[i] = n

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def settled(kind: str, directory: str, threads: int, seconds: float) -> float:
    run_id = os.urandom(4).hex()
    if kind.startswith("idemp-sqlite-"):
        store = idemp.open_store(f"sqlite://{directory}/idemp.db", synchronous=kind.rsplit("-", 1)[1])

        @idemp.idempotent(store=store, ttl=3600, key=lambda n: f"bench-{run_id}-{n}")
        def execute(n: int) -> dict:
            return {"ok": True, "n": 42}

    elif kind == "idempotency-filestore":

        @idempotency.idempotent(store=FileStore(directory), ttl=3600, key=lambda n: f"bench-{run_id}-{n}")
        def execute(n: int) -> dict:
            return {"ok": True, "n": 42}

    elif kind == "idempotent-tools-sqlite":
        backend = idempotent_tools.SQLiteBackend(os.path.join(directory, "it.db"))

        @idempotent_tools.idempotent(backend=backend, ttl=3600, key_fn=lambda fn, a, kw, ctx: f"bench-{run_id}-{a[0]}")
        def execute(n: int) -> dict:
            return {"ok": True, "n": 42}

    else:
        raise ValueError(kind)
    throughput(execute, threads, min(0.5, seconds))  # warm-up
    return throughput(execute, threads, seconds)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", default="1,16")
    args = ap.parse_args()
    out: dict = {"python": sys.version.split()[0], "idemp": idemp.__version__}

    d64 = bytes((i * 31 % 251) for i in range(64))
    out["sha256_hex_64_ns"] = {
        "idemp": per_call_ns(lambda: idemp.keys.sha256_hex(d64), args.seconds),
        "idemp.compat.agentidemp": per_call_ns(lambda: idemp.compat.agentidemp.sha256_hex(d64), args.seconds),
        "agentidemp-py": per_call_ns(lambda: agentidemp.sha256_hex(d64), args.seconds),
    }
    assert idemp.keys.sha256_hex(d64) == agentidemp.sha256_hex(d64)

    with open(os.path.join(ROOT, "bench", "data", "anthropic_request.json"), "rb") as f:
        raw = f.read()
    obj = json.loads(raw)
    opts = llm_message_hash.HashOpts.for_anthropic()
    assert idemp.canon.hash_request(obj, preset="anthropic") == llm_message_hash.hash_request(obj, opts)
    out["hash_request_bytes"] = len(raw)
    out["hash_request_ns"] = {
        "idemp (dict)": per_call_ns(lambda: idemp.canon.hash_request(obj, preset="anthropic"), args.seconds),
        "idemp (raw bytes)": per_call_ns(lambda: idemp.canon.hash_request(raw, preset="anthropic"), args.seconds),
        "idemp.compat.llm_message_hash (dict)": per_call_ns(lambda: idemp.compat.llm_message_hash.hash_request(obj, opts), args.seconds),
        "llm-message-hash-py (dict)": per_call_ns(lambda: llm_message_hash.hash_request(obj, opts), args.seconds),
        "llm-message-hash-py (json.loads(raw))": per_call_ns(lambda: llm_message_hash.hash_request(json.loads(raw), opts), args.seconds),
    }

    out["settled_per_s"] = {}
    for threads in (int(t) for t in args.threads.split(",")):
        row = {}
        for kind in ("idemp-sqlite-full", "idemp-sqlite-normal", "idempotency-filestore", "idempotent-tools-sqlite"):
            with tempfile.TemporaryDirectory(prefix="idemp-pybench-") as d:
                row[kind] = settled(kind, d, threads, args.seconds)
        out["settled_per_s"][str(threads)] = row
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    import idemp.compat.agentidemp  # noqa: F401  (the drop-ins, timed above)
    import idemp.compat.llm_message_hash  # noqa: F401

    sys.exit(main())
