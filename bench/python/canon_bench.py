#!/usr/bin/env python3
"""Time llm-message-hash-py on bench/data/anthropic_request.json (the peer of
`cargo bench -p idemp --bench canon`).

    python3 -m venv /tmp/venv-canon && /tmp/venv-canon/bin/pip install llm-message-hash-py==0.1.0
    /tmp/venv-canon/bin/python bench/python/canon_bench.py [FILE]

Prints the median time per call of `hash_request(json.loads(raw), HashOpts.for_anthropic())`
(what a Python service does with a request body) and of `hash_request(obj, ...)` alone.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import timeit

from llm_message_hash import HashOpts, hash_request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "bench", "data", "anthropic_request.json")
with open(path, "rb") as f:
    raw = f.read()
opts = HashOpts.for_anthropic()
obj = json.loads(raw)


def measure(fn, repeat: int = 7, timer=time.perf_counter) -> float:
    number, _ = timeit.Timer(fn, timer=timer).autorange()
    number = max(number, 200)
    runs = timeit.Timer(fn, timer=timer).repeat(repeat=repeat, number=number)
    return statistics.median(runs) / number


parse_and_hash = measure(lambda: hash_request(json.loads(raw), opts))
hash_only = measure(lambda: hash_request(obj, opts))
parse_only = measure(lambda: json.loads(raw))
print(f"file: {os.path.relpath(path, ROOT)} ({len(raw)} bytes), Python {sys.version.split()[0]}")
print(f"hash_request(json.loads(raw), for_anthropic): {parse_and_hash * 1e6:8.2f} us/call")
print(f"hash_request(obj, for_anthropic):             {hash_only * 1e6:8.2f} us/call")
print(f"json.loads(raw) alone:                        {parse_only * 1e6:8.2f} us/call")
# Thread CPU time: steadier on a shared machine (compare with the Rust
# canon/anthropic_request_cpu_time group).
cpu_parse_and_hash = measure(lambda: hash_request(json.loads(raw), opts), timer=time.thread_time)
cpu_hash_only = measure(lambda: hash_request(obj, opts), timer=time.thread_time)
print(f"thread CPU: hash_request(json.loads(raw)):    {cpu_parse_and_hash * 1e6:8.2f} us/call")
print(f"thread CPU: hash_request(obj):                {cpu_hash_only * 1e6:8.2f} us/call")
print(f"hash: {hash_request(obj, opts)}")
