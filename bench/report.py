#!/usr/bin/env python3
"""Write docs/benchmarks.md and docs/bench/*.svg from the outputs of `bench/run`.

    python3 bench/report.py target/bench-run [--docs docs]

Inputs (all under the run directory): status.tsv (bench name, exit code, seconds),
machine.json, criterion/**/new/{benchmark,estimates}.json, and the captured stdout of
the harness=false benches and the Python peers (<name>.out / <name>.err). A figure
whose input is missing shows as "not measured (reason)"; the report never crashes on
a failed bench. Standard library only.
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

# ---------------------------------------------------------------- inputs


class Run:
    """Everything one `bench/run` produced."""

    def __init__(self, out: Path):
        self.out = out
        self.status: dict[str, tuple[int, int]] = {}
        sp = out / "status.tsv"
        if sp.exists():
            for line in sp.read_text().splitlines():
                parts = line.split("\t")
                if len(parts) == 3:
                    self.status[parts[0]] = (int(parts[1]), int(parts[2]))
        mp = out / "machine.json"
        self.machine = json.loads(mp.read_text()) if mp.exists() else {}
        self.crit: dict[str, dict] = {}
        for bj in (out / "criterion").glob("**/new/benchmark.json"):
            try:
                meta = json.loads(bj.read_text())
                est = json.loads((bj.parent / "estimates.json").read_text())
            except (OSError, ValueError):
                continue
            pick = est.get("slope") or est.get("mean")
            ns = pick["point_estimate"] if pick else None
            self.crit[meta["full_id"]] = {"ns": ns, "throughput": meta.get("throughput")}

    def text(self, name: str) -> str:
        p = self.out / f"{name}.out"
        return p.read_text(errors="replace") if p.exists() else ""

    def why_missing(self, name: str) -> str:
        """A short reason why bench `name` gave no figure."""
        if name not in self.status:
            return f"{name} did not run"
        rc, _ = self.status[name]
        if rc != 0:
            err = (self.out / f"{name}.err")
            last = ""
            if err.exists():
                lines = [
                    ln.strip()
                    for ln in err.read_text(errors="replace").splitlines()
                    if ln.strip() and not ln.strip().startswith(("Compiling", "Finished", "Running", "Blocking"))
                ]
                last = lines[-1][:160] if lines else ""
            return f"{name} failed with exit {rc}" + (f": {last}" if last else "")
        return f"{name} ran but printed no such figure"

    def ns(self, full_id: str) -> float | None:
        c = self.crit.get(full_id)
        return c["ns"] if c else None

    def per_s(self, full_id: str) -> float | None:
        """Elements per second of a criterion bench with Elements throughput."""
        c = self.crit.get(full_id)
        if not c or not c["ns"]:
            return None
        el = (c.get("throughput") or {}).get("Elements", 1)
        return el / (c["ns"] * 1e-9)


def parse_py_keys(text: str) -> dict[str, float]:
    res = {}
    for line in text.splitlines():
        m = re.match(r"^(\S.*?)\s+([0-9.]+)\s+(?:[0-9.]+|-)\s*$", line)
        if m and "/" in m.group(1):
            res[m.group(1).strip()] = float(m.group(2))
    return res


def parse_py_canon(text: str) -> dict[str, float]:
    res = {}
    for line in text.splitlines():
        m = re.match(r"^(.*?):\s+([0-9.]+) us/call", line)
        if m:
            res[m.group(1).strip()] = float(m.group(2)) * 1e3  # ns
    return res


def parse_py_filestore(text: str) -> dict[int, float]:
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                d = json.loads(line)
                return {int(k): float(v) for k, v in d["executions_per_s"].items()}
            except (ValueError, KeyError):
                pass
    res = {}
    for line in text.splitlines():
        m = re.search(r"(\d+) threads:\s+([0-9.]+)", line)
        if m:
            res[int(m.group(1))] = float(m.group(2))
    return res


def parse_postgres(text: str) -> dict[int, dict]:
    res = {}
    for line in text.splitlines():
        m = re.match(r"^\s*(\d+)\s*\|\s*([0-9.]+)\s*\|\s*([0-9.]+)\s*\|\s*([0-9.]+)\s*\|\s*([0-9.]+)\s*$", line)
        if m:
            res[int(m.group(1))] = {
                "idemp": float(m.group(2)),
                "raw": float(m.group(3)),
                "replay": float(m.group(5)),
            }
    return res


def parse_proxy(text: str) -> dict[tuple[str, int], dict]:
    res = {}
    num = r"(-?[0-9.]+)"
    pat = re.compile(rf"^(.+?)\s+(\d+)\s+{num}\s+{num}\s+{num}\s+{num}\s+{num}%\s+(\d+)\s*$")
    for line in text.splitlines():
        m = pat.match(line)
        if m:
            res[(m.group(1).strip(), int(m.group(2)))] = {
                "rps": float(m.group(3)),
                "p50": float(m.group(4)),
                "p99": float(m.group(5)),
                "extra_p50": float(m.group(6)),
                "pct_direct": float(m.group(7)),
                "errors": int(m.group(8)),
            }
    return res


# ---------------------------------------------------------------- formatting


def fmt_ns(ns: float | None) -> str:
    if ns is None:
        return "—"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.1f} ns"


def fmt_rate(r: float | None, unit: str = "/s") -> str:
    if r is None:
        return "—"
    if r >= 1e6:
        return f"{r / 1e6:.2f} M{unit}"
    if r >= 1e3:
        return f"{r / 1e3:.1f} k{unit}"
    return f"{r:.0f} {unit}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def nm(reason: str) -> str:
    return f"not measured ({reason})"


class Area:
    """One section of the report: a markdown table, headlines and an SVG chart."""

    def __init__(self, slug: str, title: str, intro: str):
        self.slug, self.title, self.intro = slug, title, intro
        self.header: list[str] = []
        self.rows: list[list[str]] = []
        self.notes: list[str] = []
        self.headline: list[str] = []
        self.bars: list[tuple[str, float, str]] = []  # label, value, kind (idemp/peer/bound)
        self.bar_unit = ""
        self.bar_title = ""

    def markdown(self, svg_ok: bool) -> str:
        out = [f"## {self.title}", "", self.intro, ""]
        if self.rows:
            out.append("| " + " | ".join(self.header) + " |")
            out.append("|" + "---|" * len(self.header))
            for r in self.rows:
                out.append("| " + " | ".join(r) + " |")
            out.append("")
        for n in self.notes:
            out.append(f"- {n}")
        if self.notes:
            out.append("")
        if self.headline:
            out.append("**Headline:** " + "; ".join(self.headline) + ".")
            out.append("")
        if svg_ok:
            out.append(f"![{self.title}](bench/{self.slug}.svg)")
            out.append("")
        return "\n".join(out)


# ---------------------------------------------------------------- areas


def keys_area(run: Run) -> Area:
    a = Area(
        "keys",
        "Keys (SHA-256 key derivation)",
        "`cargo bench -p idemp --bench keys` (criterion) against the `agentidemp` crate in the "
        "same binary and `bench/python/keys_bench.py` (agentidemp-py 0.1.0). Time per call; "
        "*speed-up* = peer time / idemp time (above 1: idemp is faster).",
    )
    py = parse_py_keys(run.text("py_keys"))
    py_why = run.why_missing("py_keys")
    a.header = ["case", "idemp", "agentidemp crate", "speed-up", "agentidemp-py", "speed-up", "raw sha2 (bound)"]
    for size in (64, 1024, 65536, 1048576):
        i = run.ns(f"sha256_hex/idemp/{size}")
        c = run.ns(f"sha256_hex/agentidemp/{size}")
        r = run.ns(f"sha256_hex/raw_sha2/{size}")
        p = py.get(f"sha256_hex/agentidemp-py/{size}")
        a.rows.append([
            f"sha256_hex, {size} B",
            fmt_ns(i) if i else nm(run.why_missing("bench_keys")),
            fmt_ns(c), ratio(c, i),
            fmt_ns(p) if p else nm(py_why), ratio(p, i),
            fmt_ns(r),
        ])
        if size == 64:
            a.bars += [(f"idemp sha256_hex 64 B", i, "idemp"), ("agentidemp crate", c, "peer"),
                       ("agentidemp-py", p, "peer"), ("raw sha2 (bound)", r, "bound")]
            if i and c:
                a.headline.append(f"sha256_hex 64 B {ratio(c, i)} vs agentidemp crate")
            if i and p:
                a.headline.append(f"{ratio(p, i)} vs agentidemp-py")
        if size == 1048576 and i:
            a.headline.append(f"1 MiB at {1048576 / i:.2f} GB/s (raw sha2 bound {1048576 / r:.2f} GB/s)" if r else
                              f"1 MiB at {1048576 / i:.2f} GB/s")
    for label, ours, crate, pyname in (
        ("scoped_sha256_hex, 64 B", "derive/scoped_sha256_hex/64", "derive/agentidemp_scoped_sha256_hex/64", "derive/scoped_sha256_hex/64"),
        ("uuid5 key, 64 B", "derive/uuid5_key/64", "derive/agentidemp_uuid_v5/64", "derive/uuid5_key/64 (str)"),
        ("for_args(email)", "derive/for_args/email", None, "derive/for_args/email"),
        ("random_key", "derive/random_key", None, "derive/random_key"),
    ):
        i = run.ns(ours)
        c = run.ns(crate) if crate else None
        p = py.get(pyname)
        a.rows.append([
            label, fmt_ns(i) if i else nm(run.why_missing("bench_keys")),
            fmt_ns(c) if crate else "n/a", ratio(c, i),
            fmt_ns(p) if p else nm(py_why), ratio(p, i), "",
        ])
    a.notes.append("From 64 KiB up every implementation runs at the SHA-NI bound (raw sha2): the "
                   "differences there are the noise of a shared machine, not a property of the code.")
    a.bar_unit, a.bar_title = "ns", "sha256_hex of 64 bytes: time per call (shorter is faster)"
    return a


def canon_area(run: Run) -> Area:
    a = Area(
        "canon",
        "Canonical request hash",
        "`cargo bench -p idemp --bench canon` on bench/data/anthropic_request.json (parse + "
        "canonicalise + SHA-256, Python-compatible mode) against the `llm-message-hash` crate "
        "in the same binary and `bench/python/canon_bench.py` (llm-message-hash-py 0.1.0, "
        "`hash_request(json.loads(raw))`). *Speed-up* = peer time / idemp time.",
    )
    py = parse_py_canon(run.text("py_canon"))
    py_why = run.why_missing("py_canon")
    g = "canon/anthropic_request/"
    i = run.ns(g + "idemp_python_hash")
    j = run.ns(g + "idemp_jcs_hash")
    c = run.ns(g + "llm_message_hash_crate_parse_and_hash")
    parse = run.ns(g + "serde_json_from_slice_only")
    p = py.get("hash_request(json.loads(raw), for_anthropic)")
    p_obj = py.get("hash_request(obj, for_anthropic)")
    miss = nm(run.why_missing("bench_canon"))
    a.header = ["case", "time per request", "idemp speed-up vs it"]
    a.rows = [
        ["idemp, Python-compatible hash (parse included)", fmt_ns(i) if i else miss, "1.00×" if i else "—"],
        ["idemp, RFC 8785 (JCS) hash", fmt_ns(j) if j else miss, ratio(j, i)],
        ["llm-message-hash crate, parse + hash", fmt_ns(c) if c else miss, ratio(c, i)],
        ["llm-message-hash-py, hash_request(json.loads(raw))", fmt_ns(p) if p else nm(py_why), ratio(p, i)],
        ["llm-message-hash-py, hash_request(obj) (no parse)", fmt_ns(p_obj) if p_obj else nm(py_why), ratio(p_obj, i)],
        ["serde_json::from_slice alone (parse bound)", fmt_ns(parse) if parse else miss, ratio(parse, i)],
    ]
    bi = run.ns("canon/1MiB/idemp_python_hash")
    bc = run.ns("canon/1MiB/llm_message_hash_crate_parse_and_hash")
    a.rows.append(["1 MiB request: idemp / llm-message-hash crate",
                   f"{fmt_ns(bi)} / {fmt_ns(bc)}", ratio(bc, bi)])
    if i and p:
        a.headline.append(f"{ratio(p, i)} faster than llm-message-hash-py")
    if i and c:
        a.headline.append(f"{ratio(c, i)} vs the llm-message-hash crate")
    a.bars = [("idemp (Python-compatible)", i, "idemp"), ("idemp (JCS)", j, "idemp"),
              ("llm-message-hash crate", c, "peer"), ("llm-message-hash-py", p, "peer"),
              ("serde_json parse only", parse, "bound")]
    a.bar_unit, a.bar_title = "µs", "hash of a 1.5 KB Anthropic request: time per request (shorter is faster)"
    a.bars = [(l, v / 1e3 if v else None, k) for l, v, k in a.bars]
    return a


def guard_area(run: Run) -> Area:
    a = Area(
        "guard",
        "Guard on the memory store",
        "`cargo bench -p idemp --bench guard` (criterion): the at-most-once guard over the "
        "memory store against the `idempotent` crate's memory store in the same binary. "
        "Fresh key per call (claim + run + complete) and replay of a settled key; then many "
        "tokio tasks. *Ratio* = idemp throughput / idempotent throughput.",
    )
    miss = nm(run.why_missing("bench_guard"))
    a.header = ["case", "idemp", "idempotent crate", "ratio"]
    for label, ours, peer in (
        ("claim+complete, 1 task (JSON codec)", "single/guard_claim_complete/Json", "single/idempotent_claim_complete"),
        ("claim+complete, 1 task (postcard codec)", "single/guard_claim_complete/Postcard", "single/idempotent_claim_complete"),
        ("store only: claim+complete", "single/store_claim_complete", None),
        ("replay, 1 task (JSON)", "single/guard_replay/Json", "single/idempotent_replay"),
        ("store only: replay", "single/store_replay", None),
    ):
        i, p = run.per_s(ours), run.per_s(peer) if peer else None
        a.rows.append([label, fmt_rate(i, "ops/s") if i else miss,
                       (fmt_rate(p, "ops/s") if p else "—") if peer else "n/a", ratio(i, p)])
        if ours == "single/guard_claim_complete/Json":
            a.bars += [("idemp claim+complete", i, "idemp"), ("idempotent claim+complete", p, "peer")]
            if i and p:
                a.headline.append(f"claim+complete {ratio(i, p)} the idempotent crate")
        if ours == "single/guard_replay/Json":
            a.bars += [("idemp replay", i, "idemp"), ("idempotent replay", p, "peer")]
            if i and p:
                a.headline.append(f"replay {ratio(i, p)}")
    tasks = sorted({int(k.split("/")[-1]) for k in run.crit if k.startswith("threads/guard/")})
    for t in tasks:
        i, p = run.per_s(f"threads/guard/{t}"), run.per_s(f"threads/idempotent/{t}")
        a.rows.append([f"{plural(t, 'task')}, fresh keys", fmt_rate(i, "ops/s"), fmt_rate(p, "ops/s"), ratio(i, p)])
        if t == max(tasks) and i and p:
            a.headline.append(f"{plural(t, 'task')} {ratio(i, p)}")
    a.bar_unit, a.bar_title = "k ops/s", "memory store, one task: operations per second (longer is faster)"
    a.bars = [(l, v / 1e3 if v else None, k) for l, v, k in a.bars]
    return a


def sqlite_area(run: Run) -> Area:
    a = Area(
        "sqlite",
        "SQLite store",
        "`cargo bench -p idemp --all-features --bench sqlite` (criterion): settled executions "
        "(claim + complete, durable) per second with synchronous=FULL and NORMAL, 1/16/64 "
        "tokio tasks, against `bench/python/idempotency_filestore_bench.py` (Python "
        "`idempotency` 0.1.0 FileStore) with as many threads. *Ratio* = idemp / FileStore.",
    )
    fs = parse_py_filestore(run.text("py_filestore"))
    fs_why = nm(run.why_missing("py_filestore"))
    miss = nm(run.why_missing("bench_sqlite"))
    a.header = ["tasks", "idemp FULL", "idemp NORMAL", "FileStore", "ratio FULL", "ratio NORMAL"]
    for t in (1, 16, 64):
        f, n, p = run.per_s(f"sqlite_settled_executions/full/{t}"), run.per_s(f"sqlite_settled_executions/normal/{t}"), fs.get(t)
        a.rows.append([str(t), fmt_rate(f) if f else miss, fmt_rate(n) if n else miss,
                       fmt_rate(p) if p else fs_why, ratio(f, p), ratio(n, p)])
        a.bars += [(f"idemp FULL, {plural(t, 'task')}", f, "idemp"), (f"idemp NORMAL, {plural(t, 'task')}", n, "idemp"),
                   (f"FileStore, {plural(t, 'thread')}", p, "peer")]
        if t in (1, 64) and n and p:
            a.headline.append(f"{plural(t, 'task')}: NORMAL {ratio(n, p)} FileStore (FULL {ratio(f, p)})")
    a.notes.append("FileStore never fsyncs (one JSON file per record, write + rename), so it compares "
                   "with synchronous=NORMAL; FULL pays one fsync per commit (shared by the commits "
                   "grouped together under concurrency), so FULL with one task is bound by the disk's "
                   "fsync latency, which swings with the other jobs on this machine.")
    a.bar_unit, a.bar_title = "k exec/s", "settled executions per second (longer is faster)"
    a.bars = [(l, v / 1e3 if v else None, k) for l, v, k in a.bars]
    return a


def parse_redis_raw(text: str) -> dict[int, float]:
    res, clients = {}, None
    for line in text.splitlines():
        m = re.match(r"^clients (\d+)", line)
        if m:
            clients = int(m.group(1))
        m = re.search(r":\s+([0-9.]+) requests per second", line)
        if m and clients is not None:
            res[clients] = float(m.group(1))
    return res


def parse_redis(text: str) -> dict[int, dict]:
    """Rows of crates/idemp/benches/redis.rs: tasks | idemp | 2x SET | 2x EVALSHA | idempotent | vs SET | vs peer,
    each middle cell `per_s client_us server_us`."""
    res = {}
    names = ("idemp", "set", "eval", "peer")
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) != 7 or not cells[0].isdigit():
            continue
        try:
            row = {}
            for name, cell in zip(names, cells[1:5]):
                per_s, cli, srv = (float(x) for x in cell.split())
                row[name] = {"per_s": per_s, "cli_us": cli, "srv_us": srv}
        except ValueError:
            continue
        res[int(cells[0])] = row
    return res


def redis_area(run: Run) -> Area:
    a = Area(
        "redis",
        "Redis store",
        "`cargo bench -p idemp --all-features --bench redis` (harness=false, IDEMP_BENCH_SECS "
        "seconds per cell): settled executions (claim + complete of a fresh key) per second "
        "through the Redis store, against the raw two-round-trip bound on the same kind of "
        "multiplexed connection (`SET NX PX` then `SET PX`; and two `EVALSHA` of trivial "
        "scripts) and the `idempotent` crate 0.3's `ValkeyStore` (`try_insert` + `complete`). "
        "*cli µs* = client CPU per execution. A second bound, `redis-benchmark` sending one "
        "`SET NX PX` per request (C client, one round trip), is listed below the table.",
    )
    rows = parse_redis(run.text("bench_redis"))
    raw = parse_redis_raw(run.text("redis_raw"))
    if rows:
        a.header = ["tasks", "idemp/s", "cli µs", "2× SET bound/s", "2× EVALSHA/s", "idempotent/s",
                    "idemp / SET bound", "idemp / idempotent"]
        for t, r in sorted(rows.items()):
            i, st, ev, pe = (r[k]["per_s"] for k in ("idemp", "set", "eval", "peer"))
            a.rows.append([str(t), fmt_rate(i), f"{r['idemp']['cli_us']:.1f}", fmt_rate(st), fmt_rate(ev),
                           fmt_rate(pe), ratio(i, st), ratio(i, pe)])
            a.bars += [(f"idemp, {plural(t, 'task')}", i / 1e3, "idemp"),
                       (f"idempotent, {plural(t, 'task')}", pe / 1e3, "peer"),
                       (f"2x SET bound, {plural(t, 'task')}", st / 1e3, "bound")]
            if t in (1, 64):
                a.headline.append(f"{plural(t, 'task')}: {ratio(i, pe)} idempotent's Valkey store, "
                                  f"{ratio(i, st)} of the raw 2×SET bound")
    else:
        a.notes.append(nm(run.why_missing("bench_redis")))
        a.headline.append("idemp vs idempotent's Valkey store " + nm(run.why_missing("bench_redis")))
    if raw:
        a.notes.append("redis-benchmark, one `SET NX PX` per request (one round trip; an execution needs "
                       "two, so its ceiling is about half of this): " + ", ".join(
                           f"{plural(c, 'client')} {fmt_rate(r)}" for c, r in sorted(raw.items())))
    else:
        a.notes.append("redis-benchmark bound " + nm(run.why_missing("redis_raw")))
    a.bar_unit, a.bar_title = "k exec/s", "Redis settled executions per second (longer is faster)"
    return a


def postgres_area(run: Run) -> Area:
    a = Area(
        "postgres",
        "PostgreSQL store",
        "`cargo bench -p idemp --all-features --bench postgres` (harness=false, "
        "IDEMP_BENCH_SECS seconds per cell): settled executions per second through the "
        "store (pool of 16) against the raw bound: the same INSERT … ON CONFLICT RETURNING + "
        "UPDATE on prepared statements, same pool. *Ratio* = idemp / raw.",
    )
    pg = parse_postgres(run.text("bench_postgres"))
    if not pg:
        a.notes.append(nm(run.why_missing("bench_postgres")))
        return a
    a.header = ["tasks", "idemp settled/s", "raw bound/s", "ratio", "idemp replays/s"]
    for t, r in sorted(pg.items()):
        a.rows.append([str(t), fmt_rate(r["idemp"]), fmt_rate(r["raw"]), ratio(r["idemp"], r["raw"]), fmt_rate(r["replay"])])
        a.bars += [(f"idemp, {plural(t, 'task')}", r["idemp"], "idemp"), (f"raw bound, {plural(t, 'task')}", r["raw"], "bound")]
        a.headline.append(f"{plural(t, 'task')} {ratio(r['idemp'], r['raw'])} of the raw bound")
    a.notes.append("Synchronous commit is on: every settled execution waits for WAL flushes on a disk "
                   "shared with other jobs, so absolute figures swing a lot between runs; the ratio "
                   "is measured in interleaved cells of the same run.")
    a.bar_unit, a.bar_title = "k exec/s", "PostgreSQL settled executions per second (longer is faster)"
    a.bars = [(l, v / 1e3, k) for l, v, k in a.bars]
    return a


def proxy_area(run: Run) -> Area:
    a = Area(
        "proxy",
        "Proxy (`idemp serve`)",
        "`cargo bench -p idemp-cli --bench proxy` (harness=false, PROXY_BENCH_SECS seconds per "
        "cell, interleaved slices): requests per second and latency to a loopback upstream, "
        "direct and through `idemp serve` on the memory and SQLite stores. *% of direct* = "
        "proxy req/s / direct req/s. Upstream, load generator and proxy share the 2 cores.",
    )
    px = parse_proxy(run.text("bench_proxy"))
    if not px:
        a.notes.append(nm(run.why_missing("bench_proxy")))
        return a
    a.header = ["target", "concurrency", "req/s", "p50 µs", "p99 µs", "+p50 µs vs direct", "% of direct", "errors"]
    for (name, conc), r in px.items():
        a.rows.append([name, str(conc), f"{r['rps']:.0f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}",
                       f"{r['extra_p50']:.1f}", f"{r['pct_direct']:.0f}%", str(r["errors"])])
        if conc == 16:
            a.bars.append((name, r["rps"] / 1e3, "bound" if name == "direct" else "idemp"))
    for name in ("memory unique keys", "sqlite unique keys", "memory replays"):
        r = px.get((name, 16))
        if r:
            a.headline.append(f"{name} at 16 concurrent: {r['pct_direct']:.0f}% of direct req/s, +{r['extra_p50']:.0f} µs p50")
    a.notes.append("The upstream is a trivial loopback HTTP server in the load generator's process, "
                   "so *direct* is the cost of one HTTP exchange and every proxy row adds a second "
                   "hop plus the guard; on 2 shared cores the proxy competes with the load generator "
                   "for CPU. `sqlite unique keys` includes a durable commit per request.")
    a.bar_unit, a.bar_title = "k req/s", "proxy at concurrency 16: requests per second (longer is faster)"
    return a


# ---------------------------------------------------------------- SVG

COLORS = {"idemp": "#2b6cb0", "peer": "#dd6b20", "bound": "#718096"}


def svg_bars(title: str, unit: str, bars: list[tuple[str, float | None, str]]) -> str | None:
    bars = [(l, v, k) for l, v, k in bars if v is not None and v > 0]
    if not bars:
        return None
    label_w, bar_w, row_h, top = 260, 380, 26, 44
    width = label_w + bar_w + 140
    height = top + row_h * len(bars) + 34
    vmax = max(v for _, v, _ in bars)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="10" y="24" font-size="15" font-weight="bold">{html.escape(title)}</text>',
    ]
    for n, (label, v, kind) in enumerate(bars):
        y = top + n * row_h
        w = max(1.0, bar_w * v / vmax)
        val = f"{v:,.1f}" if v < 100 else f"{v:,.0f}"
        parts.append(f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end">{html.escape(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" fill="{COLORS.get(kind, "#4a5568")}"/>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 16}">{val} {html.escape(unit)}</text>')
    ly = height - 12
    x = 10
    for kind, name in (("idemp", "idemp"), ("peer", "peer"), ("bound", "bound / baseline")):
        parts.append(f'<rect x="{x}" y="{ly - 10}" width="12" height="12" fill="{COLORS[kind]}"/>')
        parts.append(f'<text x="{x + 16}" y="{ly}">{name}</text>')
        x += 40 + 8 * len(name)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- main


def extra_modules() -> list:
    """The area modules in bench/areas/*.py (name order). Each defines
    `build(run, lib) -> list[Area]` (`lib` is this module: Area, nm, ratio, fmt_rate…)
    and may define `RAW`, the names of the steps whose output goes to "Raw outputs"."""
    mods = []
    for f in sorted((Path(__file__).resolve().parent / "areas").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"bench_area_{f.stem}", f)
        if spec is None or spec.loader is None:
            continue
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
        except Exception as e:  # a broken area module must not lose the report
            print(f"report: cannot load {f.name}: {e}", file=sys.stderr)
            continue
        mods.append(mod)
    return mods


def main() -> int:
    ap = argparse.ArgumentParser(description="write docs/benchmarks.md from a bench/run output directory")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--docs", type=Path, default=Path(__file__).resolve().parent.parent / "docs")
    args = ap.parse_args()
    run = Run(args.run_dir)
    m = run.machine
    (args.docs / "bench").mkdir(parents=True, exist_ok=True)

    areas = []
    for build in (keys_area, canon_area, guard_area, sqlite_area, redis_area, postgres_area, proxy_area):
        try:
            areas.append(build(run))
        except Exception as e:  # a malformed input must not lose the whole report
            a = Area(build.__name__.removesuffix("_area"), build.__name__.removesuffix("_area"), "")
            a.notes.append(nm(f"report could not read its inputs: {type(e).__name__}: {e}"))
            areas.append(a)

    lib = sys.modules[__name__]
    extras = extra_modules()
    for mod in extras:
        try:
            areas.extend(mod.build(run, lib))
        except Exception as e:
            a = Area(mod.__name__, mod.__name__, "")
            a.notes.append(nm(f"report could not read its inputs: {type(e).__name__}: {e}"))
            areas.append(a)

    lines = [
        "# Benchmarks",
        "",
        "Generated by `bench/run` (bench/report.py): every benchmark of idemp and of its peers "
        "in one run, so each ratio compares figures measured on the same machine at the same "
        "time. Regenerate with `bench/run` (or `bench/run --quick`).",
        "",
        "## Machine and run",
        "",
        f"- command: `{m.get('command', '?')}`" + (" (quick: criterion `--warm-up-time 1 --measurement-time 2`, 0.5 s per table cell)" if m.get("quick") else ""),
        f"- date: {m.get('start', '?')} to {m.get('end', '?')}; git {m.get('git', '?')}",
        f"- CPU: {m.get('cpu', '?')}, nproc {m.get('nproc', '?')}",
        f"- load average (1/5/15 min) at start: {m.get('load_start', '?')}; at end: {m.get('load_end', '?')}",
        f"- {m.get('rustc', 'rustc ?')}; {m.get('python', 'Python ?')}",
        "- The machine was shared with other builds and test runs while this ran (see the load "
        "average): figures are single short readings, good for ratios measured side by side, "
        "not absolute claims.",
        "",
        "## Headlines",
        "",
        "Ratios are idemp against the named peer, measured in this run; above 1× idemp is faster "
        "(for a bound, the share of the bound idemp reaches).",
        "",
    ]
    for a in areas:
        if a.headline:
            summary = "; ".join(a.headline)
        elif a.notes and a.notes[0].startswith("not measured"):
            summary = a.notes[0]
        else:
            summary = nm(run.why_missing(f"bench_{a.slug}"))
        lines.append(f"- **{a.title}**: {summary}")
    lines += ["", "## Bench status", "", "| step | exit | seconds |", "|---|---|---|"]
    for name, (rc, secs) in run.status.items():
        lines.append(f"| {name} | {rc} | {secs} |")
    lines.append("")
    for a in areas:
        svg = svg_bars(a.bar_title, a.bar_unit, a.bars)
        if svg:
            (args.docs / "bench" / f"{a.slug}.svg").write_text(svg)
        lines.append(a.markdown(svg is not None))
    lines += [
        "## Reproducing one area",
        "",
        "`bench/run` needs PostgreSQL and Redis on loopback (it calls `scripts/services.sh`) and "
        "creates a throwaway venv in bench/.venv for the Python peers. One area at a time:",
        "",
        "```sh",
        "export CARGO_TARGET_DIR=target",
        "cargo bench -p idemp --all-features --bench keys     # also canon, guard, sqlite (criterion)",
        "IDEMP_BENCH_SECS=3 cargo bench -p idemp --all-features --bench redis      # tables",
        "IDEMP_BENCH_SECS=3 cargo bench -p idemp --all-features --bench postgres",
        "PROXY_BENCH_SECS=2 cargo bench -p idemp-cli --bench proxy",
        "bench/.venv/bin/python bench/python/keys_bench.py --seconds 1",
        "bench/.venv/bin/python bench/python/canon_bench.py",
        "bench/.venv/bin/python bench/python/idempotency_filestore_bench.py --seconds 3",
        "python3 bench/report.py target/bench-run   # rewrite this page from a run's outputs",
        "```",
        "",
    ]
    lines += ["## Raw outputs", "", "What the harness=false benches and the Python peers printed in this run.", ""]
    raw = ["bench_postgres", "bench_redis", "redis_raw", "bench_proxy", "py_keys", "py_canon", "py_filestore"]
    for mod in extras:
        raw += [r for r in getattr(mod, "RAW", []) if r not in raw]
    for name in raw:
        t = run.text(name).strip()
        lines += [f"<details><summary>{name}</summary>", "", "```", t if t else nm(run.why_missing(name)), "```", "", "</details>", ""]
    (args.docs / "benchmarks.md").write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {args.docs / 'benchmarks.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
