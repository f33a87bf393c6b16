"""The Python package: idemp from Python against agentidemp-py, llm-message-hash-py, the
idempotency FileStore and idempotent-tools (bench/steps/40-python.sh)."""

from __future__ import annotations

import json

RAW = ["py_idemp"]


def _doc(run) -> dict | None:
    text = run.text("py_idemp")
    start = text.find("{")
    if start < 0:
        return None
    try:
        return json.loads(text[start:])
    except ValueError:
        return None


def build(run, lib) -> list:
    a = lib.Area(
        "python",
        "Python package",
        "`bench/steps/40-python.sh` (crates/idemp-py/bench/python_bench.py): the `idemp` "
        "package, installed with `pip install ./crates/idemp-py`, against the Python packages "
        "it replaces, in one process. Keys and hashes: time per call (best of 5); guarded "
        "calls: settled executions per second with fresh keys (claim, run, complete), GIL "
        "and all. *Speed-up* = peer time / idemp time, or idemp rate / peer rate.",
    )
    d = _doc(run)
    if d is None:
        a.notes.append(lib.nm(run.why_missing("py_idemp")))
        return [a]
    a.header = ["case", "idemp", "peer", "peer figure", "speed-up", "goal"]
    k = d["sha256_hex_64_ns"]
    a.rows.append(["sha256_hex, 64 B", lib.fmt_ns(k["idemp"]), "agentidemp-py", lib.fmt_ns(k["agentidemp-py"]),
                   lib.ratio(k["agentidemp-py"], k["idemp"]), "≥ 2×"])
    a.rows.append(["sha256_hex, 64 B, through idemp.compat.agentidemp", lib.fmt_ns(k["idemp.compat.agentidemp"]),
                   "agentidemp-py", lib.fmt_ns(k["agentidemp-py"]),
                   lib.ratio(k["agentidemp-py"], k["idemp.compat.agentidemp"]), ""])
    h = d["hash_request_ns"]
    size = f"{d.get('hash_request_bytes', 0):,} B"
    peer = h["llm-message-hash-py (dict)"]
    a.rows.append([f"hash_request, {size} request dict, anthropic preset", lib.fmt_ns(h["idemp (dict)"]),
                   "llm-message-hash-py", lib.fmt_ns(peer), lib.ratio(peer, h["idemp (dict)"]), "≥ 5×"])
    a.rows.append([f"hash_request, same, through idemp.compat.llm_message_hash",
                   lib.fmt_ns(h["idemp.compat.llm_message_hash (dict)"]), "llm-message-hash-py", lib.fmt_ns(peer),
                   lib.ratio(peer, h["idemp.compat.llm_message_hash (dict)"]), ""])
    a.rows.append([f"hash_request of the raw JSON bytes vs json.loads + hash", lib.fmt_ns(h["idemp (raw bytes)"]),
                   "llm-message-hash-py", lib.fmt_ns(h["llm-message-hash-py (json.loads(raw))"]),
                   lib.ratio(h["llm-message-hash-py (json.loads(raw))"], h["idemp (raw bytes)"]), ""])
    for threads, row in sorted(d["settled_per_s"].items(), key=lambda kv: int(kv[0])):
        full, normal = row["idemp-sqlite-full"], row["idemp-sqlite-normal"]
        for peer_name, peer_rate in (("idempotency FileStore", row["idempotency-filestore"]),
                                     ("idempotent-tools SQLiteBackend", row["idempotent-tools-sqlite"])):
            goal = "≥ 10×" if threads == "16" else ""
            th = lib.plural(int(threads), "thread")
            a.rows.append([f"@idempotent settled calls, SQLite NORMAL, {th}",
                           lib.fmt_rate(normal), peer_name, lib.fmt_rate(peer_rate), lib.ratio(normal, peer_rate), goal])
            a.rows.append([f"@idempotent settled calls, SQLite FULL (fsync), {th}",
                           lib.fmt_rate(full), peer_name, lib.fmt_rate(peer_rate), lib.ratio(full, peer_rate), ""])
        if threads == "16":
            a.headline.append(f"@idempotent on SQLite at 16 threads {lib.ratio(normal, row['idempotency-filestore'])} the "
                              f"idempotency FileStore and {lib.ratio(normal, row['idempotent-tools-sqlite'])} idempotent-tools "
                              f"(NORMAL; {lib.ratio(full, row['idempotency-filestore'])} / {lib.ratio(full, row['idempotent-tools-sqlite'])} with fsync)")
            a.bars = [("idemp SQLite NORMAL", normal, "idemp"), ("idemp SQLite FULL", full, "idemp"),
                      ("idempotency FileStore", row["idempotency-filestore"], "peer"),
                      ("idempotent-tools", row["idempotent-tools-sqlite"], "peer")]
    a.headline.insert(0, f"sha256_hex 64 B {lib.ratio(k['agentidemp-py'], k['idemp'])} agentidemp-py; "
                         f"hash_request {lib.ratio(peer, h['idemp (dict)'])} llm-message-hash-py")
    a.notes.append("The FileStore never fsyncs and idempotent-tools commits through Python's sqlite3 "
                   "(journal mode DELETE); idemp's NORMAL mode is the like-for-like comparison, FULL "
                   "(the default: a completed record survives power loss) is shown beside it.")
    a.notes.append("Every Python call holds the GIL for its own work; idemp releases it while the "
                   "store works, so 16 threads share one group commit.")
    a.bar_unit, a.bar_title = "/s", "@idempotent settled calls per second, 16 threads (longer is faster)"
    return [a]
