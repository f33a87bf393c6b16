#!/usr/bin/env python3
"""Time agentidemp-py 0.1.0 `sha256_hex` at the sizes of crates/idemp/benches/keys.rs.

    python3 -m venv /tmp/venv-keys && /tmp/venv-keys/bin/pip install agentidemp-py==0.1.0
    /tmp/venv-keys/bin/python bench/python/keys_bench.py [--seconds 1.0] [--filter agentidemp-py/64]

Prints one line per case: ns/call (best of 5 repeats) and GB/s (10^9 bytes/s), the
units criterion reports, so the ratio against `sha256_hex/idemp/<size>` is direct.
Inputs are bytes (the str path adds UTF-8 encoding on top).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import ssl
import sys
import timeit

import agentidemp

SIZES = [64, 1024, 64 * 1024, 1024 * 1024]


def data(n: int) -> bytes:
    return bytes((i * 31 % 251) for i in range(n))


def measure(fn, arg, seconds: float) -> float:
    """Best ns/call over 5 repeats of roughly `seconds`/5 each."""
    timer = timeit.Timer(lambda: fn(arg))
    calls, elapsed = timer.autorange()
    per_repeat = max(1, int(calls * (seconds / 5) / max(elapsed, 1e-9)))
    best = min(timer.repeat(repeat=5, number=per_repeat)) / per_repeat
    return best * 1e9


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.0, help="time budget per case")
    ap.add_argument("--filter", default="", help="only cases whose name contains this")
    args = ap.parse_args()
    print(f"agentidemp-py {agentidemp.__version__}, Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}")
    print(f"{'case':44} {'ns/call':>12} {'GB/s':>8}")
    cases = []
    for n in SIZES:
        cases.append((f"sha256_hex/agentidemp-py/{n}", agentidemp.sha256_hex, data(n), n))
    for n in SIZES:
        cases.append((f"sha256_hex/hashlib-raw/{n}", lambda b: hashlib.sha256(b).digest(), data(n), n))
    d64 = data(64)
    cases.append(("derive/scoped_sha256_hex/64", lambda b: agentidemp.scoped_sha256_hex("tenant-7", b), d64, 64))
    cases.append(("derive/uuid5_key/64 (str)", lambda s: agentidemp.uuid5_key(agentidemp.NAMESPACE_ANTHROPIC, s), "x" * 64, 64))
    cases.append(("derive/random_key", lambda _: agentidemp.random_key(), None, 0))
    email = {
        "to": "alice@example.com",
        "subject": "Your order #1042 has shipped",
        "body": "Hello Alice, your order is on its way. Tracking: 1Z999AA10123456784.",
        "cc": ["ops@example.com"],
        "priority": 2,
        "track": True,
    }
    # idemp's for_args, reproduced with agentidemp-py (see idemp::key::for_args).
    cases.append(("derive/for_args/email", lambda a: agentidemp.scoped_key("agent-7", "send_email", json.dumps(a, sort_keys=True, separators=(",", ":"), ensure_ascii=True)), email, 0))
    for name, fn, arg, n in cases:
        if args.filter not in name:
            continue
        ns = measure(fn, arg, args.seconds)
        gbps = f"{n / ns:8.3f}" if n else f"{'-':>8}"
        print(f"{name:44} {ns:12.1f} {gbps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
