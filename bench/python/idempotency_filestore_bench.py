#!/usr/bin/env python3
"""Peer benchmark: settled executions per second of the Python `idempotency` package's
FileStore (PyPI `idempotency==0.1.0`), driven like idemp's `sqlite` criterion bench:
fresh keys, each execution = the decorator's claim (lock + in_progress record) and
completion (completed record), from 1, 16 and 64 threads.

Setup (a throwaway venv):
    python3 -m venv /tmp/idem-venv
    /tmp/idem-venv/bin/pip install "idempotency[file]==0.1.0"
Run:
    /tmp/idem-venv/bin/python bench/python/idempotency_filestore_bench.py [--seconds 3]

Notes on what is measured:
  * FileStore writes one JSON file per record (write to .tmp + rename) and takes an
    fcntl lock file per key. It never fsyncs, so it is NOT durable across power loss:
    its figures compare with idemp's synchronous=NORMAL more than with FULL.
  * The GIL serialises the Python work; threads only overlap in system calls.
"""

import argparse
import itertools
import json
import tempfile
import threading
import time

from idempotency import idempotent
from idempotency.stores import FileStore


def run(threads: int, seconds: float, directory: str) -> float:
    store = FileStore(directory)
    counter = itertools.count()

    @idempotent(store=store, ttl=3600, key=lambda n: f"bench-{n}")
    def execute(n: int) -> dict:
        return {"ok": True, "n": 42}

    stop = time.perf_counter() + seconds
    done = [0] * threads

    def worker(i: int) -> None:
        local = 0
        while time.perf_counter() < stop:
            execute(next(counter))
            local += 1
        done[i] = local

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - start
    return sum(done) / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0, help="measurement time per case")
    p.add_argument("--threads", default="1,16,64", help="comma-separated thread counts")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args()
    results = {}
    for n in (int(x) for x in args.threads.split(",")):
        with tempfile.TemporaryDirectory(prefix="idempotency-filestore-") as d:
            # A short warm-up on the same directory.
            run(n, min(0.5, args.seconds), d)
            results[n] = run(n, args.seconds, d)
        if not args.json:
            print(f"idempotency FileStore, {n:>2} threads: {results[n]:>10.0f} executions/s")
    if args.json:
        print(json.dumps({"peer": "idempotency==0.1.0 FileStore", "executions_per_s": results}))


if __name__ == "__main__":
    main()
