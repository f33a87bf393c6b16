"""idemp mcp: added latency of the stdio relay (bench/steps/60-mcp.sh)."""

import json

RAW = ["bench_mcp"]

GOAL_US = 100.0


def build(run, lib):
    a = lib.Area(
        "mcp",
        "MCP proxy over stdio (`idemp mcp`)",
        "`cargo bench -p idemp-cli --bench mcp`: an agent sends one `tools/call` at a time to a "
        "minimal Rust MCP server, directly and through `idemp mcp -- SERVER`, and times each round "
        "trip. Added latency = through the proxy minus direct, at the same percentile. Goal: at "
        f"most {GOAL_US:.0f} µs added at p50 for a passed-through and a replayed call.",
    )
    rows = {}
    for line in run.text("bench_mcp").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                v = json.loads(line)
            except ValueError:
                continue
            rows[v.get("scenario")] = v
    direct = rows.get("direct")
    if not direct:
        a.notes.append(lib.nm(run.why_missing("bench_mcp")))
        return [a]
    a.header = ["call", "p50", "p99", "added p50", "added p99", "what it does"]
    labels = {
        "direct": "direct (no proxy)",
        "pass": "passed through",
        "replay": "replayed",
        "first_memory": "first guarded call, memory store",
        "first_sqlite": "first guarded call, SQLite (default)",
    }
    us = lambda x: lib.fmt_ns(x * 1e3)
    for key in ["direct", "pass", "replay", "first_memory", "first_sqlite"]:
        v = rows.get(key)
        if not v:
            a.rows.append([labels[key], "—", "—", "—", "—", lib.nm("no figure")])
            continue
        added50 = v["p50_us"] - direct["p50_us"] if key != "direct" else None
        added99 = v["p99_us"] - direct["p99_us"] if key != "direct" else None
        a.rows.append([
            labels[key],
            us(v["p50_us"]),
            us(v["p99_us"]),
            us(added50) if added50 is not None else "—",
            us(added99) if added99 is not None else "—",
            v.get("note", ""),
        ])
        if key in ("pass", "replay"):
            a.bars.append((labels[key] + " (added p50)", added50, "idemp"))
    a.bars.append(("goal", GOAL_US, "bound"))
    a.bar_unit = "µs"
    a.bar_title = "Added latency at p50 (lower is better)"
    for key in ("pass", "replay"):
        v = rows.get(key)
        if v:
            added = v["p50_us"] - direct["p50_us"]
            verdict = "within" if added <= GOAL_US else "over"
            a.headline.append(f"{labels[key]} +{added:.0f} µs p50 ({verdict} the {GOAL_US:.0f} µs goal)")
    if rows.get("first_sqlite"):
        a.notes.append(
            "A first guarded call is settled in the store before the agent sees its answer "
            "(claim + complete), so with SQLite's default `synchronous=FULL` it is bound by the "
            "commit's fsync, not by the relay."
        )
    counts = ", ".join(f"{labels[k]} {rows[k].get('calls', '?')}" for k in labels if k in rows)
    a.notes.append(f"Calls per scenario, one at a time (no pipelining): {counts}.")
    return [a]
